"""The Adapt widget: choose a method and a layer, run the adaptation, watch it, stop it.

Run starts :func:`~napari_lmadda.widgets.worker.adapt_messages` in a background thread; its
typed events drive the progress bar (steps, time left), a live plot of the discriminator and
generator losses and the discriminator's accuracy, and the status line. Stop asks the run to
end at its next step ("Stopping…"); the engine keeps the best state so far. Whatever the
outcome, the buttons come back when the worker ends. The Results panel below shows the
virtual stains of the adapted and the unadapted model.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QRangeSlider

from ..errors import LmaddaError
from . import worker as workers
from .data import images_for_adaptation
from .results import ResultsPanel
from .sci_spinbox import ScientificSpinBox
from .state import AdaptedModel, LmaddaState, get_state

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["AdaptWidget", "METHOD_LABELS", "LossPlot"]

#: engine method name -> label shown in the method box
METHOD_LABELS: dict[str, str] = {
    "none": "None (unadapted copy)",
    "adabn": "AdaBN",
    "adda": "ADDA",
    "lmadda": "LM-ADDA",
    "lmadda-multi": "LM-ADDA multi",
}
_USES_LAYER = {"adabn", "lmadda", "lmadda-multi"}
_DEVICES = ("auto", "cpu", "cuda", "mps")
_RED = "#e06c6c"


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "–"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


class LossPlot(QWidget):
    """Live pyqtgraph plot of D loss, G loss and D accuracy against the step."""

    SERIES = (("D loss", "#f5a623"), ("G loss", "#4a90e2"), ("D accuracy", "#7ed321"))

    def __init__(self) -> None:
        super().__init__()
        import pyqtgraph as pg

        self.plot = pg.PlotWidget(background="#1f2127")
        self.plot.setMinimumHeight(150)
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.plot.setLabel("bottom", "step")
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.curves = [
            self.plot.plot([], [], name=name, pen=pg.mkPen(colour, width=1.6), connect="finite")
            for name, colour in self.SERIES
        ]
        self.best = self.plot.plot([], [], pen=None, symbol="o", symbolSize=7,
                                   symbolBrush="#ffffff")
        legend = QLabel("  ".join(
            [f"<span style='color:{c}'>━</span> {n}" for n, c in self.SERIES]
            + ["<span style='color:#ffffff'>●</span> kept state"]))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(legend)
        layout.addWidget(self.plot)
        self.clear()

    def clear(self) -> None:
        """Forget every point."""
        self.steps: list[int] = []
        self.values: list[list[float]] = [[], [], []]
        self.best_step: int | None = None
        for curve in self.curves:
            curve.setData([], [])
        self.best.setData([], [])

    def add(self, step: int, loss_d: float, loss_g: float, d_acc: float) -> None:
        """Append one step and redraw."""
        self.steps.append(step)
        for vals, v in zip(self.values, (loss_d, loss_g, d_acc)):
            vals.append(float(v) if v is not None and math.isfinite(v) else float("nan"))
        for curve, vals in zip(self.curves, self.values):
            curve.setData(self.steps, vals)

    def mark_best(self, step: int) -> None:
        """Mark the state currently kept (on the D-accuracy curve)."""
        self.best_step = step
        if step in self.steps:
            y = self.values[2][self.steps.index(step)]
            self.best.setData([step], [y if math.isfinite(y) else 0.5])


class AdaptWidget(QWidget):
    """Adapt the loaded model to the new microscope's images.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose shared state holds the model and the images.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        from ..adapt.config import AdaptConfig

        super().__init__()
        self.viewer = napari_viewer
        self.state: LmaddaState = get_state(napari_viewer)
        self.task: workers.Task | None = None
        self.last_reason: str | None = None
        defaults = AdaptConfig()

        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.method_combo = QComboBox()
        for key, label in METHOD_LABELS.items():
            self.method_combo.addItem(label, key)
        self.method_combo.setCurrentIndex(list(METHOD_LABELS).index("lmadda"))
        self.method_combo.setToolTip(
            "LM-ADDA adapts only the layers up to the matched layer; ADDA matches the output; "
            "AdaBN only re-estimates BatchNorm statistics")
        self.method_combo.currentIndexChanged.connect(self._on_method)

        self.layer_slider = QSlider(Qt.Orientation.Horizontal)
        self.layer_slider.setRange(1, 1)
        self.layer_slider.setPageStep(1)
        self.layer_slider.setTickPosition(QSlider.TickPosition.TicksBelow)
        self.layer_slider.valueChanged.connect(self._update_layer_label)
        self.range_slider = QRangeSlider(Qt.Orientation.Horizontal)
        self.range_slider.setRange(1, 2)
        self.range_slider.setValue((1, 2))
        self.range_slider.valueChanged.connect(self._update_layer_label)
        self.layer_label = QLabel()
        self.layer_label.setWordWrap(True)

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
        self.device_combo = QComboBox()
        self.device_combo.addItems(_DEVICES)
        self.device_combo.setToolTip("auto: CUDA, then Apple MPS, then the CPU")

        self.run_btn = QPushButton("Run")
        self.run_btn.clicked.connect(self.run)
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setToolTip("Stop at the next step and keep the best state so far")
        self.stop_btn.clicked.connect(self.stop)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.plot = LossPlot()
        self.results = ResultsPanel(napari_viewer)
        self.setMinimumWidth(400)

        form = QFormLayout()
        form.addRow("Method", self.method_combo)
        form.addRow("Layer", self.layer_slider)
        form.addRow("Layers", self.range_slider)
        form.addRow(self.layer_label)
        pair = QHBoxLayout()
        pair.addWidget(QLabel("G"))
        pair.addWidget(self.lr_g_spin, 1)
        pair.addWidget(QLabel("D"))
        pair.addWidget(self.lr_d_spin, 1)
        form.addRow("Steps", self.steps_spin)
        form.addRow("Learning rates", pair)
        sizes = QHBoxLayout()
        sizes.addWidget(self.batch_spin, 1)
        sizes.addWidget(QLabel("patch"))
        sizes.addWidget(self.patch_spin, 1)
        form.addRow("Batch", sizes)
        misc = QHBoxLayout()
        misc.addWidget(self.seed_spin, 1)
        misc.addWidget(QLabel("device"))
        misc.addWidget(self.device_combo, 1)
        form.addRow("Seed", misc)
        self._form = form
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_btn)
        buttons.addWidget(self.stop_btn)

        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.results)

        self.state.model_changed.connect(self._on_model)
        self.state.data_changed.connect(self._update_summary)
        self.state.busy_changed.connect(self._set_idle_ui)
        self._on_model(self.state.model)
        self._on_method()
        self._set_idle_ui()

    # ------------------------------------------------------------------ settings
    @property
    def method(self) -> str:
        """The chosen engine method name."""
        return str(self.method_combo.currentData())

    def set_method(self, method: str) -> None:
        """Choose a method by its engine name (``lmadda``, ``adda``, ...)."""
        self.method_combo.setCurrentIndex(list(METHOD_LABELS).index(method))

    def layers(self) -> tuple[int, ...]:
        """Return the layer(s) to match for the chosen method (empty when it takes none)."""
        if self.method not in _USES_LAYER:
            return ()
        if self.method == "lmadda-multi":
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
        from ..adapt.config import AdaptConfig

        steps = int(self.steps_spin.value())
        return AdaptConfig(
            steps=steps,
            batch_size=int(self.batch_spin.value()),
            patch_size=int(self.patch_spin.value()),
            lr_g=float(self.lr_g_spin.value()),
            lr_d=float(self.lr_d_spin.value()),
            seed=int(self.seed_spin.value()),
            device=self.device_combo.currentText(),
            eval_every=max(1, min(50, steps // 4 or 1)),
        )

    # ------------------------------------------------------------------ run / stop
    def run(self) -> bool:
        """Start an adaptation with the current settings (problems become notifications).

        Returns
        -------
        bool
            True if a run started.
        """
        from napari.utils.notifications import show_error

        if self.state.busy:
            return False
        model = self.state.model
        try:
            if model is None:
                raise LmaddaError("load a model first (Model widget)")
            config = self.config()
            source = images_for_adaptation(self.viewer, "source")
            target = images_for_adaptation(self.viewer, "target")
        except LmaddaError as exc:
            show_error(f"Cannot run: {exc}")
            self._set_status(str(exc), error=True)
            return False
        method, layers = self.method, self.layers()
        self.plot.clear()
        self.progress.setRange(0, max(1, config.steps))
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        self.last_reason = None
        self._run_info = (method, layers, self.state.model_label)
        self._set_status(f"Starting {METHOD_LABELS[method]}…")
        self.state.set_busy(True)
        self.results.device = config.device
        task = workers.start(
            lambda cancel: workers.adapt_messages(model, source, target, method=method,
                                                  layers=layers, config=config, cancel=cancel),
            self._on_event,
            self._on_done,
        )
        if not task.done:  # a synchronous run (LMADDA_SYNC_WORKERS=1) has already ended
            self.task = task
            self._set_idle_ui()
        return True

    def stop(self) -> None:
        """Ask the run to stop at its next step; the best state so far is kept."""
        if self.task is not None:
            self.task.cancel()
            self.stop_btn.setEnabled(False)
            self.stop_btn.setText("Stopping…")
            self._set_status("Stopping at the next step…")

    @property
    def running(self) -> bool:
        """Whether an adaptation is running."""
        return self.task is not None

    # ------------------------------------------------------------------ events
    def _on_event(self, ev: Any) -> None:
        from napari.utils.notifications import show_error, show_info, show_warning

        from ..adapt.events import Evaluated, Finished, Started, Step, StopReason

        if isinstance(ev, Step):
            self.progress.setMaximum(max(1, ev.total_steps))
            self.progress.setValue(ev.step)
            self.progress.setFormat(
                f"step {ev.step} / {ev.total_steps} · {_fmt_time(ev.eta)} left")
            self.plot.add(ev.step, ev.loss_d, ev.loss_g, ev.d_acc)
        elif isinstance(ev, Evaluated):
            if ev.is_best:
                self.plot.mark_best(ev.step)
        elif isinstance(ev, Started):
            self.progress.setMaximum(max(1, ev.total_steps))
            lays = ev.layers
            where = (f" at layer {lays[0]}" if len(lays) == 1 else
                     f" at layers {lays[0]}–{lays[-1]}" if len(lays) > 1 else "")
            self._set_status(f"Running {METHOD_LABELS.get(ev.method, ev.method)}{where}: "
                             f"{ev.trainable_params:,} trainable parameters on {ev.device}")
        elif isinstance(ev, Finished):
            r = ev.result
            self.last_reason = r.reason.value
            self.state.set_adapted(AdaptedModel(r, self._run_info[2]))
            text = r.message or r.reason.value
            if r.reason == StopReason.CANCELLED:
                text = f"Stopped after {r.steps_done} steps; kept step {r.best_step}"
                show_info(text)
            elif r.reason == StopReason.DIVERGED:
                show_warning(f"Adaptation diverged: {text}")
            else:
                show_info(f"Adaptation finished: {text}")
            self._set_status(text)
            self.progress.setFormat(f"{r.reason.value} · kept step {r.best_step}")
            self._predict_after = self.results.auto_check.isChecked()
        elif isinstance(ev, workers.RunFailed):
            self.last_reason = "error"
            show_error(f"Adaptation failed: {ev.message}")
            self._set_status(ev.message, error=True)
            self.progress.setFormat("failed")

    def _on_done(self) -> None:
        self.task = None
        self.state.set_busy(False)
        if getattr(self, "_predict_after", False):
            self._predict_after = False
            self.results.predict()

    # ------------------------------------------------------------------ display
    def _set_status(self, text: str, error: bool = False) -> None:
        self.status.setText(f"<span style='color:{_RED}'>{text}</span>" if error else text)

    def _set_idle_ui(self, *_: Any) -> None:
        busy = self.state.busy
        running = self.task is not None
        self.run_btn.setEnabled(not busy and self.state.model is not None)
        self.run_btn.setText("Running…" if running else "Run")
        self.stop_btn.setEnabled(running and not self.task.cancelled)
        if not running:
            self.stop_btn.setText("Stop")
        for w in (self.method_combo, self.layer_slider, self.range_slider, self.steps_spin,
                  self.lr_g_spin, self.lr_d_spin, self.batch_spin, self.patch_spin,
                  self.seed_spin, self.device_combo):
            w.setEnabled(not busy)

    def _on_model(self, model: Any) -> None:
        n = model.num_layers if model is not None else 1
        self.layer_slider.setRange(1, n)
        self.range_slider.setRange(1, max(2, n))
        if model is not None:
            default = min(2, n)  # an early layer: the paper's usual best
            self.layer_slider.setValue(default)
            self.range_slider.setValue((1, min(3, n)))
            m = model.min_size
            self.patch_spin.setSingleStep(m)
            self.patch_spin.setMinimum(m)
            v = self.patch_spin.value()
            self.patch_spin.setValue(max(m, (v // m) * m))
        self._update_layer_label()
        self._update_summary()
        self._set_idle_ui()

    def _on_method(self, *_: Any) -> None:
        multi = self.method == "lmadda-multi"
        uses = self.method in _USES_LAYER
        self._set_row_visible(self.layer_slider, uses and not multi)
        self._set_row_visible(self.range_slider, multi)
        self.layer_label.setVisible(uses)
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
        else:
            a, b = infos[lays[0] - 1], infos[lays[-1] - 1]
            text = f"<b>L{a.index}–L{b.index}</b> · {a.name} … {b.name}"
        self.layer_label.setText(text)

    def _update_summary(self, *_: Any) -> None:
        sels = self.state.selections
        parts = [f"<b>Model</b>: {self.state.model_label or '<i>none</i>'}"]
        for role, short in (("source", "source"), ("target", "new microscope")):
            sel = sels.get(role)
            parts.append(f"<b>{short}</b>: {sel.describe() if sel else '<i>not chosen</i>'}")
        self.summary.setText(" · ".join(parts))
