"""Augmentation presets of robust source training (issue 11 item 3)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lmadda.data.augment import (
    AUGMENT_PRESETS,
    AugmentConfig,
    AugmentedSampler,
    augment_config,
    augment_input,
    describe_preset,
)
from napari_lmadda.data.datasets import PairedArrays
from napari_lmadda.errors import ConfigError


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(0)
    x = rng.random((3, 96, 96)).astype(np.float32)
    return PairedArrays(x, np.stack([x, 1 - x], 1), normalize="fixed",
                        target_normalize="fixed")


def test_presets_exist_and_are_described():
    assert AUGMENT_PRESETS == ("none", "basic", "robust")
    assert not augment_config("none").flips and augment_config("basic").flips
    assert not augment_config("basic").changes_intensity
    assert augment_config("robust").changes_intensity and augment_config("robust").p_scale > 0
    assert all(describe_preset(n) for n in AUGMENT_PRESETS)
    with pytest.raises(ConfigError, match="--augment"):
        augment_config("strong")
    with pytest.raises(ConfigError, match="probability"):
        AugmentConfig(p_blur=1.5)
    with pytest.raises(ConfigError, match="gamma"):
        AugmentConfig(gamma=(0.0, 1.0))


@pytest.mark.parametrize("preset", AUGMENT_PRESETS)
def test_shapes_dtype_and_determinism(pairs, preset):
    a = AugmentedSampler(pairs, 64, 5, augment=preset, seed=3)
    b = AugmentedSampler(pairs, 64, 5, augment=preset, seed=3)
    xa, ya = a.sample()
    xb, yb = b.sample()
    assert xa.shape == (5, 1, 64, 64) and ya.shape == (5, 2, 64, 64)
    assert xa.dtype == ya.dtype == np.float32 and xa.flags.c_contiguous
    assert np.isfinite(xa).all() and np.isfinite(ya).all()
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)


def test_geometry_moves_input_and_target_together(pairs):
    # channel 0 of the target is the input itself: any geometric transform keeps them equal
    cfg = AugmentConfig(flips=True, p_scale=1.0, scale=(0.5, 2.0))
    x, y = AugmentedSampler(pairs, 64, 8, augment=cfg, seed=1).sample()
    np.testing.assert_allclose(x[:, 0], y[:, 0], atol=1e-6)
    np.testing.assert_allclose(y[:, 1], -y[:, 0], atol=1e-5)  # 1 - x in network units


def test_intensity_transforms_change_the_input_only(pairs):
    cfg = augment_config("robust", p_scale=0.0, p_blur=1.0, p_noise=1.0, p_gamma=1.0,
                         p_gain=1.0, p_saturate=1.0)
    x, y = AugmentedSampler(pairs, 64, 4, augment=cfg, seed=2).sample()
    plain = AugmentedSampler(pairs, 64, 4, augment="basic", seed=2).sample()
    np.testing.assert_array_equal(y, plain[1])  # targets untouched
    assert np.abs(x - plain[0]).mean() > 0.05  # inputs changed


def test_each_input_transform_does_what_it_says():
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(-1, 1, 64, dtype=np.float32), (64, 1))
    off = AugmentConfig(flips=False)
    np.testing.assert_array_equal(augment_input(ramp, rng, off), ramp)
    blur = augment_input(np.eye(64, dtype=np.float32), rng,
                         AugmentConfig(p_blur=1.0, blur_sigma=(1.0, 1.0)))
    assert blur[5:-5, 5:-5].max() < 0.5  # a thin line spreads out
    sat = augment_input(ramp, rng, AugmentConfig(p_saturate=1.0, saturate_top=(0.2, 0.2)))
    assert np.isclose(sat.max(), 1.0, atol=1e-4) and (sat >= 0.999).mean() > 0.15  # clipped
    noisy = augment_input(ramp, rng, AugmentConfig(p_noise=1.0, photons=(10.0, 10.0)))
    assert np.std(noisy - ramp) > 0.1
    bright = augment_input(ramp, rng, AugmentConfig(p_gamma=1.0, gamma=(0.5, 0.5)))
    assert bright[:, 32:].mean() > ramp[:, 32:].mean()  # gamma < 1 brightens mid-tones
    gain = augment_input(ramp, rng, AugmentConfig(p_gain=1.0, gain=(2.0, 2.0),
                                                  offset=(0.1, 0.1)))
    np.testing.assert_allclose(gain, 2 * ramp + 0.1, atol=1e-5)


def test_robust_training_runs_end_to_end(pairs):
    from napari_lmadda.models.unet import UNetConfig
    from napari_lmadda.training import SourceTrainConfig, train_source

    sampler = AugmentedSampler(pairs, 32, 2, augment="robust", seed=0)
    val = AugmentedSampler(pairs, 32, 2, augment="none", seed=1).sample()
    res = train_source(sampler, val, arch=UNetConfig(num_downs=3, ngf=4, out_channels=2),
                       config=SourceTrainConfig(steps=3, batch_size=2, patch_size=32,
                                                eval_every=3, device="cpu"))
    assert res.best_step == 3 and np.isfinite(res.best_pearson)
