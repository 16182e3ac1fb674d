"""A form built from options that describe themselves (name, type, default, choices, help).

The dock does not copy a command's options: :func:`specs_from_parser` reads them from the
command's own argparse parser (its flags, types, defaults, choices and help), and
:class:`OptionForm` makes one field per option, its help as the tooltip. A new option of the
command shows up in the dock without a change here.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from qtpy.QtWidgets import QComboBox, QGridLayout, QLabel, QLineEdit, QSpinBox, QWidget

from .sci_spinbox import ScientificSpinBox

__all__ = ["OptionSpec", "OptionForm", "specs_from_parser"]


@dataclass(frozen=True)
class OptionSpec:
    """One option: ``name`` (the argparse dest), a label, its kind and default, its help."""

    name: str
    label: str
    kind: str  # "int", "float", "choice", "text"
    default: Any
    help: str = ""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None


def _kind(action: argparse.Action) -> str:
    if action.choices:
        return "choice"
    t = action.type
    if t is float or isinstance(action.default, float):
        return "float"
    if t is int or getattr(t, "__name__", "") in ("_int", "int") or \
            isinstance(action.default, int) and not isinstance(action.default, bool):
        return "int"
    return "text"


def specs_from_parser(parser: argparse.ArgumentParser, skip: set[str] = frozenset(),
                      labels: dict[str, str] | None = None) -> list[OptionSpec]:
    """Describe the value options of an argparse parser (flags, store_true and help skipped).

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The command's parser.
    skip : set of str
        Dests handled elsewhere (folders, output file, device, ...).
    labels : dict, optional
        Shorter labels for some dests; otherwise the flag without dashes.
    """
    out = []
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list of actions
        if (not action.option_strings or action.dest in skip or action.nargs == 0
                or isinstance(action, argparse._AppendAction)):  # noqa: SLF001
            continue
        flag = max(action.option_strings, key=len).lstrip("-").replace("-", " ")
        label = (labels or {}).get(action.dest, flag)
        out.append(OptionSpec(action.dest, label, _kind(action), action.default,
                              (action.help or "").replace("%%", "%"),
                              tuple(str(c) for c in action.choices or ())))
    return out


class OptionForm(QWidget):
    """One field per option, in ``columns`` columns of label + field.

    Parameters
    ----------
    specs : list of OptionSpec
        The options.
    columns : int
        Label/field pairs per row.
    """

    def __init__(self, specs: list[OptionSpec], columns: int = 2) -> None:
        super().__init__()
        self.specs = {s.name: s for s in specs}
        self.fields: dict[str, QWidget] = {}
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setHorizontalSpacing(6)
        grid.setVerticalSpacing(3)
        for i, spec in enumerate(specs):
            field = self._make(spec)
            field.setToolTip(spec.help)
            label = QLabel(spec.label)
            label.setToolTip(spec.help)
            r, c = divmod(i, columns)
            grid.addWidget(label, r, 2 * c)
            grid.addWidget(field, r, 2 * c + 1)
            self.fields[spec.name] = field
        for c in range(columns):
            grid.setColumnStretch(2 * c + 1, 1)

    @staticmethod
    def _make(spec: OptionSpec) -> QWidget:
        if spec.kind == "choice":
            w = QComboBox()
            w.addItems(list(spec.choices))
            if spec.default is not None:
                w.setCurrentText(str(spec.default))
            return w
        if spec.kind == "int":
            w = QSpinBox()
            w.setRange(int(spec.minimum if spec.minimum is not None else 0),
                       int(spec.maximum if spec.maximum is not None else 10_000_000))
            if spec.default is None:
                w.setSpecialValueText("auto")  # the minimum stands for "not given"
                w.setValue(w.minimum())
            else:
                w.setValue(int(spec.default))
            return w
        if spec.kind == "float":
            lo = spec.minimum if spec.minimum is not None else 0.0
            hi = spec.maximum if spec.maximum is not None else 1e6
            return ScientificSpinBox(float(spec.default or 0.0), lo, hi)
        w = QLineEdit()
        w.setText("" if spec.default is None else str(spec.default))
        return w

    def value(self, name: str) -> Any:
        """The value of one option (None for an ``auto`` integer)."""
        w, spec = self.fields[name], self.specs[name]
        if isinstance(w, QComboBox):
            return w.currentText()
        if isinstance(w, ScientificSpinBox):
            return float(w.value())
        if isinstance(w, QSpinBox):
            v = int(w.value())
            return None if spec.default is None and v == w.minimum() else v
        text = w.text().strip()
        return text or spec.default

    def set_value(self, name: str, value: Any) -> None:
        """Set one option's field."""
        w = self.fields[name]
        if isinstance(w, QComboBox):
            w.setCurrentText(str(value))
        elif isinstance(w, (QSpinBox, ScientificSpinBox)):
            w.setValue(value if value is not None else w.minimum())
        else:
            w.setText("" if value is None else str(value))

    def values(self) -> dict[str, Any]:
        """Every option's value by name."""
        return {name: self.value(name) for name in self.fields}
