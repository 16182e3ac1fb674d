"""Layer recommendation without labels, the uncertainty selector and trust maps (tiny models)."""

import json
import math

import numpy as np
import pytest
import torch

from napari_lmadda.adapt.distances import layer_distances, pairwise_distances
from napari_lmadda.adapt.recommend import (
    LayerGap,
    choose_layer,
    measure_layer_gaps,
    probe_accuracy,
    recommend_layer,
    select_layer_by_uncertainty,
)
from napari_lmadda.cli import main
from napari_lmadda.data.io import read_tiff_metadata
from napari_lmadda.data.synthetic import make_domain, write_domain
from napari_lmadda.inference.uncertainty import (
    has_dropout,
    predictive_uncertainty,
    trust_map,
    uncertainty_method,
    uncertainty_score,
)
from napari_lmadda.models import UNetGenerator, save_model

QUICK = {"patch_size": 64, "n_patches": 16, "device": "cpu"}



@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return UNetGenerator(num_downs=5, ngf=8).eval()


@pytest.fixture(scope="module")
def source():
    return make_domain(8, size=64, seed=0)["input"]


@pytest.fixture(scope="module")
def overexposed():
    return {g: make_domain(8, size=64, seed=0, shift="overexpose", magnitude=g)["input"]
            for g in (1.0, 1.5, 2.5)}


# ------------------------------------------------------------------ distances
def test_distances_are_zero_for_identical_sets():
    x = torch.randn(4, 8, 16, 16)
    assert all(v == 0 for v in layer_distances(x, x).values())
    d = pairwise_distances([x, x.clone(), x + 1.0])
    for m in d.values():
        assert np.allclose(m, m.T) and np.all(np.diag(m) == 0)
        assert m[0, 1] == 0 and m[0, 2] > 0


def test_gap_at_layer_1_grows_with_overexposure(model, source, overexposed):
    gaps = {g: measure_layer_gaps(model, source, t, layers="1", probe_steps=0, **QUICK)[0]
            for g, t in overexposed.items()}
    for m in ("w2", "bhattacharyya", "sliced_w2"):
        v = [gaps[g].value(m) for g in (1.0, 1.5, 2.5)]
        assert v[0] < v[1] < v[2], (m, v)
    # gain 1.0 is no shift: the target is as far from the source as the source is from itself
    assert gaps[1.0].w2_between < 2 * gaps[1.0].w2_floor
    assert gaps[2.5].w2_between > 10 * gaps[2.5].w2_floor


# ------------------------------------------------------------------ probe
def test_probe_is_at_chance_for_identical_taps_and_high_for_a_shift():
    torch.manual_seed(1)
    x = torch.randn(12, 8, 16, 16)
    assert probe_accuracy(x, x, steps=20) == 0.5
    assert probe_accuracy(x[:6], x[:6] + 1.0, (x[6:], x[6:] + 1.0), steps=40) > 0.9


# ------------------------------------------------------------------ the rule
def _row(layer, w2, p=0.02, acc=math.nan, sliced=None, sliced_p=None):
    sw = w2 if sliced is None else sliced
    sp = p if sliced_p is None else sliced_p
    return LayerGap(layer, f"l{layer}", "down", 8, 8, 8, w2, w2, sw, w2, w2, sw,
                    w2 / 10, w2 / 10, sw / 10, p, p, sp, acc)


def test_old_rule_picks_the_first_layer_reaching_the_fraction():
    rows = [_row(1, 0.1), _row(2, 0.6), _row(3, 1.0), _row(4, 0.9)]
    old = {"rule": "first-reaching"}
    layer, conf, reason, det = choose_layer(rows, p_value=0.03, fraction=0.5, **old)
    assert layer == 2 and conf == 1.0 and "layer 2" in reason
    assert det["profile"][3] == 1.0 and det["ranking"][0] == 2
    layer, *_ = choose_layer(rows, p_value=0.03, fraction=0.05, **old)
    assert layer == 1
    # a layer that is not significant on its own cannot be picked
    rows[1] = _row(2, 0.6, p=0.4)
    assert choose_layer(rows, p_value=0.03, **old)[0] == 3


def _snr_row(layer, between, floor, gap=1.0):
    """A row whose three distances are ``between`` across domains and ``floor`` within one."""
    return LayerGap(layer, f"l{layer}", "down", 8, 8, 8, gap, gap, gap, between, between,
                    between, floor, floor, floor, 0.03, 0.03, 0.03)


