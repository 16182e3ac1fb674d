"""The dock never shows a wrong stain (issue 15, points 1-3), driven as a user would."""

from __future__ import annotations

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
def two_microscopes(tmp_path_factory):
    """Two ``make-synthetic`` folders; both have an ``input`` sub-folder (the issue's case)."""
    from napari_lmadda.data.synthetic import write_domain

    root = tmp_path_factory.mktemp("domains")
    write_domain(root / "src", 3, size=64, seed=0, modality="phase")
    write_domain(root / "tgt", 2, size=64, seed=1, modality="brightfield")
    return root / "src", root / "tgt"


def test_stains_never_written_into_a_users_layer(dock, two_microscopes, tiny_model_path, qtbot):
    viewer, d = dock
    src, tgt = two_microscopes
    viewer.open(str(src / "input"), plugin=PLUGIN)  # the source folder dropped: layer 'input'
    user = viewer.layers["input"]
    before = np.array(user.data, copy=True)
    user_meta = dict(user.metadata)
    assert d.model.load(str(tiny_model_path))
    d.images.choose_layer("source", "input")
    assert d.images.choose_folder("target", str(tgt / "input"))  # also a folder named 'input'
    # a layer of the user's that happens to carry a stain layer's name
    mine = np.full((2, 64, 64), 7.0, np.float32)
    viewer.add_image(mine, name="DAPI [unadapted]")
    n_user = len(viewer.layers)
    assert d.results.predict()
    qtbot.waitUntil(lambda: idle(d) and bool(d.results.last_layers), timeout=30_000)
    assert np.array_equal(np.asarray(viewer.layers["input"].data), before)
    assert viewer.layers["input"].metadata == user_meta
    assert np.array_equal(np.asarray(viewer.layers["DAPI [unadapted]"].data), mine)
    # the stains and the new microscope's images are layers of their own, tied to the folder
    new = [ly for ly in viewer.layers][n_user:]
    assert len(new) == 3  # the target's images + DAPI + CD29
    tgt_layer = next(ly for ly in new if ly.metadata.get("lmadda", {}).get("kind") == "input")
    assert tgt_layer.data.shape == (2, 64, 64)
    assert tgt_layer.metadata["lmadda"]["folder"] == str(tgt / "input")
    for name in d.results.last_layers:
        meta = viewer.layers[name].metadata["lmadda"]
        assert meta["input_folder"] == str(tgt / "input")
        assert meta["input_layer"] == tgt_layer.name


def _run_and_wait(d, qtbot, timeout=60_000):
    assert d.adapt.run()
    qtbot.waitUntil(lambda: idle(d), timeout=timeout)


def test_stopped_run_without_a_better_state_keeps_the_earlier_result(dock, tiny_model_path,
                                                                      qtbot, tmp_path,
                                                                      monkeypatch):
    viewer, d = dock
    assert d.model.load(str(tiny_model_path))
    viewer.open_sample(PLUGIN, "cells")
    tiny_settings(d.adapt, steps=8)
    d.adapt.lr_g_spin.setValue(1e-3)
    # a first run that certainly keeps a trained state: the last one (a random tiny model
    # may well find nothing better than itself by the default criterion)
    keep_last_state(d.adapt, monkeypatch)
    _run_and_wait(d, qtbot)
    monkeypatch.undo()
    qtbot.waitUntil(lambda: idle(d) and bool(d.results.last_layers), timeout=30_000)
    first = d.adapt.state.adapted
    assert first is not None and first.result.best_step > 0
    names = list(d.results.last_layers)
    adapted_names = [n for n in names if "unadapted" not in n]
    kept = {n: np.array(viewer.layers[n].data, copy=True) for n in adapted_names}
    # a second run, stopped before its first evaluation: it found nothing better
    d.adapt.steps_spin.setValue(5000)
    assert d.adapt.run()
    qtbot.waitUntil(lambda: len(d.adapt.plot.steps) >= 2, timeout=30_000)
    d.adapt.stop()
    qtbot.waitUntil(lambda: idle(d), timeout=30_000)
    assert d.adapt.state.adapted is first
    status = d.adapt.status.text()
    assert "nothing better than the unadapted model" in status and "kept" in status
    # the earlier stains are untouched, also after showing the stains again (which updates
    # the same layers, adding none)
    n = len(viewer.layers)
    assert d.results.predict()
    qtbot.waitUntil(lambda: idle(d), timeout=30_000)
    assert len(viewer.layers) == n
    for n, data in kept.items():
        assert np.array_equal(np.asarray(viewer.layers[n].data), data), n
        assert viewer.layers[n].metadata["lmadda"]["best_step"] == first.result.best_step
    (tmp_path / "out").mkdir()
    files = export_stains(d, qtbot, tmp_path / "out")
    lm = [f for f in files if "unadapted" not in f.name]
    un = [f for f in files if "unadapted" in f.name]
    import tifffile

    assert len(lm) == len(un) == 1  # the sample's layer (no files): its images as Z
    with tifffile.TiffFile(lm[0]) as tif:
        assert tif.series[0].axes == "ZCYX"
    assert not np.array_equal(tifffile.imread(lm[0]), tifffile.imread(un[0]))


