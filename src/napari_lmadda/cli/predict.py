"""``lmadda predict``: virtual staining of every image of a folder, written as TIFFs or OME-Zarr.

The work runs as a dask graph (:mod:`~.inference.predict_dask`): lazy reads, one task per
group of tiles and per output chunk, a few images in flight at a time, each written as soon
as it is done, so memory stays flat on large folders and large images. ``--scheduler``
picks dask's local threaded scheduler (default, ``--workers`` threads), the synchronous one,
or a ``dask.distributed`` cluster by its address (the folders must then be visible to every
worker). Inputs may be a folder, one image file or one ``*.ome.zarr`` image.

Outputs are ``<out>/<stem>_pred.tif`` (float32, ``CYX``, or ``ZCYX`` for stacks) with the
channel names and the model's provenance in the TIFF metadata, or with ``--format ome-zarr``
``<out>/<stem>_pred.ome.zarr`` (OME-NGFF 0.5, ``CYX``/``CZYX``, written chunk by chunk into a
temporary folder renamed when complete). ``--amp bf16`` / ``fp16`` runs the network in mixed
precision. With ``--uncertainty``, a
trust map ``<stem>_trust.tif`` is written beside each prediction: the per-pixel standard
deviation of several predictions (MC dropout, or flips/rotations for a model without
dropout; see :mod:`~.inference.uncertainty`), float32, same axes, in stain units, with how
it was computed in the metadata. Existing outputs are never replaced without
``--overwrite``. Exit code 0 when every file was predicted, 1 when some
were skipped (unreadable), 2 for bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..options import add_arguments as add_arguments_of
from ..options import option

# plain tuples, cheap to import (no torch, no dask)
AMP_MODES = ("off", "bf16", "fp16")
OUTPUT_FORMATS = ("tiff", "ome-zarr")

NAME = "predict"
HELP = ("Predict the virtual stains of every image of a folder (tiled, seamless) into TIFF "
        "or OME-Zarr files, locally or on a dask cluster.")


@dataclass(kw_only=True)
class PredictArgs:
    """The options of ``predict``."""

    model: str | None = option(None, "model file (or 'demo' for the bundled demo model)",
                               flag="--model", metavar="MODEL.pt",
                               default_text="required unless --arch")
    images: Path = option(help="folder of input images (or one image file, or one *.ome.zarr)",
                          flag="--images")
    out: Path = option(help="output folder (created)", flag="--out")
    tile: int = option(256, "tile side in pixels", flag="--tile")
    overlap: int = option(32, "overlap of neighbouring tiles in pixels", flag="--overlap")
    batch: int = option(4, "tiles per forward pass", flag="--batch")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps", flag="--device")
    overwrite: bool = option(False, "replace existing outputs", flag="--overwrite")
    skip_existing: bool = option(False, "keep the outputs an earlier (interrupted) run "
                                 "completed and predict only the missing ones",
                                 flag="--skip-existing")
    stop_on_error: bool = option(False, "stop at the first unreadable image instead of "
                                 "skipping it", flag="--stop-on-error")
    uncertainty: bool = option(False, "also write <stem>_trust.tif: the per-pixel standard "
                               "deviation of several predictions (MC dropout, or "
                               "flips/rotations without dropout)", flag="--uncertainty")
    uncertainty_samples: int = option(8, "predictions per tile for --uncertainty",
                                      flag="--uncertainty-samples", default_text="8; at most "
                                      "8 are used with flips/rotations")
    out_format: str = option("tiff", "output format: tiff (one float32 TIFF per input) or "
                             "ome-zarr (OME-NGFF 0.5, written chunk by chunk; for images too "
                             "large for TIFF)", flag="--format", choices=OUTPUT_FORMATS)
    scheduler: str = option("threads", "dask scheduler: threads (local thread pool), "
                            "synchronous (one thread, for debugging) or the address of a "
                            "dask.distributed scheduler, e.g. tcp://node1:8786",
                            flag="--scheduler", metavar="{threads,synchronous,ADDRESS}")
    workers: int | None = option(None, "threads of the local threaded scheduler",
                                 flag="--workers", default_text="the CPU count")
    chunk: int = option(1024, "output chunk side in pixels: one blending task and one "
                        "OME-Zarr chunk each", flag="--chunk")
    amp: str = option("off", "mixed precision of the network: off (float32), bf16 or fp16 "
                      "autocast", flag="--amp", choices=AMP_MODES)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``predict`` to its parser (:class:`PredictArgs`)."""
    from ._arch import add_arch_arguments

    add_arguments_of(parser, PredictArgs)
    add_arch_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Predict the folder, print one line per file and the summary."""
    from ..errors import ConfigError, OutputExistsError
    from ..inference.predict import check_out_folder
    from ..inference.predict_dask import (
        DaskRunner,
        iter_predict_folder_dask,
        list_inputs,
        output_targets,
    )
    from ._arch import load_cli_model
    from ._common import make_output_folder

    if args.tile < 1 or args.overlap < 0 or args.batch < 1:
        raise ConfigError("--tile and --batch must be >= 1 and --overlap >= 0")
    if args.chunk < 1:
        raise ConfigError(f"--chunk must be >= 1, got {args.chunk}")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.uncertainty and args.uncertainty_samples < 2:
        raise ConfigError(f"--uncertainty-samples must be >= 2, got {args.uncertainty_samples}")
    if args.overwrite and args.skip_existing:
        raise ConfigError("--overwrite and --skip-existing exclude each other")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out '{args.out}' is a file; give a folder")
    check_out_folder(args.images, args.out, ("--out", "the --images folder"))
    files = list_inputs(args.images)
    if args.uncertainty and (args.out_format != "tiff" or any(f.is_dir() for f in files)):
        raise ConfigError("--uncertainty writes TIFF trust maps of image files: it cannot be "
                          "combined with --format ome-zarr or *.zarr inputs")
    out = Path(args.out)
    kinds = ("pred", "trust") if args.uncertainty else ("pred",)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file; give a folder")
    if not (args.overwrite or args.skip_existing) and out.is_dir():
        existing = [t for kind in kinds for t in output_targets(files, out, args.out_format, kind)
                    if t.exists()]
        if existing:
            raise OutputExistsError(
                f"{len(existing)} output file(s) already exist in '{out}' (e.g. "
                f"'{existing[0].name}'); use --skip-existing to keep them and predict the "
                "rest, or --overwrite to replace them"
            )
    model = load_cli_model(args, args.device)
    make_output_folder(out, "the --out folder")
    runner = DaskRunner(args.scheduler, args.workers)
    threads = _share_cpu_threads(model, runner)
    stack = contextlib.ExitStack()
    gen = None
    try:
        stack.enter_context(_terminate_as_interrupt())
        print(runner.describe(), flush=True)
        gen = iter_predict_folder_dask(
            model, args.images, out, scheduler=runner, out_format=args.out_format,
            tile=args.tile, overlap=args.overlap, batch_size=args.batch, chunk=args.chunk,
            amp=args.amp, overwrite=args.overwrite, skip_existing=args.skip_existing,
            stop_on_error=args.stop_on_error,
        )
        width = len(str(len(files)))
        while True:
            try:
                done, total, path = next(gen)
            except StopIteration as stop:
                report = stop.value
                break
            print(f"[{done:>{width}}/{total}] {path.name}", flush=True)
    finally:
        if gen is not None:
            gen.close()  # an interrupted run removes its temporary files before exiting
        stack.close()
        runner.close()
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
    failed = (_write_trust_maps(model, files, [*report.written, *report.kept], args)
              if args.uncertainty else 0)
    print(report.summary())
    return 1 if report.skipped or failed else 0


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Handle SIGTERM (``kill``, ``timeout``, a batch scheduler) like Ctrl-C while predicting.

    Python's default SIGTERM ends the process at once, leaving an OME-Zarr output's
    temporary folder behind; as a KeyboardInterrupt, the cleanup runs first.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _share_cpu_threads(model, runner) -> int | None:
    """Give each local dask thread its share of torch's CPU threads; return the old count.

    Several tasks run the network at once; each using every core would oversubscribe them.
    """
    import torch

    if runner.client is not None or next(model.parameters()).device.type != "cpu":
        return None
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, min(old, (os.cpu_count() or 1) // runner.nthreads)))
    return old


def _write_trust_maps(model, files, predicted, args: argparse.Namespace) -> int:
    """Write ``<stem>_trust.tif`` beside every prediction (written or kept); return failures.

    A trust map is a calibrated ImageJ hyperstack like its prediction; the spread is in
    stain units (decoded with the model's target normalisation).
    """
    import warnings

    import numpy as np

    from ..data.io import read_pixel_size, read_planes, write_tiff
    from ..errors import LmaddaError
    from ..inference.predict import output_path, prediction_metadata, target_norm
    from ..inference.uncertainty import trust_map, uncertainty_method

    method = uncertainty_method(model)
    how = {
        "mc_dropout": "MC dropout: dropout modules in train mode, BatchNorm in eval mode",
        "tta": "test-time augmentation: the 8 flips/rotations by 90 degrees of the input "
               "(the model has no dropout)",
    }[method]
    n = min(args.uncertainty_samples, 8) if method == "tta" else args.uncertainty_samples
    print(f"trust maps: {how}, {n} predictions per tile", flush=True)
    norm = target_norm(model)
    done = {Path(w).resolve() for w in predicted}
    out = Path(args.out)
    # the inputs whose prediction exists, with the trust map's name next to it
    todo = [(f, output_path(f, out, files, "_trust.tif")) for f in files
            if output_path(f, out, files).resolve() in done]
    kept = [t for _, t in todo if args.skip_existing and t.exists()]
    todo = [(f, t) for f, t in todo if t not in kept]
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
            axes = "CYX" if arr.ndim == 3 else "ZCYX"
            md = prediction_metadata(model, src, axes, {
                "quantity": f"per-pixel standard deviation of the prediction, in {norm.units} "
                            "units",
                "uncertainty_method": method,
                "uncertainty_samples": n,
                "uncertainty_seed": 0,
                "how": how,
            })
            write_tiff(target, arr, metadata=md, overwrite=args.overwrite, axes=axes,
                       channel_names=md["channels"], pixel_size=read_pixel_size(src))
            print(f"[{i:>{len(str(len(todo)))}}/{len(todo)}] {target.name}", flush=True)
        except LmaddaError as exc:
            failed += 1
            print(f"  {target.name}: {exc}", flush=True)
            if args.stop_on_error:
                raise
    print(f"wrote {len(todo) - failed} trust map(s)"
          + (f", kept {len(kept)} complete one(s) of an earlier run" if kept else ""))
    return failed
