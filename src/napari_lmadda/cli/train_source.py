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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.augment import AUGMENT_PRESETS, describe_preset
from ..data.normalize import DEFAULT_TARGET_PERCENTILES, TARGET_MODES
from ..options import add_arguments as add_arguments_of
from ..options import option
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
        when = (f", {t / 60:.1f} min" if t < 600 else f", {t / 3600:.1f} h") + \
            " per 1000 steps on one CPU core" if t else ""
        parts.append(f"{name} = UNet depth {p['num_downs']}, {p['ngf']} filters, "
                     f"{p['patch']} px patches{when}")
    return ("model and patch size: " + "; ".join(parts)
            + " (measured on one free core of a 2-core VM; a GPU is 10-100x faster). auto = "
            "large on a CUDA GPU, small otherwise. --num-downs, --ngf, --patch and --batch "
            "override the preset")


def _float_pair(text: str) -> tuple[float, float]:
    """``"0.1,99.9"`` -> ``(0.1, 99.9)`` for argparse."""
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers LOW,HIGH, got {text!r}") from None
    return a, b


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
    size: str = option("auto", _size_help(), flag="--size", choices=("auto", *SIZE_PRESETS))
    augment: str = option("basic", "training augmentation: " + "; ".join(
        f"{n} = {describe_preset(n)}" for n in AUGMENT_PRESETS), flag="--augment",
        choices=AUGMENT_PRESETS)
    target_norm: str = option(
        "dataset", "how targets are encoded: dataset = robust percentiles over all training "
        "targets per channel (predictions in the targets' units); image = each target by its "
        "own percentiles (CARE-style; predictions in normalised units); fixed = "
        "--target-range", flag="--target-norm", choices=TARGET_MODES)
    target_percentiles: tuple[float, float] = option(
        DEFAULT_TARGET_PERCENTILES, "percentiles of the dataset and image target "
        "normalisation", flag="--target-percentiles", metavar="LOW,HIGH",
        cli_type=_float_pair, default_text="0.1,99.9")
    target_range: tuple[float, float] | None = option(
        None, "target values of --target-norm fixed", flag="--target-range", metavar="LO,HI",
        cli_type=_float_pair, default_text="0,1")
    steps: int = option(2000, "training steps", flag="--steps")
    batch: int | None = option(None, "patches per step", flag="--batch",
                               default_text="from --size: 8")
    patch: int | None = option(None, "patch side, a multiple of 2**num-downs", flag="--patch",
                               default_text="from --size")
    lr: float = option(2e-4, "Adam learning rate", flag="--lr", default_text="2e-4")
    lambda_gan: float = option(0.0, "weight of the conditional PatchGAN loss; 0 = L1 only",
                               flag="--lambda-gan")
    num_downs: int | None = option(None, "UNet depth: 8 = pix2pix unet_256, 7 = unet_128",
                                   flag="--num-downs", default_text="from --size")
    ngf: int | None = option(None, "filters of the first layer", flag="--ngf",
                             default_text="from --size")
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
    from ._arch import add_arch_arguments

    add_arguments_of(parser, TrainSourceArgs)
    # --arch trains another network instead of the UNet (--num-downs, --ngf, --norm unused)
    add_arch_arguments(parser, names=("arch", "arch_kwargs", "input_size"))


def _arch_network(args: argparse.Namespace, n_targets: int) -> Any:
    """The untrained ``--arch`` network (RUNS that file), checked against the data."""
    from ..errors import ConfigError
    from ..models.arch import load_arch
    from ._arch import _kwargs

    net = load_arch(args.arch, kwargs=_kwargs(args.arch_kwargs), input_size=args.input_size)
    if net.config.in_channels != 1:
        raise ConfigError(f"--arch {args.arch} takes {net.config.in_channels} input channels; "
                          "train-source feeds it one grey plane")
    if net.config.out_channels != n_targets:
        raise ConfigError(f"--arch {args.arch} has {net.config.out_channels} output channel(s) "
                          f"for {n_targets} --targets folder(s)")
    return net


def run(args: argparse.Namespace) -> int:
    """Train, print a line per validation, and write the model files."""
    import time

    from ..adapt.events import Evaluated, Started, Step, StopReason
    from ..devices import resolve_device
    from ..errors import ConfigError
    from ..models.checkpoint import save_model, validate_architecture
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
    arch = validate_architecture(  # before reading data: types, ranges and memory
        dict(in_channels=1, out_channels=len(names), num_downs=num_downs, ngf=ngf,
             norm=args.norm), training=True)
    net = _arch_network(args, len(names)) if getattr(args, "arch", None) else None
    eval_every = args.eval_every if args.eval_every is not None else max(1, args.steps // 20)
    cfg = SourceTrainConfig(steps=args.steps, batch_size=batch, patch_size=patch,
                            lr=args.lr, lambda_gan=args.lambda_gan, eval_every=eval_every,
                            seed=args.seed, device=args.device, augment=args.augment,
                            target_norm=args.target_norm,
                            target_percentiles=tuple(args.target_percentiles))
    if net is not None and patch % net.min_size:
        raise ConfigError(f"--patch {patch} must be a multiple of {net.min_size} for "
                          f"--arch {args.arch}")
    if net is None and patch % 2**num_downs:
        raise ConfigError(
            f"--patch {patch} must be a multiple of {2**num_downs} (2**--num-downs)"
        )

    data = prepare_training(
        args.inputs, args.targets, channel_names=names,
        target_range=tuple(args.target_range) if args.target_range else None,
        val_fraction=args.val_fraction, val_patches=args.val_patches, config=cfg)
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
    if net is not None:  # the preset's UNet timing says nothing about another network
        print(f"--arch {args.arch}: {patch} px patches, batch {batch}; augmentation "
              f"'{args.augment}'", flush=True)
    else:
        print(f"size '{size_name}': UNet depth {num_downs}, {ngf} filters, {patch} px "
              f"patches, batch {batch}; augmentation '{args.augment}'"
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
        result = train_source(data.sampler, data.val, arch=arch, model=net, config=cfg,
                              meta=meta, out=out, cancel=cancel, callback=show, hints=hints)
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
