"""``lmadda demo``: the whole story on the embedded default, in a few minutes on a laptop CPU.

The bundled demo model was trained on synthetic phase-contrast fields to predict DAPI and
CD29. The demo makes unlabeled source (phase contrast) and new-microscope images (bright
field by default, or overexposed / rescaled phase contrast), adapts the model with no
adaptation, AdaBN, LM-ADDA at one layer and ``auto`` (which chooses among no adaptation,
AdaBN and LM-ADDA at the recommended layers without labels; output-layer ADDA with
``--methods``), scores each on held-out new-microscope fields with ground truth (Pearson),
prints a conclusion computed from those numbers (:func:`conclusion`), and writes the table,
the predicted stains as TIFF, the adapted models and a figure to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..adapt.registry import METHODS as REGISTRY
from ..adapt.registry import baselines
from ..data.synthetic import PROJECT_DOMAINS
from ..errors import ConfigError, OutputExistsError
from ..options import add_arguments as add_arguments_of
from ..options import check_args, option

NAME = "demo"
HELP = (
    "Run the whole LM-ADDA story on synthetic data with the bundled demo model "
    "(no adaptation vs AdaBN vs ADDA vs LM-ADDA vs auto, which chooses without labels) and "
    "write a table, TIFFs and a figure. --methods none,adabn,adda,lmadda,auto adds "
    "output-layer ADDA (it more than doubles the time)."
)

SHIFTS = {k: v for k, v in PROJECT_DOMAINS.items() if k in ("brightfield", "overexpose", "scale")}
#: the registry's baselines, LM-ADDA and auto
METHODS = (*baselines(), "lmadda", "auto")
#: what the demo runs unless --methods says otherwise (--quick runs all of METHODS)
DEFAULT_METHODS = ("none", "adabn", "lmadda", "auto")
#: two methods closer than this (mean Pearson) are called a tie in the printed conclusion
TIE = 0.02


@dataclass(kw_only=True)
class DemoArgs:
    """The options of ``demo``."""

    out: Path = option(Path("lmadda_demo"), "output folder", flag="--out",
                       default_text="./lmadda_demo")
    shift: str = option("brightfield", "the new microscope: bright field, overexposed 1.5x or "
                        "magnified 2x phase contrast", flag="--shift", choices=tuple(SHIFTS))
    layer: int = option(10, "layer LM-ADDA matches", flag="--layer", low=1,
                        default_text="10: the best for CD29 on the bright-field benchmark, "
                        "docs/benchmarks.md")
    methods: str = option(",".join(DEFAULT_METHODS),
                          f"comma-separated subset of {','.join(METHODS)}", flag="--methods",
                          default_text=f"{','.join(DEFAULT_METHODS)}; add adda for "
                          "output-layer ADDA (the slowest: its discriminator judges "
                          "full-size outputs)")
    steps: int = option(300, "adaptation steps", flag="--steps", low=1)
    images: int = option(24, "unlabeled images per domain", flag="--images", low=1)
    test_images: int = option(4, "labelled new-microscope fields for scoring",
                              flag="--test-images", low=1)
    model: str = option("demo", "source model", flag="--model", default_text="bundled demo")
    seed: int = option(0, "seed of the adaptation runs", flag="--seed")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps", flag="--device")
    quick: bool = option(False, "tiny run (a few steps, 64 px fields) to check the "
                         "installation", flag="--quick")
    overwrite: bool = option(False, "replace the results of an earlier demo in --out",
                             flag="--overwrite")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``demo``."""
    add_arguments_of(parser, DemoArgs)


def _mean(scores: dict[str, float]) -> float:
    return float(np.mean(list(scores.values())))


