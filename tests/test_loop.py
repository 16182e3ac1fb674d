"""The adaptation loop with a method written in a few lines, and the method registry."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from napari_lmadda.adapt import registry
from napari_lmadda.adapt.config import AdaptConfig
from napari_lmadda.adapt.engine import adapt, iter_adapt
from napari_lmadda.adapt.events import Evaluated, Finished, Started, Step, StopReason
from napari_lmadda.adapt.features import kept_model, make_student, taps
from napari_lmadda.adapt.loop import Losses, Method
from napari_lmadda.errors import ConfigError
from napari_lmadda.models import UNetGenerator


class MatchMeans(Method):
    """A toy method on the loop: layer ``l`` of G' matches the mean of G's source taps.

    Not adversarial and not useful; it shows the whole interface a method needs.
    """

    name = "match-means"

    def __init__(self, model, layers, config, nan_at: int | None = None):
        self.layers, self.cfg, self.nan_at, self.calls = tuple(layers), config, nan_at, 0

    def build(self, run):
        self.net, params = make_student(run, 1, self.layers[0])
        self.opt = torch.optim.SGD(params, lr=self.cfg.lr_g)
        return self.net, params

    def step(self, run, xs, xt):
        self.calls += 1
        (layer,) = self.layers
        with torch.no_grad():
            want = run.G.forward_taps(xs, self.layers)[layer].mean(dim=(0, 2, 3))
        got = self.net.forward_taps(xt, self.layers)[layer].mean(dim=(0, 2, 3))
        loss = F.mse_loss(got, want)
        self.opt.zero_grad()
        run.backward(loss, self.opt, [p for g in self.opt.param_groups for p in g["params"]])
        value = float("nan") if self.calls == self.nan_at else loss.item()
        return Losses(loss_g=value)

    def metrics(self, run, net):
        (layer,) = self.layers
        a = taps(run.G, run.eval_src, self.layers)[layer].mean(dim=(0, 2, 3))
        b = taps(net, run.eval_tgt, self.layers)[layer].mean(dim=(0, 2, 3))
        return {"gap": float((a - b).abs().mean())}

    def kept_model(self, run, ema, best_state):
        return kept_model(ema, best_state, run.model)

    def state_dict(self):
        return {"opt": self.opt.state_dict()}

    def load_state_dict(self, state):
        self.opt.load_state_dict(state["opt"])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return UNetGenerator(num_downs=4, ngf=4, out_channels=2).eval()


@pytest.fixture
def registered(monkeypatch):
    """``match-means`` registered like any method: one entry."""
    entry = registry.MethodEntry("match-means", "Match means", "one", MatchMeans)
    monkeypatch.setitem(registry.METHODS, entry.name, entry)
    return entry


def cfg(**kw):
    base = dict(steps=6, batch_size=2, patch_size=32, eval_every=2, eval_patches=4,
                device="cpu", lr_g=0.05, ema_decay=0.0, criterion="last")
    return AdaptConfig(**{**base, **kw})


def test_a_new_method_is_a_step_and_one_entry(model, domains, registered):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    events = list(iter_adapt(model, *domains, method="match-means", layers=3, config=cfg()))
    assert isinstance(events[0], Started) and events[0].layers == (3,)
    assert [e.step for e in events if isinstance(e, Step)] == [1, 2, 3, 4, 5, 6]
    evals = [e for e in events if isinstance(e, Evaluated)]
    assert [e.step for e in evals] == [0, 2, 4, 6]
    assert evals[-1].metrics["gap"] < evals[0].metrics["gap"]  # it does what it says
    res = events[-1].result
    assert isinstance(events[-1], Finished) and res.reason is StopReason.COMPLETED
    assert res.provenance["method"] == "match-means" and res.best_step == 6
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # layer 1 trained; the layers after 3 are the source model's
    def first_weight(m, layer):
        return next(iter(m.block(layer).parameters()))

    assert not torch.equal(first_weight(res.model, 1), first_weight(model, 1))
    assert all(torch.equal(first_weight(res.model, i), first_weight(model, i))
               for i in range(4, model.num_layers + 1))
    with pytest.raises(ConfigError, match="needs a layer"):
        list(iter_adapt(model, *domains, method="match-means", config=cfg()))


def test_the_loop_resumes_a_new_method_to_the_uninterrupted_result(model, domains, registered,
                                                                    tmp_path):
    full = adapt(model, *domains, method="match-means", layers=2, config=cfg(ema_decay=0.9))
    state = tmp_path / "run"
    polls = iter(range(100))
    part = adapt(model, *domains, method="match-means", layers=2, config=cfg(ema_decay=0.9),
                 run_state=state, cancel=lambda: next(polls) >= 3)
    assert part.reason is StopReason.CANCELLED and state.exists()
    resumed = adapt(model, *domains, method="match-means", layers=2,
                    config=cfg(ema_decay=0.9), run_state=state)
    assert resumed.history == full.history
    a, b = resumed.model.state_dict(), full.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="other settings"):
        adapt(model, *domains, method="match-means", layers=2, config=cfg(steps=7),
              run_state=state)


def test_non_finite_losses_roll_back_to_the_kept_state(model, domains, monkeypatch):
    entry = registry.MethodEntry("nan", "NaN", "one",
                                 lambda m, lays, c: MatchMeans(m, lays, c, nan_at=3))
    monkeypatch.setitem(registry.METHODS, "nan", entry)
    res = adapt(model, *domains, method="nan", layers=2, config=cfg())
    assert res.reason is StopReason.DIVERGED and res.steps_done == 3
    assert res.best_step == 2 and "non-finite at step 3" in res.message


def test_single_process_methods_are_refused_under_torchrun(model, domains, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for method in ("apma", "scgan", "none"):
        with pytest.raises(ConfigError, match=f"{method} runs in a single process"):
            list(iter_adapt(model, *domains, method=method, config=cfg()))


# ------------------------------------------------------------------ the registry
def test_registry_entries_are_complete_and_typed():
    assert registry.method_names() == ["none", "adabn", "adda", "lmadda", "lmadda-multi",
                                       "scgan", "apma", "auto"]
    assert registry.baselines() == ("none", "adabn", "adda")
    groups = {f.metadata["group"][0] for f in dataclasses.fields(AdaptConfig)
              if "group" in f.metadata}
    for name, e in registry.METHODS.items():
        assert e.name == name and e.label and e.summary and callable(e.factory)
        assert e.layers in registry.LAYER_USES
        assert e.options is None or e.options in groups, name
        assert not e.multi_process or e.adversarial  # torchrun: the loop splits batches
    assert {m for m, e in registry.METHODS.items() if e.multi_process} == {
        "adda", "lmadda", "lmadda-multi"}
    with pytest.raises(ConfigError, match="unknown method 'x': choose one of none, adabn"):
        registry.get("x")


@pytest.mark.parametrize("method", ["adda", "lmadda", "lmadda-multi", "scgan", "apma"])
def test_adversarial_factories_make_loop_steps_named_like_their_entry(model, method):
    layers = {"lmadda": (3,), "lmadda-multi": (2, 5), "apma": ()}.get(method, ())
    step = registry.METHODS[method].factory(model, layers, cfg())
    assert isinstance(step, Method) and step.name == method


@pytest.mark.parametrize("method,layers,tag", [
    ("none", (), "unadapted"), ("adda", (8,), "adda"), ("lmadda", (3,), "lmadda L3"),
    ("lmadda-multi", (2, 3, 4), "lmadda-multi L2-4"),
    ("lmadda-multi", (2, 5), "lmadda-multi L2,5"),
    ("scgan", (), "scgan"), ("adabn", (), "adabn"), ("apma", (7, 8), "apma L7-8"),
    ("someone-elses", (4,), "someone-elses L4"),
])
def test_result_tags(method, layers, tag):
    assert registry.result_tag(method, layers) == tag
