"""OME-Zarr input and output for images too large for TIFF (Qt-free, lazy).

Written images follow OME-NGFF 0.5 (Zarr v3, the format ``ome-zarr`` writes by default):
one multiscale image, axes ``c, y, x`` (or ``c, z, y, x`` for a stack of planes) with the
input's pixel size and unit (:func:`read_calibration`: OME-Zarr scales and units, OME-TIFF
physical sizes, ImageJ calibration), a pyramid of 2x2-mean levels for images larger than
:data:`PYRAMID_MIN_SIDE` (so viewers open them at any zoom), the channel names as OMERO
channel labels, and this project's metadata (model provenance, source image, ...) under
the ``lmadda`` attribute. An image is written into a hidden temporary folder beside its
destination and renamed into place when complete, so a reader never sees a half-written
image.

Reading accepts OME-NGFF 0.4 (Zarr v2) and 0.5 images: the first multiscale's
full-resolution level, as a lazy dask array. An HCS plate (plate / well / field, as
written by ome-zarr-py or iohub) or a well stands for its fields (:func:`zarr_inputs`),
each an ordinary image named ``<plate>_<row>_<column>_<field>`` (:func:`zarr_stem`).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
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
    "PYRAMID_MIN_SIDE",
    "Calibration",
    "read_calibration",
    "is_zarr_image",
    "hcs_fields",
    "zarr_inputs",
    "zarr_layer_data",
    "zarr_stem",
    "source_name",
    "open_ome_zarr",
    "open_zarr_array",
    "zarr_planes",
    "OmeZarrWriter",
    "require_zarr",
    "zarr_available",
]

#: Folder names read as (OME-)Zarr images.
ZARR_SUFFIXES: tuple[str, ...] = (".ome.zarr", ".zarr")
#: Written images with a side larger than this get 2x2-mean pyramid levels down to it.
PYRAMID_MIN_SIDE = 1024


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


def _has_zarr_metadata(p: Path) -> bool:
    return any((p / f).is_file() for f in ("zarr.json", ".zattrs", ".zgroup", ".zarray"))


def _zarr_root(p: Path) -> Path | None:
    """The ``*.zarr`` folder that ``p`` is or lies in (None outside a Zarr hierarchy)."""
    for q in (p, *p.parents):
        if q.name.lower().endswith(".zarr"):
            return q
    return None


def is_zarr_image(path: str | os.PathLike[str]) -> bool:
    """True for a ``*.zarr`` folder (``*.ome.zarr``) holding Zarr metadata, or a group inside one.

    A group inside a ``*.zarr`` folder is, for example, the field ``plate.ome.zarr/A/1/0`` of
    an HCS plate.
    """
    p = Path(path)
    return p.is_dir() and _zarr_root(p) is not None and _has_zarr_metadata(p)


def zarr_stem(path: str | os.PathLike[str]) -> str:
    """The name of a Zarr image without ``.ome.zarr`` / ``.zarr``.

    A group inside a Zarr folder (an HCS field) is named after the folder and its path:
    ``plate.ome.zarr/A/1/0`` -> ``plate_A_1_0``.
    """
    p = Path(path)
    root = _zarr_root(p)
    if root is not None and root != p:
        return "_".join([zarr_stem(root), *p.relative_to(root).parts])
    name = p.name
    for sfx in ZARR_SUFFIXES:
        if name.lower().endswith(sfx):
            return name[: -len(sfx)]
    return name


def source_name(path: str | os.PathLike[str]) -> str:
    """How outputs name their input: the file name, or ``plate.ome.zarr/A/1/0`` for a field."""
    p = Path(path)
    root = _zarr_root(p)
    return p.relative_to(root.parent).as_posix() if root is not None and root != p else p.name


def _ome_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The OME metadata of a group: under ``ome`` in NGFF 0.5, at the top level in 0.4."""
    ome = attrs.get("ome")
    return dict(ome) if isinstance(ome, dict) else dict(attrs)


def _group_attrs(p: Path) -> dict[str, Any]:
    """The attributes of a Zarr group folder (v3 ``zarr.json`` or v2 ``.zattrs``), or {}."""
    for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
        f = p / name
        if f.is_file():
            try:
                doc = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError, UnicodeDecodeError):
                return {}
            doc = doc.get(key, {}) if key else doc
            return doc if isinstance(doc, dict) else {}
    return {}


def _child(p: Path, rel: Any) -> Path | None:
    """``p / rel`` for a relative path named in metadata (nothing outside ``p``)."""
    if not isinstance(rel, str) or not rel:
        return None
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or ".." in parts:
        return None
    return p.joinpath(*parts)


