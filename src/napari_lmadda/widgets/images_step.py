"""Step 2, Images: the source-domain images and the new microscope's images.

Each set is an image layer of the viewer (a dropped folder becomes one) or a folder picked
here (read lazily, not shown). A picked folder is counted by reading every file's header:
the status says how many images can be used and names the files that cannot. A folder that
cannot be used leaves the set unchosen (never the previous choice silently in place).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGridLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import LmaddaError
from .image_sets import FolderSummary, describe_folder
from .messages import notify
from .sizing import compact_combo
from .state import ROLES, DataSelection, LmaddaState, get_state, unwrap

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["ImagesStep"]

_NO_LAYER = "— choose an image layer —"
_RED = "#e06c6c"
_SHORT = {"source": "Source domain", "target": "New microscope"}


class _RolePicker:
    """Layer combo box, folder button and a status line for one image set."""

    def __init__(self, role: str, owner: ImagesStep) -> None:
        self.role, self.owner = role, owner
        self.combo = compact_combo(QComboBox())
        self.combo.setToolTip("Use an image layer of the viewer (a dropped folder becomes one)")
        self.combo.activated.connect(self._on_combo)
        self.folder_btn = QPushButton("Folder…")
        self.folder_btn.setToolTip("Use every image of a folder (read lazily, not shown)")
        self.folder_btn.clicked.connect(self._browse)
        self.status = QLabel()
        self.status.setWordWrap(True)

    def _on_combo(self, index: int) -> None:
        name = self.combo.itemText(index)
        self.owner.choose_layer(self.role, None if index == 0 else name)

    def _browse(self) -> None:
        what = ROLES[self.role].lower()
        folder = QFileDialog.getExistingDirectory(self.combo, f"Folder of {what}")
        if folder:
            self.owner.choose_folder(self.role, folder)


class ImagesStep(QWidget):
    """Pick the source-domain and new-microscope images.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose shared state receives the choice.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = unwrap(napari_viewer)
        self.state: LmaddaState = get_state(napari_viewer)
        self.folders: dict[str, FolderSummary] = {}
        self.errors: dict[str, str] = {}
        self.pickers = {role: _RolePicker(role, self) for role in ROLES}
        hint = QLabel("No labels needed: the images the model was trained on (source) and "
                      "the new microscope's. Drop a folder onto napari to open it as a layer.")
        hint.setWordWrap(True)
        hint.setStyleSheet("color: gray")
        grid = QGridLayout()
        grid.setVerticalSpacing(2)
        for i, (role, picker) in enumerate(self.pickers.items()):
            grid.addWidget(QLabel(f"<b>{_SHORT[role]}</b>"), 2 * i, 0)
            grid.addWidget(picker.combo, 2 * i, 1)
            grid.addWidget(picker.folder_btn, 2 * i, 2)
            grid.addWidget(picker.status, 2 * i + 1, 1, 1, 2)
        grid.setColumnStretch(1, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 0, 0, 0)
        layout.addLayout(grid)
        layout.addWidget(hint)

        events = napari_viewer.layers.events
        events.inserted.connect(self._on_layers_changed)
        events.removed.connect(self._on_layers_changed)
        events.reordered.connect(self._on_layers_changed)
        self.state.data_changed.connect(self._refresh_role)
        self._on_layers_changed()

    # ------------------------------------------------------------------ actions
    def choose_layer(self, role: str, name: str | None) -> None:
        """Use the image layer ``name`` for ``role`` (None clears the choice)."""
        self.errors.pop(role, None)
        self.state.set_selection(role, None if name is None else DataSelection("layer", name))
        self._refresh_role(role)

    def choose_folder(self, role: str, folder: str) -> bool:
        """Use every image of ``folder`` for ``role``; a folder that cannot be used unsets it.

        Returns
        -------
        bool
            True if the folder holds readable images.
        """
        try:
            summary = describe_folder(folder)
        except LmaddaError as exc:
            self.errors[role] = str(exc)
            self.state.set_selection(role, None)
            self._refresh_role(role)
            notify(self.state, "error", f"{ROLES[role]}: {exc}; nothing chosen")
            return False
        self.errors.pop(role, None)
        self.folders[str(folder)] = summary
        self.state.set_selection(role, DataSelection("folder", str(folder)))
        self._refresh_role(role)
        if summary.unreadable:
            notify(self.state, "warning", f"{ROLES[role]}: {summary.describe()}")
        return True

    # ------------------------------------------------------------------ display
    def summary(self) -> str:
        """One line for the step's header."""
        parts = []
        for role in ROLES:
            sel = self.state.selections.get(role)
            parts.append(f"{_SHORT[role].lower()}: {sel.describe() if sel else '—'}")
        return " · ".join(parts)

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
        picker.status.setToolTip("")
        if sel is None:
            picker.combo.setCurrentIndex(0)
            error = self.errors.get(role)
            picker.status.setText(f"<span style='color:{_RED}'>{error}; nothing chosen</span>"
                                  if error else "<span style='color:gray'>not chosen</span>")
        elif sel.kind == "layer":
            idx = picker.combo.findText(sel.value)
            picker.combo.setCurrentIndex(max(idx, 0))
            if idx < 0:
                picker.status.setText(f"<span style='color:{_RED}'>layer '{sel.value}' "
                                      "is not in the viewer</span>")
            else:
                shape = self.viewer.layers[sel.value].data.shape
                n = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
                picker.status.setText(f"{n} image(s) of {shape[-2]}×{shape[-1]} px")
        else:
            picker.combo.setCurrentIndex(0)
            summary = self.folders.get(sel.value)
            text = summary.describe() if summary else f"folder '{Path(sel.value).name}'"
            if summary and summary.unreadable:
                text = text.replace("; ", f"; <span style='color:{_RED}'>", 1) + "</span>"
            picker.status.setText(text)
            picker.status.setToolTip(sel.value if not summary or not summary.unreadable else
                                     sel.value + "\nunreadable:\n" +
                                     "\n".join(summary.unreadable))
