"""napari reader: a folder of images becomes an image stack; a model file is loaded.

Drop a folder of TIFF/PNG/JPEG files onto napari and it opens as one image layer (a stack, one
plane per image), or as one layer per image size when the sizes differ (with a message that
says so). Drop a ``.pt`` / ``.pth`` model file and it is loaded into the plugin's Model widget
for the current viewer; no layer is added.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import LmaddaError

__all__ = ["get_reader", "read_folder", "read_model_file"]

MODEL_SUFFIXES = (".pt", ".pth")
LayerData = tuple  # (data, kwargs, layer_type) or the null-layer sentinel (None,)


def _notify(kind: str, message: str) -> None:
    from napari.utils import notifications

    getattr(notifications, f"show_{kind}")(message)


def read_folder(path: str | list[str]) -> list[LayerData]:
    """Read a folder of images as image layer data (one layer per plane size).

    Parameters
    ----------
    path : str or list of str
        The folder.

    Returns
    -------
    list of tuple
        ``(stack, kwargs, "image")`` per size group; ``[(None,)]`` (nothing to add) when the
        folder cannot be read, after showing why.
    """
    from .data.groups import read_image_groups
    from .data.io import read_pixel_size

    folder = Path(path[0] if isinstance(path, list) else path)
    try:
        groups, skipped = read_image_groups(folder)
    except LmaddaError as exc:
        _notify("error", str(exc))
        return [(None,)]
    if skipped:
        _notify("warning", f"skipped {len(skipped)} unreadable file(s) in '{folder.name}': "
                           f"{skipped[0]}")
    if len(groups) > 1:
        sizes = ", ".join(f"{g.shape[0]}x{g.shape[1]} ({len(g.planes)})" for g in groups)
        _notify("info", f"'{folder.name}' holds images of {len(groups)} sizes ({sizes}); "
                        "opened one layer per size")
    out: list[LayerData] = []
    for group in groups:
        h, w = group.shape
        name = folder.name if len(groups) == 1 else f"{folder.name} {h}x{w}"
        meta = {"lmadda": {"folder": str(folder), "files": group.files}}
        kwargs = {"name": name, "metadata": meta}
        px = read_pixel_size(folder / group.files[0])  # the calibration, kept on export
        if px is not None:
            kwargs.update(scale=(1.0, px["y"], px["x"]), units=("pixel", px["unit"], px["unit"]))
        out.append((group.stack, kwargs, "image"))
    return out


def read_model_file(path: str | list[str]) -> list[LayerData]:
    """Load a model file into the plugin's state of the current viewer.

    Parameters
    ----------
    path : str or list of str
        A ``.pt`` / ``.pth`` model file.

    Returns
    -------
    list of tuple
        ``[(None,)]``: the model is not a layer; napari adds nothing.
    """
    import napari

    from .widgets.model import load_into_state

    file = Path(path[0] if isinstance(path, list) else path)
    viewer = napari.current_viewer()
    if viewer is None:
        _notify("error", f"cannot load '{file.name}': no napari viewer is open")
        return [(None,)]
    load_into_state(viewer, str(file))
    return [(None,)]


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return a reader for a folder of images or a model file, else None (never raises).

    Parameters
    ----------
    path : str or list of str
        What napari wants to open.

    Returns
    -------
    callable or None
    """
    try:
        if isinstance(path, list):
            if len(path) != 1:
                return None
            path = path[0]
        p = Path(path)
        if p.is_dir():
            from .data.io import list_images
            from .data.zarr_io import is_zarr_image, zarr_layer_data

            if is_zarr_image(p):  # an OME-Zarr image, HCS plate or well
                return zarr_layer_data

            try:
                list_images(p)
            except LmaddaError:
                return None
            return read_folder
        if p.suffix.lower() in MODEL_SUFFIXES and p.is_file():
            return read_model_file
    except (OSError, TypeError, ValueError):
        return None
    return None
