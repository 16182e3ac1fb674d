"""Label-free scores of every checkpoint of the candidate grids (not a test).

Reads ``benchmarks/results/auto/grid.jsonl`` (written by ``auto_grid.py``), loads every
saved checkpoint and measures it with :class:`napari_lmadda.adapt.scoring.FixedProbe`:
the same fixed source and target patches for every candidate of a case and seed, so the
scores compare across layers and methods. It also measures the *noise floor* of each score:
the source model G scored with a second, disjoint set of *source* patches in place of the
target (how far two samples of the same microscope are by that score).

One line per checkpoint is appended to ``benchmarks/results/auto/scores.jsonl`` with the
scores and the checkpoint's ground truth from the grid (never used by any score);
``criteria_validation.py --scores`` turns them into the validation tables.

    python benchmarks/auto_scores.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from auto_grid import OUT, domains, truth_of
from napari_lmadda.adapt.scoring import FixedProbe, image_patches
from napari_lmadda.jsonsafe import json_safe
from napari_lmadda.models import load_model

N_PROBE, PATCH = 128, 128
LATE = (9, 10, 11, 12)


def probe_patches(source, target, seed: int):
    """Fixed patches as auto draws them (source, target), and a second source set (floor)."""
    return (image_patches(source, N_PROBE, PATCH, 10_000 + seed)[0],
            image_patches(target, N_PROBE, PATCH, 20_000 + seed)[0],
            image_patches(source, N_PROBE, PATCH, 30_000 + seed)[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", type=Path, default=OUT / "grid.jsonl")
    p.add_argument("--out", type=Path, default=OUT / "scores.jsonl")
    p.add_argument("--model", default="demo")
    p.add_argument("--cases", default="", help="only these cases (comma-separated)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    done = set()
    if args.out.exists():
        done = {(r["case"], r["seed"], r["method"], r["layer"], r["steps"], r["step"])
                for r in map(json.loads, args.out.read_text().splitlines())}
    runs = [json.loads(line) for line in args.grid.read_text().splitlines()]
    # the one-checkpoint baselines first: they are quick and decide about AdaBN
    runs.sort(key=lambda r: r["method"] == "lmadda")
    only = {c for c in args.cases.split(",") if c}
    probes: dict[tuple, FixedProbe] = {}
    net = load_model(args.model)
    for r in runs:
        if only and r["case"] not in only:
            continue
        key = (r["case"], r["seed"])
        if key not in probes:
            source, target, _ = domains(r["case"])
            ps, pt, ps2 = probe_patches(source, target, r["seed"])
            # late layers only: the per-layer distances of every layer ranked worse (n32 run)
            probes[key] = FixedProbe.build(model, ps, pt, layers=LATE)
            floor_key = (r["case"], r["seed"], "floor", None, 0, 0)
            if floor_key not in done:
                floor = FixedProbe.build(model, ps, ps2, layers=LATE).scores(model)
                with args.out.open("a") as fh:
                    fh.write(json.dumps(json_safe({
                        "case": r["case"], "seed": r["seed"], "method": "floor", "layer": None,
                        "steps": 0, "step": 0, "scores": floor})) + "\n")
                done.add(floor_key)
        probe = probes[key]
        for h in r["history"]:
            k = (r["case"], r["seed"], r["method"], r["layer"], r["steps"], h["step"])
            if k in done:
                continue
            path = Path(r["ckpt"]) / f"step{h['step']:05d}.pt"
            if not path.exists():
                continue
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            t0 = time.perf_counter()
            kept: dict = {}
            sc = probe.scores(net, keep=kept)
            # the predictions on the probe's target patches, for comparisons across candidates
            np.save(path.with_name(f"{path.stem}_pred.npy"),
                    kept["target"].numpy().astype(np.float16))
            row = {"case": r["case"], "seed": r["seed"], "method": r["method"],
                   "layer": r["layer"], "steps": r["steps"], "step": h["step"],
                   "kept": h["step"] == r["best_step"], "scores": sc,
                   "engine": {m: h[m] for m in ("gap", "tap_w2", "out_w2", "source_drift",
                                                "d_acc") if m in h},
                   "truth": truth_of(h),
                   "seconds": time.perf_counter() - t0}
            with args.out.open("a") as fh:
                fh.write(json.dumps(json_safe(row)) + "\n")
            done.add(k)
            truth = row["truth"].get("monitor_pearson", float("nan"))
            print(f"{r['case']} s{r['seed']} {r['method']} {r['layer']} step {h['step']}: "
                  f"out_w2 {sc['out_w2']:.4f} tta {sc['tta']:.4f} truth {truth:.3f} "
                  f"({row['seconds']:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
