"""Tests of napari_lmadda.data.normalize."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_lmadda.data.normalize import (
    DEFAULT_PERCENTILES,
    NormalizationWarning,
    NormParams,
    denormalize,
    fixed_range_normalize,
    percentile_normalize,
)
from napari_lmadda.errors import ConfigError


def test_default_percentiles():
    assert DEFAULT_PERCENTILES == (1.0, 99.8)
    img = np.arange(10001, dtype=np.float64)
    _, params = percentile_normalize(img)
    assert (params.p_low, params.p_high) == DEFAULT_PERCENTILES
    assert params.lo == pytest.approx(100.0)
    assert params.hi == pytest.approx(9980.0)


def test_percentiles_map_to_minus_one_and_one_without_clipping():
    img = np.arange(101, dtype=np.uint16)
    out, params = percentile_normalize(img, 10, 90)
    assert out.dtype == np.float32
    assert (params.lo, params.hi) == (10.0, 90.0)
    assert out[10] == pytest.approx(-1.0)
    assert out[90] == pytest.approx(1.0)
    assert out[50] == pytest.approx(0.0)
    assert out[0] < -1.0 and out[100] > 1.0  # not clipped


def test_round_trip():
    rng = np.random.default_rng(0)
    img = rng.gamma(2.0, 300.0, size=(64, 64)).astype(np.float32)
    out, params = percentile_normalize(img)
    np.testing.assert_allclose(denormalize(out, params), img, rtol=1e-5, atol=1e-3)


def test_constant_image_warns_and_gives_minus_one():
    img = np.full((16, 16), 7, dtype=np.uint8)
    with pytest.warns(NormalizationWarning, match="constant"):
        out, params = percentile_normalize(img)
    assert np.all(out == -1.0)
    assert params.hi == params.lo + 1.0
    np.testing.assert_array_equal(denormalize(out, params), img.astype(np.float32))


def test_all_nan_image_does_not_crash():
    img = np.full((4, 4), np.nan, dtype=np.float32)
    with pytest.warns(NormalizationWarning):
        out, params = percentile_normalize(img)
    assert np.isnan(out).all()
    assert params.hi > params.lo


def test_sparse_bright_spots_use_the_maximum():
    img = np.zeros((100, 100), np.float32)
    img[0, :5] = 50.0  # 0.05 % of the pixels: above the 99.8th percentile
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not constant: no warning
        out, params = percentile_normalize(img)
    assert params.lo == 0.0 and params.hi == 50.0
    assert out.min() == -1.0 and out.max() == 1.0


def test_nan_ignored_by_percentiles_and_kept():
    img = np.arange(100, dtype=np.float64)
    img[3] = np.nan
    out, params = percentile_normalize(img, 0, 100)
    assert (params.lo, params.hi) == (0.0, 99.0)
    assert np.isnan(out[3])
    assert np.isfinite(np.delete(out, 3)).all()


@pytest.mark.parametrize("pl,ph", [(-1, 50), (50, 50), (60, 40), (1, 101)])
def test_bad_percentiles(pl, ph):
    with pytest.raises(ConfigError, match="percentile"):
        percentile_normalize(np.arange(10), pl, ph)


def test_fixed_range():
    out, params = fixed_range_normalize(np.array([0.0, 0.5, 1.0, 2.0]), 0, 1)
    np.testing.assert_allclose(out, [-1, 0, 1, 3])
    assert params.p_low is None and params.p_high is None
    np.testing.assert_allclose(denormalize(out, params), [0, 0.5, 1, 2])
    with pytest.raises(ConfigError):
        fixed_range_normalize(np.zeros(3), 1, 1)


def test_norm_params_dict_round_trip():
    p = NormParams(lo=1.5, hi=9.0, p_low=1.0, p_high=99.8)
    assert NormParams.from_dict(p.to_dict()) == p
    q = NormParams(lo=0.0, hi=1.0)
    assert NormParams.from_dict(q.to_dict()) == q
    with pytest.raises(ConfigError):
        NormParams.from_dict({"lo": 2.0, "hi": 1.0})
    with pytest.raises(ConfigError):
        NormParams.from_dict({"lo": 2.0})


_DTYPES = st.sampled_from([np.uint8, np.uint16, np.int16, np.float32, np.float64])


@st.composite
def _images(draw):
    dtype = np.dtype(draw(_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=12))
    if dtype.kind == "f":
        elements = st.floats(
            -1e6, 1e6, allow_nan=False, allow_infinity=False, width=dtype.itemsize * 8
        )
    else:
        elements = None
    return draw(hnp.arrays(dtype, shape, elements=elements))


@settings(max_examples=150, deadline=None)
@given(img=_images(), pl=st.floats(0, 49), ph=st.floats(51, 100))
def test_property_percentile_round_trip(img, pl, ph):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NormalizationWarning)
        out, params = percentile_normalize(img, pl, ph)
    assert out.dtype == np.float32
    assert out.shape == img.shape
    assert np.isfinite(out).all()
    assert params.hi > params.lo
    back = denormalize(out, params, dtype=np.float64)
    x = img.astype(np.float64)
    tol = 1e-6 * (np.abs(x).max() + (params.hi - params.lo) + 1.0)
    assert np.abs(back - x).max() <= tol


def test_target_norm_round_trip_per_channel():
    from napari_lmadda.data.normalize import TargetNorm

    tn = TargetNorm((13689.0, -2.0), (65535.0, 3.0), mode="dataset", percentiles=(0.1, 99.9))
    x = np.stack([np.linspace(13689, 65535, 50), np.linspace(-2, 3, 50)]).reshape(2, 5, 10)
    y = tn.encode(x)
    assert y.min() == pytest.approx(-1.0) and y.max() == pytest.approx(1.0)
    np.testing.assert_allclose(tn.decode(y), x, rtol=1e-5)
    again = TargetNorm.from_meta(tn.to_meta(), 2)
    assert again == tn


def test_target_norm_reads_legacy_range_for_every_channel():
    from napari_lmadda.data.normalize import TargetNorm

    tn = TargetNorm.from_meta({"target_range": [-0.05, 1.05]}, 3)
    assert tn.lo == (-0.05,) * 3 and tn.hi == (1.05,) * 3 and tn.mode == "fixed"
    np.testing.assert_allclose(tn.decode(np.zeros((3, 2, 2)))[:, 0, 0], 0.5, rtol=1e-6)


@pytest.mark.parametrize("meta", [
    {"target_range": [[0, 1]]},              # one pair for two channels
    {"target_range": [0, 0]},                # lo == hi
    {"target_range": ["a", 1]},
    {"target_range": [[0, 1], [0, float("nan")]]},
    {"target_range": [0, 1], "target_norm": {"mode": "bogus"}},
])
def test_target_norm_refuses_bad_meta(meta):
    from napari_lmadda.data.normalize import TargetNorm
    from napari_lmadda.errors import ConfigError

    with pytest.raises(ConfigError):
        TargetNorm.from_meta(meta, 2)
