"""The adaptation engine on a tiny UNet: events, which parameters train, cancel, divergence."""

import copy

import numpy as np
import pytest
import torch

from napari_lmadda.adapt.adabn import adapt_batchnorm
from napari_lmadda.adapt.config import AdaptConfig
from napari_lmadda.adapt.engine import adapt, iter_adapt
from napari_lmadda.adapt.events import Evaluated, Finished, Started, Step, StopReason
from napari_lmadda.data.datasets import ArrayDataset, PatchSampler
from napari_lmadda.errors import ConfigError
from napari_lmadda.models import load_model, read_checkpoint, save_model

NUM_DOWNS = 5  # conftest's source_model: 10 layers; patches of 32 px



def cfg(**kw):
    base = dict(steps=6, batch_size=2, patch_size=32, eval_every=2, eval_patches=4,
                ndf=8, device="cpu", criterion="last")
    return AdaptConfig(**{**base, **kw})


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def block_state(model, layer):
    return {k: v for k, v in model.block(layer).state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def bn_stats(model, layer):
    return {k: v for k, v in block_state(model, layer).items() if "running" in k}


def weights(model, layer):
    return {k: v for k, v in block_state(model, layer).items()
            if "running" not in k and "num_batches" not in k}


def run_events(model, domains, **kw):
    src, tgt = domains
    config = kw.pop("config")
    return list(iter_adapt(model, src, tgt, config=config, **kw))


# ------------------------------------------------------------------ every method runs
@pytest.mark.parametrize("method,layers", [
    ("none", None), ("adabn", None), ("adda", None), ("lmadda", 3), ("lmadda-multi", "2,7"),
])
def test_each_method_runs_to_finished_and_leaves_source_alone(source_model, domains, method,
                                                              layers):
    before = state(source_model)
    events = run_events(source_model, domains, method=method, layers=layers, config=cfg())
    assert isinstance(events[0], Started)
    assert isinstance(events[-1], Finished)
    assert sum(isinstance(e, Finished) for e in events) == 1
    res = events[-1].result
    assert res.reason is StopReason.COMPLETED
    assert res.method == method
    assert res.model is not source_model
    assert same(before, state(source_model))  # the source model is never modified
    assert not source_model.training
    assert all(torch.isfinite(v).all() for v in state(res.model).values() if v.is_floating_point())
    if method in ("adda", "lmadda", "lmadda-multi"):
        assert [e.step for e in events if isinstance(e, Evaluated)] == [0, 2, 4, 6]
        assert res.best_step == 6 and res.steps_done == 6


def test_losses_move(source_model, domains):
    events = run_events(source_model, domains, method="lmadda", layers=4,
                        config=cfg(steps=8, lr_d=1e-3, lr_g=1e-3))
    steps = [e for e in events if isinstance(e, Step)]
    assert [s.step for s in steps] == list(range(1, 9))
    assert steps[0].loss_d != steps[-1].loss_d
    assert all(np.isfinite(s.loss_g) for s in steps)
    assert steps[-1].eta == 0.0


# ------------------------------------------------------------------ which parameters train
@pytest.mark.parametrize("layer", [3, 6])
def test_lmadda_trains_only_layers_up_to_l(source_model, domains, layer):
    res = adapt(source_model, *domains, method="lmadda", layers=layer,
                config=cfg(lr_g=1e-3, ema_decay=0.0, init_adabn=True))
    for i in range(1, source_model.num_layers + 1):
        if i > layer:  # weights and BN statistics after l are the source model's
            assert same(block_state(res.model, i), block_state(source_model, i)), i
        else:
            assert not same(weights(res.model, i), weights(source_model, i)), i
            if bn_stats(source_model, i):  # AdaBN start: statistics re-estimated
                assert not same(bn_stats(res.model, i), bn_stats(source_model, i)), i
    assert res.provenance["trainable_layers"] == [1, layer]


def test_trainable_range_leaves_first_block_untouched(source_model, domains):
    res = adapt(source_model, *domains, method="lmadda", layers=4,
                config=cfg(lr_g=1e-3, ema_decay=0.0, trainable=(2, 4)))
    assert same(block_state(res.model, 1), block_state(source_model, 1))
    for i in (2, 3, 4):
        assert not same(weights(res.model, i), weights(source_model, i)), i
    for i in range(5, source_model.num_layers + 1):
        assert same(block_state(res.model, i), block_state(source_model, i)), i


def test_trainable_past_matched_layer_is_refused(source_model, domains):
    with pytest.raises(ConfigError, match="past the matched layer"):
        adapt(source_model, *domains, method="lmadda", layers=3, config=cfg(trainable=(1, 5)))


def test_adda_trains_the_output_layer(source_model, domains):
    res = adapt(source_model, *domains, method="adda", config=cfg(lr_g=1e-3, ema_decay=0.0))
    n = source_model.num_layers
    assert res.layers == (n,)
    for i in (1, NUM_DOWNS, n):
        assert not same(weights(res.model, i), weights(source_model, i)), i


def test_adabn_changes_only_batchnorm_statistics(source_model, domains):
    res = adapt(source_model, *domains, method="adabn", config=cfg())
    changed = 0
    for i in range(1, source_model.num_layers + 1):
        assert same(weights(res.model, i), weights(source_model, i)), i  # incl. BN affine
        if bn_stats(source_model, i):
            changed += not same(bn_stats(res.model, i), bn_stats(source_model, i))
    assert changed > 0


def test_ema_weights_are_kept(source_model, domains):
    """With EMA on, the kept weights differ from the source but less than without EMA."""
    plain = adapt(source_model, *domains, method="lmadda", layers=2,
                  config=cfg(lr_g=1e-3, ema_decay=0.0))
    ema = adapt(source_model, *domains, method="lmadda", layers=2,
                config=cfg(lr_g=1e-3, ema_decay=0.9))
    w0 = source_model.block(1)[0].weight
    d_plain = (plain.model.block(1)[0].weight - w0).abs().sum()
    d_ema = (ema.model.block(1)[0].weight - w0).abs().sum()
    assert 0 < d_ema < d_plain


# ------------------------------------------------------------------ cancel
def counting_cancel(k):
    """True from the (k+1)-th poll on: the engine polls once before each step."""
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > k

    return cancel


def test_cancel_keeps_the_state_of_the_last_evaluated_step(source_model, domains):
    config = cfg(steps=10, eval_every=1, lr_g=1e-3)
    res = adapt(source_model, *domains, method="lmadda", layers=3, config=config,
                cancel=counting_cancel(3))
    assert res.reason is StopReason.CANCELLED
    assert res.steps_done == 3 and res.best_step == 3
    # the same run stopped by its step count instead of a cancel has the same weights
    ref = adapt(source_model, *domains, method="lmadda", layers=3,
                config=cfg(steps=3, eval_every=1, lr_g=1e-3))
    assert same(state(res.model), state(ref.model))


def test_cancel_before_the_first_step_returns_the_adabn_start(source_model, domains):
    config = cfg(steps=10, init_adabn=True)
    layer = 4
    res = adapt(source_model, *domains, method="lmadda", layers=layer, config=config,
                cancel=lambda: True)
    assert res.reason is StopReason.CANCELLED
    assert res.best_step == 0 and res.steps_done == 0
    # = the source model with AdaBN statistics for layers <= l, computed on the fixed
    # evaluation patches of the target (seed + 2), in batches of batch_size
    ref = copy.deepcopy(source_model)
    patches = PatchSampler(ArrayDataset(domains[1]), config.patch_size, config.eval_patches,
                           seed=config.seed + 2).sample()
    x = torch.from_numpy(patches)
    adapt_batchnorm(ref, [x[i : i + config.batch_size] for i in range(0, len(x),
                                                                      config.batch_size)],
                    upto=layer)
    got, want = state(res.model), state(ref)
    assert got.keys() == want.keys()
    for k in got:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7, msg=k)
    for i in range(1, source_model.num_layers + 1):
        assert same(weights(res.model, i), weights(source_model, i))


