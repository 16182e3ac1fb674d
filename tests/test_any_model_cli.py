"""``lmadda`` with a network given as architecture code: train, list, adapt, predict, refuse.

A user's sequence on tiny folders: ``train-source --arch`` trains a CARE-style UNet from
``tests/arch_zoo.py``; ``layers`` lists its taps; ``adapt --arch ... --layer <module>``
adapts it; ``predict`` with and without ``--arch``; ``recommend-layer`` on it; bad input gives
one line and exit code 2. ``fid``, ``export-bioimageio`` and ``sweep`` take the same
``--arch file.py:Class --weights w.pt`` as every other command.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import tifffile
import torch

from cli_helpers import one_line_error
from napari_lmadda.cli import main
from napari_lmadda.data.synthetic import write_domain

ARCH = f"{Path(__file__).parent / 'arch_zoo.py'}:CareUNet"
KW = json.dumps({"out_channels": 2, "depth": 2, "ngf": 8})
TINY = ["--batch", "2", "--patch", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("anycli")
    write_domain(root / "src", 4, size=64, seed=0)
    write_domain(root / "tgt", 3, size=64, seed=1, shift="brightfield")
    return root


def test_train_list_adapt_predict_with_architecture_code(ws, capsys):
    src, tgt = str(ws / "src/input"), str(ws / "tgt/input")
    model = ws / "care.pt"
    rc = main(["train-source", "--inputs", src, "--targets", str(ws / "src/dapi"),
               "--targets", str(ws / "src/cd29"), "--channel-names", "DAPI,CD29",
               "--out", str(model), "--steps", "2", "--eval-every", "2", "--arch", ARCH,
               "--arch-kwargs", KW, "--input-size", "64", *TINY])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()

    # opening the file does not run its architecture: the message names the --arch to give
    rc = main(["layers", "--model", str(model)])
    assert rc == 2
    assert "--arch" in one_line_error(capsys, "layers")
    assert main(["layers", "--model", str(model), "--arch", ARCH, "--size", "64"]) == 0
    text = capsys.readouterr().out
    # the keyword arguments stored in the file (depth 2) rebuild it: 37 taps
    assert "enc.1" in text and "output" in text and "37 layers" in text

    out = ws / "adapted.pt"
    rc = main(["adapt", "--arch", ARCH, "--model", str(model), "--source", src,
               "--target", tgt, "--layer", "enc.1", "--out", str(out), "--steps", "2",
               "--eval-every", "2", *TINY])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "(enc.1)" in text and f"wrote {out}" in text
    # the adapted file: a reference to the code and the kept weights, no code
    saved = torch.load(out, weights_only=True)
    assert saved["format_version"] == 4 and saved["arch"]["arch"]["class"] == "CareUNet"
    prov = saved["meta"]["provenance"]
    assert prov["layer_names"] == ["enc.1"] and prov["method"] == "lmadda"
    assert saved["meta"]["channel_names"] == ["DAPI", "CD29"]

    preds = ws / "preds"
    rc = main(["predict", "--arch", ARCH, "--model", str(out), "--images", tgt,
               "--out", str(preds), "--device", "cpu", "--tile", "32"])
    assert rc == 0, capsys.readouterr().err
    files = sorted(preds.glob("*.tif"))
    assert len(files) == 3 and tifffile.imread(files[0]).shape == (2, 64, 64)

    # export: the adapted file needs its --arch; the package then adapts with --allow-code
    pkg = ws / "adapted.bioimageio.zip"
    rc = main(["export-bioimageio", "--model", str(out), "--out", str(pkg)])
    assert rc == 2 and "--arch" in one_line_error(capsys, "export-bioimageio")
    rc = main(["export-bioimageio", "--arch", ARCH, "--model", str(out), "--out", str(pkg)])
    assert rc == 0 and pkg.is_file(), capsys.readouterr().err
    capsys.readouterr()
    rc = main(["adapt", "--model", str(pkg), "--allow-code", "--source", src, "--target", tgt,
               "--layer", "bottom", "--out", str(ws / "again.pt"), "--steps", "1", *TINY])
    assert rc == 0, capsys.readouterr().err
    assert "(bottom)" in capsys.readouterr().out

    rc = main(["recommend-layer", "--arch", ARCH, "--model", str(model), "--source", src,
               "--target", tgt, "--patches", "8", "--patch", "32", "--probe-steps", "0",
               "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    # the command to run next names the module, as `lmadda layers` lists it
    assert re.search(r"--layer (enc|bottom|dec|up|output)", capsys.readouterr().out)


def test_plain_state_dict_with_options_and_refusals(ws, capsys, tmp_path):
    from arch_zoo import CareUNet

    torch.save(CareUNet(out_channels=2, depth=2, ngf=8).state_dict(), tmp_path / "w.pt")
    src, tgt = str(ws / "src/input"), str(ws / "tgt/input")
    out = tmp_path / "a.pt"
    rc = main(["adapt", "--arch", ARCH, "--arch-kwargs", KW, "--weights",
               str(tmp_path / "w.pt"), "--source", src, "--target", tgt, "--method", "adabn",
               "--layer", "bottom", "--percentiles", "2,99", "--channel-names", "Nuc,Mem",
               "--out", str(out), "--steps", "2", *TINY])
    assert rc == 0, capsys.readouterr().err
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["input_percentiles"] == [2.0, 99.0]
    assert meta["channel_names"] == ["Nuc", "Mem"]

    bad = {
        "weights without arch": ["adapt", "--weights", str(tmp_path / "w.pt")],
        "arch without weights": ["adapt", "--arch", ARCH, "--arch-kwargs", KW],
        "unknown module": ["adapt", "--arch", ARCH, "--arch-kwargs", KW, "--weights",
                           str(tmp_path / "w.pt"), "--layer", "enc.7"],
        "kwargs not json": ["adapt", "--arch", ARCH, "--arch-kwargs", "{depth: 2}",
                            "--weights", str(tmp_path / "w.pt")],
        "wrong names": ["adapt", "--arch", ARCH, "--arch-kwargs", KW, "--weights",
                        str(tmp_path / "w.pt"), "--layer", "enc.1", "--channel-names", "A"],
        "apma": ["adapt", "--arch", ARCH, "--arch-kwargs", KW, "--weights",
                 str(tmp_path / "w.pt"), "--method", "apma"],
    }
    expect = {"weights without arch": "--weights needs --arch",
              "arch without weights": "needs its trained weights",
              "unknown module": "no module named 'enc.7'",
              "kwargs not json": "not valid JSON", "wrong names": "1 name(s)",
              "apma": "project's UNet"}
    for case, argv in bad.items():
        rc = main([*argv, "--source", src, "--target", tgt, "--out",
                   str(tmp_path / "x.pt"), "--steps", "1", *TINY])
        assert rc == 2, case
        assert expect[case] in one_line_error(capsys, "adapt"), case


def test_bioimageio_package_with_architecture_code(ws, capsys, tmp_path):
    """A package whose network is not a pix2pix UNet: refused as data, adapted with
    --allow-code at a module name, the adapted file reloaded with --arch <package>."""
    from arch_zoo import CareUNet
    from test_bioimageio import _write_package

    marker = tmp_path / "ran.txt"
    code = ((Path(__file__).parent / "arch_zoo.py").read_text()
            + f"\nopen({str(marker)!r}, 'w').write('ran')\n"
            + "\nclass Net(CareUNet):\n    def __init__(self):\n"
            "        super().__init__(out_channels=1, depth=2, ngf=4)\n")
    torch.manual_seed(0)
    sd = CareUNet(out_channels=1, depth=2, ngf=4).state_dict()
    pkg = _write_package(tmp_path / "care.zip", sd, arch_code=code)
    src, tgt = str(ws / "src/input"), str(ws / "tgt/input")
    common = ["--source", src, "--target", tgt, "--steps", "2", "--eval-every", "2", *TINY]
    out = tmp_path / "adapted.pt"
    rc = main(["adapt", "--model", str(pkg), "--layer", "enc.1", "--out", str(out), *common])
    assert rc == 2 and "not a pix2pix-style UNet" in one_line_error(capsys, "adapt")
    assert not marker.exists()  # the package's code did not run
    rc = main(["adapt", "--model", str(pkg), "--allow-code", "--layer", "enc.1",
               "--out", str(out), *common])
    assert rc == 0, capsys.readouterr().err
    assert marker.exists() and "(enc.1)" in capsys.readouterr().out
    saved = torch.load(out, weights_only=True)
    assert saved["meta"]["input_percentiles"] == [2.0, 99.0]  # from its preprocessing
    assert saved["meta"]["channel_names"] == ["nuclei"]
    rc = main(["predict", "--model", str(out), "--images", tgt, "--out",
               str(tmp_path / "p"), "--device", "cpu"])
    assert rc == 2 and f"--arch {pkg}" in one_line_error(capsys, "predict")
    rc = main(["predict", "--arch", str(pkg), "--model", str(out), "--images", tgt,
               "--out", str(tmp_path / "p"), "--device", "cpu", "--tile", "32"])
    assert rc == 0, capsys.readouterr().err
    assert len(list((tmp_path / "p").glob("*.tif"))) == 3


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A plain state dict of a CareUNet (what a lab hands over), seeded."""
    from arch_zoo import CareUNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("anyw") / "w.pt"
    torch.save(CareUNet(out_channels=2, depth=2, ngf=8).state_dict(), path)
    return path


