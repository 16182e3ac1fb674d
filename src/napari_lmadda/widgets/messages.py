"""Messages where the eye is: a line at the top of the dock, as well as napari's toast.

napari's notifications fade and cut long text; a refused model or export must stay readable.
:func:`notify` sends a message both ways; :class:`MessageBar` shows the last one in full (word
wrapped, selectable) until the user closes it or the problem is solved.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QHBoxLayout, QLabel, QToolButton

from .state import LmaddaState

__all__ = ["notify", "MessageBar", "COLOURS"]

#: text colour per level (readable on napari's dark and light themes)
COLOURS = {"error": "#e06c6c", "warning": "#e5a50a", "info": "#7fb3e0"}


def notify(state: LmaddaState, level: str, text: str, toast: bool = True) -> None:
    """Show ``text`` in the dock and, unless ``toast`` is false, as a napari notification.

    Parameters
    ----------
    state : LmaddaState
        The viewer's state (its dock shows the message).
    level : {"error", "warning", "info"}
        How serious it is.
    text : str
        One line for the user, never a traceback.
    toast : bool
        Also show napari's notification.
    """
    if toast:
        from napari.utils import notifications

        getattr(notifications, f"show_{level}")(text)
    state.tell(level, text)


class MessageBar(QFrame):
    """The last error, warning or note, in full, with a close button.

    Parameters
    ----------
    state : LmaddaState
        Whose :attr:`~LmaddaState.message` signal is shown.
    """

    def __init__(self, state: LmaddaState) -> None:
        super().__init__()
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.level = ""
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QToolButton()
        close.setText("×")
        close.setAutoRaise(True)
        close.setToolTip("Dismiss")
        close.clicked.connect(self.clear)
        row = QHBoxLayout(self)
        row.setContentsMargins(6, 2, 2, 2)
        row.addWidget(self.label, 1)
        row.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        state.message.connect(self.show_message)
        self.clear()

    def show_message(self, level: str, text: str) -> None:
        """Show ``text`` in the colour of ``level``."""
        self.level = level
        colour = COLOURS.get(level, COLOURS["info"])
        self.label.setText(f"<span style='color:{colour}'>{_escape(text)}</span>")
        self.setVisible(True)

    def clear(self, *_: Any) -> None:
        """Hide the bar."""
        self.level = ""
        self.label.setText("")
        self.setVisible(False)

    def text(self) -> str:
        """The message shown (plain text; empty when none)."""
        return self.label.text() and _plain(self.label.text())


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _plain(html: str) -> str:
    import re

    text = re.sub(r"<[^>]+>", "", html)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
