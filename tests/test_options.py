"""Options that describe themselves: checks, flags, GUI controls and docs from one declaration."""

from __future__ import annotations

import dataclasses

import pytest

from napari_lmadda import options
from napari_lmadda.adapt.config import (
    AdabnOptions,
    AdaptConfig,
    ApmaOptions,
    ScganOptions,
    eval_every_for,
)
from napari_lmadda.cli import build_parser
from napari_lmadda.errors import ConfigError

#: the flat layout model provenance and run states have stored since before the sub-configs
FLAT_KEYS = [
    "steps", "batch_size", "patch_size", "lr_g", "lr_d", "beta1", "beta2", "gan_loss", "ndf",
    "d_spectral_norm", "d_gate", "source_weight", "ema_decay", "init_adabn", "bn_mode",
    "eval_every", "eval_patches", "criterion", "patience", "trainable", "apma_parts",
    "apma_rec_weight", "apma_warmup", "adabn_stats", "adabn_layers", "scgan_ngf",
    "scgan_blocks", "scgan_lr", "scgan_cycle", "scgan_identity", "scgan_crop", "seed",
    "device", "amp",
]


def test_flat_aliases_reach_the_method_sub_configs():
    cfg = AdaptConfig(apma_parts=" EN+de_feat", scgan_ngf=4, adabn_stats="momentum")
    assert cfg.apma == ApmaOptions(parts="en+de_feat")
    assert cfg.scgan == ScganOptions(ngf=4) and cfg.adabn == AdabnOptions(stats="momentum")
    assert (cfg.apma_parts, cfg.scgan_ngf, cfg.adabn_stats) == ("en+de_feat", 4, "momentum")
    cfg.apma_rec_weight = 0.5
    assert cfg.apma.rec_weight == 0.5
    nested = AdaptConfig(apma=ApmaOptions(parts="en"), scgan=ScganOptions(crop=0))
    assert nested.apma_parts == "en" and nested.scgan_crop == 0


def test_replace_copies_sub_configs_and_accepts_aliases():
    a = AdaptConfig(apma_parts="en")
    b = dataclasses.replace(a, seed=3)
    b.apma_parts = "de_pred"
    assert a.apma_parts == "en"  # not shared
    assert dataclasses.replace(a, apma_parts="all").apma.parts == "all"
    with pytest.raises(ConfigError, match="apma_parts must be"):
        dataclasses.replace(a, apma_parts="bogus")


def test_to_dict_keeps_the_flat_layout_and_from_dict_reads_both():
    cfg = AdaptConfig(apma_parts="en", scgan_crop=0, trainable=(1, 2), patience=3)
    d = cfg.to_dict()
    assert list(d) == FLAT_KEYS
    assert d["apma_parts"] == "en" and d["trainable"] == [1, 2]
    assert AdaptConfig.from_dict(d) == cfg
    assert AdaptConfig.from_dict({"apma": {"parts": "de_pred", "x": 1}, "nope": 2}).apma_parts \
        == "de_pred"
    assert AdaptConfig.from_dict({**d, "unknown_field": 1}) == cfg


@pytest.mark.parametrize("kw,message", [
    ({"steps": 0}, "steps must be a whole number of at least 1, got 0"),
    ({"steps": 2.0}, "steps must be a whole number"),
    ({"batch_size": True}, "batch_size must be a whole number"),
    ({"lr_g": 0.0}, r"lr_g must be a learning rate in \(0, 1\], got 0.0"),
    ({"lr_d": float("nan")}, "lr_d must be a learning rate"),
    ({"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\), got 1.0"),
    ({"d_gate": 1.5}, r"d_gate must be in \[0, 1\]"),
    ({"source_weight": -1.0}, "source_weight must be >= 0"),
    ({"gan_loss": "wgan"}, "gan_loss must be one of lsgan, vanilla, got 'wgan'"),
    ({"patience": 0}, "patience must be a whole number of at least 1 or None"),
    ({"trainable": (3, 2)}, "trainable must be"),
    ({"amp": "fp8"}, "amp must be one of off, bf16, fp16"),
    ({"apma_warmup": -1}, "apma_warmup must be a whole number of at least 0"),
    ({"scgan_blocks": 17}, "scgan_blocks must be a whole number in 0..16"),
    ({"scgan_crop": 40}, "scgan_crop must be 0 or a multiple of 16"),
    ({"scgan_lr": 2.0}, "scgan_lr must be a learning rate"),
    ({"adabn_layers": "all"}, "adabn_layers must be one of upto, listed"),
])
def test_bad_values_are_refused_in_one_line_naming_the_setting(kw, message):
    with pytest.raises(ConfigError, match=message) as info:
        AdaptConfig(**kw)
    assert "\n" not in str(info.value)


def test_every_flag_of_every_command_has_help_and_comes_from_a_declaration():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"demo", "train-source", "adapt", "predict", "sweep",
                             "recommend-layer", "evaluate", "make-synthetic", "fid",
                             "export-bioimageio"}
    for name, sub in commands.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, (name, action.option_strings)


