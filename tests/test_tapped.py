"""Any PyTorch image-to-image network adapted at a named module (issue 17).

The networks are the non-pix2pix architectures of ``arch_zoo.py`` (CARE-style UNet with
additive skips, residual UNet with ``out += identity``, a channels-last ConvNeXt-style UNet),
tiny. What must hold: the taps are the image-valued module calls in the order they run; a
tap's value is what the full forward computes there; the forward stops at the tap (modules
after it are never called); matching at a tap changes only the parameters of the modules
that ran before it; model files refer to the architecture code and never run it on load;
the project's UNet keeps its numbering.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from arch_zoo import CareUNet, NextUNet, ResUNet  # noqa: E402
from napari_lmadda.adapt.config import AdaptConfig  # noqa: E402
from napari_lmadda.adapt.engine import adapt  # noqa: E402
from napari_lmadda.errors import CheckpointError, ConfigError  # noqa: E402
from napari_lmadda.models import UNetGenerator, load_model, save_model  # noqa: E402
from napari_lmadda.models.arch import load_arch  # noqa: E402
from napari_lmadda.models.tapped import TappedModel, list_taps  # noqa: E402

ZOO = str(Path(__file__).parent / "arch_zoo.py")


def _tapped(cls, **kw) -> TappedModel:
    torch.manual_seed(0)
    net = cls(out_channels=2, **kw)
    for m in net.modules():  # BatchNorm statistics that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return TappedModel(net, input_size=32).eval()


def _reference_taps(model: TappedModel, x: torch.Tensor) -> dict[int, torch.Tensor]:
    """Every tap from one full forward, captured (cloned) by hooks: the ground truth."""
    out: dict[int, torch.Tensor] = {}
    modules = dict(model.net.named_modules())
    where = {(t.module, t.call): t.index for t in list_taps(model, 32)}
    counts: dict[str, int] = {}

    def hook(name):
        def f(mod, args, y):
            k = counts[name] = counts.get(name, 0) + 1
            if (name, k) in where:
                out[where[(name, k)]] = y.detach().clone()
        return f

    hs = [modules[n].register_forward_hook(hook(n)) for n in {m for m, _ in where}]
    with torch.no_grad():
        model.net(x)
    for h in hs:
        h.remove()
    return out


@pytest.mark.parametrize("cls", [CareUNet, ResUNet, NextUNet])
def test_taps_are_the_image_outputs_in_running_order(cls):
    model = _tapped(cls)
    taps = list_taps(model, 32)
    assert [t.index for t in taps] == list(range(1, model.num_layers + 1))
    assert taps[-1].name == "output" and taps[-1].channels == 2
    assert (taps[-1].height, taps[-1].width) == (32, 32)
    names = [t.name for t in taps]
    assert len(set(names)) == len(names)
    # parameters that train grow with the tap and end at every parameter that runs
    ups = [t.params_upto for t in taps]
    assert ups == sorted(ups) and ups[-1] == sum(p.numel() for p in model.parameters())
    # every tap is what the full forward computes there, also when several are asked for
    x = torch.randn(2, 1, 32, 32)
    ref = _reference_taps(model, x)
    with torch.no_grad():
        got = model.forward_taps(x, range(1, model.num_layers + 1))
        for i in (1, model.num_layers // 2, model.num_layers):
            single = model(x, upto=i)
            assert torch.equal(single, ref[i]), model.layer_name(i)
    for i, t in ref.items():
        assert torch.equal(got[i], t), model.layer_name(i)


def test_names_numbers_and_channels_last_blocks():
    care = _tapped(CareUNet)
    # containers returning their last child's output are one tap named after the container
    i = care.layer_index("enc.0")
    assert care.layer_index("enc.0.5") == i and care.layer_name(i) == "enc.0"
    assert care.layer_index("output") == care.num_layers == care.layer_index("head")
    assert care.layer_index(str(i)) == i
    # the pooling layer runs at every level: one tap per call
    assert care.layer_index("pool@2") == care.layer_index("pool") + 7
    assert care.min_size == 4 and care.level_layers()[-1] == care.num_layers
    with pytest.raises(ConfigError, match="no module named 'enc.9'"):
        care.layer_index("enc.9")
    nxt = _tapped(NextUNet)
    names = [t.name for t in list_taps(nxt, 32)]
    assert not any(n.split(".")[-1] in ("norm", "fc1", "act", "fc2") for n in names)
    with pytest.raises(ConfigError, match="not a tap"):
        nxt.layer_index("enc.fc1")  # channels-last (B, H, W, C): not an image tap


@pytest.mark.parametrize("cls,layer", [(CareUNet, "enc.1"), (ResUNet, "enc.1.0.bn2"),
                                       (ResUNet, "dec.1")])
def test_forward_stops_at_the_tap(cls, layer):
    model = _tapped(cls)
    at = model.layer_index(layer)
    taps = list_taps(model, 32)
    ran: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, a, y, n=n: ran.append(n))
             for n, m in model.net.named_modules() if n]
    model.forward_taps(torch.randn(1, 1, 32, 32), (at,))
    for h in hooks:
        h.remove()
    after = {t.module for t in taps[at:]} - {t.module for t in taps[:at]}
    assert ran and ran[-1] == taps[at - 1].module
    assert not after & set(ran)  # no module that runs only after the tap was called
    assert "head" not in ran


@pytest.mark.parametrize("cls,layer", [(CareUNet, "enc.1"), (CareUNet, "dec.0"),
                                       (ResUNet, "enc.2.0.relu")])
def test_only_modules_before_the_tap_change(cls, layer, domains):
    src, tgt = domains
    model = _tapped(cls)
    at = model.layer_index(layer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = AdaptConfig(steps=4, batch_size=2, patch_size=32, eval_every=2, eval_patches=4,
                      ndf=4, device="cpu", criterion="last", ema_decay=0.0, lr_g=1e-2)
    res = adapt(model, src, tgt, method="lmadda", layers=layer, config=cfg)
    assert res.best_step == 4
    allowed = {f"net.{n}" for i in range(1, at + 1)
               for n, p in model.net.named_parameters()
               if any(p is q for q in model.block(i).parameters())}
    changed = {k for k, v in res.model.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, before[k])}
    assert changed and changed <= allowed
    # the first encoder convolution feeds every tap: it trains wherever we match
    first = next(n for n, _ in model.net.named_parameters())
    assert f"net.{first}" in changed
    # what runs after the tap is the source model's
    later = {f"net.{n}" for n, _ in model.net.named_parameters()} - allowed
    assert later and not later & changed


def test_decoder_tap_trains_the_encoder_feeding_it():
    model = _tapped(CareUNet)
    dec = model.layer_index("dec.0")
    trained = {id(p) for i in range(1, dec + 1) for p in model.block(i).parameters()}
    for name, p in model.net.named_parameters():
        assert (id(p) in trained) == (not name.startswith(("dec.1", "up.1", "head"))), name


def test_adabn_and_adda_run_on_any_model(domains):
    src, tgt = domains
    model = _tapped(ResUNet)
    cfg = AdaptConfig(steps=2, batch_size=2, patch_size=32, eval_every=2, eval_patches=4,
                      ndf=4, device="cpu")
    bn = adapt(model, src, tgt, method="adabn", layers="enc.1", config=cfg).model
    at = model.layer_index("enc.1")
    moved = {n for n, b in bn.named_buffers() if "running_mean" in n
             and not torch.equal(b, dict(model.named_buffers())[n])}
    owned = {f"net.{n}.running_mean" for i in range(1, at + 1)
             for m in model.block(i).modules() if isinstance(m, nn.BatchNorm2d)
             for n, mm in model.net.named_modules() if mm is m}
    assert moved and moved == owned
    out = adapt(model, src, tgt, method="adda", config=cfg).model
    assert isinstance(out, TappedModel) and out.num_layers == model.num_layers
    with pytest.raises(ConfigError, match="project's UNet"):
        adapt(model, src, tgt, method="apma", config=cfg)


def test_model_file_refers_to_the_code_and_never_runs_it(tmp_path, monkeypatch):
    net = CareUNet(out_channels=2, ngf=8)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    model = load_arch(f"{ZOO}:CareUNet", kwargs={"out_channels": 2, "ngf": 8},
                      weights=tmp_path / "w.pt", input_size=32,
                      meta={"channel_names": ["DAPI", "CD29"]})
    save_model(model, tmp_path / "m.pt")
    # a plain load refuses, naming the --arch to give, and imports nothing
    imported = set(sys.modules)
    with pytest.raises(CheckpointError, match=r"--arch .*arch_zoo.py:CareUNet --arch-kwargs"):
        load_model(tmp_path / "m.pt")
    from napari_lmadda.models.arch import stored_arch

    header = stored_arch(tmp_path / "m.pt")  # what a GUI shows before asking to run code
    assert header["arch"]["class"] == "CareUNet" and header["input_size"] == 32
    assert not any(m.startswith("_lmadda_arch") for m in set(sys.modules) - imported)
    again = load_arch(f"{ZOO}:CareUNet", weights=tmp_path / "m.pt")
    assert again.meta["channel_names"] == ["DAPI", "CD29"]
    assert again.config.arch["kwargs"] == {"out_channels": 2, "ngf": 8}
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    # the weights load as data only
    import pickle

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"w": object()}))
    with pytest.raises(CheckpointError, match="refused|not a PyTorch"):
        load_arch(f"{ZOO}:CareUNet", weights=tmp_path / "evil.pt")


def test_code_files_are_format_4_with_per_channel_target_norm(tmp_path, monkeypatch):
    """Version 4 = code reference + version 3's per-channel targets; no reader misreads it."""
    import napari_lmadda.models.checkpoint as ckpt
    from napari_lmadda.data.normalize import TargetNorm
    from napari_lmadda.models.arch import stored_arch

    norm = {"target_range": [[0.0, 1.0], [100.0, 4000.0]],
            "target_norm": {"mode": "dataset", "percentiles": [0.1, 99.9],
                            "units": "target"}}
    model = load_arch(f"{ZOO}:CareUNet", kwargs={"out_channels": 2, "ngf": 8},
                      input_size=32, meta=norm)
    save_model(model, tmp_path / "m.pt")
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw["format_version"] == 4
    again = load_arch(f"{ZOO}:CareUNet", weights=tmp_path / "m.pt")
    assert TargetNorm.from_meta(again.meta, 2) == TargetNorm.from_meta(norm, 2)
    # the version-3 reader of main reads up to 3: "newer", never a default UNet
    monkeypatch.setattr(ckpt, "FORMAT_VERSION", 3)
    with pytest.raises(CheckpointError, match=r"newer napari-lmadda \(format version 4\)"):
        load_model(tmp_path / "m.pt")
    monkeypatch.undo()
    # files of the development branch said version 3 with a code reference: still recognised
    raw["format_version"] = 3
    torch.save(raw, tmp_path / "dev.pt")
    with pytest.raises(CheckpointError, match=r"--arch .*arch_zoo.py:CareUNet"):
        load_model(tmp_path / "dev.pt")
    assert stored_arch(tmp_path / "dev.pt")["arch"]["class"] == "CareUNet"


