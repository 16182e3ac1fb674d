"""Hostile and careless inputs (issue 14): memory decided before decoding, no tracebacks.

Each test here failed on the code before the fix. Memory is tested by what is decoded or
allocated (spies on the decoders, an address-space limit in a child process), never by time.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_lmadda.data import io as lio
from napari_lmadda.errors import ImageReadError

SRC = str(Path(__file__).resolve().parents[1] / "src")


def bomb_tiff(path: Path, side: int, tile: int = 512) -> Path:
    """A zlib-tiled uint16 TIFF declaring ``side`` x ``side`` zeros: a few kB on disk."""
    encoded = zlib.compress(np.zeros((tile, tile), np.uint16).tobytes(), 9)
    n = (-(-side // tile)) ** 2
    tifffile.imwrite(path, iter([encoded] * n), shape=(side, side), dtype="uint16",
                     tile=(tile, tile), compression="zlib")
    return path


@pytest.fixture
def decodes(monkeypatch):
    """Count every pixel decode tifffile is asked for (page, series or file)."""
    calls: list[str] = []
    for owner, name in ((tifffile.TiffPage, "asarray"), (tifffile.TiffPageSeries, "asarray"),
                        (tifffile.TiffFile, "asarray"), (tifffile.TiffPage, "decode")):
        real = getattr(owner, name)

        def spy(*args, _real=real, _name=f"{owner.__name__}.{name}", **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)
    return calls


@pytest.fixture
def small_budget(monkeypatch):
    monkeypatch.setenv("LMADDA_MEMORY_BUDGET", "64M")


def good_folder(folder: Path, n: int = 3, size: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        tifffile.imwrite(folder / f"img{i}.tif", rng.integers(0, 4000, (size, size), np.uint16))
    return folder


# ------------------------------------------------------------------ 1. decompression bombs
def test_a_bomb_is_refused_from_its_header_before_any_pixel_is_decoded(
        tmp_path, small_budget, decodes):
    bomb = bomb_tiff(tmp_path / "bomb.tif", 8192)  # 128 MiB of uint16, 256 MiB as float32
    assert bomb.stat().st_size < 300_000
    for read in (lio.read_planes, lio.read_image, lambda p: lio.read_plane(p, 0)):
        with pytest.raises(ImageReadError) as err:
            read(bomb)
        msg = str(err.value)
        assert "bomb.tif" in msg and "8192x8192" in msg and "memory" in msg
        assert "\n" not in msg
    assert decodes == []


def test_budget_follows_the_environment_and_the_address_space_limit(monkeypatch):
    from napari_lmadda import memory

    monkeypatch.setenv("LMADDA_MEMORY_BUDGET", "3G")
    assert memory.memory_budget() == 3 * 2**30
    monkeypatch.delenv("LMADDA_MEMORY_BUDGET")
    assert memory.memory_budget() <= memory.BUDGET_FRACTION * memory.available_memory() + 1
    assert memory.parse_bytes("512M") == 512 * 2**20
    with pytest.raises(ValueError):
        memory.parse_bytes("lots")


def test_napari_reader_skips_a_bomb_among_good_files(tmp_path, small_budget, monkeypatch,
                                                     decodes):
    import napari_lmadda._reader as reader

    folder = good_folder(tmp_path / "imgs")
    bomb_tiff(folder / "bomb.tif", 8192)
    shown: list[tuple[str, str]] = []
    monkeypatch.setattr(reader, "_notify", lambda kind, msg: shown.append((kind, msg)))
    layers = reader.read_folder(str(folder))
    assert len(layers) == 1 and layers[0][0].shape == (3, 64, 64)
    assert any(kind == "warning" and "bomb.tif" in msg and "memory" in msg
               for kind, msg in shown)
    assert all("bomb" not in c for c in decodes)  # only the good files were decoded


def _child(code: str, limit_gib: float, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a child Python under an address-space limit (``ulimit -v``)."""
    limit = int(limit_gib * 2**30)

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    env.pop("LMADDA_MEMORY_BUDGET", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                          preexec_fn=cap, capture_output=True, text=True, timeout=600)


