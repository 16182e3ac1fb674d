"""Messy folders and bad inputs end to end: a clear error naming the file, the rest goes on.

Reading single files is covered in ``test_io.py`` (zero-byte, text PNG, truncated TIFF, ...);
here the same files go through every consumer (datasets, sampler, prediction, napari reader,
each ``lmadda`` command), plus sizes, dtypes, channels, huge and tiny images, odd paths,
unwritable outputs, wrong models and nonsense options.
"""

from __future__ import annotations

import errno
import os
import tempfile
import tracemalloc
import warnings

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from napari_lmadda.adapt.sampling import check_patch_fits, make_sampler
from napari_lmadda.cli import main
from napari_lmadda.data.datasets import ArrayDataset, ImageFolder, PatchSampler
from napari_lmadda.data.io import ImageWarning, read_planes, read_tiff_metadata
from napari_lmadda.data.normalize import NormalizationWarning
from napari_lmadda.errors import (
    CheckpointError,
    ConfigError,
    EmptyFolderError,
    LmaddaError,
    OutputWriteError,
)
from napari_lmadda.inference.predict import output_paths, predict_folder, predict_image
from napari_lmadda.models import UNetGenerator, load_model, save_model

# files of the messy folder that no reader can use, and why (a word of the message)
BAD = {
    "zero.tif": "empty",
    "text.png": "not a readable image",
    "truncated.tif": "truncated",
    "garbage.tif": "damaged",
    "complex.tif": "not supported",
}



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 3-down-block UNet (min size 8, layers 1..6), 2 output channels, and its file."""
    torch.manual_seed(0)
    model = UNetGenerator(num_downs=3, ngf=4, out_channels=2).eval()
    model.meta = {"channel_names": ["DAPI", "CD29"]}
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(model, path)
    return load_model(path), path


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """A folder as microscopists have them: good images of every kind, and junk."""
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("messy")
    good = rng.random((40, 48)).astype(np.float32)
    tifffile.imwrite(d / "a_float.tif", good)
    tifffile.imwrite(d / "b_u16.tif", (rng.random((24, 56)) * 4000).astype(np.uint16))
    tifffile.imwrite(d / "c_u8_rgb.tif", (rng.random((32, 32, 3)) * 255).astype(np.uint8),
                     photometric="rgb")
    Image.fromarray((rng.random((20, 36, 4)) * 255).astype(np.uint8)).save(d / "d_rgba.png")
    tifffile.imwrite(d / "e_stack.tif", rng.random((3, 32, 32)).astype(np.float32),
                     photometric="minisblack")
    nan = rng.random((32, 32)).astype(np.float32)
    nan[3, 3], nan[4, 4], nan[5, 5] = np.nan, np.inf, -np.inf
    tifffile.imwrite(d / "f_nan.tif", nan)
    tifffile.imwrite(d / "g_constant.tif", np.full((32, 32), 7, np.uint16))
    tifffile.imwrite(d / "h_tiny.tif", rng.random((5, 7)).astype(np.float32))
    # junk
    (d / "zero.tif").write_bytes(b"")
    (d / "text.png").write_text("this is not a picture")
    data = (d / "a_float.tif").read_bytes()
    (d / "truncated.tif").write_bytes(data[: len(data) // 2])
    (d / "garbage.tif").write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    tifffile.imwrite(d / "complex.tif", np.zeros((8, 8), np.complex64))
    # ignored: not images, hidden, sub-folders
    (d / "notes.txt").write_text("exposure 20 ms")
    (d / ".DS_Store").write_bytes(b"\x00\x01junk")
    (d / ".hidden.tif").write_bytes(b"junk")
    (d / "sub").mkdir()
    tifffile.imwrite(d / "sub" / "inner.tif", good)
    return d


def one_line_error(capsys, command):
    err = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in err if ": error: " in ln]
    assert len(errors) == 1 and errors[0].startswith(f"lmadda {command}: error: "), err
    assert not any("Traceback" in ln for ln in err)
    return errors[0]


# ------------------------------------------------------------------ messy folders
def test_image_folder_keeps_good_files_and_names_each_bad_one(messy):
    with pytest.warns(ImageWarning, match="skipped 5 unreadable"):
        ds = ImageFolder(messy)
    kept = [p.name for p in ds.paths]
    assert kept == ["a_float.tif", "b_u16.tif", "c_u8_rgb.tif", "d_rgba.png", "e_stack.tif",
                    "f_nan.tif", "g_constant.tif", "h_tiny.tif"]  # no txt/hidden/sub-folder
    reasons = {p.name: why for p, why in ds.skipped}
    assert set(reasons) == set(BAD)
    for name, word in BAD.items():
        assert name in reasons[name] and word in reasons[name]
    assert len(ds) == 10  # the 3-plane stack counts 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageWarning)
        planes = [ds[i] for i in range(len(ds))]
    assert all(p.dtype == np.float32 and np.isfinite(p).all() for p in planes)


def test_folder_of_only_junk_is_empty_and_says_why(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.tif").write_bytes(b"junk")
    (tmp_path / "sub").mkdir()
    tifffile.imwrite(tmp_path / "sub" / "inner.tif", np.zeros((8, 8)))
    with pytest.raises(EmptyFolderError, match="no images"):
        ImageFolder(tmp_path)
    (tmp_path / "zero.tif").write_bytes(b"")
    with pytest.warns(ImageWarning), pytest.raises(EmptyFolderError, match="zero.tif"):
        ImageFolder(tmp_path)


def test_napari_reader_opens_messy_folder_one_layer_per_size(messy):
    from napari_lmadda.data.groups import read_image_groups

    groups, skipped = read_image_groups(messy)
    assert sorted(s.split(":")[0] for s in skipped) == sorted(BAD)
    assert sum(len(g.planes) for g in groups) == 10
    assert groups[0].shape == (32, 32)  # the commonest size first
    assert {g.shape for g in groups} == {(32, 32), (40, 48), (24, 56), (20, 36), (5, 7)}


def test_predict_folder_skips_bad_files_with_a_warning_each_and_a_summary(messy, tiny,
                                                                          tmp_path):
    model, _ = tiny
    with pytest.warns(ImageWarning) as caught:
        report = predict_folder(model, messy, tmp_path / "out", tile=32)
    texts = [str(w.message) for w in caught]
    for name in BAD:
        assert any(t.startswith(f"skipped '{name}'") for t in texts), name
    assert any("g_constant.tif" in t and "constant" in t for t in texts)
    assert any("f_nan.tif" in t and "non-finite" in t for t in texts)
    assert len(report.written) == 8 and len(report.skipped) == 5
    summary = report.summary()
    assert "wrote 8 file(s)" in summary and "skipped 5" in summary
    assert all(name in summary for name in BAD)
    stack = tifffile.imread(tmp_path / "out" / "e_stack_pred.tif")
    assert stack.shape == (3, 2, 32, 32)  # one prediction per plane: Z, C, Y, X
    assert read_tiff_metadata(tmp_path / "out" / "e_stack_pred.tif")["axes"] == "ZCYX"
    assert tifffile.imread(tmp_path / "out" / "h_tiny_pred.tif").shape == (2, 5, 7)


def test_cli_predict_messy_folder_exit_1_warnings_and_summary(messy, tiny, tmp_path, capsys):
    _, model_file = tiny
    rc = main(["predict", "--model", str(model_file), "--images", str(messy),
               "--out", str(tmp_path / "out"), "--tile", "32", "--device", "cpu"])
    assert rc == 1
    cap = capsys.readouterr()
    assert "wrote 8 file(s)" in cap.out and "skipped 5" in cap.out
    lines = cap.err.strip().splitlines()
    assert all(ln.startswith("lmadda predict: warning: ") for ln in lines), lines
    assert sum("skipped" in ln for ln in lines) == 5


def test_cli_predict_stop_on_error_stops_at_the_first_bad_file(messy, tiny, tmp_path, capsys):
    _, model_file = tiny
    out = tmp_path / "out"
    rc = main(["predict", "--model", str(model_file), "--images", str(messy), "--out", str(out),
               "--tile", "32", "--device", "cpu", "--stop-on-error"])
    assert rc == 2
    assert "complex.tif" in one_line_error(capsys, "predict")  # the first bad file, in order
    assert sorted(p.name for p in out.iterdir()) == [
        "a_float_pred.tif", "b_u16_pred.tif", "c_u8_rgb_pred.tif"]


def test_same_stem_outputs_do_not_overwrite_each_other(tiny, tmp_path):
    model, _ = tiny
    d = tmp_path / "in"
    d.mkdir()
    tifffile.imwrite(d / "cell.tif", np.zeros((16, 16), np.float32))
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(d / "cell.png")
    report = predict_folder(model, d, tmp_path / "out", tile=16)
    assert sorted(p.name for p in report.written) == ["cell_png_pred.tif", "cell_tif_pred.tif"]
    assert output_paths([d / "a.ome.tif", d / "b.tif"], "o")[0].name == "a.ome_pred.tif"


# ------------------------------------------------------------------ sizes, dtypes, channels
def test_mixed_sizes_dtypes_and_channels_sample_to_one_batch_shape(messy):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageWarning)
        ds = ImageFolder(messy)
    batch = PatchSampler(ds, 16, 24, seed=0).sample()  # 5x7 planes are padded, not refused
    assert batch.shape == (24, 1, 16, 16) and batch.dtype == np.float32
    assert np.isfinite(batch).all()


def test_rgb_becomes_luminance_and_alpha_is_dropped(messy):
    rgb = tifffile.imread(messy / "c_u8_rgb.tif").astype(np.float64)
    (plane,) = read_planes(messy / "c_u8_rgb.tif")
    np.testing.assert_allclose(plane, rgb @ [0.2125, 0.7154, 0.0721], rtol=1e-5)
    assert len(read_planes(messy / "c_u8_rgb.tif", as_grey=False)) == 3
    (rgba,) = read_planes(messy / "d_rgba.png")
    assert rgba.shape == (20, 36)


def test_model_for_colour_input_is_refused_clearly(tmp_path, capsys):
    rgb_model = UNetGenerator(num_downs=3, ngf=4, in_channels=3)
    rgb_model.meta = {}
    with pytest.raises(ConfigError, match="takes 3 input channels"):
        predict_image(rgb_model, np.zeros((16, 16)))
    path = save_model(rgb_model, tmp_path / "rgb.pt")
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", np.zeros((16, 16), np.float32))
    assert main(["predict", "--model", str(path), "--images", str(images),
                 "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    assert "3 input channels" in one_line_error(capsys, "predict")
    assert not list((tmp_path / "out").glob("*.tif"))


def test_stacks_and_time_series_flatten_leading_axes_t_major(tmp_path):
    ts = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
    tifffile.imwrite(tmp_path / "tz.tif", ts, imagej=True, metadata={"axes": "TZYX"})
    planes = read_planes(tmp_path / "tz.tif")
    assert len(planes) == 6  # every T and Z: planes t0z0, t0z1, t0z2, t1z0, ...
    np.testing.assert_array_equal(planes[4], ts[1, 1])


def test_nan_inf_and_constant_images_give_finite_predictions(tiny):
    model, _ = tiny
    img = np.random.default_rng(1).random((24, 24)).astype(np.float32)
    img[0, :] = np.nan
    img[1, :] = np.inf
    img[2, :] = -np.inf
    assert np.isfinite(predict_image(model, img, tile=16)).all()
    for const in (np.full((24, 24), 3.0), np.full((24, 24), np.nan), np.zeros((24, 24), bool)):
        with pytest.warns(NormalizationWarning, match="constant"):
            out = predict_image(model, const, tile=16)
        assert out.shape == (2, 24, 24) and np.isfinite(out).all()


@pytest.mark.parametrize("shape", [(1, 1), (1, 50), (50, 1), (5, 7), (9, 17)])
def test_images_smaller_than_the_network_minimum_are_padded(tiny, shape):
    model, _ = tiny  # min size 8
    out = predict_image(model, np.random.default_rng(0).random(shape), tile=16)
    assert out.shape == (2, *shape) and np.isfinite(out).all()


def test_empty_or_not_2d_image_is_a_clear_error(tiny):
    model, _ = tiny
    for bad in (np.zeros((0, 5)), np.zeros(5), np.zeros((2, 3, 4))):
        with pytest.raises(ConfigError, match="2-D"):
            predict_image(model, bad)
    with pytest.raises(ConfigError, match="dtype"):
        predict_image(model, np.zeros((8, 8), np.complex64))


def test_patch_larger_than_every_image_is_refused_smaller_ones_pad():
    small = [np.zeros((20, 30), np.float32), np.ones((12, 40), np.float32)]
    with pytest.raises(ConfigError, match=r"larger than every target image.*20x30"):
        make_sampler(small, 32, 2, role="target")
    sampler = make_sampler([*small, np.zeros((40, 40), np.float32)], 32, 2)
    assert sampler.sample().shape == (2, 1, 32, 32)
    check_patch_fits(ArrayDataset(small), 20)  # fits one image: fine


def test_cli_adapt_and_train_refuse_a_patch_larger_than_every_image(messy, tiny, tmp_path,
                                                                    capsys):
    _, model_file = tiny
    rc = main(["adapt", "--model", str(model_file), "--source", str(messy), "--target",
               str(messy), "--layer", "2", "--out", str(tmp_path / "a.pt"), "--patch", "64",
               "--device", "cpu"])
    assert rc == 2
    assert "larger than every source image" in one_line_error(capsys, "adapt")
    pairs = tmp_path / "pairs"
    for sub in ("in", "t"):
        (pairs / sub).mkdir(parents=True)
        tifffile.imwrite(pairs / sub / "a.tif", np.zeros((20, 20), np.float32))
    rc = main(["train-source", "--inputs", str(pairs / "in"), "--targets", str(pairs / "t"),
               "--out", str(tmp_path / "t.pt"), "--patch", "32", "--num-downs", "3",
               "--ngf", "4", "--steps", "1", "--device", "cpu"])
    assert rc == 2
    assert "larger than every input image" in one_line_error(capsys, "train-source")
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "t.pt").exists()


def test_cli_adapt_runs_on_a_messy_folder_skipping_bad_files(messy, tiny, tmp_path, capsys):
    _, model_file = tiny
    rc = main(["adapt", "--model", str(model_file), "--source", str(messy), "--target",
               str(messy), "--layer", "2", "--out", str(tmp_path / "a.pt"), "--patch", "16",
               "--batch", "2", "--steps", "2", "--eval-every", "2", "--device", "cpu"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "warning: skipped 5 unreadable" in err and "Traceback" not in err
    assert load_model(tmp_path / "a.pt").config.num_downs == 3


def test_large_image_is_tiled_with_bounded_memory(monkeypatch):
    """2048x2048 through tiles of 256: host memory a small multiple of image + output, and the
    network never sees more than one batch of tiles."""
    model = UNetGenerator(num_downs=3, ngf=2, out_channels=1).eval()
    model.meta = {}
    seen = []
    forward = model.forward

    def spy(x, *args, **kwargs):
        seen.append(tuple(x.shape))
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    img = (np.random.default_rng(0).random((2048, 2048)) * 4000).astype(np.uint16)
    tracemalloc.start()
    try:
        out = predict_image(model, img, tile=256, overlap=16, batch_size=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (1, 2048, 2048)
    budget = 4 * img.size + out.nbytes  # the image as float32, and the output
    assert peak < 2.5 * budget, f"peak {peak / 2**20:.0f} MiB for {budget / 2**20:.0f} MiB"
    assert max(s[0] for s in seen) <= 4 and {s[2:] for s in seen} == {(256, 256)}


# ------------------------------------------------------------------ paths and outputs
def test_non_ascii_paths_with_spaces_end_to_end(tiny, tmp_path, capsys):
    _, model_file = tiny
    root = tmp_path / "données brutes" / "Ölçüm 1"
    root.mkdir(parents=True)
    tifffile.imwrite(root / "cellule n°1 (x).tif", np.random.default_rng(0).random((16, 16)))
    model = root.parent / "modèle à tester.pt"
    model.write_bytes(model_file.read_bytes())
    out = tmp_path / "résultats finaux"
    assert main(["predict", "--model", str(model), "--images", str(root), "--out", str(out),
                 "--tile", "16", "--device", "cpu"]) == 0
    written = out / "cellule n°1 (x)_pred.tif"
    assert tifffile.imread(written).shape == (2, 16, 16)
    assert read_tiff_metadata(written)["source_image"] == "cellule n°1 (x).tif"
    assert "wrote 1 file(s)" in capsys.readouterr().out


@pytest.fixture
def unwritable(monkeypatch):
    """Make every folder read-only for the project's writers, even when running as root."""

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    monkeypatch.setattr(os, "replace", refuse)


