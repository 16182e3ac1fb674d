"""What auto would keep, replayed from the candidate grids (not a test).

Every LM-ADDA candidate of auto is an ordinary engine run with its own samplers, and auto only
decides how far each one runs and which checkpoint to keep. So auto's result on a case can be
replayed exactly from the full candidate runs of ``auto_grid.py`` (every checkpoint saved):
this script recomputes auto's label-free numbers from the saved checkpoints' predictions
(the same fixed patches, sketches and paired bootstrap as :mod:`napari_lmadda.adapt.auto`),
applies auto's rules (shift test and layer ranking from the saved recommendation,
successive halving, do-no-harm guard, AdaBN's stability check) and reads the kept
checkpoint's ground truth from the grid. ``auto_bench.py`` runs the real thing on some cases
to check that the replay matches.

Beside auto, each case reports none, AdaBN, the best LM-ADDA layer by labels (a reference a
user cannot have: the best engine-kept run among the layers run) and the best checkpoint of
all (oracle choice among what was trained).

    python benchmarks/auto_replay.py            # -> benchmarks/results/auto/replay.{md,json}
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import numpy as np
import torch

from auto_grid import OUT, domains
from napari_lmadda.adapt import auto
from napari_lmadda.adapt.auto import CandidateReport, decide, halving_plan
from napari_lmadda.adapt.recommend import choose_layer
from napari_lmadda.adapt.scoring import (
    FixedProbe,
    image_patches,
    paired_gain,
    quantile_sketch,
    sketch_w2,
)
from napari_lmadda.models import load_model
from recommend_validation import _rows_of

PROFILES = Path(__file__).resolve().parent / "results" / "recommend" / "profiles"


def _sketch(ckpt: Path, step: int, probe: FixedProbe, net) -> np.ndarray | None:
    """The quantile sketch of a saved checkpoint's predictions on the probe's target patches.

    The predictions are cached beside the checkpoint per probe size (``auto_scores.py``'s
    ``_pred.npy`` files were made with an older 32-patch probe)."""
    n = probe.tgt.shape[0]
    cache = ckpt / f"step{step:05d}_pred{n}.npy"
    if not cache.exists():
        state = ckpt / f"step{step:05d}.pt"
        if not state.exists():
            return None
        net.load_state_dict(torch.load(state, map_location="cpu", weights_only=True))
        np.save(cache, probe.predict(net).numpy().astype(np.float16))
    return quantile_sketch(np.load(cache).astype(np.float32))


def replay(case: str, seed: int, runs: list[dict], model, tta: dict[str, float],
           steps: int = 1200, eval_every: int = 100) -> dict:
    """Auto's decisions on one case and seed, from the grid's runs."""
    prof = json.loads((PROFILES / f"{case}_m{seed}.json").read_text())
    # the saved measurements, judged by today's rule (the profiles predate its ranking)
    layer, _, _, det = choose_layer(_rows_of(prof), p_value=prof["p_value"],
                                    num_layers=prof["settings"]["num_layers"])
    prof["layer"], ranking = layer, det["ranking"] if layer is not None else []
    by = {(r["method"], r["layer"]): r for r in runs}
    none = by[("none", None)]
    truth0 = none["final"]["monitor_pearson"]
    out = {"case": case, "seed": seed, "none": truth0,
           "adabn": by[("adabn", None)]["final"]["monitor_pearson"]
           if ("adabn", None) in by else math.nan,
           "recommendation": prof["layer"], "ranking": ranking[: auto.AUTO_LAYERS]}
    lm = {la: r for (m, la), r in by.items() if m == "lmadda"}
    if lm:
        best_layer = max(lm, key=lambda la: lm[la]["final"]["monitor_pearson"])
        out["best_lmadda"] = (best_layer, lm[best_layer]["final"]["monitor_pearson"])
        out["best_checkpoint"] = max(h.get("monitor_monitor_pearson", h.get("monitor_pearson",
                                                                              -1))
                                     for r in lm.values() for h in r["history"])
    if not ranking:
        out |= {"auto": "none", "auto_truth": truth0, "why": "no shift detected"}
        return out
    cands = ranking[: auto.AUTO_LAYERS]
    missing = [la for la in cands if la not in lm]
    if missing:
        out |= {"auto": None, "why": f"layers {missing} not in the grid"}
        return out
    source, target, _ = domains(case)
    ps, ps_ids = image_patches(source, auto.PROBE_PATCHES, 128, seed + 10_000)
    pt, pt_ids = image_patches(target, auto.PROBE_PATCHES, 128, seed + 20_000)
    probe = FixedProbe.build(model, ps, pt, layers=(model.num_layers,))
    ref, var = probe.ref_sketch, probe.out_var
    net = copy.deepcopy(model)
    none_sk = _sketch(Path(none["ckpt"]), 0, probe, net)
    none_score = sketch_w2(ref, none_sk, var)
    reports, sketches = [], {}
    if ("adabn", None) in by:
        a = by[("adabn", None)]
        sk = _sketch(Path(a["ckpt"]), 0, probe, net)
        sketches["AdaBN"] = (sk, a["final"]["monitor_pearson"], 0)
        reports.append(CandidateReport("AdaBN", "adabn", None, sketch_w2(ref, sk, var)))
    # successive halving on the saved checkpoints
    state = {la: {"score": none_score, "step": 0, "sk": none_sk, "alive": True, "ran": 0}
             for la in cands}
    prev = 0
    for end, keep in halving_plan(len(cands), steps, eval_every):
        for la in cands:
            st = state[la]
            if not st["alive"]:
                continue
            ck = Path(lm[la]["ckpt"])
            for step in range(prev + eval_every, end + 1, eval_every):
                sk = _sketch(ck, step, probe, net)
                if sk is None:
                    continue
                s = sketch_w2(ref, sk, var)
                if s < st["score"]:
                    st.update(score=s, step=step, sk=sk)
            st["ran"] = end
        alive = sorted((la for la in cands if state[la]["alive"]),
                       key=lambda la: state[la]["score"])
        for la in alive[keep:]:
            state[la]["alive"] = False
        prev = end
    hist = {la: {h["step"]: h.get("monitor_monitor_pearson", h.get("monitor_pearson"))
                 for h in lm[la]["history"]} for la in cands}
    for la in cands:
        st = state[la]
        reports.append(CandidateReport(f"LM-ADDA layer {la}", "lmadda", la, st["score"],
                                       st["step"], st["ran"]))
        if st["step"] > 0:
            sketches[f"LM-ADDA layer {la}"] = (st["sk"], hist[la][st["step"]], st["step"])
    for r in reports:
        if r.name in sketches:
            r.gain, r.gain_lower = paired_gain(ref, none_sk, sketches[r.name][0], var,
                                               ref_ids=ps_ids, ids=pt_ids, seed=seed)
    winner, why = decide([r for r in reports if r.name in sketches],
                         source_tta=tta.get("none", math.nan),
                         tta={"AdaBN": tta.get("adabn", math.nan)})
    out["candidates"] = [{"name": r.name, "score": r.score, "gain": r.gain,
                          "lower": r.gain_lower, "step": r.best_step, "ran": r.steps_run,
                          "truth": sketches.get(r.name, (None, truth0))[1]} for r in reports]
    out["none_score"] = none_score
    out["steps_used"] = sum(r.steps_run for r in reports)
    if winner is None:
        out |= {"auto": "none", "auto_truth": truth0, "why": why}
    else:
        out |= {"auto": f"{winner.name} step {winner.best_step}",
                "auto_truth": sketches[winner.name][1], "why": why}
    return out


def pooled(case: str, seed: int, runs: list[dict], model) -> dict:
    """Every saved checkpoint of a case and seed scored by auto's probe, pooled over layers
    and methods: Spearman of -score against the ground truth, and what the single
    lowest-scoring checkpoint is worth (the question auto's score must answer)."""
    from scipy.stats import spearmanr

    source, target, _ = domains(case)
    ps, _ = image_patches(source, auto.PROBE_PATCHES, 128, seed + 10_000)
    pt, _ = image_patches(target, auto.PROBE_PATCHES, 128, seed + 20_000)
    probe = FixedProbe.build(model, ps, pt, layers=(model.num_layers,))
    net = copy.deepcopy(model)
    points = []
    for r in runs:
        name = r["method"] + ("" if r["layer"] is None else f" L{r['layer']}")
        for h in r["history"]:
            sk = _sketch(Path(r["ckpt"]), h["step"], probe, net)
            truth = h.get("monitor_monitor_pearson", h.get("monitor_pearson"))
            if sk is not None and truth is not None:
                points.append((name, h["step"], sketch_w2(probe.ref_sketch, sk, probe.out_var),
                               float(truth)))
    scores = np.array([p[2] for p in points])
    truths = np.array([p[3] for p in points])
    pick = points[int(np.argmin(scores))]
    return {"case": case, "seed": seed, "checkpoints": len(points),
            "spearman": float(spearmanr(-scores, truths).statistic),
            "pick": f"{pick[0]} step {pick[1]}", "pick_truth": pick[3],
            "best_truth": float(truths.max()), "regret": float(truths.max() - pick[3])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", type=Path, default=OUT / "grid.jsonl")
    p.add_argument("--scores", type=Path, default=OUT / "scores.jsonl")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--cases", default="")
    p.add_argument("--pooled", action="store_true",
                   help="score every checkpoint of the cases' grids instead (pooled ranking)")
    args = p.parse_args()
    torch.set_num_threads(1)
    model = load_model("demo")
    runs = [json.loads(line) for line in args.grid.read_text().splitlines()]
    tta: dict[tuple, dict[str, float]] = {}
    for r in map(json.loads, args.scores.read_text().splitlines()):
        if r["method"] in ("none", "adabn") and "tta" in r["scores"]:
            tta.setdefault((r["case"], r["seed"]), {})[r["method"]] = r["scores"]["tta"]
    keys = sorted({(r["case"], r["seed"]) for r in runs})
    only = {c for c in args.cases.split(",") if c}
    results = []
    if args.pooled:
        for case, seed in keys:
            rs = [r for r in runs if (r["case"], r["seed"]) == (case, seed)]
            if (only and case not in only) or not any(r["method"] == "lmadda" for r in rs):
                continue
            results.append(pooled(case, seed, rs, model))
            print(json.dumps(results[-1]), flush=True)
        (args.out / "pooled.json").write_text(json.dumps(results, indent=1) + "\n")
        return
    for case, seed in keys:
        if only and case not in only:
            continue
        if not (PROFILES / f"{case}_m{seed}.json").exists():
            continue
        rs = [r for r in runs if (r["case"], r["seed"]) == (case, seed)]
        res = replay(case, seed, rs, model, tta.get((case, seed), {}))
        results.append(res)
        print(json.dumps({k: v for k, v in res.items() if k != "candidates"}), flush=True)
    (args.out / "replay.json").write_text(json.dumps(results, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
