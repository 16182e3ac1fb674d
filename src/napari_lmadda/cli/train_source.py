"""``lmadda train-source``: supervised (pix2pix-style) training of the source model G.

Inputs and targets are paired by file name. Inputs are percentile-normalised per image;
targets are mapped from the fixed range ``TARGET_RANGE`` to the network range, so a target of
0 sits a little above -1 and a sparse stain does not push tanh into saturation. The range is
stored in the model file, and prediction maps the output back to target units with it.

A validation split is held out *by file* (patches of one image never land on both sides),
and the model with the best validation Pearson is written to ``--out`` (the last state to
``<out>_last.pt``), both atomically at every evaluation.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.datasets import PairedDataset, PlaneDataset
from ..options import add_arguments as add_arguments_of
from ..options import option
from ..training.source import TARGET_RANGE

NAME = "train-source"
HELP = (
    "Train the source model G on paired images (input folder + one folder per output "
    "channel, files matched by name)."
)

@dataclass(kw_only=True)
class TrainSourceArgs:
    """The options of ``train-source``."""

    inputs: Path = option(help="folder of input images", flag="--inputs")
    targets: list[Path] = option(help="folder of target images of one output channel; repeat "
                                 "the option for several channels", flag="--targets",
                                 repeat=True)
    out: Path = option(help="model file to write (best validation state; the last state goes "
                       "to MODEL_last.pt)", flag="--out", metavar="MODEL.pt")
    channel_names: str | None = option(None, "names of the output channels",
                                       flag="--channel-names", metavar="DAPI,CD29",
                                       default_text="default: the target folder names")
    steps: int = option(2000, "training steps", flag="--steps")
    batch: int = option(8, "patches per step", flag="--batch")
    patch: int = option(256, "patch side, a multiple of 2**num-downs", flag="--patch")
    lr: float = option(2e-4, "Adam learning rate", flag="--lr", default_text="2e-4")
    lambda_gan: float = option(0.0, "weight of the conditional PatchGAN loss; 0 = L1 only",
                               flag="--lambda-gan")
    num_downs: int = option(8, "UNet depth: 8 = pix2pix unet_256, 7 = unet_128",
                            flag="--num-downs")
    ngf: int = option(64, "filters of the first layer", flag="--ngf")
    norm: str = option("batch", "normalisation layers", flag="--norm",
                       choices=("batch", "instance", "none"))
    val_fraction: float = option(0.2, "fraction of the files held out for validation",
                                 flag="--val-fraction")
    val_patches: int = option(32, "fixed validation patches", flag="--val-patches")
    eval_every: int | None = option(None, "steps between validations", flag="--eval-every",
                                    default_text="default: steps/20, at least 1")
    seed: int = option(0, "seed of initialisation, split and sampling", flag="--seed")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps", flag="--device")
    overwrite: bool = option(False, "replace an existing --out", flag="--overwrite")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``train-source`` to its parser (:class:`TrainSourceArgs`)."""
    add_arguments_of(parser, TrainSourceArgs)


class _Subset(PlaneDataset):
    """The planes ``indices`` of another dataset (already normalised by it)."""

    def __init__(self, parent: PlaneDataset, indices: list[int]) -> None:
        super().__init__(normalize=None, cache_size=0)
        self.parent, self.indices = parent, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.parent[self.indices[self._check_index(index)]]

    def shape(self, index: int) -> tuple[int, int]:
        return self.parent.shape(self.indices[index])

    def name(self, index: int) -> str:
        return self.parent.name(self.indices[index])

    def path(self, index: int) -> Path | None:
        return self.parent.path(self.indices[index])  # type: ignore[attr-defined]


def split_by_file(
    pairs: PairedDataset, val_fraction: float, seed: int
) -> tuple[PairedDataset, PairedDataset | None, list[str]]:
    """Split a paired dataset into training and validation parts by file.

    Parameters
    ----------
    pairs : PairedDataset
        All pairs.
    val_fraction : float
        Fraction of the files held out (at least one file when there are two or more).
    seed : int
        Seed of the shuffle.

    Returns
    -------
    train, val : PairedDataset
        ``val`` is None when there is a single file.
    val_files : list of str
        Names of the held-out files.
    """
    from ..errors import ConfigError

    if not 0 <= val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    files: dict[str, list[int]] = {}
    for i in range(len(pairs)):
        p = pairs.path(i)
        files.setdefault(str(p) if p is not None else pairs.name(i), []).append(i)
    keys = list(files)
    if len(keys) < 2 or val_fraction == 0:
        return pairs, None, []
    order = np.random.default_rng(seed).permutation(len(keys))
    n_val = min(len(keys) - 1, max(1, int(round(val_fraction * len(keys)))))
    val_keys = {keys[i] for i in order[:n_val]}

    def subset(keep: list[int]) -> PairedDataset:
        targets = [_Subset(t, keep) for t in pairs.targets]
        return PairedDataset(_Subset(pairs.inputs, keep), targets)

    train_idx = [i for k in keys if k not in val_keys for i in files[k]]
    val_idx = [i for k in keys if k in val_keys for i in files[k]]
    return subset(train_idx), subset(val_idx), sorted(Path(k).name for k in val_keys)


