"""Reading and writing microscopy images.

Shape conventions
-----------------
* :func:`read_image` returns the pixels *as stored*, in the stored dtype: for a TIFF the first
  series exactly as :mod:`tifffile` shapes it (``(Y, X)``, ``(Z, Y, X)``, ``(T, Z, C, Y, X)``
  for an ImageJ hyperstack, ``(Y, X, 3)`` or ``(3, Y, X)`` for RGB, ...); for PNG/JPEG
  ``(Y, X)`` or ``(Y, X, S)`` with S = 2 (grey + alpha), 3 (RGB) or 4 (RGBA).
  :func:`probe_image` tells the axes of that array (tifffile letters, ``S`` = colour samples).
* :func:`read_planes` turns any supported file into a list of 2D ``float32`` planes of shape
  ``(H, W)`` holding the raw intensities (no rescaling: a uint16 image keeps its 0..65535
  values). The rules are:

  - every axis that is not Y, X or S (Z, T, C, Q, ...) is flattened in C order, the last axis
    varying fastest: a ``(T, Z, C, Y, X)`` hyperstack gives ``T*Z*C`` planes ordered
    ``t0z0c0, t0z0c1, ..., t0z1c0, ...``. Fluorescence channels (ImageJ/OME ``C``) are planes,
    not colours.
  - colour samples (``S``) are treated as RGB only when the file says so (TIFF photometric
    RGB/YCbCr; a PNG/JPEG with 3 or 4 channels). With ``as_grey=True`` an RGB(A) pixel becomes
    its luminance ``0.2125 R + 0.7154 G + 0.0721 B`` (alpha dropped); when R == G == B
    everywhere the red channel is returned exactly. With ``as_grey=False`` each colour
    channel is a plane of its own.
  - samples that the file does not mark as colour (TIFF photometric minisblack with extra
    samples) are separate planes; alpha samples are dropped.
  - a TIFF holding several series (e.g. pages appended one by one) contributes the planes of
    every series, series after series.
  - non-finite pixels (NaN, +-Inf) are replaced (NaN by the median of the finite pixels of the
    plane, +Inf by their maximum, -Inf by their minimum; 0 when no pixel is finite) with an
    :class:`ImageWarning` naming the file.

Memory is decided before decoding: a file's header declares its pixels, and a file that would
need more than :func:`~napari_lmadda.memory.memory_budget` to read (a decompression bomb: a few
MB declaring 40000x40000 pixels) is refused with one line naming it, like a damaged file. A TIFF
with more than :data:`MAX_PAGES` pages is refused after counting its pages (no page is parsed).

Every problem with a file is raised as :class:`~napari_lmadda.errors.ImageReadError` naming the
file; writing problems as :class:`~napari_lmadda.errors.OutputExistsError` or
:class:`~napari_lmadda.errors.OutputWriteError`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    EmptyFolderError,
    ImageReadError,
    LmaddaError,
    OutputExistsError,
    OutputWriteError,
)

__all__ = [
    "MAX_PAGES",
    "IMAGE_SUFFIXES",
    "TIFF_SUFFIXES",
    "ImageWarning",
    "ImageInfo",
    "SeriesInfo",
    "list_images",
    "file_stem",
    "read_image",
    "probe_image",
    "count_tiff_pages",
    "check_memory",
    "read_planes",
    "read_plane",
    "sanitize_plane",
    "atomic_write",
    "write_tiff",
    "read_tiff_metadata",
    "read_pixel_size",
    "unit_name",
]

TIFF_SUFFIXES: frozenset[str] = frozenset({".tif", ".tiff"})
#: File suffixes read as images (compared lower-case).
IMAGE_SUFFIXES: frozenset[str] = TIFF_SUFFIXES | {".png", ".jpg", ".jpeg"}
_SUFFIX_TEXT = ", ".join(sorted(IMAGE_SUFFIXES))

#: TIFFs with more pages than this are refused (``LMADDA_MAX_PAGES`` changes it): counting
#: pages is cheap, but indexing and decoding 100,000 tiny pages takes minutes.
MAX_PAGES: int = int(os.environ.get("LMADDA_MAX_PAGES", "") or 10_000)
# Above this many pages tifffile's per-series scan of "shaped" files is quadratic (2000
# one-page series: 2 s; 10,000: 32 s); such files are indexed as generic page stacks.
_SHAPED_SERIES_PAGES = 512

# ITU-R BT.709 luma weights (the ones scikit-image's rgb2gray uses)
_LUMA = np.array([0.2125, 0.7154, 0.0721], dtype=np.float64)

# TIFF photometric values that mean "the samples are colours"
_PHOTOMETRIC_COLOUR = {2, 6}  # RGB, YCbCr (tifffile decodes YCbCr to RGB)
_EXTRASAMPLE_ALPHA = {1, 2}  # associated / unassociated alpha

# PIL modes -> (number of channels imageio returns, is colour)
_PIL_MODES: dict[str, tuple[int, bool]] = {
    "1": (1, False),
    "L": (1, False),
    "I": (1, False),
    "F": (1, False),
    "LA": (2, False),
    "La": (2, False),
    "RGB": (3, True),
    "YCbCr": (3, True),
    "RGBA": (4, True),
    "RGBa": (4, True),
    "RGBX": (4, True),
    "P": (3, True),
    "PA": (4, True),
}


class ImageWarning(UserWarning):
    """Something in an image file was repaired or skipped (the message names the file)."""


# --------------------------------------------------------------------------------------
# listing
# --------------------------------------------------------------------------------------


def _natural_key(text: str) -> list[Any]:
    return [
        (0, int(tok), tok) if tok.isdigit() else (1, tok.lower(), tok)
        for tok in re.split(r"(\d+)", text)
        if tok
    ]


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """List the image files of a folder, in natural order.

    Parameters
    ----------
    folder : path-like
        A folder, or a single image file (returned as a one-element list).
    recursive : bool
        Also look into sub-folders (hidden sub-folders are skipped).

    Returns
    -------
    list of Path
        Image files (suffix in :data:`IMAGE_SUFFIXES`, any case), hidden files (names starting
        with ``.``) skipped, sorted naturally (``img2`` before ``img10``) by path relative to
        ``folder``.

    Raises
    ------
    ImageReadError
        ``folder`` does not exist, or is a file that is not an image.
    EmptyFolderError
        The folder holds no image file.
    """
    root = Path(folder).expanduser()
    if root.is_file():
        if not _is_image_name(root.name):
            raise ImageReadError(
                f"'{root}' is not an image file (supported suffixes: {_SUFFIX_TEXT})"
            )
        return [root]
    if not root.exists():
        raise ImageReadError(f"'{root}' does not exist")
    if not root.is_dir():
        raise ImageReadError(f"'{root}' is neither a file nor a folder")

    found: list[Path] = []
    try:
        if recursive:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                found.extend(Path(dirpath) / f for f in filenames if _is_image_name(f))
        else:
            found = [p for p in root.iterdir() if p.is_file() and _is_image_name(p.name)]
    except OSError as exc:
        raise ImageReadError(f"cannot list folder '{root}': {exc.strerror or exc}") from exc
    if not found:
        raise EmptyFolderError(f"no images in '{root}' (looked for {_SUFFIX_TEXT})")
    return sorted(found, key=lambda p: [_natural_key(part) for part in p.relative_to(root).parts])


def file_stem(path: str | os.PathLike[str]) -> str:
    """Return a file's name without its image suffix (``a.ome.tif`` -> ``a``), case kept."""
    name = Path(path).name
    suffix = Path(name).suffix
    if suffix.lower() in IMAGE_SUFFIXES:
        name = name[: -len(suffix)]
        if name.lower().endswith(".ome"):
            name = name[:-4]
    return name


