"""APMA (reconstruction decoder + adversarial features/predictions) on a tiny UNet."""

import copy

import numpy as np
import pytest
import torch

from napari_lmadda.adapt.apma import ReconstructionDecoder, apma_layers, parse_parts
from napari_lmadda.adapt.config import AdaptConfig
from napari_lmadda.adapt.engine import adapt, iter_adapt
from napari_lmadda.adapt.events import Evaluated, Finished, Started, Step, StopReason
from napari_lmadda.cli import main
from napari_lmadda.data.datasets import ArrayDataset, PatchSampler
from napari_lmadda.data.synthetic import write_domain
from napari_lmadda.errors import ConfigError
from napari_lmadda.models import UNetGenerator, load_model, read_checkpoint, save_model

N = 5  # num_downs: layers 1..10, bottleneck 5, last decoder features 9, output 10


@pytest.fixture(scope="module")
def source_model():
    torch.manual_seed(0)
    m = UNetGenerator(num_downs=N, ngf=8, out_channels=2)
    m.meta = {"channel_names": ["DAPI", "CD29"], "target_range": [-0.05, 1.05]}
    return m.eval()


def cfg(**kw):
    base = dict(steps=4, batch_size=2, patch_size=32, eval_every=2, eval_patches=4, ndf=8,
                device="cpu", criterion="last", apma_warmup=2, lr_g=1e-3, ema_decay=0.0)
    return AdaptConfig(**{**base, **kw})


def weights(model, layer):
    return {k: v.detach().clone() for k, v in model.block(layer).state_dict().items()
            if "running" not in k and "num_batches" not in k}


def same_block(a, b, layer):
    wa, wb = weights(a, layer), weights(b, layer)
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------ parts and layers
@pytest.mark.parametrize("spec,parts", [
    ("all", {"en", "de_feat", "de_pred"}), ("en", {"en"}), ("EN+de_feat", {"en", "de_feat"}),
    ("de_pred", {"de_pred"}), ("de_feat+de_pred", {"de_feat", "de_pred"}),
])
def test_parse_parts(spec, parts):
    assert parse_parts(spec) == parts
    assert parse_parts(AdaptConfig(apma_parts=spec).apma_parts) == parts


@pytest.mark.parametrize("spec", ["en+foo", "de", "en+en", "", "all+en"])
def test_bad_part_names_are_config_errors(spec):
    with pytest.raises(ConfigError, match="apma_parts must be 'all' or parts joined by"):
        AdaptConfig(apma_parts=spec)


@pytest.mark.parametrize("field,value", [("apma_rec_weight", -1.0),
                                         ("apma_rec_weight", float("nan")),
                                         ("apma_warmup", -1)])
def test_bad_weights_are_config_errors(field, value):
    with pytest.raises(ConfigError, match=field):
        AdaptConfig(**{field: value})


def test_layers_of_each_part(source_model):
    m = source_model
    assert apma_layers(m, parse_parts("all")) == (N, (2 * N - 1, 2 * N))
    assert apma_layers(m, parse_parts("en"), (3,)) == (3, ())
    assert apma_layers(m, parse_parts("de_pred"), (3,)) == (None, (2 * N,))  # layer unused
    with pytest.raises(ConfigError, match="encoder layer"):
        apma_layers(m, parse_parts("en"), (N + 1,))
    with pytest.raises(ConfigError, match="one encoder layer"):
        apma_layers(m, parse_parts("en"), (2, 3))


def test_reconstruction_decoder_rebuilds_the_input_size(source_model):
    x = torch.rand(2, 1, 32, 32)
    for layer in (1, 3, N):
        tap = source_model(x, upto=layer)
        out = ReconstructionDecoder(tap.shape[1], 1, layer)(tap)
        assert out.shape == x.shape


