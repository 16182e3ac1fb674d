"""Helpers of the widget tests: open the one dock through the manifest, tiny settings."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

PLUGIN = "napari-lmadda"
DOCK = "LM-ADDA"


def open_dock(viewer: Any) -> Any:
    """Open the plugin's dock through the manifest, as a user does from the Plugins menu."""
    try:
        _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, DOCK)
        return dock
    except (KeyError, ValueError):  # the three docks before issue 15 (to see tests fail)
        w = {name: viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]
             for name in ("Model", "Data", "Adapt")}
        return SimpleNamespace(model=w["Model"], images=w["Data"], adapt=w["Adapt"],
                               results=w["Adapt"].results, state=w["Adapt"].state)


def tiny_settings(adapt: Any, steps: int = 6) -> None:
    """LM-ADDA at layer 2 of the tiny model, a few small batches."""
    adapt.set_method("lmadda")
    adapt.layer_slider.setValue(2)
    adapt.steps_spin.setValue(steps)
    adapt.batch_spin.setValue(2)
    adapt.patch_spin.setValue(32)


def idle(dock: Any) -> bool:
    """Nothing runs: no adaptation, prediction, recommendation or training."""
    return dock.adapt.task is None and not dock.adapt.state.busy


def keep_last_state(adapt: Any, monkeypatch: Any) -> None:
    """Make the next runs keep their last state (criterion ``last``).

    A random tiny model may find nothing better than itself by the default label-free
    criterion; tests that need a trained result use this.
    """
    from dataclasses import replace

    config = adapt.config
    monkeypatch.setattr(adapt, "config", lambda: replace(config(), criterion="last"))


def export_stains(dock: Any, qtbot: Any, folder: Any, **kwargs: Any) -> list:
    """Write the shown stains as a user does (in the background) and wait for the files."""
    if not dock.results.export_stains(folder, **kwargs):
        return []
    qtbot.waitUntil(lambda: idle(dock), timeout=60_000)
    return list(dock.results.last_export)
