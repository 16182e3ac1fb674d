"""Source training on real dtypes and ranges: learned target normalisation, warnings before
and during training (issue 11 items 1-2)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_lmadda.cli import main
from napari_lmadda.data.normalize import (
    TargetNorm,
    encode_target,
    fit_target_norm,
)
from napari_lmadda.data.synthetic import make_domain
from napari_lmadda.errors import ConfigError
from napari_lmadda.models import load_model

# the case: DAPI as a 16-bit file, values from 13,689 up to full scale
OFFSET, FULL = 13689.0, 65535.0


class Planes:
    """A list of planes with names, as fit_target_norm reads them."""

    def __init__(self, planes, names=None):
        self.planes = list(planes)
        self.names = names or [f"t{i}.tif" for i in range(len(self.planes))]

    def __len__(self):
        return len(self.planes)

    def __getitem__(self, i):
        return self.planes[i]

    def name(self, i):
        return self.names[i]


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    """6 synthetic fields: 16-bit inputs; DAPI as float [0, 1] and as offset uint16."""
    root = tmp_path_factory.mktemp("units")
    d = make_domain(6, size=64, seed=0)
    for k in ("in", "float", "u16"):
        (root / k).mkdir()
    for i in range(6):
        tifffile.imwrite(root / "in" / f"f{i}.tif",
                         np.round(d["input"][i] * 65535).astype(np.uint16))
        tifffile.imwrite(root / "float" / f"f{i}.tif", d["dapi"][i].astype(np.float32))
        tifffile.imwrite(root / "u16" / f"f{i}.tif",
                         np.round(OFFSET + d["dapi"][i] * (FULL - OFFSET)).astype(np.uint16))
    return root


def _train(root, targets, out, *extra):
    return main(["train-source", "--inputs", str(root / "in"), "--targets", str(root / targets),
                 "--out", str(out), "--num-downs", "4", "--ngf", "8", "--patch", "64",
                 "--batch", "4", "--steps", "100", "--eval-every", "50", "--lr", "2e-3",
                 "--val-patches", "8", "--device", "cpu", *extra])


def test_a_change_of_units_does_not_change_what_is_learned(paired, tmp_path, capsys):
    """Fails on the code before issue 11: the uint16 run reached Pearson 0.11, float 0.91."""
    torch.set_num_threads(1)
    assert _train(paired, "float", tmp_path / "f.pt") == 0
    assert _train(paired, "u16", tmp_path / "u.pt") == 0
    out = capsys.readouterr().out
    assert "not learning" not in out and "cannot be learned" not in out
    mf, mu = load_model(tmp_path / "f.pt"), load_model(tmp_path / "u.pt")
    pf = mf.meta["provenance"]["training"]["val_pearson"]
    pu = mu.meta["provenance"]["training"]["val_pearson"]
    assert pf > 0.6, pf  # it learned something: the comparison means something
    assert abs(pf - pu) <= 0.02, (pf, pu)
    # the model file says how to decode: into the uint16 target's own units
    tn = TargetNorm.from_meta(mu.meta, 1)
    assert tn.mode == "dataset" and tn.units == "target"
    assert OFFSET - 0.1 * (FULL - OFFSET) < tn.lo[0] < OFFSET + 0.05 * (FULL - OFFSET)
    x = tifffile.imread(paired / "in" / "f0.tif")
    from napari_lmadda.data.normalize import percentile_normalize

    with torch.no_grad():
        y = mu(torch.from_numpy(percentile_normalize(x)[0])[None, None])[0].numpy()
    stain = tn.decode(y)
    truth = tifffile.imread(paired / "u16" / "f0.tif").astype(np.float64)
    lo, hi = np.percentile(stain, [5, 95])
    assert OFFSET - 5000 < lo and hi < FULL + 5000  # in the target's units, not [0, 1]
    assert np.corrcoef(stain.ravel(), truth.ravel())[0, 1] > 0.5
    # and the prediction path returns the same target units, for either model file
    from napari_lmadda.inference.predict import predict_image

    pred = predict_image(mu, x, device="cpu")[0]
    assert np.percentile(pred, 5) > OFFSET - 5000 and np.percentile(pred, 95) < FULL + 5000
    assert np.corrcoef(pred.ravel(), truth.ravel())[0, 1] > 0.5
    pred_f = predict_image(mf, x, device="cpu")[0]  # the float model: [0, 1] units
    assert -0.2 < np.percentile(pred_f, 5) and np.percentile(pred_f, 95) < 1.2


def test_targets_the_model_cannot_produce_are_named_before_training(paired, tmp_path, capsys):
    rc = main(["train-source", "--inputs", str(paired / "in"), "--targets",
               str(paired / "u16"), "--out", str(tmp_path / "m.pt"), "--target-norm", "fixed",
               "--num-downs", "3", "--ngf", "4", "--patch", "32", "--steps", "6",
               "--eval-every", "2", "--device", "cpu"])
    assert rc in (0, 1)
    out = capsys.readouterr().out
    warn = out.index("warning: target 'f")
    assert warn < out.index("parameters on")  # before training starts
    line = out[warn:].splitlines()[0]
    assert "runs from" in line and "-0.05 to 1.05" in line and "100.0 %" in line
    assert "not learning" in out  # and training says so when it does not learn
    assert "targets outside what the model can produce" in out


def test_not_learning_event_with_causes():
    from napari_lmadda.models.unet import UNetConfig
    from napari_lmadda.training import NotLearning, SourceTrainConfig, iter_train_source

    rng = np.random.default_rng(0)

    class Noise:  # targets unrelated to inputs: nothing to learn
        def sample(self):
            return (rng.standard_normal((2, 1, 16, 16)).astype(np.float32),
                    rng.uniform(-1, 1, (2, 1, 16, 16)).astype(np.float32))

    val = Noise().sample()
    events = list(iter_train_source(
        Noise(), val, arch=UNetConfig(num_downs=2, ngf=4),
        config=SourceTrainConfig(steps=8, batch_size=2, patch_size=16, eval_every=2,
                                 device="cpu"),
        hints=["a specific hint"]))
    nl = [e for e in events if isinstance(e, NotLearning)]
    assert len(nl) == 1 and nl[0].evaluations == 3 and nl[0].step == 6
    assert nl[0].causes[0] == "a specific hint" and len(nl[0].causes) > 3
    assert "not learning" in nl[0].message()
    assert events[-1].not_learning is nl[0]


@pytest.mark.parametrize("make", [
    lambda t: np.round(t * 255).astype(np.uint8),
    lambda t: np.round(OFFSET + t * (FULL - OFFSET)).astype(np.uint16),
    lambda t: np.round(t * 4095).astype(np.uint16),            # 12-bit in a 16-bit file
    lambda t: (t * 0.001).astype(np.float32),                  # tiny float range
    lambda t: ((t - 0.3) / 0.2).astype(np.float32),            # z-scored: negative values
    lambda t: (-5000 + t * 1e5).astype(np.float64),
])
def test_encoding_is_the_same_whatever_the_units(make):
    """Dataset percentiles are equivariant: any affine change of units encodes the same."""
    t = make_domain(3, size=48, seed=2)["dapi"]
    ref_norm, _ = fit_target_norm([Planes(list(t))], seed=1)
    ref = np.stack([encode_target(p, ref_norm) for p in t])
    planes = [make(p) for p in t]
    norm, problems = fit_target_norm([Planes(planes)], seed=1)
    enc = np.stack([encode_target(p, norm) for p in planes])
    assert enc.dtype == np.float32 and not problems
    assert np.abs(enc - ref).max() < 0.02  # rounding to 8 bit is the only difference
    assert -1.05 < enc.min() and enc.max() < 1.6


def test_twelve_bit_and_its_sixteen_bit_copy_encode_identically():
    t = make_domain(2, size=48, seed=3)["dapi"]
    p12 = [np.round(p * 4095).astype(np.uint16) for p in t]
    p16 = [p * 16 for p in p12]  # the same data left-shifted into the 16-bit range
    n12, _ = fit_target_norm([Planes(p12)])
    n16, _ = fit_target_norm([Planes(p16)])
    for a, b in zip(p12, p16):
        np.testing.assert_allclose(encode_target(a, n12), encode_target(b, n16), atol=1e-5)


def test_per_image_mode_is_in_normalised_units():
    t = make_domain(2, size=48, seed=4)["dapi"]
    planes = [t[0] * 1000, t[1] * 2000, t[0] * 3000 + 50]  # field 0 twice, other brightness
    norm, problems = fit_target_norm([Planes(planes)], mode="image")
    assert norm.mode == "image" and norm.units == "normalised" and not problems
    meta = TargetNorm.from_meta(norm.to_meta(), 1)
    assert meta == norm
    enc = [encode_target(p, norm) for p in planes]
    np.testing.assert_allclose(enc[0], enc[2], atol=0.02)  # brightness differences removed


def test_a_file_brighter_than_the_rest_is_named():
    rng = np.random.default_rng(0)
    planes = [rng.uniform(100, 1000, (32, 32)) for _ in range(200)]
    hot = rng.uniform(100, 1000, (32, 32))
    hot[:3] = 60000  # 9 % of one file: below the set's 99.9th percentile, so not learned
    planes.insert(7, hot)
    _, problems = fit_target_norm([Planes(planes, [f"p{i}.tif" for i in range(201)])])
    assert [p.name for p in problems] == ["p7.tif"]
    assert problems[0].vmax == 60000 and 0.05 < problems[0].outside < 0.15
    assert "p7.tif" in problems[0].message("DAPI") and "DAPI" in problems[0].message("DAPI")


def test_memory_is_bounded_by_the_sample():
    class Many(Planes):
        def __getitem__(self, i):
            return np.full((32, 32), float(i))

    norm, _ = fit_target_norm([Many([None] * 5000)], max_samples=10_000)
    assert norm.lo[0] < 10 and norm.hi[0] > 4990  # every plane seen, 64 pixels each


def test_constant_targets_are_refused_in_dataset_mode():
    with pytest.raises(ConfigError, match="nothing to learn"):
        fit_target_norm([Planes([np.full((8, 8), 7, np.uint16)] * 3)])


def test_inputs_saturated_constant_and_twelve_bit(tmp_path):
    from napari_lmadda.training.data import scan_inputs

    rng = np.random.default_rng(0)
    sat = np.minimum(rng.uniform(0, 90000, (64, 64)), 65535).astype(np.uint16)  # 27 % clipped
    ok12 = rng.integers(0, 4000, (64, 64)).astype(np.uint16)
    const = np.full((64, 64), 500, np.uint16)
    found = scan_inputs(Planes([sat.astype(np.float32), ok12.astype(np.float32),
                                const.astype(np.float32)], ["sat.tif", "ok.tif", "c.tif"]))
    assert [(p.name, p.kind) for p in found] == [("sat.tif", "saturated"),
                                                ("c.tif", "constant")]
    assert "65535" in found[0].message() and "c.tif" in found[1].message()


def test_cli_names_bad_inputs_and_trains_on_them(tmp_path, capsys):
    d = make_domain(4, size=64, seed=5)
    for k in ("in", "t"):
        (tmp_path / k).mkdir()
    for i in range(4):
        x = np.round(d["input"][i] * 65535 * (3.0 if i == 0 else 1.0))
        tifffile.imwrite(tmp_path / "in" / f"f{i}.tif", np.minimum(x, 65535).astype(np.uint16))
        tifffile.imwrite(tmp_path / "t" / f"f{i}.tif",
                         np.round(d["dapi"][i] * 4095).astype(np.uint16))
    rc = main(["train-source", "--inputs", str(tmp_path / "in"), "--targets",
               str(tmp_path / "t"), "--out", str(tmp_path / "m.pt"), "--size", "tiny",
               "--steps", "4", "--eval-every", "2", "--device", "cpu", "--augment", "robust"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "warning: input 'f0.tif' is saturated" in out
    m = load_model(tmp_path / "m.pt")
    assert m.num_downs == 4 and m.meta["provenance"]["augment"] == "robust"
    tn = TargetNorm.from_meta(m.meta, 1)
    assert 2500 < tn.hi[0] < 4400  # 12-bit units


def test_model_meta_keeps_one_pair_when_channels_share_it():
    from napari_lmadda.training.data import target_meta

    one = TargetNorm((13000.0,), (66000.0,), mode="dataset", percentiles=(0.1, 99.9))
    meta = target_meta(one)
    assert meta["target_range"] == [13000.0, 66000.0]  # readable by older versions too
    assert TargetNorm.from_meta(meta, 1) == one
    two = TargetNorm((0.0, 5.0), (1.0, 9.0), mode="dataset", percentiles=(0.1, 99.9))
    assert target_meta(two) == two.to_meta()  # per channel: the contract's form
    assert TargetNorm.from_meta(target_meta(two), 2) == two