def test_cli_refuses_a_read_only_output_folder_before_any_work(messy, tiny, tmp_path, capsys,
                                                               unwritable):
    _, model_file = tiny
    rc = main(["predict", "--model", str(model_file), "--images", str(messy),
               "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert rc == 2
    assert "Permission denied" in one_line_error(capsys, "predict")
    assert not list((tmp_path / "out").iterdir())
    rc = main(["adapt", "--model", str(model_file), "--source", str(messy), "--target",
               str(messy), "--layer", "2", "--out", str(tmp_path / "o" / "a.pt"),
               "--patch", "16", "--device", "cpu"])
    assert rc == 2
    assert "cannot write into the folder of --out" in one_line_error(capsys, "adapt")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="needs POSIX permissions and a non-root user")
def test_cli_predict_into_a_chmod_read_only_folder(messy, tiny, tmp_path, capsys):
    _, model_file = tiny
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["predict", "--model", str(model_file), "--images", str(messy),
                     "--out", str(ro), "--device", "cpu"]) == 2
        assert "ro" in one_line_error(capsys, "predict")
    finally:
        ro.chmod(0o700)


def test_full_disk_when_saving_a_model_keeps_the_old_file(tiny, tmp_path, monkeypatch):
    model, _ = tiny
    path = save_model(model, tmp_path / "m.pt")
    before = path.read_bytes()

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OutputWriteError, match="No space left"):
        save_model(model, path, provenance={"v": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.pt"]


def test_full_disk_inside_torch_save_is_a_project_error(tiny, tmp_path, monkeypatch):
    """A real ENOSPC from the file object torch writes to (``/dev/full`` semantics)."""
    model, _ = tiny
    real_open = open

    def full_open(file, mode="r", *args, **kwargs):
        if "w" in mode and str(file).endswith(".tmp.pt") and os.path.exists("/dev/full"):
            return real_open("/dev/full", mode, *args, **kwargs)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_open)
    with pytest.raises(OutputWriteError):
        save_model(model, tmp_path / "m.pt")
    monkeypatch.undo()
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ model files
@pytest.mark.parametrize("kind,match", [
    ("text", r"is not a PyTorch model file: it looks like text starting with 'not a model'"),
    ("tiff", r"is not a PyTorch model file: it looks like a TIFF image"),
    ("truncated", r"is a truncated or damaged PyTorch file .*zip directory"),
    ("zip", r"is a zip archive but not a PyTorch model file"),
    ("pickle", r"refused to load .*plain Python pickle.*nothing was executed"),
    ("other-arch", r"does not fit the architecture it declares \(UNet with 3 down blocks, "
                   r"ngf 8.*wrong shape, e\.g\. 'down\.0\.0\.weight' is \(4, 1, 4, 4\)"),
    ("huge-arch", r"declares an impossible architecture: a UNet with 8 down blocks and ngf "
                  r"4000 has .* parameters; its weights need .*, more than"),
    ("bad-header", r"damaged header"),
    ("no-tensors", r"weights are not all tensors"),
    ("complex", r"holds complex numbers in 'down\.0\.0\.weight'"),
    ("bad-meta", r"invalid input percentiles 'abc'"),
    ("bad-names", r"invalid channel names \['only one'\] \(expected 2 names\)"),
    ("pix2pix-shape", r"looks like a pix2pix state dict but cannot be read: .*shape \(3,\)"),
])
def test_bad_model_files_give_one_line_that_says_what_was_found(tiny, tmp_path, kind, match):
    import pickle
    import zipfile

    _, good = tiny
    path = tmp_path / f"{kind}.pt"
    if kind == "text":
        path.write_bytes(b"not a model")
    elif kind == "tiff":
        tifffile.imwrite(path, np.zeros((4, 4), np.uint8))
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:5000])
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("rdf.yaml", "name: a bioimage.io package")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    elif kind == "pix2pix-shape":
        torch.save({"model.model.0.weight": torch.zeros(3)}, path)
    else:
        obj = torch.load(good, weights_only=True)
        if kind == "other-arch":
            obj["arch"]["ngf"] = 8
        elif kind == "huge-arch":  # would need terabytes if the network were built
            obj["arch"].update(ngf=4000, num_downs=8)
        elif kind == "bad-header":
            del obj["state_dict"]
        elif kind == "complex":
            obj["state_dict"]["down.0.0.weight"] = torch.zeros(4, 1, 4, 4, dtype=torch.complex64)
        elif kind == "bad-meta":
            obj["meta"]["input_percentiles"] = "abc"
        elif kind == "bad-names":
            obj["meta"]["channel_names"] = ["only one"]
        else:
            obj["state_dict"] = {"down.0.0.weight": [1.0, 2.0]}
        torch.save(obj, path)
    with pytest.raises(CheckpointError, match=match) as info:
        load_model(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_pix2pix_file_of_another_architecture_is_refused(tmp_path):
    torch.save({"model.0.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "resnet_net_G.pth")
    with pytest.raises(CheckpointError, match="neither a napari-lmadda model nor a pix2pix"):
        load_model(tmp_path / "resnet_net_G.pth")


# ------------------------------------------------------------------ every command, bad input
def _cases(root, model_file, messy):
    m, d = str(model_file), str(messy)
    empty = root / "empty"
    empty.mkdir(exist_ok=True)
    junk = root / "junk.pt"
    junk.write_bytes(b"not a model")
    adapt = ["adapt", "--model", m, "--source", d, "--target", d, "--out",
             str(root / "never.pt"), "--device", "cpu", "--patch", "16"]
    sweep = ["sweep", "--model", m, "--source", d, "--target", d, "--out", str(root / "sw")]
    train = ["train-source", "--inputs", d, "--targets", d, "--out", str(root / "never.pt"),
             "--patch", "16", "--num-downs", "3", "--ngf", "4", "--device", "cpu"]
    predict = ["predict", "--model", m, "--images", d, "--out", str(root / "p")]
    return {
        "adapt junk model": ([*adapt[:2], str(junk), *adapt[3:], "--layer", "2"], "junk.pt"),
        "adapt layer -1": ([*adapt, "--layer", "-1"], "layer"),
        "adapt layer 7": ([*adapt, "--layer", "7"], "out of range: this model has layers 1..6"),
        "adapt layer abc": ([*adapt, "--layer", "abc"], "cannot read layers"),
        "adapt multi 99": ([*adapt, "--method", "lmadda-multi", "--layer", "2,99"],
                           "out of range"),
        "adapt batch 0": ([*adapt, "--layer", "2", "--batch", "0"], "batch_size"),
        "adapt patch 0": ([*adapt, "--layer", "2", "--patch", "0"], "patch_size"),
        "adapt patch 12": ([*adapt, "--layer", "2", "--patch", "12"], "multiple of 8"),
        "adapt lr-d 0": ([*adapt, "--layer", "2", "--lr-d", "0"], "lr_d"),
        "adapt lr-g nan": ([*adapt, "--layer", "2", "--lr-g", "nan"], "lr_g"),
        "adapt lr-g inf": ([*adapt, "--layer", "2", "--lr-g", "inf"], "lr_g"),
        "adapt eval-every 0": ([*adapt, "--layer", "2", "--eval-every", "0"], "eval_every"),
        "adapt patience 0": ([*adapt, "--layer", "2", "--patience", "0"], "patience"),
        "adapt device": ([*adapt, "--layer", "2", "--device", "gpu7"], "unknown device"),
        "adapt empty source": ([*adapt[:4], str(empty), *adapt[5:], "--layer", "2"],
                               "no images"),
        "predict tile 0": ([*predict, "--tile", "0"], "--tile"),
        "predict overlap -1": ([*predict, "--overlap", "-1"], "--overlap"),
        "predict batch 0": ([*predict, "--batch", "0"], "--batch"),
        "predict out is a file": ([*predict[:-1], str(messy / "a_float.tif")], "is a file"),
        "predict images is a txt": ([*predict[:4], str(messy / "notes.txt"), *predict[5:]],
                                    "not an image file"),
        "train val-fraction 2": ([*train, "--val-fraction", "2"], "val"),
        "train val-patches 0": ([*train, "--val-patches", "0"], "val-patches"),
        "train num-downs 1": ([*train, "--num-downs", "1"], "num_downs"),
        "train ngf 0": ([*train, "--ngf", "0"], "ngf"),
        "train batch 0": ([*train, "--batch", "0"], "batch_size"),
        "train lambda-gan -1": ([*train, "--lambda-gan", "-1"], "lambda"),
        "train names": ([*train, "--channel-names", "A,B"], "2 channel name(s)"),
        "sweep layers 0-3": ([*sweep, "--layers", "0-3"], "out of range"),
        "sweep tile 0": ([*sweep, "--layers", "2", "--tile", "0"], "--tile"),
        "sweep bad method": ([*sweep, "--layers", "2", "--methods", "bogus"],
                             "unknown method"),
        "evaluate empty": (["evaluate", "--pred", str(empty), "--truth", d], "no images"),
        "evaluate missing": (["evaluate", "--pred", d, "--truth", str(root / "nope")],
                             "does not exist"),
        "evaluate metric": (["evaluate", "--pred", d, "--truth", d, "--metrics", "foo"],
                            "unknown metric"),
        "synthetic n 0": (["make-synthetic", "--out", str(root / "s"), "--n", "0"], "--n"),
        "synthetic size 3": (["make-synthetic", "--out", str(root / "s"), "--n", "1",
                              "--size", "3"], "size"),
        "synthetic density -1": (["make-synthetic", "--out", str(root / "s"), "--n", "1",
                                  "--density", "-1"], "density"),
        "synthetic out is a file": (["make-synthetic", "--out", str(messy / "a_float.tif"),
                                     "--n", "1"], "is a file"),
    }


_CASE_NAMES = [
    "adapt junk model", "adapt layer -1", "adapt layer 7", "adapt layer abc", "adapt multi 99",
    "adapt batch 0", "adapt patch 0", "adapt patch 12", "adapt lr-d 0", "adapt lr-g nan",
    "adapt lr-g inf", "adapt eval-every 0", "adapt patience 0", "adapt device",
    "adapt empty source", "predict tile 0", "predict overlap -1", "predict batch 0",
    "predict out is a file", "predict images is a txt", "train val-fraction 2",
    "train val-patches 0", "train num-downs 1", "train ngf 0", "train batch 0",
    "train lambda-gan -1", "train names", "sweep layers 0-3", "sweep tile 0",
    "sweep bad method", "evaluate empty", "evaluate missing", "evaluate metric",
    "synthetic n 0", "synthetic size 3", "synthetic density -1", "synthetic out is a file",
]


@pytest.mark.parametrize("case", _CASE_NAMES)
def test_every_command_gives_one_line_and_exit_2_for_bad_input(tiny, messy, tmp_path, capsys,
                                                               case):
    argv, match = _cases(tmp_path, tiny[1], messy)[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageWarning)
        assert main(argv) == 2
    assert match in one_line_error(capsys, argv[0])
    assert not (tmp_path / "never.pt").exists()


def test_an_unexpected_os_error_is_one_line_too(tiny, tmp_path, capsys, monkeypatch):
    import napari_lmadda.data.synthetic as synthetic

    def broken(*args, **kwargs):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(tmp_path / "x"))

    monkeypatch.setattr(synthetic, "write_domain", broken)
    assert main(["make-synthetic", "--out", str(tmp_path / "s"), "--n", "1"]) == 2
    assert "Is a directory: '" in one_line_error(capsys, "make-synthetic")


def test_errors_of_the_project_are_one_type():
    for err in (CheckpointError, ConfigError, EmptyFolderError, OutputWriteError):
        assert issubclass(err, LmaddaError)
