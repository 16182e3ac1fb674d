"""Redraw the dock at most every so often while a task reports progress.

In napari any change in a dock repaints the whole window: without a GPU (a laptop's
software OpenGL, a remote desktop, Xvfb) that costs 60-200 ms each time on the project's
2-core machine, so redrawing at every training step stalls napari. :class:`Throttle` keeps
the latest progress and draws it at most once per :data:`REFRESH_MS` (the first one at
once), and all of it when the task ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QTimer

__all__ = ["Throttle", "REFRESH_MS"]

#: the shortest time between two progress redraws during a task
REFRESH_MS = 2000


class Throttle:
    """Call ``draw(latest)`` at most every ``interval_ms`` while values are pushed.

    Parameters
    ----------
    draw : callable
        Draws the latest pushed value (in the GUI thread).
    interval_ms : int
        Shortest time between two draws.
    parent : QObject
        Owner of the timer.
    """

    def __init__(self, draw: Callable[[Any], None], parent: Any,
                 interval_ms: int = REFRESH_MS) -> None:
        self.draw = draw
        self.pending: Any = None
        self.has_pending = False
        self.timer = QTimer(parent)
        self.timer.setSingleShot(True)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._on_timer)

    def push(self, value: Any) -> None:
        """Draw ``value`` now if nothing was drawn lately, else at the next slot."""
        self.pending, self.has_pending = value, True
        if not self.timer.isActive():
            self._draw_pending()
            self.timer.start()

    def flush(self) -> None:
        """Draw what is pending now and stop waiting."""
        self.timer.stop()
        if self.has_pending:
            self._draw_pending()

    def reset(self) -> None:
        """Forget what is pending."""
        self.timer.stop()
        self.pending, self.has_pending = None, False

    def _on_timer(self) -> None:
        if self.has_pending:
            self._draw_pending()
            self.timer.start()

    def _draw_pending(self) -> None:
        value, self.pending, self.has_pending = self.pending, None, False
        self.draw(value)
