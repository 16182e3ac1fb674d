"""Time per 1000 source-training steps for each ``train-source --size`` preset.

Runs a few real training steps (L1, Adam, batch of the preset's size and patch) per preset on
random data, after two warm-up steps, and prints a markdown table of seconds per step and
minutes per 1000 steps. Time is the process's CPU time with one thread, i.e. the wall time
on one free core: on a machine shared with other jobs the wall time is longer, on a laptop's
4-8 cores shorter, on a GPU 10-100x shorter. The wall time is printed too.

    python benchmarks/train_speed.py --threads 1 --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "train_speed.md"


class _Random:
    def __init__(self, batch: int, patch: int) -> None:
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((batch, 1, patch, patch)).astype(np.float32)
        self.y = np.tanh(self.x).astype(np.float32)

    def sample(self):
        return self.x, self.y


def time_preset(name: str, steps: int) -> dict:
    from napari_lmadda.models.unet import UNetConfig
    from napari_lmadda.training import (
        SIZE_PRESETS,
        SourceTrainConfig,
        TimeEstimate,
        iter_train_source,
    )

    p = SIZE_PRESETS[name]
    data = _Random(p["batch"], p["patch"])
    cfg = SourceTrainConfig(steps=steps + 2, batch_size=p["batch"], patch_size=p["patch"],
                            eval_every=10**6, device="cpu", warn_after=0)
    arch = UNetConfig(num_downs=p["num_downs"], ngf=p["ngf"])
    t_start = c_start = None
    n_params = 0
    for ev in iter_train_source(data, (data.x[:1], data.y[:1]), arch=arch, config=cfg):
        if hasattr(ev, "trainable_params"):
            n_params = ev.trainable_params
        if getattr(ev, "step", None) == 2 and not isinstance(ev, TimeEstimate) and \
                t_start is None:
            t_start, c_start = time.perf_counter(), time.process_time()
    per = (time.process_time() - c_start) / steps
    wall = (time.perf_counter() - t_start) / steps
    return {"size": name, "num_downs": p["num_downs"], "ngf": p["ngf"], "patch": p["patch"],
            "batch": p["batch"], "params": n_params, "seconds_per_step": per,
            "seconds_per_1000": 1000 * per, "wall_seconds_per_step": wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--sizes", default="tiny,small,medium,large")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [time_preset(s, args.steps) for s in args.sizes.split(",")]
    load = os.getloadavg()[0]
    md = [f"CPU time of {args.threads} thread(s) (= wall time on one free core), "
          f"{args.steps} timed steps after 2 warm-up steps; wall time measured alongside at "
          f"load average {load:.1f} on a 2-core VM shared with other jobs.\n",
          "| --size | UNet depth | ngf | patch | batch | parameters | CPU s per step | "
          "min per 1000 steps (one core) | wall s per step (shared machine) |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['size']} | {r['num_downs']} | {r['ngf']} | {r['patch']} | "
                  f"{r['batch']} | {r['params']:,} | {r['seconds_per_step']:.2f} | "
                  f"{r['seconds_per_1000'] / 60:.1f} | {r['wall_seconds_per_step']:.2f} |")
    text = "\n".join(md) + "\n"
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