def test_fid_with_architecture_code(ws, weights, capsys):
    """``fid --arch --weights``: the features of that network, at its bottom by default,
    at a module named by --layer; the numbers are those of the library on the same model."""
    from napari_lmadda.evaluation.fid import fid_kid
    from napari_lmadda.models.arch import load_arch

    src, tgt = str(ws / "src/input"), str(ws / "tgt/input")
    model = ["--arch", ARCH, "--arch-kwargs", KW, "--weights", str(weights)]
    rc = main(["fid", "--a", src, "--b", tgt, *model, "--tile", "32"])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    # the bottom block (32 channels at 1/4 resolution) stands for the UNet's bottleneck
    assert "32 dims at layer 20 (bottom)" in text, text
    net = load_arch(ARCH, kwargs=json.loads(KW), weights=weights)
    ref = fid_kid(ws / "src/input", ws / "tgt/input", model=net,
                  layer=net.layer_index("bottom"), tile=32)
    fid = float(re.search(r"FID (\S+)", text).group(1))
    assert fid == pytest.approx(ref.fid, rel=1e-4)
    # the library's default layer for such a network is the same bottom block
    assert fid_kid(ws / "src/input", ws / "tgt/input", model=net, tile=32).fid == \
        pytest.approx(ref.fid, rel=1e-6)

    rc = main(["fid", "--a", src, "--b", tgt, *model, "--tile", "32", "--layer", "enc.1"])
    assert rc == 0, capsys.readouterr().err
    assert "16 dims at layer 13 (enc.1)" in capsys.readouterr().out

    for argv, says in ((["--arch", ARCH, "--arch-kwargs", KW], "needs its trained weights"),
                       ([*model, "--layer", "enc.7"], "no module named 'enc.7'"),
                       ([*model, "--layer", "6,13"], "one feature layer")):
        assert main(["fid", "--a", src, "--b", tgt, *argv, "--tile", "32"]) == 2
        assert says in one_line_error(capsys, "fid")


