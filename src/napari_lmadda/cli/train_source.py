"""``lmadda train-source``: supervised (pix2pix-style) training of the source model G.

Inputs and targets are paired by file name. Inputs are percentile-normalised per image.
Targets of any kind (8- or 16-bit, 12-bit in 16, float of any range, negative or z-scored)
are encoded with a normalisation learned from the training files (``--target-norm``,
default ``dataset``: robust percentiles over the whole set per channel), which is stored in
the model file so predictions come back in the target's own units. Targets the model cannot
produce and constant or saturated inputs are named before training starts; a validation
Pearson still near 0 after a few evaluations is reported with its likely causes.

A validation split is held out *by file* (patches of one image never land on both sides),
and the model with the best validation Pearson is written to ``--out`` (the last state to
``<out>_last.pt``), both atomically at every evaluation.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ..data.augment import AUGMENT_PRESETS, describe_preset
from ..data.normalize import DEFAULT_TARGET_PERCENTILES, TARGET_MODES
from ..training.data import split_by_file  # noqa: F401 - re-exported (older imports)
from ..training.source import SIZE_PRESETS

NAME = "train-source"
HELP = (
    "Train the source model G on paired images (input folder + one folder per output "
    "channel, files matched by name)."
)


def _size_help() -> str:
    parts = []
    for name, p in SIZE_PRESETS.items():
        t = p.get("seconds_per_1000")
        when = f", {t / 60:.0f} min per 1000 steps on 1 CPU core" if t else ""
        parts.append(f"{name} = UNet depth {p['num_downs']}, {p['ngf']} filters, "
                     f"{p['patch']} px patches{when}")
    return ("model and patch size: " + "; ".join(parts)
            + ". auto = large on a CUDA GPU, small otherwise (auto). --num-downs, --ngf, "
            "--patch and --batch override the preset")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``train-source`` to its parser."""
    parser.add_argument("--inputs", type=Path, required=True, help="folder of input images")
    parser.add_argument("--targets", type=Path, action="append", required=True,
                        help="folder of target images of one output channel; repeat the "
                        "option for several channels")
    parser.add_argument("--out", type=Path, required=True, metavar="MODEL.pt",
                        help="model file to write (best validation state; the last state "
                        "goes to MODEL_last.pt)")
    parser.add_argument("--channel-names", default=None, metavar="DAPI,CD29",
                        help="names of the output channels (default: the target folder names)")
    parser.add_argument("--size", default="auto", choices=("auto", *SIZE_PRESETS),
                        help=_size_help())
    parser.add_argument("--augment", default="basic", choices=AUGMENT_PRESETS,
                        help="training augmentation: " + "; ".join(
                            f"{n} = {describe_preset(n)}" for n in AUGMENT_PRESETS)
                        + " (basic)")
    parser.add_argument("--target-norm", default="dataset", choices=TARGET_MODES,
                        help="how targets are encoded: dataset = robust percentiles over all "
                        "training targets per channel (predictions in the targets' units); "
                        "image = each target by its own percentiles (CARE-style; predictions "
                        "in normalised units); fixed = --target-range (dataset)")
    parser.add_argument("--target-percentiles", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        default=list(DEFAULT_TARGET_PERCENTILES),
                        help="percentiles of the dataset and image target normalisation "
                        f"({DEFAULT_TARGET_PERCENTILES[0]:g} {DEFAULT_TARGET_PERCENTILES[1]:g})")
    parser.add_argument("--target-range", type=float, nargs=2, metavar=("LO", "HI"),
                        default=None, help="target values of --target-norm fixed (0 1)")
    parser.add_argument("--steps", type=int, default=2000, help="training steps (2000)")
    parser.add_argument("--batch", type=int, default=None,
                        help="patches per step (from --size: 8)")
    parser.add_argument("--patch", type=int, default=None,
                        help="patch side, a multiple of 2**num-downs (from --size)")
    parser.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (2e-4)")
    parser.add_argument("--lambda-gan", type=float, default=0.0,
                        help="weight of the conditional PatchGAN loss; 0 = L1 only (0)")
    parser.add_argument("--num-downs", type=int, default=None,
                        help="UNet depth: 8 = pix2pix unet_256, 7 = unet_128 (from --size)")
    parser.add_argument("--ngf", type=int, default=None,
                        help="filters of the first layer (from --size)")
    parser.add_argument("--norm", choices=("batch", "instance", "none"), default="batch",
                        help="normalisation layers (batch)")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="fraction of the files held out for validation (0.2)")
    parser.add_argument("--val-patches", type=int, default=32,
                        help="fixed validation patches (32)")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="steps between validations (default: steps/20, at least 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, split and "
                        "sampling (0)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    """Train, print a line per validation, and write the model files."""
    import time

    from ..adapt.events import Evaluated, Started, Step, StopReason
    from ..devices import resolve_device
    from ..errors import ConfigError
    from ..models.checkpoint import save_model
    from ..models.unet import UNetConfig
    from ..training import (
        NotLearning,
        SourceTrainConfig,
        TimeEstimate,
        prepare_training,
        size_preset,
        train_source,
    )
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
    names = ([s.strip() for s in args.channel_names.split(",") if s.strip()]
             if args.channel_names else [Path(t).name for t in args.targets])
    if len(names) != len(args.targets):
        raise ConfigError(
            f"{len(names)} channel name(s) ({', '.join(names)}) for {len(args.targets)} "
            "--targets folder(s)"
        )
    if args.val_patches < 1:
        raise ConfigError(f"--val-patches must be >= 1, got {args.val_patches}")
    if args.target_range is not None and args.target_norm != "fixed":
        raise ConfigError("--target-range applies to --target-norm fixed only")
    device = str(resolve_device(args.device))
    size_name, preset = size_preset(args.size, device)
    num_downs = args.num_downs if args.num_downs is not None else preset["num_downs"]
    ngf = args.ngf if args.ngf is not None else preset["ngf"]
    patch = args.patch if args.patch is not None else preset["patch"]
    batch = args.batch if args.batch is not None else preset["batch"]
    arch = UNetConfig(in_channels=1, out_channels=len(names), num_downs=num_downs,
                      ngf=ngf, norm=args.norm)
    eval_every = args.eval_every if args.eval_every is not None else max(1, args.steps // 20)
    cfg = SourceTrainConfig(steps=args.steps, batch_size=batch, patch_size=patch,
                            lr=args.lr, lambda_gan=args.lambda_gan, eval_every=eval_every,
                            seed=args.seed, device=args.device)
    if patch % 2**num_downs:
        raise ConfigError(
            f"--patch {patch} must be a multiple of {2**num_downs} (2**--num-downs)"
        )

    data = prepare_training(
        args.inputs, args.targets, channel_names=names, target_norm=args.target_norm,
        target_percentiles=tuple(args.target_percentiles),
        target_range=tuple(args.target_range) if args.target_range else None,
        augment=args.augment, patch_size=patch, batch_size=batch,
        val_fraction=args.val_fraction, val_patches=args.val_patches, seed=args.seed)
    if not data.val_files:
        print("warning: a single input file; validating on training patches", flush=True)
    tn = data.target_norm
    print(f"training on {data.n_train} plane(s), validating on {data.n_val} "
          f"({len(data.val_files)} held-out file(s)); {len(names)} output channel(s): "
          f"{', '.join(names)}", flush=True)
    units = "normalised units (per image)" if tn.units == "normalised" else "target units"
    print(f"targets encoded '{tn.mode}': " + ", ".join(
        f"{n} {lo:g}..{hi:g}" for n, lo, hi in zip(names, tn.lo, tn.hi))
        + f" -> network -1..1; predictions in {units}", flush=True)
    hints = []
    for line in data.warnings():
        print(f"warning: {line}", flush=True)
    if data.target_problems:
        worst = max(data.target_problems, key=lambda p: p.outside)
        hints.append(f"targets outside what the model can produce, e.g. '{worst.name}' "
                     f"({100 * worst.outside:.0f} % of its pixels): use --target-norm dataset")
    t_pre = preset.get("seconds_per_1000") if (num_downs, ngf, patch, batch) == (
        preset["num_downs"], preset["ngf"], preset["patch"], preset["batch"]) else None
    print(f"size '{size_name}': UNet depth {num_downs}, {ngf} filters, {patch} px patches, "
          f"batch {batch}; augmentation '{args.augment}'"
          + (f"; measured on one CPU core: {fmt_duration(t_pre * args.steps / 1000)} for "
             f"{args.steps} steps" if t_pre and device == "cpu" else ""), flush=True)

    make_parent(out, "--out")
    last: dict[str, Any] = {}

    def show(ev: Any) -> None:
        if isinstance(ev, Started):
            last["t0"] = time.perf_counter()
            print(f"{ev.trainable_params:,} parameters on {ev.device}; {ev.total_steps} steps, "
                  f"validation every {eval_every}", flush=True)
        elif isinstance(ev, TimeEstimate):
            print(ev.message(), flush=True)
        elif isinstance(ev, NotLearning):
            print(f"warning: {ev.message()}", flush=True)
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

    meta = {**data.meta, "provenance": {**data.meta["provenance"], "size": size_name}}
    with cancel_on_sigint("training") as cancel:
        result = train_source(data.sampler, data.val, arch=arch, config=cfg, meta=meta,
                              out=out, cancel=cancel, callback=show, hints=hints)
    elapsed = time.perf_counter() - last.get("t0", time.perf_counter())
    if result.best_step == 0:
        print(f"stopped ({result.reason.value}) before the first validation; no model written")
        return 1
    save_model(result.model, out)  # the best state, with the complete provenance
    print(f"{result.reason.value} in {fmt_duration(elapsed)}: best validation Pearson "
          f"{result.best_pearson:.4f} at step {result.best_step}; wrote {out}")
    if result.not_learning is not None:
        print("warning: the model written did not learn (see above); do not adapt or "
              "predict with it before fixing the cause")
    return 0 if result.reason is StopReason.COMPLETED else 1
