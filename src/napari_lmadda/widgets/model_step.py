"""Step 1, Model: load a model file, the demo model, or train one from paired images.

It shows the architecture and a table of the UNet's layers (index, name, kind, channels, size
for a chosen input size, trainable parameters), the numbers the Adapt step's layer slider
refers to. "Train a source model…" opens the training panel in place of the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..errors import LmaddaError
from .messages import notify
from .state import channel_names, get_state, unwrap
from .train_panel import TrainPanel

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["ModelStep", "load_into_state", "DEMO"]

DEMO = "demo"
_COLUMNS = ("#", "name", "kind", "channels", "size", "params")
_RIGHT = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter


def load_into_state(viewer: napari.Viewer, path: str) -> bool:
    """Load a model file (or ``"demo"``) into the viewer's shared state.

    Problems are shown in the dock and as a napari notification, never raised.

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
    from ..models.checkpoint import load_model

    state = get_state(viewer)
    if state.busy:
        notify(state, "warning", "Wait for the running task to end (or stop it) before "
                                 "loading another model")
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
        notify(state, "error", f"Model not loaded: {exc}")
        return False
    state.set_model(model, label, Path(file))
    notify(state, "info", f"Loaded {state.model_summary()}", toast=False)
    return True


def _provenance_text(meta: dict[str, Any]) -> str:
    prov = dict(meta.get("provenance") or {})
    keep = [f"{k}: {prov[k]}" for k in ("source", "method", "layers", "library") if k in prov]
    return "; ".join(keep)


class ModelStep(QWidget):
    """Load a model (file, demo, or trained here) and show its layers.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose shared state receives the model.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = unwrap(napari_viewer)
        self.state = get_state(napari_viewer)

        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("model .pt, pix2pix latest_net_G.pth or "
                                          "bioimage.io .zip")
        self.path_edit.returnPressed.connect(self._load_typed)
        self.browse_btn = QPushButton("Browse…")
        self.browse_btn.setToolTip("Load a napari-lmadda model, a pix2pix latest_net_G.pth or "
                                   "a bioimage.io package of a pix2pix-style UNet (read as "
                                   "data: its code is not run)")
        self.browse_btn.clicked.connect(self._browse)
        self.demo_btn = QPushButton("Demo model")
        self.demo_btn.setToolTip("The bundled demo model (synthetic phase contrast -> DAPI, CD29)")
        self.demo_btn.clicked.connect(lambda: self.load(DEMO))
        self.train_btn = QPushButton("Train a source model…")
        self.train_btn.setToolTip("Train the model from paired images (e.g. phase contrast and "
                                  "DAPI of the same fields), as lmadda train-source does")
        self.train_btn.clicked.connect(self.open_training)

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
        self.table.verticalHeader().setDefaultSectionSize(20)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMinimumHeight(120)

        self.training = TrainPanel(napari_viewer)
        self.training.closed.connect(self.close_training)

        row = QHBoxLayout()
        row.addWidget(self.path_edit, 1)
        row.addWidget(self.browse_btn)
        others = QHBoxLayout()
        others.addWidget(self.demo_btn)
        others.addWidget(self.train_btn)
        others.addStretch(1)
        sizes = QHBoxLayout()
        sizes.addWidget(QLabel("Layer sizes for an input of"))
        sizes.addWidget(self.size_spin)
        sizes.addStretch(1)
        view = QWidget()
        view_layout = QVBoxLayout(view)
        view_layout.setContentsMargins(0, 0, 0, 0)
        view_layout.addLayout(row)
        view_layout.addLayout(others)
        view_layout.addWidget(self.info)
        view_layout.addLayout(sizes)
        view_layout.addWidget(self.table, 1)
        self.pages = QStackedWidget()
        self.pages.addWidget(view)
        self.pages.addWidget(self.training)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 0, 0, 0)
        layout.addWidget(self.pages)

        self.state.model_changed.connect(self._on_model_changed)
        self.state.busy_changed.connect(self._on_busy)
        self._on_model_changed(self.state.model)

    # ------------------------------------------------------------------ actions
    def load(self, path: str) -> bool:
        """Load a model file or ``"demo"`` (errors are shown in the dock).

        Parameters
        ----------
        path : str
            File path or ``"demo"``.

        Returns
        -------
        bool
            True on success.
        """
        ok = load_into_state(self.viewer, path)
        if not ok:
            self._on_model_changed(self.state.model)
        return ok

    def open_training(self) -> None:
        """Show the training panel in place of the model's table."""
        self.pages.setCurrentWidget(self.training)

    def close_training(self) -> None:
        """Back to the model view (a running training keeps running)."""
        self.pages.setCurrentIndex(0)

    @property
    def training_open(self) -> bool:
        """Whether the training panel is shown."""
        return self.pages.currentWidget() is self.training

    def _load_typed(self) -> None:
        text = self.path_edit.text().strip()
        if text:
            self.load(text)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Load a model", "",
            "Model files (*.pt *.pth *.zip rdf.yaml *.bioimageio.yaml);;All files (*)"
        )
        if path:
            self.path_edit.setText(path)
            self.load(path)

    # ------------------------------------------------------------------ display
    def summary(self) -> str:
        """One line for the step's header."""
        m = self.state.model
        if m is None:
            return "no model loaded"
        return (f"{self.state.model_label} · {m.num_layers} layers · "
                f"{', '.join(channel_names(m))}")

    def _on_busy(self, busy: bool) -> None:
        for w in (self.path_edit, self.browse_btn, self.demo_btn):
            w.setEnabled(not busy)

    def _on_model_changed(self, model: Any) -> None:
        if model is None:
            self.info.setText("No model loaded. Browse for a model file, use the demo model, "
                              "or train one from paired images.")
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
            f"<b>{self.state.model_label}</b>: UNet {cfg.in_channels} → {cfg.out_channels} "
            f"({', '.join(channel_names(model))}), {cfg.num_downs} down blocks, ngf "
            f"{cfg.ngf}, {cfg.norm} norm; {model.num_layers} layers; input sides: multiples "
            f"of {m} px",
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
