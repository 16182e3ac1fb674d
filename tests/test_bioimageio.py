"""bioimage.io packages: export passes bioimageio.core's test, import round-trips, no code runs."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_lmadda.errors import CheckpointError, ConfigError, OutputExistsError
from napari_lmadda.inference.predict import predict_image
from napari_lmadda.models import UNetGenerator, load_model, save_model

pytest.importorskip("bioimageio.spec")


def _uint12(seed: int = 0, size: int = 256) -> np.ndarray:
    """A synthetic phase-contrast field stored as a camera would: 12 bits in uint16."""
    from napari_lmadda.data.synthetic import make_domain

    img = make_domain(1, size=size, seed=seed)["input"][0]
    return (img / img.max() * 3800 + 180).astype(np.uint16)


def _rdf(path: Path) -> dict:
    import yaml

    with zipfile.ZipFile(path) as zf:
        return yaml.safe_load(zf.read("rdf.yaml"))


# ------------------------------------------------------------------ the architecture file
def test_unet_file_loads_alone_without_the_package(tmp_path):
    """bioimage.io imports the architecture as a lone module: no package-relative imports."""
    import napari_lmadda.models.unet as unet

    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('lone_unet', {unet.__file__!r})\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['lone_unet'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "assert not [m for m in sys.modules if m.startswith('napari_lmadda')]\n"
        "net = mod.UNetGenerator(num_downs=3, ngf=4, out_channels=2)\n"
        "print(sum(p.numel() for p in net.parameters()))\n"
        "try:\n    mod.UNetConfig(norm='group')\nexcept ValueError as e:\n    print('refused')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-1500:]
    n = sum(p.numel() for p in UNetGenerator(num_downs=3, ngf=4, out_channels=2).parameters())
    assert out.stdout.split() == [str(n), "refused"]


def test_unet_errors_stay_the_package_type():
    from napari_lmadda.errors import ConfigError as PackageConfigError
    from napari_lmadda.models.unet import UNetConfig

    with pytest.raises(PackageConfigError):
        UNetConfig(norm="group")
    with pytest.raises(PackageConfigError, match="multiple of 8"):
        UNetGenerator(num_downs=3, ngf=4)(torch.zeros(1, 1, 12, 12))


# ------------------------------------------------------------------ export + bioimageio test
@pytest.fixture(scope="module")
def demo_package(tmp_path_factory):
    from napari_lmadda.bioimageio import export_bioimageio

    out = tmp_path_factory.mktemp("bio") / "demo.bioimageio.zip"
    return export_bioimageio("demo", out, sample=_uint12(), authors=["Test Author"])


@pytest.fixture(scope="module")
def adapted_package(tmp_path_factory, domains):
    from napari_lmadda.adapt.config import AdaptConfig
    from napari_lmadda.adapt.engine import adapt
    from napari_lmadda.bioimageio import export_bioimageio

    src, tgt = domains
    cfg = AdaptConfig(steps=2, batch_size=2, patch_size=64, eval_every=1, eval_patches=2, ndf=8,
                      device="cpu")
    res = adapt(load_model("demo"), src, tgt, method="lmadda", layers=3, config=cfg)
    folder = tmp_path_factory.mktemp("adapted")
    model_file = save_model(res.model, folder / "adapted.pt", provenance={
        "method": res.method, "layers": list(res.layers), "best_step": res.best_step,
        "source_dir": "/data/phase_contrast", "target_dir": "/data/overexposed"})
    return model_file, export_bioimageio(model_file, folder / "adapted.bioimageio.zip")


@pytest.mark.slow
@pytest.mark.parametrize("which", ["demo", "adapted"])
def test_export_passes_bioimageio_core_test(which, demo_package, adapted_package):
    pytest.importorskip("bioimageio.core")
    from napari_lmadda.bioimageio.export import test_bioimageio_package

    path = demo_package if which == "demo" else adapted_package[1]
    passed, line = test_bioimageio_package(path)
    assert passed, line


def test_export_metadata(demo_package, adapted_package):
    from napari_lmadda.bioimageio import PAPER_AUTHORS, PAPER_TITLE

    rdf = _rdf(demo_package)
    assert rdf["format_version"].startswith("0.5")
    cite = rdf["cite"][0]["text"]
    assert PAPER_TITLE in cite and all(a in cite for a in PAPER_AUTHORS)
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["DAPI", "CD29"]
    pre = [s["id"] for s in rdf["inputs"][0]["preprocessing"] if s["id"] != "ensure_dtype"]
    assert pre == ["scale_range", "scale_linear"]
    assert rdf["inputs"][0]["preprocessing"][1]["kwargs"]["max_percentile"] == 99.8
    post = rdf["outputs"][0]["postprocessing"][0]["kwargs"]
    assert post["gain"] == pytest.approx([0.55, 0.55]) and post["offset"] == pytest.approx(
        [0.5, 0.5])  # the demo's target range (-0.05, 1.05)
    assert set(rdf["weights"]) == {"torchscript", "pytorch_state_dict"}
    adapted = _rdf(adapted_package[1])
    assert "LM-ADDA" in adapted["description"] and "layer 3" in adapted["description"]
    assert "overexposed" in adapted["description"]
    with zipfile.ZipFile(adapted_package[1]) as zf:
        readme = zf.read("README.md").decode()
    assert "/data/phase_contrast" in readme and "## Validation" in readme


def test_test_tensors_are_the_projects_prediction(demo_package):
    """The package's test output is predict_image's output on its (12-bit) test input."""
    with zipfile.ZipFile(demo_package) as zf:
        x = np.load(io.BytesIO(zf.read("test_input.npy")))
        y = np.load(io.BytesIO(zf.read("test_output.npy")))
    assert x.shape == (1, 1, 256, 256) and x.max() > 1000  # raw 12-bit intensities
    np.testing.assert_allclose(y[0], predict_image(load_model("demo"), x[0, 0], tile=256,
                                                   overlap=0), rtol=0, atol=1e-6)


def test_torchscript_runs_without_the_package(demo_package, tmp_path):
    """The TorchScript weights alone reproduce the network (eval mode: no dropout noise)."""
    with zipfile.ZipFile(demo_package) as zf:
        (tmp_path / "w.pt").write_bytes(zf.read("weights_torchscript.pt"))
    code = (
        "import sys, torch\n"
        "net = torch.jit.load('w.pt')\n"
        "torch.manual_seed(0); x = torch.randn(2, 1, 128, 192)\n"
        "a, b = net(x), net(x)\n"
        "assert not [m for m in sys.modules if m.startswith('napari_lmadda')]\n"
        "torch.save(a, 'out.pt'); print(tuple(a.shape), bool(torch.equal(a, b)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.split() == ["(2,", "2,", "128,", "192)", "True"]
    torch.manual_seed(0)
    x = torch.randn(2, 1, 128, 192)
    with torch.no_grad():
        want = load_model("demo")(x)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), want, atol=1e-5, rtol=1e-4)


def test_per_channel_stain_units_in_the_postprocessing(tmp_path):
    """A model whose channels have their own ranges: the spec steps reproduce the test output."""
    from napari_lmadda.bioimageio import export_bioimageio
    from napari_lmadda.data.normalize import TargetNorm

    torch.manual_seed(0)
    model = UNetGenerator(num_downs=3, ngf=4, out_channels=2).eval()
    norm = TargetNorm((0.0, 100.0), (1.0, 4000.0), mode="dataset", percentiles=(0.5, 99.5))
    model.meta = {"channel_names": ["DAPI", "CD29"], "input_percentiles": [2.0, 99.0],
                  **norm.to_meta()}
    path = export_bioimageio(model, tmp_path / "pc.zip", sample=_uint12(size=64))
    rdf = _rdf(path)
    post = rdf["outputs"][0]["postprocessing"][0]["kwargs"]
    assert post["gain"] == pytest.approx([0.5, 1950.0])
    assert post["offset"] == pytest.approx([0.5, 2050.0])
    with zipfile.ZipFile(path) as zf:
        x = np.load(io.BytesIO(zf.read("test_input.npy")))[0, 0].astype(np.float64)
        want = np.load(io.BytesIO(zf.read("test_output.npy")))[0]
        net = torch.jit.load(io.BytesIO(zf.read("weights_torchscript.pt")))
    lo, hi = np.percentile(x, [2.0, 99.0])  # scale_range, then scale_linear(2, -1)
    pre = 2 * (x - lo) / (hi - lo + 1e-6) - 1
    with torch.no_grad():
        y = net(torch.from_numpy(pre.astype(np.float32))[None, None])[0].numpy()
    got = np.asarray(post["gain"])[:, None, None] * y + np.asarray(post["offset"])[:, None, None]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    assert np.ptp(want[1]) > 10 * np.ptp(want[0])  # the CD29 channel is in its own units


# ------------------------------------------------------------------ import: round trips
def test_round_trip_demo_predictions_equal(demo_package):
    original = load_model("demo")
    back = load_model(demo_package)  # load_model recognises the package
    assert type(back) is type(original) and back.config == original.config
    assert back.meta == original.meta
    img = _uint12(seed=5, size=320)[:200]  # 200 x 320: padded and tiled
    np.testing.assert_array_equal(predict_image(back, img), predict_image(original, img))


def test_imported_package_adapts(demo_package, domains):
    """A package loads as a model the engine adapts (only the layers up to the tap change)."""
    from napari_lmadda.adapt.config import AdaptConfig
    from napari_lmadda.adapt.engine import adapt

    model = load_model(demo_package)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    src, tgt = domains
    cfg = AdaptConfig(steps=2, batch_size=2, patch_size=64, eval_every=1, eval_patches=2, ndf=8,
                      lr_g=1e-2, ema_decay=0.0, criterion="last", device="cpu")
    res = adapt(model, src, tgt, method="lmadda", layers=2, config=cfg)
    after = res.model.state_dict()
    changed = {k.split(".")[0] + "." + k.split(".")[1] for k in before
               if not torch.equal(before[k], after[k])}
    assert changed and changed <= {"down.0", "down.1"}


def test_round_trip_adapted_model(adapted_package):
    model_file, package = adapted_package
    original, back = load_model(model_file), load_model(package)
    assert back.meta["provenance"]["method"] == "lmadda"
    img = _uint12(seed=2)
    np.testing.assert_array_equal(predict_image(back, img), predict_image(original, img))


@pytest.mark.slow
def test_scgan_model_exports_as_one_network(tmp_path):
    pytest.importorskip("bioimageio.core")
    from napari_lmadda.bioimageio import export_bioimageio
    from napari_lmadda.bioimageio.export import test_bioimageio_package
    from napari_lmadda.models.translated import TranslatedModel, Translator, TranslatorConfig

    g = load_model("demo")
    torch.manual_seed(0)
    t = Translator(TranslatorConfig(ngf=4, n_blocks=1))
    torch.nn.init.normal_(t.head[1].weight, 0.0, 0.02)  # not the identity
    model = TranslatedModel(t, g).eval()
    model.meta = {**g.meta, "provenance": {"method": "scgan", "target_dir": "bf/"}}
    path = export_bioimageio(model, tmp_path / "scgan.zip", sample=_uint12())
    assert set(_rdf(path)["weights"]) == {"torchscript"}
    back = load_model(path)
    assert isinstance(back, TranslatedModel)
    img = _uint12(seed=3)
    np.testing.assert_array_equal(predict_image(back, img), predict_image(model, img))
    assert np.abs(predict_image(back, img) - predict_image(g, img)).max() > 1e-3
    passed, line = test_bioimageio_package(path)
    assert passed, line


# ------------------------------------------------------------------ import: other packages
def _write_package(path: Path, sd: dict, *, arch_code: str, pre=None, post=None,
                   channel_names=("nuclei",), tamper: bool = False) -> Path:
    import yaml

    buf = io.BytesIO()
    torch.save(sd, buf)
    weights = buf.getvalue()
    code = arch_code.encode()
    rdf = {
        "type": "model", "format_version": "0.5.4", "name": "someone else's UNet",
        "inputs": [{"id": "raw", "axes": [{"type": "batch"}, {"type": "channel",
                                                              "channel_names": ["bf"]},
                                          {"type": "space", "id": "y", "size": 32},
                                          {"type": "space", "id": "x", "size": 32}],
                    "preprocessing": pre if pre is not None else [
                        {"id": "scale_range", "kwargs": {"axes": ["y", "x"],
                                                         "min_percentile": 2.0,
                                                         "max_percentile": 99.0}},
                        {"id": "scale_linear", "kwargs": {"gain": 2.0, "offset": -1.0}}]}],
        "outputs": [{"id": "stain", "axes": [{"type": "batch"},
                                             {"type": "channel",
                                              "channel_names": list(channel_names)}],
                     "postprocessing": post if post is not None else [
                         {"id": "scale_linear", "kwargs": {"gain": 0.5, "offset": 0.5}}]}],
        "weights": {"pytorch_state_dict": {
            "source": "weights.pt",
            "sha256": hashlib.sha256(weights + (b"x" if tamper else b"")).hexdigest(),
            "architecture": {"source": "arch.py", "callable": "Net", "kwargs": {},
                             "sha256": hashlib.sha256(code).hexdigest()},
            "pytorch_version": "2.1"}},
    }
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("rdf.yaml", yaml.safe_dump(rdf))
        zf.writestr("weights.pt", weights)
        zf.writestr("arch.py", code)
    return path


def _marker_code(marker: Path) -> str:
    return (f"open({str(marker)!r}, 'w').write('ran')\n"
            "import torch\n"
            "from torch import nn\n"
            "class Net(nn.Module):\n"
            "    def __init__(self):\n"
            "        super().__init__(); self.w = nn.Conv2d(1, 1, 1)\n"
            "    def forward(self, x):\n"
            "        return self.w(x)\n")


def test_foreign_pix2pix_package_loads_without_running_its_code(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from pix2pix_reference import NestedUnet

    torch.manual_seed(1)
    ref = NestedUnet(1, 1, 5, ngf=8, norm="batch").eval()
    marker = tmp_path / "ran.txt"
    path = _write_package(tmp_path / "p2p.zip", ref.state_dict(), arch_code=_marker_code(marker))
    model = load_model(path)
    assert not marker.exists()  # opening a package never runs its architecture file
    assert model.config.num_downs == 5 and model.config.ngf == 8
    assert model.meta["input_percentiles"] == [2.0, 99.0]
    assert model.meta["target_range"] == [0.0, 1.0]  # 0.5 * y + 0.5
    assert model.meta["channel_names"] == ["nuclei"]
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=1e-4)


def test_spec_0_4_step_names_are_read(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from pix2pix_reference import NestedUnet

    pre = [{"name": "scale_range", "kwargs": {"mode": "per_sample", "axes": "xy",
                                              "min_percentile": 0.5, "max_percentile": 99.5}},
           {"name": "scale_linear", "kwargs": {"gain": 2.0, "offset": -1.0}}]
    post = [{"name": "scale_linear", "kwargs": {"gain": 2.0, "offset": 1.0}}]
    path = _write_package(tmp_path / "v04.zip", NestedUnet(1, 1, 5, ngf=8).state_dict(),
                          arch_code="", pre=pre, post=post)
    model = load_model(path)
    assert model.meta["input_percentiles"] == [0.5, 99.5]
    assert model.meta["target_range"] == [-1.0, 3.0]


def test_package_code_runs_only_when_asked(tmp_path):
    from napari_lmadda.bioimageio import load_bioimageio_architecture

    marker = tmp_path / "ran.txt"
    sd = {"w.weight": torch.ones(1, 1, 1, 1), "w.bias": torch.zeros(1)}
    path = _write_package(tmp_path / "other.zip", sd, arch_code=_marker_code(marker))
    with pytest.raises(CheckpointError, match="not a pix2pix-style UNet"):
        load_model(path)
    assert not marker.exists()
    net = load_bioimageio_architecture(path)  # the explicit, code-running path
    assert marker.read_text() == "ran"
    with torch.no_grad():
        assert float(net(torch.full((1, 1, 4, 4), 2.0)).mean()) == 2.0


@pytest.mark.parametrize(("kind", "match"), [
    ("tamper", "does not match its sha256"),
    ("zmuv", r"input preprocessing \(zero_mean_unit_variance\) is not napari-lmadda's"),
    ("sigmoid", r"output postprocessing \(sigmoid\) cannot be reproduced"),
])
def test_bad_foreign_packages_one_line(tmp_path, kind, match):
    sys.path.insert(0, str(Path(__file__).parent))
    from pix2pix_reference import NestedUnet

    sd = NestedUnet(1, 1, 5, ngf=8).state_dict()
    kw = {"tamper": {"tamper": True},
          "zmuv": {"pre": [{"id": "zero_mean_unit_variance"}]},
          "sigmoid": {"post": [{"id": "sigmoid"}]}}[kind]
    path = _write_package(tmp_path / "bad.zip", sd, arch_code="", **kw)
    with pytest.raises(CheckpointError, match=match) as info:
        load_model(path)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ refusals and the CLI
def test_export_refusals(tmp_path, demo_package, monkeypatch):
    from napari_lmadda.bioimageio import export_bioimageio

    with pytest.raises(OutputExistsError):
        export_bioimageio("demo", demo_package)
    multi = UNetGenerator(in_channels=2, num_downs=3, ngf=4)
    with pytest.raises(ConfigError, match="2 input channels"):
        export_bioimageio(multi, tmp_path / "m.zip")
    with pytest.raises(ConfigError, match="not an SPDX license"):
        export_bioimageio("demo", tmp_path / "l.zip", license="MIT License")
    with pytest.raises(ConfigError, match="smaller than"):
        export_bioimageio("demo", tmp_path / "s.zip", sample=np.ones((32, 300)))
    monkeypatch.setitem(sys.modules, "bioimageio.spec.model", None)
    with pytest.raises(ConfigError, match=r"napari-lmadda\[bioimageio\]"):
        export_bioimageio("demo", tmp_path / "x.zip")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_cli_export(tmp_path, capsys):
    from napari_lmadda.cli import main

    out = tmp_path / "demo.bioimageio.zip"
    assert main(["export-bioimageio", "--model", "demo", "--out", str(out),
                 "--author", "A. Person"]) == 0
    assert "wrote" in capsys.readouterr().out and out.is_file()
    assert main(["export-bioimageio", "--model", "demo", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