def test_export_bioimageio_with_arch_and_weights(weights, capsys, tmp_path):
    """``export-bioimageio --arch --weights`` like every command; the package holds them."""
    from napari_lmadda.models.arch import load_bioimageio_tapped

    pkg = tmp_path / "care.bioimageio.zip"
    rc = main(["export-bioimageio", "--arch", ARCH, "--arch-kwargs", KW, "--weights",
               str(weights), "--out", str(pkg)])
    assert rc == 0, capsys.readouterr().err
    want = torch.load(weights, weights_only=True)
    got = load_bioimageio_tapped(pkg, input_size=64).net.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert main(["export-bioimageio", "--out", str(tmp_path / "x.zip")]) == 2
    assert "give --model" in one_line_error(capsys, "export-bioimageio")


def test_sweep_of_an_arch_model_defaults_to_its_levels(ws, weights, capsys, tmp_path):
    """Without --layers, sweep matches each resolution's last tap of an --arch network (not
    its first 16 module calls, nearly all at full resolution) and records which model ran."""
    from napari_lmadda.models.arch import load_arch

    out = tmp_path / "sweep"
    rc = main(["sweep", "--arch", ARCH, "--arch-kwargs", KW, "--weights", str(weights),
               "--source", str(ws / "src/input"), "--target", str(ws / "tgt/input"),
               "--methods", "", "--steps", "1", "--eval-every", "1", "--out", str(out),
               *TINY])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "sweep.json").read_text())
    levels = load_arch(ARCH, kwargs=json.loads(KW), input_size=64).level_layers()
    assert [r["layer"] for r in res["runs"]] == levels
    assert res["settings"]["model"] == str(weights) and res["settings"]["arch"] == ARCH


def test_trust_maps_of_an_arch_model(ws, weights, capsys, tmp_path):
    """``predict --uncertainty`` with --arch: a trust map per image (flips/rotations, as the
    network has no dropout), one plane per channel, finite and not all zero."""
    import numpy as np

    out = tmp_path / "p"
    rc = main(["predict", "--arch", ARCH, "--arch-kwargs", KW, "--weights", str(weights),
               "--images", str(ws / "tgt/input"), "--out", str(out), "--device", "cpu",
               "--uncertainty", "--uncertainty-samples", "4"])
    assert rc == 0, capsys.readouterr().err
    trust = sorted(out.glob("*_trust.tif"))
    assert len(trust) == 3
    t = tifffile.imread(trust[0])
    assert t.shape == (2, 64, 64) and np.isfinite(t).all() and (t >= 0).all() and t.max() > 0