# --------------------------------------------------------------------------------------
# header probing
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesInfo:
    """Layout of one image series of a file (a PNG/JPEG is one series).

    Attributes
    ----------
    index : int
        Series number in the file.
    shape : tuple of int
        Stored shape of the series.
    axes : str
        One tifffile axis letter per dimension of ``shape`` (``S`` = samples).
    colour : bool
        The samples are RGB(A) colours (not independent channels).
    channels : tuple of int
        Indices along ``S`` kept as data (alpha removed); ``(0,)`` without an ``S`` axis.
    n_pages : int
        Number of 2D (+ samples) pages: product of the axes other than Y, X, S.
    planes_per_page : int
        Planes each page gives to :func:`read_planes`.
    page_readable : bool
        Pages can be decoded one at a time (else the whole series is decoded).
    itemsize : int
        Bytes per stored sample.
    chunk_shape : tuple of int or None
        Shape of the smallest unit the decoder works on (a TIFF tile or strip); None when
        the whole image is decoded at once (PNG, JPEG).
    """

    index: int
    shape: tuple[int, ...]
    axes: str
    colour: bool
    channels: tuple[int, ...]
    n_pages: int
    planes_per_page: int
    page_readable: bool
    itemsize: int = 4
    chunk_shape: tuple[int, ...] | None = None

    @property
    def plane_shape(self) -> tuple[int, int]:
        """``(H, W)`` of every plane of the series."""
        return (self.shape[self.axes.index("Y")], self.shape[self.axes.index("X")])

    @property
    def n_planes(self) -> int:
        """Number of planes the series gives to :func:`read_planes`."""
        return self.n_pages * self.planes_per_page

    @property
    def stored_bytes(self) -> int:
        """Bytes of the whole series as decoded (its declared shape and dtype)."""
        return math.prod(self.shape) * self.itemsize

    @property
    def page_bytes(self) -> int:
        """Bytes of one decoded page (one plane and its colour samples)."""
        return self.stored_bytes // max(1, self.n_pages)

    @property
    def chunk_bytes(self) -> int:
        """Bytes the decoder produces at once for a region read (a tile or strip)."""
        if self.chunk_shape is None:
            return self.stored_bytes
        return math.prod(self.chunk_shape) * self.itemsize

    def plane_bytes(self, as_grey: bool = True) -> int:
        """Bytes to turn one page into its float32 planes (with the luma temporaries)."""
        h, w = self.plane_shape
        extra = h * w * 3 * 8 if self.colour and as_grey else 0  # float64 RGB for the luma
        return self.planes_per_page * h * w * 4 + extra


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`probe_image` learns from a file's header, without decoding pixels.

    Attributes
    ----------
    path : Path
        The file.
    shape, axes, dtype
        Shape, axes letters and dtype of the array :func:`read_image` returns (first series).
    series : tuple of SeriesInfo
        Every series contributing planes.
    as_grey : bool
        The ``as_grey`` setting plane counts were computed for.
    """

    path: Path
    shape: tuple[int, ...]
    axes: str
    dtype: np.dtype
    series: tuple[SeriesInfo, ...]
    as_grey: bool

    @property
    def n_planes(self) -> int:
        """Total number of 2D planes :func:`read_planes` returns."""
        return sum(s.n_planes for s in self.series)

    def plane_shape(self, index: int = 0) -> tuple[int, int]:
        """Return ``(H, W)`` of plane ``index``."""
        series, _ = self.locate(index)
        return series.plane_shape

    def read_bytes(self) -> int:
        """Memory :func:`read_planes` needs: the largest decoded series + every float32 plane."""
        return max(s.stored_bytes for s in self.series) + sum(
            s.n_pages * s.plane_bytes(self.as_grey) for s in self.series)

    def plane_read_bytes(self, index: int | None = None) -> int:
        """Memory :func:`read_plane` needs for plane ``index`` (the largest plane if None)."""
        def need(s: SeriesInfo) -> int:
            decoded = s.page_bytes if s.page_readable else s.stored_bytes
            return decoded + s.plane_bytes(self.as_grey)

        if index is None:
            return max(need(s) for s in self.series)
        return need(self.locate(index)[0])

    def describe(self) -> str:
        """``"40000x40000 uint16"``: the declared shape and pixel type (first series)."""
        return f"{'x'.join(map(str, self.shape))} {self.dtype}"

    def locate(self, index: int) -> tuple[SeriesInfo, int]:
        """Return the series holding plane ``index`` and the plane's index inside it."""
        if not 0 <= index < self.n_planes:
            raise IndexError(f"plane {index} out of range: '{self.path}' has {self.n_planes}")
        for s in self.series:
            if index < s.n_planes:
                return s, index
            index -= s.n_planes
        raise AssertionError("unreachable")  # pragma: no cover


