"""Reproduce the bundled demo model: synthetic phase contrast -> (DAPI, CD29).

    python scripts/train_demo_model.py [--steps 2500] [--out PATH]

A pix2pix UNet with 6 down blocks (12 layers), ngf 16, 1 input and 2 output channels, trained
with L1 on 128 px patches of 96 synthetic 256x256 phase-contrast fields (seed 1), validated
on 8 other fields (seed 2). Stored in float16 (about 3.7 MB). Takes about 6-10 minutes on
2 CPU cores.
"""

import argparse
import time

import numpy as np
import torch

from napari_lmadda.data.datasets import PairedArrays, PatchSampler
from napari_lmadda.data.normalize import percentile_normalize
from napari_lmadda.data.synthetic import make_domain
from napari_lmadda.models import UNetConfig, save_model
from napari_lmadda.training import SourceTrainConfig, train_source
from napari_lmadda.training.source import TARGET_RANGE

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--steps", type=int, default=2500)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--out", default="src/napari_lmadda/assets/demo_model.pt")
args = p.parse_args()
torch.set_num_threads(args.threads)

t0 = time.time()
train = make_domain(96, modality="phase", size=256, seed=1)
val = make_domain(8, modality="phase", size=256, seed=2)
targets = np.stack([train["dapi"], train["cd29"]], 1)
pairs = PairedArrays(train["input"], targets, target_range=TARGET_RANGE)
sampler = PatchSampler(pairs, 128, 8, seed=0, augment=True)
lo, hi = TARGET_RANGE
vx = np.stack([percentile_normalize(im)[0] for im in val["input"]])[:, None]
vy = (np.stack([val["dapi"], val["cd29"]], 1) - lo) / (hi - lo) * 2 - 1
cfg = SourceTrainConfig(steps=args.steps, eval_every=250, device="cpu", seed=0)
meta = {
    "channel_names": ["DAPI", "CD29"],
    "input_percentiles": [1.0, 99.8],
    "target_range": list(TARGET_RANGE),
    "provenance": {
        "data": "napari_lmadda.data.synthetic make_domain(96, modality='phase', size=256, seed=1)",
        "script": "scripts/train_demo_model.py",
    },
}


def show(ev):
    if getattr(ev, "is_best", None) is not None:
        print(
            f"step {ev.step:5d}  val Pearson {ev.metrics}  {time.time() - t0:5.0f} s", flush=True
        )


arch = UNetConfig(num_downs=6, ngf=16, in_channels=1, out_channels=2, norm="batch")
result = train_source(sampler, (vx, vy), arch=arch, config=cfg, meta=meta, callback=show)
hist = {h["step"]: h for h in result.history}[result.best_step]
result.model.meta["provenance"]["validation_pearson"] = dict(
    zip(["DAPI", "CD29"], hist["per_channel"])
)
save_model(result.model, args.out, half=True)
print(
    f"best step {result.best_step}: Pearson DAPI {hist['per_channel'][0]:.3f}, "
    f"CD29 {hist['per_channel'][1]:.3f}; wrote {args.out} in {time.time() - t0:.0f} s"
)
