"""Real-data benchmarks: EM membrane segmentation and label-free translation (issue 6).

Two tasks on the public data in ``../shared/data`` (see its README for licenses):

``em``
    The task family of the APMA-Net seed. Source: ISBI 2012 ssTEM membranes (30 labelled
    images, label 0 = membrane, 255 = cell interior). Target: Drosophila VNC stack1 (20 raw
    sections; its ``membranes/`` masks, True = membrane, are used for evaluation only). Both
    are encoded as membrane = 1, everything else = 0, so a prediction means the same on both
    sides. Like the seed, the target stack is split along x: columns ``[0, 683)`` are the
    unlabeled adaptation images, ``[683, 1024)`` the test images. The source model regresses
    a membrane probability with L1 (``train_source``); the mask is ``probability > 0.5``;
    Dice and Jaccard (mean over the 20 test crops) and Pearson of the probability.

``allen``
    Transmitted light -> DNA on the Allen chunk (32 z-slices of 128 x 128). Source: z 0..15
    (labelled; z 12..15 validate the source training). Target: z 16..31 with a synthetic shift
    applied (``overexpose`` 1.5x, ``scale`` 2x, ``defocus`` sigma 2 px; the scale shift zooms
    the DNA truth too). Adaptation sees the 16 shifted target inputs without labels and the
    score is Pearson of DNA on the same 16 slices (transductive: the labels are never used,
    but the test images are the adaptation images).

``cases`` (issue 13 item 3, issue 11)
    The real cases of ``benchmarks/real_cases.py``: EM ISBI -> VNC, Allen TL -> DNA and BPAE
    actin -> nuclei with applied shifts, written as uint16 folders with disjoint adaptation,
    oracle and test images. ``train-case`` trains a data set's source model from its folders
    exactly as ``lmadda train-source`` does (learned target normalisation, an augmentation
    preset), ``oracle-case`` the same recipe on a case's labelled oracle images (scored on its
    test images); the adaptation rows come from ``benchmarks/augment.py work`` with cases
    named ``real:<case>``.

Every adapted model is scored at the state the engine kept *without labels*; the labelled
monitor (a few test images, logged at every evaluation and never used for selection) shows
how much checkpoints swing.

    python benchmarks/real_data.py train --task em            # source model, ~5 min
    python benchmarks/real_data.py recommend --task em        # label-free layer choice
    python benchmarks/real_data.py run --task em --seeds 0,1,2 --layers 2,4,6,8,10
    python benchmarks/real_data.py run --task allen --shift defocus --layers 4,8
    python benchmarks/real_data.py report                     # tables + plots
    python benchmarks/real_data.py train-case --dataset bpae --augment robust
    python benchmarks/real_data.py oracle-case --case bpae_defocus

Results append to ``benchmarks/results/real/runs.jsonl`` (runs already there are skipped, so
an interrupted benchmark resumes). When the data folder is absent every command prints why
and exits with status 0.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "results" / "real"
TASKS = ("em", "allen")
# "identity" = no shift: the reference for what a shift took away (run "none" only)
ALLEN_SHIFTS = {"overexpose": 1.5, "scale": 2.0, "defocus": 2.0, "identity": 0.0}
SPLIT_X = 683  # VNC: columns [0, 683) adapt, [683, 1024) test (2/3 : 1/3 as in the seed)
ARCH = {"num_downs": 5, "ngf": 16, "use_dropout": False}
METHOD_LABELS = {
    "none": "no adaptation",
    "adabn": "AdaBN",
    "adda": "ADDA (output layer)",
    "apma": "APMA-style",
    "scgan": "SC-GAN",
}


# ------------------------------------------------------------------ data
def data_missing(data: Path, task: str | None = None) -> str | None:
    """Why the data for ``task`` (or any task) cannot be used, or None when it is there."""
    need = {
        "em": ["isbi2012_em_membranes/train/image", "isbi2012_em_membranes/train/label",
               "drosophila_vnc_sstem/stack1/raw", "drosophila_vnc_sstem/stack1/membranes"],
        "allen": ["allen_fnet_3d_chunk/transmitted_light.tif",
                  "allen_fnet_3d_chunk/dna_target.tif"],
    }
    for t in [task] if task else TASKS:
        for rel in need[t]:
            if not (data / rel).exists():
                return f"'{data / rel}' not found"
    return None


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def _sorted_numeric(folder: Path, pattern: str) -> list[Path]:
    def number(p: Path) -> int:
        return int("".join(c for c in p.stem if c.isdigit()))

    return sorted(folder.glob(pattern), key=number)


def load_em(data: Path) -> dict:
    """ISBI images/labels (membrane = 1) and the VNC adaptation and test crops."""
    import tifffile

    isbi = data / "isbi2012_em_membranes"
    imgs = [_read_png(p).astype(np.float32)
            for p in _sorted_numeric(isbi / "train/image", "*.png")]
    labs = [(_read_png(p) < 128).astype(np.float32)  # ISBI: 0 = membrane, 255 = cell
            for p in _sorted_numeric(isbi / "train/label", "*.png")]
    extra = [_read_png(p).astype(np.float32)
             for p in _sorted_numeric(isbi / "test/image", "*.png")]
    vnc = data / "drosophila_vnc_sstem" / "stack1"
    raw = [tifffile.imread(p).astype(np.float32) for p in sorted((vnc / "raw").glob("*.tif"))]
    # VNC membranes/: True = membrane (97 % agreement with labels/ values <= 128)
    masks = [_read_png(p) > 0 for p in sorted((vnc / "membranes").glob("*.png"))]
    if len(imgs) != len(labs) or len(raw) != len(masks) or not imgs or not raw:
        raise SystemExit(f"unexpected EM data layout under {data}")
    return {
        "src_images": imgs, "src_labels": labs, "src_unlabeled": imgs + extra,
        "tgt_adapt": [r[:, :SPLIT_X] for r in raw],
        "tgt_test": [r[:, SPLIT_X:] for r in raw],
        "tgt_truth": [m[:, SPLIT_X:].astype(np.float32) for m in masks],
    }


def shift_allen(tl: np.ndarray, dna: np.ndarray, shift: str) -> tuple[np.ndarray, np.ndarray]:
    """Apply a synthetic microscope shift to transmitted light (and to DNA for ``scale``)."""
    from napari_lmadda.data.synthetic import defocus, overexpose, rescale

    v = ALLEN_SHIFTS[shift]
    if shift == "overexpose":
        return overexpose(tl, v), dna
    if shift == "defocus":
        return defocus(tl, v), dna
    if shift == "identity":
        return tl.copy(), dna
    return rescale(tl, v), rescale(dna, v)


def load_allen(data: Path, shift: str | None) -> dict:
    """Source half (z 0..15) and the shifted target half (z 16..31)."""
    import tifffile

    d = data / "allen_fnet_3d_chunk"
    tl = tifffile.imread(d / "transmitted_light.tif").astype(np.float32)
    dna = tifffile.imread(d / "dna_target.tif").astype(np.float32)
    half = tl.shape[0] // 2
    out = {"src_images": list(tl[:half]), "src_labels": list(dna[:half]),
           "src_unlabeled": list(tl[:half])}
    if shift is not None:
        t_in, t_dna = shift_allen(tl[half:], dna[half:], shift)
        out |= {"tgt_adapt": list(t_in), "tgt_test": list(t_in), "tgt_truth": list(t_dna)}
    return out


def load_task(data: Path, task: str, shift: str | None) -> dict:
    return load_em(data) if task == "em" else load_allen(data, shift)


def model_path(out: Path, task: str, seed: int = 0) -> Path:
    return out / "models" / f"source_{task}_s{seed}.pt"


# ------------------------------------------------------------------ scoring
def score(model, images: list[np.ndarray], truths: list[np.ndarray], task: str) -> dict:
    """Mean per-image metrics (EM: Dice/Jaccard at 0.5 and Pearson; Allen: Pearson)."""
    from napari_lmadda.evaluation.metrics import dice, jaccard, pearson
    from napari_lmadda.inference.predict import predict_image

    tile = 256 if task == "em" else 128
    rows: dict[str, list[float]] = {}
    for img, truth in zip(images, truths):
        prob = predict_image(model, img, tile=tile, overlap=32)[0]
        rows.setdefault("pearson", []).append(pearson(prob, truth))
        if task == "em":
            rows.setdefault("dice", []).append(dice(prob > 0.5, truth > 0.5))
            rows.setdefault("jaccard", []).append(jaccard(prob > 0.5, truth > 0.5))
    return {k: float(np.nanmean(v)) for k, v in rows.items()}


# ------------------------------------------------------------------ commands
def cmd_train(args: argparse.Namespace, data: Path) -> None:
    """Train the small source model of a task on its labelled source images."""
    from napari_lmadda.data.datasets import PairedArrays, PatchSampler
    from napari_lmadda.data.normalize import encode_target, fit_target_norm, percentile_normalize
    from napari_lmadda.models import UNetConfig, save_model
    from napari_lmadda.training import SourceTrainConfig, train_source
    from napari_lmadda.training.data import target_meta

    d = load_task(data, args.task, None)
    n_val = 4
    x, y = d["src_images"][:-n_val], d["src_labels"][:-n_val]
    patch = 128 if args.task == "em" else 64
    # the target encoding is learned from the training labels (issue 11), as train-source does
    tn, _ = fit_target_norm([y], seed=args.seed)
    enc = np.stack([encode_target(t, tn) for t in y])
    sampler = PatchSampler(PairedArrays(x, enc, target_normalize=None), patch, 8,
                           seed=args.seed, augment=True)
    vx = np.stack([percentile_normalize(im)[0] for im in d["src_images"][-n_val:]])[:, None]
    vy = np.stack([encode_target(t, tn) for t in d["src_labels"][-n_val:]])[:, None]
    name = "membrane" if args.task == "em" else "DNA"
    meta = {"channel_names": [name], "input_percentiles": (1.0, 99.8), **target_meta(tn),
            "provenance": {"benchmark": f"benchmarks/real_data.py train --task {args.task}"}}
    t0 = time.time()
    res = train_source(sampler, (vx, vy), arch=UNetConfig(**ARCH), meta=meta,
                       config=SourceTrainConfig(steps=args.steps, patch_size=patch,
                                                eval_every=100, seed=args.seed, device="cpu"))
    path = model_path(Path(args.out), args.task, args.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(res.model, path)
    print(f"{args.task}: source model {path} (best step {res.best_step}, validation Pearson "
          f"{res.best_pearson:.3f}, {time.time() - t0:.0f} s)", flush=True)
    # how well the source model does on its own domain (validation images) and the target
    info = {"task": args.task, "seed": args.seed, "steps": args.steps, "patch": patch,
            "arch": ARCH, "best_step": res.best_step, "val_pearson": res.best_pearson,
            "seconds": time.time() - t0, "size_bytes": path.stat().st_size}
    if args.task == "em":
        info["source_val"] = score(res.model, d["src_images"][-n_val:],
                                   d["src_labels"][-n_val:], "em")
        print(f"source validation images: {info['source_val']}", flush=True)
    (path.with_suffix(".json")).write_text(json.dumps(info, indent=1) + "\n")


def cmd_oracle(args: argparse.Namespace, data: Path) -> None:
    """EM ceiling: the same recipe trained on the *labelled* VNC adaptation columns."""
    from napari_lmadda.data.datasets import PairedArrays, PatchSampler
    from napari_lmadda.data.normalize import encode_target, fit_target_norm, percentile_normalize
    from napari_lmadda.models import UNetConfig
    from napari_lmadda.training import SourceTrainConfig, train_source
    from napari_lmadda.training.data import target_meta

    if args.task != "em":
        raise SystemExit("an oracle is only defined for the em task (the allen target half "
                         "is both the adaptation and the test set)")
    d = load_em(data)
    vnc = data / "drosophila_vnc_sstem" / "stack1"
    masks = [(_read_png(p) > 0).astype(np.float32)[:, :SPLIT_X]
             for p in sorted((vnc / "membranes").glob("*.png"))]
    x, y = d["tgt_adapt"][:-2], masks[:-2]  # the last two sections validate
    tn, _ = fit_target_norm([y], seed=args.seed)
    sampler = PatchSampler(PairedArrays(x, np.stack([encode_target(t, tn) for t in y]),
                                        target_normalize=None), 128, 8,
                           seed=args.seed, augment=True)
    vx = np.stack([percentile_normalize(im)[0][:512, :512] for im in d["tgt_adapt"][-2:]])
    vy = np.stack([encode_target(m[:512, :512], tn) for m in masks[-2:]])
    meta = {"channel_names": ["membrane"], "input_percentiles": (1.0, 99.8), **target_meta(tn)}
    t0 = time.time()
    res = train_source(sampler, (vx[:, None], vy[:, None]), arch=UNetConfig(**ARCH), meta=meta,
                       config=SourceTrainConfig(steps=args.steps, eval_every=100,
                                                seed=args.seed, device="cpu"))
    scores = score(res.model, d["tgt_test"], d["tgt_truth"], "em")
    doc = {"task": "em", "scores": scores, "steps": args.steps, "seed": args.seed,
           "best_step": res.best_step, "seconds": time.time() - t0}
    (Path(args.out) / "oracle_em.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"oracle em: {scores} ({time.time() - t0:.0f} s)", flush=True)


def _label_free_target(d: dict) -> list[np.ndarray]:
    return d["tgt_adapt"]


def cmd_recommend(args: argparse.Namespace, data: Path) -> None:
    """The label-free layer recommendation for a task (and shift)."""
    from napari_lmadda.adapt.recommend import format_recommendation_table, recommend_layer
    from napari_lmadda.models import load_model

    model = load_model(model_path(Path(args.out), args.task, args.model_seed))
    d = load_task(data, args.task, args.shift)
    patch = 128 if args.task == "em" else 64
    t0 = time.time()
    rec = recommend_layer(model, d["src_unlabeled"], _label_free_target(d), n_patches=32,
                          patch_size=patch, probe_steps=60, device="cpu", seed=0)
    secs = time.time() - t0
    print(f"{format_recommendation_table(rec)}\n{rec.summary()}\nreason: {rec.reason}")
    doc = {"task": args.task, "shift": args.shift or "", "recommended": rec.layer,
           "confidence": rec.confidence, "p_value": rec.p_value, "reason": rec.reason,
           "seconds": secs}
    path = Path(args.out) / f"recommend_{args.task}{'_' + args.shift if args.shift else ''}.json"
    path.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    print(f"wrote {path} ({secs:.0f} s)")


def _key(r: dict) -> tuple:
    return (r["task"], r["shift"], r["method"], r["layer"], r["seed"], r.get("tag", ""))


def read_runs(path: Path) -> list[dict]:
    """Rows of ``runs.jsonl``; a run present twice counts once."""
    if not path.exists():
        return []
    unique: dict[tuple, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            unique.setdefault(_key(r), r)
    return list(unique.values())


def cmd_run(args: argparse.Namespace, data: Path) -> None:
    """Adapt the task's source model with each method (and LM-ADDA per layer) and score it."""
    from napari_lmadda.adapt.config import AdaptConfig
    from napari_lmadda.adapt.engine import METHODS, iter_adapt
    from napari_lmadda.adapt.events import Finished
    from napari_lmadda.jsonsafe import json_safe
    from napari_lmadda.models import load_model

    out = Path(args.out)
    runs_path = out / "runs.jsonl"
    model = load_model(model_path(out, args.task, args.model_seed))
    shift = args.shift or ""
    d = load_task(data, args.task, args.shift)
    mon_idx = list(range(0, len(d["tgt_test"]), max(1, len(d["tgt_test"]) // 4)))[:4]
    mon_imgs = [d["tgt_test"][i] for i in mon_idx]
    mon_truth = [d["tgt_truth"][i] for i in mon_idx]
    key_metric = "dice" if args.task == "em" else "pearson"

    def monitor(step, net):
        # the engine logs these as "monitor_<key>" in the run's history
        return {key_metric: score(net, mon_imgs, mon_truth, args.task)[key_metric]}

    patch = 128 if args.task == "em" else 64
    extra = json.loads(args.config) if args.config else {}
    wanted = [m for m in args.methods.split(",") if m]
    skipped = [m for m in wanted if m not in METHODS]
    if skipped:
        print(f"not in this version's METHODS (skipped, re-run later): {skipped}", flush=True)
    plan = []
    for i, seed in enumerate(int(s) for s in args.seeds.split(",")):
        plan += [(m, None, seed) for m in wanted
                 if m in METHODS and m != "lmadda" and (m != "none" or i == 0)]
        plan += [("lmadda", int(la), seed) for la in args.layers.split(",") if la]
    done = {_key(r) for r in read_runs(runs_path)}
    none_done = any(k[:3] == (args.task, shift, "none") and k[5] == args.tag for k in done)
    for method, layer, seed in plan:
        if (args.task, shift, method, layer, seed, args.tag) in done or (
                method == "none" and none_done):  # deterministic: one run is enough
            continue
        cfg = AdaptConfig(steps=args.steps, patch_size=patch, eval_every=args.eval_every,
                          eval_patches=16, seed=seed, device="cpu", **extra)
        t0 = time.time()
        result = None
        for ev in iter_adapt(model, d["src_unlabeled"], _label_free_target(d), method=method,
                             layers=layer, config=cfg, monitor=monitor):
            if isinstance(ev, Finished):
                result = ev.result
        assert result is not None
        scores = score(result.model, d["tgt_test"], d["tgt_truth"], args.task)
        row = {"task": args.task, "shift": shift, "method": method, "layer": layer,
               "seed": seed, "tag": args.tag, "scores": scores, "best_step": result.best_step,
               "steps_done": result.steps_done, "criterion": result.criterion,
               "seconds": time.time() - t0, "history": list(result.history),
               "config": cfg.to_dict()}
        with runs_path.open("a") as fh:
            fh.write(json.dumps(json_safe(row)) + "\n")
        print(f"{args.task} {shift or '-':10s} {method}{'@' + str(layer) if layer else ''} "
              f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
              + f" (kept step {result.best_step}, {time.time() - t0:.0f} s)", flush=True)


# ------------------------------------------------------------------ report
def _fmt(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.median(vals):.3f} [{min(vals):.3f}, {max(vals):.3f}]"


def _label(r: dict) -> str:
    if r["method"] == "lmadda":
        return f"LM-ADDA layer {r['layer']}"
    return METHOD_LABELS.get(r["method"], r["method"])


def _order(label: str) -> tuple:
    if label.startswith("LM-ADDA"):
        return (1, int(label.split()[-1]))
    keys = list(METHOD_LABELS.values())
    return (0, keys.index(label) if label in keys else 9)


def per_layer_medians(rows: list[dict], metric: str) -> tuple[dict[int, float], float]:
    """LM-ADDA layer -> median ``metric`` over seeds, and the no-adaptation value."""
    groups: dict[int, list[float]] = {}
    none = math.nan
    for r in rows:
        v = r["scores"].get(metric)
        if v is None:
            continue
        if r["method"] == "lmadda":
            groups.setdefault(int(r["layer"]), []).append(v)
        elif r["method"] == "none":
            none = v
    return {k: statistics.median(v) for k, v in groups.items()}, none


def cmd_report(args: argparse.Namespace, data: Path | None = None) -> None:
    """Tables (median [min, max] over seeds) and a plot per task/shift."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(args.out)
    rows = [r for r in read_runs(out / "runs.jsonl") if r.get("tag", "") == args.tag]
    if not rows:
        print(f"no runs in {out / 'runs.jsonl'} (tag '{args.tag}')")
        return
    md = [f"<!-- generated by benchmarks/real_data.py report (tag '{args.tag}') -->"]
    for task, shift in sorted({(r["task"], r["shift"]) for r in rows}):
        rs = [r for r in rows if r["task"] == task and r["shift"] == shift]
        metrics = ["dice", "jaccard", "pearson"] if task == "em" else ["pearson"]
        key = metrics[0]
        rec_path = out / f"recommend_{task}{'_' + shift if shift else ''}.json"
        rec = json.loads(rec_path.read_text()) if rec_path.exists() else None
        groups: dict[str, list[dict]] = {}
        for r in rs:
            groups.setdefault(_label(r), []).append(r)
        seeds = sorted({r["seed"] for r in rs if r["method"] != "none"})
        title = "EM membranes: ISBI 2012 -> VNC stack1" if task == "em" else \
            f"Allen transmitted light -> DNA, target shift '{shift}'"
        md += [f"\n### {title}\n", f"median [min, max] over seeds {seeds}; "
               "each run scored at the state kept without labels\n",
               "| method | seeds | " + " | ".join(m.capitalize() for m in metrics)
               + f" | kept step (median) | monitor {key}: kept - best checkpoint |",
               "|---|---|" + "---|" * len(metrics) + "---|---|"]
        for label in sorted(groups, key=_order):
            g = groups[label]
            regrets = []
            for r in g:
                tr = [h.get(f"monitor_{key}") for h in r.get("history", [])]
                tr = [v for v in tr if v is not None]
                kept = [h.get(f"monitor_{key}") for h in r.get("history", [])
                        if h["step"] == r["best_step"]]
                if tr and kept and kept[0] is not None:
                    regrets.append(kept[0] - max(tr))
            star = " (recommended)" if rec and label == f"LM-ADDA layer {rec['recommended']}" \
                else ""
            md.append(f"| {label}{star} | {len(g)} | "
                      + " | ".join(_fmt([r["scores"].get(m) for r in g]) for m in metrics)
                      + f" | {statistics.median([r['best_step'] for r in g]):.0f} | "
                      f"{_fmt(regrets)} |")
        oracle_path = out / f"oracle_{task}.json"
        if oracle_path.exists():
            o = json.loads(oracle_path.read_text())["scores"]
            md.append("| oracle (same recipe, trained on labelled target columns) | 1 | "
                      + " | ".join(_fmt([o.get(m)]) for m in metrics) + " | - | - |")
        src_info = model_path(out, task).with_suffix(".json")
        if task == "em" and src_info.exists():
            sv = json.loads(src_info.read_text()).get("source_val", {})
            if sv:
                md.append("| source model on its own domain (4 held-out ISBI images) | 1 | "
                          + " | ".join(_fmt([sv.get(m)]) for m in metrics) + " | - | - |")
        per_layer, none = per_layer_medians(rs, key)
        if per_layer:
            best = max(per_layer, key=per_layer.get)
            line = f"\nBest LM-ADDA layer by median {key}: {best} ({per_layer[best]:.3f})"
            if rec is not None:
                r_layer = rec["recommended"]
                r_val = per_layer.get(r_layer, none if r_layer is None else math.nan)
                line += (f"; recommended layer (label-free): "
                         f"{'none' if r_layer is None else r_layer}"
                         f" ({'not run' if not math.isfinite(r_val) else f'{r_val:.3f}'}, "
                         f"confidence {rec['confidence']:.2f})")
            md.append(line + ".")
        # plot: metric by layer matched, baselines as lines
        fig = Figure(figsize=(4.6 * len(metrics[:2]), 3.4), dpi=110, layout="constrained")
        FigureCanvasAgg(fig)
        axes = np.atleast_1d(fig.subplots(1, len(metrics[:2])))
        styles = {"no adaptation": ("tab:red", "--"), "AdaBN": ("tab:orange", "-."),
                  "ADDA (output layer)": ("tab:blue", ":"), "APMA-style": ("tab:purple", "-"),
                  "SC-GAN": ("tab:brown", "-")}
        for ax, m in zip(axes, metrics[:2]):
            xs = sorted(int(k.split()[-1]) for k in groups if k.startswith("LM-ADDA"))
            if xs:
                vals = [[r["scores"][m] for r in groups[f"LM-ADDA layer {x}"]] for x in xs]
                med = np.array([statistics.median(v) for v in vals])
                lo = np.array([min(v) for v in vals])
                hi = np.array([max(v) for v in vals])
                ax.errorbar(xs, med, yerr=[med - lo, hi - med], fmt="o-", color="k", capsize=3,
                            label="LM-ADDA (median, min-max)")
                ax.set_xticks(xs)
                if rec and rec["recommended"] in xs:
                    ax.axvline(rec["recommended"], color="0.6", lw=6, alpha=0.3,
                               label="recommended layer")
            for label, (color, ls) in styles.items():
                if label in groups:
                    ax.axhline(statistics.median([r["scores"][m] for r in groups[label]]),
                               color=color, ls=ls, label=label)
            ax.set_title(f"{task}{' ' + shift if shift else ''}: {m}")
            ax.set_xlabel("layer matched")
            ax.set_ylabel(f"{m} on target test images")
            ax.grid(alpha=0.3)
        axes[-1].legend(fontsize=7)
        png = Path(args.doc_dir) / f"real_{task}{'_' + shift if shift else ''}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png)
        md.append(f"\n![{title}]({png.name})\n")
    text = "\n".join(md) + "\n"
    (out / "report.md").write_text(text)
    print(text)


def _train_folders(inp: Path, tgt: Path, *, augment: str, steps: int, seed: int, patch: int,
                   name: str, out: Path | None = None):
    """``lmadda train-source``'s recipe on two folders (one thread): model and data."""
    from napari_lmadda.models import UNetConfig
    from napari_lmadda.training import SourceTrainConfig, prepare_training, train_source

    data = prepare_training(inp, [tgt], channel_names=[name], augment=augment,
                            patch_size=patch, batch_size=8, val_fraction=0.2, val_patches=32,
                            seed=seed)
    for line in data.warnings():
        print(f"warning: {line}", flush=True)
    cfg = SourceTrainConfig(steps=steps, patch_size=patch, eval_every=max(1, steps // 10),
                            seed=seed, device="cpu")
    return train_source(data.sampler, data.val, arch=UNetConfig(**ARCH), config=cfg,
                        meta=data.meta, out=out), data


def cmd_train_case(args: argparse.Namespace, data: Path) -> None:
    """Source model of a real data set from its case folders (plain or augmented)."""
    import real_cases  # noqa: PLC0415 - benchmarks/ is on sys.path
    from napari_lmadda.models import save_model

    case = args.dataset if args.dataset == "em" else f"{args.dataset}_exposure"
    paths = real_cases.write_case(case, real_cases.OUT / "cases", data=data)
    source = "plain" if args.augment == "basic" else args.augment
    path = real_cases.source_model_path(case, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res, d = _train_folders(paths.source_input, paths.source_target, augment=args.augment,
                            steps=args.steps, seed=args.seed,
                            patch=128 if args.dataset == "em" else 64,
                            name="membrane" if args.dataset == "em" else "stain")
    save_model(res.model, path)
    info = {"dataset": args.dataset, "augment": args.augment, "steps": args.steps,
            "best_step": res.best_step, "val_pearson": res.best_pearson,
            "target_norm": d.target_norm.to_meta(), "seconds": time.time() - t0}
    path.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"{args.dataset} {source}: {path} (val Pearson {res.best_pearson:.3f} at step "
          f"{res.best_step}, {time.time() - t0:.0f} s)", flush=True)


def cmd_oracle_case(args: argparse.Namespace, data: Path) -> None:
    """The ceiling of a real case: the same recipe trained on its labelled oracle images."""
    import real_cases  # noqa: PLC0415
    from napari_lmadda.evaluation.sweep import pearson_per_channel
    from napari_lmadda.models import save_model

    paths = real_cases.write_case(args.case, real_cases.OUT / "cases", data=data)
    em = args.case == "em"
    t0 = time.time()
    res, _ = _train_folders(paths.oracle_input, paths.oracle_target, augment="basic",
                            steps=args.steps, seed=args.seed, patch=128 if em else 64,
                            name="membrane" if em else "stain")
    path = real_cases.oracle_model_path(args.case)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(res.model, path)
    ev = real_cases.benchmark_case(args.case)["eval"]
    scores = pearson_per_channel(res.model, ev)
    doc = {"case": args.case, "pearson": scores, "steps": args.steps, "seed": args.seed,
           "best_step": res.best_step, "val_pearson": res.best_pearson,
           "seconds": time.time() - t0}
    (real_cases.OUT / f"oracle_{args.case}.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"oracle {args.case}: {scores} ({time.time() - t0:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a task's source model")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--seed", type=int, default=0)
    o = sub.add_parser("oracle", help="em: train on the labelled target columns (ceiling)")
    o.add_argument("--steps", type=int, default=2000)
    o.add_argument("--seed", type=int, default=0)
    rc = sub.add_parser("recommend", help="label-free layer recommendation")
    r = sub.add_parser("run", help="adaptation runs, appended to runs.jsonl")
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--layers", default="2,4,6,8,10")
    r.add_argument("--methods", default="none,adabn,adda,apma,scgan",
                   help="baselines; those not in the engine's METHODS are skipped")
    r.add_argument("--steps", type=int, default=400)
    r.add_argument("--eval-every", type=int, default=100)
    r.add_argument("--config", default="", help="JSON of AdaptConfig overrides")
    r.add_argument("--tag", default="")
    tc = sub.add_parser("train-case", help="source model of a real case's data set")
    tc.add_argument("--dataset", choices=("em", "allen", "bpae"), required=True)
    tc.add_argument("--augment", choices=("none", "basic", "robust"), default="basic")
    tc.add_argument("--steps", type=int, default=1500)
    tc.add_argument("--seed", type=int, default=0)
    oc = sub.add_parser("oracle-case", help="oracle of a real case (labelled new microscope)")
    oc.add_argument("--case", required=True)
    oc.add_argument("--steps", type=int, default=1500)
    oc.add_argument("--seed", type=int, default=0)
    for s_ in (tc, oc):
        s_.add_argument("--data", default=str(DATA), help="the shared data folder")
        s_.add_argument("--threads", type=int, default=1)
        s_.add_argument("--out", default=str(OUT))
    rep = sub.add_parser("report", help="tables and plots from runs.jsonl")
    rep.add_argument("--tag", default="")
    rep.add_argument("--doc-dir", default=str(ROOT / "docs"))
    for s in (t, o, rc, r):
        s.add_argument("--task", choices=TASKS, required=True)
    for s in (rc, r):
        s.add_argument("--shift", choices=list(ALLEN_SHIFTS), default=None,
                       help="target shift (allen task; required there)")
        s.add_argument("--model-seed", type=int, default=0, help="which source model (0)")
    for s in (t, o, rc, r, rep):
        s.add_argument("--out", default=str(OUT))
        s.add_argument("--data", default=str(DATA), help="the shared data folder")
        s.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    data = Path(args.data)
    if args.cmd in ("train-case", "oracle-case"):
        torch.set_num_threads(args.threads)
        {"train-case": cmd_train_case, "oracle-case": cmd_oracle_case}[args.cmd](args, data)
        return 0
    if args.cmd != "report":
        why = data_missing(data, args.task)
        if why is not None:
            print(f"real-data benchmark skipped: {why} (see /work/shared/data/README.md)")
            return 0
        if args.task == "allen" and args.cmd != "train" and args.shift is None:
            p.error("--shift is required for the allen task")
        if args.task == "em" and getattr(args, "shift", None):
            p.error("--shift applies to the allen task only")
    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    {"train": cmd_train, "oracle": cmd_oracle, "recommend": cmd_recommend, "run": cmd_run,
     "report": cmd_report}[args.cmd](args, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
