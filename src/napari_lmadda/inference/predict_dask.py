"""Folder- and cluster-scale prediction as a dask graph: lazy reads, bounded memory.

The same tiling, padding and blending as :func:`~.inference.predict.predict_image`, cut
into dask tasks:

* **read**: one task per plane of an ordinary image (decoded on the worker); a large
  single-plane TIFF (:data:`LAZY_PIXELS` or more) and an OME-Zarr image are never loaded
  whole: every tile task reads only its own region.
* **normalise**: one task per plane computes the model's percentile normalisation (on a
  strided sample of at most :data:`NORM_SAMPLE_PIXELS` pixels, so exact for smaller planes).
* **predict**: one task per group of up to ``batch_size`` neighbouring tiles of a tile row.
* **blend**: one task per output chunk (``chunk`` x ``chunk`` pixels) adds the overlapping
  tiles with the blending window, in the order :func:`predict_image` does, so the result
  equals it to float rounding.

A folder is processed a window of images at a time (a few per worker thread), and each
finished image is written at once: a TIFF atomically (temporary file, rename), an OME-Zarr
chunk by chunk into a temporary folder renamed when complete. So memory stays flat however
many images the folder holds. The graph runs on dask's local threaded scheduler, the
synchronous one (debugging), or a ``dask.distributed`` cluster given by its address; on a
cluster the input and output folders must be on a filesystem every worker sees.

Warnings raised while reading or normalising (NaN pixels, a constant image) are collected
inside the tasks and re-emitted on the client, once each, naming the file.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..data.normalize import model_percentiles
from ..errors import ConfigError, LmaddaError
from ..memory import memory_budget
from .predict import (
    AMP_MODES,
    FolderReport,
    _check_grey_model,
    autocast,
    blend_window,
    check_out_folder,
    drop_predictions,
    prediction_metadata,
    target_norm,
    tile_grid,
    write_prediction,
)

__all__ = [
    "LAZY_PIXELS",
    "NORM_SAMPLE_PIXELS",
    "WINDOW_PIXELS",
    "OUTPUT_FORMATS",
    "SCHEDULERS",
    "predict_lazy",
    "list_inputs",
    "output_targets",
    "iter_predict_folder_dask",
    "predict_folder_dask",
    "DaskRunner",
]

#: Single-plane TIFFs with at least this many pixels are read region by region.
LAZY_PIXELS = 4096 * 4096
#: Normalisation percentiles come from at most this many pixels (a strided sample).
NORM_SAMPLE_PIXELS = 2048 * 2048
#: A folder's images are computed together until they hold this many pixels (or the window).
WINDOW_PIXELS = 32 * 2**20
#: Output formats of :func:`iter_predict_folder_dask`.
OUTPUT_FORMATS: tuple[str, ...] = ("tiff", "ome-zarr")
#: Local schedulers; anything else is the address of a dask.distributed scheduler.
SCHEDULERS: tuple[str, ...] = ("threads", "synchronous")

# catch_warnings is process-global before Python 3.14: tasks that record warnings take turns
_WARN_LOCK = threading.Lock()


def _recorded(fn: Callable[..., Any], *args: Any) -> tuple[Any, list[tuple[type, str]]]:
    """Call ``fn(*args)`` and return its result with the warnings it raised (picklable)."""
    with _WARN_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = fn(*args)
    return value, [(w.category, str(w.message)) for w in caught]


# ------------------------------------------------------------------ tasks (run on workers)
def _read_plane_task(path: str, index: int) -> tuple[np.ndarray, list]:
    from ..data.io import read_plane

    return _recorded(read_plane, path, index)


def _read_tiff_region(path: str, r0: int, r1: int, c0: int, c1: int, step: int = 1) -> np.ndarray:
    """Pixels ``[r0:r1:step, c0:c1:step]`` of a single-plane TIFF, decoding only what is needed."""
    import tifffile
    import zarr

    with tifffile.TiffFile(path) as tif:
        store = tif.series[0].aszarr()
        try:
            z = zarr.open(store, mode="r")
            if isinstance(z, zarr.Group):  # a pyramid: its full-resolution level
                z = z["0"]
            return np.asarray(z[r0:r1:step, c0:c1:step])
        finally:
            store.close()


def _norm_task(sample: np.ndarray, p_low: float, p_high: float) -> tuple[Any, list]:
    from ..data.normalize import percentile_normalize

    return _recorded(lambda s: percentile_normalize(s, p_low, p_high)[1], sample)


def _predict_tiles(
    region: np.ndarray,
    rows: np.ndarray,
    cols: list[np.ndarray],
    norm: tuple[Any, list] | None,
    model: Any,
    amp: str,
    device: str | None,
) -> np.ndarray:
    """Predict tiles ``region[rows][:, c]`` for ``c`` in ``cols``: ``(n, C, th, tw)`` float32."""
    import torch

    from ..data.normalize import apply_normalization

    x = np.asarray(region)
    x = apply_normalization(x, norm[0]) if norm is not None else x.astype(np.float32)
    x = np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    batch = np.stack([x[np.ix_(rows, c)] for c in cols])[:, None]
    dev = torch.device(device) if device else next(model.parameters()).device
    with torch.no_grad(), autocast(dev, amp):
        out = model(torch.from_numpy(np.ascontiguousarray(batch)).to(dev))
    return out.float().cpu().numpy()


@lru_cache(maxsize=8)
def _window(th: int, tw: int, overlap: int) -> np.ndarray:
    if th == tw:
        return blend_window(th, overlap)
    return np.outer(blend_window(th, overlap)[th // 2], blend_window(tw, overlap)[tw // 2])


def _blend_block(
    box: tuple[int, int, int, int],
    parts: list[tuple[np.ndarray, int, int, int]],
    tile_shape: tuple[int, int, int],
    cout: int,
    stain: Any,
) -> np.ndarray:
    """One output chunk: the weighted mean of the tiles over it (as in ``predict_image``).

    ``stain`` is the model's :class:`~napari_lmadda.data.normalize.TargetNorm` (decode to
    stain units) or None (network units).
    """
    y0, y1, x0, x1 = box
    th, tw, overlap = tile_shape
    win = _window(th, tw, overlap)
    acc = np.zeros((cout, y1 - y0, x1 - x0), np.float32)
    wsum = np.zeros((y1 - y0, x1 - x0), np.float32)
    for out, k, r, c in parts:  # in predict_image's order: the same float sums
        a0, a1 = max(r, y0), min(r + th, y1)
        b0, b1 = max(c, x0), min(c + tw, x1)
        src = (slice(a0 - r, a1 - r), slice(b0 - c, b1 - c))
        dst = (slice(a0 - y0, a1 - y0), slice(b0 - x0, b1 - x0))
        w = win[src]
        acc[(slice(None), *dst)] += out[k][(slice(None), *src)] * w
        wsum[dst] += w
    acc /= wsum[None]
    if stain is not None:
        acc = stain.decode(acc, axis=0)  # elementwise: equal to predict_image's decoding
    return acc


def _whole_plane_task(
    whole: Any,
    specs: list[tuple[int, list[int], tuple[int, int, int, int], np.ndarray, list]],
    box: tuple[int, int, int, int],
    tile_shape: tuple[int, int, int],
    percentiles: tuple[float, float] | None,
    model: Any,
    amp: str,
    device: str | None,
    stain: Any,
    cout: int,
) -> tuple[np.ndarray, list]:
    """Read, normalise, predict and blend a whole (small) plane: the tasks above, in a row.

    ``whole`` is the plane, or the ``(file, plane index)`` to read it from.
    """
    if isinstance(whole, tuple):
        plane, messages = _read_plane_task(*whole)
    else:
        plane, messages = whole, []
    norm = _norm_task(plane, *percentiles) if percentiles is not None else None
    parts = []
    for r, part, (r0, r1, c0, c1), rows, cols in specs:
        out = _predict_tiles(plane[r0:r1, c0:c1], rows, cols, norm, model, amp, device)
        parts.extend((out, k, r, c) for k, c in enumerate(part))
    block = _blend_block(box, parts, tile_shape, cout, stain)
    return block, [*messages, *(norm[1] if norm is not None else [])]


def _first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def _pack(*values: Any) -> tuple[Any, ...]:
    return values


# ------------------------------------------------------------------ plane sources
def _cut(image: Any, r0: int, r1: int, c0: int, c1: int, step: int = 1) -> np.ndarray:
    """``image[r0:r1:step, c0:c1:step]``; ``image`` may be the ``(plane, warnings)`` of a read."""
    if isinstance(image, tuple):
        image = image[0]
    return np.asarray(image[r0:r1:step, c0:c1:step])


def _zarr_region(z: Any, lead: tuple[int, ...], r0: int, r1: int, c0: int, c1: int,
                 step: int = 1) -> np.ndarray:
    """One region of one plane of a Zarr array (only the chunks under it are decoded)."""
    return np.asarray(z[(*lead, slice(r0, r1, step), slice(c0, c1, step))])


@dataclass
class _Plane:
    """One 2-D input plane and how tasks read a region of it.

    Exactly one source is set: ``read`` (file and plane index of an image file, decoded
    whole by one task), ``whole`` (a delayed in-memory array), ``zarr`` (a Zarr array, with
    ``lead`` the indices of the plane along its leading axes), ``tiff`` (a single-plane TIFF
    read region by region) or ``array`` (a dask array).
    """

    shape: tuple[int, int]
    read: tuple[str, int] | None = None
    whole: Any = None
    zarr: Any = None
    lead: tuple[int, ...] = ()
    tiff: str | None = None
    array: Any = None
    read_bytes: int = 0  # memory one read task takes (the whole plane, or a few chunks)

    def __post_init__(self) -> None:
        if self.read is not None:  # one read task, shared by every region of the plane
            import dask

            self.whole = dask.delayed(_read_plane_task, pure=False)(*self.read)

    @property
    def messages(self) -> Any:
        """Delayed list of the warnings recorded while reading the plane (or None)."""
        import dask

        if self.read is None:
            return None
        return dask.delayed(_second, pure=False)(self.whole)

    def region(self, r0: int, r1: int, c0: int, c1: int, step: int = 1) -> Any:
        import dask

        if self.array is not None:
            return self.array[r0:r1:step, c0:c1:step]
        if self.tiff is not None:
            return dask.delayed(_read_tiff_region, pure=False)(self.tiff, r0, r1, c0, c1, step)
        if self.zarr is not None:
            return dask.delayed(_zarr_region, pure=False)(self.zarr, self.lead, r0, r1, c0, c1,
                                                         step)
        return dask.delayed(_cut, pure=False)(self.whole, r0, r1, c0, c1, step)

    def sample(self, max_pixels: int) -> Any:
        h, w = self.shape
        step = max(1, int(np.ceil(np.sqrt(h * w / max_pixels))))
        return self.region(0, h, 0, w, step)


def _as_plane(image: Any) -> _Plane:
    import dask
    import dask.array as da

    if isinstance(image, _Plane):
        return image
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    if image.ndim != 2 or 0 in image.shape:
        raise ConfigError(f"predict takes a 2-D (H, W) image, got shape {image.shape}")
    if np.dtype(image.dtype).kind not in "biuf":
        raise ConfigError(f"cannot predict an image of dtype {image.dtype}")
    shape = (int(image.shape[0]), int(image.shape[1]))
    if isinstance(image, da.Array):
        return _Plane(shape, array=image)
    if isinstance(image, np.ndarray):
        return _Plane(shape, whole=dask.delayed(image, pure=False))
    return _Plane(shape, zarr=image)  # a Zarr (or other sliceable, picklable) array


def _file_planes(path: Path) -> list[_Plane]:
    """The planes of an input file or Zarr image, lazily (only the header is read here)."""
    from ..data.io import TIFF_SUFFIXES, probe_image
    from ..data.zarr_io import is_zarr_image, open_zarr_array, zarr_available

    if is_zarr_image(path):
        z, _, _ = open_zarr_array(path)
        shape = (int(z.shape[-2]), int(z.shape[-1]))
        chunks = getattr(z, "chunks", None) or z.shape
        # a region read decodes the chunks under it: a few of them at a time
        cost = 4 * int(np.prod(chunks[-2:])) * np.dtype(z.dtype).itemsize
        return [_Plane(shape, zarr=z, lead=idx, read_bytes=cost)
                for idx in np.ndindex(*z.shape[:-2])]
    info = probe_image(path)
    if (
        path.suffix.lower() in TIFF_SUFFIXES
        and len(info.series) == 1
        and info.series[0].axes == "YX"
        and info.n_planes == 1
        and np.dtype(info.dtype).kind in "biuf"
        and int(np.prod(info.plane_shape(0))) >= LAZY_PIXELS
        and zarr_available()  # tifffile reads regions through a Zarr store
    ):
        cost = 4 * info.series[0].chunk_bytes  # a region read decodes a few tiles or strips
        return [_Plane(info.plane_shape(0), tiff=str(path), read_bytes=cost)]
    return [_Plane(info.plane_shape(i), read=(str(path), i), read_bytes=info.plane_read_bytes(i))
            for i in range(info.n_planes)]


def _second(pair: tuple[Any, Any]) -> Any:
    return pair[1]


# ------------------------------------------------------------------ the lazy prediction
@dataclass
class _Plan:
    """How one plane is cut: the tile grid and the groups of tiles run as one forward pass.

    ``groups[i] = (r, cols, (r0, r1, c0, c1), rows, col_indices)``: tile row ``r`` (padded
    coordinates), the tiles' column starts, the input region they read and the indices of
    their pixels inside it (reflect padding included).
    """

    grid: Any
    groups: list[tuple[int, list[int], tuple[int, int, int, int], np.ndarray, list]]
    cout: int
    stain: Any
    percentiles: tuple[float, float] | None

    @property
    def tile_shape(self) -> tuple[int, int, int]:
        return (self.grid.tile_height, self.grid.tile_width, self.grid.overlap)

    def over_rows(self, y0: int, y1: int) -> list[int]:
        """Indices of the groups whose tiles cover output rows ``y0 .. y1``."""
        th = self.grid.tile_height
        return [i for i, g in enumerate(self.groups) if g[0] < y1 and g[0] + th > y0]

    def parts(self, outs: Any, rows: list[int], x0: int, x1: int) -> list:
        """``(prediction, k, r, c)`` of the tiles of groups ``rows`` over columns ``x0 .. x1``."""
        tw = self.grid.tile_width
        return [(outs[i], k, self.groups[i][0], c) for i in rows
                for k, c in enumerate(self.groups[i][1]) if c < x1 and c + tw > x0]


def _plan(model: Any, shape: tuple[int, int], *, tile: int, overlap: int, batch_size: int,
          normalize: bool, to_stain: bool) -> _Plan:
    meta = getattr(model, "meta", {}) or {}
    grid = tile_grid(shape, model.min_size, tile, overlap)
    th, tw = grid.tile_height, grid.tile_width
    rmap, cmap = grid.source_index(0), grid.source_index(1)
    percentiles = model_percentiles(meta) if normalize else None
    # groups of up to batch_size neighbouring tiles of one tile row: one forward pass each
    groups: list[tuple[int, list[int], tuple[int, int, int, int], np.ndarray, list]] = []
    for r in sorted({r for r, _ in grid.coords}):
        row_cols = [c for rr, c in grid.coords if rr == r]
        rows = rmap[r : r + th]
        r0, r1 = int(rows.min()), int(rows.max()) + 1
        for i in range(0, len(row_cols), batch_size):
            part = row_cols[i : i + batch_size]
            cols = [cmap[c : c + tw] for c in part]
            c0 = int(min(c.min() for c in cols))
            c1 = int(max(c.max() for c in cols)) + 1
            groups.append((r, part, (r0, r1, c0, c1), rows - r0, [c - c0 for c in cols]))
    return _Plan(grid, groups, int(model.config.out_channels),
                 target_norm(model) if to_stain else None, percentiles)


def _lazy_prediction(
    model: Any,
    model_ref: Any,
    plane: _Plane,
    *,
    tile: int,
    overlap: int,
    batch_size: int,
    chunk: int,
    normalize: bool,
    to_stain: bool,
    amp: str,
    device: str | None,
) -> tuple[Any, Any]:
    """Return the output blocks of one plane and the delayed warnings of making them."""
    import dask

    plan = _plan(model, plane.shape, tile=tile, overlap=overlap, batch_size=batch_size,
                 normalize=normalize, to_stain=to_stain)
    cout, stain, percentiles, specs = plan.cout, plan.stain, plan.percentiles, plan.groups
    h, w = plane.shape
    tile_shape = plan.tile_shape
    if plane.whole is not None and h <= chunk and w <= chunk and h * w <= NORM_SAMPLE_PIXELS:
        # one output chunk: the whole plane in one task, reading included (a folder of small
        # images pays the scheduling overhead and data transfers once per image)
        source = plane.read if plane.read is not None else plane.whole
        task = dask.delayed(_whole_plane_task, pure=False)(
            source, specs, (0, h, 0, w), tile_shape, percentiles, model_ref, amp, device,
            stain, cout,
        )
        block = dask.delayed(_first, pure=False)(task)
        return _Blocks([[(block, (cout, h, w))]]), [dask.delayed(_second, pure=False)(task)]
    norm = None
    if percentiles is not None:
        norm = dask.delayed(_norm_task, pure=False)(plane.sample(NORM_SAMPLE_PIXELS),
                                                    *percentiles)
    outs = [dask.delayed(_predict_tiles, pure=False)(
        plane.region(r0, r1, c0, c1), rows, cols, norm, model_ref, amp, device)
        for _, _, (r0, r1, c0, c1), rows, cols in specs]
    block_rows = []
    for y0 in range(0, h, chunk):
        y1 = min(y0 + chunk, h)
        over = plan.over_rows(y0, y1)
        blocks = []
        for x0 in range(0, w, chunk):
            x1 = min(x0 + chunk, w)
            block = dask.delayed(_blend_block, pure=False)(
                (y0, y1, x0, x1), plan.parts(outs, over, x0, x1), tile_shape, cout, stain
            )
            blocks.append((block, (cout, y1 - y0, x1 - x0)))
        block_rows.append(blocks)
    messages = [m for m in (plane.messages, norm) if m is not None]
    if norm is not None:
        messages[-1] = dask.delayed(_second, pure=False)(norm)
    return _Blocks(block_rows), messages


def _band_bytes(plan: _Plan, width: int, chunk: int) -> int:
    """Memory of streaming one band of output rows: the band and the tiles over it."""
    th, tw, _ = plan.tile_shape
    band = plan.cout * min(chunk, plan.grid.height) * width * 4
    tiles = plan.cout * (min(chunk, plan.grid.height) + 2 * th) * (width + 2 * tw) * 4
    return 2 * band + tiles  # the band's blocks and the band they are joined into


def _stream_plane(runner: DaskRunner, model: Any, model_ref: Any, plane: _Plane, store: Any,
                  lead: tuple[int, ...], *, chunk: int, amp: str, device: str | None,
                  **plan_kw: Any) -> list:
    """Predict one (large) plane band of ``chunk`` rows by band into ``store[:, *lead]``.

    Each band's tile groups run as dask tasks; tiles that also cover the next band are kept
    for it (computed once), the others dropped, and the blended band is written before the
    next one starts, so memory holds one band and its tiles whatever the plane's size.
    Returns the warnings of the normalisation.
    """
    import dask

    plan = _plan(model, plane.shape, **plan_kw)
    h, w = plane.shape
    th = plan.grid.tile_height
    norm, messages = None, []
    if plan.percentiles is not None:
        norm = runner.compute([dask.delayed(_norm_task, pure=False)(
            plane.sample(NORM_SAMPLE_PIXELS), *plan.percentiles)])[0]
        messages = norm[1]
    done: dict[int, np.ndarray] = {}
    for y0 in range(0, h, chunk):
        y1 = min(y0 + chunk, h)
        over = plan.over_rows(y0, y1)
        todo = [i for i in over if i not in done]
        values = [dask.delayed(_predict_tiles, pure=False)(
            plane.region(*plan.groups[i][2]), plan.groups[i][3], plan.groups[i][4], norm,
            model_ref, amp, device) for i in todo]
        done.update(zip(todo, runner.compute(values)))
        starts = range(0, w, chunk)
        blocks = runner.compute([dask.delayed(_blend_block, pure=False)(
            (y0, y1, x0, min(x0 + chunk, w)), plan.parts(done, over, x0, min(x0 + chunk, w)),
            plan.tile_shape, plan.cout, plan.stain) for x0 in starts])
        store[(slice(None), *lead, slice(y0, y1), slice(None))] = np.concatenate(blocks, axis=2)
        del blocks
        for i in [i for i in done if plan.groups[i][0] + th <= y1]:
            del done[i]  # no later band needs these tiles
    return messages


@dataclass
class _Blocks:
    """The output chunks of one plane: rows of ``(delayed (C, h, w) block, shape)``."""

    rows: list[list[tuple[Any, tuple[int, int, int]]]]

    def to_dask(self) -> Any:
        """As one ``(C, H, W)`` dask array chunked like the blocks."""
        import dask.array as da

        return da.block([[da.from_delayed(b, shape=shape, dtype=np.float32) for b, shape in row]
                         for row in self.rows])

    def assembled(self) -> Any:
        """A delayed ``(C, H, W)`` numpy array (no dask.array machinery: cheap per image)."""
        import dask

        return dask.delayed(_assemble, pure=False)([[b for b, _ in row] for row in self.rows])


def _assemble(rows: list[list[np.ndarray]]) -> np.ndarray:
    if len(rows) == 1 and len(rows[0]) == 1:
        return rows[0][0]
    return np.concatenate([np.concatenate(row, axis=2) for row in rows], axis=1)


def _check_options(tile: int, overlap: int, batch_size: int, chunk: int, amp: str) -> None:
    if tile < 1 or overlap < 0 or batch_size < 1 or chunk < 1:
        raise ConfigError("tile, batch_size and chunk must be >= 1 and overlap >= 0")
    if amp not in AMP_MODES:
        raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")


def predict_lazy(
    model: Any,
    image: Any,
    *,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int = 4,
    chunk: int = 1024,
    device: str | None = None,
    normalize: bool = True,
    to_stain: bool = True,
    amp: str = "off",
) -> Any:
    """Predict the virtual stain(s) of one 2-D image as a lazy dask array.

    Equals :func:`~.inference.predict.predict_image` (same options) to float rounding, for
    planes up to :data:`NORM_SAMPLE_PIXELS` pixels (above, the normalisation percentiles come
    from a strided sample). Nothing is computed until the result is (e.g. with
    ``.compute()``, ``dask.array.store`` or ``to_zarr``).

    Parameters
    ----------
    model : UNetGenerator
        A grey-input model; it is put in eval mode (and left so: the work happens later).
    image : array-like
        ``(H, W)``: a numpy array, a dask array, or a Zarr array (read region by region).
    tile, overlap, batch_size, device, normalize, to_stain, amp
        As for :func:`~.inference.predict.predict_image`.
    chunk : int
        Side of the output chunks (one blending task each).

    Returns
    -------
    dask.array.Array
        ``(C, H, W)`` float32, chunked ``(C, chunk, chunk)``.
    """
    _check_options(tile, overlap, batch_size, chunk, amp)
    _check_grey_model(model)
    model.eval()
    blocks, _ = _lazy_prediction(model, model, _as_plane(image), tile=tile, overlap=overlap,
                                 batch_size=batch_size, chunk=chunk, normalize=normalize,
                                 to_stain=to_stain, amp=amp, device=device)
    return blocks.to_dask()


# ------------------------------------------------------------------ schedulers
class DaskRunner:
    """Run dask collections on a local scheduler or a ``dask.distributed`` cluster.

    Parameters
    ----------
    scheduler : str or distributed.Client
        ``"threads"`` (local thread pool), ``"synchronous"`` (one thread, for debugging), the
        address of a dask.distributed scheduler (``tcp://host:8786``), or a ``Client``.
    workers : int, optional
        Threads of the local threaded scheduler (default: the CPU count).
    timeout : float
        Seconds to wait for a cluster to answer.
    """

    def __init__(self, scheduler: Any = "threads", workers: int | None = None,
                 timeout: float = 10.0) -> None:
        if workers is not None and workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        self.client = None
        self._own_client = False
        self._pool = None
        self.scheduler = scheduler
        self.workers = workers
        if isinstance(scheduler, str) and scheduler in SCHEDULERS:
            return
        if isinstance(scheduler, str):
            self.client = _connect(scheduler, timeout)
            self._own_client = True
        elif hasattr(scheduler, "scheduler_info") and hasattr(scheduler, "compute"):
            self.client = scheduler
        else:
            raise ConfigError(
                f"scheduler must be one of {', '.join(SCHEDULERS)} or the address of a "
                f"dask.distributed scheduler (tcp://host:port), got {scheduler!r}"
            )

    @property
    def nthreads(self) -> int:
        """Worker threads doing the work."""
        if self.client is not None:
            return max(1, sum(self.client.nthreads().values()))
        if self.scheduler == "synchronous":
            return 1
        return self.workers or os.cpu_count() or 1

    def model_ref(self, model: Any) -> Any:
        """What tasks receive as the model: the model itself, or a copy on every worker."""
        if self.client is None:
            return model
        return self.client.scatter(model, broadcast=True, hash=False)

    def compute(self, values: Sequence[Any]) -> list[Any]:
        """Compute delayed values together (shared inputs once); return their results."""
        import dask

        if self.client is not None:
            return list(self.client.compute(list(values), sync=True))
        kw: dict[str, Any] = {"scheduler": self.scheduler}
        if self.scheduler == "threads":
            # our own pool: after an interrupt, the tasks still running are waited for
            # (they write into temporary outputs that are removed next)
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.nthreads, thread_name_prefix="lmadda")
            kw["pool"] = self._pool
        try:
            return list(dask.compute(*values, **kw))
        except BaseException:
            self._stop_pool()
            raise

    def _stop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def describe(self) -> str:
        """One line for the terminal."""
        if self.client is not None:
            n = len(self.client.scheduler_info().get("workers", {}))
            return (f"dask.distributed at {self.client.scheduler.address}: {n} worker(s), "
                    f"{self.nthreads} thread(s)")
        if self.scheduler == "synchronous":
            return "dask synchronous scheduler (1 thread)"
        return f"dask threaded scheduler, {self.nthreads} thread(s)"

    def close(self) -> None:
        """Stop the local thread pool; disconnect from a cluster this runner connected to."""
        self._stop_pool()
        if self.client is not None and self._own_client:
            self.client.close()
            self.client = None


def _connect(address: str, timeout: float) -> Any:
    """A ``distributed.Client`` for ``address``, with one-line errors."""
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError(
            f"--scheduler {address}: a dask.distributed cluster needs the 'distributed' "
            "package (pip install 'napari-lmadda[cluster]')"
        ) from None
    if "://" not in address and ":" not in address:
        raise ConfigError(
            f"--scheduler {address!r}: give threads, synchronous or a scheduler address "
            "such as tcp://host:8786"
        )
    try:
        return Client(address, timeout=timeout)
    except Exception as exc:  # refused, timed out, or something else answered (any error)
        raise ConfigError(
            f"--scheduler {address}: cannot reach a dask scheduler there "
            f"({type(exc).__name__.lstrip('_')}: {' '.join(str(exc).split())[:200]})"
        ) from None


@contextmanager
def _runner(scheduler: Any, workers: int | None) -> Iterator[DaskRunner]:
    runner = scheduler if isinstance(scheduler, DaskRunner) else DaskRunner(scheduler, workers)
    try:
        yield runner
    finally:
        if runner is not scheduler:
            runner.close()


# ------------------------------------------------------------------ folders
def list_inputs(images: str | os.PathLike[str]) -> list[Path]:
    """The inputs of a batch: an image file, a Zarr image, or a folder of them.

    Parameters
    ----------
    images : path-like
        A folder (its image files and ``*.zarr`` images, natural order), one image file, or
        one ``*.ome.zarr`` image.

    Returns
    -------
    list of Path
        The inputs; the project's own predictions in a folder are left out (with a warning).
    """
    from ..data.io import EmptyFolderError, _natural_key, list_images
    from ..data.zarr_io import is_zarr_image, zarr_inputs, zarr_stem

    root = Path(images).expanduser()
    if is_zarr_image(root):
        return zarr_inputs(root)  # an HCS plate or well: its fields
    if not root.is_dir():
        return list_images(root)
    zarrs = [f for p in root.iterdir() if not p.name.startswith(".") and is_zarr_image(p)
             for f in zarr_inputs(p)]
    try:
        files = list_images(root)
    except EmptyFolderError:
        if not zarrs:
            raise
        files = []
    files = drop_predictions(files, root)
    if not files and not zarrs:
        raise EmptyFolderError(f"no images in '{root}' other than napari-lmadda predictions")
    return sorted([*files, *zarrs],
                  key=lambda p: _natural_key(zarr_stem(p) if is_zarr_image(p) else p.name))


def _naming_path(p: Path) -> Path:
    """A stand-in name for :func:`output_paths`: ``a.ome.zarr`` is named like ``a.zarr``."""
    from ..data.zarr_io import is_zarr_image, zarr_stem

    return p.with_name(f"{zarr_stem(p)}.zarr") if is_zarr_image(p) else p


def output_targets(inputs: Sequence[Path], out_dir: str | os.PathLike[str],
                   out_format: str = "tiff", kind: str = "pred") -> list[Path]:
    """Where each input's prediction goes: ``<stem>_pred.tif`` or ``<stem>_pred.ome.zarr``.

    Same-stem inputs keep their suffix in the name (as
    :func:`~napari_lmadda.inference.predict.output_paths`), so no output replaces another.
    """
    from .predict import output_paths

    if out_format not in OUTPUT_FORMATS:
        raise ConfigError(f"format must be one of {', '.join(OUTPUT_FORMATS)}, got {out_format!r}")
    suffix = f"_{kind}.tif" if out_format == "tiff" else f"_{kind}.ome.zarr"
    return output_paths([_naming_path(p) for p in inputs], out_dir, suffix)


@dataclass
class _Job:
    path: Path
    target: Path
    n_planes: int
    value: Any  # one delayed: (predictions or None, warnings lists)
    writer: Any = None
    pixels: int = 0
    error: LmaddaError | None = None
    result: Any = None
    messages: list = field(default_factory=list)
    nbytes: int = 0  # memory the job takes while computed
    stream: list | None = None  # planes predicted band by band into ``writer``
    kept: bool = False  # a complete output of an earlier run, left as it is


def _emit(messages: list[tuple[type, str]], path: Path) -> None:
    """Re-emit the warnings of one file once each, naming the file."""
    seen = set()
    for category, text in messages:
        if path.name not in text:
            text = f"'{path.name}': {text}"
        if text not in seen:
            seen.add(text)
            warnings.warn(text, category, stacklevel=4)


def iter_predict_folder_dask(
    model: Any,
    images: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    scheduler: Any = "threads",
    workers: int | None = None,
    out_format: str = "tiff",
    overwrite: bool = False,
    skip_existing: bool = False,
    stop_on_error: bool = False,
    metadata: dict[str, Any] | None = None,
    window: int | None = None,
    chunk: int = 1024,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int = 4,
    device: str | None = None,
    normalize: bool = True,
    amp: str = "off",
) -> Iterator[tuple[int, int, Path]]:
    """Predict every input of a folder with dask; yield ``(done, total, path)`` per input.

    The :class:`~napari_lmadda.inference.predict.FolderReport` comes back through
    ``StopIteration.value``. Outputs and their metadata are those of
    :func:`~napari_lmadda.inference.predict.iter_predict_folder` (TIFF: ``CYX``/``ZCYX``); OME-Zarr
    outputs hold ``CYX``/``CZYX`` (NGFF order). An input that cannot be read or predicted is
    skipped with an :class:`~napari_lmadda.data.io.ImageWarning` naming it (unless
    ``stop_on_error``; then nothing after it is written).

    Parameters
    ----------
    model : UNetGenerator
        A grey-input model (run in eval mode; its modes are restored at the end).
    images : path-like
        Folder, image file or ``*.ome.zarr`` image (see :func:`list_inputs`).
    out_dir : path-like
        Output folder (created).
    scheduler : str, distributed.Client or DaskRunner
        See :class:`DaskRunner`.
    workers : int, optional
        Threads of the local threaded scheduler.
    out_format : {"tiff", "ome-zarr"}
        Output format.
    overwrite, skip_existing, stop_on_error, metadata
        As for :func:`~napari_lmadda.inference.predict.iter_predict_folder` (with
        ``skip_existing`` the outputs already complete are kept, the others computed).
    window : int, optional
        Images computed together (default: four per worker thread, at least 4), fewer when
        they hold :data:`WINDOW_PIXELS` pixels; bounds memory.
    chunk : int
        Output chunk side (one blending task and one Zarr chunk each).
    tile, overlap, batch_size, device, normalize, amp
        As for :func:`~.inference.predict.predict_image`.
    """
    import dask
    import dask.array as da

    from ..data.io import ImageWarning, read_pixel_size
    from ..data.zarr_io import OmeZarrWriter, read_calibration, source_name

    t0 = time.perf_counter()
    _check_options(tile, overlap, batch_size, chunk, amp)
    _check_grey_model(model)
    if window is not None and window < 1:
        raise ConfigError(f"window must be >= 1, got {window}")
    if overwrite and skip_existing:
        raise ConfigError("overwrite and skip_existing exclude each other")
    check_out_folder(images, out_dir)
    if out_format == "ome-zarr":
        from ..data.zarr_io import require_zarr

        require_zarr("writing OME-Zarr")
    inputs = list_inputs(images)
    targets = output_targets(inputs, out_dir, out_format)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LmaddaError(f"cannot create output folder '{out}': {exc.strerror or exc}") from None
    meta = getattr(model, "meta", {}) or {}
    cout = int(model.config.out_channels)
    names = list(meta.get("channel_names") or [f"channel{i}" for i in range(cout)])
    stain = target_norm(model)
    report = FolderReport()
    plan_kw = dict(tile=tile, overlap=overlap, batch_size=batch_size, normalize=normalize,
                   to_stain=True)
    opts = dict(plan_kw, chunk=chunk, amp=amp, device=device)

    def prepare(path: Path, target: Path, model_ref: Any) -> _Job:
        writer = None
        if skip_existing and target.exists():
            return _Job(path, target, 0, None, kept=True)
        try:
            if target.exists() and not overwrite:
                from ..errors import OutputExistsError

                raise OutputExistsError(f"'{target}' already exists (pass overwrite=True to "
                                        "replace it)")
            planes = _file_planes(path)
            budget = memory_budget()
            need = _check_job_memory(path, planes, cout, out_format, chunk, budget,
                                     lambda pl: _plan(model, pl.shape, **plan_kw))
            pixels = sum(pl.shape[0] * pl.shape[1] for pl in planes)
            if out_format == "ome-zarr":
                h, w = planes[0].shape
                shape = (cout, h, w) if len(planes) == 1 else (cout, len(planes), h, w)
                zchunks = (1, *([1] if len(shape) == 4 else []), chunk, chunk)
                writer = OmeZarrWriter(target, shape, zchunks, names, overwrite=overwrite,
                                       calibration=read_calibration(path))
                if all(pl.read is None for pl in planes) and (
                        3 * cout * h * w * 4 > budget or h * w >= LAZY_PIXELS):
                    # too large to compute whole: band by band, straight into the store
                    return _Job(path, target, len(planes), None, writer, pixels=pixels,
                                nbytes=need, stream=planes)
            preds, msgs = [], []
            for plane in planes:
                blocks, m = _lazy_prediction(model, model_ref, plane, **opts)
                preds.append(blocks)
                msgs.extend(m)
            if writer is None:
                value = dask.delayed(_pack, pure=False)([b.assembled() for b in preds], msgs)
                return _Job(path, target, len(planes), value, pixels=pixels, nbytes=need)
            preds = [b.to_dask() for b in preds]
            stack = preds[0] if len(preds) == 1 else da.stack(preds, axis=1)  # C(Z)YX
            stored = da.store(stack, writer.array, lock=False, compute=False)
            value = dask.delayed(_pack, pure=False)(stored, msgs)
            return _Job(path, target, len(planes), value, writer, pixels=pixels, nbytes=need)
        except LmaddaError as exc:
            if writer is not None:
                writer.abort()
            return _Job(path, target, 0, None, error=exc)
        except BaseException:
            if writer is not None:  # e.g. MemoryError: never leave the temporary folder
                writer.abort()
            raise

    def finish(job: _Job) -> Path:
        _, msgs = job.result
        _emit([m for ms in msgs for m in ms], job.path)
        n = job.n_planes
        pixel_size = read_pixel_size(job.path)
        if job.writer is not None:
            md = prediction_metadata(model, source_name(job.path), "CYX" if n == 1 else "CZYX",
                                     metadata)
            if pixel_size is not None:
                md["pixel_size"] = pixel_size
            return job.writer.commit(md, window=list(zip(stain.lo, stain.hi)))
        preds = job.result[0]
        arr = preds[0] if n == 1 else np.stack(preds)
        return write_prediction(model, job.target, arr, source_name(job.path),
                                overwrite=overwrite, metadata=metadata, pixel_size=pixel_size)

    def settle(jobs: list[_Job]) -> Iterator[tuple[int, int, Path]]:
        """Write (or skip) computed jobs, in order; yield progress after each."""
        for job in jobs:
            if job.kept:
                report.kept.append(job.target)
            elif job.error is None:
                try:
                    report.written.append(finish(job))
                except LmaddaError as exc:
                    job.error = exc
            if job.error is not None:
                if job.writer is not None:
                    job.writer.abort()
                if stop_on_error:
                    raise job.error
                report.skipped.append((job.path, str(job.error)))
                warnings.warn(f"skipped '{job.path.name}': {job.error}", ImageWarning,
                              stacklevel=3)
            job.result = None  # free the image before the next one
            progress[0] += 1
            yield progress[0], len(inputs), job.path

    modes = [(mod, mod.training) for mod in model.modules()]
    model.eval()
    pending: list[_Job] = []
    progress = [0]
    try:
        with _runner(scheduler, workers) as runner:
            model_ref = runner.model_ref(model)
            size = window or max(4, 4 * runner.nthreads)
            pixels = nbytes = 0
            for i, (path, target) in enumerate(zip(inputs, targets)):
                job = prepare(path, target, model_ref)
                if job.stream is not None:
                    _compute_jobs(runner, [j for j in pending if j.value is not None])
                    yield from settle(pending)
                    pending, pixels, nbytes = [job], 0, 0  # aborted by `finally` if it fails
                    try:
                        msgs = [_stream_plane(runner, model, model_ref, pl, job.writer.array,
                                              (z,) if job.n_planes > 1 else (), **opts)
                                for z, pl in enumerate(job.stream)]
                        job.result = (None, msgs)
                    except LmaddaError as exc:
                        job.error = exc
                    yield from settle(pending)
                    pending = []
                    continue
                pending.append(job)
                pixels += job.pixels
                nbytes += job.nbytes
                if (len(pending) < size and pixels < WINDOW_PIXELS
                        and nbytes < memory_budget() and i + 1 < len(inputs)):
                    continue
                _compute_jobs(runner, [j for j in pending if j.value is not None])
                yield from settle(pending)
                pending, pixels, nbytes = [], 0, 0
    finally:
        for job in pending:
            if job.writer is not None:
                job.writer.abort()
        for mod, mode in modes:
            mod.training = mode
    report.seconds = time.perf_counter() - t0
    return report


def _check_job_memory(path: Path, planes: list[_Plane], cout: int, out_format: str,
                      chunk: int, budget: int, plan: Callable[[_Plane], _Plan]) -> int:
    """Bytes predicting one input takes; refuse it (one line) when that exceeds ``budget``.

    TIFF output holds the whole prediction; OME-Zarr output of a region-readable plane is
    streamed band by band (one band and its tiles in memory); a plane that must be read
    whole needs its input and its output.
    """
    from ..data.io import ImageReadError
    from ..memory import fmt_bytes

    h, w = planes[0].shape
    out_plane = cout * h * w * 4
    read = max(pl.read_bytes for pl in planes)
    what = f"{cout}x{len(planes)}x{h}x{w}" if len(planes) > 1 else f"{cout}x{h}x{w}"
    if read > budget:
        raise ImageReadError(
            f"'{path}' cannot be read in the memory available: a read needs "
            f"{fmt_bytes(read)}, more than the {fmt_bytes(budget)} one image may use here "
            "(LMADDA_MEMORY_BUDGET)")
    if out_format == "tiff":
        need = read + (len(planes) + 1) * out_plane
        if need > budget:
            raise LmaddaError(
                f"'{path}': its prediction ({what} float32, {fmt_bytes(len(planes) * out_plane)})"
                f" does not fit in the {fmt_bytes(budget)} of memory one image may use here as "
                "one TIFF; --format ome-zarr writes it chunk by chunk")
        return need
    if all(pl.read is None for pl in planes):
        need = read + _band_bytes(plan(planes[0]), w, chunk)
        if need > budget:
            raise LmaddaError(
                f"'{path}': even one band of {chunk} rows of its prediction needs "
                f"{fmt_bytes(need)}, more than the {fmt_bytes(budget)} available; try a "
                "smaller --chunk")
        return min(need + 2 * out_plane, read + 3 * out_plane)
    need = read + 3 * out_plane
    if need > budget:
        raise LmaddaError(
            f"'{path}': predicting it needs {fmt_bytes(need)} (its {what} float32 prediction"
            f" and the image read whole), more than the {fmt_bytes(budget)} of memory one "
            "image may use here")
    return need


def _compute_jobs(runner: DaskRunner, jobs: list[_Job]) -> None:
    """Compute the jobs together; if that fails, one by one to find which input failed."""
    if not jobs:
        return
    try:
        results = runner.compute([j.value for j in jobs])
    except LmaddaError as exc:
        if len(jobs) == 1:
            jobs[0].error = exc
            return
        for job in jobs:
            try:
                job.result = runner.compute([job.value])[0]
            except LmaddaError as one:
                job.error = one
        return
    for job, result in zip(jobs, results):
        job.result = result


def predict_folder_dask(model: Any, images: Any, out_dir: Any, **kwargs: Any) -> FolderReport:
    """Predict a folder with dask (:func:`iter_predict_folder_dask`) and return the report.

    Parameters
    ----------
    model : UNetGenerator
        The model.
    images : path-like
        Folder, image file or ``*.ome.zarr`` image.
    out_dir : path-like
        Output folder.
    **kwargs
        Options of :func:`iter_predict_folder_dask`.

    Returns
    -------
    FolderReport
        Written outputs and skipped inputs with the reason.
    """
    gen = iter_predict_folder_dask(model, images, out_dir, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
