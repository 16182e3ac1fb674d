"""``lmadda fid``: FID and KID between two image folders on the project's UNet features."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..options import add_arguments as add_arguments_of
from ..options import check_args, option

NAME = "fid"
HELP = (
    "FID and KID between two image folders (e.g. source and new-microscope images), on "
    "globally pooled features of a project UNet layer; no ground truth or download needed."
)


@dataclass(kw_only=True)
class FidArgs:
    """The options of ``fid``."""

    a: Path = option(help="first image folder (e.g. source-microscope images)", flag="--a",
                     metavar="DIR")
    b: Path = option(help="second image folder (e.g. new-microscope images)", flag="--b",
                     metavar="DIR")
    model: str = option("demo", "source model: its normalisation, and its bottleneck as the "
                        "feature layer; an SCGAN model translates --b images first",
                        flag="--model", metavar="M.pt")
    weights: str | None = option(None, "another feature network: a napari-lmadda or pix2pix "
                                 "model file (loaded weights-only)", flag="--weights",
                                 metavar="W.pt", default_text="the source model")
    layer: int | None = option(None, "feature layer of the feature network", flag="--layer",
                               metavar="L", default_text="its bottleneck")
    tile: int = option(128, "tile side; every tile gives one feature vector", flag="--tile",
                       low=1)
    subsets: int = option(100, "KID subsets", flag="--subsets", low=1)
    subset_size: int = option(1000, "KID feature vectors per subset", flag="--subset-size",
                              low=2, default_text="1000, capped at the set size")
    seed: int = option(0, "seed of the KID subsets", flag="--seed")
    device: str = option("cpu", "auto, cpu, cuda, cuda:N or mps", flag="--device")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``fid`` to its parser."""
    add_arguments_of(parser, FidArgs)


def run(args: argparse.Namespace) -> int:
    """Compute and print FID and KID."""
    from ..devices import resolve_device
    from ..evaluation.fid import fid_kid
    from ._common import check_folder, load_model_one_line

    check_args(args, FidArgs)
    a = check_folder(args.a, "--a")
    b = check_folder(args.b, "--b")
    device = str(resolve_device(args.device))
    model = load_model_one_line(args.model, device)
    weights = load_model_one_line(args.weights, device) if args.weights is not None else None
    res = fid_kid(a, b, model=model, weights=weights, layer=args.layer, tile=args.tile,
                  subsets=args.subsets, subset_size=args.subset_size, seed=args.seed,
                  device=device)
    print(f"FID {res.fid:.6g}")
    print(f"KID {res.kid_mean:.6g} +- {res.kid_std:.3g}")
    print(f"({res.n_a} vs {res.n_b} feature vectors of {res.dims} dims at layer {res.layer})")
    return 0