def test_cancelled_adabn_returns_the_source_model(source_model, domains):
    res = adapt(source_model, *domains, method="adabn", config=cfg(), cancel=lambda: True)
    assert res.reason is StopReason.CANCELLED
    assert same(state(res.model), state(source_model))


# ------------------------------------------------------------------ files, provenance
def test_saved_adapted_model_reloads_and_predicts_identically(source_model, domains, tmp_path):
    res = adapt(source_model, *domains, method="lmadda", layers=3, config=cfg())
    path = save_model(res.model, tmp_path / "adapted.pt", provenance=res.provenance)
    loaded = load_model(path)
    x = torch.from_numpy(np.ascontiguousarray(domains[1][:2, None, :64, :64]))
    with torch.no_grad():
        assert torch.equal(res.model(x), loaded(x))
    prov = read_checkpoint(path)[2]["provenance"]
    assert prov["method"] == "lmadda"
    assert prov["layers"] == [3]
    assert prov["best_step"] == res.best_step
    assert prov["stop_reason"] == "completed"
    assert prov["config"]["steps"] == 6
    assert loaded.meta["channel_names"] == ["DAPI", "CD29"]


def test_same_seed_gives_identical_weights(source_model, domains):
    a = adapt(source_model, *domains, method="lmadda", layers=5, config=cfg(seed=7))
    b = adapt(source_model, *domains, method="lmadda", layers=5, config=cfg(seed=7))
    c = adapt(source_model, *domains, method="lmadda", layers=5, config=cfg(seed=8))
    assert same(state(a.model), state(b.model))
    assert not same(state(a.model), state(c.model))
    assert a.history == b.history


