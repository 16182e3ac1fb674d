"""AdaBN variants: exact vs running-average statistics, and which layers are re-estimated."""

import copy

import pytest
import torch
import torch.nn.functional as F

from napari_lmadda.adapt.adabn import (
    adapt_batchnorm,
    batchnorms_of,
    bn_layers,
    iter_adapt_batchnorm,
)
from napari_lmadda.adapt.config import AdaptConfig
from napari_lmadda.adapt.engine import adapt
from napari_lmadda.cli import main
from napari_lmadda.data.synthetic import write_domain
from napari_lmadda.errors import ConfigError
from napari_lmadda.models import read_checkpoint, save_model


@pytest.fixture(scope="module")
def model(source_model):
    return source_model  # conftest's: source statistics unlike a fresh BatchNorm's


@pytest.fixture(scope="module")
def batches():
    g = torch.Generator().manual_seed(2)
    return [torch.rand(3, 1, 32, 32, generator=g) * 2 - 0.5 for _ in range(4)]


def stats(m, layer):
    return [(bn.running_mean.clone(), bn.running_var.clone()) for bn in batchnorms_of(m, [layer])]


def changed(a, b, layer):
    return any(not torch.equal(x, y) for pa, pb in zip(stats(a, layer), stats(b, layer))
               for x, y in zip(pa, pb))


def weights(m):
    return {k: v.clone() for k, v in m.state_dict().items()
            if "running" not in k and "num_batches" not in k}


def bn_input(m, x, layer):
    """The input of layer ``layer``'s BatchNorm (a down block) with ``m`` in eval mode."""
    with torch.no_grad():
        h = x if layer == 1 else F.leaky_relu(m(x, upto=layer - 1), 0.2)
        return m.down[layer - 1][0](h)


def channel_stats(inputs):
    x = torch.cat(inputs).double().transpose(0, 1).reshape(inputs[0].shape[1], -1)
    return x.mean(1), x.var(1, unbiased=True)


def test_the_tiny_model_has_batchnorms_in_the_inner_blocks_only(model):
    assert bn_layers(model) == [2, 3, 4, 6, 7, 8, 9]  # none in 1, 5 (bottleneck), 10


@pytest.mark.parametrize("stats_mode", ["cumulative", "momentum"])
def test_listed_layers_change_and_the_others_do_not(model, batches, stats_mode):
    m = copy.deepcopy(model)
    n = adapt_batchnorm(m, batches, layers=[2, 4], stats=stats_mode)
    assert n == 2
    assert changed(m, model, 2) and changed(m, model, 4)
    for layer in (3, 6, 7, 8, 9):
        assert not changed(m, model, layer), layer
    w0, w1 = weights(model), weights(m)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert not m.training and not any(b.training for b in m.modules())


@pytest.mark.parametrize("stats_mode", ["cumulative", "momentum"])
def test_upto_changes_the_layers_up_to_l(model, batches, stats_mode):
    m = copy.deepcopy(model)
    adapt_batchnorm(m, batches, upto=3, stats=stats_mode)
    assert changed(m, model, 2) and changed(m, model, 3)
    for layer in (4, 6, 7, 8, 9):
        assert not changed(m, model, layer), layer


@pytest.mark.parametrize("layer", [2, 3])
def test_cumulative_statistics_are_the_exact_mean_and_variance(model, batches, layer):
    m = copy.deepcopy(model)
    adapt_batchnorm(m, batches, layers=[layer])
    # the layers before stay in eval mode with their source statistics: compute with `model`
    mean, var = channel_stats([bn_input(model, x, layer) for x in batches])
    (bn,) = batchnorms_of(m, [layer])
    torch.testing.assert_close(bn.running_mean.double(), mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_var.double(), var, atol=1e-5, rtol=1e-4)
    assert bn.momentum == 0.1  # restored after the estimation


def test_momentum_statistics_follow_the_running_average(model, batches):
    m = copy.deepcopy(model)
    adapt_batchnorm(m, batches, layers=[2], stats="momentum")
    (bn0,) = batchnorms_of(model, [2])
    r_mean, r_var = bn0.running_mean.double().clone(), bn0.running_var.double().clone()
    for x in batches:  # torch: r <- 0.9 r + 0.1 * (batch mean, unbiased batch variance)
        mean, var = channel_stats([bn_input(model, x, 2)])
        r_mean, r_var = 0.9 * r_mean + 0.1 * mean, 0.9 * r_var + 0.1 * var
    (bn,) = batchnorms_of(m, [2])
    torch.testing.assert_close(bn.running_mean.double(), r_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_var.double(), r_var, atol=1e-5, rtol=1e-4)
    exact = copy.deepcopy(model)
    adapt_batchnorm(exact, batches, layers=[2])
    assert not torch.allclose(batchnorms_of(exact, [2])[0].running_var, bn.running_var)


