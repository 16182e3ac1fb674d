"""FID and KID on the project's own UNet features."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from napari_lmadda.errors import CheckpointError, ConfigError
from napari_lmadda.evaluation.fid import (
    fid_kid,
    frechet_distance,
    image_features,
    kernel_inception_distance,
    load_feature_model,
)
from napari_lmadda.models import UNetGenerator, save_model
from napari_lmadda.models.translated import TranslatedModel, Translator


def _gauss(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, scale, (n, d))


def test_fid_of_a_set_with_itself_is_zero():
    x = _gauss(200, 16, 0)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fid_grows_with_the_shift():
    x, y = _gauss(400, 8, 0), _gauss(400, 8, 1)
    fids = [frechet_distance(x, y + s) for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(fids, fids[1:]))
    # equal covariances: the mean term dominates, |shift|^2 * d
    assert fids[-1] == pytest.approx(4.0 * 8, rel=0.1)


def test_fid_matches_a_direct_computation():
    x = _gauss(300, 6, 2)
    y = _gauss(250, 6, 3, shift=0.3, scale=1.7) @ np.triu(np.ones((6, 6))) / 3
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    direct = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(x, y) == pytest.approx(direct, rel=1e-6)


def test_fid_with_fewer_samples_than_dimensions():
    x, y = _gauss(10, 64, 4), _gauss(10, 64, 5, shift=1.0)
    v = frechet_distance(x, y)
    assert np.isfinite(v) and v > frechet_distance(x, _gauss(10, 64, 6))
    with pytest.raises(ConfigError, match="at least 2"):
        frechet_distance(x[:1], y)
    with pytest.raises(ConfigError, match="same d"):
        frechet_distance(x, y[:, :3])


def _kid_direct(x: np.ndarray, y: np.ndarray) -> float:
    d, m = x.shape[1], len(x)

    def k(a, b):
        return (a @ b / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_a_direct_computation():
    x, y = _gauss(20, 5, 7), _gauss(20, 5, 8, shift=0.5)
    mean, std = kernel_inception_distance(x, y)
    assert mean == pytest.approx(_kid_direct(x, y), rel=1e-9)
    assert std == 0.0  # both sets fit in one subset


def test_kid_is_unbiased_near_zero_for_one_distribution():
    vals = [kernel_inception_distance(_gauss(60, 8, s), _gauss(60, 8, 100 + s))[0]
            for s in range(20)]
    shifted = kernel_inception_distance(_gauss(60, 8, 0), _gauss(60, 8, 1, shift=0.5))[0]
    spread = np.std(vals) / np.sqrt(len(vals))
    assert abs(np.mean(vals)) < 3 * spread + 1e-3  # unbiased: no positive offset
    assert min(vals) < 0 < max(vals)
    assert shifted > 10 * abs(np.mean(vals))


def test_kid_subsets_give_a_spread():
    x, y = _gauss(300, 8, 9), _gauss(300, 8, 10, shift=0.3)
    mean, std = kernel_inception_distance(x, y, subsets=20, subset_size=50)
    assert mean > 0 and std > 0
    assert kernel_inception_distance(x, y, subsets=20, subset_size=50, seed=0)[0] == mean


def _tiny_model() -> UNetGenerator:
    torch.manual_seed(0)
    m = UNetGenerator(num_downs=3, ngf=8, out_channels=2)
    m.meta = {"channel_names": ["DAPI", "CD29"]}
    return m.eval()


def _images(n: int, seed: int, gain: float = 1.0, size: tuple[int, int] = (64, 96)):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[0], : size[1]]
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(8, size[0] - 8), rng.uniform(8, size[1] - 8)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 30.0)
        out.append((gain * blob + 0.1 * rng.standard_normal(size)).astype(np.float32))
    return out


def test_image_features_one_row_per_tile():
    model = _tiny_model()
    f = image_features(model, _images(3, 0), tile=32)
    assert f.shape == (3 * 2 * 3, model.config.channels(3))
    whole = image_features(model, _images(3, 0), tile=None)
    assert whole.shape == (3, model.config.channels(3))
    f2 = image_features(model, _images(3, 0), tile=32, layer=2)
    assert f2.shape[1] == model.config.channels(2)
    with pytest.raises(ConfigError, match="out of range"):
        image_features(model, _images(1, 0), layer=99)
    with pytest.raises(ConfigError, match="multiple of 8"):
        image_features(model, _images(1, 0), tile=20)


def test_fid_kid_on_images(tmp_path):
    model = _tiny_model()
    a = _images(8, 0)
    same = fid_kid(a, a, model=model, tile=32)
    assert same.fid == pytest.approx(0.0, abs=1e-6) and same.n_a == same.n_b == 48
    assert same.layer == 3
    near = fid_kid(a, _images(8, 1), model=model, tile=32)
    far = fid_kid(a, [-3 * im for im in _images(8, 1)], model=model, tile=32)
    assert far.fid > near.fid > 0
    assert far.kid_mean > near.kid_mean


def test_translated_model_translates_only_b():
    model = _tiny_model()
    a, b = _images(4, 0), _images(4, 1)
    plain = fid_kid(a, b, model=model, tile=32)
    identity = fid_kid(a, b, model=TranslatedModel(Translator(ngf=4, n_blocks=1), model),
                       tile=32)
    assert identity.fid == pytest.approx(plain.fid, rel=1e-6)
    t = Translator(ngf=4, n_blocks=1)
    with torch.no_grad():
        t.head[1].bias.fill_(0.5)  # shifts every translated image
    moved = fid_kid(a, b, model=TranslatedModel(t, model), tile=32)
    assert moved.fid != pytest.approx(plain.fid, rel=1e-3)
    # a identical to b: only b is translated, so the distance is no longer 0
    assert fid_kid(a, a, model=TranslatedModel(t, model), tile=32).fid > 0


def test_user_weights_file(tmp_path):
    model = _tiny_model()
    other = UNetGenerator(num_downs=2, ngf=4, out_channels=1)
    path = save_model(other, tmp_path / "features.pt")
    res = fid_kid(_images(4, 0), _images(4, 1), model=model, weights=path, tile=32)
    assert res.layer == 2 and res.dims == other.config.channels(2)
    loaded = load_feature_model(path)
    assert isinstance(loaded, UNetGenerator)


def test_bad_weights_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "weights.pt"
    bad.write_text("not weights")
    with pytest.raises(CheckpointError, match="weights.pt"):
        fid_kid(_images(2, 0), _images(2, 1), model=_tiny_model(), weights=bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_feature_model(tmp_path / "missing.pt")


def test_cli_fid(tmp_path, tiny_model_path, capsys):
    import tifffile

    from napari_lmadda.cli import main

    for name, imgs in (("a", _images(3, 0)), ("b", _images(3, 1, gain=-2.0))):
        (tmp_path / name).mkdir()
        for i, im in enumerate(imgs):
            tifffile.imwrite(tmp_path / name / f"{i}.tif", im)
    rc = main(["fid", "--model", str(tiny_model_path), "--a", str(tmp_path / "a"),
               "--b", str(tmp_path / "a"), "--tile", "32"])
    out = capsys.readouterr().out
    assert rc == 0 and "FID 0" in out and "KID" in out
    rc = main(["fid", "--model", str(tiny_model_path), "--a", str(tmp_path / "a"),
               "--b", str(tmp_path / "b"), "--tile", "32"])
    out = capsys.readouterr().out
    fid = float(out.split("FID ")[1].split()[0])
    assert rc == 0 and fid > 0
    (tmp_path / "w.pt").write_bytes(b"\x89PNG....")
    rc = main(["fid", "--model", str(tiny_model_path), "--a", str(tmp_path / "a"),
               "--b", str(tmp_path / "b"), "--weights", str(tmp_path / "w.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and "w.pt" in err and "PNG" in err and len(err.strip().splitlines()) == 1
