"""The real-data benchmark's data handling and the layer-recommendation validation logic.

No real data is needed: the loaders run on a tiny fake copy of the folder layout, and the
benchmark must skip cleanly (exit status 0) when the shared data folder is absent.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def real_data():
    return _load("real_data")


@pytest.fixture(scope="module")
def validation():
    return _load("recommend_validation")


def test_skips_cleanly_without_data(real_data, tmp_path, capsys):
    out = tmp_path / "out"
    for argv in (["train", "--task", "em"], ["run", "--task", "allen", "--shift", "scale"],
                 ["recommend", "--task", "em"]):
        assert real_data.main([*argv, "--data", str(tmp_path / "absent"),
                               "--out", str(out)]) == 0
        assert "skipped" in capsys.readouterr().out
    assert not out.exists()  # nothing written


def _fake_em_tree(root: Path, width: int = 700) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    isbi = root / "isbi2012_em_membranes"
    label = np.where(rng.random((32, 32)) < 0.3, 0, 255).astype(np.uint8)  # 0 = membrane
    for sub in ("train/image", "train/label", "test/image"):
        (isbi / sub).mkdir(parents=True)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(
            isbi / "train/image" / f"{i}.png")
        Image.fromarray(label).save(isbi / "train/label" / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(
            isbi / "test/image" / f"{i}.png")
    vnc = root / "drosophila_vnc_sstem" / "stack1"
    (vnc / "raw").mkdir(parents=True)
    (vnc / "membranes").mkdir(parents=True)
    mask = rng.random((8, width)) < 0.2  # True = membrane (stored as a 1-bit PNG)
    for i in range(3):
        tifffile.imwrite(vnc / "raw" / f"{i:02d}.tif",
                         rng.integers(0, 255, (8, width), dtype=np.uint8))
        Image.fromarray(mask).save(vnc / "membranes" / f"{i:02d}.png")
    return label, mask


def test_em_labels_mean_membrane_on_both_sides(real_data, tmp_path):
    label, mask = _fake_em_tree(tmp_path)
    assert real_data.data_missing(tmp_path, "em") is None
    assert real_data.data_missing(tmp_path, "allen") is not None
    d = real_data.load_em(tmp_path)
    assert len(d["src_images"]) == len(d["src_labels"]) == 2
    assert len(d["src_unlabeled"]) == 4  # labelled train + unlabeled test images
    np.testing.assert_array_equal(d["src_labels"][0], (label == 0).astype(np.float32))
    # the target is split along x: adaptation columns and held-out test columns
    split = real_data.SPLIT_X
    assert d["tgt_adapt"][0].shape == (8, split)
    assert d["tgt_test"][0].shape == (8, 700 - split)
    np.testing.assert_array_equal(d["tgt_truth"][0], mask[:, split:].astype(np.float32))


def test_allen_shifts(real_data):
    rng = np.random.default_rng(1)
    tl = rng.uniform(0.2, 1.0, (2, 64, 64)).astype(np.float32)
    dna = rng.uniform(0.1, 0.7, (2, 64, 64)).astype(np.float32)
    x, y = real_data.shift_allen(tl, dna, "overexpose")
    assert x.max() == 1.0 and (x == 1.0).mean() > 0.3 and y is dna
    x, y = real_data.shift_allen(tl, dna, "defocus")
    assert x.std() < tl.std() / 2 and y is dna
    x, y = real_data.shift_allen(tl, dna, "identity")
    np.testing.assert_array_equal(x, tl)
    x, y = real_data.shift_allen(tl, dna, "scale")  # input and truth zoom together
    assert x.shape == tl.shape and y.shape == dna.shape
    np.testing.assert_allclose(x[0, 32, 32], tl[0, 32, 32], atol=0.05)
    assert not np.allclose(y, dna)


def test_judge(validation):
    grid = {2: 0.70, 4: 0.80, 6: 0.79}
    assert validation.judge(grid, 0.6, 6)["within_tolerance"] is True
    r = validation.judge(grid, 0.6, 2)
    assert r["within_tolerance"] is False and r["best_layer"] == 4
    assert validation.judge(grid, 0.6, 3)["within_tolerance"] is None  # not measured
    assert validation.judge(grid, 0.785, None)["within_tolerance"] is True  # none needed
    assert validation.judge(grid, 0.6, None)["within_tolerance"] is False
    assert validation.judge({}, 0.6, 2) == {}
    assert validation.judge({4: 0.8}, 0.6, 4)["within_tolerance"] is None  # one layer: no choice


def test_real_rows_use_dice_and_count_seeds(validation, real_data, tmp_path):
    rows = []
    dice = {(2, 0): 0.60, (2, 1): 0.62, (2, 2): 0.50, (6, 0): 0.61, (6, 1): 0.70, (6, 2): 0.66}
    for (layer, seed), v in dice.items():
        rows.append({"task": "em", "shift": "", "method": "lmadda", "layer": layer,
                     "seed": seed, "tag": "", "scores": {"dice": v, "pearson": 1 - v}})
    rows.append({"task": "em", "shift": "", "method": "none", "layer": None, "seed": 0,
                 "tag": "", "scores": {"dice": 0.4, "pearson": 0.3}})
    rows.append(dict(rows[0], scores={"dice": 0.99}))  # a repeated run counts once
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "recommend_em.json").write_text(json.dumps(
        {"task": "em", "shift": "", "recommended": 2, "confidence": 0.75, "p_value": 0.01}))
    (row,) = validation.real_rows(tmp_path)
    assert row["metric"] == "dice"
    assert row["pearson_by_layer"] == {2: 0.60, 6: 0.66}  # medians over seeds
    assert row["best_layer"] == 6 and row["within_tolerance"] is False
    # seed by seed: seed 0 (0.60 vs 0.61) is within 0.02, seeds 1 and 2 are not
    assert (row["seeds_within"], row["seeds_judged"]) == (1, 3)
    assert math.isclose(row["pearson_none"], 0.4)
    # the benchmark's own report helper agrees on the medians
    per_layer, none = real_data.per_layer_medians(real_data.read_runs(tmp_path / "runs.jsonl"),
                                                  "dice")
    assert per_layer == {2: 0.60, 6: 0.66} and none == 0.4
