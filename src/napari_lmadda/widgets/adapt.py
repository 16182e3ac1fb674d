"""The Adapt widget: choose a method and a layer, run the adaptation, watch it, stop it.

Run starts :func:`~napari_lmadda.widgets.worker.adapt_messages` in a background thread; its
typed events drive the progress bar (steps, time left), a live plot of the discriminator and
generator losses and the discriminator's accuracy, and the status line. Stop asks the run to
end at its next step ("Stopping…"); the engine keeps the best state so far. Whatever the
outcome, the buttons come back when the worker ends. The Results panel below shows the
virtual stains of the adapted and the unadapted model.

The method box lists every method of the registry
(:data:`~napari_lmadda.adapt.registry.METHODS`, read when the widget opens), with its label,
its layer control and its options (those of its sub-configuration marked ``dock``; labels,
tooltips and choices from the option metadata). "Recommend layer" measures the domain gap at
every layer of the loaded model with unlabeled images only
(:func:`~napari_lmadda.adapt.recommend.recommend_layer`) in the background; the recommended
layer is marked on the layer slider, chosen, kept in the viewer's shared state (so it
outlives method changes), and its per-layer gap is plotted.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPolygonF
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QStyle,
    QStyleOptionSlider,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)
from superqt import QRangeSlider

from ..errors import LmaddaError
from . import worker as workers
from .data import images_for_adaptation
from .results import ResultsPanel
from .sci_spinbox import ScientificSpinBox
from .state import AdaptedModel, LmaddaState, Recommendation, get_state

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = [
    "AdaptWidget",
    "LossPlot",
    "GapPlot",
    "MarkedSlider",
    "default_layer",
    "layer_mode",
    "method_label",
]

_DEVICES = ("auto", "cpu", "cuda", "mps")
_RED = "#e06c6c"
_MARK = "#c678dd"  # the recommended layer, on the slider and in the gap plot


def method_label(method: str) -> str:
    """Return the label of a registry method in the method box."""
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


_MEASURE_LABELS = {"w2": "W2", "bhattacharyya": "Bhattacharyya", "sliced_w2": "sliced W2",
                   "probe": "probe"}


def _decision(rec: Any) -> str:
    """``layer 7 (confidence 0.50)``, ``no adaptation needed`` or ``no layer to recommend``."""
    if rec.layer is not None:
        return f"layer {rec.layer} (confidence {rec.confidence:.2f})"
    if rec.reason.startswith("no layer to recommend"):  # a shift no single layer shows
        return "no layer to recommend"
    return "no adaptation needed"


def _recommendation_detail(rec: Any) -> str:
    """One short line under the recommendation (the whole reason is its tooltip)."""
    if rec.layer is None:
        return (f"no shift detected (permutation p = {rec.p_value:.2g}); hover for details"
                if rec.confidence > 0 else rec.reason.split(";")[0])
    picks = ", ".join(f"{_MEASURE_LABELS.get(m, m)} {v if v is not None else '–'}"
                      for m, v in rec.picks.items())
    agree = sum(v == rec.layer for v in rec.picks.values())
    return (f"{agree} of {len(rec.picks)} measures pick it ({picks}); "
            f"shift p = {rec.p_value:.2g}; hover for details")


class MarkedSlider(QSlider):
    """A horizontal slider that marks one value (the recommended layer) with a triangle."""

    def __init__(self) -> None:
        super().__init__(Qt.Orientation.Horizontal)
        self.mark: int | None = None
        self.setMinimumHeight(28)

    def set_mark(self, value: int | None) -> None:
        """Mark ``value`` (None removes the mark)."""
        self.mark = value
        self.update()

    def mark_x(self) -> float | None:
        """Horizontal pixel position of the mark (None without one)."""
        if self.mark is None or not self.minimum() <= self.mark <= self.maximum():
            return None
        opt = QStyleOptionSlider()
        self.initStyleOption(opt)
        style = self.style()
        cc, sc = QStyle.ComplexControl.CC_Slider, QStyle.SubControl
        groove = style.subControlRect(cc, opt, sc.SC_SliderGroove, self)
        handle = style.subControlRect(cc, opt, sc.SC_SliderHandle, self)
        span = max(1, groove.width() - handle.width())
        pos = QStyle.sliderPositionFromValue(self.minimum(), self.maximum(), self.mark, span)
        return groove.x() + handle.width() / 2 + pos

    def paintEvent(self, event: Any) -> None:
        """Draw the slider, then the mark under the groove."""
        super().paintEvent(event)
        x = self.mark_x()
        if x is None:
            return
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(_MARK))
        y = float(self.height() - 1)
        painter.drawPolygon(QPolygonF([QPointF(x - 6, y), QPointF(x + 6, y),
                                       QPointF(x, y - 8)]))
        painter.end()


class GapPlot(QWidget):
    """Small bar plot of the combined domain gap per layer, the recommended layer highlighted."""

    def __init__(self) -> None:
        super().__init__()
        import pyqtgraph as pg

        self.plot = pg.PlotWidget(background="#1f2127")
        self.plot.setMinimumHeight(120)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.setMenuEnabled(False)
        self.plot.showGrid(x=False, y=True, alpha=0.2)
        self.plot.setLabel("bottom", "layer")
        self.plot.setLabel("left", "gap / largest")
        self.plot.setYRange(0, 1.05, padding=0)
        self.bars: Any = None
        dashed = pg.mkPen("#888888", style=Qt.PenStyle.DashLine)
        self.threshold = pg.InfiniteLine(angle=0, pen=dashed)
        self.plot.addItem(self.threshold)
        self.title = QLabel()
        self.title.setWordWrap(True)
        self.title.setStyleSheet("color: gray")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.title)
        layout.addWidget(self.plot, 1)
        self.values: dict[int, float] = {}

    def show_recommendation(self, rec: Any) -> None:
        """Plot ``rec.profile`` (a :class:`~napari_lmadda.adapt.recommend.LayerRecommendation`)."""
        import pyqtgraph as pg

        xs = [r.layer for r in rec.rows]
        ys = [float(rec.profile.get(x, 0.0)) for x in xs]
        self.values = dict(zip(xs, ys))
        brushes = [pg.mkBrush(_MARK if x == rec.layer else "#4a90e2") for x in xs]
        if self.bars is not None:
            self.plot.removeItem(self.bars)
        self.bars = pg.BarGraphItem(x=xs, height=ys, width=0.7, brushes=brushes, pen=None)
        self.plot.addItem(self.bars)
        self.plot.disableAutoRange()
        self.plot.setYRange(0, 1.05, padding=0)
        top = max(ys, default=0.0)
        self.threshold.setValue(rec.fraction * top)
        self.threshold.setVisible(top > 0)
        self.plot.setXRange(min(xs) - 0.6, max(xs) + 0.6, padding=0)
        self.plot.getAxis("bottom").setTicks([[(x, str(x)) for x in xs]])
        self.title.setText(
            f"Domain gap per layer, source model, unlabeled images (significant only; "
            f"<span style='color:{_MARK}'>■</span> recommended; dashed: {rec.fraction:.0%} "
            "of the largest)")


class _PlotTabs(QTabWidget):
    """The plots' tabs, asking for a modest height (pyqtgraph asks for 480 px)."""

    def sizeHint(self) -> Any:
        """A quarter of a laptop screen; the dock's spare room still goes to the plots."""
        hint = super().sizeHint()
        hint.setHeight(260)
        return hint

    def hasHeightForWidth(self) -> bool:
        """No: the height follows :meth:`sizeHint`, not the wrapped plot title."""
        return False


