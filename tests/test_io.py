"""Tests of napari_lmadda.data.io: readers, listing, atomic TIFF writing."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_lmadda.data import io
from napari_lmadda.errors import (
    EmptyFolderError,
    ImageReadError,
    LmaddaError,
    OutputExistsError,
    OutputWriteError,
)

RNG = np.random.default_rng(1234)


def _rand(shape, dtype):
    if np.dtype(dtype).kind == "f":
        return RNG.random(shape).astype(dtype)
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


# ---------------------------------------------------------------------------------- readers


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_read_2d_tiff_keeps_dtype_and_values(tmp_path, dtype):
    data = _rand((33, 47), dtype)
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, data)
    raw = io.read_image(path)
    assert raw.dtype == dtype
    np.testing.assert_array_equal(raw, data)
    planes = io.read_planes(path)
    assert len(planes) == 1
    assert planes[0].dtype == np.float32
    np.testing.assert_array_equal(planes[0], data.astype(np.float32))


def test_multipage_tiff_gives_one_plane_per_page(tmp_path):
    data = _rand((5, 16, 20), np.uint16)
    path = tmp_path / "stack.tiff"
    tifffile.imwrite(path, data, photometric="minisblack")
    info = io.probe_image(path)
    assert info.n_planes == 5
    assert info.plane_shape(4) == (16, 20)
    planes = io.read_planes(path)
    assert len(planes) == 5
    for k in range(5):
        np.testing.assert_array_equal(planes[k], data[k])
        np.testing.assert_array_equal(io.read_plane(path, k), data[k])


def test_imagej_hyperstack_flattens_leading_axes_in_c_order(tmp_path):
    data = _rand((2, 3, 2, 12, 10), np.uint16)  # T Z C Y X
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZCYX"})
    info = io.probe_image(path)
    assert info.axes == "TZCYX"
    assert info.n_planes == 12
    planes = io.read_planes(path)
    flat = data.reshape(12, 12, 10)
    for k in (0, 1, 5, 11):
        np.testing.assert_array_equal(planes[k], flat[k])
        np.testing.assert_array_equal(io.read_plane(path, k, info=info), flat[k])
    # t0 z0 c1 is plane 1: channels vary fastest
    np.testing.assert_array_equal(planes[1], data[0, 0, 1])


def test_ome_tiff(tmp_path):
    data = _rand((3, 2, 16, 18), np.float32)  # Z C Y X
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, data, metadata={"axes": "ZCYX"})
    planes = io.read_planes(path)
    assert len(planes) == 6
    np.testing.assert_array_equal(planes[3], data[1, 1])
    assert io.file_stem(path) == "cells"


def test_three_channel_tiff_is_planes_unless_file_says_rgb(tmp_path):
    data = _rand((3, 16, 16), np.uint8)
    grey = tmp_path / "grey.tif"
    tifffile.imwrite(grey, data, photometric="minisblack")
    assert len(io.read_planes(grey)) == 3
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, data, photometric="rgb", planarconfig="separate")
    planes = io.read_planes(rgb)
    assert len(planes) == 1
    expected = np.tensordot([0.2125, 0.7154, 0.0721], data.astype(np.float64), axes=1)
    np.testing.assert_allclose(planes[0], expected, rtol=1e-5)
    assert len(io.read_planes(rgb, as_grey=False)) == 3


def test_rgb_png_to_luminance(tmp_path):
    data = _rand((20, 24, 3), np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(data).save(path)
    assert io.read_image(path).shape == (20, 24, 3)
    (plane,) = io.read_planes(path)
    np.testing.assert_allclose(plane, data @ np.array([0.2125, 0.7154, 0.0721]), rtol=1e-5)


def test_rgba_png_drops_alpha(tmp_path):
    data = _rand((10, 12, 4), np.uint8)
    path = tmp_path / "rgba.png"
    Image.fromarray(data, "RGBA").save(path)
    (plane,) = io.read_planes(path)
    np.testing.assert_allclose(
        plane, data[..., :3] @ np.array([0.2125, 0.7154, 0.0721]), rtol=1e-5
    )


def test_rgb_holding_grey_gives_the_channel_exactly(tmp_path):
    grey = _rand((15, 17), np.uint8)
    path = tmp_path / "greyrgb.png"
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(path)
    (plane,) = io.read_planes(path)
    np.testing.assert_array_equal(plane, grey.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_grey_png(tmp_path, dtype):
    data = _rand((9, 11), dtype)
    path = tmp_path / "grey.PNG"  # upper-case suffix
    Image.fromarray(data).save(path)
    (plane,) = io.read_planes(path)
    np.testing.assert_array_equal(plane, data.astype(np.float32))


def test_jpeg(tmp_path):
    yy, xx = np.mgrid[:32, :40]
    data = (100 + 50 * np.sin(xx / 6.0) + yy).astype(np.uint8)
    path = tmp_path / "photo.jpeg"
    Image.fromarray(data).save(path, quality=95)
    (plane,) = io.read_planes(path)
    assert plane.shape == (32, 40)
    assert np.abs(plane - data).mean() < 3.0  # lossy, but close


def test_nan_pixels_replaced_with_warning_naming_file(tmp_path):
    data = np.ones((8, 8), np.float32)
    data[0, 0] = np.nan
    data[1, 1] = np.inf
    data[2, 2] = 3.0
    path = tmp_path / "holes.tif"
    tifffile.imwrite(path, data)
    with pytest.warns(io.ImageWarning, match="holes.tif"):
        (plane,) = io.read_planes(path)
    assert np.isfinite(plane).all()
    assert plane[0, 0] == 1.0  # the median
    assert plane[1, 1] == 3.0  # the max finite value


def test_min_size(tmp_path):
    path = tmp_path / "small.tif"
    tifffile.imwrite(path, np.zeros((10, 30), np.uint8))
    assert len(io.read_planes(path, min_size=10)) == 1
    with pytest.raises(ImageReadError, match=r"small\.tif.*10x30"):
        io.read_planes(path, min_size=16)


def test_non_ascii_path_with_spaces(tmp_path):
    folder = tmp_path / "dossier é ü"
    folder.mkdir()
    path = folder / "ïmage 1 µm.tif"
    data = _rand((6, 7), np.float32)
    io.write_tiff(path, data, metadata={"note": "ça va"})
    assert io.list_images(folder) == [path]
    np.testing.assert_array_equal(io.read_planes(path)[0], data)
    assert io.read_tiff_metadata(path) == {"note": "ça va"}


# --------------------------------------------------------------------------- bad files


def _assert_clean_error(path, func=io.read_planes):
    with pytest.raises(ImageReadError) as err:
        func(path)
    assert path.name in str(err.value)
    return err.value


def test_zero_byte_files(tmp_path):
    for name in ("empty.tif", "empty.png", "empty.jpg"):
        path = tmp_path / name
        path.write_bytes(b"")
        err = _assert_clean_error(path)
        assert "empty" in str(err)
        _assert_clean_error(path, io.read_image)


def test_png_that_is_text(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n" * 10)
    _assert_clean_error(path)
    _assert_clean_error(path, io.probe_image)


def test_garbage_tiff_and_jpeg(tmp_path):
    for name in ("junk.tif", "junk.jpg"):
        path = tmp_path / name
        path.write_bytes(RNG.integers(0, 256, 500, dtype=np.uint8).tobytes())
        _assert_clean_error(path)


def test_truncated_single_page_tiff(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, _rand((128, 128), np.uint16))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    err = _assert_clean_error(path)
    assert "truncated" in str(err)
    _assert_clean_error(path, io.read_image)


def test_truncated_multipage_tiff(tmp_path):
    path = tmp_path / "cutstack.tif"
    tifffile.imwrite(
        path, _rand((2, 3, 2, 32, 32), np.uint16), imagej=True, metadata={"axes": "TZCYX"}
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _assert_clean_error(path)


def test_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(_rand((64, 64), np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _assert_clean_error(path)


def test_missing_file(tmp_path):
    _assert_clean_error(tmp_path / "nope.tif")


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "a.bmp"
    path.write_bytes(b"BM1234")
    _assert_clean_error(path)


# ---------------------------------------------------------------------------------- listing


def test_list_images_filters_and_sorts_naturally(tmp_path):
    for name in (
        "img10.tif",
        "img2.TIF",
        "img1.png",
        ".hidden.tif",
        "._img3.tif",
        "notes.txt",
        "Thumbs.db",
        "data.csv",
    ):
        (tmp_path / name).write_bytes(b"x")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "deep.tif").write_bytes(b"x")
    hidden = tmp_path / ".cache"
    hidden.mkdir()
    (hidden / "secret.tif").write_bytes(b"x")

    names = [p.name for p in io.list_images(tmp_path)]
    assert names == ["img1.png", "img2.TIF", "img10.tif"]
    rec = [p.relative_to(tmp_path).as_posix() for p in io.list_images(tmp_path, recursive=True)]
    assert rec == ["img1.png", "img2.TIF", "img10.tif", "sub/deep.tif"]


def test_list_images_empty_folder(tmp_path):
    with pytest.raises(EmptyFolderError, match=str(tmp_path.name)):
        io.list_images(tmp_path)
    (tmp_path / ".hidden.tif").write_bytes(b"x")
    (tmp_path / "readme.md").write_text("hi")
    (tmp_path / "sub").mkdir()
    with pytest.raises(EmptyFolderError, match=r"\.tif"):
        io.list_images(tmp_path)


def test_list_images_file_and_missing(tmp_path):
    path = tmp_path / "one.tif"
    path.write_bytes(b"x")
    assert io.list_images(path) == [path]
    with pytest.raises(ImageReadError, match="missing"):
        io.list_images(tmp_path / "missing")
    txt = tmp_path / "a.txt"
    txt.write_text("x")
    with pytest.raises(ImageReadError, match="a.txt"):
        io.list_images(txt)


# ---------------------------------------------------------------------------------- writing


def test_write_tiff_round_trip_with_metadata(tmp_path):
    data = RNG.random((3, 10, 12))
    meta = {"model": "unet", "epoch": np.int64(7), "lr": np.float32(0.5), "ids": np.arange(3)}
    path = io.write_tiff(tmp_path / "out.tif", data, metadata=meta)
    assert path == tmp_path / "out.tif"
    back = io.read_image(path)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, data.astype(np.float32))
    # a 3-plane stack is stored as grey pages, not as RGB
    assert len(io.read_planes(path)) == 3
    assert io.read_tiff_metadata(path) == {
        "model": "unet",
        "epoch": 7,
        "lr": 0.5,
        "ids": [0, 1, 2],
    }


def test_write_tiff_keeps_requested_dtype(tmp_path):
    data = _rand((5, 5), np.uint16)
    path = io.write_tiff(tmp_path / "u16.tiff", data, dtype=None)
    assert io.read_image(path).dtype == np.uint16
    assert io.read_tiff_metadata(path) == {}


def test_read_tiff_metadata_of_foreign_tiff(tmp_path):
    path = tmp_path / "foreign.tif"
    tifffile.imwrite(path, np.zeros((4, 4), np.uint8), description="hello world", metadata=None)
    assert io.read_tiff_metadata(path) == {}


def test_write_tiff_refuses_overwrite(tmp_path):
    path = tmp_path / "out.tif"
    io.write_tiff(path, np.zeros((4, 4)), metadata={"v": 1})
    with pytest.raises(OutputExistsError, match="out.tif"):
        io.write_tiff(path, np.ones((4, 4)), metadata={"v": 2})
    assert io.read_tiff_metadata(path) == {"v": 1}
    io.write_tiff(path, np.ones((4, 4)), metadata={"v": 2}, overwrite=True)
    assert io.read_tiff_metadata(path) == {"v": 2}
    assert io.read_image(path).max() == 1.0


def test_failing_writer_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "model.tif"
    io.write_tiff(path, np.zeros((4, 4)), metadata={"v": 1})
    before = path.read_bytes()

    def broken(tmp):
        tmp.write_bytes(b"half a file")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        io.atomic_write(path, broken, overwrite=True)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.tif"]


def test_atomic_write_generic_file(tmp_path):
    path = io.atomic_write(tmp_path / "a.json", lambda p: p.write_text("{}"))
    assert path.read_text() == "{}"
    assert os.listdir(tmp_path) == ["a.json"]


def test_write_into_missing_folder(tmp_path):
    with pytest.raises(OutputWriteError, match="no_such_dir"):
        io.write_tiff(tmp_path / "no_such_dir" / "a.tif", np.zeros((3, 3)))


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions and a non-root user"
)
def test_write_into_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputWriteError, match="ro"):
            io.write_tiff(ro / "a.tif", np.zeros((3, 3)))
    finally:
        ro.chmod(0o700)


def test_permission_error_becomes_output_write_error(tmp_path):
    def denied(tmp):
        raise PermissionError(13, "Permission denied", str(tmp))

    with pytest.raises(OutputWriteError, match=f"folder '{tmp_path}' is not writable"):
        io.atomic_write(tmp_path / "a.tif", denied)
    assert not list(tmp_path.iterdir())


def test_write_tiff_bad_input(tmp_path):
    with pytest.raises(LmaddaError, match=r"\.tif"):
        io.write_tiff(tmp_path / "a.png", np.zeros((3, 3)))
    with pytest.raises(LmaddaError, match="shape"):
        io.write_tiff(tmp_path / "a.tif", np.zeros(3))
    with pytest.raises(LmaddaError, match="JSON"):
        io.write_tiff(tmp_path / "a.tif", np.zeros((3, 3)), metadata={"f": object()})
    assert not list(tmp_path.iterdir())


def test_error_types_are_project_errors():
    assert issubclass(OutputExistsError, LmaddaError)
    assert issubclass(OutputWriteError, LmaddaError)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        err = OutputWriteError("x")
    assert isinstance(err, OSError)
