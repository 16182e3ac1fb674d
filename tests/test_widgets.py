"""The dock, opened through the manifest, driven as a user would (headless, CPU).

``test_a_users_sequence`` walks one user's session from start to end: load a model, drop two
``make-synthetic`` folders, run, stop, run again, compare side by side, export.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from widget_helpers import (
    PLUGIN,
    export_stains,
    idle,
    keep_last_state,
    tiny_settings,
)


@pytest.fixture(scope="module")
def synthetic_folders(tmp_path_factory):
    """``make-synthetic`` output of two microscopes: ``input/``, ``dapi/``, ``cd29/`` each.

    The new microscope's files are calibrated (0.65 µm pixels, ImageJ metadata), as a
    microscope writes them.
    """
    import tifffile

    from napari_lmadda.data.io import write_tiff
    from napari_lmadda.data.synthetic import write_domain

    root = tmp_path_factory.mktemp("synthetic")
    write_domain(root / "phase", 3, size=64, seed=0, modality="phase")
    write_domain(root / "brightfield", 2, size=64, seed=1, modality="brightfield")
    for f in sorted((root / "brightfield").glob("*/*.tif")):
        write_tiff(f, tifffile.imread(f), overwrite=True, dtype=None, axes="YX",
                   pixel_size={"y": 0.65, "x": 0.65, "unit": "um"})
    return root / "phase", root / "brightfield"


def test_dock_modules_do_not_import_torch():
    code = ("import sys, napari_lmadda.widgets.dock, napari_lmadda._reader, "
            "napari_lmadda._writer, napari_lmadda._sample_data; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_one_dock_in_the_order_of_the_work(dock):
    from napari_lmadda.widgets.dock import STEPS

    viewer, d = dock
    assert list(d.sections) == list(STEPS) == ["Model", "Images", "Adapt", "Results"]
    assert d.current_step == "Model"
    assert "no model" in d.sections["Model"].summary.text()


def test_a_users_sequence(dock, tiny_model_path, synthetic_folders, qtbot, tmp_path,
                          monkeypatch, errors):
    import tifffile

    viewer, d = dock
    phase, brightfield = synthetic_folders
    # load
    assert d.model.load(str(tiny_model_path))
    assert d.model.table.rowCount() == 10 and d.current_step == "Images"
    # drop two folders of sub-folders, as make-synthetic writes them
    viewer.open(str(phase), plugin=PLUGIN)
    viewer.open(str(brightfield), plugin=PLUGIN)
    assert viewer.layers["phase/input"].data.shape == (3, 64, 64)
    truth = viewer.layers["brightfield/dapi"]
    assert truth.colormap.name == "blue" and not truth.visible
    d.images.choose_layer("source", "phase/input")
    d.images.choose_layer("target", "brightfield/input")
    assert d.current_step == "Adapt"
    assert "phase/input" in d.sections["Images"].summary.text()
    # run
    tiny_settings(d.adapt, steps=6)
    keep_last_state(d.adapt, monkeypatch)
    assert d.adapt.run()
    assert not d.adapt.run_btn.isEnabled() and d.adapt.stop_btn.isEnabled()
    qtbot.waitUntil(lambda: idle(d) and bool(d.results.last_layers), timeout=60_000)
    assert d.adapt.last_reason == "completed"
    assert d.adapt.progress.value() == 6 and len(d.adapt.plot.steps) == 6
    first = list(d.results.last_layers)
    assert first == ["DAPI [unadapted]", "CD29 [unadapted]", "DAPI [lmadda L2]",
                     "CD29 [lmadda L2]"]
    for name, cmap in zip(first, ["blue", "green", "blue", "green"]):
        layer = viewer.layers[name]
        assert layer.data.shape == (2, 64, 64)
        assert layer.colormap.name == cmap and layer.blending == "additive"
    assert not viewer.layers["DAPI [unadapted]"].visible
    assert viewer.layers["DAPI [lmadda L2]"].visible
    assert d.current_step == "Results"
    kept = np.array(viewer.layers["DAPI [lmadda L2]"].data, copy=True)
    # stop: a long run stopped early finds nothing better and changes nothing
    d.open_step("Adapt")
    d.adapt.steps_spin.setValue(5000)
    assert d.adapt.run()
    qtbot.waitUntil(lambda: len(d.adapt.plot.steps) >= 2 or idle(d), timeout=30_000)
    d.adapt.stop()
    assert d.adapt.stop_btn.text() == "Stopping…" and not d.adapt.stop_btn.isEnabled()
    qtbot.waitUntil(lambda: idle(d), timeout=30_000)
    assert d.adapt.last_reason == "cancelled"
    assert "nothing better than the unadapted model" in d.adapt.status.text()
    assert d.adapt.run_btn.isEnabled() and d.adapt.stop_btn.text() == "Stop"
    assert len(d.state.runs) == 1
    assert np.array_equal(viewer.layers["DAPI [lmadda L2]"].data, kept)
    # run again: a second result, with its own layers; the first ones are hidden, unchanged
    d.adapt.steps_spin.setValue(4)
    assert d.adapt.run()
    qtbot.waitUntil(lambda: idle(d) and "DAPI [lmadda L2 #2]" in d.results.last_layers,
                    timeout=60_000)
    assert len(d.state.runs) == 2 and d.state.adapted.run == 2
    assert np.array_equal(viewer.layers["DAPI [lmadda L2]"].data, kept)
    assert not viewer.layers["DAPI [lmadda L2]"].visible
    assert viewer.layers["DAPI [lmadda L2 #2]"].visible
    kept2 = np.array(viewer.layers["DAPI [lmadda L2 #2]"].data, copy=True)
    # the stains sit on the input's calibrated grid
    assert tuple(viewer.layers["DAPI [lmadda L2 #2]"].scale) == pytest.approx((1, 0.65, 0.65))
    assert str(viewer.layers["DAPI [lmadda L2 #2]"].units[-1]) == "micrometer"
    assert "1 earlier stain layer" in d.results.status.text() or \
        "earlier stain layer(s) hidden" in d.results.status.text()
    # beside the input: input, unadapted, adapted, ground truth, one contrast, linked
    d.results.side_btn.setChecked(True)
    grid = viewer.canvas.grid
    assert grid.enabled
    shown = [ly.name for ly in viewer.layers if ly.visible]
    assert set(shown) == {"brightfield/input", "DAPI [unadapted]", "DAPI [lmadda L2 #2]",
                          "brightfield/dapi"}
    cells = {ly.name: grid.position(viewer.layers.index(ly), viewer.layers) for ly in
             viewer.layers if ly.visible}
    order = sorted(cells, key=lambda n: cells[n])  # row by row
    assert order == ["brightfield/input", "DAPI [unadapted]", "DAPI [lmadda L2 #2]",
                     "brightfield/dapi"]
    assert cells["brightfield/input"] == (0, 0)
    stains = [viewer.layers[n] for n in order[1:]]
    assert len({tuple(ly.contrast_limits) for ly in stains}) == 1
    assert {ly.colormap.name for ly in stains} == {"gray"}
    stains[0].contrast_limits = (0.0, 0.5)
    assert tuple(stains[2].contrast_limits) == (0.0, 0.5)
    d.results.side_btn.setChecked(False)
    assert not grid.enabled
    assert viewer.layers["DAPI [lmadda L2 #2]"].visible and not truth.visible
    assert viewer.layers["DAPI [lmadda L2 #2]"].colormap.name == "blue"
    assert truth.colormap.name == "blue"
    # export: the stains as the CLI writes them (calibrated hyperstacks, named channels)
    # and the model, never over existing files
    out = tmp_path / "stains"
    out.mkdir()
    files = export_stains(d, qtbot, out)
    # the dropped folder's layer: one file per input file, named as lmadda predict names them
    assert sorted(f.name for f in files) == sorted(
        f"field_00{i}_{tag}_pred.tif" for i in (0, 1) for tag in ("unadapted", "lmadda_L2_2"))
    from napari_lmadda.data.io import read_pixel_size, read_tiff_metadata

    for i in (0, 1):
        adapted_file = out / f"field_00{i}_lmadda_L2_2_pred.tif"
        with tifffile.TiffFile(adapted_file) as tif:
            assert tif.is_imagej and tif.series[0].axes == "CYX"
            ij = tif.imagej_metadata
            assert ij["unit"] in ("um", "micron", "\\u00B5m", "µm")
            assert ij["Labels"][:2] == ["DAPI", "CD29"]
            xres = tif.pages[0].tags["XResolution"].value
            assert xres[1] / xres[0] == pytest.approx(0.65, rel=1e-4)
            data = tif.asarray()
        assert data.shape == (2, 64, 64)  # markers of image i
        assert np.array_equal(data[0], viewer.layers["DAPI [lmadda L2 #2]"].data[i])
        assert np.array_equal(data[1], viewer.layers["CD29 [lmadda L2 #2]"].data[i])
        assert np.array_equal(data[0], kept2[i])
        assert not np.array_equal(
            data, tifffile.imread(out / f"field_00{i}_unadapted_pred.tif"))
        assert read_pixel_size(adapted_file)["unit"] == "um"
        meta = read_tiff_metadata(adapted_file)
        assert meta["channels"] == ["DAPI", "CD29"] and meta["tag"] == "lmadda L2"
        assert meta["source_image"] == f"field_00{i}.tif" and meta["method"] == "lmadda"
    assert export_stains(d, qtbot, out) == []
    assert "already exists" in d.message.text() and d.message.isVisibleTo(d)
    saved = d.results.save_adapted_model(tmp_path / "adapted.pt")
    assert saved is not None and saved.is_file()
    assert d.results.save_adapted_model(tmp_path / "adapted.pt") is None
    assert "already exists" in errors[-1]


def test_tta_average_is_offered_as_the_prediction(dock, tiny_model_path, qtbot):
    from napari_lmadda.inference.uncertainty import tta_predict
    from napari_lmadda.widgets.results_step import PREDICTIONS

    viewer, d = dock
    assert d.model.load(str(tiny_model_path))
    viewer.open_sample(PLUGIN, "cells")
    tta = next(k for k, v in PREDICTIONS.items() if v)
    d.results.prediction_combo.setCurrentText(tta)
    assert d.results.predict()
    qtbot.waitUntil(lambda: idle(d) and bool(d.results.last_layers), timeout=60_000)
    layer = viewer.layers["DAPI [unadapted]"]
    assert layer.metadata["lmadda"]["prediction"] == "TTA average of 8"
    plane = np.asarray(viewer.layers["new microscope (bright-field)"].data[1], np.float32)
    expected = tta_predict(d.state.model, plane)[0]
    np.testing.assert_allclose(layer.data[1], expected, atol=1e-5)
    assert "TTA average" in d.results.status.text()


def test_refused_model_and_bad_inputs_show_in_the_dock(dock, tiny_model_path, tmp_path,
                                                        errors, monkeypatch):
    viewer, d = dock
    assert not d.adapt.run()  # no model, no data
    assert "load a model" in errors[-1] and "load a model" in d.message.text()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a model")
    assert not d.model.load(str(bad))
    assert "bad.pt" in errors[-1]
    assert d.message.level == "error" and "bad.pt" in d.message.text()
    assert len(d.message.text()) > 60  # the whole message, not a cut toast
    (tmp_path / "empty").mkdir()
    assert not d.images.choose_folder("source", str(tmp_path / "empty"))
    assert "no images" in d.message.text()
    # the dock still works: a good model loads, a run without data says what is missing
    assert d.model.load(str(tiny_model_path))
    assert d.message.level == "info"
    assert d.adapt.run_btn.isEnabled()
    assert not d.adapt.run()
    assert "source-domain images" in errors[-1]
    d.adapt.patch_spin.setValue(32)
    viewer.add_image(np.random.default_rng(0).random((40, 40), dtype=np.float32), name="tiny")
    d.images.choose_layer("source", "tiny")
    d.images.choose_layer("target", "tiny")
    d.adapt.lr_g_spin.setValue(0)  # clamped to the minimum, still a valid rate
    assert d.adapt.config().lr_g > 0
    d.adapt.device_combo.set_device("cuda")  # not on this machine: an error, not a crash
    d.adapt.set_method("adabn")
    d.adapt.steps_spin.setValue(2)
    d.adapt.batch_spin.setValue(2)
    monkeypatch.setenv("LMADDA_SYNC_WORKERS", "1")  # run in this thread: done on return
    assert d.adapt.run()
    assert d.adapt.last_reason == "error" and "CUDA" in errors[-1]
    assert "CUDA" in d.message.text()
    assert d.adapt.run_btn.isEnabled() and not d.adapt.stop_btn.isEnabled()
    d.adapt.device_combo.set_device("auto")
    assert d.adapt.run()
    assert d.adapt.last_reason == "completed"
    # the slider starts at the default late layer: 8 of the tiny model's 10
    assert "DAPI [adabn L8]" in viewer.layers and viewer.layers["DAPI [adabn L8]"].ndim == 2


def test_dropped_model_file_loads_into_the_dock(dock, tiny_model_path, tmp_path):
    import tifffile

    viewer, d = dock
    n = len(viewer.layers)
    viewer.open(str(tiny_model_path), plugin=PLUGIN)
    assert len(viewer.layers) == n
    assert d.state.model is not None and d.model.table.rowCount() == 10
    assert d.adapt.layer_slider.maximum() == 10
    folder = tmp_path / "cells"
    folder.mkdir()
    for i in range(2):
        tifffile.imwrite(folder / f"c{i}.tif", np.full((32, 32), i, np.uint16))
    viewer.open(str(folder), plugin=PLUGIN)
    assert viewer.layers["cells"].data.shape == (2, 32, 32)
    assert d.images.pickers["source"].combo.findText("cells") > 0


def test_dropped_folders_open_what_can_be_opened(dock, synthetic_folders, tmp_path):
    import tifffile

    viewer, d = dock
    phase, _ = synthetic_folders
    # a folder of sub-folders: one layer per sub-folder, the stains coloured and hidden
    viewer.open(str(phase), plugin=PLUGIN)
    names = [ly.name for ly in viewer.layers]
    assert names == ["phase/cd29", "phase/dapi", "phase/input"]
    assert viewer.layers["phase/input"].visible and not viewer.layers["phase/cd29"].visible
    assert "3 layer(s) from 3 folder(s)" in d.message.text()
    # an empty folder: nothing added, one line in the dock, no traceback
    (tmp_path / "empty").mkdir()
    viewer.open(str(tmp_path / "empty"), plugin=PLUGIN)
    assert len(viewer.layers) == 3
    text = d.message.text()
    assert "'empty' holds no images" in text and "\n" not in text
    # a folder of sub-folders with a broken file: the rest opens, the file is named
    mixed = tmp_path / "mixed" / "good"
    mixed.mkdir(parents=True)
    tifffile.imwrite(mixed / "a.tif", np.zeros((16, 16), np.uint16))
    (mixed / "broken.tif").write_bytes(b"II*\x00 broken")
    (tmp_path / "mixed" / "nothing").mkdir()
    viewer.open(str(tmp_path / "mixed"), plugin=PLUGIN)
    assert viewer.layers["mixed/good"].data.shape == (1, 16, 16)
    assert "broken.tif" in d.message.text() and d.message.level == "warning"
    # a zarr store is left to the readers made for it
    from napari_lmadda._reader import get_reader

    (tmp_path / "x.zarr").mkdir()
    assert get_reader(str(tmp_path / "x.zarr")) is None
    assert get_reader(str(tmp_path / "empty")) is not None


def test_new_model_after_results_starts_clean(dock, tiny_model_path, qtbot, monkeypatch):
    viewer, d = dock
    assert d.model.load(str(tiny_model_path))
    viewer.open_sample(PLUGIN, "cells")
    tiny_settings(d.adapt, steps=3)
    keep_last_state(d.adapt, monkeypatch)
    assert d.adapt.run()
    qtbot.waitUntil(lambda: idle(d) and bool(d.results.last_layers), timeout=60_000)
    assert d.results.result_combo.isEnabled() and d.results.save_btn.isEnabled()
    n = len(viewer.layers)
    assert d.model.load(str(tiny_model_path))
    assert d.state.runs == [] and not d.results.save_btn.isEnabled()
    assert d.results.status.text() == "" and d.results.last_layers == []
    assert len(viewer.layers) == n  # the layers stay; they name the model they came from
    assert d.results.predict()
    qtbot.waitUntil(lambda: idle(d) and bool(d.results.last_layers), timeout=60_000)
    assert len(viewer.layers) == n + 2  # the new model's unadapted stains are new layers


def test_export_to_bioimageio_from_the_results(dock, tiny_model_path, qtbot, tmp_path):
    pytest.importorskip("bioimageio.spec")
    import zipfile

    viewer, d = dock
    assert d.model.load(str(tiny_model_path))
    viewer.open_sample(PLUGIN, "cells")
    assert d.results.bioimage_btn.isEnabled()
    assert d.results.export_bioimageio(tmp_path / "tiny")
    qtbot.waitUntil(lambda: idle(d), timeout=180_000)
    package = tmp_path / "tiny.bioimageio.zip"
    assert package.is_file(), d.results.status.text()
    assert "rdf.yaml" in zipfile.ZipFile(package).namelist()
    assert "Wrote the bioimage.io package" in d.message.text()
    before = package.read_bytes()
    assert not d.results.export_bioimageio(package)  # never over an existing file
    assert "already exists" in d.message.text() and package.read_bytes() == before


def test_a_long_message_folds_and_unfolds(dock):
    from napari_lmadda.widgets.messages import SHORT, notify

    viewer, d = dock
    long = "the model is not learning: " + "a likely cause; " * 30
    notify(d.state, "warning", long, toast=False)
    bar = d.message
    assert bar.text() == long and bar.more.isVisibleTo(bar)
    assert len(bar.label.text()) < len(long) and "…" in bar.label.text()
    bar.more.setChecked(True)
    assert "a likely cause; " * 29 in bar.label.text()
    notify(d.state, "info", "short", toast=False)
    assert not bar.more.isVisibleTo(bar) and len("short") < SHORT


def test_a_bioimageio_package_dropped_loads_as_the_model_without_running_its_code(
        dock, tmp_path, errors):
    """A ``*.zip`` package, its unpacked ``rdf.yaml`` or folder: a model, never code run."""
    import zipfile

    from napari_lmadda._reader import get_reader
    from pix2pix_reference import NestedUnet
    from test_bioimageio import _marker_code, _write_package

    viewer, d = dock
    marker = tmp_path / "ran.txt"
    package = _write_package(tmp_path / "p2p.zip", NestedUnet(1, 1, 5, ngf=8).state_dict(),
                             arch_code=_marker_code(marker))
    n = len(viewer.layers)
    viewer.open(str(package), plugin=PLUGIN)
    assert d.state.model is not None and d.state.model_label == "p2p.zip"
    assert d.state.model.meta["channel_names"] == ["nuclei"]
    assert len(viewer.layers) == n and not marker.exists()
    # unpacked: the rdf.yaml, or its folder, is a model too (not a folder of images)
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(package) as zf:
        zf.extractall(unpacked)
    for path in (unpacked / "rdf.yaml", unpacked):
        d.model.load("demo")
        viewer.open(str(path), plugin=PLUGIN)
        assert d.state.model.meta["channel_names"] == ["nuclei"], path
    assert len(viewer.layers) == n and not marker.exists()
    # a package of another architecture: one line in the dock, its code not run
    other = _write_package(tmp_path / "other.zip",
                           {"w.weight": __import__("torch").ones(1, 1, 1, 1)},
                           arch_code=_marker_code(marker))
    viewer.open(str(other), plugin=PLUGIN)
    text = d.message.text()
    assert "Model not loaded" in text and "not a pix2pix-style UNet" in text
    assert "\n" not in text and not marker.exists()
    assert d.state.model.meta["channel_names"] == ["nuclei"]  # the loaded model stays
    # zips and YAML files that are not packages are left to other readers
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as zf:
        zf.writestr("a.txt", "hello")
    (tmp_path / "config.yaml").write_text("a: 1\n")
    assert get_reader(str(tmp_path / "photos.zip")) is None
    assert get_reader(str(tmp_path / "config.yaml")) is None