def test_bad_architectures_and_weights_one_line(tmp_path):
    with pytest.raises(ConfigError, match="expected path/to/file.py:ClassName"):
        load_arch("arch_zoo.py")
    with pytest.raises(ConfigError, match="does not exist"):
        load_arch(str(tmp_path / "none.py") + ":X")
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nraise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match="fails to import .*boom"):
        load_arch(f"{bad}:X")
    with pytest.raises(ConfigError, match="defines no class or function 'Nope'"):
        load_arch(f"{ZOO}:Nope")
    torch.save(ResUNet().state_dict(), tmp_path / "res.pt")
    with pytest.raises(CheckpointError, match="do not fit CareUNet"):
        load_arch(f"{ZOO}:CareUNet", weights=tmp_path / "res.pt")
    odd = tmp_path / "odd.py"
    odd.write_text("import torch\nclass Shrink(torch.nn.Module):\n"
                   "    def __init__(self):\n        super().__init__()\n"
                   "        self.c = torch.nn.Conv2d(1, 1, 3)\n"
                   "    def forward(self, x):\n        return self.c(x)\n")
    with pytest.raises(ConfigError, match="output of the input's size"):
        load_arch(f"{odd}:Shrink", input_size=32)


def test_torchscript_predicts_but_is_refused_for_adaptation(tmp_path, domains):
    from napari_lmadda.cli._arch import load_cli_model
    from napari_lmadda.inference.predict import predict_image
    from napari_lmadda.models.arch import ScriptedModel, is_torchscript

    net = CareUNet(out_channels=2, ngf=4).eval()
    torch.jit.trace(net, torch.zeros(1, 1, 32, 32)).save(str(tmp_path / "care.ts"))
    assert is_torchscript(tmp_path / "care.ts")
    with pytest.raises(ConfigError, match="TorchScript model cannot be adapted"):
        TappedModel(torch.jit.load(str(tmp_path / "care.ts")))
    import argparse

    args = argparse.Namespace(arch=str(tmp_path / "care.ts"), model=None, weights=None)
    model = load_cli_model(args)
    assert isinstance(model, ScriptedModel) and model.min_size == 4
    img = np.random.default_rng(0).random((40, 52)).astype(np.float32)
    y = predict_image(model, img, tile=32, overlap=8)
    assert y.shape == (2, 40, 52)
    src, tgt = domains
    with pytest.raises(ConfigError, match="cannot be adapted"):
        adapt(model, src, tgt, method="lmadda", layers="3", config=AdaptConfig(steps=1))
    with pytest.raises(ConfigError, match="cannot be adapted"):
        list_taps(model)


