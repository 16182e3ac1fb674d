"""Prediction as a dask graph: equal to predict_image, folders, OME-Zarr, clusters, AMP."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile

from napari_lmadda.cli import main
from napari_lmadda.data.io import ImageWarning, read_tiff_metadata
from napari_lmadda.errors import ConfigError, OutputExistsError
from napari_lmadda.inference.predict import predict_folder, predict_image
from napari_lmadda.models import UNetGenerator

dask = pytest.importorskip("dask")
zarr = pytest.importorskip("zarr", minversion="3")


@pytest.fixture(scope="module")
def model():
    import torch

    torch.manual_seed(0)
    m = UNetGenerator(num_downs=4, ngf=8, out_channels=2)
    m.meta = {"channel_names": ["DAPI", "CD29"], "target_range": [-0.05, 1.05],
              "provenance": {"source": "test"}}
    return m


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "in"
    d.mkdir()
    tifffile.imwrite(d / "a.tif", (rng.random((40, 52)) * 4000).astype(np.uint16))
    tifffile.imwrite(d / "b.tif", rng.random((33, 70)).astype(np.float32))
    tifffile.imwrite(d / "c_stack.tif", rng.random((3, 24, 30)).astype(np.float32),
                     photometric="minisblack")
    nan = rng.random((32, 32)).astype(np.float32)
    nan[3, 4] = np.nan
    tifffile.imwrite(d / "d_nan.tif", nan)
    (d / "e_bad.tif").write_bytes(b"not a tiff")
    return d


def _lazy(model, img, **kw):
    from napari_lmadda.inference.predict_dask import predict_lazy

    return predict_lazy(model, img, **kw)


# ------------------------------------------------------------------ equal to predict_image
@pytest.mark.parametrize("shape, tile, overlap, chunk, batch", [
    ((50, 70), 32, 8, 16, 4),     # several tiles and chunks, chunk smaller than a tile
    ((1, 40), 16, 4, 7, 2),       # one row: symmetric padding, odd chunks
    ((100, 37), 32, 16, 64, 3),   # padded width, overlap = half a tile
    ((130, 260), 64, 16, 50, 4),  # chunks not aligned with tiles
])
def test_lazy_prediction_equals_predict_image(model, shape, tile, overlap, chunk, batch):
    img = (np.random.default_rng(1).random(shape) * 1000).astype(np.uint16)
    ref = predict_image(model, img, tile=tile, overlap=overlap, batch_size=batch)
    lazy = _lazy(model, img, tile=tile, overlap=overlap, chunk=chunk, batch_size=batch)
    assert lazy.chunks[1][0] == min(chunk, shape[0])  # really cut into chunks
    out = lazy.compute(scheduler="threads")
    assert out.dtype == np.float32 and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)


def test_lazy_prediction_options_and_bad_input(model):
    img = np.random.default_rng(2).random((48, 48)).astype(np.float32)
    for kw in ({"normalize": False}, {"to_stain": False}):
        ref = predict_image(model, img, tile=32, overlap=8, **kw)
        out = _lazy(model, img, tile=32, overlap=8, chunk=20, **kw).compute()
        np.testing.assert_allclose(out, ref, atol=1e-5)
    with pytest.raises(ConfigError, match="2-D"):
        _lazy(model, np.zeros((2, 8, 8)))
    with pytest.raises(ConfigError, match="amp"):
        _lazy(model, img, amp="fp8")


def test_lazy_prediction_of_a_zarr_array_reads_regions(model, tmp_path):
    img = np.random.default_rng(3).random((90, 120)).astype(np.float32)
    z = zarr.create_array(str(tmp_path / "x.zarr"), shape=img.shape, chunks=(32, 32),
                          dtype="float32")
    z[:] = img
    out = _lazy(model, z, tile=32, overlap=8, chunk=40).compute()
    np.testing.assert_allclose(out, predict_image(model, img, tile=32, overlap=8), atol=1e-5)


def test_large_tiff_is_read_region_by_region(model, tmp_path, monkeypatch):
    import napari_lmadda.inference.predict_dask as pd

    img = (np.random.default_rng(4).random((70, 90)) * 60000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "big.tif", img, tile=(32, 32))
    monkeypatch.setattr(pd, "LAZY_PIXELS", 1000)  # "large" from 1000 pixels on
    reads = []
    real = pd._read_tiff_region
    monkeypatch.setattr(pd, "_read_tiff_region",
                        lambda *a: reads.append(a[1:]) or real(*a))
    planes = pd._file_planes(tmp_path / "big.tif")
    assert planes[0].tiff is not None and planes[0].array is None
    report = pd.predict_folder_dask(model, tmp_path / "big.tif", tmp_path / "out", tile=32,
                                    overlap=8, chunk=48, scheduler="synchronous")
    assert len(report.written) == 1
    ref = predict_image(model, img, tile=32, overlap=8)
    np.testing.assert_allclose(tifffile.imread(report.written[0]), ref, atol=1e-5)
    sizes = sorted((r1 - r0) * (c1 - c0) for r0, r1, c0, c1, _ in reads)
    assert sizes[-1] == img.size and sizes[-2] < img.size  # only the normalisation reads all
    assert len(sizes) == 4  # 1 + one per row of tiles


# ------------------------------------------------------------------ folders
def test_folder_with_dask_writes_what_predict_folder_writes(model, folder, tmp_path):
    from napari_lmadda.inference.predict_dask import predict_folder_dask

    with pytest.warns(ImageWarning) as caught:
        ref = predict_folder(model, folder, tmp_path / "ref", tile=32, overlap=8)
    with pytest.warns(ImageWarning) as caught_dask:
        rep = predict_folder_dask(model, folder, tmp_path / "dask", tile=32, overlap=8,
                                  workers=2, window=2)
    assert [p.name for p in rep.written] == [p.name for p in ref.written]
    assert [p.name for p, _ in rep.skipped] == ["e_bad.tif"]
    for a, b in zip(ref.written, rep.written):
        np.testing.assert_allclose(tifffile.imread(b), tifffile.imread(a), atol=1e-5)
        assert read_tiff_metadata(b) == read_tiff_metadata(a)
    texts = [str(w.message) for w in caught_dask]
    assert any(t.startswith("skipped 'e_bad.tif'") for t in texts)
    assert any("d_nan.tif" in t and "non-finite" in t for t in texts)  # from a worker thread
    assert sorted(texts) == sorted(str(w.message) for w in caught)
    assert tifffile.imread(tmp_path / "dask" / "c_stack_pred.tif").shape == (3, 2, 24, 30)


def test_folder_refuses_existing_outputs_and_stops_on_error(model, folder, tmp_path):
    from napari_lmadda.inference.predict_dask import predict_folder_dask

    out = tmp_path / "out"
    with pytest.raises(Exception, match="e_bad.tif"):
        predict_folder_dask(model, folder, out, tile=32, stop_on_error=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "a_pred.tif", "b_pred.tif", "c_stack_pred.tif", "d_nan_pred.tif"]
    before = (out / "a_pred.tif").read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = predict_folder_dask(model, folder, out, tile=32)
    assert not rep.written and len(rep.skipped) == 5
    assert "already exists" in rep.skipped[0][1]
    assert (out / "a_pred.tif").read_bytes() == before


# ------------------------------------------------------------------ OME-Zarr
def test_ome_zarr_output_round_trip_and_metadata(model, folder, tmp_path):
    from napari_lmadda.inference.predict_dask import predict_folder_dask

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = predict_folder(model, folder, tmp_path / "ref", tile=32, overlap=8)
        rep = predict_folder_dask(model, folder, tmp_path / "z", tile=32, overlap=8,
                                  out_format="ome-zarr", chunk=16)
    assert [p.name for p in rep.written] == [
        "a_pred.ome.zarr", "b_pred.ome.zarr", "c_stack_pred.ome.zarr", "d_nan_pred.ome.zarr"]
    assert sorted(p.name for p in (tmp_path / "z").iterdir()) == sorted(
        p.name for p in rep.written)  # no temporary folder left, none for the bad file
    g = zarr.open_group(str(tmp_path / "z" / "a_pred.ome.zarr"), mode="r")
    assert g["0"].chunks == (1, 16, 16)
    np.testing.assert_allclose(g["0"][:], tifffile.imread(ref.written[0]), atol=1e-5)
    ome = g.attrs["ome"]
    assert ome["version"] == "0.5"
    assert [a["name"] for a in ome["multiscales"][0]["axes"]] == ["c", "y", "x"]
    assert [c["label"] for c in ome["omero"]["channels"]] == ["DAPI", "CD29"]
    assert g.attrs["lmadda"]["model"] == {"source": "test"}
    assert g.attrs["lmadda"]["source_image"] == "a.tif"
    stack = zarr.open_group(str(tmp_path / "z" / "c_stack_pred.ome.zarr"), mode="r")
    assert stack["0"].shape == (2, 3, 24, 30)  # C, Z, Y, X (NGFF order)
    np.testing.assert_allclose(stack["0"][:], np.moveaxis(tifffile.imread(ref.written[2]), 0, 1),
                               atol=1e-5)
    with pytest.raises(OutputExistsError):
        from napari_lmadda.data.zarr_io import OmeZarrWriter

        OmeZarrWriter(rep.written[0], (2, 8, 8), (1, 8, 8), ["a", "b"])


def test_ome_zarr_output_is_read_by_the_ome_zarr_library(model, tmp_path):
    ome_reader = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    from napari_lmadda.inference.predict_dask import predict_folder_dask

    tifffile.imwrite(tmp_path / "x.tif", np.random.default_rng(5).random((40, 40)))
    rep = predict_folder_dask(model, tmp_path / "x.tif", tmp_path / "o", tile=32,
                              out_format="ome-zarr")
    node = next(iter(ome_reader.Reader(parse_url(str(rep.written[0])))()))
    assert node.metadata["channel_names"] == ["DAPI", "CD29"]
    assert [a["name"] for a in node.metadata["axes"]] == ["c", "y", "x"]
    assert node.data[0].shape == (2, 40, 40)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_input_0_4_and_0_5(model, tmp_path, zarr_format):
    from napari_lmadda.inference.predict_dask import predict_folder_dask

    img = np.random.default_rng(6).random((2, 45, 50)).astype(np.float32)  # c, y, x
    path = tmp_path / "in" / "cells.ome.zarr"
    g = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    g.create_array("s0", shape=img.shape, chunks=(1, 16, 16), dtype="float32")[:] = img
    ms = {"axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"},
                   {"name": "x", "type": "space"}],
          "datasets": [{"path": "s0", "coordinateTransformations": [
              {"type": "scale", "scale": [1, 1, 1]}]}]}
    if zarr_format == 2:
        g.attrs.update({"multiscales": [{**ms, "version": "0.4"}]})
    else:
        g.attrs.update({"ome": {"version": "0.5", "multiscales": [ms]}})
    tifffile.imwrite(tmp_path / "in" / "other.tif", img[0])
    rep = predict_folder_dask(model, tmp_path / "in", tmp_path / "o", tile=32, overlap=8)
    assert [p.name for p in rep.written] == ["cells_pred.tif", "other_pred.tif"]
    got = tifffile.imread(rep.written[0])
    assert got.shape == (2, 2, 45, 50)  # one prediction per input plane
    for i in range(2):
        np.testing.assert_allclose(got[i], predict_image(model, img[i], tile=32, overlap=8),
                                   atol=1e-5)


# ------------------------------------------------------------------ schedulers and the CLI
def test_cli_on_a_distributed_cluster_and_ome_zarr(tiny_model_path, folder, tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                           protocol="tcp", dashboard_address=None)
    try:
        args = ["predict", "--model", str(tiny_model_path), "--images", str(folder),
                "--tile", "32", "--device", "cpu"]
        rc = main([*args, "--out", str(tmp_path / "d"), "--scheduler",
                   cluster.scheduler_address, "--format", "ome-zarr"])
        out = capsys.readouterr().out
        assert rc == 1 and "dask.distributed at tcp://" in out and "wrote 4 file(s)" in out
    finally:
        cluster.close()
    assert main([*args, "--out", str(tmp_path / "t"), "--workers", "2"]) == 1
    capsys.readouterr()
    for name in ("a", "b", "d_nan"):
        z = zarr.open_group(str(tmp_path / "d" / f"{name}_pred.ome.zarr"), mode="r")["0"][:]
        np.testing.assert_allclose(z, tifffile.imread(tmp_path / "t" / f"{name}_pred.tif"),
                                   atol=1e-5)


def test_cli_scheduler_errors_are_one_line(tiny_model_path, folder, tmp_path, capsys):
    from napari_lmadda.inference.predict_dask import DaskRunner

    pytest.importorskip("distributed")
    with pytest.raises(ConfigError, match="cannot reach a dask scheduler"):
        DaskRunner("tcp://127.0.0.1:9", timeout=0.5)
    args = ["predict", "--model", str(tiny_model_path), "--images", str(folder), "--out",
            str(tmp_path / "o")]
    assert main([*args, "--scheduler", "nonsense"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lmadda predict: error: --scheduler 'nonsense'") and "\n" not in err
    assert main([*args, "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert main([*args, "--format", "ome-zarr", "--uncertainty"]) == 2
    assert "--uncertainty" in capsys.readouterr().err
    rc = main([*args, "--amp", "bf16", "--scheduler", "synchronous", "--tile", "32",
               "--device", "cpu"])
    assert rc == 1 and "dask synchronous scheduler" in capsys.readouterr().out
    assert (tmp_path / "o" / "a_pred.tif").exists()


# ------------------------------------------------------------------ mixed precision
def test_bf16_autocast_keeps_pearson_of_the_demo_model():
    """bf16 autocast on CPU: predictions correlate > 0.999 with float32, Pearson drop tiny."""
    from napari_lmadda.data.synthetic import make_domain
    from napari_lmadda.evaluation.metrics import pearson
    from napari_lmadda.models.checkpoint import load_model

    demo = load_model("demo", device="cpu")
    dom = make_domain(2, modality="phase", size=128, seed=2)
    drops = []
    for x, truth in zip(dom["input"], dom["dapi"]):
        full = predict_image(demo, x, tile=128)
        half = predict_image(demo, x, tile=128, amp="bf16")
        assert not np.array_equal(full, half)  # autocast really changed the arithmetic
        assert pearson(half[0], full[0]) > 0.999 and pearson(half[1], full[1]) > 0.999
        drops.append(pearson(full[0], truth) - pearson(half[0], truth))
    assert abs(np.mean(drops)) < 0.002
    lazy = _lazy(demo, dom["input"][0], tile=128, amp="bf16").compute()
    np.testing.assert_allclose(lazy, predict_image(demo, dom["input"][0], tile=128, amp="bf16"),
                               atol=1e-5)
