"""The ``lmadda`` command line end to end on tiny folders and a tiny model."""

import contextlib
import json
import os
import signal

import pytest
import tifffile
import torch

from cli_helpers import one_line_error
from napari_lmadda.cli import main
from napari_lmadda.data.io import read_tiff_metadata
from napari_lmadda.data.synthetic import write_domain
from napari_lmadda.models import UNetGenerator, load_model, read_checkpoint, save_model

TINY = ["--batch", "2", "--patch", "32", "--device", "cpu"]



@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Source domain (4 fields), target domain (3 fields, overexposed), a tiny model file."""
    root = tmp_path_factory.mktemp("cli")
    write_domain(root / "src", 4, size=64, seed=0)
    write_domain(root / "tgt", 3, size=64, seed=1, shift="overexpose")
    torch.manual_seed(0)
    model = UNetGenerator(num_downs=5, ngf=8, out_channels=2)
    save_model(model, root / "g.pt", meta={"channel_names": ["DAPI", "CD29"],
                                           "target_range": [-0.05, 1.05]},
               provenance={"note": "tiny test model"})
    return root


# ------------------------------------------------------------------ the happy path
def test_train_source(ws, capsys):
    out = ws / "trained.pt"
    rc = main(["train-source", "--inputs", str(ws / "src/input"),
               "--targets", str(ws / "src/dapi"), "--targets", str(ws / "src/cd29"),
               "--channel-names", "DAPI,CD29", "--out", str(out), "--steps", "4",
               "--eval-every", "2", "--num-downs", "5", "--ngf", "8", *TINY])
    assert rc == 0
    text = capsys.readouterr().out
    assert text.count("val Pearson") == 2  # one line per validation, not per step
    assert out.exists() and (ws / "trained_last.pt").exists()
    model = load_model(out)  # per-channel target ranges: format version 3 loads
    assert model.config.out_channels == 2 and model.config.num_downs == 5
    meta = model.meta
    assert meta["channel_names"] == ["DAPI", "CD29"]
    # targets encoded with percentiles learned per channel, stored for decoding
    from napari_lmadda.data.normalize import TargetNorm

    tn = TargetNorm.from_meta(meta, 2)
    assert tn.mode == "dataset" and tn.units == "target"
    assert all(-0.1 < lo < 0.1 < hi < 1.1 for lo, hi in zip(tn.lo, tn.hi))
    prov = meta["provenance"]
    assert prov["training"]["best_step"] in (2, 4)
    assert len(prov["val_files"]) == 1  # one of four files held out


def test_adapt_predict_evaluate(ws, capsys, tmp_path):
    adapted = tmp_path / "adapted.pt"
    rc = main(["adapt", "--model", str(ws / "g.pt"), "--source", str(ws / "src/input"),
               "--target", str(ws / "tgt/input"), "--layer", "3", "--out", str(adapted),
               "--steps", "4", "--eval-every", "2", *TINY])
    assert rc == 0
    text = capsys.readouterr().out
    assert text.count("criterion") >= 3 and "ETA" in text and "best step" in text
    assert "wrote" in text
    _, _, meta = read_checkpoint(adapted)
    prov = meta["provenance"]
    assert prov["method"] == "lmadda" and prov["layers"] == [3]
    assert prov["source_model"] == str(ws / "g.pt")
    assert prov["target_dir"] == str(ws / "tgt/input")
    assert prov["note"] == "tiny test model"  # the source model's provenance is kept

    # refuses to replace the adapted model without --overwrite
    rc = main(["adapt", "--model", str(ws / "g.pt"), "--source", str(ws / "src/input"),
               "--target", str(ws / "tgt/input"), "--layer", "3", "--out", str(adapted)])
    assert rc == 2
    assert "already exists" in one_line_error(capsys, "adapt")

    pred = tmp_path / "pred"
    args = ["predict", "--model", str(adapted), "--images", str(ws / "tgt/input"),
            "--out", str(pred), "--tile", "64", "--device", "cpu"]
    assert main(args) == 0
    assert "wrote 3 file(s)" in capsys.readouterr().out
    for i in range(3):
        f = pred / f"field_{i:03d}_pred.tif"
        arr = tifffile.imread(f)
        assert arr.shape == (2, *tifffile.imread(ws / f"tgt/input/field_{i:03d}.tif").shape)
        md = read_tiff_metadata(f)
        assert md["channels"] == ["DAPI", "CD29"]
        assert md["model"]["method"] == "lmadda" and md["model"]["layers"] == [3]

    # predict refuses to overwrite, and does with --overwrite
    before = os.path.getmtime(pred / "field_000_pred.tif")
    assert main(args) == 2
    assert "--overwrite" in one_line_error(capsys, "predict")
    assert os.path.getmtime(pred / "field_000_pred.tif") == before
    assert main([*args, "--overwrite"]) == 0

    # evaluate pairs field_000_pred.tif with the truth field_000.tif of each marker's folder
    # and scores the channel named like the folder, with no renaming
    capsys.readouterr()
    for marker, name in (("dapi", "DAPI"), ("cd29", "CD29")):
        rc = main(["evaluate", "--pred", str(pred), "--truth", str(ws / "tgt" / marker),
                   "--json", str(tmp_path / f"eval_{marker}.json")])
        assert rc == 0
        result = json.loads((tmp_path / f"eval_{marker}.json").read_text())
        assert result["channel"] == name and len(result["per_image"]["pearson"]) == 3


def test_predict_skips_an_unreadable_file_with_exit_code_1(ws, capsys, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        (images / f"field_{i:03d}.tif").write_bytes(
            (ws / f"tgt/input/field_{i:03d}.tif").read_bytes())
    (images / "broken.tif").write_bytes(b"II*\x00 not really a tiff")
    rc = main(["predict", "--model", str(ws / "g.pt"), "--images", str(images),
               "--out", str(tmp_path / "pred"), "--tile", "64", "--device", "cpu"])
    assert rc == 1
    out = capsys.readouterr().out
    assert "wrote 2 file(s)" in out and "skipped 1" in out and "broken.tif" in out


def test_sweep(ws, capsys, tmp_path):
    out = tmp_path / "sweep"
    rc = main(["sweep", "--model", str(ws / "g.pt"), "--source", str(ws / "src/input"),
               "--target", str(ws / "tgt/input"), "--truth", str(ws / "tgt"),
               "--layers", "2,5", "--seeds", "0", "--steps", "2", "--eval-every", "1",
               "--tile", "64", "--out", str(out), *TINY])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Pearson DAPI" in text and "lmadda" in text and "adabn" in text
    for name in ("sweep.json", "sweep.csv", "sweep.png"):
        assert (out / name).stat().st_size > 0
    doc = json.loads((out / "sweep.json").read_text())
    labels = [(r["method"], r["layer"]) for r in doc["runs"]]
    assert labels == [("none", None), ("adabn", None), ("adda", None),
                      ("lmadda", 2), ("lmadda", 5)]
    for r in doc["runs"]:
        assert set(r["pearson"]) == {"DAPI", "CD29"}
        assert all(-1 <= v <= 1 for v in r["pearson"].values())
    assert len(doc["table"]) == 5
    rows = (out / "sweep.csv").read_text().splitlines()
    assert rows[0].split(",")[-2:] == ["pearson_DAPI", "pearson_CD29"] and len(rows) == 6
    assert main(["sweep", "--model", str(ws / "g.pt"), "--source", str(ws / "src/input"),
                 "--target", str(ws / "tgt/input"), "--layers", "2", "--out", str(out)]) == 2
    assert "already exists" in one_line_error(capsys, "sweep")


# ------------------------------------------------------------------ cancel
def test_ctrl_c_sets_the_cancel_flag():
    from napari_lmadda.cli._common import cancel_on_sigint

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in the background
    with cancel_on_sigint() as cancel:
        assert not cancel()
        os.kill(os.getpid(), signal.SIGINT)
        assert cancel()
    assert signal.getsignal(signal.SIGINT) is before


def test_adapt_cancelled_saves_the_kept_state(ws, capsys, tmp_path, monkeypatch):
    import napari_lmadda.cli._common as common

    @contextlib.contextmanager
    def pressed(what=""):
        yield lambda: True

    monkeypatch.setattr(common, "cancel_on_sigint", pressed)
    out = tmp_path / "a.pt"
    rc = main(["adapt", "--model", str(ws / "g.pt"), "--source", str(ws / "src/input"),
               "--target", str(ws / "tgt/input"), "--layer", "2", "--out", str(out),
               "--steps", "50", *TINY])
    assert rc == 1
    assert "cancelled" in capsys.readouterr().out
    prov = read_checkpoint(out)[2]["provenance"]
    assert prov["stop_reason"] == "cancelled" and prov["best_step"] == 0


def test_adapt_resume_after_interruption_matches_uninterrupted(ws, capsys, tmp_path,
                                                              monkeypatch):
    import napari_lmadda.cli._common as common

    base = ["adapt", "--model", str(ws / "g.pt"), "--source", str(ws / "src/input"),
            "--target", str(ws / "tgt/input"), "--layer", "2", "--steps", "6",
            "--eval-every", "2", "--criterion", "last", *TINY]
    full = tmp_path / "full.pt"
    assert main([*base, "--out", str(full)]) == 0
    assert not (tmp_path / "full.pt.run").exists()  # a finished run leaves no state behind

    polls = {"n": 0}

    @contextlib.contextmanager
    def pressed_after_five(what=""):
        def cancel():
            polls["n"] += 1
            return polls["n"] > 5
        yield cancel

    out = tmp_path / "a.pt"
    with monkeypatch.context() as mp:
        mp.setattr(common, "cancel_on_sigint", pressed_after_five)
        assert main([*base, "--out", str(out)]) == 1
    state = tmp_path / "a.pt.run"
    assert state.exists()
    capsys.readouterr()
    # starting afresh over an interrupted run is refused (nothing is lost) ...
    assert main([*base, "--out", str(out), "--overwrite"]) == 2
    assert "--resume" in one_line_error(capsys, "adapt")
    # ... and --resume ends where the uninterrupted run did
    assert main([*base, "--out", str(out), "--resume"]) == 0
    assert not state.exists()
    a, b = read_checkpoint(full)[1], read_checkpoint(out)[1]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main([*base, "--out", str(tmp_path / "b.pt"), "--resume"]) == 2
    assert "no interrupted run" in one_line_error(capsys, "adapt")


# ------------------------------------------------------------------ bad input
def _bad_cases(ws):
    g, src, tgt = str(ws / "g.pt"), str(ws / "src/input"), str(ws / "tgt/input")
    empty = ws / "empty"
    empty.mkdir(exist_ok=True)
    junk = ws / "junk.pt"
    junk.write_bytes(b"not a model")
    adapt = ["adapt", "--model", g, "--source", src, "--target", tgt, "--out",
             str(ws / "never.pt")]
    return {
        "missing folder": (["predict", "--model", g, "--images", str(ws / "nope"),
                            "--out", str(ws / "p")], "does not exist"),
        "empty folder": (["predict", "--model", g, "--images", str(empty),
                          "--out", str(ws / "p")], "no images"),
        "bad model file": (["predict", "--model", str(junk), "--images", tgt,
                            "--out", str(ws / "p")], "junk.pt"),
        "missing model": ([*adapt, "--layer", "2", "--model", str(ws / "none.pt")],
                          "does not exist"),
        "layer too large": ([*adapt, "--layer", "11"], "out of range"),
        "layer 0": ([*adapt, "--layer", "0"], "out of range"),
        "no layer": (adapt, "needs a layer"),
        "negative steps": ([*adapt, "--layer", "2", "--steps", "-3"], "steps"),
        "lr 0": ([*adapt, "--layer", "2", "--lr-g", "0"], "lr_g"),
        "empty target": (["adapt", "--model", g, "--source", src, "--target", str(empty),
                          "--layer", "2", "--out", str(ws / "never.pt")], "no images"),
        "train steps 0": (["train-source", "--inputs", src, "--targets", str(ws / "src/dapi"),
                           "--out", str(ws / "never.pt"), "--steps", "0"], "steps"),
        "train lr 0": (["train-source", "--inputs", src, "--targets", str(ws / "src/dapi"),
                        "--out", str(ws / "never.pt"), "--lr", "0"], "lr"),
        "train missing targets": (["train-source", "--inputs", src, "--targets",
                                   str(ws / "nope"), "--out", str(ws / "never.pt")],
                                  "does not exist"),
        "sweep layers": (["sweep", "--model", g, "--source", src, "--target", tgt,
                          "--layers", "1-16", "--out", str(ws / "sw")], "out of range"),
        "sweep truth": (["sweep", "--model", g, "--source", src, "--target", tgt,
                         "--layers", "2", "--truth", src, "--out", str(ws / "sw")],
                        "sub-folder"),
    }


@pytest.mark.parametrize("case", [
    "missing folder", "empty folder", "bad model file", "missing model", "layer too large",
    "layer 0", "no layer", "negative steps", "lr 0", "empty target", "train steps 0",
    "train lr 0", "train missing targets", "sweep layers", "sweep truth",
])
def test_bad_input_gives_exit_code_2_and_one_line(ws, capsys, case):
    argv, match = _bad_cases(ws)[case]
    assert main(argv) == 2
    assert match in one_line_error(capsys, argv[0])
    assert not (ws / "never.pt").exists()


def test_demo_quick_runs_every_method_and_writes_its_outputs(tiny_model_path, tmp_path,
                                                             capsys):
    out = tmp_path / "demo"
    args = ["demo", "--quick", "--model", str(tiny_model_path), "--out", str(out),
            "--device", "cpu", "--layer", "4"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Pearson on the new microscope" in printed and "Conclusion" in printed
    res = json.loads((out / "results.json").read_text())
    assert set(res["pearson"]) == {"none", "adabn", "adda", "lmadda L4", "auto"}
    assert "=> " in printed and res["auto"]["winner"] and res["auto"]["reason"]
    assert all(set(v) == {"DAPI", "CD29"} for v in res["pearson"].values())
    assert (out / "demo.png").stat().st_size > 1000
    assert len(list((out / "predictions" / "lmadda_L4").glob("*.tif"))) == 4
    assert (out / "adapted_lmadda_L4.pt").exists()
    assert main(args) == 2  # an earlier demo's results are kept
    assert "--overwrite" in one_line_error(capsys, "demo")
    assert main([*args, "--overwrite", "--layer", "99"]) == 2
    assert "out of range" in one_line_error(capsys, "demo")


@pytest.mark.parametrize("method", ["none", "adabn"])
def test_adapt_runs_the_methods_without_a_discriminator(ws, capsys, tmp_path, method):
    # every method of the engine must accept what the CLI passes (run_state included)
    out = tmp_path / f"{method}.pt"
    rc = main(["adapt", "--model", str(ws / "g.pt"), "--source", str(ws / "src/input"),
               "--target", str(ws / "tgt/input"), "--method", method, "--out", str(out),
               "--steps", "2", *TINY])
    assert rc == 0, capsys.readouterr().err
    _, _, meta = read_checkpoint(out)
    assert meta["provenance"]["method"] == method
