"""One step of the dock: a header that opens or closes it, with a one-line summary.

A closed step shows what was chosen in it (``demo model · 12 layers``), so the dock reads as
the work done so far; an open step shows its controls.
"""

from __future__ import annotations

from typing import Any

from psygnal import Signal
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

__all__ = ["StepSection"]


class _Header(QFrame):
    """The clickable row: arrow, number and title, summary."""

    def __init__(self, section: StepSection) -> None:
        super().__init__()
        self.section = section
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setObjectName("lmaddaStepHeader")

    def mousePressEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        """Open or close the step."""
        self.section.set_open(not self.section.is_open)
        self.section.opened_by_user.emit(self.section.is_open)


class StepSection(QWidget):
    """A titled step whose body opens and closes.

    Parameters
    ----------
    number : int
        Position of the step in the work (shown before the title).
    title : str
        The step's name (``Model``, ``Images``, ...).
    body : QWidget
        The step's controls.

    Signals
    -------
    opened_by_user(bool)
        The user clicked the header (True when it opened).
    """

    opened_by_user = Signal(bool)

    def __init__(self, number: int, title: str, body: QWidget) -> None:
        super().__init__()
        self.number, self.title, self.body = number, title, body
        self.is_open = False
        self.arrow = QToolButton()
        self.arrow.setAutoRaise(True)
        self.arrow.setArrowType(Qt.ArrowType.RightArrow)
        self.arrow.clicked.connect(lambda: (self.set_open(not self.is_open),
                                            self.opened_by_user.emit(self.is_open)))
        self.heading = QLabel(f"<b>{number}&nbsp;&nbsp;{title}</b>")
        self.summary = QLabel()
        self.summary.setStyleSheet("color: gray")
        self.summary.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.header = _Header(self)
        row = QHBoxLayout(self.header)
        row.setContentsMargins(0, 2, 4, 2)
        row.addWidget(self.arrow)
        row.addWidget(self.heading)
        row.addSpacing(6)
        row.addWidget(self.summary, 1)
        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)
        line.setFrameShadow(QFrame.Shadow.Sunken)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(line)
        layout.addWidget(self.header)
        layout.addWidget(body)
        body.setVisible(False)

    def set_open(self, is_open: bool) -> None:
        """Show or hide the step's controls."""
        self.is_open = bool(is_open)
        self.body.setVisible(self.is_open)
        self.arrow.setArrowType(Qt.ArrowType.DownArrow if self.is_open
                                else Qt.ArrowType.RightArrow)

    def set_summary(self, text: str, tooltip: str = "") -> None:
        """One line about what was chosen in this step."""
        self.summary.setText(text)
        self.summary.setToolTip(tooltip or text)
