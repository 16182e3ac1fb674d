"""The plugin's reader (folders, model files) and TIFF writers."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_lmadda._reader import get_reader, read_folder
from napari_lmadda._writer import write_tiff_planes, write_tiff_stacks
from napari_lmadda.data.io import read_tiff_metadata
from napari_lmadda.errors import OutputExistsError


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        tifffile.imwrite(folder / f"img{i}.tif", rng.random((40, 48), dtype=np.float32))
    return folder


def test_get_reader_accepts_folders_and_model_files_only(tmp_path, image_folder,
                                                        tiny_model_path, monkeypatch):
    import napari_lmadda._reader as reader

    assert callable(get_reader(str(image_folder)))
    assert callable(get_reader([str(image_folder)]))
    assert callable(get_reader(str(tiny_model_path)))
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "store.zarr").mkdir()
    for path in (tmp_path / "notes.txt", tmp_path / "missing", tmp_path / "missing.pt",
                 tmp_path / "store.zarr"):
        assert get_reader(str(path)) is None
    assert get_reader([str(image_folder), str(image_folder)]) is None
    # a folder with nothing to open is refused by the reader, in one line (never by napari
    # with a traceback): nothing is added
    (tmp_path / "empty").mkdir()
    messages = []
    monkeypatch.setattr(reader, "_notify", lambda kind, msg: messages.append((kind, msg)))
    assert get_reader(str(tmp_path / "empty"))(str(tmp_path / "empty")) == [(None,)]
    assert messages[0][0] == "warning" and "'empty' holds no images" in messages[0][1]


def test_folder_opens_as_one_stack(image_folder):
    layers = read_folder(str(image_folder))
    assert len(layers) == 1
    data, kwargs, kind = layers[0]
    assert kind == "image" and data.shape == (3, 40, 48) and data.dtype == np.float32
    assert kwargs["name"] == "imgs"
    assert kwargs["metadata"]["lmadda"]["files"] == ["img0.tif", "img1.tif", "img2.tif"]
    np.testing.assert_array_equal(data[1], tifffile.imread(image_folder / "img1.tif"))


def test_mixed_sizes_open_one_layer_per_size(image_folder, monkeypatch):
    import napari_lmadda._reader as reader

    messages = []
    monkeypatch.setattr(reader, "_notify", lambda kind, msg: messages.append((kind, msg)))
    tifffile.imwrite(image_folder / "big.tif", np.ones((64, 64), np.uint16))
    (image_folder / "broken.tif").write_bytes(b"not a tiff")
    layers = read_folder(str(image_folder))
    assert [ly[0].shape for ly in layers] == [(3, 40, 48), (1, 64, 64)]
    assert [ly[1]["name"] for ly in layers] == ["imgs 40x48", "imgs 64x64"]
    kinds = [k for k, _ in messages]
    assert "info" in kinds and "warning" in kinds  # sizes explained, broken file named
    assert any("broken.tif" in m for _, m in messages)


def test_writer_round_trips_with_metadata_and_never_overwrites(tmp_path):
    data = np.random.default_rng(1).random((3, 32, 40)).astype(np.float32)
    meta = {"name": "DAPI [lmadda L2]", "scale": (1.0, 0.5, 0.5), "translate": (0, 0, 0),
            "metadata": {"lmadda": {"model": "demo model", "channel": "DAPI"}}}
    path = tmp_path / "stain.tif"
    written = write_tiff_stacks(str(path), [(data, meta, "image")])
    assert written == [str(path)]
    np.testing.assert_array_equal(tifffile.imread(path), data)
    stored = read_tiff_metadata(path)
    assert stored["scale"] == [1.0, 0.5, 0.5]
    assert stored["channel"] == "DAPI" and stored["model"] == "demo model"
    before = path.read_bytes()
    with pytest.raises(OutputExistsError):
        write_tiff_stacks(str(path), [(data * 0, meta, "image")])
    assert path.read_bytes() == before


def test_plane_writer_writes_one_file_per_plane_and_checks_all_first(tmp_path):
    data = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8)
    meta = {"name": "cells", "scale": (1, 1, 1), "translate": (0, 0, 0), "metadata": {}}
    written = write_tiff_planes(str(tmp_path / "out.tif"), [(data, meta, "image")])
    assert [p.split("/")[-1] for p in written] == ["out_000.tif", "out_001.tif"]
    np.testing.assert_array_equal(tifffile.imread(written[1]), data[1])
    assert read_tiff_metadata(written[1])["plane"] == 1
    (tmp_path / "again_001.tif").write_bytes(b"keep me")
    with pytest.raises(OutputExistsError):
        write_tiff_planes(str(tmp_path / "again.tif"), [(data, meta, "image")])
    assert not (tmp_path / "again_000.tif").exists()  # nothing written at all


def test_writer_is_reachable_through_napari(tmp_path):
    import npe2
    from napari.layers import Image
    from napari.plugins.io import save_layers

    npe2.PluginManager.instance().discover()  # a viewer would do this

    layers = [Image(np.ones((2, 16, 16), np.float32), name="a"),
              Image(np.zeros((16, 16), np.float32), name="b")]
    written = save_layers(str(tmp_path / "both.tif"), layers, plugin="napari-lmadda")
    names = sorted(p.split("/")[-1] for p in written)
    assert names == ["both_a.tif", "both_b.tif"]