def test_the_real_40000_pixel_bomb_is_skipped_under_a_1_5_gib_address_space_limit(tmp_path):
    """The issue's file: 3 MB declaring 40000x40000 uint16 (3 GiB, 6 GiB as float32)."""
    folder = good_folder(tmp_path / "imgs")
    bomb_tiff(folder / "bomb.tif", 40000, tile=1024)
    r = _child("""
        import sys
        from napari_lmadda.data.groups import read_image_groups
        groups, skipped = read_image_groups(sys.argv[1])
        print(len(groups[0].planes), "|".join(skipped))
    """, 1.5, str(folder))
    assert r.returncode == 0, r.stderr[-2000:]
    n, skipped = r.stdout.strip().split(" ", 1)
    assert n == "3" and "bomb.tif" in skipped and "40000x40000" in skipped


def test_adapt_skips_a_bomb_among_good_files_and_never_names_a_tile_option(
        tmp_path, tiny_model_path, small_budget, capsys):
    from napari_lmadda.cli import main

    src = good_folder(tmp_path / "src")
    tgt = good_folder(tmp_path / "tgt")
    bomb_tiff(tgt / "bomb.tif", 8192)
    code = main(["adapt", "--model", str(tiny_model_path), "--source", str(src),
                 "--target", str(tgt), "--method", "lmadda", "--layer", "2", "--steps", "2",
                 "--eval-every", "1", "--batch", "2", "--patch", "32",
                 "--out", str(tmp_path / "a.pt")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "bomb.tif" in err and "--tile" not in err
    assert (tmp_path / "a.pt").exists()


def test_out_of_memory_hint_names_only_options_the_command_has(monkeypatch, capsys):
    import napari_lmadda.cli.adapt as adapt_cli
    from napari_lmadda.cli import build_parser, main

    def oom(args):
        raise MemoryError

    monkeypatch.setattr(adapt_cli, "run", oom)
    assert main(["adapt", "--model", "m", "--source", ".", "--target", ".", "--method",
                 "none", "--out", "x.pt"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "out of memory" in err
    options = {o for a in build_parser()._subparsers._group_actions[0].choices["adapt"]._actions
               for o in a.option_strings}
    named = {w.strip(",()") for w in err.split() if w.startswith("--")}
    assert named and named <= options


def test_predict_skips_an_image_whose_tiff_output_does_not_fit(tmp_path, tiny_model_path,
                                                               small_budget, capsys, decodes):
    from napari_lmadda.cli import main

    images = good_folder(tmp_path / "imgs")
    bomb_tiff(images / "bomb.tif", 8192)
    code = main(["predict", "--model", str(tiny_model_path), "--images", str(images),
                 "--out", str(tmp_path / "out"), "--workers", "1"])
    out, err = capsys.readouterr()
    assert code == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "img0_pred.tif", "img1_pred.tif", "img2_pred.tif"]
    line = [ln for ln in err.splitlines() if "bomb.tif" in ln]
    assert line and "ome-zarr" in line[0]
    assert all("bomb" not in c for c in decodes)


def test_predict_streams_a_large_plane_to_ome_zarr_within_the_budget(
        tmp_path, tiny_model_path, monkeypatch):
    """A plane whose output exceeds the budget is read, predicted and written band by band."""
    import tracemalloc

    import zarr

    from napari_lmadda.inference import predict_dask as pdk
    from napari_lmadda.models import load_model

    monkeypatch.setattr(pdk, "LAZY_PIXELS", 256 * 256)
    monkeypatch.setattr(pdk, "NORM_SAMPLE_PIXELS", 128 * 128)  # percentiles from a sample
    rng = np.random.default_rng(1)
    img = rng.integers(0, 4000, (1024, 768), np.uint16)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "big.tif", img, tile=(128, 128))
    model = load_model(tiny_model_path)
    out_bytes = 2 * img.size * 4  # the 2-channel float32 prediction: 6 MiB
    opts = dict(tile=64, overlap=8, chunk=128)
    whole = pdk.predict_lazy(model, img, **opts).compute(scheduler="synchronous")
    monkeypatch.setenv("LMADDA_MEMORY_BUDGET", str(out_bytes * 2 // 3))
    tracemalloc.start()
    report = pdk.predict_folder_dask(model, tmp_path / "in", tmp_path / "out",
                                     out_format="ome-zarr", scheduler="threads", workers=2,
                                     **opts)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert not report.skipped, report.skipped
    got = np.asarray(zarr.open_group(str(tmp_path / "out" / "big_pred.ome.zarr"))["0"])
    np.testing.assert_array_equal(got, whole)  # the same tiles, blends and decoding
    assert peak < out_bytes  # never the whole output (nor the whole input) at once


def test_ome_zarr_temp_folder_is_removed_when_the_work_fails(tmp_path, tiny_model_path,
                                                             monkeypatch):
    from napari_lmadda.inference import predict_dask as pdk
    from napari_lmadda.models import load_model

    images = good_folder(tmp_path / "imgs", n=2)

    import dask.array

    def boom(*args, **kwargs):
        raise MemoryError("simulated")

    monkeypatch.setattr(dask.array, "store", boom)  # after the temporary folder is made
    with pytest.raises(MemoryError):
        pdk.predict_folder_dask(load_model(tiny_model_path), images, tmp_path / "out",
                                out_format="ome-zarr", scheduler="synchronous")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_model_zip_bomb_is_refused_from_its_zip_directory(tmp_path, tiny_model_path,
                                                            small_budget, monkeypatch):
    import zipfile

    import torch

    from napari_lmadda.errors import CheckpointError
    from napari_lmadda.models import load_model

    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(tiny_model_path) as zin, zipfile.ZipFile(
            bomb, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = data + b"\x00" * (256 * 2**20)  # inflates to 256 MiB
            zout.writestr(item.filename, data)
    assert bomb.stat().st_size < 2 * 2**20
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    with pytest.raises(CheckpointError) as err:
        load_model(bomb)
    assert "bomb.pt" in str(err.value) and "MiB" in str(err.value) and loads == []


# ------------------------------------------------------------------ 2. long multi-page TIFFs
def test_a_tiff_with_more_pages_than_the_limit_is_refused_after_counting_them(
        tmp_path, decodes, monkeypatch):
    path = tmp_path / "long.tif"
    tifffile.imwrite(path, np.zeros((lio.MAX_PAGES + 1, 8, 8), np.uint8), metadata=None)
    parsed = []
    real_init = tifffile.TiffPage.__init__

    def count_init(self, *args, **kwargs):
        parsed.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffPage, "__init__", count_init)
    for read in (lio.probe_image, lio.read_planes, lambda p: lio.read_plane(p, 0)):
        with pytest.raises(ImageReadError, match=rf"more than {lio.MAX_PAGES} pages"):
            read(path)
    assert decodes == [] and parsed == []  # counted from the IFD chain, no page parsed


def test_many_one_page_series_are_indexed_as_one_stack(tmp_path):
    """600 pages written one by one: tifffile's per-series scan is quadratic; not used."""
    path = tmp_path / "pages.tif"
    data = np.arange(600 * 8 * 8, dtype=np.uint16).reshape(600, 8, 8)
    with tifffile.TiffWriter(path) as w:
        for page in data:
            w.write(page)
    info = lio.probe_image(path)
    assert len(info.series) == 1 and info.n_planes == 600
    planes = lio.read_planes(path)
    np.testing.assert_array_equal(np.stack(planes), data.astype(np.float32))
    np.testing.assert_array_equal(lio.read_plane(path, 599), data[599])


def test_long_tiff_in_predict_and_adapt_is_one_line(tmp_path, tiny_model_path, capsys):
    from napari_lmadda.cli import main

    images = good_folder(tmp_path / "imgs", n=2)
    tifffile.imwrite(images / "long.tif", np.zeros((lio.MAX_PAGES + 5, 8, 8), np.uint8),
                     metadata=None)
    code = main(["predict", "--model", str(tiny_model_path), "--images", str(images),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and f"more than {lio.MAX_PAGES} pages" in err


# ------------------------------------------------------------------ 3. architecture fields
def _with_arch(src: Path, dst: Path, **arch) -> Path:
    import torch

    obj = torch.load(src, weights_only=True)
    obj["arch"] = {**obj["arch"], **arch}
    torch.save(obj, dst)
    return dst


@pytest.mark.parametrize("field,value,match", [
    ("ngf", 10**9, r"ngf must be a whole number in 1\.\.4096, got 1000000000"),
    ("ngf", "4", r"ngf must be a whole number in 1\.\.4096, got '4'"),
    ("ngf", 4.5, r"ngf must be a whole number in 1\.\.4096, got 4\.5"),
    ("ngf", True, r"ngf must be a whole number"),
    ("num_downs", 40, r"num_downs must be a whole number in 2\.\.12, got 40"),
    ("in_channels", -1, r"in_channels must be a whole number in 1\.\.64"),
    ("out_channels", None, r"out_channels must be a whole number"),
    ("norm", 3, r"norm must be one of batch, instance, none, got 3"),
    ("use_dropout", "yes", r"use_dropout must be true or false, got 'yes'"),
    ("bias", 2, r"bias must be true, false or None, got 2"),
])
def test_every_architecture_field_is_checked_for_type_and_range(tmp_path, tiny_model_path,
                                                                 field, value, match):
    from napari_lmadda.errors import CheckpointError
    from napari_lmadda.models import load_model, read_checkpoint

    path = _with_arch(tiny_model_path, tmp_path / "m.pt", **{field: value})
    for load in (load_model, read_checkpoint):
        with pytest.raises(CheckpointError, match=match) as err:
            load(path)
        assert "m.pt" in str(err.value) and "\n" not in str(err.value)


def test_a_model_too_large_for_memory_is_refused_before_it_is_built(tmp_path, monkeypatch):
    from napari_lmadda.errors import CheckpointError, ConfigError
    from napari_lmadda.models.checkpoint import validate_architecture

    arch = {"num_downs": 8, "ngf": 4096, "out_channels": 2}
    monkeypatch.setenv("LMADDA_MEMORY_BUDGET", "1G")
    with pytest.raises(ConfigError, match=r"parameters; .*GiB, more than the 1\.0 GiB"):
        validate_architecture(arch)
    cfg = validate_architecture({"num_downs": 3, "ngf": 4})
    assert cfg.ngf == 4 and cfg.num_downs == 3
    with pytest.raises(CheckpointError):
        validate_architecture(arch, path="x.pt")


def test_train_source_refuses_a_huge_ngf_before_building(tmp_path, capsys, monkeypatch):
    from napari_lmadda.cli import main
    from napari_lmadda.models import unet

    built = []
    real = unet.UNetGenerator.__init__
    monkeypatch.setattr(unet.UNetGenerator, "__init__",
                        lambda self, *a, **k: built.append(1) or real(self, *a, **k))
    inputs, targets = good_folder(tmp_path / "in"), good_folder(tmp_path / "dapi")
    code = main(["train-source", "--inputs", str(inputs), "--targets", str(targets),
                 "--out", str(tmp_path / "g.pt"), "--ngf", "100000000", "--num-downs", "3",
                 "--patch", "32", "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "ngf" in err
    assert built == []


# ------------------------------------------------------------------ 4. disk filling mid-save
class _FillingFile:
    """A file on a disk that fills up after ``room`` bytes (ENOSPC mid-write, as on tmpfs)."""

    def __init__(self, fh, room: int):
        self.fh, self.room = fh, room

    def write(self, data) -> int:
        import errno

        n = len(memoryview(data).cast("B"))
        if n > self.room:
            self.fh.write(bytes(memoryview(data).cast("B")[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= n
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def _disk_fills_after(monkeypatch, room: int | None):
    """Make every write of a temporary ``.tmp`` file fail after ``room`` bytes (None: at once)."""
    import builtins

    real_open = builtins.open

    def filling_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        if "w" in mode and ".tmp" in os.path.basename(str(file)):
            return _FillingFile(fh, 0 if room is None else room)
        return fh

    monkeypatch.setattr(builtins, "open", filling_open)


@pytest.mark.parametrize("room", [None, 100, 5000])
def test_a_disk_filling_during_a_save_is_the_full_disk_message_and_leaves_nothing(
        tmp_path, monkeypatch, room):
    import torch

    from napari_lmadda.errors import OutputWriteError
    from napari_lmadda.models.checkpoint import atomic_torch_save

    _disk_fills_after(monkeypatch, room)
    with pytest.raises(OutputWriteError) as err:
        atomic_torch_save({"w": torch.zeros(100_000)}, tmp_path / "state.run")
    monkeypatch.undo()
    assert str(err.value) == f"cannot write '{tmp_path / 'state.run'}': No space left on device"
    assert err.value.__cause__ is None or isinstance(err.value.__cause__, OSError)
    assert list(tmp_path.iterdir()) == []


def test_adapt_run_state_on_a_filling_disk_is_one_line(tmp_path, tiny_model_path, monkeypatch,
                                                       capsys):
    from napari_lmadda.cli import main

    src, tgt = good_folder(tmp_path / "src"), good_folder(tmp_path / "tgt")
    out = tmp_path / "out"
    out.mkdir()
    _disk_fills_after(monkeypatch, 3000)
    code = main(["adapt", "--model", str(tiny_model_path), "--source", str(src), "--target",
                 str(tgt), "--method", "lmadda", "--layer", "2", "--steps", "2", "--eval-every",
                 "1", "--batch", "2", "--patch", "32", "--out", str(out / "a.pt")])
    monkeypatch.undo()
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.splitlines()[-1].endswith("No space left on device") and "Traceback" not in err
    assert [p.name for p in out.iterdir() if ".tmp" in p.name] == []


# ------------------------------------------------------------------ 5. silently wrong results
def test_non_finite_weights_are_refused_at_load(tmp_path, tiny_model_path):
    import torch

    from napari_lmadda.errors import CheckpointError
    from napari_lmadda.models import load_model

    obj = torch.load(tiny_model_path, weights_only=True)
    key = next(k for k, v in obj["state_dict"].items() if v.is_floating_point())
    obj["state_dict"][key] = torch.full_like(obj["state_dict"][key], float("nan"))
    torch.save(obj, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=rf"non-finite weights.*'{key}'"):
        load_model(tmp_path / "nan.pt")


def test_napari_reader_refuses_a_nan_model(tmp_path, tiny_model_path, make_napari_viewer, errors):
    import torch

    from napari_lmadda._reader import get_reader
    from napari_lmadda.widgets.state import get_state

    obj = torch.load(tiny_model_path, weights_only=True)
    for v in obj["state_dict"].values():
        if v.is_floating_point():
            v.fill_(float("inf"))
    torch.save(obj, tmp_path / "inf.pt")
    viewer = make_napari_viewer()
    get_reader(str(tmp_path / "inf.pt"))(str(tmp_path / "inf.pt"))
    assert get_state(viewer).model is None
    assert errors and "non-finite weights" in errors[0]


@pytest.mark.parametrize("argv", [
    ["make-synthetic", "--n", "1", "--size", "32", "--shift", "overexpose", "--magnitude", "nan"],
    ["make-synthetic", "--n", "1", "--size", "32", "--density", "inf"],
    ["evaluate", "--pred", "P", "--truth", "T", "--threshold", "nan"],
])
def test_non_finite_options_are_refused(tmp_path, argv, capsys):
    from napari_lmadda.cli import main

    good_folder(tmp_path / "P")
    good_folder(tmp_path / "T")
    argv = [str(tmp_path / a) if a in ("P", "T") else a for a in argv]
    if argv[0] == "make-synthetic":
        argv += ["--out", str(tmp_path / "synth")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and ("finite" in err or "nan" in err or "inf" in err)
    assert not (tmp_path / "synth").exists()


def test_generators_and_configs_refuse_non_finite_values():
    from napari_lmadda.data.synthetic import make_domain
    from napari_lmadda.errors import ConfigError
    from napari_lmadda.training import SourceTrainConfig

    for bad in (float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="magnitude"):
            make_domain(1, size=32, shift="overexpose", magnitude=bad)
        with pytest.raises(ConfigError, match="density"):
            make_domain(1, size=32, density=bad)
        with pytest.raises(ConfigError, match="lambda_gan"):
            SourceTrainConfig(lambda_gan=bad)
        with pytest.raises(ConfigError, match="lambda_l1"):
            SourceTrainConfig(lambda_l1=bad)


def test_every_float_option_of_every_command_refuses_nan(tmp_path, tiny_model_path, capsys):
    """Found from the parser, so an option added later is covered too."""
    from napari_lmadda.cli import build_parser, main

    good_folder(tmp_path / "a")
    base = {
        "train-source": ["--inputs", "a", "--targets", "a", "--out", "o.pt", "--steps", "1",
                         "--num-downs", "3", "--ngf", "2", "--patch", "32"],
        "adapt": ["--model", "M", "--source", "a", "--target", "a", "--out", "o.pt",
                  "--method", "none"],
        "sweep": ["--model", "M", "--source", "a", "--target", "a", "--truth", "a", "--out",
                  "sw", "--layers", "1", "--steps", "1"],
        "recommend-layer": ["--model", "M", "--source", "a", "--target", "a"],
        "evaluate": ["--pred", "a", "--truth", "a"],
        "make-synthetic": ["--out", "s", "--n", "1", "--size", "32"],
    }
    sub = build_parser()._subparsers._group_actions[0].choices
    cases = [(cmd, a.option_strings[0]) for cmd, p in sub.items() for a in p._actions
             if a.type is float]
    assert {c for c, _ in cases} <= set(base), cases
    os.chdir(tmp_path)
    for cmd, flag in cases:
        args = [str(tiny_model_path) if x == "M" else x for x in base[cmd]]
        code = main([cmd, *args, flag, "nan"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0, (cmd, flag, err)


# ------------------------------------------------------------------ 7. outputs inside inputs
@pytest.mark.parametrize("inside", ["same", "sub"])
def test_predict_refuses_an_out_folder_inside_the_images(tmp_path, tiny_model_path, capsys,
                                                         inside):
    from napari_lmadda.cli import main
    from napari_lmadda.errors import ConfigError
    from napari_lmadda.inference.predict import predict_folder
    from napari_lmadda.inference.predict_dask import predict_folder_dask
    from napari_lmadda.models import load_model

    images = good_folder(tmp_path / "imgs", n=2)
    out = images if inside == "same" else images / "stains"
    assert main(["predict", "--model", str(tiny_model_path), "--images", str(images),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--out" in err and "inside" in err
    model = load_model(tiny_model_path)
    for fn in (predict_folder, predict_folder_dask):
        with pytest.raises(ConfigError, match="inside"):
            fn(model, images, out)
    assert sorted(p.name for p in images.iterdir()) == ["img0.tif", "img1.tif"]


def test_own_predictions_are_never_taken_as_inputs(tmp_path, tiny_model_path, capsys):
    from napari_lmadda.cli import main

    images = good_folder(tmp_path / "imgs", n=2)
    assert main(["predict", "--model", str(tiny_model_path), "--images", str(images),
                 "--out", str(tmp_path / "out")]) == 0
    # a careless user copies the predictions (renamed, even) in with the inputs
    (tmp_path / "out" / "img0_pred.tif").rename(images / "renamed.tif")
    capsys.readouterr()
    assert main(["predict", "--model", str(tiny_model_path), "--images", str(images),
                 "--out", str(tmp_path / "out2")]) == 0
    out, err = capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == [
        "img0_pred.tif", "img1_pred.tif"]
    assert "renamed.tif" in err and "prediction" in err


def test_an_interrupted_predict_resumes_with_skip_existing(tmp_path, tiny_model_path, capsys):
    from napari_lmadda.cli import main

    images = good_folder(tmp_path / "imgs", n=3)
    out = tmp_path / "out"
    argv = ["predict", "--model", str(tiny_model_path), "--images", str(images), "--out",
            str(out), "--uncertainty", "--uncertainty-samples", "2"]
    assert main(argv) == 0
    kept = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / "img1_pred.tif").unlink()  # the run was interrupted before these were written
    (out / "img2_trust.tif").unlink()
    assert main(argv) == 2  # existing outputs: refused, and the message says what to do
    assert "--skip-existing" in capsys.readouterr().err
    assert main([*argv, "--skip-existing"]) == 0
    now = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert sorted(now) == sorted(kept)
    for name in ("img0_pred.tif", "img0_trust.tif", "img1_trust.tif", "img2_pred.tif"):
        assert now[name] == kept[name], name  # complete outputs were not recomputed
    assert "kept 2" in capsys.readouterr().out
    assert main([*argv, "--skip-existing", "--overwrite"]) == 2


# ------------------------------------------------------------------ 8. the README pipeline
def _readme_commands() -> list[list[str]]:
    import shlex

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = text.split("## On the command line", 1)[1].split("```bash", 1)[1].split("```")[0]
    return [shlex.split(line.split("  #")[0])[1:] for line in block.splitlines()
            if line.startswith("lmadda ")]


def test_the_readme_pipeline_runs_as_written(tmp_path, monkeypatch, capsys):
    """Each documented command, in order, on small synthetic folders named as in the README.

    Only run-time options are appended (argparse: the last value wins), to make the run
    small; every documented option and folder stays as written.
    """
    import json
    import shutil

    from napari_lmadda.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["make-synthetic", "--out", "src", "--n", "4", "--size", "64"]) == 0
    assert main(["make-synthetic", "--out", "tgt", "--n", "3", "--size", "64", "--seed", "7",
                 "--modality", "brightfield"]) == 0
    shutil.move("src/input", "pc")
    shutil.move("src/dapi", "dapi")
    shutil.move("src/cd29", "cd29")
    shutil.move("tgt/input", "bf")
    shutil.move("tgt", "bf_truth")  # bf_truth/dapi, bf_truth/cd29: the truth of bf/
    small = {
        "train-source": ["--steps", "2", "--num-downs", "3", "--ngf", "4", "--patch", "32",
                         "--batch", "2", "--val-patches", "2"],
        "adapt": ["--steps", "2", "--eval-every", "1", "--batch", "2", "--patch", "32"],
        "predict": ["--tile", "64"],
        "sweep": ["--layers", "2", "--seeds", "0", "--steps", "2", "--eval-every", "1",
                  "--batch", "2", "--patch", "32", "--methods", "", "--tile", "64"],
        "make-synthetic": ["--size", "32"],
    }
    commands = _readme_commands()
    assert [c[0] for c in commands] == ["train-source", "adapt", "predict", "sweep",
                                        "evaluate", "make-synthetic"]
    for argv in commands:
        code = main([*argv, *small.get(argv[0], [])])
        out, err = capsys.readouterr()
        assert code == 0, (argv, err[-2000:])
    scores = json.loads(Path("scores.json").read_text())
    assert scores["names"] == ["field_000_pred.tif", "field_001_pred.tif",
                               "field_002_pred.tif"]
    assert scores["channel"] == "DAPI"
    assert all(-1 <= v <= 1 for v in scores["per_image"]["pearson"])


def test_evaluate_matches_prediction_channels_by_name(tmp_path, capsys):
    from napari_lmadda.cli import main
    from napari_lmadda.data.io import write_tiff
    from napari_lmadda.evaluation.metrics import evaluate_folders

    rng = np.random.default_rng(0)
    pred, truth = tmp_path / "stains", tmp_path / "truth"
    pred.mkdir()
    for marker in ("dapi", "cd29", "other"):
        (truth / marker).mkdir(parents=True)
    stains = rng.random((2, 2, 16, 16), np.float32)  # two fields, channels DAPI and CD29
    for i in range(2):
        write_tiff(pred / f"f{i}_pred.tif", stains[i], axes="CYX",
                   channel_names=["DAPI", "CD29"], metadata={"source_image": f"f{i}.tif",
                                                             "model": {}})
        tifffile.imwrite(truth / "dapi" / f"f{i}.tif", stains[i, 0])
        tifffile.imwrite(truth / "cd29" / f"f{i}.tif", stains[i, 1])
        tifffile.imwrite(truth / "other" / f"f{i}.tif", stains[i, 1])
    for marker, c in (("dapi", 0), ("cd29", 1)):
        r = evaluate_folders(pred, truth / marker)
        assert r["channel"] == ["DAPI", "CD29"][c]
        assert r["per_image"]["pearson"] == pytest.approx([1.0, 1.0])
    r = evaluate_folders(pred, truth / "other", channel="cd29")
    assert r["channel"] == "CD29" and r["per_image"]["pearson"] == pytest.approx([1.0, 1.0])
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth / "other")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--channel" in err and "DAPI, CD29" in err


# ------------------------------------------------------------------ 9. smaller points
def test_a_tampered_run_state_step_is_refused(tmp_path, tiny_model_path, capsys):
    import shutil

    import torch

    from napari_lmadda.adapt.config import AdaptConfig
    from napari_lmadda.adapt.engine import adapt
    from napari_lmadda.cli import main
    from napari_lmadda.errors import CheckpointError
    from napari_lmadda.models import load_model

    src, tgt = good_folder(tmp_path / "src"), good_folder(tmp_path / "tgt")
    cfg = AdaptConfig(steps=2, eval_every=1, batch_size=2, patch_size=32)
    state = tmp_path / "a.pt.run"
    adapt(load_model(tiny_model_path), src, tgt, method="lmadda", layers=2, config=cfg,
          run_state=state)
    st = torch.load(state, weights_only=True)
    st["step"] = 10**9
    torch.save(st, state)
    with pytest.raises(CheckpointError, match=r"step \(1000000000.*0\.\.2 steps"):
        adapt(load_model(tiny_model_path), src, tgt, method="lmadda", layers=2, config=cfg,
              run_state=state)
    shutil.copy(state, tmp_path / "b.pt.run")
    assert main(["adapt", "--model", str(tiny_model_path), "--source", str(src), "--target",
                 str(tgt), "--method", "lmadda", "--layer", "2", "--steps", "2",
                 "--eval-every", "1", "--batch", "2", "--patch", "32", "--out",
                 str(tmp_path / "b.pt"), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "1000000000" in err and "kept step" not in err


def test_napari_refuses_a_model_for_colour_input(tmp_path, make_napari_viewer, errors):
    from napari_lmadda._reader import get_reader
    from napari_lmadda.models import UNetGenerator, save_model
    from napari_lmadda.widgets.state import get_state

    path = save_model(UNetGenerator(num_downs=3, ngf=4, in_channels=3), tmp_path / "rgb.pt")
    viewer = make_napari_viewer()
    get_reader(str(path))(str(path))
    assert get_state(viewer).model is None
    assert errors and "3 input channels" in errors[0]


def test_predict_image_gives_one_line_errors_for_device_and_size(tiny_model_path):
    from napari_lmadda.errors import ConfigError
    from napari_lmadda.inference.predict import predict_image
    from napari_lmadda.models import load_model

    model = load_model(tiny_model_path)
    with pytest.raises(ConfigError, match="cuda:3"):
        predict_image(model, np.zeros((32, 32), np.uint16), device="cuda:3")
    huge = np.broadcast_to(np.zeros(1, np.uint16), (40000, 40000))  # no memory of its own
    with pytest.raises(ConfigError, match=r"40000x40000 image needs .*GiB.*predict_lazy"):
        predict_image(model, huge)


@pytest.mark.parametrize("layers", [2.5, [2, 2.5], True, "2.5"])
def test_adapt_layers_must_be_whole_numbers(domains, tiny_model_path, layers):
    from napari_lmadda.adapt.engine import adapt
    from napari_lmadda.errors import ConfigError
    from napari_lmadda.models import load_model

    src, tgt = domains
    with pytest.raises(ConfigError, match="layers"):
        adapt(load_model(tiny_model_path), src, tgt, method="lmadda", layers=layers)


def test_a_killed_ome_zarr_predict_leaves_no_temporary_folder(tmp_path, tiny_model_path):
    """SIGTERM (kill, timeout, a batch scheduler) cleans up like Ctrl-C."""
    import signal
    import time

    images = tmp_path / "imgs"
    images.mkdir()
    tifffile.imwrite(images / "big.tif", np.random.default_rng(0).integers(
        0, 4000, (3072, 3072), np.uint16), tile=(256, 256))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "napari_lmadda", "predict", "--model",
                             str(tiny_model_path), "--images", str(images), "--out", str(out),
                             "--format", "ome-zarr", "--workers", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and list(out.glob(".*.tmp"))):
        time.sleep(0.2)
    assert list(out.glob(".*.tmp")), "the run never started writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    assert list(out.iterdir()) == []