@pytest.mark.parametrize("stats_mode", ["cumulative", "momentum"])
def test_stopping_early_leaves_the_statistics_unchanged(model, batches, stats_mode):
    m = copy.deepcopy(model)
    gen = iter_adapt_batchnorm(m, iter(batches), upto=4, stats=stats_mode)
    assert next(gen) == 1 and next(gen) == 2
    gen.close()
    for layer in (2, 3, 4):
        assert not changed(m, model, layer), layer
    assert [bn.momentum for bn in batchnorms_of(m, range(1, 11))] == [0.1] * 7


def test_upto_and_layers_together_are_refused(model, batches):
    with pytest.raises(ConfigError, match="not both"):
        adapt_batchnorm(copy.deepcopy(model), batches, upto=3, layers=[2])
    with pytest.raises(ConfigError, match="adabn_stats"):
        adapt_batchnorm(copy.deepcopy(model), batches, stats="ema")


# ------------------------------------------------------------------ through the engine
def cfg(**kw):
    return AdaptConfig(**{**dict(steps=3, batch_size=2, patch_size=32, device="cpu"), **kw})


def test_engine_listed_layers_and_provenance(model, domains):
    res = adapt(model, *domains, method="adabn", layers="2,8",
                config=cfg(adabn_layers="listed", adabn_stats="momentum"))
    assert res.provenance["bn_layers"] == [2, 8]
    assert res.provenance["adabn_stats"] == "momentum"
    assert changed(res.model, model, 2) and changed(res.model, model, 8)
    for layer in (3, 4, 6, 7, 9):
        assert not changed(res.model, model, layer), layer


def test_engine_default_is_upto_with_exact_statistics(model, domains):
    res = adapt(model, *domains, method="adabn", layers=3, config=cfg())
    assert res.provenance["bn_layers"] == [2, 3]
    assert res.provenance["adabn_stats"] == "cumulative"
    assert changed(res.model, model, 3) and not changed(res.model, model, 4)


def test_engine_cancel_in_momentum_mode_returns_the_source_model(model, domains):
    res = adapt(model, *domains, method="adabn", config=cfg(adabn_stats="momentum"),
                cancel=lambda: True)
    assert res.reason.value == "cancelled"
    for layer in bn_layers(model):
        assert not changed(res.model, model, layer)


def test_listed_layers_without_batchnorm_are_a_config_error(model, domains):
    with pytest.raises(ConfigError, match="have no BatchNorm"):
        adapt(model, *domains, method="adabn", layers="1,5", config=cfg(adabn_layers="listed"))


@pytest.mark.parametrize("field,value", [("adabn_stats", "ema"), ("adabn_layers", "some")])
def test_bad_variant_names_are_config_errors(field, value):
    with pytest.raises(ConfigError, match=field):
        AdaptConfig(**{field: value})


def test_cli_variant_options(model, tmp_path, capsys):
    write_domain(tmp_path / "src", 2, size=64, seed=0)
    write_domain(tmp_path / "tgt", 2, size=64, seed=1, shift="overexpose")
    save_model(model, tmp_path / "g.pt")
    out = tmp_path / "a.pt"
    rc = main(["adapt", "--model", str(tmp_path / "g.pt"), "--source", str(tmp_path / "src/input"),
               "--target", str(tmp_path / "tgt/input"), "--method", "adabn", "--layer", "3,7",
               "--adabn-layers", "listed", "--adabn-stats", "momentum", "--steps", "2",
               "--out", str(out), "--batch", "2", "--patch", "32", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    prov = read_checkpoint(out)[2]["provenance"]
    assert prov["bn_layers"] == [3, 7] and prov["adabn_stats"] == "momentum"
    with pytest.raises(SystemExit) as exc:  # argparse rejects the choice
        main(["adapt", "--model", str(tmp_path / "g.pt"), "--source", str(tmp_path / "src/input"),
              "--target", str(tmp_path / "tgt/input"), "--method", "adabn",
              "--adabn-stats", "exact", "--out", str(tmp_path / "b.pt")])
    assert exc.value.code == 2
    assert "--adabn-stats" in capsys.readouterr().err
