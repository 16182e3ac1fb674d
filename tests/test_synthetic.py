"""Tests of the synthetic microscopy generator and its domain shifts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from napari_lmadda.cli import main as cli_main
from napari_lmadda.data import synthetic as syn
from napari_lmadda.errors import ConfigError

SIZE = 128


@pytest.fixture(scope="module")
def fields() -> list[syn.SyntheticField]:
    return syn.make_fields(4, size=256, seed=11)


def _arrays(f: syn.SyntheticField) -> dict[str, np.ndarray]:
    return {k: getattr(f, k) for k in ("phase", "brightfield", "dapi", "cd29", "nuclei", "cells")}


def test_same_seed_identical_different_seed_differs():
    a, b, c = syn.make_field(SIZE, seed=5), syn.make_field(SIZE, seed=5), syn.make_field(SIZE, 6)
    for key, arr in _arrays(a).items():
        np.testing.assert_array_equal(arr, getattr(b, key), err_msg=key)
    assert not np.array_equal(a.phase, c.phase)
    assert not np.array_equal(a.cells, c.cells)


def test_make_fields_prefix_property():
    long, short = syn.make_fields(3, size=SIZE, seed=2), syn.make_fields(2, size=SIZE, seed=2)
    for f_long, f_short in zip(long, short):
        for key, arr in _arrays(f_short).items():
            np.testing.assert_array_equal(arr, getattr(f_long, key), err_msg=key)
    assert not np.array_equal(long[0].phase, long[1].phase)


def test_dtypes_ranges_shapes(fields):
    rect = syn.make_field((96, 160), seed=1)
    for f, shape in [(fields[0], (256, 256)), (rect, (96, 160))]:
        for key in ("phase", "brightfield", "dapi", "cd29"):
            arr = getattr(f, key)
            assert arr.shape == shape and arr.dtype == np.float32, key
            assert 0.0 <= arr.min() and arr.max() <= 1.0, key
        for key in ("nuclei", "cells"):
            assert getattr(f, key).shape == shape and getattr(f, key).dtype == np.int32
    f = fields[0]
    assert np.array_equal(f.input("phase"), f.phase) and f.target("cd29") is f.cd29
    with pytest.raises(ConfigError):
        f.input("fluorescence")
    with pytest.raises(ConfigError):
        f.target("gfp")


def test_geometry_plausible(fields):
    for f in fields:
        n_cells = len(np.unique(f.cells)) - 1
        assert 2 <= n_cells <= 14
        # every nucleus lies inside its own cell
        nuc = f.nuclei > 0
        assert np.all(f.cells[nuc] == f.nuclei[nuc])
        assert 0.05 < (f.cells > 0).mean() < 0.7
    # background of phase sits well below saturation; bright field is brighter
    f = fields[0]
    bg = f.cells == 0
    assert 0.38 < np.median(f.phase[bg]) < 0.52
    assert 0.65 < np.median(f.brightfield[bg]) < 0.85


def test_dapi_bright_in_nuclei(fields):
    for f in fields:
        nuc = f.nuclei > 0
        assert f.dapi[nuc].mean() > 0.3
        assert f.dapi[f.cells == 0].mean() < 0.05


def test_cd29_is_perinuclear_ring(fields):
    for f in fields:
        nuc = f.nuclei > 0
        centres = ndi.binary_erosion(nuc, iterations=4)
        d_out = ndi.distance_transform_edt(~nuc)
        band = (d_out > 1) & (d_out <= 6) & (f.cells > 0)
        far = f.cells == 0
        assert f.cd29[band].mean() > 1.5 * f.cd29[centres].mean()
        assert f.cd29[band].mean() > 3 * f.cd29[far].mean()
        # not just a blur of the nucleus mask: the membrane is brighter than mid-cytoplasm
        interior = ndi.binary_erosion(f.cells > 0, iterations=5) & (d_out > 12)
        rim = (f.cells > 0) & ~ndi.binary_erosion(f.cells > 0, iterations=2) & (d_out > 12)
        assert f.cd29[rim].mean() > 1.3 * f.cd29[interior].mean()


def test_phase_and_brightfield_are_different_modalities(fields):
    rs = [np.corrcoef(f.phase.ravel(), f.brightfield.ravel())[0, 1] for f in fields]
    assert abs(np.mean(rs)) < 0.5
    for f in fields:
        cell = f.cells > 0
        bg = ndi.distance_transform_edt(~cell) > 10
        # both carry the cells: phase as local texture/relief, bright field as absorption
        hp = np.abs(f.phase - ndi.gaussian_filter(f.phase, 3))
        assert hp[cell].mean() > 1.5 * hp[bg].mean()
        assert f.brightfield[f.nuclei > 0].mean() < f.brightfield[bg].mean() - 0.05
        # not an affine copy of each other
        fit = np.polyfit(f.phase.ravel(), f.brightfield.ravel(), 1)
        resid = f.brightfield.ravel() - np.polyval(fit, f.phase.ravel())
        assert resid.std() > 0.5 * f.brightfield.std()


def test_overexpose_saturates(fields):
    x = fields[0].phase
    y = syn.overexpose(x, 1.5)
    z = syn.overexpose(x, 2.5)
    assert y.dtype == np.float32 and y.max() <= 1.0
    assert (x >= 1).mean() <= (y >= 1).mean() < (z >= 1).mean()
    assert (z >= 1).mean() > 0.3  # the background saturates at high gain
    assert x.mean() < y.mean() < z.mean()
    np.testing.assert_allclose(syn.overexpose(x, 1.0), x)
    with pytest.raises(ConfigError):
        syn.overexpose(x, 0)


def test_rescale_zooms_about_centre(fields):
    f = fields[1]
    h = f.nuclei.shape[0]
    c = slice(h // 4, 3 * h // 4)
    zoomed = syn.rescale(f.nuclei, 2.0, order=0)
    assert zoomed.dtype == f.nuclei.dtype and zoomed.shape == f.nuclei.shape
    # the whole zoomed image shows what was in the central half, 4x the area
    assert abs((zoomed > 0).sum() / max((f.nuclei[c, c] > 0).sum(), 1) - 4.0) < 0.4
    z = syn.rescale(f.dapi, 2.0)
    assert z.dtype == np.float32 and z.shape == f.dapi.shape
    # the centre is fixed, and a ramp is stretched: half the slope per pixel
    ramp = np.tile(np.arange(64, dtype=np.float32), (64, 1))
    zr = syn.rescale(ramp, 2.0)
    np.testing.assert_allclose(np.diff(zr[32, 8:56]), 0.5, atol=1e-4)
    np.testing.assert_allclose(zr[:, 31:33].mean(), ramp[:, 31:33].mean(), atol=0.6)
    np.testing.assert_allclose(syn.rescale(f.phase, 1.0), f.phase, atol=1e-6)


def test_defocus_removes_high_frequencies(fields):
    x = fields[0].phase

    def hf(img):
        spec = np.abs(np.fft.fft2(img - img.mean())) ** 2
        fy, fx = np.meshgrid(np.fft.fftfreq(img.shape[0]), np.fft.fftfreq(img.shape[1]))
        return spec[np.hypot(fy, fx) > 0.2].sum()

    y = syn.defocus(x, 2.0)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert hf(y) < 0.1 * hf(x)
    assert abs(y.mean() - x.mean()) < 1e-3


def test_add_noise_is_seeded(fields):
    x = fields[0].phase
    a, b, c = syn.add_noise(x, 0.05, 1), syn.add_noise(x, 0.05, 1), syn.add_noise(x, 0.05, 2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert 0.04 < (a - x).std() < 0.06
    assert (syn.add_noise(x, 0.0, 1, poisson=0.01) - x).std() > 0.02


@pytest.mark.parametrize("shift", sorted(syn.SHIFTS))
def test_make_domain_each_shift(shift):
    d = syn.make_domain(2, shift=shift, size=64, seed=3)
    assert set(d) == {"input", "dapi", "cd29"}
    for arr in d.values():
        assert arr.shape == (2, 64, 64) and arr.dtype == np.float32
        assert 0 <= arr.min() and arr.max() <= 1
    base = syn.make_domain(2, size=64, seed=3)
    if shift == "none":
        np.testing.assert_array_equal(d["input"], base["input"])
    else:
        assert not np.allclose(d["input"], base["input"])
    if shift == "scale":
        assert not np.allclose(d["dapi"], base["dapi"])
    else:
        np.testing.assert_array_equal(d["dapi"], base["dapi"])
        np.testing.assert_array_equal(d["cd29"], base["cd29"])


def test_make_domain_matches_fields_and_zoom_out_has_no_padding():
    d = syn.make_domain(2, size=SIZE, seed=4, shift="brightfield")
    f = syn.make_fields(2, size=SIZE, seed=4)
    np.testing.assert_array_equal(d["input"][1], f[1].brightfield)
    np.testing.assert_array_equal(d["cd29"][0], f[0].cd29)
    out = syn.make_domain(1, size=SIZE, seed=4, shift="scale", magnitude=0.5)
    assert out["input"].shape == (1, SIZE, SIZE)
    with pytest.raises(ConfigError):
        syn.make_domain(1, shift="blur")


def test_write_domain_and_refuse_overwrite(tmp_path):
    paths = syn.write_domain(tmp_path / "d", 2, size=64, seed=1, shift="overexpose")
    assert set(paths) == {"input", "dapi", "cd29"}
    files = sorted(paths["input"].glob("*.tif"))
    assert [p.name for p in files] == ["field_000.tif", "field_001.tif"]
    with tifffile.TiffFile(paths["cd29"] / "field_001.tif") as tif:
        img = tif.asarray()
        meta = json.loads(tif.pages[0].description)
    assert img.dtype == np.float32 and img.shape == (64, 64)
    assert meta["generator"] == "napari_lmadda.data.synthetic"
    assert (meta["seed"], meta["shift"], meta["magnitude"], meta["field"]) == (
        1,
        "overexpose",
        1.5,
        1,
    )
    with pytest.raises(ConfigError, match="already exists"):
        syn.write_domain(tmp_path / "d", 2, size=64, seed=2)
    syn.write_domain(tmp_path / "d", 2, size=64, seed=2, overwrite=True)
    assert not np.array_equal(tifffile.imread(paths["cd29"] / "field_001.tif"), img)


def test_cli_make_synthetic(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["make-synthetic", "--out", str(out), "--n", "2", "--size", "64", "--seed", "3"]
    assert cli_main([*args, "--shift", "defocus", "--magnitude", "1.5"]) == 0
    assert "wrote 2 synthetic field(s)" in capsys.readouterr().out
    assert len(list((out / "dapi").glob("*.tif"))) == 2
    assert cli_main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli_main([*args, "--overwrite"]) == 0
