"""``lmadda adapt``: adapt a source model to a new microscope without labels.

Prints one line per evaluation of the label-free criterion (never per step) and a summary.
The first Ctrl-C stops the run cooperatively: the best state so far is kept and saved.
Exit code 0 when the run completed (or stopped early on patience), 1 when it was cancelled
or diverged (the kept state is saved all the same), 2 for bad input.

Under ``torchrun --nproc_per_node N`` (``WORLD_SIZE > 1``) the N processes adapt together
(see :mod:`napari_lmadda.adapt.distributed`): ``--batch`` is the global batch, split evenly
over the processes; only rank 0 prints and writes ``--out`` and ``<out>.run``. torchrun
forwards Ctrl-C to every process (they run in their own sessions, so each gets it once): all
ranks stop at the same step and rank 0 saves the kept state, as without torchrun. torchrun
kills processes still running 30 s after the signal (``--shutdown-timeout``); the run state
of the last evaluation then remains for ``--resume``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..adapt.registry import METHODS
from ..errors import ConfigError
from ..options import add_arguments as add_arguments_of
from ..options import option

NAME = "adapt"
HELP = (
    "Adapt a source model to unlabeled images of a new microscope (LM-ADDA at a chosen "
    "layer, or a baseline) and save the adapted model."
)


@dataclass(kw_only=True)
class AdaptArgs:
    """The options of ``adapt`` besides :class:`DomainArgs` and the AdaptConfig flags."""

    method: str = option("lmadda", "adaptation method", flag="--method",
                         choices=tuple(METHODS))
    layer: str | None = option(None, "layer to match: a number (1..2*num_downs for the "
                               "project's UNet; see `lmadda layers`) or a module name; '2,5' "
                               "for lmadda-multi", flag="--layer", metavar="L")
    out: Path = option(help="adapted model file to write", flag="--out", metavar="ADAPTED.pt")
    overwrite: bool = option(False, "replace an existing --out", flag="--overwrite")
    resume: bool = option(False, "continue an interrupted run from <out>.run (written at every "
                          "evaluation); ends where an uninterrupted run would", flag="--resume")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``adapt`` to its parser."""
    from ..adapt.config import AdaptConfig
    from ._arch import add_arch_arguments
    from ._common import add_adapt_options, add_domain_arguments

    add_domain_arguments(parser)
    add_arch_arguments(parser)
    add_arguments_of(parser, AdaptArgs, names=("method", "layer", "out"))
    add_arguments_of(parser, AdaptConfig, names=("seed",), config_defaults=True)
    add_arguments_of(parser, AdaptArgs, names=("overwrite", "resume"))
    add_adapt_options(parser)
    add_arguments_of(parser, AdaptConfig, names=("amp",), config_defaults=True)


def open_images(folder: Path, model: Any, option: str):
    """Open a folder as an :class:`ImageFolder` normalised like the model's inputs.

    For a model with C > 1 input channels, each file's planes are taken C at a time
    (:meth:`~napari_lmadda.data.stacks.ChannelStacks.from_pages`).
    """
    from ..data.datasets import ImageFolder
    from ..data.normalize import model_percentiles
    from ..data.stacks import ChannelStacks
    from ._common import check_folder

    images = ImageFolder(check_folder(folder, option), percentiles=model_percentiles(model))
    cin = int(getattr(getattr(model, "config", None), "in_channels", 1))
    return ChannelStacks.from_pages(images, cin) if cin > 1 else images


def progress_line(ev: Any, last_step: Any, best_step: int) -> str:
    """Format the line printed at an evaluation (latest losses, criterion, best, ETA)."""
    from ._common import fmt_duration, fmt_float

    parts = [f"step {ev.step:>5}"]
    if last_step is not None:
        parts[0] += f"/{last_step.total_steps}"
        parts += [f"D {fmt_float(last_step.loss_d)}", f"G {fmt_float(last_step.loss_g)}",
                  f"D acc {fmt_float(last_step.d_acc, 3)}"]
    parts.append(f"criterion {fmt_float(ev.criterion)}{' *' if ev.is_best else ''}")
    parts.append(f"best step {best_step}")
    if last_step is not None:
        parts.append(f"ETA {fmt_duration(last_step.eta)}")
    return "  ".join(parts)


def _layer_text(model: Any, layer: int) -> str:
    """``3`` for the project's UNet; ``3 (enc.1)`` for a model whose taps are modules."""
    if getattr(model, "layer_index", None) is None:
        return str(layer)
    return f"{layer} ({model.layer_name(layer)})"


def auto_progress_line(ev: Any, last_step: Any) -> str:
    """Format an evaluation of one of auto's LM-ADDA candidates (its layer, its own step)."""
    from ._common import fmt_duration, fmt_float

    total = f"/{last_step.total_steps}" if last_step is not None else ""
    parts = [f"step {ev.step:>5}{total}",
             f"LM-ADDA layer {ev.metrics['layer']:.0f} at its step "
             f"{ev.metrics['candidate_step']:.0f}: score {fmt_float(ev.criterion)}"
             f"{' (its best so far)' if ev.is_best else ''}"]
    if last_step is not None:
        parts.append(f"ETA {fmt_duration(last_step.eta)}")
    return "  ".join(parts)


