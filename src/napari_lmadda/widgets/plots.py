"""The dock's live plots (pyqtgraph): adaptation losses, layer gaps, source validation.

Points are collected as they come and drawn by :meth:`refresh`, which the steps call at most
a few times a second: in napari every redraw of a dock repaints the whole window (over a
second of GPU-less compositing per few redraws), so drawing every step would stall napari.
"""

from __future__ import annotations

import math
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QTabWidget, QVBoxLayout, QWidget

__all__ = ["LossPlot", "GapPlot", "ValidationPlot", "PlotTabs", "MARK_COLOUR"]

#: the recommended layer, on the slider and in the gap plot
MARK_COLOUR = "#c678dd"
_BACKGROUND = "#1f2127"


def _plot_widget(height: int) -> Any:
    import pyqtgraph as pg

    plot = pg.PlotWidget(background=_BACKGROUND)
    plot.setMinimumHeight(height)
    plot.showGrid(x=True, y=True, alpha=0.2)
    plot.setMouseEnabled(x=False, y=False)
    plot.hideButtons()
    plot.setMenuEnabled(False)
    return plot


def _finite(v: Any) -> float:
    return float(v) if v is not None and math.isfinite(v) else float("nan")


def _fix_x(plot: Any, total_steps: int) -> None:
    plot.disableAutoRange()
    plot.setXRange(0, max(1, int(total_steps)), padding=0.02)