def test_status_says_what_the_layers_show(dock, tiny_model_path, qtbot, monkeypatch):
    viewer, d = dock
    assert d.model.load(str(tiny_model_path))
    viewer.open_sample(PLUGIN, "cells")
    assert d.results.predict()  # the unadapted model alone: its stains are shown
    qtbot.waitUntil(lambda: idle(d) and bool(d.results.last_layers), timeout=30_000)
    assert viewer.layers["DAPI [unadapted]"].visible
    tiny_settings(d.adapt, steps=4)
    keep_last_state(d.adapt, monkeypatch)
    _run_and_wait(d, qtbot)
    qtbot.waitUntil(lambda: idle(d) and len(d.results.last_layers) == 4, timeout=30_000)
    text = d.results.status.text()
    unadapted = [viewer.layers[n] for n in d.results.last_layers if "unadapted" in n]
    adapted = [viewer.layers[n] for n in d.results.last_layers if "unadapted" not in n]
    assert all(ly.visible for ly in adapted)
    if "hidden" in text:
        assert not any(ly.visible for ly in unadapted), text
    assert "[unadapted] hidden" in text  # the overlay shows the adapted stains only


def test_folder_with_a_corrupt_file_is_counted_and_named(dock, tmp_path):
    import tifffile

    viewer, d = dock
    folder = tmp_path / "three"
    folder.mkdir()
    for i in range(2):
        tifffile.imwrite(folder / f"ok{i}.tif", np.full((32, 32), i, np.uint16))
    (folder / "broken.tif").write_bytes(b"II*\x00 not really a tiff")
    assert d.images.choose_folder("target", str(folder))
    text = d.images.pickers["target"].status.text()
    assert "2 image" in text and "3 image" not in text
    assert "broken.tif" in text


def test_failed_folder_pick_does_not_leave_the_previous_choice(dock, tmp_path, errors):
    import tifffile

    viewer, d = dock
    good = tmp_path / "good"
    good.mkdir()
    tifffile.imwrite(good / "a.tif", np.zeros((32, 32), np.uint16))
    (tmp_path / "empty").mkdir()
    assert d.images.choose_folder("source", str(good))
    assert not d.images.choose_folder("source", str(tmp_path / "empty"))
    status = d.images.pickers["source"].status.text()
    assert "good" not in status and "no image" in status
    assert d.adapt.state.selections["source"] is None


def test_new_model_clears_the_old_run_status(dock, tiny_model_path, qtbot):
    viewer, d = dock
    assert d.model.load(str(tiny_model_path))
    viewer.open_sample(PLUGIN, "cells")
    tiny_settings(d.adapt, steps=3)
    d.results.auto_check.setChecked(False)
    _run_and_wait(d, qtbot)
    assert d.adapt.status.text()
    old = d.adapt.status.text()
    assert d.model.load(str(tiny_model_path))
    assert old not in d.adapt.status.text()
    assert d.adapt.progress.value() <= 0 and not d.adapt.plot.steps


def test_outcome_words():
    from types import SimpleNamespace

    from napari_lmadda.adapt.events import StopReason
    from napari_lmadda.widgets.adapt_step import outcome_text

    def result(reason, best, message="", method="lmadda"):
        return SimpleNamespace(method=method, best_step=best, reason=reason, steps_done=120,
                               message=message, criterion="gap")

    earlier = SimpleNamespace(tag="lmadda L10", run=1)
    text = outcome_text(result(StopReason.COMPLETED, 0), earlier)
    assert text.startswith("No adaptation needed: in 120 steps nothing better than the "
                           "unadapted model was found")
    assert text.endswith("the earlier result [lmadda L10] (run 1) is kept")
    assert "nothing better" in outcome_text(result(StopReason.CANCELLED, 0), None)
    assert outcome_text(result(StopReason.CANCELLED, 0), None).endswith(
        "the unadapted model stays in use")
    # a method that words it itself (the auto method) keeps its words
    own = "no adaptation needed: the new images look like the source images to the model"
    text = outcome_text(result(StopReason.COMPLETED, 0, own, method="auto"), earlier)
    assert text.startswith("No adaptation needed: the new images look like")
    assert "nothing changed" in text
    # a run that kept a trained state says what it kept
    assert outcome_text(result(StopReason.CANCELLED, 40), earlier) == \
        "Stopped after 120 steps; kept the state of step 40"


