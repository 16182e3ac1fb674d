"""The Model widget: load a project model, a pix2pix ``latest_net_G.pth`` or the demo model.

It shows the architecture and a table of the UNet's layers (index, name, kind, channels, size
for a chosen input size, trainable parameters), the numbers the Adapt widget's layer slider
refers to.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..errors import LmaddaError
from .state import channel_names, get_state

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["ModelWidget", "load_into_state", "DEMO"]

DEMO = "demo"
_COLUMNS = ("#", "name", "kind", "channels", "size", "params")
_RIGHT = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter


def load_into_state(viewer: napari.Viewer, path: str) -> bool:
    """Load a model file (or ``"demo"``) into the viewer's shared state.

    Problems are shown as a napari error notification, never raised.

    Parameters
    ----------
    viewer : napari.Viewer
        Whose state gets the model.
    path : str
        Model file path, or ``"demo"`` for the bundled demo model.

    Returns
    -------
    bool
        True if the model was loaded.
    """
    from napari.utils.notifications import show_error, show_info, show_warning

    from ..models.checkpoint import load_model

    state = get_state(viewer)
    if state.busy:
        show_warning("Wait for the running adaptation or prediction to end before loading "
                     "another model")
        return False
    try:
        if path == DEMO:
            from ..assets import demo_model_path

            file, label = demo_model_path(), "demo model"
        else:
            file = Path(path).expanduser()
            label = file.name
        model = load_model(file, device="cpu")
    except LmaddaError as exc:
        show_error(f"Model not loaded: {exc}")
        return False
    state.set_model(model, label, Path(file))
    show_info(f"Loaded {state.model_summary()}")
    return True


def _provenance_text(meta: dict[str, Any]) -> str:
    prov = dict(meta.get("provenance") or {})
    keep = [f"{k}: {prov[k]}" for k in ("source", "method", "layers", "library") if k in prov]
    return "; ".join(keep)


class ModelWidget(QWidget):
    """Load a model and show its layers.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose shared state receives the model.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)

        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("model .pt or pix2pix latest_net_G.pth")
        self.path_edit.returnPressed.connect(self._load_typed)
        self.browse_btn = QPushButton("Browse…")
        self.browse_btn.setToolTip("Load a napari-lmadda model or a pix2pix latest_net_G.pth")
        self.browse_btn.clicked.connect(self._browse)
        self.demo_btn = QPushButton("Demo model")
        self.demo_btn.setToolTip("The bundled demo model (synthetic phase contrast -> DAPI, CD29)")
        self.demo_btn.clicked.connect(lambda: self.load(DEMO))

        self.info = QLabel()
        self.info.setWordWrap(True)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.size_spin = QSpinBox()
        self.size_spin.setRange(1, 65536)
        self.size_spin.setValue(256)
        self.size_spin.setSuffix(" px")
        self.size_spin.setToolTip("Input image side the layer sizes are computed for")
        self.size_spin.valueChanged.connect(self._fill_table)

        self.table = QTableWidget(0, len(_COLUMNS))
        self.table.setHorizontalHeaderLabels(_COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)

        row = QHBoxLayout()
        row.addWidget(self.path_edit, 1)
        row.addWidget(self.browse_btn)
        row.addWidget(self.demo_btn)
        form = QFormLayout()
        form.addRow("Layer sizes for input", self.size_spin)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.info)
        layout.addLayout(form)
        layout.addWidget(self.table, 1)

        self.state.model_changed.connect(self._on_model_changed)
        self._on_model_changed(self.state.model)

    # ------------------------------------------------------------------ actions
    def load(self, path: str) -> bool:
        """Load a model file or ``"demo"`` (errors become notifications).

        Parameters
        ----------
        path : str
            File path or ``"demo"``.

        Returns
        -------
        bool
            True on success.
        """
        self.info.setText("Loading…")
        ok = load_into_state(self.viewer, path)
        if not ok:
            self._on_model_changed(self.state.model)
        return ok

    def _load_typed(self) -> None:
        text = self.path_edit.text().strip()
        if text:
            self.load(text)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Load a model", "", "Model files (*.pt *.pth);;All files (*)"
        )
        if path:
            self.path_edit.setText(path)
            self.load(path)

    # ------------------------------------------------------------------ display
    def _on_model_changed(self, model: Any) -> None:
        if model is None:
            self.info.setText("No model loaded. Browse for a model file or use the demo model.")
            self.table.setRowCount(0)
            return
        if self.state.model_path is not None and self.state.model_label != "demo model":
            self.path_edit.setText(str(self.state.model_path))
        m = model.min_size
        self.size_spin.blockSignals(True)
        self.size_spin.setSingleStep(m)
        self.size_spin.setMinimum(m)
        self.size_spin.setValue(max(m, (self.size_spin.value() // m) * m))
        self.size_spin.blockSignals(False)
        cfg = model.config
        lines = [
            f"<b>{self.state.model_label}</b>",
            f"UNet: {cfg.in_channels} → {cfg.out_channels} channels "
            f"({', '.join(channel_names(model))}), {cfg.num_downs} down blocks, ngf {cfg.ngf}, "
            f"{cfg.norm} norm; {model.num_layers} layers; input sides: multiples of {m} px",
        ]
        prov = _provenance_text(getattr(model, "meta", {}) or {})
        if prov:
            lines.append(f"<span style='color:gray'>{prov}</span>")
        self.info.setText("<br>".join(lines))
        self._fill_table()

    def _fill_table(self) -> None:
        model = self.state.model
        if model is None:
            return
        infos = model.describe_layers(int(self.size_spin.value()))
        self.table.setRowCount(len(infos))
        for r, li in enumerate(infos):
            values = (li.index, li.name, li.kind, li.channels, f"{li.height}×{li.width}",
                      f"{li.trainable_params:,}")
            for c, v in enumerate(values):
                item = QTableWidgetItem(str(v))
                if c in (0, 3, 5):
                    item.setTextAlignment(_RIGHT)
                self.table.setItem(r, c, item)