# ------------------------------------------------------------------ every row runs
@pytest.mark.parametrize("parts,used,trained", [
    ("en", (N,), N),
    ("de_feat", (2 * N - 1,), 2 * N - 1),
    ("de_pred", (2 * N,), 2 * N),
    ("en+de_feat", (N, 2 * N - 1), 2 * N - 1),
    ("all", (N, 2 * N - 1, 2 * N), 2 * N),
])
def test_each_part_combination_trains_exactly_its_layers(source_model, domains, parts, used,
                                                         trained):
    before = copy.deepcopy(source_model)
    events = list(iter_adapt(source_model, *domains, method="apma", config=cfg(apma_parts=parts)))
    assert isinstance(events[0], Started) and events[0].layers == used
    assert events[0].trainable_params == sum(
        p.numel() for i in range(1, trained + 1) for p in source_model.block(i).parameters())
    steps = [e for e in events if isinstance(e, Step)]
    assert [s.step for s in steps] == [1, 2, 3, 4]
    assert [e.step for e in events if isinstance(e, Evaluated)] == [0, 2, 4]
    res = events[-1].result
    assert isinstance(events[-1], Finished) and res.reason is StopReason.COMPLETED
    assert res.provenance["trainable_layers"] == [1, trained]
    assert set(res.provenance["apma_parts"].split("+")) == parse_parts(parts)
    assert same_model(source_model, before)  # G is left alone
    for layer in range(1, 2 * N + 1):
        assert same_block(res.model, source_model, layer) == (layer > trained), layer
    assert type(res.model) is UNetGenerator
    assert not res.model.training
    # the losses move: G' loss and (with discriminators) D loss differ between steps
    assert len({round(s.loss_g, 6) for s in steps}) > 1
    if parts != "en":
        assert len({round(s.loss_d, 6) for s in steps}) > 1
        assert all(0 <= s.d_acc <= 1 for s in steps)
    else:
        assert all(np.isnan(s.loss_d) and np.isnan(s.d_acc) for s in steps)


def test_reconstruction_improves_with_training(source_model, domains):
    res = adapt(source_model, *domains, method="apma",
                config=cfg(apma_parts="en", steps=30, eval_every=30, apma_warmup=0,
                           lr_d=3e-3, lr_g=1e-4))
    first, last = res.history[0]["rec_target"], res.history[-1]["rec_target"]
    assert last < 0.9 * first


def test_en_layer_and_trainable_narrow_the_trained_layers(source_model, domains):
    res = adapt(source_model, *domains, method="apma", layers=3,
                config=cfg(apma_parts="en", steps=2))
    assert res.layers == (3,) and res.provenance["encoder_layer"] == 3
    assert [same_block(res.model, source_model, i) for i in range(1, 2 * N + 1)] == [
        False] * 3 + [True] * (2 * N - 3)
    res = adapt(source_model, *domains, method="apma",
                config=cfg(apma_parts="de_pred", steps=2, trainable=(4, 7)))
    assert [same_block(res.model, source_model, i) for i in range(1, 2 * N + 1)] == [
        True] * 3 + [False] * 4 + [True] * 3
    with pytest.raises(ConfigError, match="go past"):
        adapt(source_model, *domains, method="apma",
              config=cfg(apma_parts="en", trainable=(1, N + 1)))


def test_d_acc_criterion_needs_a_discriminator(source_model, domains):
    with pytest.raises(ConfigError, match="d_acc"):
        adapt(source_model, *domains, method="apma", config=cfg(apma_parts="en",
                                                               criterion="d_acc"))


# ------------------------------------------------------------------ cancel, divergence, resume
def test_cancel_keeps_the_best_state(source_model, domains):
    polls = {"n": 0}

    def cancel():
        polls["n"] += 1
        return polls["n"] > 2 + 3  # after the warm-up's 2 polls and 3 steps

    res = adapt(source_model, *domains, method="apma", config=cfg(steps=6), cancel=cancel)
    assert res.reason is StopReason.CANCELLED and res.steps_done == 3 and res.best_step == 2
    ref = adapt(source_model, *domains, method="apma", config=cfg(steps=2))
    assert same_model(res.model, ref.model)
    assert not same_model(res.model, source_model)


def test_cancel_during_the_warmup_returns_the_source_model(source_model, domains):
    res = adapt(source_model, *domains, method="apma", config=cfg(), cancel=lambda: True)
    assert res.reason is StopReason.CANCELLED and res.best_step == 0
    assert same_model(res.model, source_model)


class PoisonAfter:
    """A sampler whose batches become NaN after ``n`` calls."""

    def __init__(self, images, n):
        self.inner = PatchSampler(ArrayDataset(images), 32, 2, seed=5)
        self.n, self.calls = n, 0

    def sample(self):
        self.calls += 1
        b = self.inner.sample()
        return b * np.nan if self.calls > self.n else b