def run(args: argparse.Namespace) -> int:
    """Adapt, print progress, save the kept state."""
    from ..adapt import distributed
    from ..devices import resolve_device
    from ._common import adapt_config_from_args, check_new_file

    world = distributed.env_world_size()
    if world > 1 and not METHODS[args.method].multi_process:
        multi = ", ".join(m for m, e in METHODS.items() if e.multi_process)
        raise ConfigError(f"--method {args.method} does not run on several processes: start it "
                          f"without torchrun (multi-process: {multi})")

    state = Path(str(args.out) + ".run")
    if args.resume and not state.exists():
        raise ConfigError(f"--resume: there is no interrupted run to continue ('{state}')")
    if state.exists() and not args.resume:
        raise ConfigError(f"'{state}' holds an interrupted run: pass --resume to continue it, "
                          "or delete it to start afresh")
    out = check_new_file(args.out, "--out", args.overwrite or args.resume)
    cfg = adapt_config_from_args(args, **({"amp": args.amp} if args.amp else {}))
    with distributed.session(resolve_device(cfg.device)):
        return _adapt(args, cfg, out, state)


def _adapt(args: argparse.Namespace, cfg: Any, out: Path, state: Path) -> int:
    """Run the adaptation (in every process of a torchrun group); rank 0 reports and saves."""
    from ..adapt import distributed
    from ..adapt.engine import iter_adapt
    from ..adapt.events import Evaluated, Finished, Started, Step, StopReason
    from ..devices import release_memory
    from ..models.checkpoint import save_model
    from ._arch import load_cli_model
    from ._common import cancel_on_sigint, fmt_float, make_parent

    main, world = distributed.is_main(), distributed.world_size()
    say = print if main else (lambda *a, **k: None)  # other ranks stay quiet
    distributed.per_rank_batch(cfg.batch_size, world)
    model = load_cli_model(args, "cpu")
    source = open_images(args.source, model, "--source")
    target = open_images(args.target, model, "--target")
    make_parent(out, "--out")

    result = None
    last_step, best_step = None, 0
    with cancel_on_sigint("adaptation") as cancel:
        for ev in iter_adapt(model, source, target, method=args.method, layers=args.layer,
                             config=cfg, cancel=cancel, run_state=state):
            if isinstance(ev, Started) and ev.method == "auto":
                lays = ", ".join(map(str, ev.layers))
                say("auto: " + (f"trying no adaptation, AdaBN and LM-ADDA at layers {lays} "
                                f"(the recommended ones) on {ev.device}, {ev.total_steps} "
                                f"training steps in all; score {ev.criterion} (lower = the "
                                "stains predicted on the new images are distributed more "
                                "like the source model's on source images)" if lays else
                                "measuring whether the new images differ from the source "
                                "images"), flush=True)
            elif isinstance(ev, Started):
                lays = ",".join(_layer_text(model, v) for v in ev.layers) or "-"
                procs = f" x {world} processes" if world > 1 else ""
                say(f"{ev.method} at layer(s) {lays}: {ev.trainable_params:,} trainable "
                    f"parameters on {ev.device}{procs}, {ev.total_steps} steps, criterion "
                    f"{ev.criterion}", flush=True)
            elif isinstance(ev, Step):
                last_step = ev
            elif isinstance(ev, Evaluated) and "candidate_step" in ev.metrics:
                if ev.metrics["candidate_step"] > 0:  # auto: one line per candidate evaluation
                    say(auto_progress_line(ev, last_step), flush=True)
            elif isinstance(ev, Evaluated):
                if ev.is_best:
                    best_step = ev.step
                say(progress_line(ev, last_step, best_step), flush=True)
            elif isinstance(ev, Finished):
                result = ev.result
    assert result is not None
    prov = {
        "method": result.method,
        "layers": list(result.layers),
        "best_step": result.best_step,
        "stop_reason": result.reason.value,
        **result.provenance,
        **({"layer_names": [model.layer_name(v) for v in result.layers]}
           if getattr(model, "layer_index", None) else {}),
        "source_model": str(args.model if args.model is not None else args.weights),
        "source_dir": str(args.source),
        "target_dir": str(args.target),
    }
    if main:
        save_model(result.model, out, provenance=prov)
        if result.reason is not StopReason.CANCELLED:  # a cancelled run stays resumable
            state.unlink(missing_ok=True)
    value = result.provenance.get("criterion_value")
    report = getattr(result, "report", None)  # method auto: what each candidate did
    if report is not None:
        from ..adapt.auto import format_report

        say(format_report(report))
    else:
        say(f"stop reason: {result.reason.value}; kept step {result.best_step} of "
            f"{result.steps_done} (criterion {result.criterion} = {fmt_float(value)})")
        if result.reason not in (StopReason.COMPLETED,) and result.message:
            say(result.message)
    say(f"wrote {out}")
    release_memory(cfg.device if cfg.device != "auto" else None)
    return 0 if result.reason in (StopReason.COMPLETED, StopReason.EARLY_STOP) else 1
