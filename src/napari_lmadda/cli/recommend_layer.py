"""``lmadda recommend-layer``: which layer to match, from unlabeled images only.

Measures the domain gap at every layer of the source model (three distances and a short
discriminator probe), prints the per-layer table and the recommendation with its confidence
and reason, and with ``--out`` writes ``recommend.json`` and ``recommend.png``. The logic
lives in :mod:`napari_lmadda.adapt.recommend` (its docstring states the rule).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from ..adapt.registry import METHODS
from ..options import add_arguments as add_arguments_of
from ..options import check_args, option

NAME = "recommend-layer"
HELP = ("Recommend the layer to match from unlabeled source and target images: the domain gap "
        "at every layer, with a confidence and the reason.")


def _short(path: Path) -> str:
    """The last two parts of a path (``tgt/input``), enough to tell folders apart."""
    return "/".join(Path(path).resolve().parts[-2:])


@dataclass(kw_only=True)
class RecommendArgs:
    """The options of ``recommend-layer`` besides :class:`DomainArgs`."""

    patches: int = option(32, "patches per domain, at least 8", flag="--patches", low=8)
    patch: int = option(128, "patch side, a multiple of 2**num_downs", flag="--patch")
    probe_steps: int = option(60, "training steps of the discriminator probe per layer; 0 = "
                              "no probe", flag="--probe-steps", low=0)
    layers: str | None = option(None, "layers to measure, e.g. 1-8 or 1,2,5", flag="--layers",
                                default_text="all (the levels of an --arch model)")
    fraction: float = option(0.5, "recommend the first layer whose gap reaches this fraction "
                             "of the largest", flag="--fraction", low=0.0, high=1.0,
                             low_open=True)
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps", flag="--device")
    seed: int = option(0, "seed of patches and probes", flag="--seed")
    out: Path | None = option(None, "folder for recommend.json and recommend.png",
                              flag="--out", default_text="not written without it")
    overwrite: bool = option(False, "replace recommend.json/png in --out", flag="--overwrite")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``recommend-layer`` to its parser."""
    from ._arch import add_arch_arguments
    from ._common import add_domain_arguments

    add_domain_arguments(parser)
    add_arch_arguments(parser)
    add_arguments_of(parser, RecommendArgs)


def run(args: argparse.Namespace) -> int:
    """Measure, print the table and the recommendation, write the files."""
    from ..adapt.recommend import (
        format_recommendation_table,
        recommend_layer,
        write_recommendation,
    )
    from ..errors import ConfigError, OutputExistsError
    from ._arch import load_cli_model
    from .adapt import open_images

    check_args(args, RecommendArgs)
    if args.out is not None and not args.overwrite:
        for name in ("recommend.json", "recommend.png"):
            if (args.out / name).exists():
                raise OutputExistsError(f"'{args.out / name}' already exists (use --overwrite)")
    model = load_cli_model(args, "cpu")
    if args.patch < 1 or args.patch % model.min_size:
        raise ConfigError(
            f"--patch {args.patch} must be a multiple of {model.min_size} for this model")
    source = open_images(args.source, model, "--source")
    target = open_images(args.target, model, "--target")
    print(f"source: {len(source)} image(s), target: {len(target)} image(s); "
          f"{args.patches} patches of {args.patch} px per domain, "
          f"probe {args.probe_steps} steps per layer", flush=True)

    def progress(done: int, total: int, what: str) -> None:
        print(f"\r  measured {done}/{total} layers ({what})".ljust(60), end="",
              file=sys.stderr, flush=True)

    rec = recommend_layer(model, source, target, fraction=args.fraction, layers=args.layers,
                          n_patches=args.patches, patch_size=args.patch,
                          probe_steps=args.probe_steps, device=args.device, seed=args.seed,
                          progress=progress)
    print(file=sys.stderr)
    print(format_recommendation_table(rec))
    print("(* = significant at this layer; gap = combined normalised gap the rule reads; "
          "< = recommended)")
    print()
    print(rec.summary())
    print(f"reason: {rec.reason}")
    if rec.layer is not None:
        one = [name for name, e in METHODS.items() if e.layers == "one"]
        # the module name, as `lmadda layers` lists it, for a network given as code
        where = (model.layer_name(rec.layer) if hasattr(model, "layer_index")
                 else rec.layer)
        print(f"to adapt there: lmadda adapt --method {one[0]} --layer {where} ... "
              f"(methods that match one layer: {', '.join(one)})")
    if args.out is not None:
        paths = write_recommendation(rec, args.out, overwrite=True,
                                     title=f"{_short(args.source)} -> {_short(args.target)}")
        print(f"wrote {paths['json']} and {paths['png']}")
    return 0
