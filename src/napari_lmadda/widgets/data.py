"""The Data widget: choose the source-domain images and the new-microscope images.

Each set comes from a folder (picked here, or dropped onto napari, which opens it as a layer
through the plugin's reader) or from an image layer already in the viewer. The choice is kept
in the viewer's shared state; :func:`images_for_adaptation` and :func:`images_for_prediction`
turn it into what the core takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import LmaddaError
from .state import ROLES, DataSelection, LmaddaState, get_state

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = [
    "DataWidget",
    "ImageSet",
    "images_for_adaptation",
    "images_for_prediction",
    "layer_planes",
]

_NO_LAYER = "— choose an image layer —"


def layer_planes(layer: Any) -> np.ndarray:
    """Return the planes of an image layer as a ``(N, H, W)`` ``float32`` array.

    Raises
    ------
    LmaddaError
        For RGB layers and layers that are not images.
    """
    from napari.layers import Image

    if not isinstance(layer, Image):
        raise LmaddaError(f"layer '{layer.name}' is not an image layer")
    if getattr(layer, "rgb", False):
        raise LmaddaError(
            f"layer '{layer.name}' is an RGB image; the models take grey images (split or "
            "convert it to greyscale first)"
        )
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim < 2 or min(arr.shape[-2:]) < 2:
        raise LmaddaError(f"layer '{layer.name}' of shape {arr.shape} is not an image")
    return arr.reshape(-1, *arr.shape[-2:])


def _layer(viewer: napari.Viewer, name: str) -> Any:
    if name not in viewer.layers:
        raise LmaddaError(f"layer '{name}' is no longer in the viewer; choose the images again")
    return viewer.layers[name]


def images_for_adaptation(viewer: napari.Viewer, role: str) -> Any:
    """Return what the engine takes for a role: a folder (read lazily) or an (N, H, W) array.

    Raises
    ------
    LmaddaError
        Nothing chosen, or the choice is unusable.
    """
    sel = get_state(viewer).selections.get(role)
    if sel is None:
        raise LmaddaError(f"choose the {ROLES[role].lower()} first (Data widget)")
    if sel.kind == "folder":
        return sel.value
    return layer_planes(_layer(viewer, sel.value))


@dataclass
class ImageSet:
    """New-microscope images to predict, and where their stain layers go.

    Attributes
    ----------
    name : str
        Name of the input (layer name, or folder name with size).
    stack : numpy.ndarray
        ``(N, H, W)`` raw images.
    layer_kwargs : dict
        ``scale``/``translate`` for the stain layers (copied from the input layer).
    input_layer : str or None
        The input's layer, or None when it came from a folder and is not shown yet.
    squeeze : bool
        The input layer is 2-D: the stain layers are too.
    """

    name: str
    stack: np.ndarray
    layer_kwargs: dict[str, Any] = field(default_factory=dict)
    input_layer: str | None = None
    squeeze: bool = False


def images_for_prediction(viewer: napari.Viewer) -> list[ImageSet]:
    """Return the new-microscope images to predict, as stacks of equal-size planes.

    Raises
    ------
    LmaddaError
        Nothing chosen, or the choice is unusable.
    """
    from ..data.groups import read_image_groups

    sel = get_state(viewer).selections.get("target")
    if sel is None:
        raise LmaddaError("choose the new-microscope images first (Data widget)")
    if sel.kind == "layer":
        layer = _layer(viewer, sel.value)
        planes = layer_planes(layer)
        ndim = layer.ndim
        kwargs = {"scale": tuple(layer.scale)[-max(ndim, 2):],
                  "translate": tuple(layer.translate)[-max(ndim, 2):]}
        if ndim > 3:  # stains are (N, H, W); keep only the plane axes' scale
            kwargs = {k: (1.0, *v[-2:]) for k, v in kwargs.items()}
        return [ImageSet(layer.name, planes, kwargs, layer.name, squeeze=ndim == 2)]
    groups, _ = read_image_groups(sel.value)
    folder = Path(sel.value).name or sel.value
    return [
        ImageSet(folder if len(groups) == 1 else f"{folder} {g.shape[0]}x{g.shape[1]}", g.stack)
        for g in groups
    ]


class _RolePicker(QGroupBox):
    """Folder button, layer combo box and a status line for one image set."""

    def __init__(self, role: str, owner: DataWidget) -> None:
        super().__init__(ROLES[role])
        self.role, self.owner = role, owner
        self.combo = QComboBox()
        self.combo.setToolTip("Use an image layer of the viewer (a dropped folder becomes one)")
        self.combo.activated.connect(self._on_combo)
        self.folder_btn = QPushButton("Folder…")
        self.folder_btn.setToolTip("Use every image of a folder (read lazily, not shown)")
        self.folder_btn.clicked.connect(self._browse)
        self.status = QLabel()
        self.status.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.combo, 1)
        row.addWidget(self.folder_btn)
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addWidget(self.status)

    def _on_combo(self, index: int) -> None:
        name = self.combo.itemText(index)
        self.owner.choose_layer(self.role, None if index == 0 else name)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, f"Folder of {ROLES[self.role].lower()}")
        if folder:
            self.owner.choose_folder(self.role, folder)


class DataWidget(QWidget):
    """Pick the source-domain and new-microscope images.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose shared state receives the choice.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.state: LmaddaState = get_state(napari_viewer)
        self._counts: dict[str, int] = {}  # folder -> number of image files
        self.pickers = {role: _RolePicker(role, self) for role in ROLES}
        hint = QLabel("Images without labels: the source domain the model was trained on, and "
                      "the new microscope's images. Drop a folder onto napari to open it.")
        hint.setWordWrap(True)
        hint.setStyleSheet("color: gray")
        layout = QVBoxLayout(self)
        for picker in self.pickers.values():
            layout.addWidget(picker)
        layout.addWidget(hint)
        layout.addStretch(1)

        events = napari_viewer.layers.events
        events.inserted.connect(self._on_layers_changed)
        events.removed.connect(self._on_layers_changed)
        events.reordered.connect(self._on_layers_changed)
        self.state.data_changed.connect(self._refresh_role)
        self._on_layers_changed()

    # ------------------------------------------------------------------ actions
    def choose_layer(self, role: str, name: str | None) -> None:
        """Use the image layer ``name`` for ``role`` (None clears the choice)."""
        self.state.set_selection(role, None if name is None else DataSelection("layer", name))

    def choose_folder(self, role: str, folder: str) -> bool:
        """Use every image of ``folder`` for ``role``; a bad folder shows an error.

        Returns
        -------
        bool
            True if the folder holds images.
        """
        from napari.utils.notifications import show_error

        from ..data.io import list_images

        try:
            n = len(list_images(folder))
        except LmaddaError as exc:
            show_error(f"{ROLES[role]}: {exc}")
            self.pickers[role].status.setText(f"<span style='color:#e06c6c'>{exc}</span>")
            return False
        self._counts[str(folder)] = n
        self.state.set_selection(role, DataSelection("folder", str(folder)))
        return True

    # ------------------------------------------------------------------ display
    def _image_layer_names(self) -> list[str]:
        from napari.layers import Image

        return [ly.name for ly in self.viewer.layers
                if isinstance(ly, Image) and not getattr(ly, "rgb", False)]

    def _on_layers_changed(self, event: Any = None) -> None:
        names = self._image_layer_names()
        for ly in self.viewer.layers:  # follow renames
            ly.events.name.disconnect(self._on_layers_changed)
            ly.events.name.connect(self._on_layers_changed)
        for role, picker in self.pickers.items():
            picker.combo.blockSignals(True)
            picker.combo.clear()
            picker.combo.addItems([_NO_LAYER, *names])
            picker.combo.blockSignals(False)
            self._refresh_role(role)

    def _refresh_role(self, role: str) -> None:
        picker = self.pickers[role]
        sel = self.state.selections.get(role)
        if sel is None:
            picker.combo.setCurrentIndex(0)
            picker.status.setText("<span style='color:gray'>not chosen</span>")
        elif sel.kind == "layer":
            idx = picker.combo.findText(sel.value)
            picker.combo.setCurrentIndex(max(idx, 0))
            if idx < 0:
                picker.status.setText(f"<span style='color:#e06c6c'>layer '{sel.value}' "
                                      "is not in the viewer</span>")
            else:
                shape = self.viewer.layers[sel.value].data.shape
                n = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
                picker.status.setText(f"{n} image(s) of {shape[-2]}×{shape[-1]} px")
        else:
            picker.combo.setCurrentIndex(0)
            n = self._counts.get(sel.value)
            count = f"{n} image file(s)" if n is not None else "image files"
            picker.status.setText(f"folder '{Path(sel.value).name}': {count}")
            picker.status.setToolTip(sel.value)
