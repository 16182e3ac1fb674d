"""SCGAN image-level adaptation: events, cancel, resume, the translated model and its file."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from napari_lmadda.adapt.config import AdaptConfig
from napari_lmadda.adapt.engine import METHODS, adapt, iter_adapt
from napari_lmadda.adapt.events import Evaluated, Finished, Started, Step, StopReason
from napari_lmadda.adapt.scgan import SSDiscriminator
from napari_lmadda.errors import CheckpointError, ConfigError
from napari_lmadda.inference.predict import predict_image
from napari_lmadda.models import UNetGenerator, load_model, read_checkpoint, save_model
from napari_lmadda.models.checkpoint import atomic_torch_save
from napari_lmadda.models.translated import TranslatedModel, Translator, TranslatorConfig


def _domains(n: int = 6, size: int = 64):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    src, tgt = [], []
    for _ in range(n):
        cx, cy = rng.uniform(10, size - 10, 2)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 40.0)
        src.append((blob + 0.05 * rng.standard_normal((size, size))).astype(np.float32))
        # the "new microscope": inverted contrast and an offset
        tgt.append((1.5 - blob + 0.05 * rng.standard_normal((size, size))).astype(np.float32))
    return np.stack(src), np.stack(tgt)


def _model() -> UNetGenerator:
    torch.manual_seed(0)
    m = UNetGenerator(num_downs=3, ngf=8, out_channels=2)
    m.meta = {"channel_names": ["DAPI", "CD29"]}
    return m.eval()


def _cfg(**kw) -> AdaptConfig:
    base = dict(steps=4, batch_size=2, patch_size=32, eval_every=2, eval_patches=4, ndf=8,
                scgan_ngf=4, scgan_blocks=1, scgan_crop=0, device="cpu")
    return AdaptConfig(**{**base, **kw})


def test_registered():
    from napari_lmadda.adapt import scgan

    entry = METHODS["scgan"]
    assert entry.factory is scgan.make and entry.options is not None and entry.adversarial


def test_events_and_unchanged_source_model():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    src, tgt = _domains()
    events = list(iter_adapt(model, src, tgt, method="scgan", config=_cfg()))
    assert isinstance(events[0], Started) and events[0].method == "scgan"
    assert events[0].trainable_params > 0
    assert isinstance(events[-1], Finished)
    assert [e.step for e in events if isinstance(e, Step)] == [1, 2, 3, 4]
    assert [e.step for e in events if isinstance(e, Evaluated)] == [0, 2, 4]
    for e in events:
        if isinstance(e, Evaluated):
            assert np.isfinite(e.criterion)
            assert {"gap", "tap_w2", "cycle", "d_acc"} <= set(e.metrics)
    res = events[-1].result
    assert res.method == "scgan" and res.reason is StopReason.COMPLETED and res.steps_done == 4
    assert isinstance(res.model, TranslatedModel)
    # G stays the source model: the caller's copy and the one inside the result
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
        assert torch.equal(res.model.unet.state_dict()[k], v)
    assert res.model.meta["channel_names"] == ["DAPI", "CD29"]
    assert [h["step"] for h in res.history] == [0, 2, 4]


def test_training_moves_the_translator_and_kept_state_is_the_best():
    """With criterion 'last' the kept translator is the final EMA one, no longer the identity;
    the monitor sees exactly the state that is kept."""
    model = _model()
    src, tgt = _domains()
    seen = {}

    def monitor(step, net):
        seen[step] = copy.deepcopy(net.translator.state_dict())
        x = torch.zeros(1, 1, 32, 32)
        return {"change": float((net.translate(x) - x).abs().mean())}

    res = adapt(model, src, tgt, method="scgan", monitor=monitor,
                config=_cfg(steps=6, eval_every=3, criterion="last", ema_decay=0.0,
                            scgan_lr=1e-2))
    assert res.best_step == 6
    assert res.history[0]["monitor_change"] == 0.0  # starts as the identity
    assert res.history[-1]["monitor_change"] > 0
    for k, v in res.model.translator.state_dict().items():
        assert torch.equal(v, seen[6][k])


def test_cancel_keeps_the_best_state():
    model = _model()
    src, tgt = _domains()
    steps = []

    def cancel():
        return len(steps) >= 3

    seen = {}

    def monitor(step, net):
        seen[step] = copy.deepcopy(net.translator.state_dict())
        return {}

    best = None
    for ev in iter_adapt(model, src, tgt, method="scgan", config=_cfg(steps=10),
                         cancel=cancel, monitor=monitor):
        if isinstance(ev, Step):
            steps.append(ev.step)
        if isinstance(ev, Evaluated) and ev.is_best:
            best = ev.step
        if isinstance(ev, Finished):
            res = ev.result
    assert res.reason is StopReason.CANCELLED and res.steps_done == 3
    assert res.best_step == best and best in (0, 2)
    for k, v in res.model.translator.state_dict().items():
        assert torch.equal(v, seen[best][k])


def test_resume_matches_an_uninterrupted_run(tmp_path):
    src, tgt = _domains()
    cfg = _cfg(steps=6, eval_every=2, scgan_crop=16, criterion="last")
    full = adapt(_model(), src, tgt, method="scgan", config=cfg)
    state = tmp_path / "run.pt"
    n = []

    def cancel():
        return len(n) >= 3

    part = adapt(_model(), src, tgt, method="scgan", config=cfg, run_state=state,
                 cancel=cancel, callback=lambda e: n.append(1) if isinstance(e, Step) else None)
    assert part.reason is StopReason.CANCELLED and state.exists()
    done = adapt(_model(), src, tgt, method="scgan", config=cfg, run_state=state)
    assert done.steps_done == 6 and done.best_step == 6
    for k, v in full.model.translator.state_dict().items():
        assert torch.equal(v, done.model.translator.state_dict()[k]), k
    with pytest.raises(ConfigError, match="other settings"):
        adapt(_model(), src, tgt, method="scgan", config=_cfg(steps=7), run_state=state)


def test_bad_options():
    with pytest.raises(ConfigError, match="scgan_ngf"):
        AdaptConfig(scgan_ngf=0)
    with pytest.raises(ConfigError, match="scgan_crop"):
        AdaptConfig(scgan_crop=40)
    with pytest.raises(ConfigError, match="scgan_cycle"):
        AdaptConfig(scgan_cycle=-1.0)
    src, tgt = _domains()
    with pytest.raises(ConfigError, match="multiple of 16"):
        list(iter_adapt(_model(), src, tgt, method="scgan", config=_cfg(patch_size=24)))


def test_translator_starts_as_identity_and_composite_matches_unet():
    model = _model()
    x = torch.randn(2, 1, 32, 32)
    tm = TranslatedModel(Translator(ngf=4, n_blocks=1), model).eval()
    assert torch.equal(tm.translate(x), x)
    assert torch.allclose(tm(x), model(x))
    assert torch.allclose(tm(x, upto=3), model(x, upto=3))
    assert tm.num_layers == model.num_layers and tm.min_size == model.min_size
    assert tm.config == model.config
    img = np.random.default_rng(1).random((50, 70)).astype(np.float32)
    np.testing.assert_allclose(predict_image(tm, img, tile=32, overlap=8),
                               predict_image(model, img, tile=32, overlap=8), atol=1e-6)
    with pytest.raises(ConfigError, match="channel"):
        TranslatedModel(Translator(channels=3), model)


def test_ssl_decoder_shapes_and_gradient():
    d = SSDiscriminator(1, 4)
    x = torch.randn(2, 1, 32, 32)
    assert d(x).shape == (2, 1, 4, 4)
    for q in range(4):
        loss = d.ssl_loss(x, q)
        assert loss.ndim == 0 and torch.isfinite(loss)
    d.zero_grad()
    d.ssl_loss(x, 0).backward()
    assert d.decoder[1].weight.grad.abs().sum() > 0 and d.encoder[0].weight.grad.abs().sum() > 0


def _trained_translated() -> TranslatedModel:
    torch.manual_seed(3)
    t = Translator(ngf=4, n_blocks=1)
    with torch.no_grad():
        t.head[1].weight.normal_(0.0, 0.05)
    tm = TranslatedModel(t, _model())
    tm.meta = {"channel_names": ["DAPI", "CD29"]}
    return tm.eval()


def test_translated_model_file_roundtrip(tmp_path):
    tm = _trained_translated()
    path = save_model(tm, tmp_path / "scgan.pt", provenance={"method": "scgan"})
    raw = torch.load(path, weights_only=True)  # plain containers only
    assert raw["format_version"] == 2 and raw["translator"]["ngf"] == 4
    back = load_model(path)
    assert isinstance(back, TranslatedModel)
    x = torch.randn(2, 1, 32, 32)
    assert torch.allclose(back(x), tm(x))
    assert not torch.allclose(back(x), back.unet(x))  # the translator is really there
    cfg, sd, meta = read_checkpoint(path)
    assert cfg == tm.unet.config and meta["provenance"]["method"] == "scgan"
    assert any(k.startswith("translator.") for k in sd)
    # a plain model is still written as version 1
    plain = save_model(_model(), tmp_path / "plain.pt")
    assert torch.load(plain, weights_only=True)["format_version"] == 1


def test_damaged_translated_files(tmp_path):
    tm = _trained_translated()
    good = torch.load(save_model(tm, tmp_path / "a.pt"), weights_only=True)
    bad = dict(good)
    del bad["translator"]
    atomic_torch_save(bad, tmp_path / "no_translator.pt")
    with pytest.raises(CheckpointError, match="damaged header"):
        load_model(tmp_path / "no_translator.pt")
    bad = dict(good, translator={**good["translator"], "ngf": 8})
    atomic_torch_save(bad, tmp_path / "wrong_shape.pt")
    with pytest.raises(CheckpointError, match="translator with ngf 8"):
        load_model(tmp_path / "wrong_shape.pt")
    bad = dict(good, translator={**good["translator"], "channels": 2})
    atomic_torch_save(bad, tmp_path / "channels.pt")
    with pytest.raises(CheckpointError, match="impossible model"):
        load_model(tmp_path / "channels.pt")
    bad = dict(good, translator={**good["translator"], "n_blocks": 10**6})
    atomic_torch_save(bad, tmp_path / "huge.pt")
    with pytest.raises(CheckpointError, match="n_blocks"):
        load_model(tmp_path / "huge.pt")


def test_cli_adapt_and_predict_with_scgan(tmp_path, tiny_model_path):
    import tifffile

    from napari_lmadda.cli import main

    src, tgt = _domains(n=3, size=64)
    for name, imgs in (("src", src), ("tgt", tgt)):
        (tmp_path / name).mkdir()
        for i, im in enumerate(imgs):
            tifffile.imwrite(tmp_path / name / f"{i}.tif", im)
    out = tmp_path / "scgan.pt"
    rc = main(["adapt", "--model", str(tiny_model_path), "--source", str(tmp_path / "src"),
               "--target", str(tmp_path / "tgt"), "--method", "scgan", "--out", str(out),
               "--steps", "2", "--batch", "2", "--patch", "32", "--eval-every", "1",
               "--scgan-ngf", "4", "--scgan-blocks", "1", "--device", "cpu"])
    assert rc == 0 and out.exists() and not (tmp_path / "scgan.pt.run").exists()
    model = load_model(out)
    assert isinstance(model, TranslatedModel)
    assert model.translator.config.ngf == 4 and model.translator.config.n_blocks == 1
    assert read_checkpoint(out)[2]["provenance"]["method"] == "scgan"
    rc = main(["predict", "--model", str(out), "--images", str(tmp_path / "tgt"),
               "--out", str(tmp_path / "pred"), "--tile", "64", "--device", "cpu"])
    assert rc == 0
    assert len(list((tmp_path / "pred").rglob("*.tif"))) >= 3


def test_translator_config_validation():
    with pytest.raises(ConfigError, match="ngf"):
        TranslatorConfig(ngf=0)
    assert TranslatorConfig.from_dict({"ngf": 4, "extra": 1}).ngf == 4
