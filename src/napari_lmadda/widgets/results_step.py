"""Step 4, Results: the virtual stains of the new-microscope images, compared and exported.

Each marker of each model becomes its own image layer over the input, in a colour that suits
it (DAPI blue, CD29 green), with additive blending, named after the model, e.g.
``DAPI [lmadda L10]``, and ``DAPI [unadapted]`` for comparison (hidden: eye icon to
compare). The layers are the plugin's own, tied to the images and the result they were
computed from (:mod:`.stain_layers`): showing a result again updates its layers, a new run
gets new ones, and no layer the user brought is ever written to. The prediction can be one
pass or the average over flips and rotations (TTA); "Trust map" adds the per-pixel spread;
"Side by side" compares input, unadapted, adapted and ground truth in linked views.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from psygnal import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import LmaddaError
from . import worker as workers
from .image_sets import prediction_loader
from .messages import notify
from .side_by_side import Panels, SideBySide
from .sizing import compact_combo
from .stain_layers import UNADAPTED, OwnedLayers, ResultTag, input_spec, stain_specs, trust_specs
from .state import AdaptedModel, LmaddaState, channel_names, get_state, unwrap
from .throttle import Throttle

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["ResultsStep", "TRUST_SAMPLES", "TTA_SAMPLES", "PREDICTIONS"]

#: stochastic passes per image for a trust map
TRUST_SAMPLES = 8
#: orientations averaged by the TTA prediction
TTA_SAMPLES = 8
#: how a stain is predicted: label -> TTA on?
PREDICTIONS = {"one pass": False, f"average of {TTA_SAMPLES} flips/rotations (TTA)": True}
_RED = "#e06c6c"


def _result_tag(adapted: AdaptedModel) -> ResultTag:
    r = adapted.result
    return ResultTag(adapted.tag, f"run{adapted.run}@{adapted.model_serial}", adapted.run, {
        "method": r.method, "layers": list(r.layers), "best_step": r.best_step,
        "run": adapted.run, "stop_reason": r.reason.value})


class ResultsStep(QWidget):
    """Predict the new-microscope images, compare, and export.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Viewer to add the stain layers to.

    Signals
    -------
    shown(list)
        Stain layers were shown (their names).
    """

    shown = Signal(list)

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = unwrap(napari_viewer)
        self.state: LmaddaState = get_state(napari_viewer)
        self.owned = OwnedLayers(napari_viewer, self.state)
        self.side = SideBySide(napari_viewer)
        self.task: workers.Task | None = None
        self.last_layers: list[str] = []
        self.last_trust_layers: list[str] = []
        self.last_sets: list[Any] = []  # the inputs of the stains shown (ImageSet)
        self.last_export: list[Path] = []  # files written by the last export_stains
        # result key -> its model, for the files written from the stain layers
        self._result_models: dict[str, Any] = {}
        self._models_predicting: dict[str, Any] = {}
        self.device = "auto"
        self._adding = False
        self._finish_after_adding = False
        self._progress = Throttle(lambda text: self.set_status(text), self)

        self.result_combo = compact_combo(QComboBox())
        self.result_combo.setToolTip("Which adaptation result to show, save and export; "
                                     "every run that found a better state is kept")
        self.result_combo.activated.connect(self._on_result_chosen)
        self.predict_btn = QPushButton("Show virtual stains")
        self.predict_btn.setToolTip("Predict the new-microscope images with the chosen result")
        self.predict_btn.clicked.connect(self.predict)
        self.compare_check = QCheckBox("and the unadapted model's")
        self.compare_check.setChecked(True)
        self.auto_check = QCheckBox("show them when a run ends")
        self.auto_check.setChecked(True)
        self.prediction_combo = compact_combo(QComboBox())
        self.prediction_combo.addItems(list(PREDICTIONS))
        self.prediction_combo.setToolTip(
            f"TTA: predict each image in {TTA_SAMPLES} orientations (flips, 90° rotations), "
            "turn the predictions back and average them: smoother, less dependent on "
            f"orientation, {TTA_SAMPLES}× the time")
        self.trust_check = QCheckBox("trust map")
        self.trust_check.setToolTip(
            "After a prediction, also show where the stain can be trusted: the per-pixel "
            f"spread of {TRUST_SAMPLES} predictions (MC dropout, or flips and rotations for a "
            "model without dropout); bright = uncertain")
        self.side_btn = QPushButton("Side by side")
        self.side_btn.setCheckable(True)
        self.side_btn.setToolTip("Input, unadapted stain, adapted stain and ground truth (when "
                                 "loaded) in linked views with one contrast; click again for "
                                 "the overlay")
        self.side_btn.toggled.connect(self._on_side)
        self.marker_combo = compact_combo(QComboBox(), 6)
        self.marker_combo.setToolTip("The marker compared side by side")
        self.marker_combo.activated.connect(lambda *_: self._on_side(self.side_btn.isChecked()))
        self.save_btn = QPushButton("Save model…")
        self.save_btn.setToolTip("Save the chosen adapted model (with its provenance)")
        self.save_btn.clicked.connect(self._ask_save_model)
        self.export_btn = QPushButton("Write TIFFs…")
        self.export_btn.setToolTip("Write the shown stains as lmadda predict does: one "
                                   "calibrated ImageJ TIFF per input file, the markers as "
                                   "channels (never over existing files)")
        self.export_btn.clicked.connect(self._ask_export)
        self.bioimage_btn = QPushButton("Export to bioimage.io…")
        self.bioimage_btn.setToolTip(
            "Write the chosen model (adapted, or the loaded one) as a bioimage.io model package "
            "(a zip other tools can run: its normalisation, test images from the new "
            "microscope, provenance); validated as it is written")
        self.bioimage_btn.clicked.connect(self._ask_bioimageio)
        self.status = QLabel()
        self.status.setWordWrap(True)

        grid = QGridLayout()
        grid.setVerticalSpacing(3)
        grid.addWidget(QLabel("Result"), 0, 0)
        grid.addWidget(self.result_combo, 0, 1, 1, 2)
        grid.addWidget(QLabel("Prediction"), 1, 0)
        grid.addWidget(self.prediction_combo, 1, 1)
        grid.addWidget(self.trust_check, 1, 2)
        grid.setColumnStretch(1, 1)
        show = QHBoxLayout()
        show.addWidget(self.predict_btn)
        show.addWidget(self.compare_check)
        show.addStretch(1)
        checks = QHBoxLayout()
        checks.addWidget(self.auto_check)
        checks.addStretch(1)
        compare = QHBoxLayout()
        compare.addWidget(self.side_btn)
        compare.addWidget(self.marker_combo, 1)
        self.export_row = QHBoxLayout()
        self.export_row.addWidget(self.save_btn)
        self.export_row.addWidget(self.export_btn)
        bioimage_row = QHBoxLayout()
        bioimage_row.addWidget(self.bioimage_btn)
        bioimage_row.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 0, 0, 0)
        layout.setSpacing(4)
        layout.addLayout(grid)
        layout.addLayout(show)
        layout.addLayout(checks)
        layout.addLayout(compare)
        layout.addLayout(self.export_row)
        layout.addLayout(bioimage_row)
        layout.addWidget(self.status)

        for sig in (self.state.model_changed, self.state.busy_changed, self.state.data_changed):
            sig.connect(self._update_enabled)
        self.state.adapted_changed.connect(self._fill_results)
        self.state.model_changed.connect(self._on_model)
        self._on_model(self.state.model)

    # ------------------------------------------------------------------ results
    def models_to_run(self) -> list[tuple[ResultTag, Any]]:
        """The chosen result and, if asked or alone, the unadapted model (unadapted first)."""
        out: list[tuple[ResultTag, Any]] = []
        adapted = self.state.adapted
        if adapted is not None:
            out.append((_result_tag(adapted), adapted.model))
            if adapted.tag == UNADAPTED:  # method "none": the same as the unadapted model
                return out
        if self.state.model is not None and (self.compare_check.isChecked() or not out):
            unadapted = ResultTag(UNADAPTED, f"{UNADAPTED}@{self.state.model_serial}", 0,
                                  {"method": "none", "layers": [], "best_step": None})
            out.insert(0, (unadapted, self.state.model))
        return out

    def on_new_result(self, adapted: AdaptedModel) -> None:
        """A run produced ``adapted``: list it and, if asked, show its stains."""
        self._fill_results()
        if self.auto_check.isChecked():
            self.predict()

    def _fill_results(self, *_: Any) -> None:
        self.result_combo.clear()
        for adapted in reversed(self.state.runs):
            self.result_combo.addItem(adapted.describe(), adapted.run)
        if not self.state.runs:
            self.result_combo.addItem("none yet: the unadapted model", 0)
        current = self.state.adapted
        if current is not None:
            self.result_combo.setCurrentIndex(max(0, self.result_combo.findData(current.run)))
        self._update_enabled()

    def _on_result_chosen(self, index: int) -> None:
        run = self.result_combo.itemData(index)
        chosen = next((a for a in self.state.runs if a.run == run), None)
        if chosen is not None and chosen is not self.state.adapted:
            self.state.set_adapted(chosen)

    # ------------------------------------------------------------------ prediction
    def predict(self) -> bool:
        """Predict the new-microscope images in the background; layers appear when done.

        Returns
        -------
        bool
            True if the prediction started.
        """
        if self.state.busy:
            return False
        models = self.models_to_run()
        if not models:
            notify(self.state, "error", "Load a model first (Model step)")
            return False
        try:
            loader = prediction_loader(self.viewer)
        except LmaddaError as exc:
            notify(self.state, "error", f"Cannot predict: {exc}")
            self.set_status(str(exc), error=True)
            return False
        if self.side.active:
            self.side_btn.setChecked(False)
        tags = [t for t, _ in models]
        markers = channel_names(self.state.model)
        label = self.state.model_label
        tta = PREDICTIONS[self.prediction_combo.currentText()]
        how = f"TTA average of {TTA_SAMPLES}" if tta else "single pass"

        def prepare(outputs: dict, sets: list) -> list:
            specs = [input_spec(s) for s in sets if s.input_layer is None]
            return specs + stain_specs(outputs, sets, tags, markers, label, how)

        self._tags = tags
        self._models_predicting = {t.key: m for t, m in models}
        self._trust = (tags[-1], models[-1][1]) if self.trust_check.isChecked() else None
        self._predicted = None
        self.state.set_busy(True)
        self.set_status("Predicting…")
        task = workers.start(
            lambda cancel: workers.predict_messages(
                [(t.tag, m) for t, m in models], loader, device=self.device, tta=tta,
                prepare=prepare, cancel=cancel),
            self._on_message,
            self._on_done,
        )
        self.task = None if task.done else task
        return True

    def _on_message(self, msg: Any) -> None:
        if isinstance(msg, workers.PredictProgress):
            self._progress.push(f"Predicting… {msg.done} / {msg.total} images")
        elif isinstance(msg, workers.PredictDone):
            self._progress.reset()
            self._predicted = msg.sets
            self.show_specs(msg.prepared, msg.sets, msg.tta)
        elif isinstance(msg, workers.RunFailed):
            self._progress.reset()
            notify(self.state, "error", f"Prediction failed: {msg.message}")
            self.set_status(msg.message, error=True)

    def _on_done(self) -> None:
        self.task = None
        if self._adding:  # the stain layers are still going in: finish after them
            self._finish_after_adding = True
            return
        trust, self._trust = getattr(self, "_trust", None), None
        if trust is not None and self._predicted:
            self._start_trust(*trust)  # the step stays busy until the maps are shown
        else:
            self.state.set_busy(False)

    def show_specs(self, specs: list, sets: list, tta: bool = False) -> list[str]:
        """Show prepared stain layers; the others of the plugin are hidden, never changed.

        New layers go in one per turn of napari's event loop; :attr:`shown` is emitted (and
        the step is idle again) once they are all in.

        Returns
        -------
        list of str
            Names of the stain layers shown.
        """
        self._adding = True
        layers, new = self.owned.prepare(specs)
        stains = [ly for ly in layers if ly.metadata.get("lmadda", {}).get("kind") == "stain"]
        inputs = [ly for ly in layers if ly.metadata.get("lmadda", {}).get("kind") == "input"]
        several = len({t.key for t in self._tags}) > 1
        for ly in stains:  # the chosen result shown; the unadapted model's for comparison
            ly.visible = not (several and ly.metadata["lmadda"]["tag"] == UNADAPTED)
        this = {id(ly) for ly in stains}
        others = [ly for ly in self.owned.layers("stain") + self.owned.layers("trust")
                  if id(ly) not in this]
        hidden_before = sum(not ly.visible for ly in others)
        for ly in others:
            ly.visible = False
        for s in sets:  # the images the stains were computed from, under them
            name = s.input_layer or next((ly.name for ly in inputs
                                          if ly.metadata["lmadda"].get("input") == s.name), None)
            s.input_layer = name
            if name in self.viewer.layers:
                self.viewer.layers[name].visible = True
        self.last_sets = sets
        self._result_models.update(self._models_predicting)
        text = self._describe(stains, len(others) - hidden_before, sets, tta)
        self.set_status(text.replace(": showing", ": adding the layers… showing", 1))

        def added() -> None:
            self._adding = False
            self.last_layers = [ly.name for ly in stains]
            self._fill_markers()
            self.set_status(text)
            self._update_enabled()
            self.shown.emit(self.last_layers)
            if self._finish_after_adding:
                self._finish_after_adding = False
                self._on_done()

        self.owned.insert(new, done=added)
        return [ly.name for ly in stains]

    def _describe(self, stains: list, newly_hidden: int, sets: list, tta: bool) -> str:
        """What the viewer shows now, read from the layers themselves."""
        shown = sorted({ly.metadata["lmadda"]["tag"] for ly in stains if ly.visible})
        hidden = sorted({ly.metadata["lmadda"]["tag"] for ly in stains if not ly.visible})
        n_img = sum(len(s.stack) for s in sets)
        where = ", ".join(f"'{s.input_layer}'" for s in sets if s.input_layer)
        text = (f"{len(stains)} stain layer(s) for {n_img} image(s) over {where}"
                + (f" ({TTA_SAMPLES}-fold TTA average)" if tta else "") + ": showing "
                + ", ".join(f"[{t}]" for t in shown))
        if hidden:
            text += "; " + ", ".join(f"[{t}]" for t in hidden) + " hidden (eye icon to compare)"
        if newly_hidden:
            text += f"; {newly_hidden} earlier stain layer(s) hidden"
        return text

    # ------------------------------------------------------------------ trust map
    def _start_trust(self, rt: ResultTag, model: Any) -> None:
        self.state.set_busy(True)
        self._trust_status = self.status.text()
        self.set_status(f"{self._trust_status}<br>Trust map…")
        sets = self._predicted
        markers = channel_names(self.state.model)
        label = self.state.model_label

        def prepare(maps: dict, method: str) -> list:
            return trust_specs(maps, sets, rt, markers, label, method, TRUST_SAMPLES)

        task = workers.start(
            lambda cancel: workers.trust_messages(model, [s.stack for s in sets],
                                                  n_samples=TRUST_SAMPLES, device=self.device,
                                                  prepare=prepare, cancel=cancel),
            self._on_trust_message,
            self._on_trust_done,
        )
        self.task = None if task.done else task

    def _on_trust_message(self, msg: Any) -> None:
        if isinstance(msg, workers.TrustProgress):
            self._progress.push(f"{self._trust_status}<br>Trust map… {msg.done} / "
                                f"{msg.total} images")
        elif isinstance(msg, workers.TrustDone):
            self._progress.reset()
            layers = self.owned.apply(msg.prepared)
            self.last_trust_layers = [ly.name for ly in layers]
            how = {"mc_dropout": "MC dropout", "tta": "flips and rotations"}.get(msg.method,
                                                                                 msg.method)
            self.set_status(
                f"{self._trust_status}<br>{len(layers)} trust-map layer(s): spread of "
                f"{msg.n_samples} predictions ({how}); bright = uncertain")
        elif isinstance(msg, workers.RunFailed):
            self._progress.reset()
            notify(self.state, "error", f"Trust map failed: {msg.message}")
            self.set_status(f"{self._trust_status}<br><span style='color:{_RED}'>trust map: "
                            f"{msg.message}</span>")

    def _on_trust_done(self) -> None:
        self.task = None
        self.state.set_busy(False)

    # ------------------------------------------------------------------ side by side
    def _fill_markers(self) -> None:
        current = self.marker_combo.currentText()
        markers = channel_names(self.state.model) if self.state.model is not None else []
        self.marker_combo.clear()
        self.marker_combo.addItems(markers)
        if current in markers:
            self.marker_combo.setCurrentText(current)

    def panels(self, marker: str | None = None) -> Panels:
        """The layers compared side by side for ``marker`` (the first marker by default)."""
        marker = marker or self.marker_combo.currentText()
        stains = [self.viewer.layers[n] for n in self.last_layers if n in self.viewer.layers]
        mine = [ly for ly in stains if ly.metadata["lmadda"].get("channel") == marker]
        unadapted = next((ly for ly in mine if ly.metadata["lmadda"]["tag"] == UNADAPTED), None)
        adapted = next((ly for ly in mine if ly.metadata["lmadda"]["tag"] != UNADAPTED), None)
        source = mine[0].metadata["lmadda"].get("input_layer") if mine else None
        source_layer = self.viewer.layers[source] if source in self.viewer.layers else None
        return Panels(source_layer, unadapted, adapted, self._truth(marker, source_layer))

    def _truth(self, marker: str, source: Any) -> Any:
        """The ground truth of ``marker`` for the input, if loaded (None otherwise).

        A layer named like ``DAPI (ground truth)``, or read from a ``dapi`` folder beside the
        input's folder (as ``lmadda make-synthetic`` writes them).
        """
        folder = (source.metadata.get("lmadda", {}) or {}).get("folder") if source else None
        parent = str(Path(folder).parent) if folder else None
        for ly in self.viewer.layers:
            if self.owned.is_owned(ly) or ly is source:
                continue
            name = ly.name.lower()
            if "ground truth" in name and name.startswith(marker.lower()):
                return ly
            theirs = (ly.metadata.get("lmadda", {}) or {}).get("folder")
            if parent and theirs and Path(theirs).name.lower() == marker.lower() \
                    and str(Path(theirs).parent) == parent:
                return ly
        return None

    def _on_side(self, on: bool) -> None:
        if not on:
            self.side.restore()
            return
        names = self.side.show(self.panels())
        if not names:
            self.side_btn.blockSignals(True)
            self.side_btn.setChecked(False)
            self.side_btn.blockSignals(False)
            notify(self.state, "warning", "Nothing to compare yet: show the virtual stains "
                                          "first")
            return
        self.set_status("Side by side (linked views, one contrast for the stains): "
                        + " | ".join(names))

    # ------------------------------------------------------------------ export
    def save_adapted_model(self, path: str | Path, overwrite: bool = False) -> Path | None:
        """Save the chosen adapted model (over an existing file only with ``overwrite``).

        Returns
        -------
        Path or None
            The written file, or None after showing why not.
        """
        from ..models.checkpoint import save_model

        adapted = self.state.adapted
        if adapted is None:
            notify(self.state, "error", "Nothing to save: run an adaptation first")
            return None
        path = Path(path)
        if path.suffix.lower() not in (".pt", ".pth"):
            path = path.with_suffix(".pt")
        if path.exists() and not overwrite:
            notify(self.state, "error", f"Not saved: '{path}' already exists (choose another "
                                        "name)")
            return None
        try:
            prov = {**adapted.result.provenance, "adapted_from": self.state.model_label}
            written = save_model(adapted.model, path, provenance=prov)
        except LmaddaError as exc:
            notify(self.state, "error", f"Not saved: {exc}")
            return None
        notify(self.state, "info", f"Saved the adapted model to '{written}'", toast=False)
        return Path(written) if written is not None else path

    def export_stains(self, folder: str | Path, overwrite: bool = False) -> bool:
        """Write the last shown stains to ``folder`` as ``lmadda predict`` writes them.

        One calibrated ImageJ hyperstack per input file (per input layer), the markers as
        named channels, the input's pixel size and unit, the model's provenance and the
        result's (:mod:`.stain_export`). Existing files are replaced only with
        ``overwrite`` (checked before anything is written); each file is written to a
        temporary name, then renamed. The files are written in the background; when done,
        :attr:`last_export` lists them and the dock says what was written or why not.

        Returns
        -------
        bool
            True if the export started.
        """
        from .stain_export import LayerSnapshot, export_messages

        if self.state.busy:
            return False
        layers = [LayerSnapshot.of(self.viewer.layers[n]) for n in self.last_layers
                  if n in self.viewer.layers]
        self.last_export = []
        if not layers:
            notify(self.state, "error", "No stain layers to write: show the virtual stains "
                                        "first")
            return False
        sets, models, folder = list(self.last_sets), dict(self._result_models), Path(folder)
        self.state.set_busy(True)
        self.set_status(f"Writing the stains to '{folder}'…")
        task = workers.start(
            lambda cancel: export_messages(layers, sets, models, folder, overwrite),
            lambda msg: self._on_stains_message(msg, folder),
            self._on_export_done,
        )
        self.task = None if task.done else task
        return True

    def _on_stains_message(self, msg: Any, folder: Path) -> None:
        from .stain_export import ExportFinished, ExportProgress

        if isinstance(msg, ExportProgress):
            self._progress.push(f"Writing the stains… {msg.done} / {msg.total} file(s)")
        elif isinstance(msg, ExportFinished):
            self._progress.reset()
            self.last_export = list(msg.written)
            if msg.error:
                what = (f"writing stopped after {len(msg.written)} file(s)" if msg.written
                        else "nothing written")
                text = f"Stains not exported, {what}: {msg.error}"
                notify(self.state, "error", text)
                self.set_status(text, error=True)
            else:
                text = (f"Wrote {len(msg.written)} calibrated TIFF file(s) to '{folder}' "
                        f"({msg.seconds:.1f} s)")
                notify(self.state, "info", text, toast=False)
                self.set_status(text)

    def export_bioimageio(self, path: str | Path, overwrite: bool = False) -> bool:
        """Write the chosen model as a bioimage.io package in the background.

        The adapted model of the chosen result (else the loaded model) is exported, with the
        first new-microscope image as its test image. Problems are shown in the dock.

        Returns
        -------
        bool
            True if the export started.
        """
        if self.state.busy:
            return False
        adapted = self.state.adapted
        model = adapted.model if adapted is not None else self.state.model
        if model is None:
            notify(self.state, "error", "Nothing to export: load a model first")
            return False
        path = Path(path)
        if not path.name.endswith(".zip"):
            path = path.with_name(path.name + ".bioimageio.zip")
        if path.exists() and not overwrite:
            notify(self.state, "error", f"Not exported: '{path}' already exists (choose "
                                        "another name)")
            return False
        sample = None
        try:
            sample = prediction_loader(self.viewer)
        except LmaddaError:
            pass  # no new-microscope images chosen: the export's own synthetic sample
        label = adapted.tag if adapted is not None else "unadapted"
        name = f"{self.state.model_label} {label}".replace(".pt", "")
        self.state.set_busy(True)
        self.set_status(f"Writing and validating the bioimage.io package of [{label}]…")

        def work(cancel: Any) -> Any:
            image = sample()[0].stack[0] if sample is not None else None
            return workers.bioimageio_messages(model, path, sample=image, name=name,
                                               overwrite=overwrite)

        task = workers.start(work, self._on_export_message, self._on_export_done)
        self.task = None if task.done else task
        return True

    def _on_export_message(self, msg: Any) -> None:
        if isinstance(msg, workers.ExportDone):
            text = f"Wrote the bioimage.io package '{msg.path}' ({msg.seconds:.0f} s)"
            self.set_status(text)
            notify(self.state, "info", text, toast=False)
            self.last_bioimageio = Path(msg.path)
        elif isinstance(msg, workers.RunFailed):
            self.set_status(msg.message, error=True)
            notify(self.state, "error", f"Not exported: {msg.message}")

    def _on_export_done(self) -> None:
        self.task = None
        self.state.set_busy(False)

    def _ask_bioimageio(self) -> None:
        adapted = self.state.adapted
        suggested = (f"{adapted.tag.replace(' ', '_')}.bioimageio.zip" if adapted is not None
                     else "model.bioimageio.zip")
        path, _ = QFileDialog.getSaveFileName(self, "Export to bioimage.io", suggested,
                                              "bioimage.io packages (*.zip)")
        if path:  # the dialog asked before replacing a file; the package is written atomically
            self.export_bioimageio(path, overwrite=True)

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
    def set_status(self, text: str, error: bool = False) -> None:
        """Show one line about the results (red for an error)."""
        self.status.setText(f"<span style='color:{_RED}'>{text}</span>" if error else text)

    def summary(self) -> str:
        """One line for the step's header."""
        if not self.last_layers:
            return "no stains shown yet"
        adapted = self.state.adapted
        return (f"{len(self.last_layers)} stain layer(s)"
                + (f" · {adapted.tag} run {adapted.run}" if adapted is not None else ""))

    def _on_model(self, *_: Any) -> None:
        if self.side.active:
            self.side_btn.setChecked(False)
        self.last_layers = []
        self.last_trust_layers = []
        self.last_sets = []
        self._result_models = {}
        self._fill_results()
        self._fill_markers()
        self.set_status("")

    def _update_enabled(self, *_: Any) -> None:
        busy = self.state.busy
        has_model = self.state.model is not None
        self.predict_btn.setEnabled(not busy and has_model)
        self.trust_check.setEnabled(not busy)
        self.result_combo.setEnabled(not busy and bool(self.state.runs))
        self.save_btn.setEnabled(not busy and self.state.adapted is not None)
        self.bioimage_btn.setEnabled(not busy and has_model)
        self.export_btn.setEnabled(not busy and bool(self.last_layers))
        self.side_btn.setEnabled(not busy and bool(self.last_layers))
        self.marker_combo.setEnabled(not busy and bool(self.last_layers))
