"""``lmadda export-bioimageio``: write a model as a bioimage.io package (spec 0.5 zip).

The package runs in deepImageJ, ilastik, QuPath, careamics and ``bioimageio.core`` without
napari-lmadda; napari-lmadda reads it back (``--model M.bioimageio.zip``) without running
its code. See :mod:`napari_lmadda.bioimageio.export` for what it holds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "export-bioimageio"
HELP = (
    "Write a source or adapted model as a bioimage.io model package (zip): TorchScript and "
    "state-dict weights, the normalisation as spec operations, test tensors from this "
    "project's prediction, channel names, provenance and citation."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``export-bioimageio``."""
    parser.add_argument("--model", required=True,
                        help="model file (.pt, pix2pix .pth) or 'demo' for the bundled model")
    parser.add_argument("--out", required=True, type=Path,
                        help="package to write, e.g. model.bioimageio.zip")
    parser.add_argument("--sample", type=Path, default=None,
                        help="an image of the microscope the model is for: its first plane "
                        "(centre-cropped to at most 512 px) gives the test tensors "
                        "(default: a synthetic phase-contrast field)")
    parser.add_argument("--name", default=None, help="name shown by the model zoo")
    parser.add_argument("--description", default=None,
                        help="short description (default: channels and adaptation provenance)")
    parser.add_argument("--author", action="append", default=[],
                        help="who made the model (repeat for several; bioimage.io asks for "
                        "at least one before upload)")
    parser.add_argument("--license", default="CC-BY-4.0",
                        help="SPDX license of the weights (default CC-BY-4.0, bioimage.io's "
                        "recommendation)")
    parser.add_argument("--tag", action="append", default=[], help="extra tag (repeatable)")
    parser.add_argument("--test", action="store_true",
                        help="then run bioimageio.core's test of the package (needs "
                        "bioimageio.core; about a minute on a CPU)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    """Export, optionally test, and print where the package went."""
    from ..bioimageio.export import export_bioimageio, test_bioimageio_package
    from ._common import check_new_file, load_model_one_line

    out = check_new_file(args.out, "--out", args.overwrite)
    model = load_model_one_line(args.model)
    path = export_bioimageio(
        model, out, sample=args.sample, name=args.name, description=args.description,
        authors=args.author, license=args.license, tags=args.tag, overwrite=args.overwrite,
    )
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    if not args.author:
        print("note: no --author given; bioimage.io asks for at least one before upload")
    if args.test:
        passed, line = test_bioimageio_package(path)
        print(line)
        return 0 if passed else 1
    return 0
