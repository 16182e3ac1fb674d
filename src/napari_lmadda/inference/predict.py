"""Virtual staining of whole images: tiled, padded, seamlessly blended, bounded memory.

An image is normalised as the model was trained (per-image percentiles), reflect-padded to a
multiple of ``2**num_downs``, cut into overlapping tiles, and the tiles' predictions are
blended with a smooth window (weights fall to a small floor at tile borders), so there are no
seams. Only one batch of tiles is in memory on the device at a time; the output and weight
accumulators are the only full-size arrays. The model runs in eval mode (BatchNorm running
statistics, no dropout).
"""

from __future__ import annotations

import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, LmaddaError

__all__ = [
    "predict_image",
    "predict_folder",
    "iter_predict_folder",
    "output_path",
    "output_paths",
    "output_to_stain",
    "target_norm",
    "prediction_bytes",
    "FolderReport",
    "check_out_folder",
    "is_prediction_file",
    "drop_predictions",
    "prediction_metadata",
    "write_prediction",
    "tile_starts",
    "blend_window",
    "TileGrid",
    "tile_grid",
    "autocast",
    "AMP_MODES",
]

#: Mixed-precision modes of prediction: full float32, or autocast to bfloat16 / float16.
AMP_MODES: tuple[str, ...] = ("off", "bf16", "fp16")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``length`` px with at least ``overlap``."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step)) + [length - tile]
    return sorted(set(starts))


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """2-D blending weights: 1 in the middle, a raised-cosine ramp over ``overlap`` px at edges."""
    w = np.ones(tile, np.float64)
    if overlap > 0:
        r = np.arange(overlap, dtype=np.float64)
        ramp = 0.5 - 0.5 * np.cos(np.pi * (r + 0.5) / overlap)
        w[:overlap] = np.maximum(ramp, 1e-3)
        w[-overlap:] = np.maximum(ramp[::-1], 1e-3)
    return np.outer(w, w).astype(np.float32)


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one image go (shared by :func:`predict_image` and the dask path).

    Attributes
    ----------
    height, width : int
        The image.
    padded_height, padded_width : int
        The image reflect-padded to a multiple of the model's ``min_size``.
    tile_height, tile_width : int
        Tile shape (the tile side, clipped to the padded image).
    overlap : int
        Overlap of neighbouring tiles (at most half a tile).
    pad_mode : str
        ``np.pad`` mode of the padding.
    coords : list of (int, int)
        Top-left corner of every tile in the padded image, row-major (the accumulation order).
    """

    height: int
    width: int
    padded_height: int
    padded_width: int
    tile_height: int
    tile_width: int
    overlap: int
    pad_mode: str
    coords: list[tuple[int, int]]

    def window(self) -> np.ndarray:
        """The ``(tile_height, tile_width)`` blending weights."""
        th, tw, ov = self.tile_height, self.tile_width, self.overlap
        if th == tw:
            return blend_window(th, ov)
        return np.outer(blend_window(th, ov)[th // 2], blend_window(tw, ov)[tw // 2])

    def source_index(self, axis: int) -> np.ndarray:
        """For each padded row (``axis=0``) or column (1), the image row/column it copies."""
        n, pn = (self.height, self.padded_height) if axis == 0 else (self.width, self.padded_width)
        return np.pad(np.arange(n), (0, pn - n), mode=self.pad_mode)


def tile_grid(shape: tuple[int, int], min_size: int, tile: int, overlap: int) -> TileGrid:
    """Plan the tiles of an image of ``shape`` for a model whose sides must divide ``min_size``.

    Parameters
    ----------
    shape : (int, int)
        Image height and width.
    min_size : int
        ``2**num_downs`` of the model.
    tile, overlap : int
        Requested tile side (rounded down to a multiple of ``min_size``) and overlap.

    Returns
    -------
    TileGrid
        The padding and the tiles.
    """
    m = int(min_size)
    tile = max(m, (int(tile) // m) * m)
    h, w = int(shape[0]), int(shape[1])
    # pad to a multiple of the model's stride (never smaller than the image)
    ph, pw = -(-h // m) * m, -(-w // m) * m
    th, tw = min(tile, ph), min(tile, pw)
    overlap = int(min(overlap, th // 2, tw // 2))
    mode = "reflect" if h > 1 and w > 1 and ph - h < h and pw - w < w else "symmetric"
    coords = [(r, c) for r in tile_starts(ph, th, overlap) for c in tile_starts(pw, tw, overlap)]
    return TileGrid(h, w, ph, pw, th, tw, overlap, mode, coords)


def autocast(device, amp: str = "off"):
    """Context manager running a forward pass in mixed precision (``amp`` in ``AMP_MODES``).

    ``"bf16"`` and ``"fp16"`` use :func:`torch.autocast` on the device's type (both work on
    CPU in recent torch); ``"off"`` keeps float32.
    """
    import contextlib

    import torch

    if amp not in AMP_MODES:
        raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def target_norm(model: Any):
    """The model's :class:`~napari_lmadda.data.normalize.TargetNorm` (how outputs map to stains).

    Raises
    ------
    ConfigError
        The model's metadata holds no valid target range for its output channels.
    """
    from ..data.normalize import TargetNorm

    cout = int(model.config.out_channels)
    return TargetNorm.from_meta(getattr(model, "meta", {}) or {}, cout)


def output_to_stain(y: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Map the network's tanh output ``(C, ...)`` in [-1, 1] to stain units (the model's meta)."""
    from ..data.normalize import TargetNorm

    y = np.asarray(y, np.float32)
    channels = y.shape[0] if y.ndim >= 3 else 1
    arr = y if y.ndim >= 3 else y[None]
    out = TargetNorm.from_meta(meta, channels).decode(arr, axis=0)
    return out if y.ndim >= 3 else out[0]


