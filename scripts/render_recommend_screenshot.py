"""Screenshot of the Adapt dock after "Recommend layer" and a trust-map layer.

    xvfb-run -a python render_recommend_screenshot.py

Opens the sample data and the bundled demo model, recommends a layer (128 px patches),
adapts a little at the recommended layer with "Trust map" ticked and writes
``docs/screenshots/recommend_trust.png``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from render_screenshots import close_notifications, wait  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
PLUGIN = "napari-lmadda"


def main() -> None:
    os.environ.setdefault("LMADDA_DEVICE", "cpu")
    import torch

    torch.set_num_threads(1)
    import napari
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    steps = int(os.environ.get("SHOT_STEPS", "60"))
    viewer = napari.Viewer(show=True, title="napari-lmadda")
    win = viewer.window._qt_window
    win.resize(1560, 1200)
    app = QApplication.instance()
    model_dock, model_w = viewer.window.add_plugin_dock_widget(PLUGIN, "Model")
    data_dock, _ = viewer.window.add_plugin_dock_widget(PLUGIN, "Data", tabify=True)
    adapt_dock, adapt = viewer.window.add_plugin_dock_widget(PLUGIN, "Adapt")
    wait(app, 0.5)
    win.resizeDocks([adapt_dock], [520], Qt.Orientation.Horizontal)
    win.resizeDocks([data_dock, adapt_dock], [60, 1020], Qt.Orientation.Vertical)
    viewer.open_sample(PLUGIN, "cells")
    if adapt.state.model is None:
        model_w.load("demo")
    target = viewer.layers["new microscope (bright-field)"]
    viewer.layers.selection.active = target
    viewer.dims.set_current_step(0, 0)

    adapt.set_method("lmadda")
    adapt.patch_spin.setValue(128)
    t0 = time.perf_counter()
    assert adapt.recommend()
    wait(app, until=lambda: adapt.rec_task is None and not adapt.state.busy)
    rec = adapt.state.recommendation
    print(f"recommendation in {time.perf_counter() - t0:.1f} s:",
          rec.result.summary() if rec else adapt.last_recommend_error, flush=True)
    adapt.steps_spin.setValue(steps)
    adapt.batch_spin.setValue(4)
    adapt.patch_spin.setValue(64)
    adapt.results.trust_check.setChecked(True)
    t0 = time.perf_counter()
    assert adapt.run()
    wait(app, until=lambda: not adapt.running and not adapt.state.busy
         and bool(adapt.results.last_trust_layers), timeout=1800)
    print(f"adaptation + stains + trust map in {time.perf_counter() - t0:.1f} s:",
          adapt.results.last_trust_layers, flush=True)
    # side by side: the input, the adapted CD29 stain and its trust map
    tag = adapt.state.adapted.tag
    show = {"new microscope (bright-field)", f"CD29 [{tag}]", f"CD29 trust [{tag}]"}
    for layer in viewer.layers:
        layer.visible = layer.name in show
    viewer.grid.enabled = True
    viewer.grid.shape = (1, 3)
    viewer.reset_view()
    trust = viewer.layers[f"CD29 trust [{tag}]"]
    print("trust map metadata:", trust.metadata["lmadda"], flush=True)
    viewer.layers.selection.active = trust
    adapt.plot_tabs.setCurrentWidget(adapt.gap_plot)
    viewer.reset_view()
    wait(app, 1.0)
    close_notifications(win)
    OUT.mkdir(parents=True, exist_ok=True)
    win.grab().save(str(OUT / "recommend_trust.png"))
    print("wrote", OUT / "recommend_trust.png", flush=True)
    viewer.close()


if __name__ == "__main__":
    main()
