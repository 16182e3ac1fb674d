"""Target intensities of any kind, on the model-file and prediction side (issue 11).

A model file records how its output channels map to stain units
(:class:`~napari_lmadda.data.normalize.TargetNorm`: one ``[lo, hi]`` per channel, the mode
and whether decoded values are in the targets' own units). Such a file is format version 3;
version 1 and 2 files (one range for all channels) load as before. Every prediction path
decodes with ``TargetNorm.from_meta(meta, channels).decode`` and every output file says
which units its values are in. Inputs of real dtypes (saturated 16-bit, 12-bit in 16-bit
containers, constant tiles) give finite predictions and a warning where one is due.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_lmadda.data.normalize import TargetNorm
from napari_lmadda.errors import CheckpointError
from napari_lmadda.inference.predict import predict_image
from napari_lmadda.models import UNetGenerator, load_model, read_checkpoint, save_model
from napari_lmadda.models import checkpoint as ckpt

DATA = Path(__file__).parent / "data"
# DAPI as the microscope wrote it (uint16, 13689..65535) and CD29 in [0, 1]
NORM = TargetNorm((13689.0, 0.0), (65535.0, 1.0), mode="dataset", percentiles=(0.1, 99.9))


@pytest.fixture(scope="module")
def model_u16(tmp_path_factory):
    torch.manual_seed(0)
    m = UNetGenerator(num_downs=3, ngf=4, out_channels=2).eval()
    m.meta = {"channel_names": ["DAPI", "CD29"], **NORM.to_meta()}
    path = save_model(m, tmp_path_factory.mktemp("m") / "u16.pt")
    return load_model(path), path


# ------------------------------------------------------------------ the format version
@pytest.mark.parametrize("name", ["model_v1_e6291c5", "model_v2_translated_e6291c5"])
def test_files_written_by_todays_code_load_and_predict_as_before(name):
    model = load_model(DATA / f"{name}.pt")
    x = np.load(DATA / "input_32.npy")
    np.testing.assert_allclose(predict_image(model, x), np.load(DATA / f"{name}_pred.npy"),
                               rtol=0, atol=2e-6)
    assert TargetNorm.from_meta(model.meta, 2) == TargetNorm.fixed(-0.05, 1.05, 2)


def test_the_bundled_demo_model_is_still_version_1_and_loads():
    obj = torch.load(ckpt.__file__.replace("models/checkpoint.py", "assets/demo_model.pt"),
                     weights_only=True)
    assert obj["format_version"] == 1
    assert load_model("demo").meta["channel_names"] == ["DAPI", "CD29"]


def test_each_file_is_written_with_the_lowest_version_that_describes_it(tmp_path, model_u16):
    from napari_lmadda.models.translated import TranslatedModel, Translator, TranslatorConfig

    def version(path):
        return torch.load(path, weights_only=True)["format_version"]

    g = UNetGenerator(num_downs=3, ngf=4, out_channels=2)
    g.meta = {"channel_names": ["DAPI", "CD29"], "target_range": [-0.05, 1.05]}
    assert version(save_model(g, tmp_path / "plain.pt")) == 1
    t = TranslatedModel(Translator(TranslatorConfig(ngf=4, n_blocks=1)), g)
    t.meta = dict(g.meta)
    assert version(save_model(t, tmp_path / "scgan.pt")) == 2
    assert version(model_u16[1]) == 3
    t.meta = {**g.meta, **NORM.to_meta()}
    path = save_model(t, tmp_path / "scgan3.pt")
    assert version(path) == 3
    loaded = load_model(path)  # a translated model with per-channel ranges reads back
    assert isinstance(loaded, TranslatedModel)
    assert TargetNorm.from_meta(loaded.meta, 2) == NORM


def test_an_older_reader_refuses_a_version_3_file(model_u16, monkeypatch):
    """What a version-2 reader (FORMAT_VERSION 2) says about the file: no mis-loading."""
    monkeypatch.setattr(ckpt, "FORMAT_VERSION", 2)
    with pytest.raises(CheckpointError, match=r"written by a newer napari-lmadda \(format "
                                               r"version 3\); this version reads up to 2"):
        load_model(model_u16[1])


@pytest.mark.parametrize("meta,match", [
    ({"target_range": [[0, 1]]}, "describes 1 channel"),
    ({"target_range": [[0, 1], [5, 5]]}, "lo != hi"),
    ({"target_range": [[0, 1], [0, float("inf")]]}, "finite"),
    ({"target_range": [[0, 1], [0, 1]], "target_norm": {"mode": "bogus"}}, "mode"),
    ({"target_range": [[0, 1], [0, 1]], "target_norm": {"units": "volts"}}, "units"),
    ({"target_range": [[0, 1], [0, 1]], "target_norm": {"percentiles": [50, 10]}},
     "percentiles"),
    ({"target_range": [[0, 1], [0, 1]], "target_norm": "dataset"}, "normalisation"),
])
def test_invalid_target_fields_are_refused_at_load(tmp_path, model_u16, meta, match):
    obj = torch.load(model_u16[1], weights_only=True)
    obj["meta"].update(meta)
    torch.save(obj, tmp_path / "bad.pt")
    for load in (load_model, read_checkpoint):
        with pytest.raises(CheckpointError, match=match) as err:
            load(tmp_path / "bad.pt")
        assert "bad.pt" in str(err.value) and "\n" not in str(err.value)


def test_save_refuses_metadata_it_could_not_read_back(tmp_path):
    from napari_lmadda.errors import ConfigError

    g = UNetGenerator(num_downs=3, ngf=4, out_channels=2)
    g.meta = {"target_range": [[0, 1]]}
    with pytest.raises(ConfigError, match="describes 1 channel"):
        save_model(g, tmp_path / "x.pt")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ decoding everywhere
def _image(seed=0, shape=(48, 56)):
    return np.random.default_rng(seed).integers(100, 4000, shape).astype(np.uint16)


def test_predict_image_decodes_each_channel_with_its_own_range(model_u16):
    model, _ = model_u16
    img = _image()
    raw = predict_image(model, img, to_stain=False)
    stain = predict_image(model, img)
    np.testing.assert_array_equal(stain, NORM.decode(raw, axis=0))
    assert stain[0].min() >= 13689 - 1 and stain[0].max() <= 65535 + 1  # DAPI in its units
    assert stain[1].min() >= -1e-6 and stain[1].max() <= 1 + 1e-6


def test_dask_folder_and_lazy_paths_decode_like_predict_image(tmp_path, model_u16):
    import zarr

    from napari_lmadda.data.io import read_planes, read_tiff_metadata
    from napari_lmadda.inference.predict import predict_folder
    from napari_lmadda.inference.predict_dask import predict_folder_dask, predict_lazy

    model, _ = model_u16
    img = _image(1)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", img)
    want = predict_image(model, img, tile=32, overlap=8)
    got = predict_lazy(model, img, tile=32, overlap=8, chunk=24).compute()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    predict_folder(model, tmp_path / "in", tmp_path / "f", tile=32, overlap=8)
    predict_folder_dask(model, tmp_path / "in", tmp_path / "d", tile=32, overlap=8,
                        scheduler="synchronous")
    predict_folder_dask(model, tmp_path / "in", tmp_path / "z", tile=32, overlap=8,
                        out_format="ome-zarr", scheduler="synchronous")
    for out in (tmp_path / "f" / "a_pred.tif", tmp_path / "d" / "a_pred.tif"):
        np.testing.assert_allclose(np.stack(read_planes(out)), want, rtol=1e-6)
        md = read_tiff_metadata(out)
        assert md["units"] == "target"
        assert md["target_range"] == [[13689.0, 65535.0], [0.0, 1.0]]
        assert md["target_norm"]["mode"] == "dataset"
    group = zarr.open_group(str(tmp_path / "z" / "a_pred.ome.zarr"))
    np.testing.assert_allclose(np.asarray(group["0"]), want, rtol=1e-6)
    windows = [c["window"] for c in group.attrs["ome"]["omero"]["channels"]]
    assert [(w["start"], w["end"]) for w in windows] == [(13689.0, 65535.0), (0.0, 1.0)]
    assert group.attrs["lmadda"]["units"] == "target"


def test_trust_map_spread_is_in_each_channels_units(model_u16):
    from napari_lmadda.inference.uncertainty import trust_map

    model, _ = model_u16
    img = _image(2, (32, 32))
    net = trust_map(model, img, n_samples=4, to_stain=False)
    stain = trust_map(model, img, n_samples=4)
    half = 0.5 * (np.array(NORM.hi) - np.array(NORM.lo))
    np.testing.assert_allclose(stain, net * half[:, None, None], rtol=1e-5)


def test_per_image_normalised_models_say_so_in_every_output(tmp_path):
    from napari_lmadda.cli import main
    from napari_lmadda.data.io import read_tiff_metadata

    norm = TargetNorm((-1.0, -1.0), (1.0, 1.0), mode="image", percentiles=(1, 99.8),
                      units="normalised")
    g = UNetGenerator(num_downs=3, ngf=4, out_channels=2)
    g.meta = {"channel_names": ["DAPI", "CD29"], **norm.to_meta()}
    path = save_model(g, tmp_path / "care.pt")
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", _image(3, (32, 32)))
    assert main(["predict", "--model", str(path), "--images", str(tmp_path / "in"), "--out",
                 str(tmp_path / "out"), "--uncertainty", "--uncertainty-samples", "2"]) == 0
    for name in ("a_pred.tif", "a_trust.tif"):
        md = read_tiff_metadata(tmp_path / "out" / name)
        assert md["units"] == "normalised" and md["target_norm"]["mode"] == "image"
    assert "normalised units" in read_tiff_metadata(tmp_path / "out" / "a_trust.tif")[
        "quantity"]


# ------------------------------------------------------------------ input scrutiny
def test_12_bit_data_in_16_bit_containers_predicts_like_full_range_data(model_u16):
    model, _ = model_u16
    twelve = np.random.default_rng(4).integers(0, 4096, (40, 40)).astype(np.uint16)
    full = twelve * np.uint16(16)  # the same image using the whole 16-bit range
    np.testing.assert_allclose(predict_image(model, twelve), predict_image(model, full),
                               rtol=1e-5, atol=1e-2)
    as_float = twelve.astype(np.float32) / 4095  # and as a float image in [0, 1]
    np.testing.assert_allclose(predict_image(model, twelve), predict_image(model, as_float),
                               rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize("dtype,top", [(np.uint16, 65535), (np.uint8, 255), (np.uint16, 4095)])
def test_saturated_inputs_predict_finite_values_and_warn_naming_the_file(tmp_path, model_u16,
                                                                         dtype, top):
    from napari_lmadda.data.io import ImageWarning, read_planes
    from napari_lmadda.inference.predict import predict_folder

    model, _ = model_u16
    img = np.random.default_rng(5).integers(0, top, (48, 48)).astype(dtype)
    img[:20] = top  # 40% of the field clipped at the top of the range
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "sat.tif", img)
    with pytest.warns(ImageWarning, match=rf"sat\.tif.*saturated at {top}"):
        report = predict_folder(model, tmp_path / "in", tmp_path / "out")
    assert report.written and np.isfinite(np.stack(read_planes(report.written[0]))).all()
    # a binary mask is not "saturated"
    tifffile.imwrite(tmp_path / "mask.tif", (img > 100).astype(np.uint8) * 255)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImageWarning)
        read_planes(tmp_path / "mask.tif")


def test_constant_tiles_and_constant_images_give_finite_predictions(model_u16):
    from napari_lmadda.data.normalize import NormalizationWarning

    model, _ = model_u16
    img = _image(6, (96, 96))
    img[:, :64] = 0  # a black border wider than a tile: tiles of one value
    out = predict_image(model, img, tile=32, overlap=8)
    assert np.isfinite(out).all()
    with pytest.warns(NormalizationWarning, match="constant"):
        flat = predict_image(model, np.full((40, 40), 65535, np.uint16))
    assert np.isfinite(flat).all()