def hcs_fields(path: str | os.PathLike[str]) -> list[Path]:
    """The field images of an OME-Zarr HCS plate or well (NGFF 0.4 or 0.5), else ``[]``.

    Parameters
    ----------
    path : path-like
        A plate (``plate`` metadata: wells ``row/column``, each with ``well`` metadata naming
        its fields) or a well.

    Returns
    -------
    list of Path
        Field folders in plate order (wells as listed, fields as listed); wells or fields
        named in the metadata but missing on disk are left out.
    """
    p = Path(path)
    ome = _ome_attrs(_group_attrs(p))
    if isinstance(ome.get("plate"), dict):
        wells = [_child(p, w.get("path")) for w in ome["plate"].get("wells") or []
                 if isinstance(w, dict)]
        return [f for w in wells if w is not None and w.is_dir() for f in hcs_fields(w)]
    if isinstance(ome.get("well"), dict):
        fields = [_child(p, i.get("path")) for i in ome["well"].get("images") or []
                  if isinstance(i, dict)]
        return [f for f in fields if f is not None and is_zarr_image(f)]
    return []


def zarr_inputs(path: str | os.PathLike[str]) -> list[Path]:
    """The images a Zarr folder stands for: an HCS plate's or well's fields, else itself."""
    return hcs_fields(path) or [Path(path)]


# UDUNITS-2 names (what OME-NGFF axes use) of the length units found in TIFF metadata
_UNITS = {
    "nm": "nanometer", "nanometer": "nanometer", "nanometers": "nanometer",
    "um": "micrometer", "µm": "micrometer", "μm": "micrometer", "micron": "micrometer",
    "microns": "micrometer", "micrometer": "micrometer", "micrometers": "micrometer",
    "mm": "millimeter", "millimeter": "millimeter", "cm": "centimeter",
    "centimeter": "centimeter", "m": "meter", "meter": "meter", "a": "angstrom",
    "å": "angstrom", "angstrom": "angstrom", "pm": "picometer", "inch": "inch",
}


def _unit(text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    return _UNITS.get(text.strip().replace("\\u00B5", "µ").lower())


@dataclass(frozen=True)
class Calibration:
    """Physical size of a pixel along ``y`` and ``x`` (and of a plane step along ``z``).

    Attributes
    ----------
    y, x : float
        Pixel height and width in ``unit``.
    z : float or None
        Distance between planes, if known.
    unit : str or None
        UDUNITS-2 length unit (``"micrometer"``, ...); None when only the ratio is known.
    """

    y: float = 1.0
    x: float = 1.0
    z: float | None = None
    unit: str | None = None

    def __post_init__(self) -> None:
        for v in (self.y, self.x, *(() if self.z is None else (self.z,))):
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"pixel sizes must be positive and finite, got {self}")