def test_default_rule_ranks_encoder_layers_by_signal_to_noise():
    # layer 2 has the largest ratio of the encoder (1..4 of 8) although layer 3's raw gap is
    # 100x larger; decoder layer 6 has an even larger ratio but comes after the encoder
    rows = [_snr_row(1, 2.0, 1.0), _snr_row(2, 30.0, 1.0, gap=0.5),
            _snr_row(3, 500.0, 100.0, gap=50.0), _snr_row(4, 3.0, 1.0),
            _snr_row(5, 1.0, 1.0), _snr_row(6, 90.0, 1.0), _snr_row(7, 1.0, 1.0),
            _snr_row(8, 4.0, 1.0)]
    layer, conf, reason, det = choose_layer(rows, p_value=0.03, num_layers=8)
    assert layer == 2 and conf == 1.0
    assert det["ranking"] == [2, 3, 4, 1, 6, 8, 5, 7]
    assert "30.0x further" in reason and "encoder" in reason
    # without the encoder restriction the decoder layer wins
    assert choose_layer(rows, p_value=0.03, num_layers=8, rule="snr")[0] == 6
    # the largest raw gap is what the "largest-gap" rule reads
    assert choose_layer(rows, p_value=0.03, num_layers=8, rule="largest-gap")[0] == 3


def test_unknown_rule_is_a_config_error():
    from napari_lmadda.errors import ConfigError

    with pytest.raises(ConfigError, match="rule must be one of"):
        choose_layer([_snr_row(1, 2.0, 1.0)], p_value=0.03, rule="best")


def test_rule_says_no_adaptation_without_a_significant_shift():
    rows = [_row(1, 0.5), _row(2, 0.2)]
    layer, conf, reason, _ = choose_layer(rows, p_value=0.4)
    assert layer is None and reason.startswith("no adaptation needed")


def test_rule_confidence_is_agreement_of_the_measures():
    rows = [_row(1, 1.0, acc=0.55), _row(2, 0.2, acc=1.0)]
    old = {"rule": "first-reaching"}
    layer, conf, _, det = choose_layer(rows, p_value=0.03, n_heldout=64, **old)
    assert layer == 1 and det["picks"]["probe"] == 2 and conf == 0.75
    # two against two: the earlier layer, confidence 0.5
    rows = [_row(1, 1.0, acc=0.55, sliced=0.1, sliced_p=0.5), _row(2, 0.2, acc=1.0)]
    layer, conf, _, det = choose_layer(rows, p_value=0.03, n_heldout=64, **old)
    assert det["picks"] == {"w2": 1, "bhattacharyya": 1, "sliced_w2": 2, "probe": 2}
    assert layer == 1 and conf == 0.5


def test_rule_a_probe_far_above_chance_detects_a_shift():
    rows = [_row(1, 0.5, p=0.5, acc=0.6), _row(2, 0.2, p=0.5, acc=0.97)]
    layer, conf, reason, _ = choose_layer(rows, p_value=0.5, n_heldout=32,
                                          rule="first-reaching")
    assert layer == 2 and "probe above chance" in reason and conf == 0.25


# ------------------------------------------------------------------ end to end
def test_identical_domains_need_no_adaptation(model, source):
    rec = recommend_layer(model, source, source.copy(), layers="1-4", probe_steps=30, **QUICK)
    assert rec.layer is None and not rec.shift_detected
    assert "no adaptation needed" in rec.summary() and rec.p_value > 0.05
    accs = [r.probe_acc for r in rec.rows]
    assert abs(np.mean(accs) - 0.5) < 0.12, accs
    assert max(r.w2_between / r.w2_floor for r in rec.rows) < 2


def test_strong_overexposure_recommends_an_early_layer(model, source, overexposed):
    rec = recommend_layer(model, source, overexposed[2.5], probe_steps=40, **QUICK)
    assert rec.layer == 1 and rec.p_value <= 0.05 and rec.confidence >= 0.5
    assert rec.row(1).probe_acc > 0.8
    assert "early layer" in rec.reason
    doc = json.loads(json.dumps(rec.to_dict()))
    assert doc["layer"] == 1 and len(doc["rows"]) == model.num_layers


def test_bad_options_are_config_errors(model, source):
    from napari_lmadda.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple of 32"):
        measure_layer_gaps(model, source, source, patch_size=48, n_patches=8)
    with pytest.raises(ConfigError, match="n_patches"):
        measure_layer_gaps(model, source, source, patch_size=64, n_patches=4)


# ------------------------------------------------------------------ uncertainty
@pytest.fixture(scope="module")
def dropout_model():
    torch.manual_seed(0)
    m = UNetGenerator(num_downs=6, ngf=8)
    m.reset_parameters(std=0.1)  # a signal that reaches the output, as in a trained model
    return m.eval()


