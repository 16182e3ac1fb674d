"""The napari widgets, opened through the manifest, driven as a user would (headless, CPU)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

PLUGIN = "napari-lmadda"


@pytest.fixture
def docks(make_napari_viewer):
    viewer = make_napari_viewer()
    widgets = {name: viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]
               for name in ("Model", "Data", "Adapt")}
    return viewer, widgets


def _tiny_settings(adapt, steps=6):
    adapt.set_method("lmadda")
    adapt.layer_slider.setValue(2)
    adapt.steps_spin.setValue(steps)
    adapt.batch_spin.setValue(2)
    adapt.patch_spin.setValue(32)


def _idle(adapt):
    return not adapt.running and not adapt.state.busy


def test_widget_modules_do_not_import_torch():
    code = ("import sys, napari_lmadda.widgets.adapt, napari_lmadda.widgets.model, "
            "napari_lmadda.widgets.data, napari_lmadda._reader, napari_lmadda._writer, "
            "napari_lmadda._sample_data; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_adapt_sample_data_to_stain_layers(docks, tiny_model_path, qtbot, tmp_path):
    viewer, w = docks
    assert w["Model"].load(str(tiny_model_path))
    assert w["Model"].table.rowCount() == 10
    viewer.open_sample(PLUGIN, "cells")
    assert w["Data"].pickers["target"].combo.currentText() == "new microscope (bright-field)"
    adapt = w["Adapt"]
    assert adapt.lr_g_spin.text() == "3e-5"  # small learning rates stay readable
    _tiny_settings(adapt)
    assert "L2 · down2" in adapt.layer_label.text()
    assert adapt.run()
    qtbot.waitUntil(lambda: _idle(adapt) and bool(adapt.results.last_layers), timeout=40_000)
    assert adapt.last_reason == "completed"
    assert adapt.progress.value() == 6
    assert len(adapt.plot.steps) == 6
    names = adapt.results.last_layers
    assert names == ["DAPI [lmadda L2]", "CD29 [lmadda L2]", "DAPI [unadapted]",
                     "CD29 [unadapted]"]
    for name, cmap in zip(names, ["blue", "green", "blue", "green"]):
        layer = viewer.layers[name]
        assert layer.data.shape == (4, 256, 256)
        assert layer.colormap.name == cmap and layer.blending == "additive"
    assert not viewer.layers["DAPI [unadapted]"].visible
    # re-running replaces the layers; "add" keeps the old ones
    n = len(viewer.layers)
    assert adapt.results.predict()
    qtbot.waitUntil(lambda: _idle(adapt), timeout=20_000)
    assert len(viewer.layers) == n
    adapt.results.mode_combo.setCurrentText("add new layers")
    assert adapt.results.predict()
    qtbot.waitUntil(lambda: _idle(adapt), timeout=20_000)
    assert len(viewer.layers) == n + 4
    assert adapt.run_btn.isEnabled() and adapt.run_btn.text() == "Run"
    # export: the adapted model and the stain layers, never over existing files
    saved = adapt.results.save_adapted_model(tmp_path / "adapted.pt")
    assert saved is not None and saved.is_file()
    assert adapt.results.save_adapted_model(tmp_path / "adapted.pt") is None
    (tmp_path / "stains").mkdir()
    files = adapt.results.export_stains(tmp_path / "stains")
    assert len(files) == 4 and files[0].name.startswith("DAPI_lmadda_L2")
    assert adapt.results.export_stains(tmp_path / "stains") == []


def test_stop_keeps_best_model_and_resets_ui(docks, tiny_model_path, qtbot):
    viewer, w = docks
    w["Model"].load(str(tiny_model_path))
    viewer.open_sample(PLUGIN, "cells")
    adapt = w["Adapt"]
    _tiny_settings(adapt, steps=5000)
    adapt.results.auto_check.setChecked(False)
    assert adapt.run()
    assert not adapt.run_btn.isEnabled() and adapt.stop_btn.isEnabled()
    qtbot.waitUntil(lambda: adapt.progress.value() >= 2, timeout=30_000)
    adapt.stop()
    assert adapt.stop_btn.text() == "Stopping…" and not adapt.stop_btn.isEnabled()
    qtbot.waitUntil(lambda: _idle(adapt), timeout=30_000)
    assert adapt.last_reason == "cancelled"
    assert adapt.state.adapted is not None and adapt.state.adapted.result.steps_done < 5000
    assert adapt.run_btn.isEnabled() and adapt.run_btn.text() == "Run"
    assert adapt.stop_btn.text() == "Stop" and not adapt.stop_btn.isEnabled()
    assert adapt.method_combo.isEnabled()


def test_bad_inputs_show_errors_and_ui_stays_usable(docks, tiny_model_path, tmp_path, errors,
                                                    monkeypatch):
    viewer, w = docks
    adapt = w["Adapt"]
    assert not adapt.run()  # no model, no data
    assert errors and "load a model" in errors[-1]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a model")
    assert not w["Model"].load(str(bad))
    assert "bad.pt" in errors[-1]
    (tmp_path / "empty").mkdir()
    assert not w["Data"].choose_folder("source", str(tmp_path / "empty"))
    assert "no images" in errors[-1]
    assert "no images" in w["Data"].pickers["source"].status.text()
    # the UI still works: a good model loads, a run without data says what is missing
    assert w["Model"].load(str(tiny_model_path))
    assert adapt.run_btn.isEnabled()
    assert not adapt.run()
    assert "source-domain images" in errors[-1]
    adapt.patch_spin.setValue(32)
    viewer.add_image(np.random.default_rng(0).random((40, 40), dtype=np.float32), name="tiny")
    w["Data"].choose_layer("source", "tiny")
    w["Data"].choose_layer("target", "tiny")
    adapt.lr_g_spin.setValue(0)  # clamped to the minimum, still a valid rate
    assert adapt.config().lr_g > 0
    adapt.device_combo.setCurrentText("cuda")  # not on this machine: an error, not a crash
    adapt.set_method("adabn")
    adapt.steps_spin.setValue(2)
    adapt.batch_spin.setValue(2)
    monkeypatch.setenv("LMADDA_SYNC_WORKERS", "1")  # run in this thread: done on return
    assert adapt.run()
    assert adapt.last_reason == "error" and "CUDA" in errors[-1]
    assert adapt.run_btn.isEnabled() and not adapt.stop_btn.isEnabled()
    adapt.device_combo.setCurrentText("auto")
    assert adapt.run()
    assert adapt.last_reason == "completed"
    # the slider starts at the default late layer: 8 of the tiny model's 10
    assert "DAPI [adabn L8]" in viewer.layers and viewer.layers["DAPI [adabn L8]"].ndim == 2


def test_dropped_model_file_loads_into_model_widget(docks, tiny_model_path, tmp_path):
    viewer, w = docks
    n = len(viewer.layers)
    viewer.open(str(tiny_model_path), plugin=PLUGIN)
    assert len(viewer.layers) == n
    assert w["Model"].state.model is not None
    assert w["Model"].table.rowCount() == 10
    assert w["Adapt"].layer_slider.maximum() == 10
    folder = tmp_path / "cells"
    folder.mkdir()
    import tifffile

    for i in range(2):
        tifffile.imwrite(folder / f"c{i}.tif", np.full((32, 32), i, np.uint16))
    viewer.open(str(folder), plugin=PLUGIN)
    assert viewer.layers["cells"].data.shape == (2, 32, 32)
    assert w["Data"].pickers["source"].combo.findText("cells") > 0
