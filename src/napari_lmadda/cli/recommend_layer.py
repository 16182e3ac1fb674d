"""``lmadda recommend-layer``: which layer to match, from unlabeled images only.

Measures the domain gap at every layer of the source model (three distances and a short
discriminator probe), prints the per-layer table and the recommendation with its confidence
and reason, and with ``--out`` writes ``recommend.json`` and ``recommend.png``. The logic
lives in :mod:`napari_lmadda.adapt.recommend` (its docstring states the rule).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "recommend-layer"
HELP = ("Recommend the layer to match from unlabeled source and target images: the domain gap "
        "at every layer, with a confidence and the reason.")


def _short(path: Path) -> str:
    """The last two parts of a path (``tgt/input``), enough to tell folders apart."""
    return "/".join(Path(path).resolve().parts[-2:])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``recommend-layer`` to its parser."""
    from ._common import _int, add_domain_arguments

    add_domain_arguments(parser)
    parser.add_argument("--patches", type=_int, default=32,
                        help="patches per domain, at least 8 (32)")
    parser.add_argument("--patch", type=_int, default=128,
                        help="patch side, a multiple of 2**num_downs (128)")
    parser.add_argument("--probe-steps", type=_int, default=60,
                        help="training steps of the discriminator probe per layer; 0 = no "
                        "probe (60)")
    parser.add_argument("--layers", default=None,
                        help="layers to measure, e.g. 1-8 or 1,2,5 (all)")
    parser.add_argument("--fraction", type=float, default=0.5,
                        help="recommend the first layer whose gap reaches this fraction of "
                        "the largest (0.5)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (auto)")
    parser.add_argument("--seed", type=_int, default=0, help="seed of patches and probes (0)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for recommend.json and recommend.png (not written "
                        "without it)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace recommend.json/png in --out")


def run(args: argparse.Namespace) -> int:
    """Measure, print the table and the recommendation, write the files."""
    from ..adapt.recommend import (
        format_recommendation_table,
        recommend_layer,
        write_recommendation,
    )
    from ..errors import ConfigError, OutputExistsError
    from ._common import load_model_one_line
    from .adapt import open_images

    if args.patches < 8:
        raise ConfigError(f"--patches must be at least 8, got {args.patches}")
    if args.probe_steps < 0:
        raise ConfigError(f"--probe-steps must be >= 0, got {args.probe_steps}")
    if not 0 < args.fraction <= 1:
        raise ConfigError(f"--fraction must be in (0, 1], got {args.fraction}")
    if args.out is not None and not args.overwrite:
        for name in ("recommend.json", "recommend.png"):
            if (args.out / name).exists():
                raise OutputExistsError(f"'{args.out / name}' already exists (use --overwrite)")
    model = load_model_one_line(args.model, "cpu")
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
    if args.out is not None:
        paths = write_recommendation(rec, args.out, overwrite=True,
                                     title=f"{_short(args.source)} -> {_short(args.target)}")
        print(f"wrote {paths['json']} and {paths['png']}")
    return 0