def prediction_bytes(shape: tuple[int, int], channels: int, min_size: int = 1,
                     in_channels: int = 1) -> int:
    """Memory :func:`predict_image` needs for an ``(H, W)`` image: input copy, padding, output.

    The float32 normalised input (``in_channels`` planes), its padded copy, the ``(C, H, W)``
    accumulator and the weight map (all padded to a multiple of ``min_size``).
    """
    h, w = (-(-int(n) // min_size) * min_size for n in shape)
    cin = int(in_channels)
    return 4 * (cin * int(shape[0]) * int(shape[1]) + h * w * (cin + 1 + int(channels)))


def predict_image(
    model,
    image: np.ndarray,
    *,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int = 4,
    device: str | None = None,
    normalize: bool = True,
    to_stain: bool = True,
    cancel: Callable[[], bool] | None = None,
    amp: str = "off",
) -> np.ndarray:
    """Predict the virtual stain(s) of one 2-D image.

    Parameters
    ----------
    model : UNetGenerator
        The (adapted) model; ``model.meta`` gives normalisation and output range.
    image : ndarray
        ``(H, W)`` grey image, raw intensities (or already normalised with ``normalize=False``);
        ``(C, H, W)`` for a model with C > 1 input channels (each channel normalised alone).
    tile, overlap : int
        Tile side (rounded to a multiple of ``2**num_downs``) and overlap in pixels.
    batch_size : int
        Tiles per forward pass.
    device : str, optional
        Device; defaults to where the model is.
    normalize : bool
        Apply the model's percentile normalisation first.
    to_stain : bool
        Map the output to stain units; otherwise keep the network range [-1, 1].
    cancel : callable, optional
        Polled between batches; raises :class:`LmaddaError` when it returns True.
    amp : {"off", "bf16", "fp16"}
        Mixed precision of the forward passes (:func:`autocast`); blending stays float32.

    Returns
    -------
    ndarray
        ``(C, H, W)`` float32, same height and width as ``image``.
    """
    import torch

    from ..data.normalize import model_percentiles, percentile_normalize
    from ..devices import resolve_device
    from ..memory import fmt_bytes, memory_budget

    img = np.asarray(image)
    cin = int(getattr(getattr(model, "config", None), "in_channels", 1))
    if cin > 1 and img.ndim == 3 and img.shape[0] == cin and img.size:
        planes = list(img)  # several input channels: one (H, W) plane each
    elif img.ndim != 2 or img.size == 0:
        raise ConfigError(f"predict_image takes a 2-D (H, W) image, got shape {img.shape}")
    else:
        _check_grey_model(model)
        planes = [img]
    if img.dtype.kind not in "biuf":
        raise ConfigError(f"cannot predict an image of dtype {img.dtype}")
    if tile < 1 or overlap < 0 or batch_size < 1:
        raise ConfigError("tile and batch_size must be >= 1 and overlap >= 0")
    if amp not in AMP_MODES:
        raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    cout = model.config.out_channels
    hw = img.shape[-2:]
    need = prediction_bytes(hw, cout, model.min_size, in_channels=len(planes))
    budget = memory_budget()
    if need > budget:
        h, w = hw
        raise ConfigError(
            f"predicting a {h}x{w} image needs {fmt_bytes(need)} of memory, more than the "
            f"{fmt_bytes(budget)} available for one image (LMADDA_MEMORY_BUDGET): use "
            "napari_lmadda.inference.predict_dask.predict_lazy (chunked, e.g. into Zarr) or "
            "lmadda predict --format ome-zarr"
        )
    norm_out = target_norm(model) if to_stain else None
    # a device string as the user typed it: one clear message for cuda:3 on a 1-GPU machine
    dev = resolve_device(device) if device else next(model.parameters()).device
    meta = getattr(model, "meta", {}) or {}
    if normalize:
        p_low, p_high = model_percentiles(meta)
        x = np.stack([percentile_normalize(p, p_low, p_high)[0] for p in planes])
    else:
        x = np.stack([p.astype(np.float32) for p in planes])
    x = np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)  # x is our own copy
    grid = tile_grid(x.shape[1:], model.min_size, tile, overlap)
    h, w = grid.height, grid.width
    ph, pw, th, tw = grid.padded_height, grid.padded_width, grid.tile_height, grid.tile_width
    if (ph, pw) != (h, w):
        x = np.pad(x, ((0, 0), (0, ph - h), (0, pw - w)), mode=grid.pad_mode)
    modes = [(mod, mod.training) for mod in model.modules()]
    model.eval()
    acc = np.zeros((cout, ph, pw), np.float32)
    wsum = np.zeros((ph, pw), np.float32)
    win = grid.window()
    coords = grid.coords
    try:
        with torch.no_grad(), autocast(dev, amp):
            for i in range(0, len(coords), batch_size):
                if cancel is not None and cancel():
                    raise LmaddaError("prediction cancelled")
                chunk = coords[i : i + batch_size]
                batch = np.stack([x[:, r : r + th, c : c + tw] for r, c in chunk])
                out = model(torch.from_numpy(batch).to(dev)).float().cpu().numpy()
                for (r, c), o in zip(chunk, out):
                    acc[:, r : r + th, c : c + tw] += o * win
                    wsum[r : r + th, c : c + tw] += win
    finally:
        for mod, mode in modes:  # restore exactly (e.g. BatchNorm alone in train mode)
            mod.training = mode
    # in place: the accumulators are the only full-size arrays (bounded memory)
    y = acc[:, :h, :w]
    y /= wsum[None, :h, :w]
    del wsum
    y = np.ascontiguousarray(y)
    if norm_out is not None:
        # TargetNorm.decode in bands of rows: its float64 temporaries stay small
        band = max(1, (1 << 20) // max(1, w))
        for r in range(0, h, band):
            y[:, r : r + band] = norm_out.decode(y[:, r : r + band], axis=0)
    return y


def _check_grey_model(model) -> None:
    cin = getattr(getattr(model, "config", None), "in_channels", 1)
    if cin != 1:
        raise ConfigError(
            f"this model takes {cin} input channels but was given one grey plane; give "
            f"({cin}, H, W) images (predict_image does; the folder and dask predictions "
            "read one plane at a time)"
        )


def output_paths(
    paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, suffix: str = "_pred.tif"
) -> list[Path]:
    """Return where :func:`predict_folder` writes the prediction of each input.

    ``<out_dir>/<stem><suffix>`` with the input's name minus its last suffix; inputs sharing a
    stem (``a.png`` and ``a.tif``) keep their suffix (``a_png_pred.tif``, ``a_tif_pred.tif``),
    so no output replaces another.

    Parameters
    ----------
    paths : sequence of path-like
        Every input of the batch.
    out_dir : path-like
        The output folder.
    suffix : str
        End of the output names.

    Returns
    -------
    list of Path
        One output file per input, in the same order.
    """
    stems = Counter(Path(p).stem for p in paths)
    out = []
    for p in map(Path, paths):
        stem = p.stem if stems[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}"
        out.append(Path(out_dir) / f"{stem}{suffix}")
    return out


def output_path(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    siblings: Sequence[str | os.PathLike] = (),
    suffix: str = "_pred.tif",
) -> Path:
    """Return the output of one input of a batch (as :func:`output_paths`, one at a time).

    Parameters
    ----------
    path : path-like
        The input image.
    out_dir : path-like
        The output folder.
    siblings : sequence of path-like
        Every input of the batch (including ``path``).
    suffix : str
        End of the output name.

    Returns
    -------
    Path
        The output file.
    """
    p = Path(path)
    clash = sum(1 for q in siblings if Path(q).stem == p.stem) > 1
    stem = f"{p.stem}_{p.suffix.lstrip('.').lower()}" if clash else p.stem
    return Path(out_dir) / f"{stem}{suffix}"


def check_out_folder(images: str | os.PathLike, out_dir: str | os.PathLike,
                     names: tuple[str, str] = ("the output folder", "the input folder")) -> None:
    """Refuse an output folder equal to, or inside, the folder of input images.

    Outputs there would mix with the inputs (and be read as inputs by the next run).

    Raises
    ------
    ConfigError
        One line naming both folders.
    """
    imgs = Path(images).expanduser().resolve()
    out = Path(out_dir).expanduser().resolve()
    if imgs.is_dir() and (out == imgs or imgs in out.parents):
        raise ConfigError(
            f"{names[0]} '{out_dir}' is {'the same as' if out == imgs else 'inside'} "
            f"{names[1]} '{images}' (inside it, outputs would mix with the inputs); choose "
            "a folder outside it"
        )


def is_prediction_file(path: str | os.PathLike) -> bool:
    """Whether an image file is a napari-lmadda prediction or trust map (by its metadata).

    The metadata, not the name, decides: a renamed prediction is still recognised.
    """
    from ..data.io import TIFF_SUFFIXES, read_tiff_metadata

    p = Path(path)
    if p.suffix.lower() not in TIFF_SUFFIXES or not p.is_file():
        return False
    try:
        md = read_tiff_metadata(p)
    except LmaddaError:
        return False
    return isinstance(md, dict) and {"source_image", "channels", "model"} <= set(md)


def drop_predictions(files: Sequence[Path], where: str | os.PathLike) -> list[Path]:
    """``files`` without the project's own predictions, with one warning naming them."""
    from ..data.io import ImageWarning

    own = [f for f in files if is_prediction_file(f)]
    if own:
        warnings.warn(
            f"ignored {len(own)} file(s) in '{where}' that are napari-lmadda predictions, not "
            f"images to predict (e.g. '{own[0].name}')", ImageWarning, stacklevel=1)
    return [f for f in files if f not in own]


def prediction_metadata(model, source: Path | str, axes: str,
                        extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON metadata of a prediction file: source, channels, units, model provenance.

    ``units`` says whether values are in the training targets' own units (``target``) or
    per-image normalised ones (``normalised``, a model trained with per-image target
    normalisation); ``target_range`` and ``target_norm`` say how they were decoded.
    """
    meta = getattr(model, "meta", {}) or {}
    cout = int(model.config.out_channels)
    norm = target_norm(model)
    return {
        # a path gives its file name; a str is the name itself (an HCS field: plate/A/1/0)
        "source_image": source.name if isinstance(source, Path) else str(source),
        "channels": list(meta.get("channel_names") or [f"channel{i}" for i in range(cout)]),
        "axes": axes,
        "units": norm.units,
        **norm.to_meta(),
        "model": meta.get("provenance", {}),
        **(extra or {}),
    }


def write_prediction(model, target: Path, arr: np.ndarray, source: Path | str, *,
                     overwrite: bool = False, metadata: dict[str, Any] | None = None,
                     pixel_size: dict[str, Any] | None = None) -> Path:
    """Write a ``(C, Y, X)`` or ``(Z, C, Y, X)`` prediction as a calibrated ImageJ hyperstack.

    Channels are named after the model's markers, with the model's stain range as display
    range; ``pixel_size`` (the input's, :func:`~napari_lmadda.data.io.read_pixel_size`) is
    kept so Fiji opens the stain calibrated like its input.
    """
    from ..data.io import write_tiff

    axes = "CYX" if arr.ndim == 3 else "ZCYX"
    md = prediction_metadata(model, source, axes, metadata)
    norm = target_norm(model)
    return write_tiff(target, arr, metadata=md, overwrite=overwrite, axes=axes,
                      channel_names=md["channels"], pixel_size=pixel_size,
                      ranges=list(zip(norm.lo, norm.hi)))


@dataclass
class FolderReport:
    """What :func:`predict_folder` did: files written, kept, skipped (with why), and time.

    ``kept`` lists complete outputs of an earlier run left as they were (``skip_existing``).
    """

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0
    kept: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        """One paragraph for the terminal."""
        s = f"wrote {len(self.written)} file(s) in {self.seconds:.1f} s"
        if self.kept:
            s += f"; kept {len(self.kept)} complete output(s) of an earlier run"
        if self.skipped:
            s += f"; skipped {len(self.skipped)}:" + "".join(
                f"\n  {p.name}: {why}" for p, why in self.skipped
            )
        return s


def iter_predict_folder(
    model,
    images: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    skip_existing: bool = False,
    stop_on_error: bool = False,
    metadata: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Iterator[tuple[int, int, Path]]:
    """Generator form of :func:`predict_folder`: yields ``(done, total, path)`` per input file.

    The last value sent back through ``StopIteration.value`` is the :class:`FolderReport`.
    A file that cannot be read, predicted or written is skipped with an :class:`ImageWarning`
    naming it (unless ``stop_on_error``); outputs are named by :func:`output_paths`. The
    project's own predictions among the inputs are ignored (:func:`is_prediction_file`);
    ``out_dir`` may not be inside ``images``; with ``skip_existing`` complete outputs of an
    earlier (interrupted) run are kept and only the missing ones computed.
    """
    from ..data.io import ImageWarning, list_images, read_pixel_size, read_planes

    t0 = time.perf_counter()
    _check_grey_model(model)
    if overwrite and skip_existing:
        raise ConfigError("overwrite and skip_existing exclude each other")
    check_out_folder(images, out_dir)
    files = drop_predictions(list_images(images), images)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LmaddaError(f"cannot create output folder '{out}': {exc.strerror or exc}") from None
    report = FolderReport()
    targets = output_paths(files, out)
    for i, (path, target) in enumerate(zip(files, targets), 1):
        if skip_existing and target.exists():
            report.kept.append(target)
            yield i, len(files), path
            continue
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                planes = read_planes(path)
                preds = np.stack([predict_image(model, p, **kwargs) for p in planes])  # ZCHW
            _warn_once_named(caught, path)
            arr = preds[0] if len(planes) == 1 else preds
            report.written.append(write_prediction(
                model, target, arr, path, overwrite=overwrite, metadata=metadata,
                pixel_size=read_pixel_size(path)))
        except LmaddaError as exc:
            if stop_on_error:
                raise
            report.skipped.append((path, str(exc)))
            warnings.warn(f"skipped '{path.name}': {exc}", ImageWarning, stacklevel=2)
        yield i, len(files), path
    report.seconds = time.perf_counter() - t0
    return report


def _warn_once_named(caught: list, path: Path) -> None:
    """Re-emit the warnings of one file once each, naming the file (e.g. a constant image)."""
    seen = set()
    for w in caught:
        text = str(w.message)
        if path.name not in text:
            text = f"'{path.name}': {text}"
        if text not in seen:
            seen.add(text)
            warnings.warn(text, w.category, stacklevel=3)


def predict_folder(model, images, out_dir, **kwargs: Any) -> FolderReport:
    """Predict every image of a folder into float32 TIFFs (named by :func:`output_paths`).

    Parameters
    ----------
    model : UNetGenerator
        The model.
    images : path-like
        Folder (or one image file).
    out_dir : path-like
        Output folder (created). Existing outputs are kept unless ``overwrite=True``.
    **kwargs
        ``overwrite``, ``stop_on_error``, ``metadata`` and the options of
        :func:`predict_image`.

    Returns
    -------
    FolderReport
        Written files and the files skipped with the reason (bad files do not stop the batch
        unless ``stop_on_error``).
    """
    gen = iter_predict_folder(model, images, out_dir, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
