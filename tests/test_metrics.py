"""Tests of napari_lmadda.evaluation.metrics and the `lmadda evaluate` command."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import tifffile

from napari_lmadda import metrics as m
from napari_lmadda.cli import main
from napari_lmadda.errors import ConfigError, EmptyFolderError, ImageReadError

RNG = np.random.default_rng(7)


def test_pearson_known_cases():
    x = RNG.random((64, 64))
    assert m.pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert m.pearson(x, -x) == pytest.approx(-1.0)
    noise = np.random.default_rng(99).random((300, 300))
    assert abs(m.pearson(RNG.random((300, 300)), noise)) < 0.02


def test_pearson_constant_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(m.pearson(np.ones((5, 5)), RNG.random((5, 5))))
        assert math.isnan(m.pearson(np.ones(1), np.ones(1)))


def test_pearson_ignores_nan_pixels():
    x = RNG.random(100)
    y = 3 * x
    y[5] = np.nan
    assert m.pearson(x, y) == pytest.approx(1.0)


def test_shape_mismatch():
    with pytest.raises(ConfigError, match="shape"):
        m.pearson(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ConfigError):
        m.pearson_per_image([np.zeros((3, 3))], [])


def test_pooled_differs_from_per_image():
    # inside each image the prediction is perfect, but the brightness between images is wrong
    xs = [RNG.random((16, 16)) for _ in range(3)]
    preds = [x + 10 * i for i, x in enumerate(xs)]
    truths = [x - 10 * i for i, x in enumerate(xs)]
    per = m.pearson_per_image(preds, truths)
    np.testing.assert_allclose(per, 1.0)
    assert m.pearson_pooled(preds, truths) < -0.9


def test_per_image_accepts_stacks():
    x = RNG.random((4, 8, 8))
    np.testing.assert_allclose(m.pearson_per_image(x, 5 * x), np.ones(4))


def test_ssim_and_psnr():
    x = RNG.random((32, 32))
    assert m.ssim(x, x) == pytest.approx(1.0)
    assert m.psnr(x, x) == math.inf
    noisy = x + 0.1
    # constant offset 0.1 over data range ~1: PSNR = 10 log10(range^2 / 0.01)
    rng = x.max() - x.min()
    assert m.psnr(noisy, x) == pytest.approx(10 * math.log10(rng**2 / 0.01), rel=1e-6)
    assert m.ssim(RNG.random((32, 32)), x) < 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(m.ssim(x, np.ones((32, 32))))
        assert math.isnan(m.psnr(x, np.ones((32, 32))))
    assert math.isfinite(m.ssim(x[:4, :4], x[:4, :4] * 0.9))  # small image: smaller window


def test_dice_and_jaccard():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :4] = True  # 4 px
    b[0, 2:] = True  # 2 px, both in a
    b[1, :2] = True  # 2 px, not in a
    assert m.dice(a, b) == pytest.approx(2 * 2 / 8)
    assert m.jaccard(a, b) == pytest.approx(2 / 6)
    empty = np.zeros((4, 4))
    assert m.dice(empty, empty) == 1.0
    assert m.jaccard(empty, empty) == 1.0
    assert m.dice(a, empty) == 0.0
    assert m.dice(a.astype(np.uint8) * 255, a) == 1.0


def test_summarize():
    x = RNG.random((3, 16, 16))
    res = m.summarize(x, 2 * x)
    assert res["n"] == 3
    assert set(res["per_image"]) == {"pearson", "ssim", "psnr"}
    assert res["summary"]["pearson"]["mean"] == pytest.approx(1.0)
    assert res["pearson_pooled"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="unknown"):
        m.summarize(x, x, metrics=("accuracy",))


def _folders(tmp_path, n=3):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    for i in range(n):
        t = RNG.random((24, 24)).astype(np.float32)
        tifffile.imwrite(truth / f"f{i}.tif", t)
        tifffile.imwrite(pred / f"f{i}.tiff", (t + 0.05 * RNG.random((24, 24))).astype("f4"))
    return pred, truth


def test_evaluate_folders(tmp_path):
    pred, truth = _folders(tmp_path)
    tifffile.imwrite(pred / "extra.tif", np.zeros((4, 4), np.float32))
    res = m.evaluate_folders(pred, truth)
    assert res["names"] == ["f0.tiff", "f1.tiff", "f2.tiff"]
    assert res["unmatched"] == {"pred": ["extra.tif"], "truth": []}
    assert res["summary"]["pearson"]["mean"] > 0.95
    assert "dice" not in res["per_image"]  # continuous truth, no threshold
    table = m.format_table(res)
    assert "f1.tiff" in table and "mean" in table and "extra.tif" in table
    rows = table.splitlines()[:6]
    assert len({len(r) for r in rows}) == 1  # aligned

    res = m.evaluate_folders(pred, truth, threshold=0.5, metrics=("pearson",))
    assert set(res["per_image"]) == {"pearson", "dice", "jaccard"}
    assert res["summary"]["dice"]["mean"] > 0.8


def test_evaluate_masks_automatically(tmp_path):
    pred, truth = tmp_path / "p", tmp_path / "t"
    pred.mkdir()
    truth.mkdir()
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    tifffile.imwrite(truth / "m.tif", mask)
    prob = (mask / 255.0).astype(np.float32) * 0.8 + 0.1  # 0.1 / 0.9
    tifffile.imwrite(pred / "m.tif", prob)
    res = m.evaluate_folders(pred, truth)
    # no threshold: the prediction is cut at the truth's midpoint, 127.5 -> empty mask
    assert res["threshold"] == pytest.approx(127.5)
    assert res["per_image"]["dice"] == [0.0]
    res = m.evaluate_folders(pred, truth, threshold=0.5)
    assert res["per_image"]["dice"] == [1.0] and res["per_image"]["jaccard"] == [1.0]
    tifffile.imwrite(pred / "m.tif", (mask > 0).astype(np.uint8))  # a 0/1 mask vs 0/255
    res = m.evaluate_folders(pred, truth)
    assert res["per_image"]["dice"] == [1.0] and res["threshold"] is None


def test_evaluate_errors(tmp_path):
    pred, truth = _folders(tmp_path)
    tifffile.imwrite(pred / "f1.tiff", np.zeros((10, 10), np.float32))
    with pytest.raises(ImageReadError, match=r"f1\.tiff.*f1\.tif"):
        m.evaluate_folders(pred, truth, stop_on_error=True)
    with pytest.warns(UserWarning, match="skipped 'f1'"):  # default: skip, keep going
        assert [s["name"] for s in m.evaluate_folders(pred, truth)["skipped"]] == ["f1"]
    other = tmp_path / "other"
    other.mkdir()
    tifffile.imwrite(other / "zzz.tif", np.zeros((4, 4), np.float32))
    with pytest.raises(EmptyFolderError, match="same name"):
        m.evaluate_folders(other, truth)


def test_cli_evaluate_writes_json(tmp_path, capsys):
    pred, truth = _folders(tmp_path)
    tifffile.imwrite(truth / "f0.tif", np.ones((24, 24), np.float32))  # constant: nan pearson
    out = tmp_path / "res.json"
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "f2.tiff" in printed and "pooled pearson" in printed
    data = json.loads(out.read_text())  # strict JSON: nan became null
    assert data["per_image"]["pearson"][0] is None
    assert data["names"] == ["f0.tiff", "f1.tiff", "f2.tiff"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--json", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(pred),
                "--truth",
                str(truth),
                "--json",
                str(out),
                "--overwrite",
                "--normalize",
                "percentile",
            ]
        )
        == 0
    )


def test_cli_evaluate_missing_folder(tmp_path, capsys):
    code = main(["evaluate", "--pred", str(tmp_path / "nope"), "--truth", str(tmp_path)])
    assert code == 2
    assert "nope" in capsys.readouterr().err


def test_evaluate_skips_an_unreadable_pair_unless_told_to_stop(tmp_path):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        img = rng.random((16, 16)).astype(np.float32)
        tifffile.imwrite(pred / f"{name}.tif", img)
        tifffile.imwrite(truth / f"{name}.tif", img * 2)
    (pred / "c.tif").write_bytes(b"not a tiff at all")
    tifffile.imwrite(truth / "c.tif", np.zeros((16, 16), np.float32))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        result = m.evaluate_folders(pred, truth, metrics=("pearson",))
    assert [s["name"] for s in result["skipped"]] == ["c"]
    assert result["summary"]["pearson"]["mean"] == pytest.approx(1.0)
    with pytest.raises(ImageReadError):
        m.evaluate_folders(pred, truth, metrics=("pearson",), stop_on_error=True)
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth)]) == 1
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--stop-on-error"]) == 2
