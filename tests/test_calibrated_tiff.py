"""Files that keep their calibration (issue 16 item 6) and writers that finish (issue 14.6).

TIFF outputs (``lmadda predict`` and the napari writer) are ImageJ hyperstacks: Fiji opens
them with the input's pixel size and unit and the stains as named channels; the project's
JSON provenance rides along in ImageJ's ``Info`` property. Checked with tifffile's ImageJ
parser (``TiffFile.imagej_metadata``, ``imagej_description_metadata``) and the resolution tags.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_lmadda.data.io import read_pixel_size, read_planes, read_tiff_metadata, write_tiff


def imagej(path):
    """(is ImageJ, axes, ImageJ metadata, pixel size (y, x)) as Fiji would see them."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        xres, yres = page.tags["XResolution"].value, page.tags["YResolution"].value
        size = (yres[1] / yres[0], xres[1] / xres[0])
        desc = tifffile.tifffile.imagej_description_metadata(page.description)
        return tif.is_imagej, tif.series[0].axes, {**desc, **tif.imagej_metadata}, size


# ------------------------------------------------------------------ reading the calibration
def test_pixel_size_is_read_from_imagej_ome_and_resolution_tags(tmp_path):
    img = np.zeros((2, 8, 8), np.uint16)
    tifffile.imwrite(tmp_path / "ij.tif", img, imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 2.5})
    px = read_pixel_size(tmp_path / "ij.tif")
    assert px["unit"] == "um" and px["z"] == pytest.approx(2.5)
    assert px["y"] == pytest.approx(0.65, rel=1e-4) and px["x"] == pytest.approx(0.65, rel=1e-4)

    tifffile.imwrite(tmp_path / "ome.ome.tif", img[0], ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.108, "PhysicalSizeY": 0.108,
                               "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
    px = read_pixel_size(tmp_path / "ome.ome.tif")
    assert px["unit"] == "um" and px["x"] == pytest.approx(0.108)

    tifffile.imwrite(tmp_path / "cm.tif", img[0], resolution=(10000 / 0.5, 10000 / 0.5),
                     resolutionunit="CENTIMETER")
    px = read_pixel_size(tmp_path / "cm.tif")
    assert px["unit"] == "um" and px["x"] == pytest.approx(0.5, rel=1e-4)

    tifffile.imwrite(tmp_path / "dpi.tif", img[0], resolution=(72, 72), resolutionunit="INCH")
    tifffile.imwrite(tmp_path / "plain.tif", img[0])
    assert read_pixel_size(tmp_path / "dpi.tif") is None  # a screen default, as in ImageJ
    assert read_pixel_size(tmp_path / "plain.tif") is None


# ------------------------------------------------------------------ writing hyperstacks
def test_write_tiff_hyperstack_is_imagej_calibrated_with_named_channels(tmp_path):
    arr = np.random.default_rng(0).random((3, 2, 16, 20)).astype(np.float32)  # ZCYX
    path = write_tiff(tmp_path / "s.tif", arr, metadata={"model": {"x": 1}}, axes="ZCYX",
                      channel_names=["DAPI", "CD29"], pixel_size={"y": 0.65, "x": 0.65,
                                                                  "z": 2.0, "unit": "um"},
                      ranges=[(0.0, 1.0), (0.0, 2.0)])
    ok, axes, md, size = imagej(path)
    assert ok and axes == "ZCYX" and md["channels"] == 2 and md["slices"] == 3
    assert md["unit"] == "um" and md["spacing"] == 2.0 and md["mode"] == "composite"
    assert size == pytest.approx((0.65, 0.65), rel=1e-4)
    assert md["Labels"] == ["DAPI", "CD29"] * 3
    assert list(md["Ranges"]) == [0.0, 1.0, 0.0, 2.0]
    assert json.loads(md["Info"])["lmadda"]["model"] == {"x": 1}
    stored = read_tiff_metadata(path)
    assert stored["model"] == {"x": 1} and stored["channels"] == ["DAPI", "CD29"]
    assert stored["pixel_size"]["x"] == 0.65
    planes = read_planes(path)  # z-major, channel fastest, as before
    np.testing.assert_array_equal(planes[3], arr[1, 1])


def test_predict_output_carries_the_input_calibration_and_channel_names(tmp_path,
                                                                        tiny_model_path):
    from napari_lmadda.cli import main

    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    tifffile.imwrite(images / "a.tif", rng.integers(0, 4000, (40, 48), np.uint16), imagej=True,
                     resolution=(1 / 0.325, 1 / 0.325), metadata={"unit": "um"})
    tifffile.imwrite(images / "stack.tif", rng.integers(0, 4000, (2, 40, 48), np.uint16),
                     imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 3.0})
    assert main(["predict", "--model", str(tiny_model_path), "--images", str(images),
                 "--out", str(tmp_path / "out"), "--uncertainty",
                 "--uncertainty-samples", "2"]) == 0
    ok, axes, md, size = imagej(tmp_path / "out" / "a_pred.tif")
    assert ok and axes == "CYX" and md["Labels"] == ["DAPI", "CD29"] and md["unit"] == "um"
    assert size == pytest.approx((0.325, 0.325), rel=1e-4)
    prov = read_tiff_metadata(tmp_path / "out" / "a_pred.tif")
    assert prov["source_image"] == "a.tif" and prov["channels"] == ["DAPI", "CD29"]
    assert prov["model"]["source"] == "test fixture"
    ok, axes, md, size = imagej(tmp_path / "out" / "stack_pred.tif")
    assert ok and axes == "ZCYX" and md["spacing"] == 3.0
    assert size == pytest.approx((0.65, 0.65), rel=1e-4)
    ok, axes, md, size = imagej(tmp_path / "out" / "a_trust.tif")
    assert ok and md["Labels"] == ["DAPI", "CD29"] and size == pytest.approx((0.325, 0.325),
                                                                             rel=1e-4)


