"""A horizontal slider that marks one value (the recommended layer) with a triangle."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPolygonF
from qtpy.QtWidgets import QSlider, QStyle, QStyleOptionSlider

from .plots import MARK_COLOUR

__all__ = ["MarkedSlider"]


class MarkedSlider(QSlider):
    """A horizontal slider with an optional mark under one value."""

    def __init__(self) -> None:
        super().__init__(Qt.Orientation.Horizontal)
        self.mark: int | None = None
        self.setMinimumHeight(26)
        self.setPageStep(1)
        self.setTickPosition(QSlider.TickPosition.TicksBelow)

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

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        """Draw the slider, then the mark under the groove."""
        super().paintEvent(event)
        x = self.mark_x()
        if x is None:
            return
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(MARK_COLOUR))
        y = float(self.height() - 1)
        painter.drawPolygon(QPolygonF([QPointF(x - 6, y), QPointF(x + 6, y),
                                       QPointF(x, y - 8)]))
        painter.end()
