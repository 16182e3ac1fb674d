"""A spin box for small positive floats such as learning rates (``5e-5``, not ``0.00``)."""

from __future__ import annotations

from qtpy.QtGui import QValidator
from qtpy.QtWidgets import QDoubleSpinBox, QWidget

__all__ = ["ScientificSpinBox"]


class ScientificSpinBox(QDoubleSpinBox):
    """Shows values in short scientific notation; arrow keys multiply or divide by 2.

    Parameters
    ----------
    value : float
        Initial value.
    minimum, maximum : float
        Allowed range.
    parent : QWidget, optional
        Parent widget.
    """

    def __init__(self, value: float = 1e-4, minimum: float = 1e-8, maximum: float = 1.0,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setDecimals(12)  # the stored precision; display is by textFromValue
        self.setRange(minimum, maximum)
        self.setValue(value)
        self.setKeyboardTracking(False)
        self.setToolTip("Type e.g. 2e-4; the arrows halve or double the value")

    def textFromValue(self, value: float) -> str:  # noqa: N802 - Qt override
        """Short text, scientific below 0.01: ``5e-5``, ``2.5e-4``, ``0.1``."""
        if value == 0 or abs(value) >= 0.01:
            return f"{value:.3g}"
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"

    def valueFromText(self, text: str) -> float:  # noqa: N802 - Qt override
        """Parse the typed text (``2e-4``, ``0.0002``)."""
        try:
            return float(text.strip())
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int) -> tuple:
        """Accept anything that parses as a float in range; allow partial input while typing."""
        t = text.strip()
        try:
            v = float(t)
        except ValueError:
            ok = t == "" or all(c in "0123456789.eE+-" for c in t)
            state = QValidator.State.Intermediate if ok else QValidator.State.Invalid
            return state, text, pos
        inside = self.minimum() <= v <= self.maximum()
        state = QValidator.State.Acceptable if inside else QValidator.State.Intermediate
        return state, text, pos

    def stepBy(self, steps: int) -> None:  # noqa: N802 - Qt override
        """Double (up) or halve (down) the value per step."""
        self.setValue(min(self.maximum(), max(self.minimum(), self.value() * 2.0**steps)))