def test_adapt_flags_become_the_config():
    parser = build_parser()
    base = ["adapt", "--model", "m.pt", "--source", "s", "--target", "t", "--out", "o.pt"]
    args = parser.parse_args(base)
    from napari_lmadda.cli._common import adapt_config_from_args

    assert adapt_config_from_args(args) == AdaptConfig()
    args = parser.parse_args([*base, "--batch", "4", "--patch", "64", "--lr-g", "1e-3",
                              "--apma-parts", "en", "--scgan-crop", "0", "--seed", "5",
                              "--amp", "bf16", "--patience", "2", "--device", "cpu"])
    assert adapt_config_from_args(args, steps=7) == AdaptConfig(
        batch_size=4, patch_size=64, lr_g=1e-3, apma_parts="en", scgan_crop=0, seed=5,
        amp="bf16", patience=2, device="cpu", steps=7)
    help_text = parser._subparsers._group_actions[0].choices["adapt"].format_help()
    assert "--lr-g LR_G" in help_text and "(3e-05)" in help_text and "(off)" in help_text


def test_command_flags_are_checked_by_their_declared_range():
    from napari_lmadda.cli.recommend_layer import RecommendArgs

    parser = build_parser()
    args = parser.parse_args(["recommend-layer", "--model", "m", "--source", "s", "--target",
                              "t", "--patches", "4"])
    with pytest.raises(ConfigError, match="--patches must be a whole number of at least 8"):
        options.check_args(args, RecommendArgs)
    args.patches, args.fraction = 8, 1.5
    with pytest.raises(ConfigError, match=r"--fraction must be in \(0, 1\], got 1.5"):
        options.check_args(args, RecommendArgs)


def test_gui_controls_come_from_the_metadata():
    parts = options.control(AdaptConfig, "apma_parts")
    assert parts.kind == "editable_combo" and parts.label == "Parts"
    assert parts.choices[0] == "all" and "en+de_feat" in parts.choices
    assert "reconstruction decoder" in parts.tooltip and parts.default == "all"
    stats = options.control(AdaptConfig, "adabn_stats")
    assert stats.kind == "combo" and stats.choices == ("cumulative", "momentum")
    steps = options.control(AdaptConfig, "steps")
    assert (steps.kind, steps.low, steps.default) == ("int", 1, 1200)
    assert options.control(AdaptConfig, "lr_g").kind == "float"
    assert options.control(AdaptConfig, "d_spectral_norm").kind == "check"
    docked = [n for n, _, opt, _ in options.iter_options(AdaptConfig) if opt.dock]
    assert docked == ["apma_parts", "adabn_stats", "adabn_layers"]
    with pytest.raises(KeyError):
        options.control(AdaptConfig, "nope")


def test_docstring_lists_every_option():
    doc = AdaptConfig.__doc__
    for key in FLAT_KEYS:
        assert f"\n    {key} : " in doc, key
    assert "criterion : {'gap', 'd_acc', 'tap_w2', 'last'}" in doc


def test_eval_every_rule():
    assert eval_every_for(1200) == 50
    assert eval_every_for(100) == 25
    assert eval_every_for(3) == 1
    assert eval_every_for(300, evaluations=8, at_most=300) == 37


def test_model_percentiles():
    from napari_lmadda.data.normalize import DEFAULT_PERCENTILES, model_percentiles

    class M:
        meta = {"input_percentiles": [0.5, 99]}

    assert model_percentiles(M()) == (0.5, 99.0)
    assert model_percentiles({"input_percentiles": None}) == DEFAULT_PERCENTILES
    assert model_percentiles(object()) == DEFAULT_PERCENTILES