def _positive(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _zarr_calibration(p: Path) -> Calibration | None:
    ms = (_ome_attrs(_group_attrs(p)).get("multiscales") or [None])[0]
    if not isinstance(ms, dict):
        return None
    axes = [a if isinstance(a, dict) else {"name": str(a)} for a in ms.get("axes") or []]
    scale = [1.0] * len(axes)
    transforms = list((ms.get("datasets") or [{}])[0].get("coordinateTransformations") or [])
    transforms += list(ms.get("coordinateTransformations") or [])
    for t in transforms:
        if (isinstance(t, dict) and t.get("type") == "scale"
                and len(t.get("scale") or []) == len(axes)):
            scale = [a * (_positive(b) or 1.0) for a, b in zip(scale, t["scale"])]
    size = {str(a.get("name", "")).lower(): (s, a.get("unit")) for a, s in zip(axes, scale)}
    if "y" not in size or "x" not in size:
        return None
    unit = _unit(size["y"][1]) or _unit(size["x"][1])
    if unit is None and size["y"][0] == size["x"][0] == 1.0:
        return None
    z = size["z"][0] if "z" in size else None
    return Calibration(size["y"][0], size["x"][0], z, unit)


def _tiff_calibration(p: Path) -> Calibration | None:
    import xml.etree.ElementTree as ET

    import tifffile

    try:
        with tifffile.TiffFile(p) as tif:
            if tif.ome_metadata:
                root = ET.fromstring(tif.ome_metadata)
                pix = next((e for e in root.iter() if e.tag.endswith("}Pixels")), None)
                if pix is not None:
                    x, y = _positive(pix.get("PhysicalSizeX")), _positive(pix.get("PhysicalSizeY"))
                    if x and y:
                        unit = _unit(pix.get("PhysicalSizeXUnit", "µm"))
                        return Calibration(y, x, _positive(pix.get("PhysicalSizeZ")), unit)
            page = tif.pages.first
            tags = page.tags
            xr, yr = tags.get("XResolution"), tags.get("YResolution")
            if xr is None or yr is None:
                return None
            xs = _positive(xr.value[1] / xr.value[0]) if xr.value[0] else None
            ys = _positive(yr.value[1] / yr.value[0]) if yr.value[0] else None
            if not (xs and ys):
                return None
            ij = tif.imagej_metadata or {}
            if ij.get("unit"):
                return Calibration(ys, xs, _positive(ij.get("spacing")), _unit(ij["unit"]))
            res_unit = tags.get("ResolutionUnit")
            if res_unit is not None and int(res_unit.value) == 3:  # centimeter
                return Calibration(ys * 1e4, xs * 1e4, None, "micrometer")
    except Exception:  # any unreadable header: no calibration, the pixels still predict
        return None
    return None  # inch-based resolutions are screen defaults (72 dpi), not microscopy


def read_calibration(path: str | os.PathLike[str]) -> Calibration | None:
    """The pixel size and unit of an OME-Zarr image or a TIFF, or None if it has none.

    OME-Zarr: the full-resolution level's ``scale`` and the axes' ``unit``. TIFF: OME
    ``PhysicalSize*``, else ImageJ's ``unit`` with the resolution tags (and ``spacing``
    for z), else a resolution in centimetres. Never raises.
    """
    p = Path(path)
    try:
        if is_zarr_image(p):
            return _zarr_calibration(p)
        if p.suffix.lower() in (".tif", ".tiff"):
            return _tiff_calibration(p)
    except (OSError, ValueError, TypeError, KeyError, LmaddaError):
        return None
    return None


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
            kind = _ome_attrs(attrs)
            if "plate" in kind or "well" in kind:
                raise ImageReadError(
                    f"'{p}' is an OME-Zarr HCS {'plate' if 'plate' in kind else 'well'}, not "
                    "one image: open its fields (predict and the napari reader do)"
                ) from None
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


def _levels(path: Path) -> list[Any]:
    """Every level of an OME-Zarr image's first multiscale (level 0 first), as dask arrays."""
    import dask.array as da

    zarr = require_zarr(f"reading '{path.name}'")
    arr, _, attrs = open_zarr_array(path)
    levels = [da.from_zarr(arr)]
    ms = (_ome_attrs(attrs).get("multiscales") or [{}])[0]
    group = zarr.open_group(str(path), mode="r")
    for d in (ms.get("datasets") or [])[1:]:
        try:
            a = group[d["path"]]
        except Exception:  # a missing level: show what exists
            break
        if a.ndim != arr.ndim:
            break
        levels.append(da.from_zarr(a))
    return levels


def _planes_of(a: Any) -> Any:
    """A (..., Y, X) array as (N, Y, X) (or (Y, X) for a single plane)."""
    n = int(np.prod(a.shape[:-2])) if a.ndim > 2 else 1
    return a.reshape(a.shape[-2:]) if n == 1 else a.reshape((n, *a.shape[-2:]))


def zarr_layer_data(path: str | os.PathLike[str] | list[str]) -> list[tuple[Any, dict, str]]:
    """Layer data (for napari) of an OME-Zarr image, HCS plate or well (lazy; no napari import).

    An image gives one layer: its planes (leading axes flattened, as a stack) and, when it
    has pyramid levels, every level (napari shows the one fitting the zoom). A plate or well
    gives one stack of all its fields' planes per plane size, the field of every plane in
    ``metadata["lmadda"]["files"]``. The pixel size goes to the layer's ``scale``.

    Raises
    ------
    ImageReadError
        Not an OME-Zarr image, or a plate without any readable field.
    """
    p = Path(path[0] if isinstance(path, list) else path)
    fields = hcs_fields(p)
    name = zarr_stem(p)
    if not fields:
        levels = [_planes_of(a) for a in _levels(p)]
        cal = read_calibration(p)
        kwargs: dict[str, Any] = {"name": name, "metadata": {"lmadda": {"folder": str(p)}}}
        if cal is not None:
            kwargs["scale"] = (1.0,) * (levels[0].ndim - 2) + (cal.y, cal.x)
        data = levels if len(levels) > 1 else levels[0]
        if len(levels) > 1:
            kwargs["multiscale"] = True
        return [(data, kwargs, "image")]
    import dask.array as da

    groups: dict[tuple[int, int], tuple[list[Any], list[str]]] = {}
    skipped = []
    for f in fields:
        try:
            arr, _, _ = open_ome_zarr(f)
        except LmaddaError as exc:
            skipped.append(str(exc))
            continue
        planes = _planes_of(arr)
        planes = planes[None] if planes.ndim == 2 else planes
        rel = f.relative_to(p).as_posix()
        stack, names = groups.setdefault(tuple(planes.shape[-2:]), ([], []))
        stack.append(planes)
        names.extend([rel] * planes.shape[0])
    if not groups:
        raise ImageReadError(f"no field of '{p}' could be read ({skipped[0] if skipped else ''})")
    cal = read_calibration(fields[0])
    out = []
    for (h, w), (stack, names) in sorted(groups.items(), key=lambda kv: -len(kv[1][1])):
        kwargs = {"name": name if len(groups) == 1 else f"{name} {h}x{w}",
                  "metadata": {"lmadda": {"folder": str(p), "files": names}}}
        if cal is not None:
            kwargs["scale"] = (1.0, cal.y, cal.x)
        out.append((da.concatenate(stack), kwargs, "image"))
    return out


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
    calibration : Calibration, optional
        Pixel size and unit of the input (written as the level scales and axis units).

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
        calibration: Calibration | None = None,
    ) -> None:
        zarr = require_zarr("writing OME-Zarr")
        self.path = Path(path)
        self.overwrite = overwrite
        self.calibration = calibration
        self.levels = 1
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
        """The ``ome`` attribute (NGFF 0.5 multiscales with every level, OMERO channels)."""
        kinds = {"c": "channel", "z": "space", "y": "space", "x": "space"}
        cal = self.calibration or Calibration()
        size = {"c": 1.0, "z": cal.z or 1.0, "y": cal.y, "x": cal.x}
        axes = []
        for a in self.axes:
            ax = {"name": a, "type": kinds[a]}
            if kinds[a] == "space" and cal.unit and (a != "z" or cal.z is not None):
                ax["unit"] = cal.unit
            axes.append(ax)
        datasets = []
        for k in range(self.levels):
            f = 2**k  # level k averages f x f pixels of level 0: its centre moves by (f-1)/2
            scale = [size[a] * (f if a in "yx" else 1) for a in self.axes]
            shift = [size[a] * (f - 1) / 2 if a in "yx" else 0.0 for a in self.axes]
            transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
            if k:
                transforms.append({"type": "translation", "translation": shift})
            datasets.append({"path": str(k), "coordinateTransformations": transforms})
        # one (lo, hi) for every channel, or one pair per channel
        per = (list(window) if window and hasattr(window[0], "__len__")
               else [window] * len(self.channel_names))
        return {
            "version": "0.5",
            "multiscales": [{"name": self.path.name, "axes": axes, "datasets": datasets}],
            "omero": {
                "channels": [
                    {"label": name, "color": "FFFFFF", "active": True,
                     "window": {"min": float(lo), "max": float(hi), "start": float(lo),
                                "end": float(hi)}}
                    for name, (lo, hi) in zip(self.channel_names, per)
                ],
            },
        }

    def _write_pyramid(self) -> None:
        """Add 2x2-mean levels ``1, 2, ...`` until the largest side is at most PYRAMID_MIN_SIDE.

        Each level is computed chunk by chunk from the one before (read back from disk), so
        memory stays bounded whatever the image size.
        """
        import dask.array as da

        src = self.array
        chunks = src.chunks
        while max(src.shape[-2:]) > PYRAMID_MIN_SIDE and min(src.shape[-2:]) >= 2:
            h, w = src.shape[-2] // 2 * 2, src.shape[-1] // 2 * 2
            lead = src.ndim - 2
            # blocks of 2x2 output chunks in, one output chunk out: no two tasks write into
            # the same chunk (unlocked partial-chunk writes would overwrite each other)
            level = da.from_zarr(src, chunks=(*chunks[:lead], 2 * chunks[-2], 2 * chunks[-1]))
            down = da.coarsen(np.mean, level[..., :h, :w], {lead: 2, lead + 1: 2})
            out = self.group.create_array(
                str(self.levels), shape=down.shape, dtype=src.dtype, fill_value=0,
                chunks=tuple(min(c, n) for c, n in zip(chunks, down.shape)),
                dimension_names=self.axes)
            da.store(down.astype(src.dtype).rechunk(out.chunks), out, lock=False)
            src = out
            self.levels += 1

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
            self._write_pyramid()
        except OSError as exc:
            self.abort()
            raise OutputWriteError(f"cannot write '{self.path}': {exc.strerror or exc}") from exc
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
