"""Keep the dock narrow: combo boxes that do not grow with their longest item.

A combo box asks by default for the width of its longest entry (a long layer name, a GPU's
full name), which would widen the whole dock and squeeze napari's canvas on a laptop.
"""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox, QSizePolicy

__all__ = ["compact_combo"]


def compact_combo(combo: QComboBox, chars: int = 10) -> QComboBox:
    """Let ``combo`` shrink to about ``chars`` characters; it still grows with its column."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)
    combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
    return combo
