"""Step 3, Adapt: choose a method and a layer, run the adaptation, watch it, stop it.

Run starts :func:`~napari_lmadda.widgets.worker.adapt_messages` in a background thread; its
typed events drive the progress bar (steps, time left), a live plot of the discriminator and
generator losses and the discriminator's accuracy, and the status line, at most once a second
(each redraw repaints napari's whole window). Stop asks the run to end at its next step
("Stopping…"); the engine keeps the best state so far. A run that ends with nothing better
than the unadapted model says so and leaves the earlier results alone; whatever the outcome,
the buttons come back when the worker ends.

The method box lists every method of the engine; "Recommend layer" (:mod:`.recommend_panel`)
measures which layer to match from unlabeled images.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from psygnal import Signal
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QRangeSlider

from ..errors import LmaddaError
from . import worker as workers
from .devices import DeviceCombo
from .image_sets import images_for_adaptation
from .marked_slider import MarkedSlider
from .messages import notify
from .option_form import option_widget, widget_value
from .plots import MARK_COLOUR, LossPlot, PlotTabs
from .recommend_panel import NO_ADAPTATION, RecommendPanel
from .sci_spinbox import ScientificSpinBox
from .sizing import compact_combo
from .state import AdaptedModel, LmaddaState, get_state, unchanged, unwrap
from .throttle import Throttle

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = [
    "AdaptStep",
    "default_layer",
    "dock_options",
    "layer_mode",
    "method_label",
    "outcome_text",
]

_RED = "#e06c6c"
#: the method chosen when the dock opens: the first of these the registry has
DEFAULT_METHODS = ("auto", "lmadda")


def method_label(method: str) -> str:
    """The label of a method in the method box (from the registry)."""
    from ..adapt.registry import METHODS

    entry = METHODS.get(method)
    return entry.label if entry is not None else method


def layer_mode(method: str) -> str:
    """How ``method`` takes layers in the dock: ``"one"``, ``"range"`` or ``"none"``."""
    from ..adapt.registry import METHODS

    entry = METHODS.get(method)
    return {"one": "one", "upto": "one", "several": "range"}.get(
        entry.layers if entry is not None else "none", "none")


def dock_options(method: str) -> list[str]:
    """The flat names of ``method``'s options shown in the dock (its sub-config's ``dock``)."""
    from ..adapt.registry import METHODS
    from ..options import iter_options

    entry = METHODS.get(method)
    if entry is None or entry.options is None:
        return []
    return [opt.alias for _, _, opt, _ in iter_options(entry.options) if opt.dock]


def default_layer(num_layers: int, recommended: int | None = None) -> int:
    """The layer the slider starts at for a model with ``num_layers`` layers.

    The recommendation when there is one; otherwise a late decoder layer at 5/6 of the depth
    (layer 10 of 12, 13 of 16): LM-ADDA at layer 10 was the best for CD29 on the project's
    bright-field benchmark with the 12-layer demo model, and the paper's best CD29 layer was
    13 of 16. Pixel-level shifts (exposure) prefer early layers: press "Recommend layer".
    """
    n = max(1, int(num_layers))
    if recommended is not None and 1 <= recommended <= n:
        return int(recommended)
    return max(1, min(n, round(n * 5 / 6)))


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "–"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def outcome_text(result: Any, earlier: AdaptedModel | None) -> str:
    """A sentence about how a run ended, in plain words.

    A run that kept the starting state (nothing better than the unadapted model) says so
    and names what stays in use; otherwise the outcome and the state kept.
    """
    from ..adapt.events import StopReason

    r = result
    if unchanged(r):
        kept = (f"the earlier result [{earlier.tag}] (run {earlier.run}) is kept"
                if earlier is not None else "the unadapted model stays in use")
        own = (r.message or "").strip()
        if "no adaptation" in own.lower():  # the method's own words (the auto method's)
            return f"{own[0].upper()}{own[1:]}; nothing changed; {kept}"
        if r.reason == StopReason.CANCELLED:
            return (f"Stopped after {r.steps_done} steps with nothing better than the "
                    f"unadapted model found yet: nothing changed; {kept}")
        if r.reason == StopReason.DIVERGED:
            return (f"The run diverged with nothing better than the unadapted model found: "
                    f"nothing changed; {kept}")
        return (f"{NO_ADAPTATION[0].upper()}{NO_ADAPTATION[1:]}: in {r.steps_done} steps "
                f"nothing better than the unadapted model was found (label-free criterion "
                f"'{r.criterion}'): nothing changed; {kept}")
    if r.reason == StopReason.CANCELLED:
        return f"Stopped after {r.steps_done} steps; kept the state of step {r.best_step}"
    if r.reason == StopReason.DIVERGED:
        return f"Diverged: {r.message or r.reason.value}"
    return r.message or f"{r.reason.value}; kept step {r.best_step}"


class AdaptStep(QWidget):
    """Adapt the loaded model to the new microscope's images.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose shared state holds the model and the images.

    Signals
    -------
    result_ready(object)
        A run produced a new result (an :class:`AdaptedModel`); the Results step shows it.
    """

    result_ready = Signal(object)

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        from ..adapt.config import AdaptConfig
        from ..adapt.registry import METHODS, method_names
        from ..options import control

        super().__init__()
        self.viewer = unwrap(napari_viewer)
        self.state: LmaddaState = get_state(napari_viewer)
        self.task: workers.Task | None = None
        self.last_reason: str | None = None
        self.last_outcome: str = ""
        defaults = AdaptConfig()

        self.method_combo = compact_combo(QComboBox())
        for key in method_names():  # the registry: new methods show up here
            self.method_combo.addItem(method_label(key), key)
            self.method_combo.setItemData(self.method_combo.count() - 1,
                                          METHODS[key].summary, Qt.ItemDataRole.ToolTipRole)
        # the automatic method when the registry has it (it may answer "no adaptation
        # needed"), else LM-ADDA
        default = next((m for m in DEFAULT_METHODS if self.method_combo.findData(m) >= 0),
                       None)
        self.method_combo.setCurrentIndex(max(0, self.method_combo.findData(default)))
        self.method_combo.currentIndexChanged.connect(self._on_method)
        self._method_tip()

        self.layer_slider = MarkedSlider()
        self.layer_slider.setRange(1, 1)
        self.layer_slider.valueChanged.connect(self._update_layer_label)
        self.range_slider = QRangeSlider(Qt.Orientation.Horizontal)
        self.range_slider.setRange(1, 2)
        self.range_slider.setValue((1, 2))
        self.range_slider.valueChanged.connect(self._update_layer_label)
        self.layer_label = QLabel()
        self.layer_label.setWordWrap(True)
        self.option_fields: dict[str, QWidget] = {}
        self._option_controls: dict[str, Any] = {}
        for method in method_names():
            for name in dock_options(method):
                ctl = control(AdaptConfig, name)
                field = option_widget(ctl)
                field.setProperty("lmadda_method", method)
                self.option_fields[name] = field
                self._option_controls[name] = ctl

        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1_000_000)
        self.steps_spin.setValue(defaults.steps)
        self.lr_g_spin = ScientificSpinBox(defaults.lr_g)
        self.lr_d_spin = ScientificSpinBox(defaults.lr_d)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 1024)
        self.batch_spin.setValue(defaults.batch_size)
        self.patch_spin = QSpinBox()
        self.patch_spin.setRange(1, 8192)
        self.patch_spin.setValue(defaults.patch_size)
        self.patch_spin.setSuffix(" px")
        self.patch_spin.valueChanged.connect(self._update_layer_label)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setValue(defaults.seed)
        self.device_combo = DeviceCombo()
        for name, w in (("steps", self.steps_spin), ("lr_g", self.lr_g_spin),
                        ("lr_d", self.lr_d_spin), ("batch_size", self.batch_spin),
                        ("patch_size", self.patch_spin), ("seed", self.seed_spin)):
            w.setToolTip(control(AdaptConfig, name).tooltip)

        self.run_btn = QPushButton("Run")
        self.run_btn.clicked.connect(self.run)
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setToolTip("Stop at the next step and keep the best state so far (or "
                                 "stop the layer recommendation)")
        self.stop_btn.clicked.connect(self.stop)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.plot = LossPlot()
        self.recommender = RecommendPanel(self)
        self.plot_tabs = PlotTabs(190)
        self.plot_tabs.addTab(self.plot, "Training")
        self.plot_tabs.addTab(self.recommender.gap_plot, "Layer gaps")
        self.plot_tabs.setTabToolTip(1, "The last layer recommendation (Recommend layer)")
        self._progress = Throttle(self._refresh, self)

        form = QFormLayout()
        form.setVerticalSpacing(3)
        form.addRow("Method", self.method_combo)
        for name, field in self.option_fields.items():
            form.addRow(self._option_controls[name].label, field)
        form.addRow("Layer", self.layer_slider)
        form.addRow("Layers", self.range_slider)
        form.addRow(self.layer_label)
        form.addRow(self.recommender)
        self._form = form
        grid = QGridLayout()
        grid.setVerticalSpacing(3)
        cells = (("Steps", self.steps_spin), ("Device", self.device_combo),
                 ("LR of G'", self.lr_g_spin), ("LR of D", self.lr_d_spin),
                 ("Batch", self.batch_spin), ("Patch", self.patch_spin),
                 ("Seed", self.seed_spin))
        for i, (label, w) in enumerate(cells):
            r, c = divmod(i, 2)
            grid.addWidget(QLabel(label), r, 2 * c)
            grid.addWidget(w, r, 2 * c + 1)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_btn)
        buttons.addWidget(self.stop_btn)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 0, 0, 0)
        layout.setSpacing(4)
        layout.addLayout(form)
        layout.addLayout(grid)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.plot_tabs, 1)

        self.state.model_changed.connect(self._on_model)
        self.state.data_changed.connect(lambda *_: self.recommender.show_recommendation())
        self.state.busy_changed.connect(self.set_idle_ui)
        self.state.recommendation_changed.connect(self._on_recommendation)
        self._on_model(self.state.model)
        self._on_method()
        self.set_idle_ui()

    # ------------------------------------------------------------------ settings
    @property
    def method(self) -> str:
        """The chosen engine method name."""
        return str(self.method_combo.currentData())

    def set_method(self, method: str) -> None:
        """Choose a method by its engine name (``lmadda``, ``adda``, ...)."""
        index = self.method_combo.findData(method)
        if index < 0:
            raise ValueError(f"unknown method {method!r}")
        self.method_combo.setCurrentIndex(index)

    def layers(self) -> tuple[int, ...]:
        """Return the layer(s) to match for the chosen method (empty when it takes none)."""
        mode = layer_mode(self.method)
        if mode == "none":
            return ()
        if mode == "range":
            a, b = (int(v) for v in self.range_slider.value())
            return tuple(range(a, b + 1))
        return (int(self.layer_slider.value()),)

    def config(self) -> Any:
        """Build an :class:`~napari_lmadda.adapt.config.AdaptConfig` from the fields.

        Raises
        ------
        ConfigError
            A value is out of range.
        """
        from ..adapt.config import AdaptConfig, eval_every_for

        steps = int(self.steps_spin.value())
        options = {name: widget_value(w, self._option_controls[name])
                   for name, w in self.option_fields.items()
                   if w.property("lmadda_method") == self.method}
        return AdaptConfig(
            steps=steps,
            batch_size=int(self.batch_spin.value()),
            patch_size=int(self.patch_spin.value()),
            lr_g=float(self.lr_g_spin.value()),
            lr_d=float(self.lr_d_spin.value()),
            seed=int(self.seed_spin.value()),
            device=self.device_combo.device(),
            eval_every=eval_every_for(steps),
            **options,
        )

    # ------------------------------------------------------------------ run / stop
    def run(self) -> bool:
        """Start an adaptation with the current settings (problems shown in the dock).

        Returns
        -------
        bool
            True if a run started.
        """
        if self.state.busy:
            return False
        model = self.state.model
        try:
            if model is None:
                raise LmaddaError("load a model first (Model step)")
            config = self.config()
            source = images_for_adaptation(self.viewer, "source")
            target = images_for_adaptation(self.viewer, "target")
        except LmaddaError as exc:
            notify(self.state, "error", f"Cannot run: {exc}")
            self.set_status(str(exc), error=True)
            return False
        method, layers = self.method, self.layers()
        self.plot.clear()
        self.plot_tabs.setCurrentWidget(self.plot)
        self.progress.setRange(0, max(1, config.steps))
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        self.last_reason = None
        self._run_info = (method, layers, self.state.model_label)
        self.set_status(f"Starting {method_label(method)}…")
        self.state.set_busy(True)
        task = workers.start(
            lambda cancel: workers.adapt_messages(model, source, target, method=method,
                                                  layers=layers, config=config, cancel=cancel),
            self._on_event,
            self._on_done,
        )
        if not task.done:  # a synchronous run (LMADDA_SYNC_WORKERS=1) has already ended
            self.task = task
            self.set_idle_ui()
        return True

    def stop(self) -> None:
        """Ask the run (or the layer recommendation) to stop at its next step.

        A stopped run keeps the best state so far; a stopped recommendation keeps the
        previous one.
        """
        task = self.task or self.recommender.task
        if task is not None:
            task.cancel()
            self.stop_btn.setEnabled(False)
            self.stop_btn.setText("Stopping…")
            self.set_status("Stopping at the next step…" if self.task is not None else
                            "Stopping after the current layer…")

    def recommend(self) -> bool:
        """Measure which layer to match (see :meth:`RecommendPanel.recommend`)."""
        return self.recommender.recommend()

    @property
    def running(self) -> bool:
        """Whether an adaptation is running."""
        return self.task is not None

    # ------------------------------------------------------------------ events
    def _on_event(self, ev: Any) -> None:
        from ..adapt.events import Evaluated, Finished, Started, Step, StopReason

        if isinstance(ev, Step):
            self.plot.add(ev.step, ev.loss_d, ev.loss_g, ev.d_acc)
            self._progress.push(ev)
        elif isinstance(ev, Evaluated):
            if ev.is_best:
                self.plot.mark_best(ev.step)
        elif isinstance(ev, Started):
            self.progress.setMaximum(max(1, ev.total_steps))
            self.plot.start(ev.total_steps)
            lays = list(ev.layers)
            contiguous = lays == list(range(lays[0], lays[0] + len(lays))) if lays else False
            where = (f" at layer {lays[0]}" if len(lays) == 1 else
                     f" at layers {lays[0]}–{lays[-1]}" if contiguous else
                     # candidates tried one after another (auto), not one range
                     " trying layers " + ", ".join(map(str, lays)) if lays else "")
            params = (f"{ev.trainable_params:,} trainable parameters " if ev.trainable_params
                      else "")  # auto trains several candidates: no one count
            self.set_status(f"Running {method_label(ev.method)}{where}"
                            f"{': ' + params if params else ' '}on "
                            f"{self.device_combo.describe(ev.device)}")
        elif isinstance(ev, Finished):
            self._progress.flush()
            r = ev.result
            self.last_reason = r.reason.value
            earlier = self.state.adapted
            text = outcome_text(r, earlier)
            self.last_outcome = text
            if unchanged(r):
                notify(self.state, "info", text)
                self.progress.setFormat(f"{r.reason.value} · nothing better than unadapted")
            else:
                adapted = self.state.add_result(AdaptedModel(r, self._run_info[2]))
                level = "warning" if r.reason == StopReason.DIVERGED else "info"
                notify(self.state, level, f"Run {adapted.run} ({adapted.tag}): {text}",
                       toast=level != "info")
                self.progress.setFormat(f"{r.reason.value} · kept step {r.best_step}")
                self._new_result = adapted
            self.set_status(text)
        elif isinstance(ev, workers.RunFailed):
            self.last_reason = "error"
            notify(self.state, "error", f"Adaptation failed: {ev.message}")
            self.set_status(ev.message, error=True)
            self.progress.setFormat("failed")

    def _refresh(self, ev: Any) -> None:
        if ev is not None:
            self.progress.setMaximum(max(1, ev.total_steps))
            self.progress.setValue(ev.step)
            self.progress.setFormat(
                f"step {ev.step} / {ev.total_steps} · {_fmt_time(ev.eta)} left")
        self.plot.refresh()

    def _on_done(self) -> None:
        self.task = None
        self._progress.flush()
        self.state.set_busy(False)
        new, self._new_result = getattr(self, "_new_result", None), None
        if new is not None:
            self.result_ready.emit(new)

    # ------------------------------------------------------------------ display
    def set_status(self, text: str, error: bool = False) -> None:
        """Show one line under the progress bar (red for an error)."""
        self.status.setText(f"<span style='color:{_RED}'>{text}</span>" if error else text)

    def summary(self) -> str:
        """One line for the step's header."""
        lays = self.layers()
        where = f" L{lays[0]}" if len(lays) == 1 else (
            f" L{lays[0]}-{lays[-1]}" if lays else "")
        runs = len(self.state.runs)
        return (f"{method_label(self.method)}{where} · {self.steps_spin.value()} steps"
                + (f" · {runs} run(s)" if runs else ""))

    def set_idle_ui(self, *_: Any) -> None:
        """Enable what can be used now (nothing conflicting while a task runs)."""
        busy = self.state.busy
        running = self.task is not None
        recommending = self.recommender.task is not None
        self.run_btn.setEnabled(not busy and self.state.model is not None)
        self.run_btn.setText("Running…" if running else "Run")
        self.stop_btn.setEnabled(
            (running and not self.task.cancelled)
            or (recommending and not self.recommender.task.cancelled))
        if not running and not recommending:
            self.stop_btn.setText("Stop")
        rec_btn = self.recommender.button
        rec_btn.setEnabled(not busy and self.state.model is not None)
        rec_btn.setText("Recommending…" if recommending else "Recommend layer")
        for w in (self.method_combo, self.layer_slider, self.range_slider, self.steps_spin,
                  self.lr_g_spin, self.lr_d_spin, self.batch_spin, self.patch_spin,
                  self.seed_spin, self.device_combo, *self.option_fields.values()):
            w.setEnabled(not busy)

    def _on_model(self, model: Any) -> None:
        n = model.num_layers if model is not None else 1
        self.layer_slider.setRange(1, n)
        self.range_slider.setRange(1, max(2, n))
        if model is not None:
            rec = self.state.recommendation
            self.layer_slider.setValue(default_layer(n, rec.layer if rec is not None else None))
            self.range_slider.setValue((1, min(3, n)))
            m = model.min_size
            self.patch_spin.setSingleStep(m)
            self.patch_spin.setMinimum(m)
            v = self.patch_spin.value()
            self.patch_spin.setValue(max(m, (v // m) * m))
            self._fit_method_to(model)
        # what was said about the previous model does not hold for this one
        self.plot.clear()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("not run yet")
        self.last_outcome = ""
        self.set_status("" if model is None else
                        f"Ready: {self.state.model_label}. Choose the images, then Run.")
        self._update_layer_label()
        self.recommender.show_recommendation()
        self.set_idle_ui()

    def _fit_method_to(self, model: Any) -> None:
        """Methods written for the project's UNet are greyed out for other networks."""
        from ..adapt.registry import METHODS

        unet = hasattr(model, "num_downs")
        items = self.method_combo.model()
        for i in range(self.method_combo.count()):
            entry = METHODS.get(self.method_combo.itemData(i))
            item = items.item(i) if hasattr(items, "item") else None
            if entry is not None and item is not None:
                item.setEnabled(unet or not entry.unet_only)
        current = METHODS.get(self.method)
        if current is not None and current.unet_only and not unet:
            self.set_method("lmadda")  # the default the network can run

    def _on_recommendation(self, rec: Any) -> None:
        model = self.state.model
        layer = rec.layer if rec is not None else None
        if layer is not None and model is not None and 1 <= layer <= model.num_layers:
            self.layer_slider.setValue(layer)
        self.recommender.show_recommendation()
        self._update_layer_label()
        self.plot_tabs.setCurrentWidget(self.recommender.gap_plot if rec is not None
                                        else self.plot)

    def _method_tip(self) -> None:
        from ..adapt.registry import LAYER_USES, METHODS

        entry = METHODS.get(self.method)
        self.method_combo.setToolTip(
            f"{entry.label}: {entry.summary}; {LAYER_USES[entry.layers]}" if entry else "")

    def _on_method(self, *_: Any) -> None:
        self._method_tip()
        mode = layer_mode(self.method)
        self._set_row_visible(self.layer_slider, mode == "one")
        self._set_row_visible(self.range_slider, mode == "range")
        self.layer_label.setVisible(mode != "none")
        self.recommender.setVisible(mode != "none")
        for field in self.option_fields.values():
            self._set_row_visible(field, field.property("lmadda_method") == self.method)
        self._update_layer_label()

    def _set_row_visible(self, field: QWidget, visible: bool) -> None:
        field.setVisible(visible)  # QFormLayout.setRowVisible needs Qt >= 6.4
        label = self._form.labelForField(field)
        if label is not None:
            label.setVisible(visible)

    def _update_layer_label(self, *_: Any) -> None:
        model = self.state.model
        if model is None:
            self.layer_label.setText("<span style='color:gray'>load a model to choose a layer"
                                     "</span>")
            return
        infos = model.describe_layers(int(self.patch_spin.value()))
        lays = self.layers() or (int(self.layer_slider.value()),)
        if len(lays) == 1:
            li = infos[lays[0] - 1]
            text = (f"<b>L{li.index} · {li.name}</b> · {li.channels} ch · "
                    f"{li.height}×{li.width} px per {self.patch_spin.value()} px patch · "
                    f"adapts layers 1–{li.index}")
            rec = self.state.recommendation
            if rec is not None and rec.layer == li.index:
                text += f" · <span style='color:{MARK_COLOUR}'>▲ recommended</span>"
        else:
            a, b = infos[lays[0] - 1], infos[lays[-1] - 1]
            text = f"<b>L{a.index}–L{b.index}</b> · {a.name} … {b.name}"
        self.layer_label.setText(text)
