"""Render the plugin's screenshots for the README and docs/ from a real napari window.

Run under a display (Xvfb is enough) whose screen is the size asked for::

    xvfb-run -a -s "-screen 0 1800x1100x24" python scripts/render_screenshots.py
    xvfb-run -a -s "-screen 0 1366x768x24" python scripts/render_screenshots.py --size 1366x768

It opens a napari window filling the screen, the plugin's dock in napari's default layout,
the sample data and the bundled demo model (or ``--model FILE``), and writes to
``docs/screenshots/``: the Adapt step mid-run, the layer recommendation with a trust map,
the stains over the input, the side-by-side comparison, and the training panel mid-training
(on ``make-synthetic`` pairs made in a temporary folder). At any size but the default the
file names get the size as a suffix (``dock_midrun_1366x768.png``). A window must be shown
for the picture not to be black.
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
DEFAULT_SIZE = (1800, 1100)


def wait(app, seconds: float = 0.0, until=None, timeout: float = 900.0) -> None:
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
    from qtpy.QtWidgets import QApplication

    for toast in win.findChildren(NapariQtNotification):
        toast.close()
    wait(QApplication.instance(), 0.3)


class Shots:
    """Save pictures of the window under names that carry the size when it is not the default."""

    def __init__(self, win, size: tuple[int, int], out: Path) -> None:
        self.win, self.out = win, out
        self.suffix = "" if size == DEFAULT_SIZE else f"_{size[0]}x{size[1]}"
        out.mkdir(parents=True, exist_ok=True)

    def save(self, name: str) -> Path:
        """Grab the window into ``<out>/<name><suffix>.png``."""
        close_notifications(self.win)
        path = self.out / f"{name}{self.suffix}.png"
        self.win.grab().save(str(path))
        print("wrote", path.relative_to(ROOT) if path.is_relative_to(ROOT) else path,
              flush=True)
        return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="x".join(map(str, DEFAULT_SIZE)),
                        help="window size WxH, the screen's (1800x1100)")
    parser.add_argument("--model", default="demo", help="model file (default: the demo model)")
    parser.add_argument("--steps", type=int, default=120, help="adaptation steps (120)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder of the pictures")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))

    os.environ.setdefault("LMADDA_DEVICE", "cpu")
    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    torch.set_num_threads(1)
    viewer = napari.Viewer(show=True, title="napari-lmadda")
    win = viewer.window._qt_window
    win.resize(*size)
    app = QApplication.instance()
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "LM-ADDA")
    shots = Shots(win, size, args.out)
    state = dock.state
    viewer.open_sample(PLUGIN, "cells")
    if args.model != "demo" or state.model is None:
        dock.model.load(args.model)
    target = viewer.layers["new microscope (bright-field)"]
    target.visible = True
    viewer.layers.selection.active = target
    viewer.dims.set_current_step(0, 0)
    wait(app, 1.0)

    def idle() -> bool:
        return not state.busy and dock.adapt.task is None

    # 1. where the shift enters: Recommend layer, then the gap plot
    adapt = dock.adapt
    adapt.patch_spin.setValue(128)
    dock.open_step("Adapt")
    adapt.recommend()
    wait(app, until=lambda: idle() and state.recommendation is not None)
    wait(app, 0.5)
    # 2. a run at the recommended layer (or the default one), mid-run
    adapt.steps_spin.setValue(args.steps)
    adapt.batch_spin.setValue(4)
    adapt.run()
    wait(app, until=lambda: len(adapt.plot.steps) >= int(0.6 * args.steps) or idle())
    wait(app, 2.2)  # the next progress redraw
    shots.save("dock_midrun")
    wait(app, until=lambda: idle() and bool(dock.results.last_layers))
    # 3. the stains over the input, Results open
    for name in ("DAPI (ground truth)", "CD29 (ground truth)"):
        viewer.layers[name].visible = False
    viewer.layers.selection.active = viewer.layers[dock.results.last_layers[-1]]
    viewer.reset_view()
    wait(app, 1.0)
    shots.save("overlay_result")
    # 4. side by side: input, unadapted, adapted, ground truth, one contrast
    dock.results.side_btn.setChecked(True)
    wait(app, 1.5)
    shots.save("side_by_side")
    dock.results.side_btn.setChecked(False)
    # 5. the recommendation and a trust map
    dock.results.trust_check.setChecked(True)
    dock.results.predict()
    wait(app, until=lambda: idle() and bool(dock.results.last_trust_layers))
    dock.open_step("Adapt")
    adapt.plot_tabs.setCurrentWidget(adapt.recommender.gap_plot)
    for name in viewer.layers:
        if "trust" not in name.name and "(bright-field)" not in name.name:
            name.visible = False
    viewer.layers[dock.results.last_trust_layers[0]].visible = True
    viewer.reset_view()
    wait(app, 1.0)
    shots.save("recommend_trust")
    # 6. training a source model from paired images, mid-training
    from napari_lmadda.data.synthetic import write_domain

    with tempfile.TemporaryDirectory() as tmp:
        pairs = Path(tmp) / "phase"
        write_domain(pairs, 8, size=128, seed=5, modality="phase")
        panel = dock.train
        dock.model.open_training()
        dock.open_step("Model")
        panel.set_inputs(pairs / "input")
        panel.add_target(pairs / "dapi")
        panel.add_target(pairs / "cd29")
        panel.names_edit.setText("DAPI,CD29")
        panel.set_output(Path(tmp) / "my_source_model.pt")
        for name, value in (("steps", 300), ("batch", 4), ("patch", 64), ("num_downs", 5),
                            ("ngf", 16), ("eval_every", 20), ("val_patches", 8)):
            panel.form.set_value(name, value)
        panel.train()
        wait(app, until=lambda: len(panel.plot.steps) >= 6 or panel.task is None)
        wait(app, 2.2)
        shots.save("train_panel")
        panel.stop()
        wait(app, until=lambda: panel.task is None and not state.busy)
    viewer.close()


if __name__ == "__main__":
    main()
