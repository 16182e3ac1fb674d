"""Property-based tests of readers, normalisation and prediction, and a bounded fuzz run.

Contract checked here: whatever the bytes of a file or the values of an array, the only
exceptions that escape are the project's own (:class:`~napari_lmadda.errors.LmaddaError`
subclasses), and the only warnings are documented ones: :class:`ImageWarning` (pixels
repaired, e.g. NaN replaced) and :class:`NormalizationWarning` (a constant image).

The examples are derandomised so CI is stable; set ``LMADDA_FUZZ_EXAMPLES`` (e.g. 5000) to
run a longer, randomised campaign locally.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from napari_lmadda.adapt.sampling import make_sampler
from napari_lmadda.data import io as lio
from napari_lmadda.data.io import ImageWarning
from napari_lmadda.data.normalize import NormalizationWarning, percentile_normalize
from napari_lmadda.errors import CheckpointError, ConfigError, LmaddaError
from napari_lmadda.inference.predict import predict_image
from napari_lmadda.models import UNetGenerator, load_model, save_model

_LONG = int(os.environ.get("LMADDA_FUZZ_EXAMPLES", "0"))
ALLOWED_WARNINGS = (ImageWarning, NormalizationWarning)


def fuzz_settings(n: int):
    return settings(max_examples=_LONG or n, deadline=None, derandomize=not _LONG,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="lmadda-fuzz-") as d:
        yield Path(d)


def only_documented(caught) -> None:
    bad = [w for w in caught if not issubclass(w.category, ALLOWED_WARNINGS)]
    assert not bad, [f"{w.category.__name__}: {w.message}" for w in bad]


# ------------------------------------------------------------------ arrays
_DTYPES = st.sampled_from([np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32,
                           np.uint32, np.int64, np.uint64, np.float16, np.float32, np.float64])


@st.composite
def arrays(draw, min_dims=1, max_dims=3, max_side=12):
    dtype = np.dtype(draw(_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1,
                                  max_side=max_side))
    if dtype.kind == "f":  # anything: NaN, +-Inf, subnormals, the extremes of the type
        elements = st.floats(width=dtype.itemsize * 8, allow_nan=True, allow_infinity=True)
    else:
        elements = None
    return draw(hnp.arrays(dtype, shape, elements=elements))


@fuzz_settings(300)
@given(img=arrays(), pl=st.floats(0, 50), width=st.floats(1e-3, 50))
def test_percentile_normalize_any_array(img, pl, width):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, params = percentile_normalize(img, pl, pl + width)
    only_documented(caught)
    assert out.dtype == np.float32 and out.shape == img.shape
    x = img.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(x))  # NaN stays NaN, nothing else
    assert params.hi > params.lo
    keep = ~np.isnan(x)
    order = np.argsort(x[keep], kind="stable")
    assert (np.diff(out[keep][order].astype(np.float64)) >= 0).all()  # order is kept


@fuzz_settings(150)
@given(img=arrays(min_dims=2, max_dims=2))
def test_sanitize_plane_only_touches_non_finite_pixels(img):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = lio.sanitize_plane(img, "x.tif")
    only_documented(caught)
    assert out.shape == img.shape and out.dtype == img.dtype
    if img.dtype.kind == "f":
        finite = np.isfinite(img)
        assert np.isfinite(out).all()
        np.testing.assert_array_equal(out[finite], img[finite])
        assert bool(caught) == (not finite.all())


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = UNetGenerator(num_downs=2, ngf=2, out_channels=2).eval()  # min size 4
    model.meta = {}
    return model


@fuzz_settings(25)
@given(img=arrays(min_dims=2, max_dims=2, max_side=40), tile=st.integers(1, 48),
       overlap=st.integers(0, 20))
def test_predict_image_any_plane(tiny_model, img, tile, overlap):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = predict_image(tiny_model, img, tile=tile, overlap=overlap, batch_size=3)
    only_documented(caught)
    assert out.shape == (2, *img.shape) and out.dtype == np.float32
    assert np.isfinite(out).all()


@fuzz_settings(40)
@given(planes=st.lists(arrays(min_dims=2, max_dims=2, max_side=24), min_size=1, max_size=3),
       patch=st.integers(1, 20))
def test_sampler_any_planes(planes, patch):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            sampler = make_sampler(planes, patch, 3)
        except ConfigError as exc:
            assert all(min(p.shape) < patch for p in planes), exc
            return
        batch = sampler.sample()
    only_documented(caught)
    assert batch.shape == (3, 1, patch, patch) and batch.dtype == np.float32
    assert np.isfinite(batch).all()


@fuzz_settings(60)
@given(arr=arrays(min_dims=2, max_dims=3, max_side=9))
def test_tiff_round_trip_any_array(workdir, arr):
    path = workdir / "round.tif"
    lio.write_tiff(path, arr, dtype=None, overwrite=True, metadata={"k": 1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        planes = lio.read_planes(path)
    only_documented(caught)
    with np.errstate(over="ignore"):
        expected = arr.reshape(-1, *arr.shape[-2:]).astype(np.float32)
    assert len(planes) == len(expected)
    for got, want in zip(planes, expected):
        finite = np.isfinite(want)
        np.testing.assert_array_equal(got[finite], want[finite])
        assert np.isfinite(got).all()
    assert lio.read_tiff_metadata(path) == {"k": 1}


# ------------------------------------------------------------------ file bytes
def _seed_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    out: dict[str, bytes] = {}

    def tif(name, arr, **kw):
        buf = io.BytesIO()
        tifffile.imwrite(buf, arr, **kw)
        out[name] = buf.getvalue()

    def pil(name, arr, fmt):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt)
        out[name] = buf.getvalue()

    tif("u16.tif", (rng.random((12, 10)) * 4000).astype(np.uint16))
    tif("stack.tif", rng.random((3, 8, 8)).astype(np.float32), photometric="minisblack")
    tif("zlib.tif", rng.random((12, 10)).astype(np.float32), compression="zlib")
    tif("rgb.tif", (rng.random((8, 8, 3)) * 255).astype(np.uint8), photometric="rgb")
    tif("ij.tif", rng.random((2, 3, 8, 8)).astype(np.float32), imagej=True,
        metadata={"axes": "TZYX"})
    tif("tiled.tif", rng.random((16, 16)).astype(np.float32), tile=(16, 16))
    pil("grey.png", (rng.random((8, 8)) * 255).astype(np.uint8), "PNG")
    pil("rgba.png", (rng.random((8, 8, 4)) * 255).astype(np.uint8), "PNG")
    pil("u16.png", (rng.random((8, 8)) * 65535).astype(np.uint16), "PNG")
    pil("rgb.jpg", (rng.random((8, 8, 3)) * 255).astype(np.uint8), "JPEG")
    return out


SEEDS = _seed_files()


_INTS = [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x00\x00\x01\x00", b"\xff\x7f\x00\x00"]


@st.composite
def mutated(draw, seeds):
    name = draw(st.sampled_from(sorted(seeds)))
    data = bytearray(seeds[name])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "int"]))
        i = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[min(i, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "cut":
            data = data[:i]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "int" and len(data) >= 4:  # offsets, counts and sizes are 2-8 byte ints
            j = min(i, len(data) - 4)
            data[j : j + 4] = draw(st.sampled_from(_INTS))
    return name, bytes(data)


def _read_everything(path: Path) -> None:
    """Every reader of the project on one file; only LmaddaError may escape."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for read in (lio.probe_image, lio.read_image, lio.read_planes,
                     lambda p: lio.read_plane(p, 0), lio.read_tiff_metadata):
            try:
                read(path)
            except LmaddaError:
                pass
    only_documented(caught)


