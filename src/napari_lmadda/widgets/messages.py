"""Messages where the eye is: a line at the top of the dock, as well as napari's toast.

napari's notifications fade and cut long text; a refused model or export must stay readable.
:func:`notify` sends a message both ways; :class:`MessageBar` shows the last one (word
wrapped, selectable; a long one in its first lines with "more" to unfold the rest) until the
user closes it or another message replaces it.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QHBoxLayout, QLabel, QToolButton

from .state import LmaddaState

__all__ = ["notify", "MessageBar", "COLOURS", "SHORT"]

#: text colour per level (readable on napari's dark and light themes)
COLOURS = {"error": "#e06c6c", "warning": "#e5a50a", "info": "#7fb3e0"}
#: characters of a message shown before "more" (about three lines of the dock)
SHORT = 180


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
        self.full = ""
        self.more = QToolButton()
        self.more.setAutoRaise(True)
        self.more.setCheckable(True)
        self.more.setText("more")
        self.more.toggled.connect(self._render)
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
        row.addWidget(self.more, 0, Qt.AlignmentFlag.AlignTop)
        row.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        state.message.connect(self.show_message)
        self.clear()

    def show_message(self, level: str, text: str) -> None:
        """Show ``text`` in the colour of ``level`` (a long one folded after its start)."""
        self.level, self.full = level, text
        self.more.blockSignals(True)
        self.more.setChecked(False)
        self.more.blockSignals(False)
        self.more.setVisible(len(text) > SHORT)
        self._render()
        self.setVisible(True)

    def _render(self, *_: Any) -> None:
        text = self.full
        if len(text) > SHORT and not self.more.isChecked():
            text = text[:SHORT].rsplit(" ", 1)[0] + " …"
        self.more.setText("less" if self.more.isChecked() else "more")
        colour = COLOURS.get(self.level, COLOURS["info"])
        self.label.setText(f"<span style='color:{colour}'>{_escape(text)}</span>")
        self.label.setToolTip(self.full if len(self.full) > SHORT else "")

    def clear(self, *_: Any) -> None:
        """Hide the bar."""
        self.level, self.full = "", ""
        self.label.setText("")
        self.more.setVisible(False)
        self.setVisible(False)

    def text(self) -> str:
        """The whole message (plain text; empty when none)."""
        return self.full


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