def test_trust_map_mc_dropout(dropout_model):
    img = make_domain(1, size=96, seed=3)["input"][0][:70, :90]
    assert has_dropout(dropout_model) and uncertainty_method(dropout_model) == "mc_dropout"
    a = trust_map(dropout_model, img, n_samples=4, tile=64, overlap=16, seed=0)
    b = trust_map(dropout_model, img, n_samples=4, tile=64, overlap=16, seed=0)
    c = trust_map(dropout_model, img, n_samples=4, tile=64, overlap=16, seed=1)
    assert a.shape == (1, 70, 90) and a.dtype == np.float32
    assert (a > 0).all() and np.array_equal(a, b) and not np.array_equal(a, c)
    assert not any(m.training for m in dropout_model.modules())  # modes restored


def test_trust_map_without_dropout_uses_flips_and_rotations(model):
    img = make_domain(1, size=64, seed=4)["input"][0]
    assert not has_dropout(model) and uncertainty_method(model) == "tta"
    t = trust_map(model, img, n_samples=8, tile=64)
    assert t.shape == (1, 64, 64) and (t >= 0).all() and t.max() > 0


def test_ensemble_uncertainty_and_depth_selector(model, dropout_model, source):
    x = source[:2]
    mean, std = predictive_uncertainty([model, model], x)
    assert mean.shape == std.shape == (2, 1, 64, 64) and std.max() == 0
    other = UNetGenerator(num_downs=5, ngf=8).eval()
    assert uncertainty_score([model, other], x) > 0
    layer, scores = select_layer_by_uncertainty({1: [model, model], 3: [model, other]}, x)
    assert layer == 1 and scores[1] == 0 and scores[3] > 0


# ------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    write_domain(root / "src", 8, size=64, seed=0)
    write_domain(root / "tgt", 8, size=64, seed=1, shift="overexpose", magnitude=2.5)
    torch.manual_seed(0)
    save_model(UNetGenerator(num_downs=5, ngf=8, out_channels=2), root / "g.pt",
               meta={"channel_names": ["DAPI", "CD29"], "target_range": [0.0, 1.0]})
    return root


def _args(ws, *extra):
    return ["recommend-layer", "--model", str(ws / "g.pt"), "--source", str(ws / "src/input"),
            "--target", str(ws / "tgt/input"), "--patch", "64", "--patches", "8",
            "--probe-steps", "10", "--layers", "1-3", "--device", "cpu", *extra]


def test_cli_recommend_layer(ws, capsys):
    assert main(_args(ws, "--out", str(ws / "out"))) == 0
    text = capsys.readouterr().out
    for word in ("layer", "W2", "Bhattacharyya", "sliced W2", "probe acc", "down1", "reason:"):
        assert word in text
    doc = json.loads((ws / "out/recommend.json").read_text())
    assert [r["layer"] for r in doc["rows"]] == [1, 2, 3] and "confidence" in doc
    # the printed answer is the file's: the layer with the largest combined gap (the rule's
    # reading), or no adaptation
    layer = doc.get("layer")
    if layer is None:
        assert "no adaptation needed" in text
    else:
        gaps = doc["profile"]
        assert f"recommended layer: {layer} " in text and doc["ranking"][0] == layer
        assert gaps[str(layer)] == max(gaps.values())
    assert (ws / "out/recommend.png").read_bytes()[:4] == b"\x89PNG"
    assert main(_args(ws, "--out", str(ws / "out"))) == 2  # exists, no --overwrite


@pytest.mark.parametrize("extra, match", [
    (["--patch", "48"], "multiple of 32"),
    (["--patches", "4"], "at least 8"),
    (["--layers", "12"], "out of range"),
])
def test_cli_recommend_layer_bad_input(ws, capsys, extra, match):
    assert main(_args(ws, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("lmadda recommend-layer: error: ") and match in err


def test_cli_recommend_layer_missing_folder(ws, capsys):
    args = _args(ws)
    args[args.index("--target") + 1] = str(ws / "nope")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "does not exist" in err


def test_cli_predict_uncertainty(ws, capsys):
    out = ws / "pred"
    assert main(["predict", "--model", str(ws / "g.pt"), "--images", str(ws / "tgt/input"),
                 "--out", str(out), "--tile", "64", "--uncertainty", "--device", "cpu"]) == 0
    trust = sorted(out.glob("*_trust.tif"))
    assert len(trust) == 8 and len(list(out.glob("*_pred.tif"))) == 8
    import tifffile

    arr = tifffile.imread(trust[0])
    assert arr.shape == (2, 64, 64) and arr.dtype == np.float32 and (arr >= 0).all()
    md = read_tiff_metadata(trust[0])
    assert md["uncertainty_method"] == "tta" and md["channels"] == ["DAPI", "CD29"]
    assert "flips" in md["how"]