def _check_file(path: Path) -> int:
    if not path.exists():
        raise ImageReadError(f"'{path}' does not exist")
    if not path.is_file():
        raise ImageReadError(f"'{path}' is not a file")
    size = path.stat().st_size
    if size == 0:
        raise ImageReadError(f"'{path}' is empty (0 bytes)")
    return size


def _planes_per_page(colour: bool, channels: tuple[int, ...], as_grey: bool) -> int:
    if colour and as_grey:
        return 1
    return len(channels)


def _series_info(tif: Any, index: int, as_grey: bool, file_size: int, path: Path) -> SeriesInfo:
    series = tif.series[index]
    shape = tuple(int(n) for n in series.shape)
    axes = str(series.axes)
    if len(set(axes)) != len(axes) or len(axes) != len(shape):
        raise ImageReadError(f"'{path}': series {index} has inconsistent axes '{axes}'")
    if "Y" not in axes or "X" not in axes:
        raise ImageReadError(f"'{path}': series {index} with axes '{axes}' is not an image")
    if np.dtype(series.dtype).kind not in "biuf":
        raise ImageReadError(f"'{path}': pixel type {series.dtype} is not supported")
    page = series.keyframe
    samples = shape[axes.index("S")] if "S" in axes else 1
    colour = False
    channels: tuple[int, ...] = (0,)
    if "S" in axes:
        extras = tuple(int(e) for e in (getattr(page, "extrasamples", ()) or ()))
        n_alpha = 0
        for e in reversed(extras):
            if e in _EXTRASAMPLE_ALPHA:
                n_alpha += 1
            else:
                break
        colour = int(page.photometric) in _PHOTOMETRIC_COLOUR and samples - n_alpha >= 3
        channels = tuple(range(3 if colour else max(samples - n_alpha, 1)))
    n_pages = math.prod(n for n, a in zip(shape, axes) if a not in "YXS")
    if min(shape) == 0:
        raise ImageReadError(f"'{path}': series {index} has an empty shape {shape}")

    # pages can be read one by one when the series really is a stack of such pages
    page_size = shape[axes.index("Y")] * shape[axes.index("X")] * samples
    page_readable = len(series.pages) == n_pages and math.prod(page.shape) == page_size
    # a truncated file: the pixel data of some page lie beyond the end of the file
    try:
        offsets, counts = page.dataoffsets, page.databytecounts
        if offsets and max(o + c for o, c in zip(offsets, counts)) > file_size:
            raise ImageReadError(f"'{path}' is truncated (pixel data past the end of the file)")
        last = series.pages[-1] if len(series.pages) else None
        if last is not None and hasattr(last, "dataoffsets"):
            lo, lc = last.dataoffsets, last.databytecounts
            if lo and max(o + c for o, c in zip(lo, lc)) > file_size:
                raise ImageReadError(
                    f"'{path}' is truncated (pixel data past the end of the file)"
                )
        # uncompressed pixels take at least one bit per sample: a header promising more
        # pixels than the file holds is damaged (and would make the decoder allocate them)
        if int(page.compression) == 1 and counts:
            bits = int(getattr(page, "bitspersample", 1) or 1)
            if math.prod(page.shape) * bits > 8 * sum(counts):
                raise ImageReadError(
                    f"'{path}' is damaged: its header promises {'x'.join(map(str, page.shape))}"
                    f" pixels but holds {sum(counts)} bytes of pixel data"
                )
    except ImageReadError:
        raise
    except Exception:  # best effort check; decoding will tell anyway
        pass
    try:
        chunk_shape = tuple(int(n) for n in page.chunks)
    except Exception:  # best effort: region reads then count the whole page
        chunk_shape = None
    return SeriesInfo(
        index=index,
        shape=shape,
        axes=axes,
        colour=colour,
        channels=channels,
        n_pages=n_pages,
        planes_per_page=_planes_per_page(colour, channels, as_grey),
        page_readable=page_readable,
        itemsize=int(np.dtype(series.dtype).itemsize),
        chunk_shape=chunk_shape,
    )


