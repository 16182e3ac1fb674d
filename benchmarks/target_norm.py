"""Target normalisation on real 16-bit data: fixed [0, 1] (before issue 11) vs learned
percentiles over the training set (``dataset``) vs per-image percentiles (``image``, CARE).

Trains the same small source model with each ``--target-norm`` on the source half of a real
case (``benchmarks/real_cases.py``: uint16 inputs and uint16 stain targets) and scores it
on the held-out source files: the training's own validation Pearson, the mean per-image
Pearson against the raw truth (fair to every mode: per-image Pearson ignores an affine
change per image) and, for modes that predict in target units, the Pearson pooled over all
held-out pixels in those units (relative brightness between fields).

    python benchmarks/target_norm.py --case bpae_exposure --modes fixed,dataset,image
    python benchmarks/target_norm.py --report

One line per run appended to ``benchmarks/results/target_norm/runs.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "target_norm"


def run(case: str, mode: str, steps: int, seed: int, out: Path) -> dict:
    import real_cases  # noqa: PLC0415 - benchmarks/ is on sys.path
    from napari_lmadda.data.normalize import TargetNorm, percentile_normalize
    from napari_lmadda.evaluation.metrics import pearson
    from napari_lmadda.models.unet import UNetConfig
    from napari_lmadda.training import SourceTrainConfig, prepare_training, train_source

    paths = real_cases.write_case(case, real_cases.OUT / "cases")
    patch = 128 if case == "em" else 64
    data = prepare_training(paths.source_input, [paths.source_target], channel_names=["stain"],
                            target_norm=mode, augment="basic", patch_size=patch,
                            batch_size=8, val_fraction=0.25, val_patches=32, seed=seed)
    arch = UNetConfig(num_downs=5, ngf=16, in_channels=1, out_channels=1)
    cfg = SourceTrainConfig(steps=steps, patch_size=patch, eval_every=max(1, steps // 8),
                            seed=seed, device="cpu")
    t0 = time.time()
    res = train_source(data.sampler, data.val, arch=arch, config=cfg, meta=data.meta)
    import tifffile

    tn = TargetNorm.from_meta(res.model.meta, 1)
    per_image, preds, truths = [], [], []
    for name in data.val_files:
        x = tifffile.imread(paths.source_input / name).astype(np.float32)
        y = tifffile.imread(paths.source_target / name).astype(np.float64)
        with torch.no_grad():
            net = res.model(torch.from_numpy(percentile_normalize(x)[0])[None, None])[0].numpy()
        pred = tn.decode(net)[0]
        per_image.append(pearson(pred, y))
        preds.append(pred.ravel())
        truths.append(y.ravel())
    pooled = (float(np.corrcoef(np.concatenate(preds), np.concatenate(truths))[0, 1])
              if tn.units == "target" else None)
    row = {"case": case, "mode": mode, "seed": seed, "steps": steps,
           "val_pearson": res.best_pearson, "best_step": res.best_step,
           "per_image_pearson": float(np.nanmean(per_image)), "pooled_pearson": pooled,
           "not_learning": res.not_learning is not None, "target_norm": tn.to_meta(),
           "warnings": data.warnings(), "val_files": data.val_files,
           "seconds": time.time() - t0}
    with (out / "runs.jsonl").open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    shown = "-" if pooled is None else f"{pooled:.3f}"
    print(f"{case} {mode} seed {seed}: val Pearson {res.best_pearson:.3f}, per-image "
          f"{row['per_image_pearson']:.3f}, pooled {shown} ({row['seconds']:.0f} s)"
          f"{'  NOT LEARNING' if row['not_learning'] else ''}", flush=True)
    return row


def report(out: Path) -> str:
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines() if line]
    md = ["| case | --target-norm | seeds | val Pearson (training) | per-image Pearson, "
          "held-out files | pooled Pearson in target units |", "|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["case"], r["mode"]), []).append(r)

    def fmt(vals):
        vals = [v for v in vals if v is not None]
        if not vals:
            return "-"
        med = float(np.median(vals))
        return f"{med:.3f}" if len(vals) == 1 else f"{med:.3f} [{min(vals):.3f}, {max(vals):.3f}]"

    for (case, mode), g in sorted(groups.items()):
        md.append(f"| {case} | {mode} | {len(g)} | {fmt([r['val_pearson'] for r in g])} | "
                  f"{fmt([r['per_image_pearson'] for r in g])} | "
                  f"{fmt([r['pooled_pearson'] for r in g])} |")
    text = "\n".join(md) + "\n"
    (out / "report.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="bpae_exposure")
    p.add_argument("--modes", default="fixed,dataset,image")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--seeds", default="0")
    p.add_argument("--report", action="store_true")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report:
        print(report(out))
        return 0
    torch.set_num_threads(1)
    for seed in (int(s) for s in args.seeds.split(",")):
        for mode in args.modes.split(","):
            run(args.case, mode, args.steps, seed, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