def conclusion(table: dict[str, dict[str, float]], *, steps: int, auto_winner: str | None = None,
               images: int = 24, quick: bool = False) -> str:
    """What this demo run shows, in words computed from its own table (mean Pearson).

    Parameters
    ----------
    table : dict
        Method label -> channel -> Pearson on the test fields.
    steps : int
        Adaptation steps of the run (the budget the words are about).
    auto_winner : str, optional
        What auto kept (``"none"``: the source model), when auto ran.
    images : int
        Unlabeled images per domain.
    quick : bool
        A ``--quick`` run: the numbers only check the installation.

    Returns
    -------
    str
        A few lines; nothing in them is claimed beyond this run's numbers.

    Examples
    --------
    >>> t = {"none": {"A": 0.6}, "lmadda L10": {"A": 0.7}, "auto": {"A": 0.69}}
    >>> lines = conclusion(t, steps=300, auto_winner="LM-ADDA layer 4").splitlines()
    >>> lines[1]
    '- best: lmadda L10, mean Pearson 0.700 (no adaptation 0.600)'
    >>> lines[2].split(": ")[1]
    '0.690, within 0.02 of the best; +0.090 against no adaptation'
    """
    if quick:
        return ("Conclusion: none (--quick checks the installation with a few steps on tiny "
                "images; its numbers mean nothing).")
    means = {k: _mean(v) for k, v in table.items()}
    best = max(means, key=means.__getitem__)
    none = means.get("none")
    out = [f"Conclusion of this run (one seed, {steps} steps; ground truth used only to "
           "score):",
           f"- best: {best}, mean Pearson {means[best]:.3f}"
           + (f" (no adaptation {none:.3f})" if none is not None and best != "none" else "")]
    if "auto" in means:
        a = means["auto"]
        kept = "the source model (no adaptation)" if auto_winner in (None, "none") \
            else auto_winner
        rel = ("the best" if best == "auto" else
               f"within {TIE} of the best" if means[best] - a <= TIE else
               f"{means[best] - a:.3f} below the best")
        vs_none = ""
        if none is not None:
            d = a - none
            vs_none = ("; no better or worse than no adaptation" if abs(d) <= 0.005 else
                       f"; {d:+.3f} against no adaptation" + (" (harm)" if d < -0.01 else ""))
        out.append(f"- auto, choosing without labels, kept {kept}: {a:.3f}, {rel}{vs_none}")
    lm = next((k for k in means if k.startswith("lmadda")), None)
    for other in ("adda", "adabn", "none"):
        if lm is None or other not in means:
            continue
        d = means[lm] - means[other]
        word = ("ties with" if abs(d) <= TIE / 2 else "beats" if d > 0 else "is below")
        out.append(f"- {lm} {word} {other} ({means[lm]:.3f} vs {means[other]:.3f})")
    out.append(f"- one seed on {images} synthetic images: a demonstration; the claims (3 seeds, "
               "600 and 1200 steps) are measured in docs/benchmarks.md")
    return "\n".join(out)