def _grow_y(plot: Any, current: tuple[float, float], values: list[float]) -> tuple[float, float]:
    """Widen the value axis when the data leave it (never shrink it: no redraw per point)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return current
    lo, hi = min(finite), max(finite)
    if lo >= current[0] and hi <= current[1]:
        return current
    new = (min(current[0], lo), max(current[1], hi + 0.2 * (hi - min(lo, current[0]))))
    plot.setYRange(*new, padding=0.02)
    return new


class _PlotBox(QWidget):
    """A plot with a modest preferred height: pyqtgraph alone asks for 480 px.

    Its height does not follow its width either (the wrapped legend would otherwise make a
    scroll area ask for the plot's full 480 px); spare room in the dock still goes to it.
    """

    PREFERRED_HEIGHT = 170

    def sizeHint(self) -> Any:  # noqa: N802 - Qt override
        """A modest height."""
        hint = super().sizeHint()
        hint.setHeight(self.PREFERRED_HEIGHT)
        return hint

    def hasHeightForWidth(self) -> bool:  # noqa: N802 - Qt override
        """No: the height follows :meth:`sizeHint`."""
        return False


class _Legend(QLabel):
    def __init__(self, items: list[tuple[str, str, str]]) -> None:
        super().__init__("  ".join(f"<span style='color:{c}'>{glyph}</span> {name}"
                                   for name, c, glyph in items))
        self.setWordWrap(True)


class LossPlot(_PlotBox):
    """D loss, G loss and D accuracy against the step; the kept state marked."""

    SERIES = (("D loss", "#f5a623"), ("G loss", "#4a90e2"), ("D accuracy", "#7ed321"))

    def __init__(self) -> None:
        super().__init__()
        self.plot = _plot_widget(120)
        self.plot.setLabel("bottom", "step")
        import pyqtgraph as pg

        self.curves = [self.plot.plot([], [], name=name, pen=pg.mkPen(colour, width=1.6),
                                      connect="finite") for name, colour in self.SERIES]
        self.best = self.plot.plot([], [], pen=None, symbol="o", symbolSize=7,
                                   symbolBrush="#ffffff")
        legend = _Legend([(n, c, "━") for n, c in self.SERIES] + [("kept state", "#fff", "●")])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(legend)
        layout.addWidget(self.plot, 1)
        self.clear()

    def clear(self) -> None:
        """Forget every point."""
        self.steps: list[int] = []
        self.values: list[list[float]] = [[], [], []]
        self.best_step: int | None = None
        self._drawn = -1
        self._y = (0.0, 1.0)
        for curve in self.curves:
            curve.setData([], [])
        self.best.setData([], [])

    def start(self, total_steps: int) -> None:
        """Fix the step axis for a run of ``total_steps`` (a moving axis redraws its labels)."""
        _fix_x(self.plot, total_steps)
        self.plot.setYRange(*self._y, padding=0.02)

    def add(self, step: int, loss_d: float, loss_g: float, d_acc: float) -> None:
        """Append one step (drawn at the next :meth:`refresh`)."""
        self.steps.append(step)
        for vals, v in zip(self.values, (loss_d, loss_g, d_acc)):
            vals.append(_finite(v))

    def mark_best(self, step: int) -> None:
        """Mark the state currently kept (on the D-accuracy curve, at the next refresh)."""
        self.best_step = step

    def refresh(self) -> None:
        """Draw what came since the last refresh (nothing when nothing came)."""
        if len(self.steps) == self._drawn:
            return
        self._drawn = len(self.steps)
        for curve, vals in zip(self.curves, self.values):
            curve.setData(self.steps, vals)
        self._y = _grow_y(self.plot, self._y, [v for vals in self.values for v in vals])
        step = self.best_step
        if step is not None and step in self.steps:
            y = self.values[2][self.steps.index(step)]
            self.best.setData([step], [y if math.isfinite(y) else 0.5])


class ValidationPlot(_PlotBox):
    """Source training: L1 loss (left) and validation Pearson per evaluation (right axis)."""

    def __init__(self) -> None:
        super().__init__()
        import pyqtgraph as pg

        self.plot = _plot_widget(110)
        self.plot.setLabel("bottom", "step")
        self.plot.setLabel("left", "validation Pearson")
        self.plot.setYRange(-0.1, 1.05, padding=0)
        self.loss = self.plot.plot([], [], pen=pg.mkPen("#4a90e2", width=1.2))
        self.curve = self.plot.plot([], [], pen=pg.mkPen("#7ed321", width=2), symbol="o",
                                    symbolSize=5, symbolBrush="#7ed321")
        self.best = self.plot.plot([], [], pen=None, symbol="o", symbolSize=8,
                                   symbolBrush="#ffffff")
        legend = _Legend([("validation Pearson", "#7ed321", "━"),
                          ("L1 (scaled to the first)", "#4a90e2", "━"),
                          ("best", "#fff", "●")])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(legend)
        layout.addWidget(self.plot, 1)
        self.clear()

    def start(self, total_steps: int) -> None:
        """Fix the step axis for a training of ``total_steps``."""
        _fix_x(self.plot, total_steps)

    def clear(self) -> None:
        """Forget every point."""
        self.steps: list[int] = []
        self.pearson: list[float] = []
        self.loss_steps: list[int] = []
        self.losses: list[float] = []
        self.best_step: int | None = None
        self._drawn = (-1, -1)
        for c in (self.loss, self.curve, self.best):
            c.setData([], [])

    def add_loss(self, step: int, loss: float) -> None:
        """Append a training loss (drawn at the next refresh)."""
        self.loss_steps.append(step)
        self.losses.append(_finite(loss))

    def add(self, step: int, pearson: float, is_best: bool) -> None:
        """Append one validation (drawn at the next refresh)."""
        self.steps.append(step)
        self.pearson.append(_finite(pearson))
        if is_best:
            self.best_step = step

    def refresh(self) -> None:
        """Draw what came since the last refresh."""
        if (len(self.steps), len(self.losses)) == self._drawn:
            return
        self._drawn = (len(self.steps), len(self.losses))
        self.curve.setData(self.steps, self.pearson)
        first = next((v for v in self.losses if math.isfinite(v) and v > 0), None)
        if first:
            self.loss.setData(self.loss_steps, [v / first for v in self.losses])
        if self.best_step in self.steps:
            i = self.steps.index(self.best_step)
            self.best.setData([self.best_step], [self.pearson[i]])


class GapPlot(_PlotBox):
    """Bars of the combined domain gap per layer, the recommended layer highlighted."""

    def __init__(self) -> None:
        super().__init__()
        import pyqtgraph as pg

        self.plot = _plot_widget(110)
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
        brushes = [pg.mkBrush(MARK_COLOUR if x == rec.layer else "#4a90e2") for x in xs]
        if self.bars is not None:
            self.plot.removeItem(self.bars)
        self.bars = pg.BarGraphItem(x=xs, height=ys, width=0.7, brushes=brushes, pen=None)
        self.plot.addItem(self.bars)
        self.plot.disableAutoRange()
        self.plot.setYRange(0, 1.05, padding=0)
        top = max(ys, default=0.0)
        self.threshold.setValue(rec.fraction * top)
        self.threshold.setVisible(top > 0)
        if xs:
            self.plot.setXRange(min(xs) - 0.6, max(xs) + 0.6, padding=0)
        self.plot.getAxis("bottom").setTicks([[(x, str(x)) for x in xs]])
        self.title.setText(
            f"Domain gap per layer (source model, unlabeled images; "
            f"<span style='color:{MARK_COLOUR}'>■</span> recommended; dashed: "
            f"{rec.fraction:.0%} of the largest)")


class PlotTabs(QTabWidget):
    """The plots' tabs, asking for a modest height (pyqtgraph alone asks for 480 px)."""

    def __init__(self, height: int = 200) -> None:
        super().__init__()
        self._height = height

    def sizeHint(self) -> Any:  # noqa: N802 - Qt override
        """A modest height; spare room in the dock still goes to the plots."""
        hint = super().sizeHint()
        hint.setHeight(self._height)
        return hint

    def minimumSizeHint(self) -> Any:  # noqa: N802 - Qt override
        """Small enough for a laptop screen."""
        hint = super().minimumSizeHint()
        hint.setHeight(min(hint.height(), 150))
        return hint

    def hasHeightForWidth(self) -> bool:  # noqa: N802 - Qt override
        """No: the height follows :meth:`sizeHint`, not the wrapped plot title."""
        return False
