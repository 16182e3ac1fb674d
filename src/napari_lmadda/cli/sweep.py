"""``lmadda sweep``: adapt at every listed layer and the baselines, for several seeds.

Writes ``sweep.json``, ``sweep.csv`` and ``sweep.png`` (Pearson by layer matched, as in the
paper) to ``--out`` and prints the table. The logic lives in :mod:`napari_lmadda.evaluation.sweep`.
Ctrl-C stops after the current run (its best state is still scored) and writes what ran.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..adapt.registry import baselines
from ..options import add_arguments as add_arguments_of
from ..options import check_args, option

NAME = "sweep"
HELP = (
    "Adapt at every listed layer (and the baselines none/adabn/adda) for several seeds; "
    "tabulate the label-free criterion and, with --truth, Pearson per channel."
)


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0,1,2, got {text!r}") from None


def _short(path: Path) -> str:
    """Shorten a path to its last two parts (``src/input``), enough to tell folders apart."""
    return "/".join(Path(path).resolve().parts[-2:])


@dataclass(kw_only=True)
class SweepArgs:
    """The options of ``sweep`` besides :class:`DomainArgs` and the AdaptConfig flags."""

    truth: list[Path] | None = option(
        None, "ground truth of the target images: a folder with one sub-folder per output "
        "channel (named like the channel names, lower case), or the option once per channel",
        flag="--truth", repeat=True)
    eval_images: Path | None = option(None, "images to score with --truth",
                                      flag="--eval-images", default_text="the --target images")
    layers: str | None = option(None, "layers for LM-ADDA: numbers, ranges or module names, "
                                "e.g. 1-16 or enc.1,bottom", flag="--layers",
                                default_text="every layer of the project's UNet; the levels "
                                "(last tap of each resolution) of an --arch network")
    methods: str = option(",".join(baselines()), "baselines to run too, comma-separated "
                          "('' for none)", flag="--methods")
    seeds: list[int] = option([0], "seeds, e.g. 0,1,2", flag="--seeds", cli_type=_ints,
                              default_text="0")
    tile: int = option(256, "tile side for scoring", flag="--tile", low=1)
    out: Path = option(help="output folder", flag="--out")
    overwrite: bool = option(False, "replace sweep.json/csv/png in --out", flag="--overwrite")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``sweep`` to its parser."""
    from ._arch import add_arch_arguments
    from ._common import add_adapt_options, add_domain_arguments

    add_domain_arguments(parser)
    add_arch_arguments(parser)
    add_arguments_of(parser, SweepArgs)
    add_adapt_options(parser)


def run(args: argparse.Namespace) -> int:
    """Run the sweep, print one line per run, then the table; write the files."""
    from ..errors import OutputExistsError
    from ..evaluation.sweep import (
        format_sweep_table,
        iter_sweep,
        load_eval_set,
        summarize_runs,
        write_sweep,
    )
    from ._arch import load_cli_model
    from ._common import (
        adapt_config_from_args,
        cancel_on_sigint,
        fmt_duration,
        fmt_float,
        make_output_folder,
    )
    from .adapt import open_images

    out = Path(args.out)
    if (out / "sweep.json").exists() and not args.overwrite:
        raise OutputExistsError(f"'{out / 'sweep.json'}' already exists (use --overwrite)")
    check_args(args, SweepArgs)
    cfg = adapt_config_from_args(args)
    model = load_cli_model(args, "cpu")
    source = open_images(args.source, model, "--source")
    target = open_images(args.target, model, "--target")
    make_output_folder(out, "the --out folder")  # before the runs, not after them
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    layers = args.layers
    if layers is None:  # a network with a hundred taps: one per resolution, as recommend-layer
        levels = getattr(model, "level_layers", None)
        layers = (",".join(map(str, levels())) if levels is not None
                  else f"1-{model.num_layers}")
    names = list(model.meta.get("channel_names") or
                 [f"channel{i}" for i in range(model.config.out_channels)])
    eval_set = None
    if args.truth:
        truth = args.truth[0] if len(args.truth) == 1 else args.truth
        eval_set = load_eval_set(args.eval_images or args.target, truth, names)
        print(f"scoring on {len(eval_set.images)} image(s) with ground truth for "
              f"{', '.join(names)}", flush=True)

    runs = []
    with cancel_on_sigint("the sweep") as cancel:
        for r in iter_sweep(model, source, target, layers=layers, methods=methods,
                            seeds=args.seeds, config=cfg, eval_set=eval_set, tile=args.tile,
                            cancel=cancel):
            runs.append(r)
            scores = "  ".join(f"{c} {v:.4f}" for c, v in r.pearson.items())
            print(f"[{len(runs)}] {r.label:<11} seed {r.seed}  {r.criterion} "
                  f"{fmt_float(r.criterion_value)} (step {r.best_step}, {r.stop_reason})"
                  f"{'  Pearson ' + scores if scores else ''}  {fmt_duration(r.seconds)}",
                  flush=True)
    weights = args.weights if args.weights is not None else args.model
    settings = {
        "model": str(weights), **({"arch": args.arch, "arch_kwargs": args.arch_kwargs}
                                  if args.arch else {}),
        "source": str(args.source), "target": str(args.target),
        "truth": [str(t) for t in args.truth] if args.truth else None,
        "layers": layers, "methods": methods, "seeds": list(args.seeds),
        "config": cfg.to_dict(), "complete": not cancel(),
    }
    paths = write_sweep(runs, out, settings=settings, overwrite=args.overwrite,
                        title=f"{Path(str(weights)).name}: {_short(args.source)} -> "
                              f"{_short(args.target)}")
    print()
    print(format_sweep_table(summarize_runs(runs)))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 1 if cancel() else 0