def _figure(path: Path, test: dict, preds: dict[str, np.ndarray], names: list[str]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = [("new-microscope input", test["input"][0], "gray")]
    cols += [(f"truth {n}", test[n.lower()][0], "magma") for n in names]
    rows = [("", cols)]
    for method, p in preds.items():
        rows.append((method, [(f"{method}: {n}", p[0, c], "magma") for c, n in enumerate(names)]))
    ncol = max(len(r[1]) for r in rows)
    fig = Figure(figsize=(2.6 * ncol, 2.6 * len(rows)), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), ncol, squeeze=False)
    for i, (_, items) in enumerate(rows):
        for j in range(ncol):
            ax = axes[i, j]
            ax.axis("off")
            if j < len(items):
                title, img, cmap = items[j]
                ax.imshow(
                    img,
                    cmap=cmap,
                    vmin=0 if cmap != "gray" else None,
                    vmax=1 if cmap != "gray" else None,
                )
                ax.set_title(title, fontsize=8)
    fig.savefig(path)


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns 0."""
    import torch

    from ..adapt.auto import format_report, iter_auto
    from ..adapt.config import AdaptConfig, eval_every_for
    from ..adapt.engine import iter_adapt
    from ..adapt.events import Evaluated, Finished, Started
    from ..data.io import write_tiff
    from ..data.synthetic import make_domain
    from ..devices import resolve_device
    from ..evaluation.metrics import pearson
    from ..inference.predict import predict_image
    from ..models import load_model, save_model

    methods = [m for m in args.methods.split(",") if m]
    if args.quick and args.methods == ",".join(DEFAULT_METHODS):
        methods = list(METHODS)  # the installation check exercises every method
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ConfigError(f"--methods takes a subset of {','.join(METHODS)}, got {args.methods!r}")
    check_args(args, DemoArgs, names=("steps", "images", "test_images"))
    out = Path(args.out)
    if (out / "results.json").exists() and not args.overwrite:
        raise OutputExistsError(
            f"'{out}' already holds demo results; use --overwrite or another --out"
        )
    (out / "test" / "input").mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    t0 = time.time()
    model = load_model(args.model, device=device)
    names = list(model.meta.get("channel_names") or ["DAPI", "CD29"])
    if model.num_layers < args.layer or args.layer < 1:
        raise ConfigError(
            f"--layer {args.layer} is out of range: this model has layers 1..{model.num_layers}"
        )
    size, n, steps, patch = 256, args.images, args.steps, 128
    if args.quick:
        size, n, steps, patch = 128, 4, 4, 64
    kw = SHIFTS[args.shift]
    source = make_domain(n, modality="phase", size=size, seed=11)["input"]
    target = make_domain(n, size=size, seed=12, **kw)["input"]
    test = make_domain(args.test_images, size=size, seed=13, **kw)
    print(
        f"demo: model with {model.num_layers} layers ({', '.join(names)}); source = phase "
        f"contrast, new microscope = {args.shift}; {n} unlabeled images each, "
        f"{args.test_images} labelled test fields; device {device}"
    )
    for i, img in enumerate(test["input"]):
        write_tiff(
            out / "test" / "input" / f"field{i}.tif",
            img,
            overwrite=True,
            metadata={"shift": args.shift, "generator": "napari_lmadda.data.synthetic"},
        )
        for name in names:
            (out / "test" / name.lower()).mkdir(parents=True, exist_ok=True)
            write_tiff(
                out / "test" / name.lower() / f"field{i}.tif",
                test[name.lower()][i],
                overwrite=True,
                metadata={"stain": name},
            )
    cfg = AdaptConfig(
        steps=steps,
        batch_size=8 if not args.quick else 2,
        patch_size=patch,
        eval_every=eval_every_for(steps, evaluations=8, at_most=steps),
        eval_patches=32 if not args.quick else 4,
        seed=args.seed,
        device=str(device),
    )
    table: dict[str, dict[str, float]] = {}
    preds: dict[str, np.ndarray] = {}
    auto_info: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for method in methods:
        t1 = time.time()
        entry = REGISTRY[method]
        label = f"{method} L{args.layer}" if entry.needs_layers else method
        result, total = None, steps
        if method == "auto" and args.quick:  # a smaller probe: only the installation counts
            events = iter_auto(model, source, target, config=cfg, probe_patches=8,
                               recommend_steps=5)
        else:
            events = iter_adapt(model, source, target, method=method,
                                layers=args.layer if entry.needs_layers else None, config=cfg)
        for ev in events:
            if isinstance(ev, Started):
                total = ev.total_steps or steps
                if method == "auto":
                    print(f"  auto: candidates LM-ADDA layers {list(ev.layers) or '-'}, "
                          f"{total} training steps in all", flush=True)
            if isinstance(ev, Evaluated) and ev.step > 0 \
                    and ev.metrics.get("candidate_step", 1) > 0:
                where = (f" (LM-ADDA layer {ev.metrics['layer']:.0f} at its step "
                         f"{ev.metrics['candidate_step']:.0f})" if "layer" in ev.metrics
                         else "")
                print(
                    f"  {label}: step {ev.step}/{total}{where}  criterion {ev.criterion:.3f}"
                    f"  D acc {ev.metrics.get('d_acc', float('nan')):.2f}",
                    flush=True,
                )
            if isinstance(ev, Finished):
                result = ev.result
        assert result is not None
        report = getattr(result, "report", None)
        if report is not None:  # auto: what it kept and why
            print("\n".join("    " + line for line in format_report(report).splitlines()))
            auto_info = {"winner": report.winner, "reason": report.reason}
        with torch.no_grad():
            p = np.stack([predict_image(result.model, img, tile=size) for img in test["input"]])
        preds[label] = p
        table[label] = {
            name: float(np.mean([pearson(p[i, c], test[name.lower()][i]) for i in range(len(p))]))
            for c, name in enumerate(names)
        }
        (out / "predictions" / label.replace(" ", "_")).mkdir(parents=True, exist_ok=True)
        for i in range(len(p)):
            write_tiff(
                out / "predictions" / label.replace(" ", "_") / f"field{i}_pred.tif",
                p[i],
                overwrite=True,
                metadata={"method": label, "channels": names, "model": result.provenance},
            )
        if entry.adversarial or (report is not None and report.adapted):
            # the trained models are worth keeping
            save_model(
                result.model,
                out / f"adapted_{label.replace(' ', '_')}.pt",
                provenance={**result.provenance, "demo_shift": args.shift},
            )
        seconds[label] = time.time() - t1
        print(
            f"  {label}: "
            + ", ".join(f"Pearson {k} {v:.3f}" for k, v in table[label].items())
            + f"  ({seconds[label]:.0f} s)",
            flush=True,
        )
    width = max(len(k) for k in table) + 2
    lines = [f"{'method':<{width}}" + "".join(f"{n:>10}" for n in [*names, "mean"])
             + f"{'seconds':>9}"]
    lines += [f"{k:<{width}}" + "".join(f"{v[n]:>10.3f}" for n in names)
              + f"{_mean(v):>10.3f}{seconds[k]:>9.0f}" for k, v in table.items()]
    print("\nPearson on the new microscope's test fields (ground truth used only here):")
    print("\n".join(lines))
    said = conclusion(table, steps=steps, auto_winner=auto_info.get("winner"), images=n,
                      quick=args.quick)
    print("\n" + said)
    _figure(out / "demo.png", test, preds, names)
    (out / "results.json").write_text(
        json.dumps(
            {
                "shift": args.shift,
                "layer": args.layer,
                "steps": steps,
                "pearson": table,
                "auto": auto_info,
                "conclusion": said,
                "method_seconds": seconds,
                "seconds": time.time() - t0,
            },
            indent=1,
        )
    )
    print(
        f"\nwrote {out}/results.json, demo.png, predictions/, test/ and the adapted models "
        f"in {time.time() - t0:.0f} s"
    )
    return 0
