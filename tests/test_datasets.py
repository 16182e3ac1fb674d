"""Tests of napari_lmadda.data.datasets: lazy folders, pairing, patch sampling."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_lmadda.data import datasets as ds
from napari_lmadda.data.io import ImageWarning
from napari_lmadda.errors import ConfigError, EmptyFolderError, ImageReadError


def _write(path, arr, **kw):
    tifffile.imwrite(path, arr, photometric="minisblack", **kw)
    return path


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "in"
    d.mkdir()
    for i in range(6):
        _write(d / f"img{i}.tif", rng.random((40 + i, 50)).astype(np.float32) * 100)
    _write(d / "stack.tif", rng.random((3, 20, 24)).astype(np.float32))
    return d


def test_index_is_built_without_decoding_pixels(folder, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("pixels decoded while indexing")

    monkeypatch.setattr(tifffile.TiffFile, "asarray", boom)
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", boom)
    f = ds.ImageFolder(folder, cache_size=2)
    assert len(f) == 6 + 3
    assert f.shape(0) == (40, 50)
    assert f.shape(8) == (20, 24)
    assert f.name(7) == "stack.tif[1]"
    assert f.path(8).name == "stack.tif"
    assert f.cache_info()["misses"] == 0


def test_cache_stays_bounded_and_hits(folder):
    f = ds.ImageFolder(folder, cache_size=2)
    for i in range(len(f)):
        plane = f[i]
        assert plane.dtype == np.float32
        assert plane.shape == f.shape(i)
        assert f.cache_info()["size"] <= 2
    f[len(f) - 1]
    info = f.cache_info()
    assert info["hits"] == 1 and info["misses"] == len(f)
    assert not f[0].flags.writeable  # cached arrays are shared


def test_multipage_planes_match_file(folder):
    f = ds.ImageFolder(folder, normalize=False)
    data = tifffile.imread(folder / "stack.tif")
    for k in range(3):
        np.testing.assert_array_equal(f[6 + k], data[k])
    assert f[-1].shape == (20, 24)
    with pytest.raises(IndexError):
        f[len(f)]


def test_percentile_normalisation_is_default(folder):
    f = ds.ImageFolder(folder)
    x = f[0]
    assert np.percentile(x, 1) == pytest.approx(-1.0, abs=1e-4)
    assert np.percentile(x, 99.8) == pytest.approx(1.0, abs=1e-4)
    assert f.norm_params(0).p_high == 99.8


def test_bad_files_skipped_with_warning_or_strict(folder):
    (folder / "broken.tif").write_bytes(b"not a tiff at all")
    (folder / "empty.png").write_bytes(b"")
    with pytest.warns(ImageWarning, match="broken.tif"):
        f = ds.ImageFolder(folder)
    assert sorted(p.name for p, _ in f.skipped) == ["broken.tif", "empty.png"]
    assert len(f) == 9
    with pytest.raises(ImageReadError, match="broken.tif"):
        ds.ImageFolder(folder, strict=True)


def test_min_size_skips_small_files(folder):
    with pytest.warns(ImageWarning, match="stack.tif"):
        f = ds.ImageFolder(folder, min_size=32)
    assert len(f) == 6


def test_empty_and_all_bad_folders(tmp_path):
    with pytest.raises(EmptyFolderError):
        ds.ImageFolder(tmp_path)
    (tmp_path / "bad.tif").write_bytes(b"xx")
    with pytest.warns(ImageWarning), pytest.raises(EmptyFolderError, match="bad.tif"):
        ds.ImageFolder(tmp_path)


def test_list_of_paths(folder):
    f = ds.ImageFolder([folder / "img3.tif", folder / "img1.tif"])
    assert [f.path(i).name for i in range(len(f))] == ["img3.tif", "img1.tif"]


# ------------------------------------------------------------------------------ pairing


@pytest.fixture
def pairs(tmp_path):
    rng = np.random.default_rng(1)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for i in range(4):
        img = rng.random((30 + i, 36)).astype(np.float32)
        _write(a / f"cell_{i}.tif", img)
        _write(b / f"cell_{i}.tiff", img * 2)  # different suffix: paired by stem
    return a, b


def test_pairing_by_stem_and_same_crop(pairs):
    a, b = pairs
    p = ds.PairedFolders(a, b, normalize=False, target_normalize=None)
    assert len(p) == 4 and p.n_target_channels == 1
    x, y = p[2]
    assert y.shape == (1, *x.shape)
    np.testing.assert_allclose(y[0], 2 * x)
    assert p.target_paths(2)[0].name == "cell_2.tiff"

    sampler = ds.PatchSampler(p, 16, 8, seed=5, augment=True)
    for _ in range(3):
        xb, yb = sampler.sample()
        assert xb.shape == (8, 1, 16, 16) and yb.shape == (8, 1, 16, 16)
        assert xb.dtype == np.float32 and yb.dtype == np.float32
        np.testing.assert_allclose(yb, 2 * xb, rtol=1e-6)


def test_unmatched_files_warn_or_error(pairs):
    a, b = pairs
    _write(a / "lonely_input.tif", np.zeros((8, 8), np.float32))
    _write(b / "lonely_target.tif", np.zeros((8, 8), np.float32))
    with pytest.warns(ImageWarning, match="lonely_input.tif.*lonely_target.tif"):
        p = ds.PairedFolders(a, b)
    assert len(p) == 4
    assert p.unmatched == {"inputs": ["lonely_input.tif"], "targets": ["lonely_target.tif"]}
    with pytest.raises(ImageReadError, match="lonely_input.tif"):
        ds.PairedFolders(a, b, on_unmatched="error")


def test_no_pairs_at_all(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    _write(a / "x.tif", np.zeros((8, 8), np.float32))
    _write(b / "y.tif", np.zeros((8, 8), np.float32))
    with pytest.raises(EmptyFolderError):
        ds.PairedFolders(a, b)


def test_shape_mismatch_names_both_files(pairs):
    a, b = pairs
    _write(b / "cell_1.tiff", np.zeros((5, 5), np.float32))
    with pytest.raises(ImageReadError, match=r"cell_1\.tif.*cell_1\.tiff"):
        ds.PairedFolders(a, b)


def test_duplicate_stem_is_an_error(pairs):
    a, b = pairs
    Image.fromarray(np.zeros((30, 36), np.uint8)).save(a / "cell_0.png")
    with pytest.raises(ImageReadError, match="cell_0"):
        ds.PairedFolders(a, b)


def test_several_target_folders_stack_channels(pairs, tmp_path):
    a, b = pairs
    c = tmp_path / "c"
    c.mkdir()
    for i in range(4):
        _write(c / f"cell_{i}.tif", np.full((30 + i, 36), 0.5, np.float32))
    p = ds.PairedFolders(a, [b, c], target_normalize="fixed", target_range=(0, 1))
    x, y = p[0]
    assert y.shape == (2, 30, 36)
    assert np.all(y[1] == 0.0)  # 0.5 in (0, 1) -> 0 in (-1, 1)
    xb, yb = ds.PatchSampler(p, 8, 3).sample()
    assert yb.shape == (3, 2, 8, 8)


def test_bad_target_file_drops_its_pair(pairs):
    a, b = pairs
    (b / "cell_3.tiff").write_bytes(b"broken")
    with pytest.warns(ImageWarning, match="cell_3"):
        p = ds.PairedFolders(a, b)
    assert len(p) == 3
    assert [p.path(i).name for i in range(3)] == ["cell_0.tif", "cell_1.tif", "cell_2.tif"]


# ------------------------------------------------------------------------------ sampling


def test_sampler_is_deterministic_for_a_seed():
    data = np.random.default_rng(3).random((5, 32, 32)).astype(np.float32)
    d = ds.ArrayDataset(data)
    b1 = ds.PatchSampler(d, 8, 4, seed=11, augment=True).sample()
    b2 = ds.PatchSampler(d, 8, 4, seed=11, augment=True).sample()
    b3 = ds.PatchSampler(d, 8, 4, seed=12, augment=True).sample()
    np.testing.assert_array_equal(b1, b2)
    assert not np.array_equal(b1, b3)


def test_patches_are_crops_of_the_images():
    data = np.arange(2 * 20 * 20, dtype=np.float32).reshape(2, 20, 20)
    d = ds.ArrayDataset(data, normalize=False)
    batch = ds.PatchSampler(d, 5, 10, seed=0).sample()
    assert batch.shape == (10, 1, 5, 5) and batch.flags.c_contiguous
    for patch in batch[:, 0]:
        # rows step by 20 and columns by 1 in the source: a real crop, not a resample
        np.testing.assert_array_equal(np.diff(patch, axis=0), 20)
        np.testing.assert_array_equal(np.diff(patch, axis=1), 1)


def test_small_images_are_padded_or_refused():
    d = ds.ArrayDataset([np.arange(36, dtype=np.float32).reshape(6, 6)], normalize=False)
    batch = ds.PatchSampler(d, 16, 2).sample()
    assert batch.shape == (2, 1, 16, 16)
    assert set(np.unique(batch)) <= set(range(36))  # reflect padding reuses real pixels
    with pytest.raises(ImageReadError, match="6x6"):
        ds.PatchSampler(d, 16, 2, pad_small=False).sample()
    one = ds.ArrayDataset([np.ones((1, 1), np.float32)], normalize=False)
    assert ds.PatchSampler(one, 4, 1).sample().shape == (1, 1, 4, 4)


def test_array_dataset_shapes_and_safety():
    data = np.random.default_rng(0).random((3, 1, 10, 12)).astype(np.float32)
    d = ds.ArrayDataset(data, normalize=False, names=["a", "b", "c"])
    assert len(d) == 3 and d.shape(1) == (10, 12) and d.name(2) == "c"
    assert d.path(0) is None
    np.testing.assert_array_equal(d[1], data[1, 0])
    assert data.flags.writeable  # the caller's array is not made read-only
    with pytest.raises(ConfigError):
        ds.ArrayDataset(np.zeros((2, 2, 2, 2, 2)))
    with pytest.raises(ConfigError):
        ds.ArrayDataset(data, names=["only one"])


def test_array_dataset_repairs_nan():
    img = np.ones((8, 8), np.float32)
    img[2, 2] = np.nan
    with pytest.warns(ImageWarning, match="array"):
        x = ds.ArrayDataset(img)[0]
    assert np.isfinite(x).all()


def test_paired_arrays_with_channels():
    rng = np.random.default_rng(2)
    x = rng.random((4, 16, 16)).astype(np.float32)
    y = np.stack([x, 1 - x], axis=1)  # (N, 2, H, W)
    p = ds.PairedArrays(x, y, normalize="fixed", target_normalize="fixed")
    xb, yb = ds.PatchSampler(p, 8, 5, seed=1, augment=True).sample()
    assert yb.shape == (5, 2, 8, 8)
    np.testing.assert_allclose(yb[:, 0], xb[:, 0], atol=1e-6)
    np.testing.assert_allclose(yb[:, 1], -xb[:, 0], atol=1e-6)


def test_bad_sampler_settings():
    d = ds.ArrayDataset(np.zeros((1, 4, 4)))
    with pytest.raises(ConfigError):
        ds.PatchSampler(d, 0, 1)
    with pytest.raises(ConfigError):
        ds.PatchSampler(d, 4, 0)
    with pytest.raises(ConfigError):
        ds.ArrayDataset(np.zeros((1, 4, 4)), normalize="sometimes")


def test_to_torch():
    torch = pytest.importorskip("torch")
    x = np.zeros((2, 1, 4, 4), np.float32)
    t = ds.to_torch(x)
    assert isinstance(t, torch.Tensor) and t.shape == (2, 1, 4, 4) and t.dtype == torch.float32
    a, b = ds.to_torch((x, x[:, :1]), "cpu")
    assert a.device.type == "cpu" and b.shape == (2, 1, 4, 4)


def test_no_warning_for_constant_patches_in_dataset():
    d = ds.ArrayDataset(np.zeros((2, 8, 8), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.all(d[0] == -1.0)