def run(args: argparse.Namespace) -> int:
    """Train, print a line per validation, and write the model files."""
    import time

    from ..adapt.events import Evaluated, Started, Step, StopReason
    from ..adapt.sampling import check_patch_fits
    from ..data.datasets import PairedFolders, PatchSampler
    from ..errors import ConfigError
    from ..models.checkpoint import save_model
    from ..models.unet import UNetConfig
    from ..training import SourceTrainConfig, train_source
    from ._common import (
        cancel_on_sigint,
        check_folder,
        check_new_file,
        fmt_duration,
        make_parent,
    )

    for folder in [args.inputs, *args.targets]:
        check_folder(folder, "--inputs" if folder is args.inputs else "--targets")
    out = check_new_file(args.out, "--out", args.overwrite)
    if args.channel_names:
        names = [s.strip() for s in args.channel_names.split(",") if s.strip()]
    else:
        names = [Path(t).name for t in args.targets]
    if len(names) != len(args.targets):
        raise ConfigError(
            f"{len(names)} channel name(s) ({', '.join(names)}) for {len(args.targets)} "
            "--targets folder(s)"
        )
    if args.val_patches < 1:
        raise ConfigError(f"--val-patches must be >= 1, got {args.val_patches}")
    arch = UNetConfig(in_channels=1, out_channels=len(names), num_downs=args.num_downs,
                      ngf=args.ngf, norm=args.norm)
    eval_every = args.eval_every if args.eval_every is not None else max(1, args.steps // 20)
    cfg = SourceTrainConfig(steps=args.steps, batch_size=args.batch, patch_size=args.patch,
                            lr=args.lr, lambda_gan=args.lambda_gan, eval_every=eval_every,
                            seed=args.seed, device=args.device)
    if args.patch % 2**args.num_downs:
        raise ConfigError(
            f"--patch {args.patch} must be a multiple of {2**args.num_downs} (2**--num-downs)"
        )

    pairs = PairedFolders(args.inputs, args.targets, target_normalize="fixed",
                          target_range=TARGET_RANGE, on_unmatched="warn")
    check_patch_fits(pairs, args.patch, "input")
    train, val, val_files = split_by_file(pairs, args.val_fraction, args.seed)
    if val is None:
        print("warning: a single input file; validating on training patches", flush=True)
        val = train
    sampler = PatchSampler(train, args.patch, args.batch, seed=args.seed, augment=True)
    val_batch = PatchSampler(val, args.patch, args.val_patches, seed=args.seed + 1).sample()
    meta: dict[str, Any] = {
        "channel_names": names,
        "input_percentiles": list(pairs.inputs.percentiles),
        "target_range": list(TARGET_RANGE),
        "provenance": {
            "inputs": str(args.inputs),
            "targets": [str(t) for t in args.targets],
            "n_pairs": len(pairs),
            "val_files": val_files,
        },
    }
    print(f"training on {len(train)} plane(s), validating on {len(val)} "
          f"({len(val_files)} held-out file(s)); {len(names)} output channel(s): "
          f"{', '.join(names)}", flush=True)

    make_parent(out, "--out")
    last: dict[str, Any] = {}

    def show(ev: Any) -> None:
        if isinstance(ev, Started):
            last["t0"] = time.perf_counter()
            print(f"{ev.trainable_params:,} parameters on {ev.device}; {ev.total_steps} steps, "
                  f"validation every {eval_every}", flush=True)
        elif isinstance(ev, Step):
            last["step"] = ev
        elif isinstance(ev, Evaluated):
            st = last.get("step")
            loss = f"{st.loss_g:.4f}" if st is not None else "-"
            eta = fmt_duration(st.eta) if st is not None else "?"
            per_ch = "  ".join(
                f"{n} {ev.metrics.get(f'pearson_{i}', math.nan):.3f}" for i, n in enumerate(names)
            )
            print(f"step {ev.step:>6}/{cfg.steps}  L1 {loss}  val Pearson {ev.criterion:.4f} "
                  f"({per_ch}){'  *best*' if ev.is_best else ''}  left {eta}", flush=True)

    with cancel_on_sigint("training") as cancel:
        result = train_source(sampler, (val_batch[0], val_batch[1]), arch=arch, config=cfg,
                              meta=meta, out=out, cancel=cancel, callback=show)
    elapsed = time.perf_counter() - last.get("t0", time.perf_counter())
    if result.best_step == 0:
        print(f"stopped ({result.reason.value}) before the first validation; no model written")
        return 1
    save_model(result.model, out)  # the best state, with the complete provenance
    print(f"{result.reason.value} in {fmt_duration(elapsed)}: best validation Pearson "
          f"{result.best_pearson:.4f} at step {result.best_step}; wrote {out}")
    return 0 if result.reason is StopReason.COMPLETED else 1