def test_project_unet_keeps_its_numbering_and_gets_names():
    from napari_lmadda.adapt.engine import layer_resolver, parse_layers

    unet = UNetGenerator(num_downs=5, ngf=8)
    assert parse_layers("bottleneck,up7,2", unet.num_layers, layer_resolver(unet)) == (2, 5, 7)
    taps = list_taps(unet, 64)
    assert [t.index for t in taps] == list(range(1, 11))
    assert [t.name for t in taps][:5] == ["down1", "down2", "down3", "down4", "bottleneck"]
    assert taps[-1].params_upto == sum(p.numel() for p in unet.parameters())
    # wrapping the project's UNet finds its blocks' outputs among the taps
    tapped = TappedModel(copy.deepcopy(unet), input_size=64)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(tapped(x, upto=tapped.layer_index("down.1")), unet(x, upto=2))


def test_several_input_channels(tmp_path):
    """A 2-channel model adapts on 2-channel images and predicts (C, H, W); a mismatch is
    refused with one line."""
    import tifffile

    from napari_lmadda.cli.adapt import open_images
    from napari_lmadda.inference.predict import predict_image

    model = TappedModel(CareUNet(in_channels=2, out_channels=1, ngf=4), input_size=32).eval()
    assert model.config.in_channels == 2
    rng = np.random.default_rng(0)
    src = rng.random((3, 2, 48, 48)).astype(np.float32)
    tgt = (rng.random((3, 2, 48, 48)) * 3 + 1).astype(np.float32)
    cfg = AdaptConfig(steps=2, batch_size=2, patch_size=32, eval_every=2, eval_patches=4,
                      ndf=4, device="cpu", criterion="last")
    res = adapt(model, src, tgt, method="lmadda", layers="enc.1", config=cfg)
    assert res.best_step == 2
    y = predict_image(res.model, tgt[0], tile=32, overlap=8)
    assert y.shape == (1, 48, 48) and np.isfinite(y).all()
    with pytest.raises(ConfigError, match="takes 2 input channels but was given one"):
        predict_image(res.model, tgt[0, 0])
    with pytest.raises(ConfigError, match="2-D"):
        predict_image(res.model, tgt[0, :1])
    # a folder of 2-page TIFFs: two planes per item
    for i in range(2):
        tifffile.imwrite(tmp_path / f"f{i}.tif", (tgt[i] * 1000).astype(np.uint16))
    stacks = open_images(tmp_path, model, "--target")
    assert len(stacks) == 2 and stacks[0].shape == (2, 48, 48)
    tifffile.imwrite(tmp_path / "f2.tif", (tgt[2, 0] * 1000).astype(np.uint16))
    with pytest.raises(ConfigError, match="f2.tif' has 1 plane"):
        open_images(tmp_path, model, "--target")
    # a grey model given 2-channel stacks: refused by the model's input check
    grey = _tapped(CareUNet)
    with pytest.raises(ConfigError, match="takes 1 input channel"):
        adapt(grey, src, tgt, method="lmadda", layers="enc.1", config=cfg)


def test_bioimageio_export_ships_the_architecture_file(tmp_path):
    """export-bioimageio of an --arch network: its file and state dict in the package; the
    package refuses to load as data and rebuilds with the code when asked."""
    pytest.importorskip("bioimageio.spec")
    from napari_lmadda.bioimageio import export_bioimageio
    from napari_lmadda.models.arch import load_bioimageio_tapped

    torch.manual_seed(0)
    model = load_arch(f"{ZOO}:CareUNet", kwargs={"out_channels": 2, "depth": 2, "ngf": 4},
                      input_size=32, meta={"channel_names": ["DAPI", "CD29"],
                                           "target_range": [-0.05, 1.05]})
    path = export_bioimageio(model, tmp_path / "care.zip",
                             sample=np.random.default_rng(0).random((64, 64)))
    import zipfile

    assert "arch_zoo.py" in zipfile.ZipFile(path).namelist()
    with pytest.raises(CheckpointError, match="CareUNet network whose architecture is code"):
        load_model(path)
    again = load_bioimageio_tapped(path, input_size=32)
    assert again.meta["channel_names"] == ["DAPI", "CD29"]
    assert again.meta["input_percentiles"] == [1.0, 99.8]
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
