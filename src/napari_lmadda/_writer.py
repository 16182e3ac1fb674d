"""napari writers: image layers to TIFF, with the layer's scale and provenance as metadata.

Two contributions: one multi-page TIFF per layer, or one TIFF per plane of a stack. Neither
ever replaces an existing file: every output name is checked before anything is written, and
an existing one stops the export with a clear message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OutputExistsError

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


def _plan(path: str | os.PathLike, layer_data: list[FullLayerData], split: bool
          ) -> list[tuple[Path, np.ndarray, dict]]:
    base = _tif_path(path)
    many = len(layer_data) > 1
    plan = []
    for data, meta, _ in layer_data:
        arr = np.asarray(data[0] if meta.get("multiscale") else data)
        stem = f"{base.stem}_{_safe(meta.get('name', 'layer'))}" if many else base.stem
        if split and arr.ndim > 2:
            planes = arr.reshape(-1, *arr.shape[-2:])
            width = max(3, len(str(len(planes) - 1)))
            for i, p in enumerate(planes):
                plan.append((base.with_name(f"{stem}_{i:0{width}d}{base.suffix}"), p,
                             layer_metadata(p, meta, i)))
        else:
            plan.append((base.with_name(stem + base.suffix), arr, layer_metadata(arr, meta)))
    existing = [p for p, _, _ in plan if p.exists()]
    if existing:
        raise OutputExistsError(
            f"nothing written: '{existing[0]}' already exists"
            + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else "")
            + "; choose another name or folder"
        )
    return plan


def _write(plan: list[tuple[Path, np.ndarray, dict]]) -> list[str]:
    from .data.io import write_tiff

    written: list[str] = []
    for path, arr, meta in plan:
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
