"""OME-Zarr input and output for images too large for TIFF (Qt-free, lazy).

Written images follow OME-NGFF 0.5 (Zarr v3, the format ``ome-zarr`` writes by default):
one multiscale image with a single full-resolution level ``0``, axes ``c, y, x`` (or
``c, z, y, x`` for a stack of planes), the channel names as OMERO channel labels, and this
project's metadata (model provenance, source image, ...) under the ``lmadda`` attribute.
An image is written into a hidden temporary folder beside its destination and renamed into
place when complete, so a reader never sees a half-written image.

Reading accepts OME-NGFF 0.4 (Zarr v2) and 0.5 images: the first multiscale's
full-resolution level, as a lazy dask array.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    ConfigError,
    ImageReadError,
    LmaddaError,
    OutputExistsError,
    OutputWriteError,
)

__all__ = [
    "ZARR_SUFFIXES",
    "is_zarr_image",
    "zarr_stem",
    "open_ome_zarr",
    "open_zarr_array",
    "zarr_planes",
    "OmeZarrWriter",
    "require_zarr",
    "zarr_available",
]

#: Folder names read as (OME-)Zarr images.
ZARR_SUFFIXES: tuple[str, ...] = (".ome.zarr", ".zarr")


def zarr_available() -> bool:
    """True when zarr-python 3 is installed (it needs Python 3.11 or newer)."""
    try:
        import zarr
    except ImportError:
        return False
    return int(zarr.__version__.split(".")[0]) >= 3


def require_zarr(what: str = "OME-Zarr") -> Any:
    """Import zarr (version 3 or newer), or raise a one-line :class:`ConfigError`."""
    if not zarr_available():
        raise ConfigError(f"{what} needs the 'zarr' package, version 3 or newer (Python >= 3.11)")
    import zarr

    return zarr


def is_zarr_image(path: str | os.PathLike[str]) -> bool:
    """True for a folder named ``*.zarr`` (``*.ome.zarr``) holding Zarr metadata."""
    p = Path(path)
    if not (p.is_dir() and p.name.lower().endswith(".zarr")):
        return False
    return any((p / f).is_file() for f in ("zarr.json", ".zattrs", ".zgroup", ".zarray"))


def zarr_stem(path: str | os.PathLike[str]) -> str:
    """The name of a Zarr image without ``.ome.zarr`` / ``.zarr``."""
    name = Path(path).name
    for sfx in ZARR_SUFFIXES:
        if name.lower().endswith(sfx):
            return name[: -len(sfx)]
    return name


def _ome_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The OME metadata of a group: under ``ome`` in NGFF 0.5, at the top level in 0.4."""
    ome = attrs.get("ome")
    return dict(ome) if isinstance(ome, dict) else dict(attrs)


def open_ome_zarr(path: str | os.PathLike[str]) -> tuple[Any, list[str], dict[str, Any]]:
    """Open the full-resolution level of an OME-Zarr image as a dask array.

    As :func:`open_zarr_array`, with the array wrapped by :func:`dask.array.from_zarr`.
    """
    import dask.array as da

    arr, axes, attrs = open_zarr_array(path)
    return da.from_zarr(arr), axes, attrs


def open_zarr_array(path: str | os.PathLike[str]) -> tuple[Any, list[str], dict[str, Any]]:
    """Open the full-resolution level of an OME-Zarr image (or a plain Zarr array).

    Parameters
    ----------
    path : path-like
        A ``*.zarr`` folder: an OME-NGFF image (0.4 or 0.5) or a bare 2-D+ Zarr array.

    Returns
    -------
    array : zarr.Array
        The pixels (read lazily, chunk by chunk).
    axes : list of str
        Lower-case axis names (``["c", "y", "x"]``, ...); ``y`` and ``x`` are the last two.
    attrs : dict
        The group's attributes (empty for a bare array).

    Raises
    ------
    ImageReadError
        Not a Zarr image, no multiscale metadata that names an existing array, or fewer than
        two axes.
    """
    zarr = require_zarr(f"reading '{Path(path).name}'")
    p = Path(path)
    if not is_zarr_image(p):
        raise ImageReadError(f"'{p}' is not a Zarr image (a *.zarr folder with Zarr metadata)")
    try:
        node = zarr.open(str(p), mode="r")
    except Exception as exc:
        raise ImageReadError(f"'{p}': cannot open as Zarr ({exc})") from exc
    if isinstance(node, zarr.Array):
        arr, attrs = node, {}
        axes = [f"dim_{i}" for i in range(arr.ndim - 2)] + ["y", "x"]
    else:
        attrs = dict(node.attrs)
        multiscales = _ome_attrs(attrs).get("multiscales")
        try:
            ms = multiscales[0]
            level = ms["datasets"][0]["path"]
            arr = node[level]
        except Exception:
            raise ImageReadError(
                f"'{p}' has no OME-NGFF multiscales metadata naming an array"
            ) from None
        names = [a["name"] if isinstance(a, dict) else str(a) for a in ms.get("axes", [])]
        axes = [n.lower() for n in names] if len(names) == arr.ndim else []
        if not axes:
            axes = [f"dim_{i}" for i in range(arr.ndim - 2)] + ["y", "x"]
    if arr.ndim < 2 or 0 in arr.shape:
        raise ImageReadError(f"'{p}' holds an array of shape {arr.shape}, not an image")
    if arr.dtype.kind not in "biuf":
        raise ImageReadError(f"'{p}' holds pixels of type {arr.dtype}, not real numbers")
    return arr, axes, attrs


