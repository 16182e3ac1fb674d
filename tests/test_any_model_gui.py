"""The dock with a network built from architecture code (issue 17): asked before code runs,
layers listed by module name, LM-ADDA at a named module, the adapted model saved."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from widget_helpers import PLUGIN, idle, keep_last_state

ZOO = str(Path(__file__).parent / "arch_zoo.py")


@pytest.fixture(scope="module")
def code_model_path(tmp_path_factory):
    """A CARE-style UNet from ``arch_zoo.py`` saved as a project model file (format 4)."""
    from napari_lmadda.models import save_model
    from napari_lmadda.models.arch import load_arch

    torch.manual_seed(0)
    model = load_arch(f"{ZOO}:CareUNet", kwargs={"out_channels": 2, "depth": 2, "ngf": 4},
                      input_size=32, meta={"channel_names": ["DAPI", "CD29"]})
    path = tmp_path_factory.mktemp("code") / "care.pt"
    save_model(model, path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from napari_lmadda.data.synthetic import write_domain

    root = tmp_path_factory.mktemp("synthetic")
    write_domain(root / "phase", 2, size=64, seed=0, modality="phase")
    write_domain(root / "brightfield", 2, size=64, seed=1, modality="brightfield")
    return root / "phase", root / "brightfield"


def _code_modules() -> set[str]:
    return {m for m in sys.modules if m.startswith("_lmadda_arch")}


def test_dock_asks_before_running_code_and_adapts_at_a_module_name(
        dock, code_model_path, folders, qtbot, tmp_path, monkeypatch, errors):
    from napari_lmadda.widgets.model_step import ModelStep

    viewer, d = dock
    before = _code_modules()
    # dropped: refused, nothing runs
    viewer.open(str(code_model_path), plugin=PLUGIN)
    assert d.state.model is None and _code_modules() == before
    assert "load it from the Model step" in errors[-1]
    # loaded from the Model step: asked; declined -> nothing runs
    asked: list[str] = []
    monkeypatch.setattr(ModelStep, "_confirm_code", lambda self, what: asked.append(what))
    assert not d.model.load(str(code_model_path))
    assert "arch_zoo.py" in asked[-1] and "CareUNet" in asked[-1]
    assert d.state.model is None and _code_modules() == before
    # agreed: built, its module names are the layers
    monkeypatch.setattr(ModelStep, "_confirm_code", lambda self, what: True)
    assert d.model.load(str(code_model_path))
    model = d.state.model
    n = model.num_layers
    assert d.model.table.rowCount() == n and d.adapt.layer_slider.maximum() == n
    names = [d.model.table.item(r, 1).text() for r in range(n)]
    assert "enc.1" in names and "bottom" in names and names[-1] == "output"
    assert "CareUNet (architecture code)" in d.model.info.text()
    assert "CareUNet" in d.state.model_summary()
    # methods written for the project's UNet (auto, APMA, SCGAN) are not offered for it
    from napari_lmadda.adapt.registry import METHODS

    assert not METHODS[d.adapt.method].unet_only
    combo = d.adapt.method_combo
    for i in range(combo.count()):
        entry = METHODS[combo.itemData(i)]
        assert combo.model().item(i).isEnabled() == (not entry.unet_only)

    phase, brightfield = folders
    viewer.open(str(phase), plugin=PLUGIN)
    viewer.open(str(brightfield), plugin=PLUGIN)
    d.images.choose_layer("source", "phase/input")
    d.images.choose_layer("target", "brightfield/input")
    d.adapt.set_method("lmadda")
    d.adapt.patch_spin.setValue(32)
    layer = model.layer_index("enc.1")
    d.adapt.layer_slider.setValue(layer)
    info = model.describe_layers(32)[layer - 1]
    label = d.adapt.layer_label.text()
    assert f"L{layer} · enc.1" in label and f"{info.channels} ch" in label
    assert f"{info.height}×{info.width} px" in label
    d.adapt.steps_spin.setValue(3)
    d.adapt.batch_spin.setValue(2)
    keep_last_state(d.adapt, monkeypatch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert d.adapt.run()
    qtbot.waitUntil(lambda: idle(d) and bool(d.results.last_layers), timeout=120_000)
    assert d.adapt.last_reason == "completed"
    assert f"DAPI [lmadda L{layer}]" in d.results.last_layers
    # the source model is untouched; the adapted one changed only modules before the tap
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    adapted = d.state.adapted.model
    changed = {k.split(".")[1] for k, v in adapted.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, state[k])}
    assert changed and changed <= {"enc"}, changed
    saved = d.results.save_adapted_model(tmp_path / "adapted.pt")
    raw = torch.load(saved, weights_only=True)
    assert raw["format_version"] == 4 and raw["arch"]["arch"]["class"] == "CareUNet"
    assert raw["meta"]["provenance"]["layer_names"] == ["enc.1"]
