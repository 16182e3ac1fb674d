"""The demo's printed conclusion says what its own numbers say, nothing more."""

from __future__ import annotations

from napari_lmadda.cli.demo import conclusion


def _t(**means):
    return {k.replace("_", " "): {"DAPI": v + 0.05, "CD29": v - 0.05} for k, v in means.items()}


def test_conclusion_names_the_best_and_reports_auto_against_it():
    table = _t(none=0.60, adabn=0.58, adda=0.70, lmadda_L10=0.66, auto=0.69)
    text = conclusion(table, steps=300, auto_winner="LM-ADDA layer 4")
    assert "300 steps" in text and "best: adda, mean Pearson 0.700" in text
    assert "kept LM-ADDA layer 4: 0.690, within 0.02 of the best; +0.090 against" in text
    # the ADDA comparison follows the numbers, not the README
    assert "lmadda L10 is below adda (0.660 vs 0.700)" in text
    assert "lmadda L10 beats none" in text


def test_conclusion_flags_harm_and_ties():
    table = _t(none=0.60, lmadda_L10=0.605, auto=0.55)
    text = conclusion(table, steps=600, auto_winner="AdaBN")
    assert "0.055 below the best; -0.050 against no adaptation (harm)" in text
    assert "lmadda L10 ties with none" in text
    kept_source = conclusion(_t(none=0.6, auto=0.6), steps=600, auto_winner="none")
    assert "kept the source model (no adaptation): 0.600, the best" in kept_source or \
        "within 0.02 of the best" in kept_source
    assert "no better or worse than no adaptation" in kept_source


def test_quick_claims_nothing():
    text = conclusion(_t(none=0.1, auto=0.9), steps=4, quick=True)
    assert "mean nothing" in text and "best" not in text


def test_the_default_demo_runs_auto_and_leaves_adda_to_methods():
    import argparse

    from napari_lmadda.cli import demo

    p = argparse.ArgumentParser()
    demo.add_arguments(p)
    args = p.parse_args([])
    assert args.methods.split(",") == ["none", "adabn", "lmadda", "auto"]
    assert set(demo.DEFAULT_METHODS) < set(demo.METHODS) and "adda" in demo.METHODS