# ------------------------------------------------------------------ the napari writer
def _layer(data, name, channel=None, scale=(0.65, 0.65), units=("micrometer", "micrometer")):
    meta = {"name": name, "scale": scale, "translate": (0,) * len(scale), "units": units,
            "metadata": {"lmadda": {"channel": channel, "model": "demo"}} if channel else {}}
    return (data, meta, "image")


def test_napari_writer_puts_same_sized_layers_as_named_channels_of_one_hyperstack(tmp_path):
    from napari_lmadda._writer import write_tiff_stacks

    rng = np.random.default_rng(0)
    dapi, cd29 = rng.random((32, 40), np.float32), rng.random((32, 40), np.float32)
    written = write_tiff_stacks(str(tmp_path / "stains.tif"),
                                [_layer(dapi, "DAPI [lmadda L4]", "DAPI"),
                                 _layer(cd29, "CD29 [lmadda L4]", "CD29")])
    assert written == [str(tmp_path / "stains.tif")]
    ok, axes, md, size = imagej(tmp_path / "stains.tif")
    assert ok and axes == "CYX" and md["Labels"] == ["DAPI", "CD29"] and md["unit"] == "um"
    assert size == pytest.approx((0.65, 0.65), rel=1e-4)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "stains.tif"), np.stack([dapi,
                                                                                      cd29]))
    prov = read_tiff_metadata(tmp_path / "stains.tif")
    assert [c["layer"] for c in prov["layers"]] == ["DAPI [lmadda L4]", "CD29 [lmadda L4]"]
    assert prov["layers"][0]["model"] == "demo"


def test_napari_writer_stack_layer_is_a_z_stack_and_keeps_z_spacing(tmp_path):
    from napari_lmadda._writer import write_tiff_stacks

    data = np.arange(3 * 8 * 8, dtype=np.uint16).reshape(3, 8, 8)
    write_tiff_stacks(str(tmp_path / "z.tif"), [_layer(data, "cells", scale=(2.0, 0.5, 0.5),
                                                       units=("µm",) * 3)])
    ok, axes, md, size = imagej(tmp_path / "z.tif")
    assert ok and axes == "ZYX" and md["spacing"] == 2.0 and md["unit"] == "um"
    assert size == pytest.approx((0.5, 0.5)) and tifffile.imread(tmp_path / "z.tif").dtype == \
        np.uint16


def test_napari_writer_refuses_names_that_clash_before_writing_anything(tmp_path):
    """Two layers whose names sanitise to the same file: the docstring promises nothing."""
    from napari_lmadda._writer import write_tiff_stacks
    from napari_lmadda.errors import LmaddaError

    a = _layer(np.zeros((8, 8), np.float32), "a b")
    b = _layer(np.zeros((9, 9), np.float32), "a_b")  # another size: a file of its own
    with pytest.raises(LmaddaError, match="nothing written.*a_b"):
        write_tiff_stacks(str(tmp_path / "x.tif"), [a, b])
    assert list(tmp_path.iterdir()) == []


def test_evaluate_never_writes_its_json_over_an_input(tmp_path, capsys):
    from napari_lmadda.cli import main

    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        tifffile.imwrite(pred / f"f{i}.tif", rng.random((16, 16), np.float32))
        tifffile.imwrite(truth / f"f{i}.tif", rng.random((16, 16), np.float32))
    for target in (truth / "f0.tif", pred / "f1.tif"):
        before = target.read_bytes()
        code = main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--json",
                     str(target), "--overwrite"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "input" in err and err.count("\n") == 0
        assert target.read_bytes() == before


def test_a_calibrated_folder_opens_calibrated_and_exports_calibrated(tmp_path, monkeypatch):
    """Reader -> napari layer -> writer: the pixel size survives the round trip."""
    from napari.layers import Image

    import napari_lmadda._reader as reader
    from napari_lmadda._writer import write_tiff_stacks

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        tifffile.imwrite(folder / f"a{i}.tif", np.full((16, 16), i, np.uint16), imagej=True,
                         resolution=(1 / 0.325, 1 / 0.325), metadata={"unit": "um"})
    monkeypatch.setattr(reader, "_notify", lambda kind, msg: None)
    (data, kwargs, _), = reader.read_folder(str(folder))
    layer = Image(data, **kwargs)
    assert tuple(layer.scale) == pytest.approx((1.0, 0.325, 0.325))
    write_tiff_stacks(str(tmp_path / "out.tif"), [layer.as_layer_data_tuple()])
    ok, axes, md, size = imagej(tmp_path / "out.tif")
    assert ok and axes == "ZYX" and md["unit"] == "um"
    assert size == pytest.approx((0.325, 0.325), rel=1e-4)