# ------------------------------------------------------------------ divergence
class PoisonedSampler:
    """Finite patches for the first ``good`` batches, then NaN (bypasses input sanitising)."""

    def __init__(self, data, good):
        self.inner = PatchSampler(ArrayDataset(data), 32, 2, seed=3)
        self.calls, self.good = 0, good

    def sample(self):
        self.calls += 1
        b = self.inner.sample()
        return b if self.calls <= self.good else np.full_like(b, np.nan)


def test_non_finite_losses_stop_as_diverged_with_a_finite_rolled_back_model(source_model,
                                                                            domains):
    # eval_patches=4 with batch 2 uses 2 batches of the target; then 3 good training steps
    target = PoisonedSampler(domains[1], good=2 + 3)
    res = adapt(source_model, domains[0], target, method="lmadda", layers=3,
                config=cfg(steps=10, eval_every=1, lr_g=1.0))
    assert res.reason is StopReason.DIVERGED
    assert res.steps_done == 4
    assert res.best_step == 3
    assert "non-finite" in res.message
    assert all(torch.isfinite(v).all() for v in state(res.model).values()
               if v.is_floating_point())


# ------------------------------------------------------------------ nonsense is refused
@pytest.mark.parametrize("kw,match", [
    ({"steps": -1}, "steps"),
    ({"steps": 0}, "steps"),
    ({"lr_g": 0}, "lr_g"),
    ({"lr_d": 0.0}, "lr_d"),
    ({"lr_g": float("nan")}, "lr_g"),
    ({"criterion": "accuracy"}, "criterion"),
    ({"trainable": (0, 2)}, "trainable"),
])
def test_bad_config_values(kw, match):
    with pytest.raises(ConfigError, match=match):
        cfg(**kw)


@pytest.mark.parametrize("method,layers,match", [
    ("lmadda", 0, "out of range"),
    ("lmadda", 11, "out of range"),
    ("lmadda", "1-12", "out of range"),
    ("lmadda", "x", "cannot read layers"),
    ("lmadda", None, "needs a layer"),
    ("lmadda", "2,5", "one layer"),
    ("lmadda-multi", 2, "two or more"),
    ("magic", 2, "unknown method"),
])
def test_bad_method_or_layer(source_model, domains, method, layers, match):
    with pytest.raises(ConfigError, match=match):
        adapt(source_model, *domains, method=method, layers=layers, config=cfg())


def test_patch_not_multiple_of_model_stride(source_model, domains):
    with pytest.raises(ConfigError, match="multiple of 32"):
        adapt(source_model, *domains, method="lmadda", layers=2, config=cfg(patch_size=48))


def test_interrupted_run_resumes_to_the_uninterrupted_result(source_model, domains, tmp_path):
    config = cfg(steps=12, eval_every=3, criterion="last")
    full = adapt(source_model, *domains, method="lmadda", layers=3, config=config)
    state = tmp_path / "run.pt"
    calls = {"n": 0}

    def cancel_after_8():
        calls["n"] += 1
        return calls["n"] > 8

    part = adapt(source_model, *domains, method="lmadda", layers=3, config=config,
                 cancel=cancel_after_8, run_state=state)
    assert part.reason is StopReason.CANCELLED and state.exists()
    # the interruption left a different model than the full run
    assert not torch.equal(part.model.down[0][0].weight, full.model.down[0][0].weight)
    resumed = adapt(source_model, *domains, method="lmadda", layers=3, config=config,
                    run_state=state)
    assert resumed.best_step == full.best_step == 12
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["step"] for h in resumed.history] == [h["step"] for h in full.history]


def test_resume_with_other_settings_is_refused(source_model, domains, tmp_path):
    state = tmp_path / "run.pt"
    adapt(source_model, *domains, method="lmadda", layers=3, config=cfg(steps=3, eval_every=3),
          run_state=state)
    with pytest.raises(ConfigError, match="other settings"):
        adapt(source_model, *domains, method="lmadda", layers=2,
              config=cfg(steps=3, eval_every=3), run_state=state)
