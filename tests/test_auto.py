"""``method="auto"``: the shared budget, the do-no-harm guard, cancel and determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_lmadda.adapt import auto
from napari_lmadda.adapt.auto import CandidateReport, decide, halving_plan, plan_steps
from napari_lmadda.adapt.config import AdaptConfig
from napari_lmadda.adapt.engine import adapt, iter_adapt
from napari_lmadda.adapt.events import Evaluated, Finished, Step, StopReason
from napari_lmadda.adapt.scoring import image_patches, paired_gain, quantile_sketch
from napari_lmadda.data.synthetic import make_domain
from napari_lmadda.models import load_model

CFG = {"steps": 30, "eval_every": 10, "patch_size": 64, "batch_size": 4, "eval_patches": 8,
       "device": "cpu"}


@pytest.fixture(scope="module", autouse=True)
def _small_probes():
    """Fewer probe patches and probe steps than the defaults: the same code, less time."""
    mp = pytest.MonkeyPatch()
    mp.setattr(auto, "PROBE_PATCHES", 48)
    mp.setattr(auto, "RECOMMEND_PROBE_STEPS", 20)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


@pytest.fixture(scope="module")
def fields():
    src = make_domain(8, size=128, seed=11)["input"]
    same = make_domain(8, size=128, seed=12)["input"]  # new fields of the source microscope
    bright = make_domain(8, size=128, seed=12, shift="brightfield")["input"]
    return src, same, bright


@pytest.fixture(scope="module")
def bright_run(demo, fields):
    """One auto run on bright field with too few steps to help: events and result."""
    torch.set_num_threads(1)  # as in the tests (module fixtures start before conftest's)
    src, _, bright = fields
    events = list(iter_adapt(demo, src, bright, method="auto", config=AdaptConfig(**CFG)))
    return events, events[-1].result


# ------------------------------------------------------------------ pure parts
def test_halving_plan_and_its_steps():
    assert halving_plan(3, 1200, 100) == [(400, 2), (800, 1), (1200, 1)]
    assert halving_plan(4, 1200, 100) == [(400, 2), (800, 1), (1200, 1)]
    assert halving_plan(1, 1200, 100) == [(1200, 1)]
    assert halving_plan(0, 1200, 100) == []
    # 3 candidates to a third, 2 to two thirds, 1 to the end: twice one run
    assert plan_steps(3, 1200, 100) == 2400
    assert plan_steps(4, 1200, 100) == 2800
    for n in (1, 2, 3, 4, 5):
        assert plan_steps(n, 1200, 100) <= auto.BUDGET * 1200


def _cand(name, score, gain, lower, method="lmadda"):
    return CandidateReport(name, method, 3 if method == "lmadda" else None, score,
                           gain=gain, gain_lower=lower)


def test_decide_keeps_the_best_candidate_that_clearly_beats_the_source():
    a = _cand("LM-ADDA layer 3", 0.10, 0.15, 0.08)
    b = _cand("LM-ADDA layer 4", 0.12, 0.13, 0.09)
    winner, why = decide([b, a])
    assert winner is a and why == ""


def test_decide_refuses_gains_within_the_noise_or_too_small():
    noisy = _cand("LM-ADDA layer 3", 0.10, 0.15, -0.01)  # bootstrap bound below 0
    tiny = _cand("LM-ADDA layer 4", 0.249, 0.001, 0.0005)  # 0.4 % of the source's score
    winner, why = decide([noisy, tiny])
    assert winner is None
    assert "LM-ADDA layer 3 (not clearly better" in why and "LM-ADDA layer 4" in why


def test_decide_refuses_an_adabn_that_is_unstable_under_flips():
    adabn = _cand("AdaBN", 0.05, 0.20, 0.15, method="adabn")
    lm = _cand("LM-ADDA layer 3", 0.10, 0.15, 0.08)
    winner, why = decide([adabn, lm], source_tta=0.04, tta={"AdaBN": 0.07}, keep_adabn=True)
    assert winner is lm and "AdaBN (unstable" in why and "1.8x" in adabn.note
    # as stable as the source model: AdaBN wins on its score (when it may be kept)
    winner, _ = decide([adabn, lm], source_tta=0.04, tta={"AdaBN": 0.045}, keep_adabn=True)
    assert winner is adabn


def test_decide_never_keeps_adabn_under_the_never_rule():
    # the best score and stable, yet not kept: the score favours AdaBN by construction
    adabn = _cand("AdaBN", 0.05, 0.20, 0.15, method="adabn")
    lm = _cand("LM-ADDA layer 3", 0.08, 0.17, 0.12)
    winner, why = decide([adabn, lm], source_tta=0.04, tta={"AdaBN": 0.04}, keep_adabn="never")
    assert winner is lm and "AdaBN (its score cannot be trusted)" in why
    assert "not kept" in adabn.note
    winner, _ = decide([adabn], source_tta=0.04, tta={"AdaBN": 0.04}, keep_adabn=False)
    assert winner is None  # the source model, never AdaBN


def test_decide_keeps_adabn_by_default_only_when_clearly_ahead_of_lmadda():
    lm = _cand("LM-ADDA layer 3", 0.08, 0.17, 0.12)
    # ahead of the source model, stable, but its lead over LM-ADDA is within the noise
    close = _cand("AdaBN", 0.075, 0.175, 0.13, method="adabn")
    close.lead, close.lead_lower = 0.005, -0.01
    winner, why = decide([close, lm], source_tta=0.04, tta={"AdaBN": 0.04})
    assert auto.KEEP_ADABN == "if-ahead"
    assert winner is lm and "AdaBN (not clearly ahead of LM-ADDA" in why
    assert "within the variation between images" in close.note
    # clearly ahead of the best LM-ADDA candidate: kept
    ahead = _cand("AdaBN", 0.02, 0.23, 0.2, method="adabn")
    ahead.lead, ahead.lead_lower = 0.06, 0.03
    winner, _ = decide([ahead, lm], source_tta=0.04, tta={"AdaBN": 0.04})
    assert winner is ahead
    # ... unless unstable under flips and rotations
    winner, why = decide([ahead, lm], source_tta=0.04, tta={"AdaBN": 0.08})
    assert winner is lm and "AdaBN (unstable" in why
    # no LM-ADDA candidate trained (no rival: lead nan): judged against the source model
    alone = _cand("AdaBN", 0.05, 0.20, 0.15, method="adabn")
    assert decide([alone], source_tta=0.04, tta={"AdaBN": 0.04})[0] is alone


def test_decide_refuses_an_unknown_adabn_rule():
    with pytest.raises(ValueError, match="if-ahead"):
        decide([], keep_adabn="sometimes")


def test_paired_gain_resamples_images_not_patches():
    rng = np.random.default_rng(0)
    ref = quantile_sketch(rng.normal(size=(16, 1, 8, 8)), q=16)
    # two images: each candidate is better on one of them by the same amount
    base = quantile_sketch(rng.normal(size=(16, 1, 8, 8)) + 0.5, q=16)
    cand = base.copy()
    cand[:8] -= 0.4
    cand[8:] += 0.2
    var = np.ones(1)
    by_patch = paired_gain(ref, base, cand, var, n_boot=100)
    by_image = paired_gain(ref, base, cand, var, ids=np.repeat([0, 1], 8), n_boot=100)
    assert by_patch[0] == by_image[0]
    assert by_image[1] < by_patch[1]  # two images say less than sixteen patches


def test_image_patches_spread_over_the_images():
    imgs = make_domain(5, size=96, seed=0)["input"]
    patches, ids = image_patches(imgs, 12, 64, seed=1)
    assert patches.shape[0] == 12 and patches.shape[-2:] == (64, 64)
    assert sorted(set(ids)) == [0, 1, 2, 3, 4]
    assert np.bincount(ids).tolist() == [3, 3, 2, 2, 2]
    again, _ = image_patches(imgs, 12, 64, seed=1)
    assert np.array_equal(patches, again)


# ------------------------------------------------------------------ end to end
def test_a_target_from_the_source_microscope_needs_no_adaptation(demo, fields):
    src, same, _ = fields
    res = adapt(demo, src, same, method="auto", config=AdaptConfig(**CFG))
    assert isinstance(res, auto.AutoResult) and res.reason is StopReason.COMPLETED
    rep = res.report
    assert rep.winner == "none" and not rep.adapted and not rep.shift_detected
    assert rep.steps_used == 0 and res.steps_done == 0  # nothing was trained
    assert res.message.startswith("no adaptation needed")
    for a, b in zip(res.model.state_dict().values(), demo.state_dict().values()):
        assert torch.equal(a, b)


def test_candidates_that_do_not_clearly_help_leave_the_source_model(bright_run, demo):
    events, res = bright_run
    rep = res.report
    assert rep.shift_detected and [c.name for c in rep.candidates][:2] == ["none", "AdaBN"]
    assert len(rep.candidates) == 2 + auto.AUTO_LAYERS
    # 30 steps at lr 3e-5 change nothing that matters: the guard keeps the source model
    assert rep.winner == "none" and not rep.adapted
    assert res.message.startswith("no adaptation kept") and "source model is kept" in res.message
    for a, b in zip(res.model.state_dict().values(), demo.state_dict().values()):
        assert torch.equal(a, b)


def test_budget_rungs_and_events(bright_run):
    events, res = bright_run
    rep = res.report
    steps = [e for e in events if isinstance(e, Step)]
    assert rep.steps_used == len(steps) == plan_steps(auto.AUTO_LAYERS, 30, 10) == 60
    assert rep.steps_used <= rep.steps_budget == auto.BUDGET * 30
    assert [e.step for e in steps] == list(range(1, 61)) and steps[-1].total_steps == 60
    runs = sorted(c.steps_run for c in rep.candidates if c.method == "lmadda")
    assert runs == [10, 20, 30]  # successive halving: dropped after 10 and 20 steps
    evals = [e for e in events if isinstance(e, Evaluated)]
    assert evals and all(math.isfinite(e.criterion) and "layer" in e.metrics for e in evals)
    assert isinstance(events[-1], Finished) and res.provenance["steps_used"] == 60


def test_auto_is_deterministic(bright_run, demo, fields):
    src, _, bright = fields
    _, first = bright_run
    again = adapt(demo, src, bright, method="auto", config=AdaptConfig(**CFG))
    assert [vars(c) for c in again.report.candidates] == [vars(c) for c in
                                                         first.report.candidates]
    assert again.message == first.message


def test_cancel_stops_the_candidates_and_keeps_a_judged_model(demo, fields):
    src, _, bright = fields
    seen = []

    def cancel():
        return len(seen) >= 15

    res = None
    for ev in iter_adapt(demo, src, bright, method="auto", config=AdaptConfig(**CFG),
                         cancel=cancel):
        if isinstance(ev, Step):
            seen.append(ev.step)
        if isinstance(ev, Finished):
            res = ev.result
    assert res.reason is StopReason.CANCELLED and res.message.startswith("stopped early")
    assert res.report.steps_used < 30 and max(seen) < 30
    assert res.model is not None and res.report.winner in {c.name for c in
                                                           res.report.candidates}


def test_cli_adapt_method_auto_on_folders(tmp_path, capsys):
    """``lmadda adapt --method auto`` on folders of 16-bit TIFFs: table, reason, saved model."""
    from napari_lmadda.cli import main
    from napari_lmadda.data.io import write_tiff
    from napari_lmadda.models.checkpoint import read_checkpoint

    for name, kw in (("src", {"seed": 11}), ("tgt", {"seed": 12, "shift": "brightfield"})):
        (tmp_path / name).mkdir()
        for i, img in enumerate(make_domain(8, size=128, **kw)["input"]):
            write_tiff(tmp_path / name / f"f{i}.tif", (100 + img * 40000).astype(np.uint16))
    out = tmp_path / "auto.pt"
    rc = main(["adapt", "--model", "demo", "--source", str(tmp_path / "src"), "--target",
               str(tmp_path / "tgt"), "--method", "auto", "--out", str(out), "--steps", "30",
               "--eval-every", "10", "--patch", "64", "--batch", "4", "--device", "cpu"])
    text = capsys.readouterr().out
    assert rc == 0 and out.exists()
    assert "candidate" in text and "AdaBN" in text and "LM-ADDA layer" in text
    assert "=> " in text and "steps 60 of 90 allowed" in text
    # progress names the candidate and its own step; AdaBN's stability is shown
    assert "auto: trying no adaptation, AdaBN and LM-ADDA at layers" in text
    assert "at its step 10: score" in text and "trainable parameters" not in text
    assert "inconsistency" in text and "x the source model's" in text
    _, _, meta = read_checkpoint(out)
    prov = meta["provenance"]
    assert prov["method"] == "auto" and prov["winner"] and len(prov["candidates"]) == 5