class _TiffLog(logging.Handler):
    """Collects what tifffile logs while a file is parsed (it logs, not raises, on damage)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> _TiffLog:
        logging.getLogger("tifffile").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("tifffile").removeHandler(self)

    def damage(self) -> str | None:
        """Return the first message telling the file is damaged, if any."""
        for msg in self.messages:
            low = msg.lower()
            if any(w in low for w in ("invalid page offset", "corrupt", "truncat", "invalid")):
                return msg.split("> ", 1)[-1]
        return None


def count_tiff_pages(path: str | os.PathLike[str], limit: int | None = None) -> int:
    """Count the pages of a TIFF by walking its IFD chain (no page is parsed or decoded).

    Parameters
    ----------
    path : path-like
        A TIFF or BigTIFF file.
    limit : int, optional
        Stop counting after ``limit + 1`` pages (enough to know there are too many).

    Returns
    -------
    int
        Pages found (0 when the file is not a TIFF: the TIFF reader then says why). A loop
        in the chain or an offset past the end of the file ends the count.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(16)
            order = {b"II": "<", b"MM": ">"}.get(head[:2])
            if order is None or len(head) < 8:
                return 0
            version = struct.unpack(order + "H", head[2:4])[0]
            if version == 42:
                offset = struct.unpack(order + "I", head[4:8])[0]
                count_fmt, entry, next_fmt = "H", 12, "I"
            elif version == 43 and len(head) >= 16:
                offset = struct.unpack(order + "Q", head[8:16])[0]
                count_fmt, entry, next_fmt = "Q", 20, "Q"
            else:
                return 0
            count_size, next_size = struct.calcsize(count_fmt), struct.calcsize(next_fmt)
            seen: set[int] = set()
            n = 0
            while offset and offset not in seen and offset + count_size <= size:
                if limit is not None and n > limit:
                    break
                seen.add(offset)
                fh.seek(offset)
                (ntags,) = struct.unpack(order + count_fmt, fh.read(count_size))
                fh.seek(offset + count_size + ntags * entry)
                raw = fh.read(next_size)
                n += 1
                if len(raw) < next_size:
                    break
                (offset,) = struct.unpack(order + next_fmt, raw)
            return n
    except (OSError, struct.error):
        return 0


def _open_tiff(path: Path) -> Any:
    import tifffile

    pages = count_tiff_pages(path, MAX_PAGES)
    if pages > MAX_PAGES:
        raise ImageReadError(
            f"'{path}' holds more than {MAX_PAGES} pages; refused before reading them "
            "(set LMADDA_MAX_PAGES to allow more)"
        )
    flags = {"is_shaped": False} if pages > _SHAPED_SERIES_PAGES else {}
    try:
        tif = tifffile.TiffFile(path, **flags)
    except Exception as exc:  # tifffile raises many kinds (TiffFileError, ValueError, ...)
        raise ImageReadError(f"'{path}' is not a readable TIFF file ({_why(exc)})") from exc
    try:
        # Index the whole page chain now: tifffile stops at loops and bad offsets here, while
        # building series from a chain not yet indexed can walk a damaged file for minutes
        # (seen with a 1 kB fuzzed file).
        len(tif.pages)
    except Exception as exc:
        tif.close()
        raise ImageReadError(f"'{path}' is not a readable TIFF file ({_why(exc)})") from exc
    return tif


