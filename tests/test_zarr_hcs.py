"""OME-Zarr: HCS plates in, calibrated pyramids out, and the napari reader for both."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile

zarr = pytest.importorskip("zarr", minversion="3")
ome_writer = pytest.importorskip("ome_zarr.writer")

from napari_lmadda.inference.predict import predict_image  # noqa: E402
from napari_lmadda.models import UNetGenerator  # noqa: E402


@pytest.fixture(scope="module")
def model():
    import torch

    torch.manual_seed(0)
    m = UNetGenerator(num_downs=3, ngf=4, out_channels=2).eval()
    m.meta = {"channel_names": ["DAPI", "CD29"], "target_range": [0.0, 1.0],
              "input_percentiles": [1.0, 99.8], "provenance": {"source": "test"}}
    return m


def _plate(path, fmt_version="0.5", size=(40, 48)):
    """A 2-well, 2-field plate written by ome-zarr-py (uint16, 0.65 um pixels)."""
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.io import parse_url

    fmt = FormatV05() if fmt_version == "0.5" else FormatV04()
    root = zarr.open_group(parse_url(str(path), mode="w", fmt=fmt).store, mode="w",
                           zarr_format=3 if fmt_version == "0.5" else 2)
    ome_writer.write_plate_metadata(root, ["A", "B"], ["1", "2"], ["A/1", "B/2"], fmt=fmt)
    rng = np.random.default_rng(0)
    images = {}
    for well in ("A/1", "B/2"):
        wg = root.require_group(well)
        ome_writer.write_well_metadata(wg, ["0", "1"], fmt=fmt)
        for field in ("0", "1"):
            img = (rng.random((1, 1, *size)) * 3000 + 200).astype(np.uint16)
            ome_writer.write_image(img, wg.require_group(field), axes="czyx", fmt=fmt,
                                   scale_factors=None if fmt_version == "0.5" else [],
                                   scale={"y": 0.65, "x": 0.65, "z": 2.0},
                                   axes_units={"y": "micrometer", "x": "micrometer",
                                               "z": "micrometer"})
            images[f"{well}/{field}"] = img[0, 0]
    return images


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_hcs_plate_written_by_ome_zarr_is_predicted(model, tmp_path, version, capsys):
    from napari_lmadda.inference.predict_dask import list_inputs, predict_folder_dask

    plate = tmp_path / "screen.ome.zarr"
    try:
        images = _plate(plate, version)
    except TypeError as exc:  # an ome-zarr-py without these keywords
        pytest.skip(f"ome-zarr-py cannot write this plate here: {exc}")
    assert [p.relative_to(plate).as_posix() for p in list_inputs(plate)] == list(images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = predict_folder_dask(model, plate, tmp_path / "out", tile=32, overlap=8,
                                  out_format="ome-zarr", chunk=16)
    assert [p.name for p in rep.written] == [
        "screen_A_1_0_pred.ome.zarr", "screen_A_1_1_pred.ome.zarr",
        "screen_B_2_0_pred.ome.zarr", "screen_B_2_1_pred.ome.zarr"]
    assert not rep.skipped
    for (field, img), out in zip(images.items(), rep.written):
        g = zarr.open_group(str(out), mode="r")
        np.testing.assert_allclose(g["0"][:], predict_image(model, img, tile=32, overlap=8),
                                   atol=1e-5)
        assert g.attrs["lmadda"]["source_image"] == f"screen.ome.zarr/{field}"
        ms = g.attrs["ome"]["multiscales"][0]
        assert [a.get("unit") for a in ms["axes"]] == [None, "micrometer", "micrometer"]
        assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == pytest.approx(
            [1.0, 0.65, 0.65])


def test_cli_predicts_a_plate_to_tiff(tiny_model_path, tmp_path, capsys):
    from napari_lmadda.cli import main

    plate = tmp_path / "p.ome.zarr"
    images = _plate(plate, "0.5", size=(64, 64))
    (tmp_path / "folder").mkdir()
    plate.rename(tmp_path / "folder" / "p.ome.zarr")  # a plate inside a folder, beside a TIFF
    tifffile.imwrite(tmp_path / "folder" / "z.tif", images["A/1/0"])
    assert main(["predict", "--model", str(tiny_model_path), "--images",
                 str(tmp_path / "folder"), "--out", str(tmp_path / "o")]) == 0
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert names == ["p_A_1_0_pred.tif", "p_A_1_1_pred.tif", "p_B_2_0_pred.tif",
                     "p_B_2_1_pred.tif", "z_pred.tif"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o" / "p_A_1_0_pred.tif"),
                                  tifffile.imread(tmp_path / "o" / "z_pred.tif"))


def test_large_output_gets_a_pyramid_read_by_ome_zarr(model, tmp_path, monkeypatch):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from napari_lmadda.data import zarr_io
    from napari_lmadda.inference.predict_dask import predict_folder_dask

    monkeypatch.setattr(zarr_io, "PYRAMID_MIN_SIDE", 16)  # "large" at test size
    img = np.random.default_rng(1).random((70, 50)).astype(np.float32)
    tifffile.imwrite(tmp_path / "big.tif", img, imagej=True, resolution=(1 / 0.325, 1 / 0.325),
                     metadata={"unit": "micron"})
    rep = predict_folder_dask(model, tmp_path / "big.tif", tmp_path / "o", tile=32,
                              out_format="ome-zarr", chunk=16)
    g = zarr.open_group(str(rep.written[0]), mode="r")
    shapes = [g[str(k)].shape for k in range(4)]
    assert shapes == [(2, 70, 50), (2, 35, 25), (2, 17, 12), (2, 8, 6)]
    assert "4" not in g
    full = g["0"][:]
    np.testing.assert_allclose(g["1"][:], full.reshape(2, 35, 2, 25, 2).mean(axis=(2, 4)),
                               atol=1e-6)
    ms = g.attrs["ome"]["multiscales"][0]
    assert ms["axes"][1] == {"name": "y", "type": "space", "unit": "micrometer"}
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales[2] == pytest.approx([1.0, 1.3, 1.3])  # 0.325 um * 4
    node = next(iter(Reader(parse_url(str(rep.written[0])))()))
    assert len(node.data) == 4 and node.data[3].shape == (2, 8, 6)


def test_calibration_from_ome_tiff_and_none_for_plain(tmp_path):
    from napari_lmadda.data.zarr_io import Calibration, read_calibration

    img = np.zeros((3, 16, 16), np.uint16)
    tifffile.imwrite(tmp_path / "o.ome.tif", img, metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.25, "PhysicalSizeZ": 1.5,
        "PhysicalSizeXUnit": "µm"})
    assert read_calibration(tmp_path / "o.ome.tif") == Calibration(0.25, 0.2, 1.5, "micrometer")
    tifffile.imwrite(tmp_path / "plain.tif", img[0])
    assert read_calibration(tmp_path / "plain.tif") is None
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    assert read_calibration(tmp_path / "bad.tif") is None


def test_reader_opens_a_plate_and_an_image(model, tmp_path):
    from napari_lmadda._reader import get_reader
    from napari_lmadda.data.zarr_io import open_zarr_array
    from napari_lmadda.errors import ImageReadError

    plate = tmp_path / "r.ome.zarr"
    images = _plate(plate)
    reader = get_reader(str(plate))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(plate))
    assert kind == "image" and data.shape == (4, 40, 48)
    np.testing.assert_array_equal(np.asarray(data[2]), images["B/2/0"])
    assert kwargs["metadata"]["lmadda"]["files"] == ["A/1/0", "A/1/1", "B/2/0", "B/2/1"]
    assert kwargs["scale"] == pytest.approx((1.0, 0.65, 0.65))
    one = str(plate / "A" / "1" / "0")
    [(levels, fkw, _)] = get_reader(one)(one)  # ome-zarr-py wrote a pyramid: all levels
    assert fkw["multiscale"] and len(levels) > 1 and levels[1].shape == (20, 24)
    np.testing.assert_array_equal(np.asarray(levels[0]), images["A/1/0"])
    with pytest.raises(ImageReadError, match="HCS plate"):
        open_zarr_array(plate)
