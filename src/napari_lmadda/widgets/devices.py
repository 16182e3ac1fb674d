"""The device menu: auto, each GPU as ``cuda:N`` with its name, MPS, the CPU.

The menu starts with ``auto`` and ``cpu``; a background task (which imports torch, so napari
starts fast) adds what this machine has. :meth:`DeviceCombo.device` is the name the core
takes; :meth:`DeviceCombo.describe` says what a name means here (``cuda:0 · A100``).
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QComboBox

from . import worker as workers
from .sizing import compact_combo

__all__ = ["DeviceCombo"]


class DeviceCombo(QComboBox):
    """Choose where to compute; filled in the background with the machine's devices."""

    def __init__(self) -> None:
        super().__init__()
        compact_combo(self, 8)
        self.setToolTip("auto: the first GPU (CUDA), then Apple MPS, then the CPU")
        self.labels: dict[str, str] = {}
        self.auto = "cpu"
        self._fill([workers.DeviceInfo("cpu", "cpu")], "cpu")
        self.task: workers.Task | None = None

    def refresh(self) -> None:
        """List the devices again (in a worker; the menu updates when it answers)."""
        self.task = workers.start(lambda cancel: workers.device_messages(), self._on_message,
                                  self._on_done)

    def _on_message(self, msg: Any) -> None:
        if isinstance(msg, workers.DeviceList):
            self._fill(msg.devices, msg.auto)

    def _on_done(self) -> None:
        self.task = None

    def _fill(self, devices: Any, auto: str) -> None:
        current = self.device()
        self.auto = auto
        self.labels = {d.name: d.label for d in devices}
        self.blockSignals(True)
        self.clear()
        self.addItem(f"auto ({auto})", "auto")
        for d in devices:
            self.addItem(d.label, d.name)
        index = self.findData(current)
        self.setCurrentIndex(max(0, index))
        self.blockSignals(False)

    def device(self) -> str:
        """The chosen device's name (``auto``, ``cuda:1``, ``mps``, ``cpu``)."""
        data = self.currentData()
        return str(data) if data is not None else "auto"

    def set_device(self, name: str) -> None:
        """Choose a device by name; one this menu does not list is added as typed."""
        index = self.findData(name)
        if index < 0:
            self.addItem(name, name)
            index = self.count() - 1
        self.setCurrentIndex(index)

    def describe(self, name: str) -> str:
        """What ``name`` is on this machine (``cuda:0 · NVIDIA A100 (80 GB)``, ``cpu``)."""
        if name == "cuda":
            name = "cuda:0"
        return self.labels.get(name, name)
