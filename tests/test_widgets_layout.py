"""The dock on real screen sizes, in napari's default layout (the dock on the right).

At 1920x1080 every control of the open step is on screen without scrolling; at 1366x768
every step and every control is reachable by scrolling the dock alone.
"""

from __future__ import annotations

import pytest
from qtpy.QtCore import QRect
from qtpy.QtWidgets import (
    QAbstractButton,
    QAbstractSlider,
    QAbstractSpinBox,
    QComboBox,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QTableWidget,
    QWidget,
)

from widget_helpers import PLUGIN, open_dock

CONTROLS = (QAbstractButton, QAbstractSlider, QAbstractSpinBox, QComboBox, QLineEdit,
            QListWidget, QProgressBar, QTableWidget)
#: a maximised window on a 1920x1080 and on a 1366x768 screen (minus a 40 px task bar)
FULL_HD, LAPTOP = (1920, 1040), (1366, 728)


def _shown(viewer, size, qtbot):
    win = viewer.window._qt_window
    win.resize(*size)
    win.show()
    qtbot.waitExposed(win)
    assert (win.width(), win.height()) == size  # not clamped to the virtual screen
    dock = open_dock(viewer)
    viewer.open_sample(PLUGIN, "cells")  # the demo model, and both image sets chosen
    qtbot.wait(50)
    return win, dock


def _controls(step: QWidget) -> list[QWidget]:
    from napari_lmadda.widgets.plots import _PlotBox

    found = [w for w in step.findChildren(QWidget)
             if isinstance(w, (*CONTROLS, _PlotBox)) and w.isVisibleTo(step)
             and not isinstance(w.parent(), (QAbstractSpinBox, QComboBox))]
    # the arrows inside spin boxes and scroll bars of lists are parts, not controls
    return [w for w in found if not (isinstance(w, QAbstractButton) and
                                     isinstance(w.parent(), QAbstractSlider))]


def _rect_in(widget: QWidget, other: QWidget) -> QRect:
    top_left = widget.mapTo(other, widget.rect().topLeft())
    return QRect(top_left, widget.size())


@pytest.mark.parametrize("step", ["Model", "Train", "Images", "Adapt", "Results"])
def test_full_hd_shows_the_open_step_without_scrolling(make_napari_viewer, qtbot, step):
    viewer = make_napari_viewer(show=True)
    win, dock = _shown(viewer, FULL_HD, qtbot)
    if step == "Train":
        dock.model.open_training()
        step = "Model"
    dock.open_step(step)
    qtbot.wait(50)
    viewport = dock.scroll.viewport()
    assert dock.scroll.verticalScrollBar().value() == 0
    area = viewport.rect()
    section = dock.sections[step]
    controls = _controls(section.body)
    assert len(controls) >= 3
    for w in [section.header, *controls]:
        r = _rect_in(w, viewport)
        assert area.contains(r), f"{type(w).__name__} {w.objectName() or ''} at {r} " \
                                 f"outside {area} ({step})"
    for name, other in dock.sections.items():  # the other steps' headers are on screen too
        assert area.contains(_rect_in(other.header, viewport)), name


def test_laptop_reaches_every_step_by_scrolling_the_dock(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    win, dock = _shown(viewer, LAPTOP, qtbot)
    assert dock.minimumSizeHint().height() <= 300  # the window never grows past the screen
    assert win.height() == LAPTOP[1]
    viewport = dock.scroll.viewport()
    for name, section in dock.sections.items():
        dock.open_step(name)
        qtbot.wait(30)
        for w in [section.header, *_controls(section.body)]:
            dock.scroll.ensureWidgetVisible(w, 0, 0)
            qtbot.wait(5)
            r = _rect_in(w, viewport)
            assert viewport.rect().intersects(r) and r.top() >= 0, f"{name}: {w} at {r}"
    assert dock.width() < win.width() / 3  # the canvas keeps most of a laptop screen