def zarr_planes(path: str | os.PathLike[str]) -> list[Any]:
    """The 2-D ``(y, x)`` planes of a Zarr image as lazy dask arrays, in C order of the rest.

    Every index of the leading axes (t, c, z, ...) gives one plane, as
    :func:`~napari_lmadda.data.io.read_planes` does for a TIFF stack.
    """
    arr, _, _ = open_ome_zarr(path)
    lead = arr.shape[:-2]
    return [arr[idx] for idx in np.ndindex(*lead)] if lead else [arr]


def _jsonable(obj: Any) -> Any:
    """Round-trip through JSON (numpy scalars, paths) so Zarr attributes accept it."""

    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"{type(o).__name__} is not JSON serialisable")

    return json.loads(json.dumps(obj, default=default))


class OmeZarrWriter:
    """Write one OME-Zarr image chunk by chunk into a temporary folder, then rename it.

    Parameters
    ----------
    path : path-like
        Destination folder (``*.ome.zarr``); its parent must exist.
    shape : tuple of int
        ``(C, Y, X)`` or ``(C, Z, Y, X)``.
    chunks : tuple of int
        Chunk shape (same length as ``shape``).
    channel_names : sequence of str
        One label per channel.
    overwrite : bool
        Replace an existing ``path`` (only at :meth:`commit`).
    dtype : str
        Stored pixel type.

    Examples
    --------
    >>> w = OmeZarrWriter(out, (2, 512, 512), (1, 256, 256), ["DAPI", "CD29"])  # doctest: +SKIP
    >>> dask.array.store(pred, w.array, lock=False)  # doctest: +SKIP
    >>> w.commit({"model": provenance})  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        shape: Sequence[int],
        chunks: Sequence[int],
        channel_names: Sequence[str],
        *,
        overwrite: bool = False,
        dtype: str = "float32",
    ) -> None:
        zarr = require_zarr("writing OME-Zarr")
        self.path = Path(path)
        self.overwrite = overwrite
        if len(shape) not in (3, 4) or len(chunks) != len(shape):
            raise LmaddaError(f"cannot write '{self.path}': shape {tuple(shape)} is not CYX/CZYX")
        if self.path.exists() and not overwrite:
            raise OutputExistsError(f"'{self.path}' already exists (pass overwrite to replace it)")
        if not self.path.parent.is_dir():
            raise OutputWriteError(
                f"cannot write '{self.path.name}': folder '{self.path.parent}' does not exist"
            )
        self.shape = tuple(int(s) for s in shape)
        self.channel_names = [str(n) for n in channel_names]
        self.tmp = self.path.parent / f".{self.path.name}.{secrets.token_hex(4)}.tmp"
        try:
            self.group = zarr.open_group(str(self.tmp), mode="w", zarr_format=3)
            self.array = self.group.create_array(
                "0", shape=self.shape, chunks=tuple(int(c) for c in chunks), dtype=dtype,
                fill_value=0, dimension_names=self.axes,
            )
        except OSError as exc:
            self.abort()
            raise OutputWriteError(f"cannot write '{self.path}': {exc.strerror or exc}") from exc

    @property
    def axes(self) -> list[str]:
        """Axis names of the stored array."""
        return ["c", "y", "x"] if len(self.shape) == 3 else ["c", "z", "y", "x"]

    def ome_metadata(self, window: tuple[float, float] = (0.0, 1.0)) -> dict[str, Any]:
        """The ``ome`` attribute (NGFF 0.5 multiscales and OMERO channels)."""
        kinds = {"c": "channel", "z": "space", "y": "space", "x": "space"}
        # one (lo, hi) for every channel, or one pair per channel
        per = (list(window) if window and hasattr(window[0], "__len__")
               else [window] * len(self.channel_names))
        return {
            "version": "0.5",
            "multiscales": [{
                "name": self.path.name,
                "axes": [{"name": a, "type": kinds[a]} for a in self.axes],
                "datasets": [{
                    "path": "0",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [1.0] * len(self.shape)}
                    ],
                }],
            }],
            "omero": {
                "channels": [
                    {"label": name, "color": "FFFFFF", "active": True,
                     "window": {"min": float(lo), "max": float(hi), "start": float(lo),
                                "end": float(hi)}}
                    for name, (lo, hi) in zip(self.channel_names, per)
                ],
            },
        }

    def commit(self, metadata: dict[str, Any] | None = None,
               window: tuple[float, float] = (0.0, 1.0)) -> Path:
        """Write the metadata and move the finished image to its destination.

        Parameters
        ----------
        metadata : dict, optional
            JSON-serialisable values stored under the ``lmadda`` attribute.
        window : (float, float) or list of (float, float)
            Display range of every channel, or one per channel (the model's stain ranges).

        Returns
        -------
        Path
            The destination.
        """
        try:
            self.group.attrs.update(
                {"ome": self.ome_metadata(window), "lmadda": _jsonable(metadata or {})}
            )
        except (TypeError, ValueError) as exc:
            self.abort()
            raise LmaddaError(
                f"cannot write '{self.path}': metadata is not JSON-serialisable ({exc})"
            ) from exc
        old = None
        try:
            if self.path.exists():
                if not self.overwrite:
                    raise OutputExistsError(f"'{self.path}' already exists")
                old = self.path.parent / f".{self.path.name}.{secrets.token_hex(4)}.old"
                os.replace(self.path, old)
            os.replace(self.tmp, self.path)
        except BaseException as exc:
            if old is not None and not self.path.exists():
                os.replace(old, self.path)
                old = None
            self.abort()
            if isinstance(exc, OSError) and not isinstance(exc, LmaddaError):
                why = exc.strerror or exc
                raise OutputWriteError(f"cannot write '{self.path}': {why}") from exc
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        """Remove the temporary folder (the destination is untouched)."""
        shutil.rmtree(self.tmp, ignore_errors=True)
