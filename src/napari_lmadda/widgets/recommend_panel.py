""""Recommend layer": which layer to match, measured from unlabeled images.

The panel measures the domain gap at every layer of the loaded model
(:func:`~napari_lmadda.adapt.recommend.recommend_layer`) in the background. The recommended
layer is marked on the Adapt step's layer slider, chosen, kept in the viewer's shared state
(it outlives method changes) and its per-layer gap is plotted.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

from ..errors import LmaddaError
from . import worker as workers
from .image_sets import images_for_adaptation
from .messages import notify
from .plots import MARK_COLOUR, GapPlot
from .state import Recommendation

__all__ = ["RecommendPanel", "decision", "recommendation_detail", "NO_ADAPTATION"]

_RED = "#e06c6c"
#: the words for "the images are no further from the source than it is from itself"
NO_ADAPTATION = "no adaptation needed"
_MEASURE_LABELS = {"w2": "W2", "bhattacharyya": "Bhattacharyya", "sliced_w2": "sliced W2",
                   "probe": "probe"}


def decision(rec: Any) -> str:
    """``layer 7 (confidence 0.50)``, ``no adaptation needed`` or ``no layer to recommend``."""
    if rec.layer is not None:
        return f"layer {rec.layer} (confidence {rec.confidence:.2f})"
    if rec.reason.startswith("no layer to recommend"):  # a shift no single layer shows
        return "no layer to recommend"
    return NO_ADAPTATION


def recommendation_detail(rec: Any) -> str:
    """One short line under the recommendation (the whole reason is its tooltip)."""
    if rec.layer is None:
        return (f"no shift detected (permutation p = {rec.p_value:.2g}); hover for details"
                if rec.confidence > 0 else rec.reason.split(";")[0])
    picks = ", ".join(f"{_MEASURE_LABELS.get(m, m)} {v if v is not None else '–'}"
                      for m, v in rec.picks.items())
    agree = sum(v == rec.layer for v in rec.picks.values())
    return (f"{agree} of {len(rec.picks)} measures pick it ({picks}); "
            f"shift p = {rec.p_value:.2g}")


class RecommendPanel(QWidget):
    """The "Recommend layer" button, its result, and the gap plot it fills.

    Parameters
    ----------
    host : AdaptStep
        The Adapt step: its state, viewer, layer slider, progress bar, status and plots.
    """

    def __init__(self, host: Any) -> None:
        super().__init__()
        self.host = host
        self.state = host.state
        self.task: workers.Task | None = None
        self.last_error: str | None = None
        #: settings besides the patch size and device
        self.options: dict[str, int] = {"n_patches": 32, "probe_steps": 60, "seed": 0}
        self.button = QPushButton("Recommend layer")
        self.button.setToolTip(
            "Measure how far the new-microscope images are from the source images at every "
            "layer of the model (no labels needed) and choose the layer to match. "
            "Stop cancels it.")
        self.button.clicked.connect(self.recommend)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.TextFormat.RichText)
        self.gap_plot = GapPlot()
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.button, 0, Qt.AlignmentFlag.AlignTop)
        row.addWidget(self.label, 1)

    # ------------------------------------------------------------------ run
    def recommend(self) -> bool:
        """Measure the domain gap at every layer in the background and recommend one.

        Returns
        -------
        bool
            True if the measurement started.
        """
        if self.state.busy:
            return False
        host = self.host
        model = self.state.model
        try:
            if model is None:
                raise LmaddaError("load a model first (Model step)")
            source = images_for_adaptation(host.viewer, "source")
            target = images_for_adaptation(host.viewer, "target")
        except LmaddaError as exc:
            self.last_error = str(exc)
            notify(self.state, "error", f"Cannot recommend a layer: {exc}")
            host.set_status(str(exc), error=True)
            return False
        patch = int(host.patch_spin.value())
        device = host.device_combo.device()
        options = dict(self.options)
        self._inputs = (dict(self.state.selections), patch)
        self.last_error = None
        host.progress.setRange(0, model.num_layers)
        host.progress.setValue(0)
        host.progress.setFormat("measuring layer gaps…")
        host.set_status(f"Measuring the domain gap at {model.num_layers} layers "
                        f"({patch} px patches) on {host.device_combo.describe(device)}…")
        self.state.set_busy(True)
        task = workers.start(
            lambda cancel: workers.recommend_messages(model, source, target, patch_size=patch,
                                                      device=device, cancel=cancel, **options),
            self._on_message,
            self._on_done,
        )
        if not task.done:
            self.task = task
            host.set_idle_ui()
        return True

    def _on_message(self, msg: Any) -> None:
        host = self.host
        if isinstance(msg, workers.RecommendProgress):
            host.progress.setMaximum(max(1, msg.total))
            host.progress.setValue(msg.done)
            host.progress.setFormat(f"layer gaps: {msg.done} / {msg.total} · {msg.message}")
        elif isinstance(msg, workers.RecommendDone):
            selections, patch = self._inputs
            self.state.set_recommendation(
                Recommendation(msg.result, selections, patch, msg.seconds))
            host.progress.setFormat(f"layer gaps measured in {msg.seconds:.0f} s")
            host.set_status(f"Layer recommendation: {decision(msg.result)}")
        elif isinstance(msg, workers.RunFailed):
            self.last_error = msg.message
            if self.task is not None and self.task.cancelled:
                host.set_status("Layer recommendation stopped; the previous one is kept")
                host.progress.setFormat("stopped")
                return
            notify(self.state, "error", f"Layer recommendation failed: {msg.message}")
            host.set_status(msg.message, error=True)
            host.progress.setFormat("recommendation failed")

    def _on_done(self) -> None:
        self.task = None
        self.state.set_busy(False)
        self.host.set_idle_ui()

    # ------------------------------------------------------------------ display
    def show_recommendation(self) -> None:
        """Show the viewer's recommendation (or that there is none) and mark the slider."""
        host = self.host
        rec = self.state.recommendation
        host.layer_slider.set_mark(rec.layer if rec is not None else None)
        host.plot_tabs.setTabEnabled(1, rec is not None)
        if rec is None:
            self.label.setText("<span style='color:gray'>not measured: which layer to "
                               "match, from unlabeled images</span>")
            self.label.setToolTip("")
            host.layer_slider.setToolTip("")
            return
        r = rec.result
        if r.layer is None:
            head = f"<b>{decision(r)}</b> (confidence {r.confidence:.2f})"
        else:
            head = (f"<b><span style='color:{MARK_COLOUR}'>▲</span> recommended: layer "
                    f"{r.layer}</b> (confidence {r.confidence:.2f})")
        stale = ("" if self.state.recommendation_is_current() else
                 f" <span style='color:{_RED}'>measured on other images: recommend again"
                 "</span>")
        self.label.setText(f"{head}{stale}<br><span style='color:gray'>"
                           f"{recommendation_detail(r)}</span>")
        self.label.setToolTip(r.reason)
        host.layer_slider.setToolTip(r.summary())
        self.gap_plot.show_recommendation(r)
