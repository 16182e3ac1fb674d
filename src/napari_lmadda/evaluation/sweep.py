"""Layer sweeps: adapt at every layer (and the baselines), for several seeds, and tabulate.

This reproduces the paper's "Pearson by layer matched" experiment headlessly. For every seed,
LM-ADDA runs once per listed layer and each baseline method (``none``, ``adabn``, ``adda``)
once; each run records the label-free criterion of the state it kept and, when ground truth
is given, the Pearson correlation per output channel of that state's predictions. The
results aggregate to median and min-max over seeds per (method, layer), and plot like the
paper's panels (one per channel; baselines as horizontal lines).

Qt-free: the ``lmadda sweep`` command, the benchmark scripts and the demo all use it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..adapt.registry import METHODS, baselines
from ..errors import ConfigError, EmptyFolderError
from ..jsonsafe import json_safe

__all__ = [
    "BASELINES",
    "SweepRun",
    "EvalSet",
    "plan_runs",
    "iter_sweep",
    "run_sweep",
    "pearson_per_channel",
    "resolve_truth_dirs",
    "load_eval_set",
    "summarize_runs",
    "format_sweep_table",
    "plot_sweep",
    "write_sweep",
]

#: Methods run beside LM-ADDA by default and drawn as horizontal reference lines (the
#: registry's baselines: they do not depend on a layer).
BASELINES = baselines()


@dataclass
class SweepRun:
    """One adaptation run of a sweep.

    Attributes
    ----------
    method : str
        ``lmadda`` or a baseline.
    layer : int or None
        The matched layer for ``lmadda``; None for baselines.
    seed : int
        Seed of the run.
    criterion : str
        Name of the label-free criterion.
    criterion_value : float
        The criterion of the kept state (``nan`` for ``none`` and ``adabn``).
    best_step, steps_done : int
        Step whose state was kept, and steps run.
    stop_reason : str
        ``completed``, ``cancelled``, ``diverged`` or ``early_stop``.
    seconds : float
        Wall time of the run (adaptation and evaluation).
    pearson : dict of str to float
        Mean per-image Pearson correlation per output channel (empty without truth).
    history : list of dict
        The run's evaluations (step, criterion, label-free metrics, ``monitor_*`` values).
    """

    method: str
    layer: int | None
    seed: int
    criterion: str
    criterion_value: float
    best_step: int
    steps_done: int
    stop_reason: str
    seconds: float
    pearson: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``lmadda@5`` or the baseline's name."""
        return f"{self.method}@{self.layer}" if self.layer is not None else self.method

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (nan kept as float; see :func:`write_sweep` for JSON)."""
        return dataclasses.asdict(self)


@dataclass
class EvalSet:
    """Images of the new microscope with their ground truth, for scoring a sweep.

    Attributes
    ----------
    images : list of ndarray
        Raw ``(H, W)`` input images.
    truths : list of ndarray
        ``(C, H, W)`` ground truth in stain units, one per image.
    names : list of str
        Image names (stems).
    channel_names : list of str
        Names of the C channels.
    """

    images: list[np.ndarray]
    truths: list[np.ndarray]
    names: list[str]
    channel_names: list[str]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.truths) or not self.images:
            raise ConfigError(
                f"an evaluation set needs as many truths as images (>= 1), got "
                f"{len(self.images)} images and {len(self.truths)} truths"
            )
        for name, img, t in zip(self.names, self.images, self.truths):
            if t.ndim != 3 or t.shape[0] != len(self.channel_names) or t.shape[1:] != img.shape:
                raise ConfigError(
                    f"truth of '{name}' has shape {t.shape}; expected "
                    f"({len(self.channel_names)}, {img.shape[0]}, {img.shape[1]})"
                )


def plan_runs(
    layers: Sequence[int], methods: Sequence[str], seeds: Sequence[int]
) -> list[tuple[str, int | None, int]]:
    """List the ``(method, layer, seed)`` runs of a sweep, baselines first per seed.

    ``none`` is deterministic and runs once (with the first seed).
    """
    out: list[tuple[str, int | None, int]] = []
    base = [m for m in dict.fromkeys(methods) if m != "lmadda"]
    for i, s in enumerate(seeds):
        out += [(m, None, s) for m in base if m != "none" or i == 0]
        out += [("lmadda", int(layer), s) for layer in layers]
    return out


def pearson_per_channel(
    model: Any, eval_set: EvalSet, *, tile: int = 256, overlap: int = 32
) -> dict[str, float]:
    """Predict every image of ``eval_set`` and average the per-image Pearson per channel.

    Parameters
    ----------
    model : UNetGenerator
        The model (its ``meta`` gives normalisation and output range).
    eval_set : EvalSet
        Images and truths.
    tile, overlap : int
        Tiling of :func:`~napari_lmadda.inference.predict.predict_image`.

    Returns
    -------
    dict of str to float
        Channel name -> mean Pearson (nan-mean over images; nan if all are undefined).
    """
    from ..inference.predict import predict_image
    from .metrics import pearson

    per: list[list[float]] = [[] for _ in eval_set.channel_names]
    for img, truth in zip(eval_set.images, eval_set.truths):
        pred = predict_image(model, img, tile=tile, overlap=overlap)
        for c in range(len(per)):
            per[c].append(pearson(pred[c], truth[c]))
    out = {}
    for name, vals in zip(eval_set.channel_names, per):
        finite = [v for v in vals if math.isfinite(v)]
        out[name] = float(np.mean(finite)) if finite else math.nan
    return out


def iter_sweep(
    model: Any,
    source: Any,
    target: Any,
    *,
    layers: str | Sequence[int],
    methods: Sequence[str] = BASELINES,
    seeds: Sequence[int] = (0,),
    config: Any = None,
    eval_set: EvalSet | None = None,
    tile: int = 256,
    overlap: int = 32,
    on_event: Callable[[int, int, Any], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    monitor: Callable[[int, Any], dict[str, float]] | None = None,
) -> Iterator[SweepRun]:
    """Run a sweep and yield one :class:`SweepRun` per adaptation run.

    Parameters
    ----------
    model : UNetGenerator
        The source model (not modified).
    source, target : folder, array, dataset or sampler
        What :func:`~napari_lmadda.adapt.engine.iter_adapt` accepts; a dataset is re-sampled
        with each run's seed.
    layers : str or sequence of int
        Layers for LM-ADDA (``"1-16"``, ``"2,5"``, ``[2, 5]``).
    methods : sequence of str
        Baselines to run too (``lmadda`` here is ignored: it runs at ``layers``).
    seeds : sequence of int
        One run per seed (``none`` once).
    config : AdaptConfig, optional
        Hyper-parameters; its ``seed`` is replaced by each seed.
    eval_set : EvalSet, optional
        Images and truths to score each kept state with Pearson per channel.
    tile, overlap : int
        Tiling for the predictions of ``eval_set``.
    on_event : callable, optional
        ``on_event(run_index, n_runs, event)`` for every engine event (progress).
    cancel : callable, optional
        Stops the current run (its best state is still scored and yielded) and the sweep.
    monitor : callable, optional
        Passed to :func:`~napari_lmadda.adapt.engine.iter_adapt` (logs, e.g., ground-truth
        Pearson at every evaluation without using it for selection); the logged rows are in
        ``SweepRun.history``.

    Yields
    ------
    SweepRun
        In the order of :func:`plan_runs`.
    """
    from ..adapt.config import AdaptConfig
    from ..adapt.engine import iter_adapt, parse_layers
    from ..adapt.events import Finished, StopReason

    cfg = config or AdaptConfig()
    lays = parse_layers(layers, model.num_layers)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}: choose from {', '.join(METHODS)}")
    if not seeds:
        raise ConfigError("a sweep needs at least one seed")
    runs = plan_runs(lays, methods, seeds)
    if not runs:
        raise ConfigError("nothing to run: give layers and/or baseline methods")
    for i, (method, layer, seed) in enumerate(runs):
        t0 = time.perf_counter()
        run_cfg = dataclasses.replace(cfg, seed=int(seed))
        result = None
        for ev in iter_adapt(model, source, target, method=method,
                             layers=layer if method == "lmadda" else None, config=run_cfg,
                             cancel=cancel, monitor=monitor):
            if on_event is not None:
                on_event(i, len(runs), ev)
            if isinstance(ev, Finished):
                result = ev.result
        assert result is not None
        scores = (pearson_per_channel(result.model, eval_set, tile=tile, overlap=overlap)
                  if eval_set is not None else {})
        value = result.provenance.get("criterion_value", math.nan)
        stopped = result.reason is StopReason.CANCELLED or (cancel is not None and cancel())
        yield SweepRun(method, layer, int(seed), result.criterion, float(value),
                       result.best_step, result.steps_done, result.reason.value,
                       time.perf_counter() - t0, scores, list(result.history))
        del result
        if stopped:
            return


def run_sweep(model: Any, source: Any, target: Any, **kwargs: Any) -> list[SweepRun]:
    """Run :func:`iter_sweep` to the end and return the runs."""
    return list(iter_sweep(model, source, target, **kwargs))


# ------------------------------------------------------------------ ground truth on disk
def resolve_truth_dirs(truth: str | os.PathLike | Sequence[str | os.PathLike],
                       channel_names: Sequence[str]) -> list[Path]:
    """One ground-truth folder per output channel.

    Parameters
    ----------
    truth : path or sequence of paths
        One folder per channel (in channel order), or a parent folder whose sub-folders are
        named like the channel names in lower case (``dapi/``, ``cd29/``); a single folder is
        also accepted for a single-channel model.
    channel_names : sequence of str
        The model's output channels.

    Returns
    -------
    list of Path
        Folders in channel order.

    Raises
    ------
    ConfigError
        When the folders cannot be matched to the channels.
    """
    names = list(channel_names)
    dirs = [Path(truth)] if isinstance(truth, str | os.PathLike) else [Path(t) for t in truth]
    for d in dirs:
        if not d.is_dir():
            raise ConfigError(f"truth folder '{d}' does not exist")
    if len(dirs) == len(names) and (len(names) > 1 or not _has_channel_dirs(dirs[0], names)):
        return dirs
    if len(dirs) == 1:
        subs = {p.name.lower(): p for p in dirs[0].iterdir() if p.is_dir()}
        found = [subs.get(n.lower()) for n in names]
        if all(found):
            return [p for p in found if p is not None]
        missing = [n.lower() for n, f in zip(names, found) if f is None]
        raise ConfigError(
            f"truth folder '{dirs[0]}' has no sub-folder(s) {', '.join(missing)}: give one "
            f"sub-folder per channel ({', '.join(n.lower() for n in names)}) or one --truth "
            "folder per channel"
        )
    raise ConfigError(f"{len(dirs)} truth folders for {len(names)} output channels")


def _has_channel_dirs(folder: Path, names: Sequence[str]) -> bool:
    subs = {p.name.lower() for p in folder.iterdir() if p.is_dir()}
    return all(n.lower() in subs for n in names)


def load_eval_set(images: str | os.PathLike, truth: Any,
                  channel_names: Sequence[str]) -> EvalSet:
    """Read the evaluation images and their ground truth (matched by file name).

    Only the first plane of each file is used. Images without truth in every channel are
    left out; none at all is an error.
    """
    from ..data.datasets import _stem_map
    from ..data.io import list_images, read_planes

    names = list(channel_names)
    t_dirs = resolve_truth_dirs(truth, names)
    img_map = _stem_map(list_images(images), images)
    t_maps = [_stem_map(list_images(d), d) for d in t_dirs]
    common = [s for s in img_map if all(s in m for m in t_maps)]
    if not common:
        raise EmptyFolderError(
            f"no image of '{images}' has a ground-truth file of the same name in "
            f"{', '.join(str(d) for d in t_dirs)}"
        )
    imgs, truths = [], []
    for s in common:
        img = read_planes(img_map[s])[0]
        t = np.stack([read_planes(m[s])[0] for m in t_maps])
        imgs.append(img)
        truths.append(t)
    return EvalSet(imgs, truths, common, names)


# ------------------------------------------------------------------ tables and plots
def _stats(values: Sequence[float]) -> dict[str, float]:
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return {"median": math.nan, "min": math.nan, "max": math.nan}
    return {"median": float(np.median(v)), "min": float(min(v)), "max": float(max(v))}


def summarize_runs(runs: Sequence[SweepRun]) -> list[dict[str, Any]]:
    """Aggregate runs over seeds: one row per (method, layer), baselines first.

    Returns
    -------
    list of dict
        ``method``, ``layer``, ``n_seeds``, ``criterion`` (median/min/max) and
        ``pearson`` ``{channel: {median, min, max}}``.
    """
    groups: dict[tuple[str, int | None], list[SweepRun]] = {}
    for r in runs:
        groups.setdefault((r.method, r.layer), []).append(r)
    order = sorted(groups, key=lambda k: (k[1] is not None, k[1] or 0,
                                          BASELINES.index(k[0]) if k[0] in BASELINES else 9))
    rows = []
    for key in order:
        rs = groups[key]
        channels = list(dict.fromkeys(c for r in rs for c in r.pearson))
        rows.append({
            "method": key[0],
            "layer": key[1],
            "n_seeds": len(rs),
            "criterion": _stats([r.criterion_value for r in rs]),
            "pearson": {c: _stats([r.pearson.get(c, math.nan) for r in rs]) for c in channels},
        })
    return rows


def format_sweep_table(rows: Sequence[dict[str, Any]]) -> str:
    """Format :func:`summarize_runs` rows as a plain-text table (median [min, max])."""
    channels = list(dict.fromkeys(c for r in rows for c in r["pearson"]))

    def cell(s: dict[str, float], n: int) -> str:
        if not math.isfinite(s["median"]):
            return "-"
        if n == 1 or s["min"] == s["max"]:
            return f"{s['median']:.4g}"
        return f"{s['median']:.4g} [{s['min']:.3g}, {s['max']:.3g}]"

    header = ["method", "layer", "seeds", "criterion", *(f"Pearson {c}" for c in channels)]
    body = [[r["method"], "-" if r["layer"] is None else str(r["layer"]), str(r["n_seeds"]),
             cell(r["criterion"], r["n_seeds"]),
             *(cell(r["pearson"][c], r["n_seeds"]) if c in r["pearson"] else "-"
               for c in channels)] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip()
             for line in [header, ["-" * w for w in widths], *body]]
    return "\n".join(lines)


_BASE_STYLE = {"none": ("0.4", "--"), "adabn": ("tab:blue", ":"), "adda": ("tab:red", "-.")}


def plot_sweep(runs: Sequence[SweepRun], path: str | os.PathLike, *,
               title: str | None = None) -> Path:
    """Plot Pearson by matched layer, one panel per channel (the criterion without truth).

    LM-ADDA runs are the median over seeds with min-max error bars; baselines are
    horizontal lines at their median. Rendered with the Agg backend (no display needed).

    Returns
    -------
    Path
        The PNG written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = summarize_runs(runs)
    channels = list(dict.fromkeys(c for r in rows for c in r["pearson"]))
    panels = [("pearson", c, f"Pearson ({c})") for c in channels] or [
        ("criterion", None, f"criterion ({runs[0].criterion if runs else ''}, lower is better)")]
    fig = Figure(figsize=(4.2 * len(panels), 3.4), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    lm = [r for r in rows if r["method"] == "lmadda" and r["layer"] is not None]
    for ax, (kind, ch, ylabel) in zip(axes, panels):
        def stat(r: dict[str, Any], kind: str = kind, ch: str | None = ch) -> dict[str, float]:
            if kind == "criterion":
                return r["criterion"]
            return r["pearson"].get(ch, {"median": math.nan, "min": math.nan, "max": math.nan})

        if lm:
            xs = [r["layer"] for r in lm]
            med = np.array([stat(r)["median"] for r in lm])
            lo = np.array([stat(r)["min"] for r in lm])
            hi = np.array([stat(r)["max"] for r in lm])
            ax.errorbar(xs, med, yerr=[np.nan_to_num(med - lo), np.nan_to_num(hi - med)],
                        fmt="o-", color="black", ms=4, capsize=3, lw=1.2, label="LM-ADDA")
            ax.set_xticks(xs)
        for r in rows:
            if r["method"] in BASELINES and r["layer"] is None:
                v = stat(r)["median"]
                if math.isfinite(v):
                    color, ls = _BASE_STYLE.get(r["method"], ("0.6", "--"))
                    ax.axhline(v, color=color, ls=ls, lw=1.2, label=r["method"])
        ax.set_xlabel("layer matched")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    from ..data.io import atomic_write

    return atomic_write(path, lambda p: p.write_bytes(buf.getvalue()), overwrite=True)


def write_sweep(runs: Sequence[SweepRun], out_dir: str | os.PathLike, *,
                settings: dict[str, Any] | None = None, overwrite: bool = False,
                title: str | None = None) -> dict[str, Path]:
    """Write ``sweep.json`` (settings, runs, table), ``sweep.csv`` (runs) and ``sweep.png``.

    Returns
    -------
    dict of str to Path
        ``{"json": ..., "csv": ..., "png": ...}``.
    """
    from ..data.io import atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    channels = list(dict.fromkeys(c for r in runs for c in r.pearson))
    doc = {"settings": settings or {}, "runs": [r.to_dict() for r in runs],
           "table": summarize_runs(runs)}
    text = json.dumps(json_safe(doc), indent=2, allow_nan=False) + "\n"
    paths = {"json": atomic_write(out / "sweep.json",
                                  lambda p: p.write_text(text, encoding="utf-8"),
                                  overwrite=overwrite)}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "layer", "seed", "criterion", "criterion_value", "best_step",
                "steps_done", "stop_reason", "seconds", *(f"pearson_{c}" for c in channels)])
    for r in runs:
        w.writerow([r.method, "" if r.layer is None else r.layer, r.seed, r.criterion,
                    _num(r.criterion_value), r.best_step, r.steps_done, r.stop_reason,
                    f"{r.seconds:.2f}", *(_num(r.pearson.get(c, math.nan)) for c in channels)])
    csv_text = buf.getvalue()
    paths["csv"] = atomic_write(out / "sweep.csv",
                                lambda p: p.write_text(csv_text, encoding="utf-8"),
                                overwrite=overwrite)
    if runs:
        paths["png"] = plot_sweep(runs, out / "sweep.png", title=title)
    return paths


def _num(v: float) -> str:
    return "" if not math.isfinite(v) else f"{v:.6g}"