class AdaptWidget(QWidget):
    """Adapt the loaded model to the new microscope's images.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose shared state holds the model and the images.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        from ..adapt.config import AdaptConfig
        from ..adapt.registry import method_names
        from ..options import control

        super().__init__()
        self.viewer = napari_viewer
        self.state: LmaddaState = get_state(napari_viewer)
        self.task: workers.Task | None = None
        self.rec_task: workers.Task | None = None
        self.last_reason: str | None = None
        self.last_recommend_error: str | None = None
        #: settings of "Recommend layer" besides the patch size and device
        self.recommend_options: dict[str, int] = {"n_patches": 32, "probe_steps": 60, "seed": 0}
        defaults = AdaptConfig()

        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.method_combo = QComboBox()
        for key in method_names():  # the registry: new methods show up here
            self.method_combo.addItem(method_label(key), key)
        self.method_combo.setCurrentIndex(max(0, self.method_combo.findData("lmadda")))
        self.method_combo.setToolTip(
            "LM-ADDA adapts only the layers up to the matched layer; ADDA matches the output; "
            "AdaBN only re-estimates BatchNorm statistics")
        self.method_combo.currentIndexChanged.connect(self._on_method)

        self.layer_slider = MarkedSlider()
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
        self.recommend_btn = QPushButton("Recommend layer")
        self.recommend_btn.setToolTip(
            "Measure how far the new-microscope images are from the source images at every "
            "layer of the model (no labels needed) and choose the layer to match. "
            "Stop cancels it.")
        self.recommend_btn.clicked.connect(self.recommend)
        self.rec_label = QLabel()
        self.rec_label.setWordWrap(True)
        self.rec_label.setTextFormat(Qt.TextFormat.RichText)
        self.gap_plot = GapPlot()
        self.option_combos: dict[str, QComboBox] = {}
        option_labels: dict[str, str] = {}
        for method in method_names():
            for name in dock_options(method):
                spec = control(AdaptConfig, name)
                combo = QComboBox()
                combo.addItems(list(spec.choices))
                if str(spec.default) in spec.choices:
                    combo.setCurrentText(str(spec.default))
                combo.setProperty("lmadda_method", method)
                combo.setToolTip(spec.tooltip)
                self.option_combos[name] = combo
                option_labels[name] = spec.label

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
        self.stop_btn.setToolTip("Stop at the next step and keep the best state so far (or "
                                 "stop the layer recommendation)")
        self.stop_btn.clicked.connect(self.stop)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.plot = LossPlot()
        self.plot_tabs = _PlotTabs()
        self.plot_tabs.addTab(self.plot, "Training")
        self.plot_tabs.addTab(self.gap_plot, "Layer gaps")
        self.plot_tabs.setTabToolTip(1, "The last layer recommendation (Recommend layer)")
        self.results = ResultsPanel(napari_viewer)
        self.setMinimumWidth(400)

        form = QFormLayout()
        form.addRow("Method", self.method_combo)
        for name, combo in self.option_combos.items():
            form.addRow(option_labels[name], combo)
        form.addRow("Layer", self.layer_slider)
        form.addRow("Layers", self.range_slider)
        form.addRow(self.layer_label)
        rec_row = QWidget()
        rec_layout = QHBoxLayout(rec_row)
        rec_layout.setContentsMargins(0, 0, 0, 0)
        rec_layout.addWidget(self.recommend_btn, 0, Qt.AlignmentFlag.AlignTop)
        rec_layout.addWidget(self.rec_label, 1)
        self.rec_row = rec_row
        form.addRow(rec_row)
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

        # in a scroll area: on a small screen the dock scrolls instead of squeezing its rows
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addWidget(self.summary)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.plot_tabs, 1)
        layout.addWidget(self.results)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(content)
        self._content = content
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

        self.state.model_changed.connect(self._on_model)
        self.state.data_changed.connect(self._update_summary)
        self.state.data_changed.connect(self._show_recommendation)
        self.state.busy_changed.connect(self._set_idle_ui)
        self.state.recommendation_changed.connect(self._on_recommendation)
        self._on_model(self.state.model)
        self._on_method()
        self._set_idle_ui()

    def sizeHint(self) -> Any:
        """Ask for the room the content needs (the scroll area alone would ask for little)."""
        hint = self._content.sizeHint()
        hint.setWidth(max(hint.width(), self.minimumWidth()))
        return hint

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
        options = {name: combo.currentText() for name, combo in self.option_combos.items()
                   if combo.property("lmadda_method") == self.method}
        return AdaptConfig(
            steps=steps,
            batch_size=int(self.batch_spin.value()),
            patch_size=int(self.patch_spin.value()),
            lr_g=float(self.lr_g_spin.value()),
            lr_d=float(self.lr_d_spin.value()),
            seed=int(self.seed_spin.value()),
            device=self.device_combo.currentText(),
            eval_every=eval_every_for(steps),
            **options,
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
        self.plot_tabs.setCurrentWidget(self.plot)
        self.progress.setRange(0, max(1, config.steps))
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        self.last_reason = None
        self._run_info = (method, layers, self.state.model_label)
        self._set_status(f"Starting {method_label(method)}…")
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
        """Ask the run (or the layer recommendation) to stop at its next step.

        A stopped run keeps the best state so far; a stopped recommendation keeps the
        previous one.
        """
        task = self.task or self.rec_task
        if task is not None:
            task.cancel()
            self.stop_btn.setEnabled(False)
            self.stop_btn.setText("Stopping…")
            self._set_status("Stopping at the next step…" if self.task is not None else
                             "Stopping after the current layer…")

    # ------------------------------------------------------------------ recommendation
    def recommend(self) -> bool:
        """Measure the domain gap at every layer in the background and recommend one.

        Uses the chosen images, patch size and device. When it ends the recommendation is
        stored in the shared state, marked on the layer slider and chosen; problems become
        one-line notifications and the dock is usable again.

        Returns
        -------
        bool
            True if the measurement started.
        """
        from napari.utils.notifications import show_error

        if self.state.busy:
            return False
        model = self.state.model
        try:
            if model is None:
                raise LmaddaError("load a model first (Model widget)")
            source = images_for_adaptation(self.viewer, "source")
            target = images_for_adaptation(self.viewer, "target")
        except LmaddaError as exc:
            self.last_recommend_error = str(exc)
            show_error(f"Cannot recommend a layer: {exc}")
            self._set_status(str(exc), error=True)
            return False
        patch = int(self.patch_spin.value())
        device = self.device_combo.currentText()
        options = dict(self.recommend_options)
        self._rec_inputs = (dict(self.state.selections), patch)
        self.last_recommend_error = None
        self.progress.setRange(0, model.num_layers)
        self.progress.setValue(0)
        self.progress.setFormat("measuring layer gaps…")
        self._set_status(f"Measuring the domain gap at {model.num_layers} layers "
                         f"({patch} px patches)…")
        self.state.set_busy(True)
        task = workers.start(
            lambda cancel: workers.recommend_messages(model, source, target, patch_size=patch,
                                                      device=device, cancel=cancel, **options),
            self._on_recommend_message,
            self._on_recommend_done,
        )
        if not task.done:
            self.rec_task = task
            self._set_idle_ui()
        return True

    def _on_recommend_message(self, msg: Any) -> None:
        from napari.utils.notifications import show_error, show_info

        if isinstance(msg, workers.RecommendProgress):
            self.progress.setMaximum(max(1, msg.total))
            self.progress.setValue(msg.done)
            self.progress.setFormat(f"layer gaps: {msg.done} / {msg.total} · {msg.message}")
        elif isinstance(msg, workers.RecommendDone):
            selections, patch = self._rec_inputs
            self.state.set_recommendation(
                Recommendation(msg.result, selections, patch, msg.seconds))
            rec = msg.result
            self.progress.setFormat(f"layer gaps measured in {msg.seconds:.0f} s")
            show_info(f"Layer recommendation: {_decision(rec)}")
            self._set_status(f"Layer recommendation: {_decision(rec)}")
        elif isinstance(msg, workers.RunFailed):
            self.last_recommend_error = msg.message
            if self.rec_task is not None and self.rec_task.cancelled:
                show_info("Layer recommendation stopped; the previous one is kept")
                self._set_status("Layer recommendation stopped")
                self.progress.setFormat("stopped")
                return
            show_error(f"Layer recommendation failed: {msg.message}")
            self._set_status(msg.message, error=True)
            self.progress.setFormat("recommendation failed")

    def _on_recommend_done(self) -> None:
        self.rec_task = None
        self.state.set_busy(False)
        self._set_idle_ui()

    def _on_recommendation(self, rec: Recommendation | None) -> None:
        model = self.state.model
        layer = rec.layer if rec is not None else None
        if layer is not None and model is not None and 1 <= layer <= model.num_layers:
            self.layer_slider.setValue(layer)
        self._show_recommendation()
        self.plot_tabs.setCurrentWidget(self.gap_plot if rec is not None else self.plot)

    def _show_recommendation(self, *_: Any) -> None:
        rec = self.state.recommendation
        self.layer_slider.set_mark(rec.layer if rec is not None else None)
        self.plot_tabs.setTabEnabled(1, rec is not None)
        if rec is None:
            self.rec_label.setText("<span style='color:gray'>not measured: which layer to "
                                   "match, from unlabeled images</span>")
            self.rec_label.setToolTip("")
            self.layer_slider.setToolTip("")
            return
        r = rec.result
        if r.layer is None:
            head = f"<b>{_decision(r)}</b> (confidence {r.confidence:.2f})"
        else:
            head = (f"<b><span style='color:{_MARK}'>▲</span> recommended: layer {r.layer}</b> "
                    f"(confidence {r.confidence:.2f})")
        stale = ("" if self.state.recommendation_is_current() else
                 f" <span style='color:{_RED}'>measured on other images: recommend again"
                 "</span>")
        self.rec_label.setText(f"{head}{stale}<br><span style='color:gray'>"
                               f"{_recommendation_detail(r)}</span>")
        self.rec_label.setToolTip(r.reason)
        self.layer_slider.setToolTip(r.summary())
        self.gap_plot.show_recommendation(r)
        self._update_layer_label()

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
            self._set_status(f"Running {method_label(ev.method)}{where}: "
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
        recommending = self.rec_task is not None
        if recommending:
            self.stop_btn.setEnabled(not self.rec_task.cancelled)
        if not running and not recommending:
            self.stop_btn.setText("Stop")
        self.recommend_btn.setEnabled(not busy and self.state.model is not None)
        self.recommend_btn.setText("Recommending…" if recommending else "Recommend layer")
        for w in (self.method_combo, self.layer_slider, self.range_slider, self.steps_spin,
                  self.lr_g_spin, self.lr_d_spin, self.batch_spin, self.patch_spin,
                  self.seed_spin, self.device_combo, *self.option_combos.values()):
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
        self._update_layer_label()
        self._update_summary()
        self._show_recommendation()
        self._set_idle_ui()

    def _on_method(self, *_: Any) -> None:
        mode = layer_mode(self.method)
        self._set_row_visible(self.layer_slider, mode == "one")
        self._set_row_visible(self.range_slider, mode == "range")
        self.layer_label.setVisible(mode != "none")
        self.rec_row.setVisible(mode != "none")
        for combo in self.option_combos.values():
            self._set_row_visible(combo, combo.property("lmadda_method") == self.method)
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
                text += f" · <span style='color:{_MARK}'>▲ recommended</span>"
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
