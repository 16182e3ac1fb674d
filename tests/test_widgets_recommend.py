"""Adapt step: layer recommendation on the slider, trust-map layers, the engine's method menu."""

from __future__ import annotations

import numpy as np
import pytest

from widget_helpers import PLUGIN, open_dock


@pytest.fixture
def docks(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    dock = open_dock(viewer)
    return viewer, {"Model": dock.model, "Data": dock.images, "Adapt": dock.adapt,
                    "dock": dock}


@pytest.fixture
def loaded(docks, tiny_model_path):
    """Tiny model (10 layers) and the sample data, small patches and a short probe."""
    viewer, w = docks
    assert w["Model"].load(str(tiny_model_path))
    viewer.open_sample(PLUGIN, "cells")
    adapt = w["Adapt"]
    adapt.patch_spin.setValue(32)
    adapt.recommender.options["probe_steps"] = 15
    return viewer, adapt, w["dock"].results


def _idle(adapt):
    return adapt.recommender.task is None and adapt.task is None and not adapt.state.busy


def test_default_layer():
    from napari_lmadda.widgets.adapt_step import default_layer

    assert default_layer(12) == 10  # the demo model: the benchmark's best CD29 layer
    assert default_layer(16) == 13  # the paper's UNet: its best CD29 layer
    assert default_layer(12, recommended=3) == 3
    assert default_layer(12, recommended=40) == 10  # not a layer of this model
    assert default_layer(1) == 1


def test_method_combo_lists_engine_methods(docks, monkeypatch):
    from napari_lmadda.adapt import engine
    from napari_lmadda.widgets.adapt_step import AdaptStep

    viewer, w = docks
    adapt = w["Adapt"]
    combo = [adapt.method_combo.itemData(i) for i in range(adapt.method_combo.count())]
    assert combo == list(engine.METHODS)
    # the dock starts on the automatic method when the registry has it
    assert adapt.method == ("auto" if "auto" in combo else "lmadda")
    hidden = {}
    for method in combo:
        adapt.set_method(method)
        hidden[method] = (adapt.layer_slider.isHidden(), adapt.range_slider.isHidden(),
                          adapt.recommender.button.isVisibleTo(adapt))
    assert hidden["lmadda"] == (False, True, True)
    assert hidden["adabn"] == (False, True, True)
    assert hidden["lmadda-multi"] == (True, False, True)
    for method in ("none", "adda", "scgan"):
        if method in hidden:
            assert hidden[method] == (True, True, False), method
    # method options appear with their method and go into the config (when the config has them)
    from napari_lmadda.adapt.config import AdaptConfig

    if "apma" in combo:
        parts = adapt.option_fields["apma_parts"]
        adapt.set_method("apma")
        assert not parts.isHidden() and adapt.layers() == ()
        parts.setCurrentText("en+de_feat")
        assert adapt.config().apma_parts == "en+de_feat"
        adapt.set_method("lmadda")
        assert parts.isHidden() and adapt.config().apma_parts == AdaptConfig().apma_parts
    # a method registered later shows up in a new dock, by its name, without a layer slider
    from dataclasses import replace

    monkeypatch.setitem(engine.METHODS, "zz-test",
                        replace(engine.METHODS["none"], name="zz-test", label="zz-test"))
    fresh = AdaptStep(viewer)
    assert fresh.method_combo.findData("zz-test") >= 0
    fresh.set_method("zz-test")
    assert fresh.method_combo.currentText() == "zz-test"
    assert fresh.layers() == () and fresh.layer_slider.isHidden()
    with pytest.raises(ValueError):
        fresh.set_method("no-such-method")


def test_recommend_sets_slider_and_survives_method_changes(loaded, qtbot):
    from dataclasses import replace

    from napari_lmadda.widgets.state import Recommendation

    viewer, adapt, results = loaded
    assert adapt.layer_slider.value() == 8  # default: 5/6 of the tiny model's 10 layers
    assert adapt.layer_slider.mark is None and not adapt.plot_tabs.isTabEnabled(1)
    # a shift no random UNet misses: phase contrast vs uniform noise
    noise = np.random.default_rng(1).random((4, 256, 256), dtype=np.float32)
    viewer.add_image(noise, name="noise")
    adapt.state.set_selection("target", type(adapt.state.selections["source"])("layer", "noise"))
    adapt.layer_slider.setValue(6)
    assert adapt.recommend()
    assert not adapt.run_btn.isEnabled()
    assert adapt.recommender.button.text() == "Recommending…"
    assert adapt.stop_btn.isEnabled()
    qtbot.waitUntil(lambda: _idle(adapt), timeout=60_000)
    rec = adapt.state.recommendation
    assert rec is not None and adapt.recommender.last_error is None
    assert rec.patch_size == 32 and len(rec.result.rows) == 10
    layer = rec.layer
    assert layer is not None and layer != 6
    assert adapt.layer_slider.value() == layer
    assert adapt.layer_slider.mark == layer and adapt.layer_slider.mark_x() is not None
    text = adapt.recommender.label.text()
    assert f"recommended: layer {layer}</b> (confidence {rec.result.confidence:.2f})" in text
    assert "▲ recommended" in adapt.layer_label.text()
    assert adapt.plot_tabs.isTabEnabled(1)
    assert adapt.plot_tabs.currentWidget() is adapt.recommender.gap_plot
    assert adapt.recommender.gap_plot.values[layer] == pytest.approx(rec.result.profile[layer])
    assert adapt.run_btn.isEnabled()
    assert adapt.recommender.button.text() == "Recommend layer"
    # the recommendation is the viewer's, not the method's
    adapt.set_method("adda")
    assert adapt.layers() == () and not adapt.recommender.button.isVisibleTo(adapt)
    adapt.set_method("lmadda")
    assert adapt.layer_slider.value() == layer and adapt.layer_slider.mark == layer
    assert "recommended: layer" in adapt.recommender.label.text()
    adapt.layer_slider.setValue(layer % 10 + 1)
    assert "▲ recommended" not in adapt.layer_label.text()
    # other images: the recommendation is kept but flagged
    adapt.state.set_selection("target", adapt.state.selections["source"])
    assert "measured on other images" in adapt.recommender.label.text()
    # "no adaptation needed": shown, no mark, the slider stays
    adapt.layer_slider.setValue(4)
    none = replace(rec.result, layer=None, confidence=1.0,
                   reason="no adaptation needed: the target images are no further")
    adapt.state.set_recommendation(Recommendation(none, dict(adapt.state.selections), 32))
    assert "no adaptation needed</b> (confidence 1.00)" in adapt.recommender.label.text()
    assert adapt.layer_slider.mark is None and adapt.layer_slider.value() == 4
    # a new model drops it
    adapt.state.set_model(adapt.state.model, "same model again")
    assert adapt.state.recommendation is None and adapt.layer_slider.mark is None
    assert "not measured" in adapt.recommender.label.text() and not adapt.plot_tabs.isTabEnabled(1)


def test_recommendation_can_be_stopped(loaded, qtbot):
    viewer, adapt, results = loaded
    adapt.recommender.options["probe_steps"] = 200
    assert adapt.recommend()
    adapt.stop()
    assert adapt.stop_btn.text() == "Stopping…" and not adapt.stop_btn.isEnabled()
    qtbot.waitUntil(lambda: _idle(adapt), timeout=60_000)
    assert "cancelled" in adapt.recommender.last_error
    assert adapt.state.recommendation is None
    assert adapt.recommender.button.isEnabled() and adapt.stop_btn.text() == "Stop"


def test_failing_recommendation_notifies_and_reenables(docks, tiny_model_path, errors, qtbot):
    viewer, w = docks
    adapt = w["Adapt"]
    assert not adapt.recommend()
    assert "load a model" in errors[-1]
    assert w["Model"].load(str(tiny_model_path))
    viewer.add_image(np.random.default_rng(0).random((3, 20, 20), dtype=np.float32),
                     name="small")
    w["Data"].choose_layer("source", "small")
    w["Data"].choose_layer("target", "small")
    adapt.patch_spin.setValue(32)  # larger than the images
    assert adapt.recommend()
    qtbot.waitUntil(lambda: _idle(adapt), timeout=30_000)
    assert errors[-1].startswith("Layer recommendation failed: patch size 32 is larger")
    assert "\n" not in errors[-1]
    assert adapt.state.recommendation is None
    assert adapt.recommender.button.isEnabled() and adapt.run_btn.isEnabled()
    assert adapt.method_combo.isEnabled() and adapt.layer_slider.isEnabled()
    assert not adapt.stop_btn.isEnabled()


def test_trust_map_layers(loaded, qtbot):
    viewer, adapt, results = loaded
    assert results.predict()  # no trust map unless asked
    qtbot.waitUntil(lambda: _idle(adapt) and results.task is None, timeout=30_000)
    assert "DAPI [unadapted]" in viewer.layers
    assert not any("trust" in ly.name for ly in viewer.layers)
    results.trust_check.setChecked(True)
    assert results.predict()
    qtbot.waitUntil(lambda: _idle(adapt) and results.task is None
                    and bool(results.last_trust_layers), timeout=60_000)
    assert results.last_trust_layers == ["DAPI trust [unadapted]", "CD29 trust [unadapted]"]
    dapi, cd29 = (viewer.layers[n] for n in results.last_trust_layers)
    assert dapi.data.shape == cd29.data.shape == (4, 256, 256)
    assert dapi.colormap.name == "magma" and dapi.blending == "additive"
    assert dapi.visible and not cd29.visible
    meta = dapi.metadata["lmadda"]
    assert meta["kind"] == "trust map" and meta["uncertainty_method"] == "tta"  # no dropout
    assert meta["n_samples"] == 8 and meta["channel"] == "DAPI"
    data = np.asarray(dapi.data)
    assert data.min() >= 0 and data.max() > 0 and dapi.contrast_limits[0] == 0
    assert "trust-map layer(s)" in results.status.text()
    # predicting again replaces the maps instead of piling them up
    n = len(viewer.layers)
    assert results.predict()
    qtbot.waitUntil(lambda: _idle(adapt) and results.task is None, timeout=60_000)
    assert len(viewer.layers) == n