@fuzz_settings(250)
@given(sample=mutated(SEEDS))
def test_fuzz_readers_on_mutated_images(workdir, sample):
    name, data = sample
    path = workdir / f"mutant{Path(name).suffix}"
    path.write_bytes(data)
    _read_everything(path)


@fuzz_settings(100)
@given(data=st.binary(min_size=0, max_size=512),
       suffix=st.sampled_from([".tif", ".tiff", ".png", ".jpg", ".jpeg", ".TIF"]),
       magic=st.sampled_from([b"", b"II*\x00", b"MM\x00*", b"II+\x00", b"\x89PNG\r\n\x1a\n",
                              b"\xff\xd8\xff"]))
def test_fuzz_readers_on_random_bytes(workdir, data, suffix, magic):
    path = workdir / f"random{suffix}"
    path.write_bytes(magic + data)
    _read_everything(path)


@pytest.fixture(scope="module")
def checkpoint_seeds(workdir):
    path = save_model(UNetGenerator(num_downs=2, ngf=2), workdir / "seed.pt")
    legacy = io.BytesIO()
    torch.save(torch.load(path, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    return {"zip.pt": path.read_bytes(), "legacy.pt": legacy.getvalue()}


@fuzz_settings(120)
@given(data=st.data())
def test_fuzz_model_loader(workdir, checkpoint_seeds, data):
    name, blob = data.draw(st.one_of(mutated(checkpoint_seeds),
                                     st.tuples(st.just("random.pt"), st.binary(max_size=256))))
    path = workdir / "mutant.pt"
    path.write_bytes(blob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own notes about pickle protocols
        try:
            load_model(path)
        except CheckpointError as exc:
            assert "\n" not in str(exc) and "mutant.pt" in str(exc)
