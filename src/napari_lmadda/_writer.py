"""napari writers: image layers to calibrated ImageJ TIFFs, with the layers' provenance.

Two contributions: layers as one TIFF (image layers of one shape become the named channels of
one ImageJ hyperstack, e.g. the DAPI and CD29 stains; otherwise one file per layer), or one
TIFF per plane of a stack. Fiji opens them with the layer's pixel size and unit (napari's
``scale`` and ``units``), stacks as Z (and T) and stains as channels named after the marker;
the project's JSON metadata is kept in ImageJ's ``Info``. Neither writer ever replaces an
existing file, and every output name (existing or clashing with another output) is checked
before anything is written: nothing is written when one fails.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import LmaddaError, OutputExistsError

__all__ = ["write_tiff_stacks", "write_tiff_planes", "layer_metadata"]

FullLayerData = tuple[Any, dict, str]


def layer_metadata(data: Any, meta: dict, plane: int | None = None) -> dict:
    """Collect what is stored with a layer: name, scale, translate, napari-lmadda provenance.

    Parameters
    ----------
    data : array-like
        The layer data.
    meta : dict
        The layer's attributes as napari passes them to writers.
    plane : int, optional
        Index of the plane when a stack is split.

    Returns
    -------
    dict
        JSON-serialisable metadata.
    """
    out: dict[str, Any] = {"layer": meta.get("name", "")}
    for key in ("scale", "translate"):
        if meta.get(key) is not None:
            out[key] = [float(v) for v in meta[key]]
    units = meta.get("units")
    if units is not None:
        out["units"] = [str(u) for u in ([units] if isinstance(units, str) else units)]
    extra = dict((meta.get("metadata") or {}).get("lmadda") or {})
    out.update({k: v for k, v in extra.items() if k != "files"})
    if plane is not None:
        out["plane"] = plane
    out["shape"] = list(np.shape(data))
    return out


def _tif_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p if p.suffix.lower() in (".tif", ".tiff") else p.with_name(p.name + ".tif")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip("_") or "layer"


def _array(data: Any, meta: dict) -> np.ndarray:
    return np.asarray(data[0] if meta.get("multiscale") else data)


def _pixel_size(meta: dict, ndim: int) -> dict | None:
    """The layer's calibration: the last scale values with their unit (None if in pixels)."""
    from .data.io import unit_name

    scale, units = meta.get("scale"), meta.get("units")
    if scale is None or units is None or len(scale) < 2:
        return None
    units = list(units) if not isinstance(units, str) else [units] * len(scale)
    unit = unit_name(units[-1]) if units else None
    if unit is None:
        return None
    # a stack of files (unit "pixel" on its first axis) has no Z spacing
    z = (float(scale[-3]) if ndim >= 3 and len(scale) >= 3 and len(units) >= 3
         and unit_name(units[-3]) == unit else None)
    return {"y": float(scale[-2]), "x": float(scale[-1]), "z": z, "unit": unit}


def _axes(ndim: int, channels: bool) -> str:
    """ImageJ axes of a layer's array (leading axes: Z, then T), with C before Y if stacked."""
    lead = {2: "", 3: "Z", 4: "TZ"}[min(ndim, 4)]
    return lead + ("C" if channels else "") + "YX"


def _imagej_ready(arr: np.ndarray) -> np.ndarray:
    """At most TZ leading axes (more are folded into T), a type ImageJ stores."""
    if arr.ndim > 4:
        arr = arr.reshape(-1, *arr.shape[-3:])
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr if arr.dtype in (np.uint8, np.uint16, np.float32) else arr.astype(np.float32)


def _channel_name(meta: dict) -> str:
    lm = (meta.get("metadata") or {}).get("lmadda") or {}
    return str(lm.get("channel") or meta.get("name") or "layer")