def test_exported_stains_are_the_files_lmadda_predict_writes(dock, tiny_model_path, qtbot,
                                                              tmp_path):
    """A calibrated 16-bit folder: the GUI's export and ``lmadda predict`` write alike."""
    import tifffile

    from napari_lmadda.data.io import read_pixel_size, read_tiff_metadata, write_tiff
    from napari_lmadda.inference.predict import predict_folder
    from napari_lmadda.models import load_model

    viewer, d = dock
    folder = tmp_path / "new microscope"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.tif", "b.tif"):
        img = rng.integers(800, 4095, (64, 64)).astype(np.uint16)  # 12-bit in 16
        write_tiff(folder / name, img, dtype=None, axes="YX",
                   pixel_size={"y": 0.325, "x": 0.325, "unit": "um"})
    assert d.model.load(str(tiny_model_path))
    assert d.images.choose_folder("target", str(folder))
    assert d.results.predict()
    qtbot.waitUntil(lambda: idle(d) and bool(d.results.last_layers), timeout=30_000)
    stain = viewer.layers["DAPI [unadapted]"]
    assert tuple(stain.scale) == pytest.approx((1.0, 0.325, 0.325))
    assert str(stain.units[-1]) == "micrometer"
    gui = export_stains(d, qtbot, tmp_path / "gui")
    assert sorted(f.name for f in gui) == ["a_unadapted_pred.tif", "b_unadapted_pred.tif"]
    predict_folder(load_model(tiny_model_path), folder, tmp_path / "cli")
    for name in ("a", "b"):
        g = tmp_path / "gui" / f"{name}_unadapted_pred.tif"
        c = tmp_path / "cli" / f"{name}_pred.tif"
        np.testing.assert_allclose(tifffile.imread(g), tifffile.imread(c), atol=1e-5)
        with tifffile.TiffFile(g) as tg, tifffile.TiffFile(c) as tc:
            assert tg.is_imagej and tg.series[0].axes == tc.series[0].axes == "CYX"
            for key in ("Labels", "unit", "Ranges", "mode"):
                assert tg.imagej_metadata.get(key) == tc.imagej_metadata.get(key), key
            assert tg.pages[0].tags["XResolution"].value == \
                tc.pages[0].tags["XResolution"].value
        assert read_pixel_size(g) == read_pixel_size(c) == {"y": pytest.approx(0.325),
                                                           "x": pytest.approx(0.325),
                                                           "z": None, "unit": "um"}
        mg, mc = read_tiff_metadata(g), read_tiff_metadata(c)
        for key in ("source_image", "channels", "units", "model", "axes"):
            assert mg[key] == mc[key], key
        assert mg["tag"] == "unadapted"
    # never over existing files unless asked; nothing is half-written
    before = (tmp_path / "gui" / "a_unadapted_pred.tif").stat().st_mtime_ns
    assert export_stains(d, qtbot, tmp_path / "gui") == []
    assert "already exists" in d.message.text()
    assert (tmp_path / "gui" / "a_unadapted_pred.tif").stat().st_mtime_ns == before
    assert len(export_stains(d, qtbot, tmp_path / "gui", overwrite=True)) == 2
    assert not [p for p in (tmp_path / "gui").iterdir() if not p.name.endswith("_pred.tif")]


def test_run_status_names_what_is_trained(dock):
    """One layer, a range (APMA), or auto's candidates: never '0 trainable parameters'."""
    from napari_lmadda.adapt.events import Started

    viewer, d = dock
    d.adapt._on_event(Started("lmadda", (4,), 120, 1234, "cpu", "train", "gap"))
    assert "at layer 4: 1,234 trainable parameters on" in d.adapt.status.text()
    d.adapt._on_event(Started("apma", (2, 3, 4), 120, 99, "cpu", "train", "gap"))
    assert "at layers 2–4: 99 trainable" in d.adapt.status.text()
    d.adapt._on_event(Started("auto", (3, 6, 4), 240, 0, "cpu", "train", "out_q"))
    text = d.adapt.status.text()
    assert "trying layers 3, 6, 4 on " in text and "trainable" not in text
