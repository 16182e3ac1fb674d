"""``lmadda predict``: virtual staining of every image of a folder, written as TIFFs.

Outputs are ``<out>/<stem>_pred.tif`` (float32, ``CYX``, or ``ZCYX`` for stacks) with the
channel names and the model's provenance in the TIFF metadata. With ``--uncertainty``, a
trust map ``<stem>_trust.tif`` is written beside each prediction: the per-pixel standard
deviation of several predictions (MC dropout, or flips/rotations for a model without
dropout; see :mod:`napari_lmadda.uncertainty`), float32, same axes, in stain units, with how
it was computed in the metadata. Existing outputs are never replaced without
``--overwrite``. Exit code 0 when every file was predicted, 1 when some
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
    parser.add_argument("--uncertainty", action="store_true",
                        help="also write <stem>_trust.tif: the per-pixel standard deviation "
                        "of several predictions (MC dropout, or flips/rotations without "
                        "dropout)")
    parser.add_argument("--uncertainty-samples", type=int, default=8,
                        help="predictions per tile for --uncertainty (8; at most 8 are used "
                        "with flips/rotations)")


def run(args: argparse.Namespace) -> int:
    """Predict the folder, print one line per file and the summary."""
    from ..data.io import list_images
    from ..errors import ConfigError, OutputExistsError
    from ..predict import iter_predict_folder, output_paths
    from ._common import load_model_one_line, make_output_folder

    if args.tile < 1 or args.overlap < 0 or args.batch < 1:
        raise ConfigError("--tile and --batch must be >= 1 and --overlap >= 0")
    if args.uncertainty and args.uncertainty_samples < 2:
        raise ConfigError(f"--uncertainty-samples must be >= 2, got {args.uncertainty_samples}")
    files = list_images(args.images)
    out = Path(args.out)
    suffixes = ("_pred.tif", "_trust.tif") if args.uncertainty else ("_pred.tif",)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file; give a folder")
    if not args.overwrite and out.is_dir():
        existing = [t for sfx in suffixes for t in output_paths(files, out, sfx) if t.exists()]
        if existing:
            raise OutputExistsError(
                f"{len(existing)} output file(s) already exist in '{out}' (e.g. "
                f"'{existing[0].name}'); use --overwrite to replace them"
            )
    model = load_model_one_line(args.model, args.device)
    make_output_folder(out, "the --out folder")
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
    failed = _write_trust_maps(model, files, report.written, args) if args.uncertainty else 0
    print(report.summary())
    return 1 if report.skipped or failed else 0


def _write_trust_maps(model, files, written, args: argparse.Namespace) -> int:
    """Write ``<stem>_trust.tif`` beside every written prediction; return the failures."""
    import warnings

    import numpy as np

    from ..data.io import read_planes, write_tiff
    from ..errors import LmaddaError
    from ..uncertainty import trust_map, uncertainty_method

    method = uncertainty_method(model)
    how = {
        "mc_dropout": "MC dropout: dropout modules in train mode, BatchNorm in eval mode",
        "tta": "test-time augmentation: the 8 flips/rotations by 90 degrees of the input "
               "(the model has no dropout)",
    }[method]
    n = min(args.uncertainty_samples, 8) if method == "tta" else args.uncertainty_samples
    print(f"trust maps: {how}, {n} predictions per tile", flush=True)
    meta = getattr(model, "meta", {}) or {}
    names = meta.get("channel_names") or [f"channel{i}" for i in range(model.config.out_channels)]
    from ..predict import output_path

    done = {Path(w).resolve() for w in written}
    out = Path(args.out)
    # the inputs whose prediction was written, with the trust map's name next to it
    todo = [(f, output_path(f, out, files, "_trust.tif")) for f in files
            if output_path(f, out, files).resolve() in done]
    failed = 0
    for i, (src, target) in enumerate(todo, 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                planes = read_planes(src)
            maps = np.stack([trust_map(model, p, n_samples=n, tile=args.tile,
                                       overlap=args.overlap, batch_size=args.batch)
                             for p in planes])
            arr = maps[0] if len(planes) == 1 else maps
            md = {
                "source_image": src.name,
                "channels": list(names),
                "axes": "CYX" if arr.ndim == 3 else "ZCYX",
                "quantity": "per-pixel standard deviation of the prediction, in stain units",
                "uncertainty_method": method,
                "uncertainty_samples": n,
                "uncertainty_seed": 0,
                "how": how,
                "model": meta.get("provenance", {}),
            }
            write_tiff(target, arr, metadata=md, overwrite=args.overwrite)
            print(f"[{i:>{len(str(len(todo)))}}/{len(todo)}] {target.name}", flush=True)
        except LmaddaError as exc:
            failed += 1
            print(f"  {target.name}: {exc}", flush=True)
            if args.stop_on_error:
                raise
    print(f"wrote {len(todo) - failed} trust map(s)")
    return failed
