"""The plugin's one dock, in the order of the work: Model, Images, Adapt, Results.

Each step is a section that opens and closes (:class:`~.section.StepSection`); one is open
at a time, so the controls of the current step fit a 1080p screen, and the whole dock
scrolls on a laptop. A closed step shows in one line what was chosen in it. The dock moves to
the next step when the current one is done (a model loaded, both image sets chosen, a result
ready) unless the user opened a step by hand since. Messages that matter (a refused model, a
failed export) appear at the top, where the eye is, as well as in napari's toasts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

from .adapt_step import AdaptStep
from .images_step import ImagesStep
from .messages import MessageBar
from .model_step import ModelStep
from .results_step import ResultsStep
from .section import StepSection
from .state import LmaddaState, get_state, unwrap

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["LmaddaDock", "STEPS"]

#: the steps, in the order of the work
STEPS = ("Model", "Images", "Adapt", "Results")
#: the steps with a plot or table that takes the dock's spare height
_GROWS = ("Model", "Adapt")
#: the width the dock asks for (its minimum is a little less)
PREFERRED_WIDTH = 440


class LmaddaDock(QWidget):
    """Model -> Images -> Adapt -> Results, in one scrolling dock.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer the plugin works in.

    Attributes
    ----------
    model, images, adapt, results : QWidget
        The four steps (:class:`ModelStep`, :class:`ImagesStep`, :class:`AdaptStep`,
        :class:`ResultsStep`).
    sections : dict
        Step name -> its :class:`StepSection`.
    message : MessageBar
        The message line at the top.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = unwrap(napari_viewer)
        self.state: LmaddaState = get_state(napari_viewer)
        self.model = ModelStep(napari_viewer)
        self.images = ImagesStep(napari_viewer)
        self.adapt = AdaptStep(napari_viewer)
        self.results = ResultsStep(napari_viewer)
        self.train = self.model.training
        self.message = MessageBar(self.state)
        bodies = (self.model, self.images, self.adapt, self.results)
        self.sections = {name: StepSection(i + 1, name, body)
                         for i, (name, body) in enumerate(zip(STEPS, bodies))}
        self._by_hand = False

        content = QWidget()
        column = QVBoxLayout(content)
        column.setContentsMargins(4, 2, 4, 2)
        column.setSpacing(2)
        for name, section in self.sections.items():
            column.addWidget(section)
            section.opened_by_user.connect(
                lambda is_open, n=name: self._on_header(n, is_open))
        column.addStretch(1)
        self._column = column
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(content)
        self.scroll = scroll
        self._content = content
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(2)
        outer.addWidget(self.message)
        outer.addWidget(scroll, 1)
        self.setMinimumWidth(380)

        s = self.state
        s.model_changed.connect(self._on_model)
        s.data_changed.connect(self._on_data)
        s.adapted_changed.connect(self._update_summaries)
        s.recommendation_changed.connect(self._update_summaries)
        self.adapt.result_ready.connect(self._on_result)
        self.results.shown.connect(lambda *_: (self.open_step("Results", auto=True),
                                               self._update_summaries()))
        self.adapt.method_combo.currentIndexChanged.connect(self._update_summaries)
        self.adapt.layer_slider.valueChanged.connect(self._update_summaries)
        self.adapt.steps_spin.valueChanged.connect(self._update_summaries)
        self.model.train_btn.clicked.connect(lambda: self.open_step("Model"))
        self.adapt.device_combo.currentIndexChanged.connect(self._sync_device)
        for combo in (self.adapt.device_combo, self.train.device_combo):
            combo.refresh()
        self._update_summaries()
        self.open_step(self._first_open_step())

    # ------------------------------------------------------------------ steps
    def open_step(self, name: str, auto: bool = False) -> None:
        """Open step ``name`` and close the others (``auto``: not when the user chose)."""
        if auto and self._by_hand:
            return
        grows = name in _GROWS
        for i, (n, section) in enumerate(self.sections.items()):
            section.set_open(n == name)
            # the open step's plot or table takes the spare height; else it stays below
            self._column.setStretch(i, 1 if n == name and grows else 0)
        self._column.setStretch(len(self.sections), 0 if grows else 1)
        self._update_summaries()
        # the scroll area does not shrink its content when a tall step closes (a hidden body
        # with height-for-width): resize it again once the layout has settled
        QTimer.singleShot(0, self._refit)

    def _refit(self) -> None:
        self.scroll.setWidgetResizable(True)  # recomputes the content's size for the viewport

    @property
    def current_step(self) -> str | None:
        """The open step (None when all are closed)."""
        return next((n for n, s in self.sections.items() if s.is_open), None)

    def _on_header(self, name: str, is_open: bool) -> None:
        self._by_hand = True
        if is_open:
            self.open_step(name)

    def _first_open_step(self) -> str:
        s = self.state
        if s.model is None:
            return "Model"
        if not all(s.selections.values()):
            return "Images"
        return "Adapt"

    def _on_model(self, model: Any) -> None:
        self._by_hand = False
        if model is not None and not self.model.training_open:
            self.open_step(self._first_open_step(), auto=True)
        self._update_summaries()

    def _on_data(self, *_: Any) -> None:
        if self.state.model is not None and all(self.state.selections.values()) \
                and self.current_step == "Images":
            self.open_step("Adapt", auto=True)
        self._update_summaries()

    def _on_result(self, adapted: Any) -> None:
        self.results.on_new_result(adapted)
        self._update_summaries()

    def _sync_device(self, *_: Any) -> None:
        self.results.device = self.adapt.device_combo.device()

    def _update_summaries(self, *_: Any) -> None:
        steps = (self.model, self.images, self.adapt, self.results)
        for section, step in zip(self.sections.values(), steps):
            section.set_summary(step.summary())

    def sizeHint(self) -> Any:  # noqa: N802 - Qt override
        """The content's height (a scroll area alone asks for little), a narrow width."""
        hint = self._content.sizeHint()
        hint.setWidth(PREFERRED_WIDTH)
        return hint
