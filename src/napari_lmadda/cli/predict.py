"""``lmadda predict``: virtual staining of every image of a folder, written as TIFFs.

Outputs are ``<out>/<stem>_pred.tif`` (float32, ``CYX``, or ``ZCYX`` for stacks) with the
channel names and the model's provenance in the TIFF metadata. Existing outputs are never
replaced without ``--overwrite``. Exit code 0 when every file was predicted, 1 when some
were skipped (unreadable), 2 for bad input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "predict"
HELP = "Predict the virtual stains of every image of a folder (tiled, seamless) into TIFF files."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``predict`` to its parser."""
    parser.add_argument("--model", required=True, metavar="MODEL.pt",
                        help="model file (or 'demo' for the bundled demo model)")
    parser.add_argument("--images", type=Path, required=True,
                        help="folder of input images (or one image file)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--tile", type=int, default=256, help="tile side in pixels (256)")
    parser.add_argument("--overlap", type=int, default=32,
                        help="overlap of neighbouring tiles in pixels (32)")
    parser.add_argument("--batch", type=int, default=4, help="tiles per forward pass (4)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--stop-on-error", action="store_true",
                        help="stop at the first unreadable image instead of skipping it")


def run(args: argparse.Namespace) -> int:
    """Predict the folder, print one line per file and the summary."""
    from ..data.io import file_stem, list_images
    from ..errors import ConfigError, OutputExistsError
    from ..predict import iter_predict_folder
    from ._common import load_model_one_line

    if args.tile < 1 or args.overlap < 0 or args.batch < 1:
        raise ConfigError("--tile and --batch must be >= 1 and --overlap >= 0")
    files = list_images(args.images)
    out = Path(args.out)
    if not args.overwrite and out.is_dir():
        existing = [out / f"{file_stem(p)}_pred.tif" for p in files
                    if (out / f"{file_stem(p)}_pred.tif").exists()]
        if existing:
            raise OutputExistsError(
                f"{len(existing)} output file(s) already exist in '{out}' (e.g. "
                f"'{existing[0].name}'); use --overwrite to replace them"
            )
    model = load_model_one_line(args.model, args.device)
    gen = iter_predict_folder(model, args.images, out, tile=args.tile, overlap=args.overlap,
                              batch_size=args.batch, overwrite=args.overwrite,
                              stop_on_error=args.stop_on_error)
    width = len(str(len(files)))
    while True:
        try:
            done, total, path = next(gen)
        except StopIteration as stop:
            report = stop.value
            break
        print(f"[{done:>{width}}/{total}] {path.name}", flush=True)
    print(report.summary())
    return 1 if report.skipped else 0
