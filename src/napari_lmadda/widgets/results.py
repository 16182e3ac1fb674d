"""The Results panel: virtual stains of the new-microscope images, and export.

Each marker of each model becomes its own image layer over the input, in a colour that suits
it (DAPI blue, CD29 green), with additive blending, named after the model, e.g.
``DAPI [lmadda L2]`` and ``DAPI [unadapted]`` for comparison. Re-running replaces those layers
or adds new ones. The adapted model can be saved, and the stain layers written to TIFF.

With "Trust map" ticked, a prediction is followed by the per-pixel spread of several
predictions of the first model (MC dropout, or flips and rotations for a model without
dropout; :func:`~.inference.uncertainty.trust_map`), one ``magma`` layer per marker, e.g.
``CD29 trust [lmadda L10]``: dark where the stain can be trusted, bright where it cannot.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
)

from ..errors import LmaddaError
from . import worker as workers
from .data import ImageSet, images_for_prediction
from .state import LmaddaState, channel_names, get_state

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["ResultsPanel", "stain_colormap", "stain_layer_name", "trust_layer_name",
           "UNADAPTED", "TRUST_SAMPLES"]

UNADAPTED = "unadapted"
_MARKER_COLOURS = {"dapi": "blue", "hoechst": "blue", "cd29": "green"}
_OTHER_COLOURS = ("magenta", "yellow", "cyan", "red")
REPLACE, ADD = "replace them", "add new layers"
#: stochastic passes per image for a trust map
TRUST_SAMPLES = 8


def stain_colormap(marker: str, index: int = 0) -> str:
    """Return the napari colormap for a marker (DAPI blue, CD29 green, others in turn)."""
    return _MARKER_COLOURS.get(marker.strip().lower(),
                               _OTHER_COLOURS[index % len(_OTHER_COLOURS)])


def stain_layer_name(marker: str, tag: str, image_set: str | None = None) -> str:
    """Layer name of a virtual stain, e.g. ``DAPI [lmadda L2]``."""
    name = f"{marker} [{tag}]"
    return f"{name} {image_set}" if image_set else name


def trust_layer_name(marker: str, tag: str, image_set: str | None = None) -> str:
    """Layer name of a trust map, e.g. ``CD29 trust [lmadda L10]``."""
    return stain_layer_name(f"{marker} trust", tag, image_set)


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "stain"


class ResultsPanel(QGroupBox):
    """Predict the new-microscope images and export the results.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Viewer to add the stain layers to.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__("Results")
        self.viewer = napari_viewer
        self.state: LmaddaState = get_state(napari_viewer)
        self.task: workers.Task | None = None
        self.last_layers: list[str] = []
        self.device = "auto"

        self.predict_btn = QPushButton("Show virtual stains")
        self.predict_btn.setToolTip("Predict the new-microscope images with the adapted model")
        self.predict_btn.clicked.connect(self.predict)
        self.compare_check = QCheckBox("also the unadapted model")
        self.compare_check.setChecked(True)
        self.auto_check = QCheckBox("show stains when a run ends")
        self.auto_check.setChecked(True)
        self.trust_check = QCheckBox("Trust map")
        self.trust_check.setToolTip(
            "After a prediction, also show where the stain can be trusted: the per-pixel "
            f"spread of {TRUST_SAMPLES} predictions (MC dropout, or flips and rotations for a "
            "model without dropout); bright = uncertain")
        self.last_trust_layers: list[str] = []
        self.mode_combo = QComboBox()
        self.mode_combo.addItems([REPLACE, ADD])
        self.mode_combo.setToolTip("What re-running does to stain layers of the same name")
        self.save_btn = QPushButton("Save adapted model…")
        self.save_btn.clicked.connect(self._ask_save_model)
        self.export_btn = QPushButton("Write stains to TIFF…")
        self.export_btn.clicked.connect(self._ask_export)
        self.status = QLabel()
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Existing stain layers", self.mode_combo)
        row = QHBoxLayout()
        row.addWidget(self.predict_btn)
        row.addWidget(self.compare_check)
        export_row = QHBoxLayout()
        export_row.addWidget(self.save_btn)
        export_row.addWidget(self.export_btn)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        checks = QHBoxLayout()
        checks.addWidget(self.auto_check)
        checks.addWidget(self.trust_check)
        checks.addStretch(1)
        layout.addLayout(checks)
        layout.addLayout(form)
        layout.addLayout(export_row)
        layout.addWidget(self.status)

        for sig in (self.state.model_changed, self.state.adapted_changed, self.state.busy_changed,
                    self.state.data_changed):
            sig.connect(self._update_enabled)
        self._update_enabled()

    # ------------------------------------------------------------------ prediction
    def models_to_run(self) -> list[tuple[str, Any]]:
        """``(tag, model)`` pairs: the adapted model and, if asked or alone, the unadapted one."""
        out: list[tuple[str, Any]] = []
        if self.state.adapted is not None:
            out.append((self.state.adapted.tag, self.state.adapted.model))
        if out and out[0][0] == UNADAPTED:  # method "none"
            return out
        if self.state.model is not None and (self.compare_check.isChecked() or not out):
            out.append((UNADAPTED, self.state.model))
        return out

    def predict(self) -> bool:
        """Predict the new-microscope images in the background; layers appear when done.

        Returns
        -------
        bool
            True if the prediction started.
        """
        from napari.utils.notifications import show_error

        if self.state.busy:
            return False
        models = self.models_to_run()
        if not models:
            show_error("Load a model first (Model widget)")
            return False
        try:
            sets = images_for_prediction(self.viewer)
        except LmaddaError as exc:
            show_error(f"Cannot predict: {exc}")
            self.status.setText(f"<span style='color:#e06c6c'>{exc}</span>")
            return False
        self._sets = sets
        self._tags = [t for t, _ in models]
        self._trust_model = models[0] if self.trust_check.isChecked() else None
        self._predicted = False
        self.state.set_busy(True)
        self.status.setText("Predicting…")
        stacks = [s.stack for s in sets]
        task = workers.start(
            lambda cancel: workers.predict_messages(models, stacks, device=self.device,
                                                    cancel=cancel),
            self._on_message,
            self._on_done,
        )
        self.task = None if task.done else task
        return True

    def _on_message(self, msg: Any) -> None:
        from napari.utils.notifications import show_error

        if isinstance(msg, workers.PredictProgress):
            self.status.setText(f"Predicting… {msg.done} / {msg.total} images")
        elif isinstance(msg, workers.PredictDone):
            self.show_stains(msg.outputs)
            self._predicted = True
        elif isinstance(msg, workers.RunFailed):
            show_error(f"Prediction failed: {msg.message}")
            self.status.setText(f"<span style='color:#e06c6c'>{msg.message}</span>")

    def _on_done(self) -> None:
        self.task = None
        trust, self._trust_model = getattr(self, "_trust_model", None), None
        if trust is not None and getattr(self, "_predicted", False):
            self._start_trust(*trust)  # the panel stays busy until the maps are shown
        else:
            self.state.set_busy(False)

    # ------------------------------------------------------------------ trust map
    def _start_trust(self, tag: str, model: Any) -> None:
        self._trust_tag = tag
        self.state.set_busy(True)
        self._trust_status = self.status.text()
        self.status.setText(f"{self._trust_status}<br>Trust map…")
        stacks = [s.stack for s in self._sets]
        task = workers.start(
            lambda cancel: workers.trust_messages(model, stacks, n_samples=TRUST_SAMPLES,
                                                  device=self.device, cancel=cancel),
            self._on_trust_message,
            self._on_trust_done,
        )
        self.task = None if task.done else task

    def _on_trust_message(self, msg: Any) -> None:
        from napari.utils.notifications import show_error

        if isinstance(msg, workers.TrustProgress):
            self.status.setText(f"{self._trust_status}<br>Trust map… {msg.done} / {msg.total}"
                                " images")
        elif isinstance(msg, workers.TrustDone):
            self.show_trust(msg.maps, self._trust_tag, msg.method, msg.n_samples)
        elif isinstance(msg, workers.RunFailed):
            show_error(f"Trust map failed: {msg.message}")
            self.status.setText(f"{self._trust_status}<br><span style='color:#e06c6c'>"
                                f"trust map: {msg.message}</span>")

    def _on_trust_done(self) -> None:
        self.task = None
        self.state.set_busy(False)

    def show_trust(self, maps: dict[int, np.ndarray], tag: str, method: str,
                   n_samples: int) -> list[str]:
        """Add (or replace) one trust-map layer per marker and image set.

        The layers use the ``magma`` colormap with additive blending, so a trustworthy
        (dark) region leaves the stains below visible; the first marker's map is shown, the
        others are hidden (eye icon).

        Parameters
        ----------
        maps : dict
            ``{set_index: (N, C, H, W)}`` standard deviations from
            :func:`~.worker.trust_messages`.
        tag : str
            Tag of the model the maps belong to (``lmadda L10``, ``unadapted``).
        method : str
            How the predictions were varied (``mc_dropout`` or ``tta``).
        n_samples : int
            Predictions per image.

        Returns
        -------
        list of str
            Names of the layers shown.
        """
        model = self.state.model
        markers = channel_names(model) if model is not None else []
        replace = self.mode_combo.currentText() == REPLACE
        adapted = self.state.adapted
        shown: list[str] = []
        for i, iset in enumerate(self._sets):
            out = maps.get(i)
            if out is None:
                continue
            suffix = iset.name if len(self._sets) > 1 else None
            for c in range(out.shape[1]):
                marker = markers[c] if c < len(markers) else f"channel {c}"
                data = out[:, c]
                if iset.squeeze:
                    data = data[0]
                meta = {"lmadda": {
                    "kind": "trust map",
                    "model": self.state.model_label,
                    "tag": tag,
                    "method": ("none" if tag == UNADAPTED or adapted is None
                               else adapted.result.method),
                    "uncertainty_method": method,
                    "n_samples": int(n_samples),
                    "units": "standard deviation of the stain",
                    "channel": marker,
                    "input": iset.name,
                }}
                hi = float(np.percentile(data, 99.8)) if data.size else 1.0
                shown.append(self._put_layer(
                    trust_layer_name(marker, tag, suffix), data, meta, "magma", iset, replace,
                    visible=c == 0, limits=(0.0, hi if hi > 0 else 1.0)))
        self.last_trust_layers = shown
        how = {"mc_dropout": "MC dropout", "tta": "flips and rotations"}.get(method, method)
        self.status.setText(
            f"{self._trust_status}<br>{len(shown)} trust-map layer(s): spread of {n_samples} "
            f"predictions ({how}); bright = uncertain")
        return shown

    def show_stains(self, outputs: dict[tuple[str, int], np.ndarray]) -> list[str]:
        """Add (or replace) one image layer per marker, model and image set.

        Parameters
        ----------
        outputs : dict
            ``{(tag, set_index): (N, C, H, W)}`` from :func:`~.worker.predict_messages`.

        Returns
        -------
        list of str
            Names of the layers shown.
        """
        model = self.state.model
        markers = channel_names(model) if model is not None else []
        replace = self.mode_combo.currentText() == REPLACE
        adapted = self.state.adapted
        shown: list[str] = []
        for i, iset in enumerate(self._sets):
            self._ensure_input_layer(iset, replace)
            suffix = iset.name if len(self._sets) > 1 else None
            for tag in self._tags:
                out = outputs.get((tag, i))
                if out is None:
                    continue
                for c in range(out.shape[1]):
                    marker = markers[c] if c < len(markers) else f"channel {c}"
                    data = out[:, c]
                    if iset.squeeze:
                        data = data[0]
                    meta = {"lmadda": {
                        "model": self.state.model_label,
                        "tag": tag,
                        "method": "none" if tag == UNADAPTED else adapted.result.method,
                        "layers": [] if tag == UNADAPTED else list(adapted.result.layers),
                        "best_step": None if tag == UNADAPTED else adapted.result.best_step,
                        "channel": marker,
                        "input": iset.name,
                    }}
                    name = stain_layer_name(marker, tag, suffix)
                    shown.append(self._put_layer(
                        name, data, meta, stain_colormap(marker, c), iset, replace,
                        visible=tag != UNADAPTED or len(self._tags) == 1))
        self.last_layers = shown
        self._update_enabled()
        n_img = sum(len(s.stack) for s in self._sets)
        self.status.setText(
            f"{len(shown)} stain layer(s) for {n_img} image(s)"
            + ("; [unadapted] ones hidden (eye icon to compare)"
               if UNADAPTED in self._tags and len(self._tags) > 1 else "")
        )
        return shown

    def _ensure_input_layer(self, iset: ImageSet, replace: bool) -> None:
        if iset.input_layer is not None and iset.input_layer in self.viewer.layers:
            return
        name = iset.name
        if replace and name in self.viewer.layers:
            self.viewer.layers[name].data = iset.stack
        else:
            layer = self.viewer.add_image(iset.stack, name=name, colormap="gray")
            name = layer.name
        iset.input_layer = name

    def _put_layer(self, name: str, data: np.ndarray, meta: dict, colormap: str,
                   iset: ImageSet, replace: bool, visible: bool,
                   limits: tuple[float, float] | None = None) -> str:
        kwargs = {k: v[-data.ndim:] for k, v in iset.layer_kwargs.items()}
        if limits is None:
            # stains are mostly background: start at the 1st percentile so it shows dark
            lo, hi = ((float(v) for v in np.percentile(data, (1.0, 99.8))) if data.size
                      else (0.0, 1.0))
            limits = (lo, hi if hi > lo else lo + 1.0)
        if replace and name in self.viewer.layers:
            layer = self.viewer.layers[name]
            if layer.data.shape == data.shape:
                layer.data = data
                layer.metadata = {**layer.metadata, **meta}
                layer.contrast_limits = limits
                return name
            self.viewer.layers.remove(name)
        layer = self.viewer.add_image(
            data, name=name, colormap=colormap, blending="additive", metadata=meta,
            contrast_limits=limits, visible=visible, **kwargs)
        return layer.name

    # ------------------------------------------------------------------ export
    def save_adapted_model(self, path: str | Path, overwrite: bool = False) -> Path | None:
        """Save the adapted model (over an existing file only with ``overwrite``).

        Returns
        -------
        Path or None
            The written file, or None after showing why not.
        """
        from napari.utils.notifications import show_error, show_info

        from ..models.checkpoint import save_model

        adapted = self.state.adapted
        if adapted is None:
            show_error("Nothing to save: run an adaptation first")
            return None
        path = Path(path)
        if path.suffix.lower() not in (".pt", ".pth"):
            path = path.with_suffix(".pt")
        if path.exists() and not overwrite:
            show_error(f"Not saved: '{path}' already exists (choose another name)")
            return None
        try:
            prov = {**adapted.result.provenance, "adapted_from": self.state.model_label}
            written = save_model(adapted.model, path, provenance=prov)
        except LmaddaError as exc:
            show_error(f"Not saved: {exc}")
            return None
        show_info(f"Saved the adapted model to '{written}'")
        return Path(written) if written is not None else path

    def export_stains(self, folder: str | Path) -> list[Path]:
        """Write the last shown stain layers to ``folder`` as TIFF (never overwriting).

        Returns
        -------
        list of Path
            Files written (empty after showing why nothing was).
        """
        from napari.utils.notifications import show_error, show_info

        from ..data.io import write_tiff

        names = [n for n in self.last_layers if n in self.viewer.layers]
        if not names:
            show_error("No stain layers to write: show the virtual stains first")
            return []
        folder = Path(folder)
        targets = {n: folder / f"{_safe_filename(n)}.tif" for n in names}
        existing = [p for p in targets.values() if p.exists()]
        if existing:
            show_error(f"Nothing written: '{existing[0]}' already exists "
                       f"({len(existing)} file(s) would be overwritten)")
            return []
        written: list[Path] = []
        try:
            for name, path in targets.items():
                layer = self.viewer.layers[name]
                meta = {**layer.metadata.get("lmadda", {}), "layer": name,
                        "scale": list(layer.scale), "translate": list(layer.translate)}
                written.append(write_tiff(path, np.asarray(layer.data), metadata=meta))
        except LmaddaError as exc:
            show_error(f"Writing stopped: {exc}")
        if written:
            show_info(f"Wrote {len(written)} TIFF file(s) to '{folder}'")
        return written

    def _ask_save_model(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the adapted model", "adapted.pt",
                                              "Model files (*.pt)")
        if path:  # the dialog already asked before replacing a file
            self.save_adapted_model(path, overwrite=True)

    def _ask_export(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for the stain TIFFs")
        if folder:
            self.export_stains(folder)

    # ------------------------------------------------------------------ state
    def _update_enabled(self, *_: Any) -> None:
        busy = self.state.busy
        has_model = self.state.model is not None
        self.predict_btn.setEnabled(not busy and has_model)
        self.trust_check.setEnabled(not busy)
        self.save_btn.setEnabled(not busy and self.state.adapted is not None)
        self.export_btn.setEnabled(not busy and bool(self.last_layers))
