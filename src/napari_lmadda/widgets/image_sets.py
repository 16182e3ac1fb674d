"""The chosen images as the core takes them, and what a folder holds.

A selection (:class:`~napari_lmadda.widgets.state.DataSelection`) is a folder or an image
layer. :func:`images_for_adaptation` turns it into a folder path or an ``(N, H, W)`` array;
:func:`prediction_loader` into a function that reads the new-microscope images *in the
worker thread* as :class:`ImageSet` stacks, each tied to where it came from;
:func:`describe_folder` counts what a folder really holds (unreadable files named).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import LmaddaError
from .state import ROLES, get_state

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = [
    "ImageSet",
    "FolderSummary",
    "describe_folder",
    "images_for_adaptation",
    "prediction_loader",
    "layer_planes",
    "layer_pixel_size",
]


def layer_planes(layer: Any) -> np.ndarray:
    """Return the planes of an image layer as a ``(N, H, W)`` ``float32`` array.

    Raises
    ------
    LmaddaError
        For RGB layers and layers that are not images.
    """
    _check_grey_image(layer)
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return _planes(data, layer.name)


def _planes(data: Any, name: str) -> np.ndarray:
    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim < 2 or min(arr.shape[-2:]) < 2:
        raise LmaddaError(f"layer '{name}' of shape {arr.shape} is not an image")
    return arr.reshape(-1, *arr.shape[-2:])


def _layer(viewer: napari.Viewer, name: str) -> Any:
    if name not in viewer.layers:
        raise LmaddaError(f"layer '{name}' is no longer in the viewer; choose the images again")
    return viewer.layers[name]


def images_for_adaptation(viewer: napari.Viewer, role: str) -> Any:
    """Return what the engine takes for a role, or a function returning it.

    A folder gives its path (read lazily by the engine); a layer gives a function of no
    argument returning its ``(N, H, W)`` float32 planes, to call in the worker: converting a
    large layer takes time and memory napari's thread should not spend.

    Raises
    ------
    LmaddaError
        Nothing chosen, or the choice is unusable (checked now, without converting pixels).
    """
    sel = get_state(viewer).selections.get(role)
    if sel is None:
        raise LmaddaError(f"choose the {ROLES[role].lower()} first (Images step)")
    if sel.kind == "folder":
        return sel.value
    layer = _layer(viewer, sel.value)
    _check_grey_image(layer)
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    name = layer.name
    return lambda: _planes(data, name)


def _check_grey_image(layer: Any) -> None:
    from napari.layers import Image

    if not isinstance(layer, Image):
        raise LmaddaError(f"layer '{layer.name}' is not an image layer")
    if getattr(layer, "rgb", False):
        raise LmaddaError(
            f"layer '{layer.name}' is an RGB image; the models take grey images (split or "
            "convert it to greyscale first)"
        )
    shape = layer.data[0].shape if getattr(layer, "multiscale", False) else layer.data.shape
    if len(shape) < 2 or min(shape[-2:]) < 2:
        raise LmaddaError(f"layer '{layer.name}' of shape {tuple(shape)} is not an image")


@dataclass
class ImageSet:
    """New-microscope images to predict, and where they came from.

    Attributes
    ----------
    name : str
        Name of the input (layer name, or folder name with size).
    stack : numpy.ndarray
        ``(N, H, W)`` raw images.
    key : str
        Identity of the data: ``layer:<layer id>`` or ``folder:<path>[:HxW]``; stain layers
        computed from it carry it, so they are never mixed up with another input's.
    layer_kwargs : dict
        ``scale``/``translate``/``units`` for the stain layers (copied from the input layer,
        or the files' calibration).
    input_layer : str or None
        The input's layer, or None when it came from a folder and is not shown yet.
    folder : str or None
        The folder the images were read from.
    files : list of str
        File of each plane (folders only).
    squeeze : bool
        The input layer is 2-D: the stain layers are too.
    pixel_size : dict or None
        ``{"y", "x", "unit"}`` of the input (:func:`~napari_lmadda.data.io.read_pixel_size`
        form), None when it has no physical calibration; written into exported stains.
    """

    name: str
    stack: np.ndarray
    key: str
    layer_kwargs: dict[str, Any] = field(default_factory=dict)
    input_layer: str | None = None
    folder: str | None = None
    files: list[str] = field(default_factory=list)
    squeeze: bool = False
    pixel_size: dict[str, Any] | None = None


def layer_pixel_size(layer: Any) -> dict[str, Any] | None:
    """The pixel size of an image layer as the TIFF writers take it, None without units.

    napari keeps a physical unit per axis (``layer.units``, ``pixel`` when none was given);
    a layer whose plane axes have no length unit has no calibration to keep.
    """
    from ..data.io import unit_name

    scale = tuple(float(v) for v in layer.scale)
    units = tuple(str(u) for u in getattr(layer, "units", ()) or ())
    unit = unit_name(units[-1]) if units else None
    if unit is None or len(scale) < 2 or min(scale[-2:]) <= 0:
        return None
    return {"y": scale[-2], "x": scale[-1], "unit": unit}


def prediction_loader(viewer: napari.Viewer) -> Callable[[], list[ImageSet]]:
    """Return a function that reads the new-microscope images (call it in the worker).

    What is cheap and needs the viewer (which layer, its scale) is looked up now; the pixels
    are converted or read from disk when the function is called.

    Raises
    ------
    LmaddaError
        Nothing chosen, or the choice is unusable.
    """
    sel = get_state(viewer).selections.get("target")
    if sel is None:
        raise LmaddaError("choose the new-microscope images first (Images step)")
    if sel.kind == "layer":
        layer = _layer(viewer, sel.value)
        _check_grey_image(layer)
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        ndim = layer.ndim
        kwargs = {"scale": tuple(layer.scale)[-max(ndim, 2):],
                  "translate": tuple(layer.translate)[-max(ndim, 2):],
                  "units": tuple(str(u) for u in layer.units)[-max(ndim, 2):]}
        if ndim > 3:  # stains are (N, H, W); keep only the plane axes' scale
            first = {"scale": 1.0, "translate": 0.0, "units": "pixel"}
            kwargs = {k: (first[k], *v[-2:]) for k, v in kwargs.items()}
        name, key = layer.name, f"layer:{layer.unique_id}"
        px = layer_pixel_size(layer)
        # a layer the reader made from a folder: its files, one per plane, so the stains
        # are written per file as lmadda predict writes them
        origin = layer.metadata.get("lmadda", {}) if isinstance(layer.metadata, dict) else {}
        folder = origin.get("folder") if isinstance(origin.get("folder"), str) else None
        files = [str(f) for f in origin.get("files") or []] if folder else []

        def from_layer() -> list[ImageSet]:
            stack = _planes(data, name)
            ok = len(files) == len(stack)
            return [ImageSet(name, stack, key, kwargs, name, squeeze=ndim == 2,
                             pixel_size=px, folder=folder if ok else None,
                             files=files if ok else [])]

        return from_layer
    folder = sel.value

    def from_folder() -> list[ImageSet]:
        from ..data.groups import read_image_groups
        from ..data.io import read_pixel_size

        groups, _ = read_image_groups(folder)
        base = Path(folder).name or folder
        out = []
        for g in groups:
            size = f"{g.shape[0]}x{g.shape[1]}"
            one = len(groups) == 1
            px = read_pixel_size(Path(folder) / g.files[0])  # stains keep the calibration
            kwargs = ({"scale": (1.0, px["y"], px["x"]),
                       "units": ("pixel", px["unit"], px["unit"])} if px is not None else {})
            out.append(ImageSet(base if one else f"{base} {size}", g.stack,
                                f"folder:{folder}" if one else f"folder:{folder}:{size}",
                                kwargs, folder=folder, files=list(g.files), pixel_size=px))
        return out

    return from_folder


@dataclass
class FolderSummary:
    """What a folder holds: readable image files, their planes, and the unreadable ones."""

    folder: str
    files: int
    planes: int
    sizes: list[tuple[int, int]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """``folder 'cells': 2 images of 256×256 px; 1 file unreadable: bad.tif (why)``."""
        name = Path(self.folder).name or self.folder
        sizes = ", ".join(f"{h}×{w}" for h, w in self.sizes[:3])
        more = "…" if len(self.sizes) > 3 else ""
        text = f"folder '{name}': {self.planes} image(s) of {sizes}{more} px"
        if self.files != self.planes:
            text += f" in {self.files} file(s)"
        if self.unreadable:
            text += (f"; {len(self.unreadable)} file(s) unreadable, left out: "
                     f"{self.unreadable[0]}")
        return text


def describe_folder(folder: str | Path) -> FolderSummary:
    """Probe every image file of a folder (headers only) and count what can be used.

    Raises
    ------
    LmaddaError
        The folder does not exist, holds no image file, or no file in it can be read.
    """
    from ..data.io import list_images, probe_image

    files = list_images(folder)
    planes, sizes, bad, good = 0, [], [], 0
    for path in files:
        try:
            info = probe_image(path)
        except LmaddaError as exc:
            bad.append(_short(str(exc), path))
            continue
        good += 1
        planes += info.n_planes
        for series in info.series:
            shape = tuple(int(v) for v in series.plane_shape)
            if shape not in sizes:
                sizes.append(shape)
    if good == 0:
        raise LmaddaError(f"no image in '{folder}' could be read ({bad[0]})")
    return FolderSummary(str(folder), good, planes, sizes, bad)


def _short(message: str, path: Path) -> str:
    """``name.tif is damaged or truncated (...)``: the reason, naming the file once."""
    import re

    reason = re.sub(r"^'[^']*'[:,]?\s*", "", message.strip()).split("\n")[0][:140]
    return f"{path.name} {reason}" if reason.startswith(("is ", "has ")) else \
        f"{path.name}: {reason}"