def _plan(path: str | os.PathLike, layer_data: list[FullLayerData], split: bool
          ) -> list[tuple[Path, np.ndarray, dict, dict]]:
    """Every file to write, checked before the first is written.

    Image layers of one shape (not split, not RGB) become the named channels of one ImageJ
    hyperstack at ``path``; otherwise each layer is a file of its own (``<stem>_<name>``).
    Each entry is ``(file, array, JSON metadata, write_tiff keyword arguments)``.
    """
    base = _tif_path(path)
    layers = [(_array(d, m), m) for d, m, _ in layer_data]
    plain = [a for a, m in layers if not m.get("rgb")]
    plan: list[tuple[Path, np.ndarray, dict, dict]] = []
    if (not split and len(layers) > 1 and len(plain) == len(layers)
            and len({a.shape for a, _ in layers}) == 1):
        arrays = [_imagej_ready(a) for a, _ in layers]
        if len({a.dtype for a in arrays}) > 1:
            arrays = [a.astype(np.float32) for a in arrays]
        stack = np.stack(arrays, axis=-3)  # C just before Y, X
        ndim = layers[0][0].ndim
        names = [_channel_name(m) for _, m in layers]
        md = {"layers": [layer_metadata(a, m) for a, m in layers]}
        kw = {"axes": _axes(min(ndim, 4), True), "channel_names": names,
              "pixel_size": _pixel_size(layers[0][1], ndim)}
        plan.append((base, stack, md, kw))
    else:
        many = len(layers) > 1
        for arr, meta in layers:
            stem = f"{base.stem}_{_safe(meta.get('name', 'layer'))}" if many else base.stem
            if meta.get("rgb"):  # colour samples: a plain TIFF as before
                plan.append((base.with_name(stem + base.suffix), arr,
                             layer_metadata(arr, meta), {}))
                continue
            px = _pixel_size(meta, arr.ndim)
            if split and arr.ndim > 2:
                planes = arr.reshape(-1, *arr.shape[-2:])
                width = max(3, len(str(len(planes) - 1)))
                for i, p in enumerate(planes):
                    plan.append((base.with_name(f"{stem}_{i:0{width}d}{base.suffix}"),
                                 _imagej_ready(p), layer_metadata(p, meta, i),
                                 {"axes": "YX", "pixel_size": px}))
            else:
                ready = _imagej_ready(arr)
                plan.append((base.with_name(stem + base.suffix), ready,
                             layer_metadata(arr, meta),
                             {"axes": _axes(ready.ndim, False), "pixel_size": px}))
    seen: dict[Path, int] = {}
    for i, (p, _, _, _) in enumerate(plan):
        if p in seen:
            a = layer_data[min(seen[p], len(layer_data) - 1)][1].get("name", "")
            raise LmaddaError(
                f"nothing written: two layers would both be written to '{p.name}' (their names "
                f"'{a}' and '{plan[i][2].get('layer', '')}' give the same file name); rename one"
            )
        seen[p] = i
    existing = [p for p, _, _, _ in plan if p.exists()]
    if existing:
        raise OutputExistsError(
            f"nothing written: '{existing[0]}' already exists"
            + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else "")
            + "; choose another name or folder"
        )
    return plan


def _write(plan: list[tuple[Path, np.ndarray, dict, dict]]) -> list[str]:
    from .data.io import write_tiff

    written: list[str] = []
    for path, arr, meta, kw in plan:
        if kw:
            written.append(str(write_tiff(path, arr, metadata=meta, dtype=None, **kw)))
        else:
            dtype = None if arr.dtype in (np.uint8, np.uint16, np.float32) else np.float32
            written.append(str(write_tiff(path, arr, metadata=meta, dtype=dtype)))
    return written


def write_tiff_stacks(path: str, layer_data: list[FullLayerData]) -> list[str]:
    """Write each image layer as one (multi-page) TIFF.

    One layer goes to ``path``; several layers to ``<stem>_<layer name>.tif`` next to it.

    Parameters
    ----------
    path : str
        Destination chosen in napari's save dialog.
    layer_data : list of (data, attributes, layer_type)
        The layers napari hands over.

    Returns
    -------
    list of str
        Files written.

    Raises
    ------
    OutputExistsError
        An output file exists; nothing is written.
    """
    return _write(_plan(path, layer_data, split=False))


def write_tiff_planes(path: str, layer_data: list[FullLayerData]) -> list[str]:
    """Write every plane of every image layer as its own TIFF (``<stem>_000.tif``, ...).

    Parameters
    ----------
    path : str
        Destination chosen in napari's save dialog (its stem starts each file name).
    layer_data : list of (data, attributes, layer_type)
        The layers napari hands over.

    Returns
    -------
    list of str
        Files written.

    Raises
    ------
    OutputExistsError
        An output file exists; nothing is written.
    """
    return _write(_plan(path, layer_data, split=True))
