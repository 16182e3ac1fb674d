"""Fields built from options that describe themselves (:mod:`napari_lmadda.options`).

The dock copies no option: :func:`option_widget` makes the field a
:class:`~napari_lmadda.options.Control` asks for (combo box, spin box, check box, text) with
its label, tooltip, range and default; :class:`OptionForm` lays out the options of a
dataclass (a command's arguments, a configuration) in columns. A new option of the command
shows up in the dock without a change here.
"""

from __future__ import annotations

import math
from typing import Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QWidget,
)

from .sci_spinbox import ScientificSpinBox
from .sizing import compact_combo

__all__ = ["OptionForm", "option_widget", "widget_value", "set_widget_value"]

_AUTO = "auto"


def option_widget(ctl: Any) -> QWidget:
    """A field for one :class:`~napari_lmadda.options.Control`, tooltip and default set."""
    if ctl.kind in ("combo", "editable_combo"):
        w: QWidget = compact_combo(QComboBox(), 6)
        w.setEditable(ctl.kind == "editable_combo")
        w.addItems([str(c) for c in ctl.choices])
        if ctl.default is not None:
            w.setCurrentText(str(ctl.default))
    elif ctl.kind == "check":
        w = QCheckBox()
        w.setChecked(bool(ctl.default))
    elif ctl.kind == "int":
        w = QSpinBox()
        lo = int(ctl.low) if ctl.low is not None else 0
        # an unbounded option still gets a bound: the spin box is as wide as its largest value
        w.setRange(lo - (1 if ctl.default is None else 0),
                   int(ctl.high) if ctl.high is not None else 999_999)
        if ctl.default is None:  # one below the range stands for "not given"
            w.setSpecialValueText(_AUTO)
            w.setValue(w.minimum())
        else:
            w.setValue(int(ctl.default))
    elif ctl.kind == "float":
        lo = float(ctl.low) if ctl.low is not None else 0.0
        hi = float(ctl.high) if ctl.high is not None else 9999.0
        default = float(ctl.default or 0.0)
        if 0 < abs(default) < 0.01:  # learning rates: 3e-5, halved/doubled by the arrows
            w = ScientificSpinBox(default, max(lo, 1e-12), hi)
        else:
            w = QDoubleSpinBox()
            w.setDecimals(3)
            w.setRange(lo, hi if math.isfinite(hi) else 9999.0)
            w.setSingleStep(0.05 if hi <= 1 else 1.0)
            w.setValue(default)
    else:
        w = QLineEdit()
        w.setText(_text(ctl.default))
        if ctl.default is None:
            w.setPlaceholderText(_AUTO)
    w.setToolTip(ctl.tooltip)
    w.setProperty("lmadda_option", ctl.name)
    return w


def widget_value(w: QWidget, ctl: Any) -> Any:
    """The value a field holds (None for an integer left at ``auto``)."""
    if isinstance(w, QComboBox):
        return w.currentText()
    if isinstance(w, QCheckBox):
        return w.isChecked()
    if isinstance(w, QSpinBox):
        v = int(w.value())
        return None if ctl.default is None and v == w.minimum() else v
    if isinstance(w, QDoubleSpinBox):
        return float(w.value())
    text = w.text().strip()
    if not text:
        return ctl.default
    if isinstance(ctl.default, tuple) or ctl.name.endswith(("_range", "_percentiles")):
        try:  # a pair of numbers, typed "0.1, 99.9"
            return tuple(float(v) for v in text.replace(";", ",").split(","))
        except ValueError:
            return text  # the option's own check names the problem
    return text


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def set_widget_value(w: QWidget, value: Any) -> None:
    """Put ``value`` in a field (None sets an integer to ``auto``)."""
    if isinstance(w, QComboBox):
        w.setCurrentText(str(value))
    elif isinstance(w, QCheckBox):
        w.setChecked(bool(value))
    elif isinstance(w, (QSpinBox, QDoubleSpinBox)):
        w.setValue(value if value is not None else w.minimum())
    else:
        w.setText(_text(value))


class OptionForm(QWidget):
    """The options of a dataclass, one labelled field each, in ``columns`` columns.

    Parameters
    ----------
    cls : dataclass type
        Whose options are shown (fields declared with :func:`napari_lmadda.options.option`).
    skip : set of str
        Options shown elsewhere (folders, output file, device, ...).
    labels : dict, optional
        Shorter labels for a narrow dock (the option's own label otherwise).
    columns : int
        Label/field pairs per row.
    """

    def __init__(self, cls: type, skip: set[str] = frozenset(),
                 labels: dict[str, str] | None = None, columns: int = 2) -> None:
        from ..options import control, iter_options

        super().__init__()
        self.controls = {n: control(cls, n) for n, f, opt, tp in iter_options(cls)
                         if n not in skip}
        self.fields: dict[str, QWidget] = {}
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setHorizontalSpacing(6)
        grid.setVerticalSpacing(3)
        for i, (name, ctl) in enumerate(self.controls.items()):
            field = option_widget(ctl)
            label = QLabel((labels or {}).get(name, ctl.label))
            label.setToolTip(ctl.tooltip)
            r, c = divmod(i, columns)
            grid.addWidget(label, r, 2 * c)
            grid.addWidget(field, r, 2 * c + 1)
            self.fields[name] = field
        for c in range(columns):
            grid.setColumnStretch(2 * c + 1, 1)
        # napari's style gives every spin box 70 px of text room: two columns of options
        # would not fit a laptop's dock
        self.setStyleSheet("QAbstractSpinBox { min-width: 30px; padding: 1px 4px; } "
                           "QComboBox { min-width: 40px; }")

    def value(self, name: str) -> Any:
        """The value of one option."""
        return widget_value(self.fields[name], self.controls[name])

    def set_value(self, name: str, value: Any) -> None:
        """Set one option's field."""
        set_widget_value(self.fields[name], value)

    def values(self) -> dict[str, Any]:
        """Every option's value by name."""
        return {name: self.value(name) for name in self.fields}