def _why(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."


def probe_image(path: str | os.PathLike[str], *, as_grey: bool = True) -> ImageInfo:
    """Read an image file's header (shape, axes, dtype, plane count) without its pixels.

    Parameters
    ----------
    path : path-like
        TIFF, PNG or JPEG file.
    as_grey : bool
        Plane counts as :func:`read_planes` with this setting would give.

    Returns
    -------
    ImageInfo
        The layout of the file.

    Raises
    ------
    ImageReadError
        The file is missing, empty, truncated, of an unsupported kind or not an image.
    """
    path = Path(path)
    size = _check_file(path)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        with _TiffLog() as log:
            tif = _open_tiff(path)
        with tif, log:
            try:
                n_series = len(tif.series)
                damage = log.damage()
                if damage:
                    raise ImageReadError(f"'{path}' is damaged or truncated ({damage})")
                if n_series == 0:
                    raise ImageReadError(f"'{path}' holds no image")
                infos = tuple(_series_info(tif, i, as_grey, size, path) for i in range(n_series))
                first = tif.series[0]
                return ImageInfo(
                    path=path,
                    shape=tuple(int(n) for n in first.shape),
                    axes=str(first.axes),
                    dtype=np.dtype(first.dtype),
                    series=infos,
                    as_grey=as_grey,
                )
            except ImageReadError:
                raise
            except Exception as exc:
                msg = f"'{path}' is not a readable TIFF file ({_why(exc)})"
                raise ImageReadError(msg) from exc
    if suffix in IMAGE_SUFFIXES:
        return _probe_pil(path, as_grey)
    raise ImageReadError(f"'{path}' has an unsupported suffix (supported: {_SUFFIX_TEXT})")


def _probe_pil(path: Path, as_grey: bool) -> ImageInfo:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's (corrupt EXIF, ...), as when decoding
            with open(path, "rb") as fh, Image.open(fh) as img:
                mode, (width, height) = img.mode, img.size
                img.verify()  # PNG: checks every chunk's CRC (catches truncation), no decoding
    except Exception as exc:
        raise ImageReadError(f"'{path}' is not a readable image ({_why(exc)})") from exc
    if mode.startswith("I;16"):
        n, colour, dtype = 1, False, np.dtype(np.uint16)
    elif mode in _PIL_MODES:
        n, colour = _PIL_MODES[mode]
        dtype = np.dtype({"1": bool, "I": np.int32, "F": np.float32}.get(mode, np.uint8))
    else:  # CMYK, LAB, ...: let the decoder tell the layout
        arr = _decode_pil(path)
        n = 1 if arr.ndim == 2 else arr.shape[2]
        colour, dtype = n >= 3, arr.dtype
    if width == 0 or height == 0:
        raise ImageReadError(f"'{path}' has an empty shape ({height}, {width})")
    shape = (height, width) if n == 1 else (height, width, n)
    axes = "YX" if n == 1 else "YXS"
    channels = (0, 1, 2) if colour else (0,)
    series = SeriesInfo(
        index=0,
        shape=shape,
        axes=axes,
        colour=colour,
        channels=channels,
        n_pages=1,
        planes_per_page=_planes_per_page(colour, channels, as_grey),
        page_readable=False,
        itemsize=int(np.dtype(dtype).itemsize),
    )
    return ImageInfo(
        path=path, shape=shape, axes=axes, dtype=dtype, series=(series,), as_grey=as_grey
    )


# --------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------


def _decode_pil(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    try:
        # our own file object: imageio leaves the files it opens itself unclosed when a
        # damaged file makes it fail (a ResourceWarning per file in a long batch)
        with open(path, "rb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = np.asarray(iio.imread(fh, extension=path.suffix.lower()))
    except Exception as exc:
        why = "not a recognised image format" if "backend" in str(exc) else _why(exc)
        raise ImageReadError(f"'{path}' is not a readable image ({why})") from exc
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise ImageReadError(f"'{path}' decodes to an unsupported shape {arr.shape}")
    return arr


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file's pixels as stored (no conversion).

    Parameters
    ----------
    path : path-like
        A TIFF (plain, multi-page, ImageJ hyperstack, OME-TIFF), PNG or JPEG file.

    Returns
    -------
    numpy.ndarray
        The stored dtype. A TIFF gives its first series shaped as :mod:`tifffile` shapes it
        (see :func:`probe_image` for its axes); a PNG/JPEG ``(Y, X)`` or ``(Y, X, S)``.

    Raises
    ------
    ImageReadError
        Missing, empty, truncated or corrupt file, or a file that is not an image.
    """
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        info = probe_image(path)  # checks truncation and support before decoding
        check_memory(info, info.series[0].stored_bytes)
        tif = _open_tiff(path)
        with tif:
            try:
                return tif.series[0].asarray().reshape(info.shape)
            except Exception as exc:
                raise ImageReadError(f"'{path}': cannot decode pixels ({_why(exc)})") from exc
    if suffix in IMAGE_SUFFIXES:
        info = probe_image(path)
        check_memory(info, info.series[0].stored_bytes)
        return _decode_pil(path)
    raise ImageReadError(f"'{path}' has an unsupported suffix (supported: {_SUFFIX_TEXT})")


def check_memory(info: ImageInfo, need: int, what: str = "read") -> None:
    """Refuse work on a file that would need more than the memory budget (from its header).

    Parameters
    ----------
    info : ImageInfo
        The file's header (:func:`probe_image`).
    need : int
        Bytes the work would allocate (e.g. :meth:`ImageInfo.read_bytes`).
    what : str
        The work, for the message (``"read"``, ``"predict"``, ...).

    Raises
    ------
    ImageReadError
        ``need`` exceeds :func:`~napari_lmadda.memory.memory_budget`; one line naming the
        file, its declared size and both amounts.
    """
    from ..memory import fmt_bytes, memory_budget

    budget = memory_budget()
    if need > budget:
        raise ImageReadError(
            f"'{info.path}' is too large to {what} in the memory available: its header "
            f"declares {info.describe()} pixels, which need {fmt_bytes(need)}, more than the "
            f"{fmt_bytes(budget)} one image may use here (LMADDA_MEMORY_BUDGET)"
        )


def _to_pages(arr: np.ndarray, axes: str) -> np.ndarray:
    """Reorder a series array to ``(pages, Y, X, S)`` (S = 1 without samples)."""
    if "S" not in axes:
        arr = arr[..., np.newaxis]
        axes = axes + "S"
    lead = [i for i, a in enumerate(axes) if a not in "YXS"]
    order = [*lead, axes.index("Y"), axes.index("X"), axes.index("S")]
    arr = np.transpose(arr, order)
    return arr.reshape((-1, *arr.shape[-3:]))


def _page_to_planes(page: np.ndarray, series: SeriesInfo, as_grey: bool) -> list[np.ndarray]:
    """Turn one ``(Y, X, S)`` page into its float32 planes.

    float64 values beyond the float32 range become +-Inf here, and are then repaired by
    :func:`sanitize_plane` (with an :class:`ImageWarning`) like any non-finite pixel.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if series.colour and as_grey:
            rgb = page[..., :3]
            r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
            if np.array_equal(r, g) and np.array_equal(r, b):
                return [r.astype(np.float32)]
            grey = rgb.astype(np.float64) @ _LUMA
            return [grey.astype(np.float32)]
        return [page[..., c].astype(np.float32) for c in series.channels]


def _read_series_page(tif: Any, series: SeriesInfo, page_index: int, path: Path) -> np.ndarray:
    """Decode one ``(Y, X, S)`` page of a TIFF series."""
    try:
        if series.page_readable:
            page = tif.asarray(key=page_index, series=series.index)
            trailing = "".join(a for a in series.axes if a in "YXS")
            shape = tuple(series.shape[series.axes.index(a)] for a in trailing)
            page = np.asarray(page).reshape(shape)
            if "S" not in trailing:
                return page[..., np.newaxis]
            order = [trailing.index("Y"), trailing.index("X"), trailing.index("S")]
            return np.transpose(page, order)
        arr = tif.series[series.index].asarray().reshape(series.shape)
        return _to_pages(arr, series.axes)[page_index]
    except Exception as exc:
        raise ImageReadError(f"'{path}': cannot decode pixels ({_why(exc)})") from exc


#: Share of a plane's pixels at the top of its range from which it is reported as saturated.
SATURATED_FRACTION = 0.01


def _warn_saturated(page: np.ndarray, path: Path, plane_index: int | None) -> None:
    """Warn when many pixels of an integer page sit at the top of its range (clipped light).

    The top is the container's (255, 65535) or that of 10-, 12- or 14-bit data stored in
    16 bits (a 12-bit camera saturates at 4095). A mask (two values) is not saturated.
    """
    if page.dtype.kind not in "ui" or page.size < 1024:  # tiny planes: no judgement
        return
    top = int(page.max())
    cap = int(np.iinfo(page.dtype).max)
    bits = {2**b - 1: b for b in (8, 10, 12, 14, 16, 32) if 2**b - 1 <= cap}
    if top not in bits:
        return
    at_top = int(np.count_nonzero(page == top))
    if at_top < SATURATED_FRACTION * page.size:
        return
    if not np.any((page != top) & (page != page.min())):
        return  # two values: a mask or a binary image
    where = f"'{path}'" if plane_index is None else f"'{path}' (plane {plane_index})"
    warnings.warn(
        f"{where}: {at_top / page.size:.0%} of the pixels are saturated at {top} (the top of a "
        f"{bits[top]}-bit range): stains predicted there are unreliable",
        ImageWarning, stacklevel=3,
    )


def sanitize_plane(
    plane: np.ndarray,
    name: str | os.PathLike[str] = "image",
    plane_index: int | None = None,
) -> np.ndarray:
    """Replace non-finite pixels of a float plane, warning with the plane's name.

    NaN becomes the median of the finite pixels, +Inf their maximum and -Inf their minimum
    (all 0 when no pixel is finite).

    Parameters
    ----------
    plane : numpy.ndarray
        A 2D float array (integer arrays are returned unchanged).
    name : str or path-like
        Shown in the warning (usually the file name).
    plane_index : int, optional
        Plane number shown in the warning (for multi-plane files).

    Returns
    -------
    numpy.ndarray
        ``plane`` itself when every pixel is finite, else a repaired copy.
    """
    if plane.dtype.kind != "f":
        return plane
    finite = np.isfinite(plane)
    if finite.all():
        return plane
    good = plane[finite]
    n_bad = int(plane.size - good.size)
    if good.size:
        med, hi, lo = float(np.median(good)), float(good.max()), float(good.min())
    else:
        med = hi = lo = 0.0
    out = plane.copy()
    out[np.isnan(plane)] = med
    out[np.isposinf(plane)] = hi
    out[np.isneginf(plane)] = lo
    where = f"'{name}'" if plane_index is None else f"'{name}' (plane {plane_index})"
    warnings.warn(
        f"{where}: {n_bad} non-finite pixel(s) (NaN/Inf) replaced "
        f"(NaN -> median {med:g}, Inf -> max/min of the finite pixels)",
        ImageWarning,
        stacklevel=3,
    )
    return out


def _check_min_size(plane_shape: tuple[int, int], min_size: int | None, path: Path) -> None:
    if min_size is not None and min(plane_shape) < min_size:
        h, w = plane_shape
        raise ImageReadError(
            f"'{path}' is {h}x{w} pixels, smaller than the minimum size {min_size}"
        )


def read_plane(
    path: str | os.PathLike[str],
    index: int,
    *,
    as_grey: bool = True,
    info: ImageInfo | None = None,
) -> np.ndarray:
    """Read one 2D plane of a file, decoding only its page where the format allows it.

    Parameters
    ----------
    path : path-like
        Image file.
    index : int
        Plane number, ``0 <= index < probe_image(path).n_planes`` (same order as
        :func:`read_planes`).
    as_grey : bool
        See :func:`read_planes`.
    info : ImageInfo, optional
        A header already read by :func:`probe_image` (with the same ``as_grey``).

    Returns
    -------
    numpy.ndarray
        ``float32`` array ``(H, W)`` of raw intensities, non-finite pixels replaced.
    """
    path = Path(path)
    if info is None or info.as_grey != as_grey:
        info = probe_image(path, as_grey=as_grey)
    series, local = info.locate(index)
    check_memory(info, info.plane_read_bytes(index))
    page_index, within = divmod(local, series.planes_per_page)
    if path.suffix.lower() in TIFF_SUFFIXES:
        tif = _open_tiff(path)
        with tif:
            page = _read_series_page(tif, series, page_index, path)
    else:
        page = _to_pages(_decode_pil(path), series.axes)[0]
    samples = list(series.channels) if series.colour else [series.channels[within]]
    _warn_saturated(page[..., samples], path, index if info.n_planes > 1 else None)
    plane = _page_to_planes(page, series, as_grey)[within]
    return sanitize_plane(plane, path, index if info.n_planes > 1 else None)


def read_planes(
    path: str | os.PathLike[str],
    *,
    as_grey: bool = True,
    min_size: int | None = None,
) -> list[np.ndarray]:
    """Read every 2D plane of an image file as ``float32`` (rules in the module docstring).

    Parameters
    ----------
    path : path-like
        TIFF, PNG or JPEG file.
    as_grey : bool
        Convert RGB(A) pixels to their luminance (default); if False each colour channel is
        a plane.
    min_size : int, optional
        Refuse planes whose height or width is smaller than this.

    Returns
    -------
    list of numpy.ndarray
        ``float32`` arrays ``(H, W)`` of raw intensities (not rescaled).

    Raises
    ------
    ImageReadError
        The file cannot be read, or a plane is smaller than ``min_size``.
    """
    path = Path(path)
    info = probe_image(path, as_grey=as_grey)
    check_memory(info, info.read_bytes())
    planes: list[np.ndarray] = []
    if path.suffix.lower() in TIFF_SUFFIXES:
        tif = _open_tiff(path)
        with tif:
            for series in info.series:
                _check_min_size(series.plane_shape, min_size, path)
                try:
                    arr = tif.series[series.index].asarray().reshape(series.shape)
                except Exception as exc:
                    raise ImageReadError(f"'{path}': cannot decode pixels ({_why(exc)})") from exc
                for page in _to_pages(arr, series.axes):
                    _warn_saturated(page[..., list(series.channels)], path,  # alpha left out
                                    len(planes) if info.n_planes > 1 else None)
                    planes.extend(_page_to_planes(page, series, as_grey))
    else:
        series = info.series[0]
        _check_min_size(series.plane_shape, min_size, path)
        page = _to_pages(_decode_pil(path), series.axes)[0]
        _warn_saturated(page[..., list(series.channels)], path, None)
        planes = _page_to_planes(page, series, as_grey)
    many = len(planes) > 1
    return [sanitize_plane(p, path, i if many else None) for i, p in enumerate(planes)]


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------


def atomic_write(
    path: str | os.PathLike[str],
    writer: Callable[[Path], Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Write a file so that readers see either the old file or the complete new one.

    ``writer(tmp)`` writes to a hidden temporary file in the same folder; the file is then
    flushed to disk (fsync) and renamed over ``path`` with :func:`os.replace`. If ``writer``
    fails the temporary file is removed and ``path`` is untouched.

    Parameters
    ----------
    path : path-like
        Destination file.
    writer : callable
        Called with the temporary file's path; must create and write that file (e.g.
        ``lambda p: torch.save(obj, p)``).
    overwrite : bool
        Replace an existing ``path``; refused by default.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    OutputWriteError
        The folder is missing or not writable, or writing failed with an OS error.
    """
    path = Path(path)
    folder = path.parent
    if path.exists() and not overwrite:
        raise OutputExistsError(f"'{path}' already exists (pass overwrite=True to replace it)")
    if path.is_dir():
        raise OutputWriteError(f"'{path}' is a folder, not a file")
    if not folder.is_dir():
        raise OutputWriteError(f"cannot write '{path.name}': folder '{folder}' does not exist")
    tmp = folder / f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}"
    try:
        writer(tmp)
        if not tmp.exists():
            raise OutputWriteError(f"writing '{path}' produced no file")
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(exc, LmaddaError):
            raise
        # an OS error may come wrapped: torch's zip writer, after the disk filled up part-way
        # through a save, raises "unexpected pos" chained to the real ENOSPC
        os_error = _os_error_in_chain(exc)
        if isinstance(os_error, PermissionError):
            raise OutputWriteError(
                f"cannot write '{path.name}': folder '{folder}' is not writable"
            ) from os_error
        if os_error is not None:
            raise OutputWriteError(
                f"cannot write '{path}': {os_error.strerror or os_error}") from os_error
        raise
    _fsync_folder(folder)
    return path


def _os_error_in_chain(exc: BaseException) -> OSError | None:
    """The first :class:`OSError` among ``exc`` and the exceptions it was raised from."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX only; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_tiff(
    path: str | os.PathLike[str],
    array: np.ndarray,
    *,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
    dtype: np.dtype | type | str | None = np.float32,
    compression: str | None = None,
    axes: str | None = None,
    channel_names: list[str] | None = None,
    pixel_size: dict[str, Any] | None = None,
    ranges: list[tuple[float, float]] | None = None,
) -> Path:
    """Write an array to a TIFF file atomically, with a JSON metadata dict.

    With ``axes`` the file is an ImageJ hyperstack (what Fiji opens as channels, slices and
    frames, calibrated): ``axes`` is a subsequence of ``TZCYX`` in that order, the channels
    are named (ImageJ slice labels), the pixel size and unit go to the resolution tags and
    the ImageJ description, and the JSON metadata to ImageJ's ``Info`` property (Fiji:
    Image > Show Info). ImageJ stores uint8, uint16 and float32; other types become float32.

    Parameters
    ----------
    path : path-like
        Destination; its suffix must be ``.tif`` or ``.tiff``.
    array : numpy.ndarray
        ``(Y, X)`` or a stack whose last two axes are Y, X. Stored as grey planes (never
        interpreted as RGB), one TIFF page per 2D plane.
    metadata : dict, optional
        JSON-serialisable values (numpy scalars/arrays and paths are converted), stored in the
        ImageDescription (ImageJ: its ``Info``) and returned by :func:`read_tiff_metadata`.
    overwrite : bool
        Replace an existing file.
    dtype : dtype, optional
        Stored pixel type (default ``float32``); None keeps ``array``'s dtype.
    compression : str, optional
        A tifffile compression name (e.g. ``"zlib"``); none by default.
    axes : str, optional
        Write an ImageJ hyperstack with these axes (e.g. ``"CYX"``, ``"ZCYX"``).
    channel_names : list of str, optional
        One name per ``C`` (hyperstack only).
    pixel_size : dict, optional
        ``{"y", "x", "z" (optional), "unit"}`` as :func:`read_pixel_size` returns.
    ranges : list of (float, float), optional
        Display range of each channel (hyperstack only).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    OutputExistsError
        The file exists and ``overwrite`` is False.
    OutputWriteError
        The folder is missing or not writable.
    LmaddaError
        Bad suffix, array or metadata.
    """
    import tifffile

    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        raise LmaddaError(f"cannot write '{path}' as TIFF: the name must end in .tif or .tiff")
    arr = np.asarray(array)
    if arr.ndim < 2 or arr.size == 0:
        raise LmaddaError(f"cannot write '{path}': array of shape {arr.shape} is not an image")
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    try:
        meta = json.loads(json.dumps(metadata or {}, default=_json_default))
    except (TypeError, ValueError) as exc:
        raise LmaddaError(
            f"cannot write '{path}': metadata is not JSON-serialisable ({exc})"
        ) from exc

    if axes is not None:
        kwargs = _imagej_kwargs(path, arr, axes, meta, channel_names, pixel_size, ranges)
        arr = kwargs.pop("data")

        def _write(tmp: Path) -> None:
            tifffile.imwrite(tmp, arr, imagej=True, compression=compression, **kwargs)

        return atomic_write(path, _write, overwrite=overwrite)

    # explicit axes: otherwise tifffile drops trailing length-1 axes and a stack of
    # (H, 1) planes reads back as one plane
    qaxes = "Q" * (arr.ndim - 2) + "YX"

    def _write(tmp: Path) -> None:
        tifffile.imwrite(
            tmp,
            arr,
            photometric="minisblack",
            metadata={"axes": qaxes, "lmadda": meta},
            compression=compression,
        )

    return atomic_write(path, _write, overwrite=overwrite)


def _imagej_kwargs(path: Path, arr: np.ndarray, axes: str, meta: dict[str, Any],
                   channel_names: list[str] | None, pixel_size: dict[str, Any] | None,
                   ranges: list[tuple[float, float]] | None) -> dict[str, Any]:
    """The ``tifffile.imwrite`` arguments of an ImageJ hyperstack (checked, one-line errors)."""
    order = "TZCYX"
    if (len(axes) != arr.ndim or not axes.endswith("YX") or len(set(axes)) != len(axes)
            or any(a not in order for a in axes)
            or [order.index(a) for a in axes] != sorted(order.index(a) for a in axes)):
        raise LmaddaError(f"cannot write '{path}' as an ImageJ hyperstack: axes {axes!r} do "
                          f"not fit an array of shape {arr.shape} (use a subsequence of TZCYX)")
    if arr.dtype not in (np.uint8, np.uint16, np.float32):
        with np.errstate(over="ignore", invalid="ignore"):
            arr = arr.astype(np.float32)
    n_c = arr.shape[axes.index("C")] if "C" in axes else 1
    ij: dict[str, Any] = {"axes": axes}
    if channel_names is not None:
        names = [str(n) for n in channel_names]
        if len(names) != n_c:
            raise LmaddaError(f"cannot write '{path}': {len(names)} channel name(s) for {n_c} "
                              "channel(s)")
        # ImageJ names a channel by the label of each of its planes (C varies fastest)
        n_planes = int(np.prod(arr.shape[:-2])) if arr.ndim > 2 else 1
        ij["Labels"] = [names[i % n_c] for i in range(n_planes)]
        meta = {"channels": names, **meta}
    if ranges is not None and len(ranges) == n_c:
        ij["Ranges"] = tuple(float(v) for r in ranges for v in r)
    if n_c > 1:
        ij["mode"] = "composite"
    kwargs: dict[str, Any] = {}
    if pixel_size:
        unit = unit_name(pixel_size.get("unit"))
        y, x = float(pixel_size.get("y") or 0), float(pixel_size.get("x") or 0)
        if unit and y > 0 and x > 0 and math.isfinite(x) and math.isfinite(y):
            kwargs["resolution"] = (1.0 / x, 1.0 / y)
            ij["unit"] = unit
            z = pixel_size.get("z")
            if z and "Z" in axes and math.isfinite(float(z)) and float(z) > 0:
                ij["spacing"] = float(z)
            meta = {**meta, "pixel_size": {"y": y, "x": x, "z": z, "unit": unit}}
    ij["Info"] = json.dumps({"lmadda": meta})
    return {"data": arr, "metadata": ij, **kwargs}


#: Length units ImageJ and OME name differently, to one short name (``um`` for micrometres).
_UNITS = {"um": "um", "µm": "um", "μm": "um", "micron": "um", "microns": "um",
          "micrometer": "um", "micrometre": "um", "\\u00b5m": "um", "nm": "nm",
          "nanometer": "nm", "nanometre": "nm", "mm": "mm", "millimeter": "mm",
          "millimetre": "mm", "cm": "cm", "centimeter": "cm", "centimetre": "cm", "m": "m",
          "meter": "m", "metre": "m", "pm": "pm", "picometer": "pm"}


def unit_name(unit: Any) -> str | None:
    """``"micrometer"``, ``"µm"``, ``"micron"``, a pint unit, ... -> ``"um"``; pixels -> None.

    Parameters
    ----------
    unit : str or object
        A length unit as napari, ImageJ or OME spell it.

    Returns
    -------
    str or None
        The short name (``um``, ``nm``, ``mm``, ...), None for no physical unit.
    """
    if unit is None:
        return None
    text = str(unit).strip()
    key = text.lower()
    if key in ("", "pixel", "pixels", "px", "none", "dimensionless"):
        return None
    return _UNITS.get(key, _UNITS.get(text, text))


def read_pixel_size(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The pixel size an image declares, as the writers here take it.

    Read by :func:`~napari_lmadda.data.zarr_io.read_calibration` (OME-Zarr ``scale``; TIFF:
    OME ``PhysicalSize*``, ImageJ's unit with the resolution tags and ``spacing``, or a
    resolution in centimetres; inch resolutions are screen defaults, ignored).

    Parameters
    ----------
    path : path-like
        An image file or OME-Zarr image.

    Returns
    -------
    dict or None
        ``{"y": float, "x": float, "z": float or None, "unit": "um"|...}``, or None when the
        image carries no physical calibration (the calibration is a courtesy, never a
        reason to fail).
    """
    from .zarr_io import read_calibration

    cal = read_calibration(path)
    unit = unit_name(cal.unit) if cal is not None else None
    if unit is None:
        return None
    return {"y": float(cal.y), "x": float(cal.x),
            "z": None if cal.z is None else float(cal.z), "unit": unit}


def read_tiff_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the metadata dict :func:`write_tiff` stored in a TIFF file.

    Parameters
    ----------
    path : path-like
        A TIFF file.

    Returns
    -------
    dict
        The stored metadata; for a TIFF written by other software, its ImageDescription
        parsed as JSON when it is JSON, else an empty dict.
    """
    path = Path(path)
    _check_file(path)
    tif = _open_tiff(path)
    with tif:
        try:
            if tif.is_imagej:  # a hyperstack written by write_tiff: JSON in ImageJ's Info
                info = (tif.imagej_metadata or {}).get("Info")
                try:
                    parsed = json.loads(info) if isinstance(info, str) else None
                except ValueError:
                    parsed = None
                if isinstance(parsed, dict) and isinstance(parsed.get("lmadda"), dict):
                    return dict(parsed["lmadda"])
            shaped = tif.shaped_metadata
            if shaped:
                first = dict(shaped[0])
                if "lmadda" in first:
                    return dict(first["lmadda"])
                first.pop("shape", None)
                return first
            description = tif.pages[0].description if len(tif.pages) else ""
        except Exception as exc:
            raise ImageReadError(f"'{path}': cannot read metadata ({_why(exc)})") from exc
    try:
        parsed = json.loads(description)
    except (TypeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}