def test_non_finite_losses_roll_back_to_the_best_state(source_model, domains):
    # fixed evaluation patches take 2 calls, warm-up 2; training step k is call 4 + k
    target = PoisonAfter(domains[1], 4 + 3)
    res = adapt(source_model, domains[0], target, method="apma", config=cfg(steps=6))
    assert res.reason is StopReason.DIVERGED and res.best_step == 2
    assert "non-finite" in res.message
    assert all(torch.isfinite(v).all() for v in res.model.state_dict().values()
               if v.is_floating_point())


def test_resume_ends_where_an_uninterrupted_run_does(source_model, domains, tmp_path):
    config = cfg(steps=6, apma_parts="all")
    full = adapt(source_model, *domains, method="apma", config=config)
    state = tmp_path / "run.pt"
    polls = {"n": 0}

    def cancel():
        polls["n"] += 1
        return polls["n"] > 2 + 3

    part = adapt(source_model, *domains, method="apma", config=config, cancel=cancel,
                 run_state=state)
    assert part.reason is StopReason.CANCELLED and state.exists()
    resumed = adapt(source_model, *domains, method="apma", config=config, run_state=state)
    assert resumed.reason is StopReason.COMPLETED
    assert same_model(resumed.model, full.model)
    with pytest.raises(ConfigError, match="other settings"):
        adapt(source_model, *domains, method="apma", config=cfg(steps=6, apma_parts="en"),
              run_state=state)


# ------------------------------------------------------------------ the result is a plain model
def test_saved_model_reloads_and_predicts_identically(source_model, domains, tmp_path):
    res = adapt(source_model, *domains, method="apma", config=cfg(steps=2))
    path = tmp_path / "apma.pt"
    save_model(res.model, path, provenance=res.provenance)
    loaded = load_model(path)
    assert type(loaded) is UNetGenerator
    assert loaded.state_dict().keys() == source_model.state_dict().keys()  # no R or D inside
    x = torch.from_numpy(domains[1][:2, None, :32, :32].copy())
    with torch.no_grad():
        assert torch.equal(loaded(x), res.model(x))
    prov = read_checkpoint(path)[2]["provenance"]
    assert prov["method"] == "apma" and prov["apma_parts"] == "en+de_feat+de_pred"


def test_cli_adapt_with_apma_parts(tmp_path, capsys, source_model):
    write_domain(tmp_path / "src", 2, size=64, seed=0)
    write_domain(tmp_path / "tgt", 2, size=64, seed=1, shift="overexpose")
    save_model(source_model, tmp_path / "g.pt")
    out = tmp_path / "a.pt"
    base = ["adapt", "--model", str(tmp_path / "g.pt"), "--source", str(tmp_path / "src/input"),
            "--target", str(tmp_path / "tgt/input"), "--method", "apma", "--steps", "2",
            "--eval-every", "2", "--batch", "2", "--patch", "32", "--device", "cpu"]
    assert main([*base, "--apma-parts", "en+de_feat", "--apma-rec-weight", "0.5",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"apma at layer(s) {N},{2 * N - 1}" in text and "wrote" in text
    prov = read_checkpoint(out)[2]["provenance"]
    assert prov["apma_parts"] == "en+de_feat" and prov["config"]["apma_rec_weight"] == 0.5
    assert main([*base, "--apma-parts", "en+bogus", "--out", str(tmp_path / "b.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "apma_parts must be" in err and "\n" not in err
    assert not (tmp_path / "b.pt").exists()


def test_sweep_runs_apma_as_a_baseline(source_model, domains):
    from napari_lmadda.evaluation.sweep import run_sweep

    runs = run_sweep(source_model, *domains, layers="", methods=["none", "apma"], seeds=[0],
                     config=cfg(steps=2, apma_parts="de_pred"))
    assert [r.method for r in runs] == ["none", "apma"]
    assert runs[1].steps_done == 2 and runs[1].stop_reason == "completed"


def test_unsupported_run_modes_are_refused(source_model, domains, monkeypatch):
    with pytest.raises(ConfigError, match="float32 only"):
        adapt(source_model, *domains, method="apma", config=cfg(amp="bf16"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="single process"):
        adapt(source_model, *domains, method="apma", config=cfg())
