"""Render the plugin screenshots of the README: the dock mid-run and the stain overlay.

Run under a display (or Xvfb)::

    xvfb-run -a python scripts/render_screenshots.py

It opens a real napari viewer, the plugin's sample data and a model (the bundled demo model,
``--model FILE``, or else a small model trained here on synthetic phase contrast in about a
minute and cached in the temp folder), docks the widgets, runs a short LM-ADDA adaptation and
writes ``docs/screenshots/dock_midrun.png`` and ``docs/screenshots/overlay_result.png``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"
PLUGIN = "napari-lmadda"


def quick_model(path: Path) -> Path:
    """Train a small phase-contrast -> DAPI/CD29 model (cached at ``path``)."""
    if path.is_file():
        return path
    import numpy as np

    from napari_lmadda.data.datasets import PairedArrays, PatchSampler
    from napari_lmadda.data.synthetic import make_domain
    from napari_lmadda.models import UNetConfig, save_model
    from napari_lmadda.training import SourceTrainConfig, train_source

    print("training a small stand-in model (no demo model bundled yet)…", flush=True)
    dom = make_domain(24, modality="phase", size=128, seed=101)
    pairs = PairedArrays(dom["input"], np.stack([dom["dapi"], dom["cd29"]], axis=1))
    sampler = PatchSampler(pairs, 64, 8, seed=0, augment=True)
    val = PatchSampler(pairs, 64, 16, seed=1).sample()
    result = train_source(
        sampler, (val[0], val[1]),
        arch=UNetConfig(num_downs=6, ngf=16, out_channels=2),
        config=SourceTrainConfig(steps=600, batch_size=8, patch_size=64, eval_every=100,
                                 device="cpu"),
        meta={"channel_names": ["DAPI", "CD29"], "target_range": [0.0, 1.0]},
    )
    save_model(result.model, path, provenance={"source": "scripts/render_screenshots.py"})
    print(f"best validation Pearson {result.best_pearson:.3f}", flush=True)
    return path


def wait(app, seconds: float = 0.0, until=None, timeout: float = 600.0) -> None:
    """Process Qt events for ``seconds`` or until ``until()`` is true."""
    t0 = time.perf_counter()
    while True:
        app.processEvents()
        elapsed = time.perf_counter() - t0
        if until is not None and until():
            return
        if until is None and elapsed >= seconds:
            return
        if elapsed > timeout:
            raise TimeoutError("the viewer did not get there in time")
        time.sleep(0.02)


def close_notifications(win) -> None:
    """Close napari's notification toasts so they do not cover the picture."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in win.findChildren(NapariQtNotification):
        toast.close()
    from qtpy.QtWidgets import QApplication

    wait(QApplication.instance(), 0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model file (default: demo model or a quick model)")
    parser.add_argument("--steps", type=int, default=120, help="adaptation steps")
    args = parser.parse_args()

    os.environ.setdefault("LMADDA_DEVICE", "cpu")
    import napari
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    from napari_lmadda.assets import ASSETS

    if args.model:
        model = args.model
    elif (ASSETS / "demo_model.pt").is_file():
        model = "demo"
    else:
        model = str(quick_model(Path(tempfile.gettempdir()) / "lmadda_screenshot_model.pt"))

    viewer = napari.Viewer(show=True, title="napari-lmadda")
    win = viewer.window._qt_window
    win.resize(1560, 1000)
    app = QApplication.instance()
    _, model_w = viewer.window.add_plugin_dock_widget(PLUGIN, "Model")
    data_dock, _ = viewer.window.add_plugin_dock_widget(PLUGIN, "Data", tabify=True)
    adapt_dock, adapt = viewer.window.add_plugin_dock_widget(PLUGIN, "Adapt")
    wait(app, 0.5)
    win.resizeDocks([adapt_dock], [500], Qt.Orientation.Horizontal)
    win.resizeDocks([data_dock, adapt_dock], [250, 750], Qt.Orientation.Vertical)
    viewer.open_sample(PLUGIN, "cells")
    model_w.load(model)
    target = viewer.layers["new microscope (bright-field)"]
    target.visible = True
    viewer.layers.selection.active = target
    viewer.dims.set_current_step(0, 0)

    adapt.set_method("lmadda")
    adapt.layer_slider.setValue(2)
    adapt.steps_spin.setValue(args.steps)
    adapt.batch_spin.setValue(4)
    adapt.patch_spin.setValue(max(64, model_w.state.model.min_size))
    wait(app, 1.0)
    OUT.mkdir(parents=True, exist_ok=True)

    adapt.run()
    total = args.steps
    wait(app, until=lambda: adapt.progress.value() >= int(0.6 * total) or not adapt.running)
    wait(app, 0.3)
    close_notifications(win)
    win.grab().save(str(OUT / "dock_midrun.png"))
    print("wrote", OUT / "dock_midrun.png", flush=True)

    wait(app, until=lambda: not adapt.running and not adapt.state.busy
         and bool(adapt.results.last_layers))
    for name in ("DAPI (ground truth)", "CD29 (ground truth)"):
        viewer.layers[name].visible = False
    viewer.layers.selection.active = viewer.layers[adapt.results.last_layers[0]]
    viewer.reset_view()
    wait(app, 1.0)
    close_notifications(win)
    win.grab().save(str(OUT / "overlay_result.png"))
    print("wrote", OUT / "overlay_result.png", flush=True)
    viewer.close()


if __name__ == "__main__":
    main()
