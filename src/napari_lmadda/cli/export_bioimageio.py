"""``lmadda export-bioimageio``: write a model as a bioimage.io package (spec 0.5 zip).

The package runs in deepImageJ, ilastik, QuPath, careamics and ``bioimageio.core`` without
napari-lmadda; napari-lmadda reads it back (``--model M.bioimageio.zip``) without running
its code. See :mod:`napari_lmadda.bioimageio.export` for what it holds.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..options import add_arguments as add_arguments_of
from ..options import option

NAME = "export-bioimageio"
HELP = (
    "Write a source or adapted model as a bioimage.io model package (zip): TorchScript and "
    "state-dict weights, the normalisation as spec operations, test tensors from this "
    "project's prediction, channel names, provenance and citation."
)


@dataclass(kw_only=True)
class ExportBioimageioArgs:
    """The options of ``export-bioimageio``."""

    model: str | None = option(None, "model file (.pt, pix2pix .pth, a bioimage.io zip) or "
                               "'demo' for the bundled model", flag="--model",
                               default_text="required unless --arch and --weights")
    out: Path = option(help="package to write, e.g. model.bioimageio.zip", flag="--out")
    sample: Path | None = option(None, "an image of the microscope the model is for: its "
                                 "first plane (centre-cropped to at most 512 px) gives the test "
                                 "tensors", flag="--sample",
                                 default_text="default: a synthetic phase-contrast field")
    name: str | None = option(None, "name shown by the model zoo", flag="--name")
    description: str | None = option(None, "short description", flag="--description",
                                     default_text="default: channels and adaptation "
                                     "provenance")
    author: list[str] = option([], "who made the model (repeat for several; bioimage.io asks "
                               "for at least one before upload)", flag="--author", repeat=True)
    license: str = option("CC-BY-4.0", "SPDX license of the weights, e.g. MIT or BSD-3-Clause",
                          flag="--license", default_text="default CC-BY-4.0, bioimage.io's "
                          "recommendation")
    tag: list[str] = option([], "extra tag (repeatable)", flag="--tag", repeat=True)
    test: bool = option(False, "then run bioimageio.core's test of the package (needs "
                        "bioimageio.core; about a minute on a CPU)", flag="--test")
    overwrite: bool = option(False, "replace an existing --out", flag="--overwrite")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``export-bioimageio`` (:class:`ExportBioimageioArgs`)."""
    from ._arch import add_arch_arguments

    add_arguments_of(parser, ExportBioimageioArgs)
    # a model file made from architecture code is rebuilt by the --arch that made it; the
    # weights of --arch as --weights or --model, as in every command that takes a model
    add_arch_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Export, optionally test, and print where the package went."""
    from ..bioimageio.export import export_bioimageio, test_bioimageio_package
    from ._arch import load_cli_model
    from ._common import check_new_file

    out = check_new_file(args.out, "--out", args.overwrite)
    model = load_cli_model(args)
    path = export_bioimageio(
        model, out, sample=args.sample, name=args.name, description=args.description,
        authors=args.author or (), license=args.license, tags=args.tag or (),
        overwrite=args.overwrite,
    )
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    if not args.author:
        print("note: no --author given; bioimage.io asks for at least one before upload")
    if args.test:
        passed, line = test_bioimageio_package(path)
        print(line)
        return 0 if passed else 1
    return 0
