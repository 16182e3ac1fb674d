"""``lmadda fid``: FID and KID between two image folders on the project's UNet features."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "fid"
HELP = (
    "FID and KID between two image folders (e.g. source and new-microscope images), on "
    "globally pooled features of a project UNet layer; no ground truth or download needed."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``fid`` to its parser."""
    parser.add_argument("--a", type=Path, required=True, metavar="DIR",
                        help="first image folder (e.g. source-microscope images)")
    parser.add_argument("--b", type=Path, required=True, metavar="DIR",
                        help="second image folder (e.g. new-microscope images)")
    parser.add_argument("--model", default="demo", metavar="M.pt",
                        help="source model: its normalisation, and its bottleneck as the "
                             "feature layer; an SCGAN model translates --b images first (demo)")
    parser.add_argument("--weights", default=None, metavar="W.pt",
                        help="another feature network: a napari-lmadda or pix2pix model file "
                             "(loaded weights-only); default: the source model")
    parser.add_argument("--layer", type=int, default=None, metavar="L",
                        help="feature layer of the feature network (its bottleneck)")
    parser.add_argument("--tile", type=int, default=128,
                        help="tile side; every tile gives one feature vector (128)")
    parser.add_argument("--subsets", type=int, default=100, help="KID subsets (100)")
    parser.add_argument("--subset-size", type=int, default=1000,
                        help="KID feature vectors per subset (1000, capped at the set size)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the KID subsets (0)")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps (cpu)")


def run(args: argparse.Namespace) -> int:
    """Compute and print FID and KID."""
    from ..devices import resolve_device
    from ..evaluation.fid import fid_kid
    from ._common import check_folder, load_model_one_line

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
