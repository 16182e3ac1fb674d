"""Validation of the label-free layer recommendation on the synthetic shifts (not a test).

For a source model (default: the bundled demo model) and the synthetic shifts of
``benchmarks/quality.py`` (bright field, overexposure 1.5x, scale 2x; same fields: source
seed 11, target seed 12, 48 fields of 256 px), this computes the recommended layer
(:func:`napari_lmadda.adapt.recommend.recommend_layer`) and, when per-layer Pearson results exist,
asks the question of issue 6: is the recommended layer's Pearson within 0.02 of the best
layer's?

Per-layer Pearson comes from

* ``--sweep SHIFT=PATH``: a ``sweep.json`` written by ``lmadda sweep`` for that shift
  (median over seeds from its table, averaged over the channels), and/or
* ``--runs PATH``: ``benchmarks/results/quality/runs.jsonl`` of the quality benchmark.

Besides the median over seeds, every seed's own per-layer grid is judged too (``per seed``
columns): a recommendation that is right on the median but wrong on half the seeds is not
reliable. ``--all-tags`` judges every configuration (tag) of ``runs.jsonl`` that has at
least two LM-ADDA layers, not only the default one.

``--real DIR`` adds the real-data rows of ``benchmarks/real_data.py`` (its ``runs.jsonl``
and ``recommend_*.json`` in DIR): EM membranes judged on Dice, the Allen translation on
Pearson. Those recommendations were computed by ``real_data.py recommend`` and are read,
not recomputed. ``--reuse PATH`` likewise reads the synthetic recommendations from an earlier
``validation.json`` (same model and settings) instead of recomputing them.

``--uncertainty-layers`` also runs the SIT-ADDA-Auto selector: LM-ADDA at each listed depth
for each of ``--uncertainty-seeds`` (``--steps`` steps), the seeds' models as an ensemble,
and the depth with the lowest predictive uncertainty on target patches (shallowest within
5 %); with the synthetic ground truth the chosen depth's Pearson is measured too. That part
adapts models, so it is off by default (it costs a sweep over the listed depths).

    python benchmarks/recommend_validation.py                       # recommendations only
    python benchmarks/recommend_validation.py --runs benchmarks/results/quality/runs.jsonl
    python benchmarks/recommend_validation.py --sweep overexpose=runs/oe/sweep.json
    python benchmarks/recommend_validation.py --runs benchmarks/results/quality/runs.jsonl \
        --all-tags --real benchmarks/results/real \
        --reuse benchmarks/results/recommend/validation.json

Prints a table and writes ``benchmarks/results/recommend/validation.{md,json}`` and one
``<shift>.png`` per shift.

``--profiles DIR`` judges every rule of :data:`napari_lmadda.adapt.recommend.RULES` at once,
offline: DIR holds the full measurements (``LayerRecommendation.to_dict()``, one
``<case>_m<seed>.json`` per case and measurement seed: ``brightfield_m0.json``,
``real_allen_defocus_m0.json``...), the rules are re-applied to their rows, and each pick is
judged on every per-layer grid of that case: the quality benchmark's ``--runs`` (600 steps),
the auto grids ``--grid`` (``benchmarks/results/auto/grid.jsonl``, 1200 steps) and the real
data ``--real``. Writes ``rules.md`` and ``rules.json`` to ``--out``.

    python benchmarks/recommend_validation.py --profiles benchmarks/results/recommend/profiles \
        --runs benchmarks/results/quality/runs.jsonl --grid benchmarks/results/auto/grid.jsonl \
        --real benchmarks/results/real
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from napari_lmadda.adapt.recommend import (
    format_recommendation_table,
    plot_recommendation,
    recommend_layer,
    select_layer_by_uncertainty,
)
from napari_lmadda.data.synthetic import PROJECT_DOMAINS, make_domain
from napari_lmadda.models import load_model

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "recommend"
# the shifts and fields of benchmarks/quality.py, so the results can be joined
SHIFTS = {k: v for k, v in PROJECT_DOMAINS.items() if k in ("brightfield", "overexpose", "scale")}
SOURCE_SEED, TARGET_SEED, TEST_SEED = 11, 12, 13
TOLERANCE = 0.02


def pearson_from_sweep(path: Path) -> tuple[dict[int, float], float]:
    """Layer -> Pearson (median over seeds, mean over channels) and the no-adaptation value."""
    doc = json.loads(Path(path).read_text())
    per_layer, none = {}, math.nan
    for row in doc.get("table", []):
        vals = [c["median"] for c in row.get("pearson", {}).values()
                if c.get("median") is not None]
        if not vals:
            continue
        if row["method"] == "lmadda" and row["layer"] is not None:
            per_layer[int(row["layer"])] = float(np.mean(vals))
        elif row["method"] == "none":
            none = float(np.mean(vals))
    return per_layer, none


def pearson_from_runs(path: Path, shift: str, tag: str = "") -> tuple[dict[int, float], float]:
    """The same from the quality benchmark's ``runs.jsonl`` (median over seeds)."""
    groups: dict[int | None, list[float]] = {}
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        if r["shift"] != shift or r.get("tag", "") != tag or not r.get("pearson"):
            continue
        if r["method"] not in ("lmadda", "none"):
            continue
        vals = [v for v in r["pearson"].values() if v is not None]
        if vals:
            groups.setdefault(r["layer"] if r["method"] == "lmadda" else None, []).append(
                float(np.mean(vals)))
    none = statistics.median(groups.pop(None)) if None in groups else math.nan
    return {int(k): statistics.median(v) for k, v in groups.items()}, none


def uncertainty_selection(model, source, target, test, layers, seeds, steps, patch):
    """SIT-ADDA-Auto: adapt at each depth per seed, pick by ensemble uncertainty."""
    from napari_lmadda.adapt.config import AdaptConfig
    from napari_lmadda.adapt.engine import adapt
    from napari_lmadda.data.normalize import percentile_normalize
    from napari_lmadda.evaluation.sweep import EvalSet, pearson_per_channel

    ensembles, pearson = {}, {}
    truths = [np.stack([test["dapi"][i], test["cd29"][i]])[: model.config.out_channels]
              for i in range(len(test["input"]))]
    names = (model.meta.get("channel_names") or ["c0", "c1"])[: model.config.out_channels]
    ev = EvalSet(list(test["input"]), truths, [f"t{i}" for i in range(len(truths))], names)
    for layer in layers:
        models = []
        for seed in seeds:
            cfg = AdaptConfig(steps=steps, seed=seed, device="cpu", patch_size=patch,
                              eval_every=max(1, steps // 4), eval_patches=8)
            models.append(adapt(model, source, target, method="lmadda", layers=layer,
                                config=cfg).model.eval())
        ensembles[layer] = models
        pearson[layer] = float(np.mean([np.mean(list(pearson_per_channel(m, ev).values()))
                                        for m in models]))
    rng = np.random.default_rng(0)
    crops = []
    for img in target[:16]:
        y = rng.integers(0, img.shape[0] - patch + 1)
        x = rng.integers(0, img.shape[1] - patch + 1)
        crops.append(percentile_normalize(img, 1.0, 99.8)[0][y : y + patch, x : x + patch])
    chosen, scores = select_layer_by_uncertainty(ensembles, np.stack(crops))
    return chosen, scores, pearson


def judge(per_layer: dict[int, float], none: float, recommended: int | None) -> dict:
    """Is the recommended layer's score within :data:`TOLERANCE` of the best layer's?

    Parameters
    ----------
    per_layer : dict of int to float
        LM-ADDA layer -> score (higher is better).
    none : float
        Score without adaptation (``nan`` if not measured); the recommendation "no
        adaptation needed" is judged with it.
    recommended : int or None
        The recommended layer (None = no adaptation needed).

    Returns
    -------
    dict
        ``best_layer``, ``pearson_best``, ``pearson_recommended``, ``within_tolerance``
        (None when the recommended layer was not measured) and ``layers_measured``; empty
        without a per-layer grid. A grid of one layer says nothing about the choice of a
        layer: ``within_tolerance`` is None then.
    """
    if not per_layer:
        return {}
    best = max(per_layer, key=per_layer.get)
    rec_p = per_layer.get(recommended, math.nan) if recommended is not None else none
    rec_p = math.nan if rec_p is None else float(rec_p)
    within = (bool(rec_p >= per_layer[best] - TOLERANCE)
              if math.isfinite(rec_p) and len(per_layer) >= 2 else None)
    return {"best_layer": best, "pearson_best": per_layer[best], "pearson_recommended": rec_p,
            "within_tolerance": within, "layers_measured": sorted(per_layer)}


def grids_from_runs(path: Path, shift: str, tag: str = "") -> dict[int, tuple[dict, float]]:
    """Per seed: (LM-ADDA layer -> mean-over-channels Pearson, no-adaptation Pearson)."""
    per_seed: dict[int, dict[int, float]] = {}
    none = math.nan
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        if r["shift"] != shift or r.get("tag", "") != tag or not r.get("pearson"):
            continue
        vals = [v for v in r["pearson"].values() if v is not None]
        if not vals:
            continue
        if r["method"] == "none":
            none = float(np.mean(vals))
        elif r["method"] == "lmadda":  # first occurrence counts (a repeated run counts once)
            grid = per_seed.setdefault(int(r["seed"]), {})
            grid.setdefault(int(r["layer"]), float(np.mean(vals)))
    return {s: (g, none) for s, g in per_seed.items()}


def tags_in_runs(path: Path, shift: str) -> list[str]:
    """Tags of ``runs.jsonl`` with at least two LM-ADDA layers for ``shift``."""
    layers: dict[str, set[int]] = {}
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        if r["shift"] == shift and r["method"] == "lmadda":
            layers.setdefault(r.get("tag", ""), set()).add(int(r["layer"]))
    return sorted(t for t, ls in layers.items() if len(ls) >= 2)


def per_seed_counts(grids: dict[int, tuple[dict, float]], recommended: int | None) -> dict:
    """How many seeds' own grids (>= 2 layers) put the recommended layer within tolerance."""
    judged = [judge(g, none, recommended).get("within_tolerance")
              for g, none in grids.values() if len(g) >= 2]
    judged = [j for j in judged if j is not None]
    return {"seeds_within": sum(judged), "seeds_judged": len(judged)}


def real_rows(real_dir: Path) -> list[dict]:
    """Validation rows of ``benchmarks/real_data.py`` results (Dice for EM, Pearson for Allen)."""
    runs_path = real_dir / "runs.jsonl"
    if not runs_path.exists():
        return []
    groups: dict[tuple[str, str], list[dict]] = {}
    for line in runs_path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r.get("tag", "") == "":
                groups.setdefault((r["task"], r["shift"]), []).append(r)
    out = []
    for (task, shift), rs in sorted(groups.items()):
        rec_path = real_dir / f"recommend_{task}{'_' + shift if shift else ''}.json"
        if not rec_path.exists():
            continue
        rec = json.loads(rec_path.read_text())
        metric = "dice" if task == "em" else "pearson"
        seen: set[tuple] = set()
        per_seed: dict[int, dict[int, float]] = {}
        none = math.nan
        for r in rs:
            key = (r["method"], r["layer"], r["seed"])
            if key in seen or r["scores"].get(metric) is None:
                continue
            seen.add(key)
            if r["method"] == "none":
                none = float(r["scores"][metric])
            elif r["method"] == "lmadda":
                per_seed.setdefault(int(r["seed"]), {})[int(r["layer"])] = float(
                    r["scores"][metric])
        layers = sorted({la for g in per_seed.values() for la in g})
        median = {la: statistics.median([g[la] for g in per_seed.values() if la in g])
                  for la in layers}
        name = f"real: {task}" + (f" {shift}" if shift else "")
        row = {"shift": name, "tag": "", "metric": metric, "recommended": rec["recommended"],
               "confidence": rec["confidence"], "p_value": rec["p_value"],
               "seconds": rec.get("seconds", math.nan), "reason": rec.get("reason", ""),
               "pearson_by_layer": median, "pearson_none": none,
               **judge(median, none, rec["recommended"]),
               **per_seed_counts({s: (g, none) for s, g in per_seed.items()},
                                 rec["recommended"])}
        out.append(row)
    return out


def grids_from_auto(path: Path, case: str) -> dict[int, tuple[dict, float]]:
    """Per seed of ``auto_grid.py``'s grid.jsonl: (LM-ADDA layer -> Pearson, none)."""
    per_seed: dict[int, dict[int, float]] = {}
    none = math.nan
    for r in map(json.loads, Path(path).read_text().splitlines()):
        if r["case"] != case:
            continue
        v = r["final"]["monitor_pearson"]
        if r["method"] == "none":
            none = float(v)
        elif r["method"] == "lmadda":
            per_seed.setdefault(int(r["seed"]), {}).setdefault(int(r["layer"]), float(v))
    return {s: (g, none) for s, g in per_seed.items()}


def grids_from_real(real_dir: Path, task: str, shift: str) -> dict[int, tuple[dict, float]]:
    """Per seed of ``real_data.py``'s runs.jsonl (Dice for EM, Pearson for Allen)."""
    metric = "dice" if task == "em" else "pearson"
    per_seed: dict[int, dict[int, float]] = {}
    none = math.nan
    path = real_dir / "runs.jsonl"
    if not path.exists():
        return {}
    for r in map(json.loads, path.read_text().splitlines()):
        if r["task"] != task or r["shift"] != shift or r.get("tag", ""):
            continue
        v = r["scores"].get(metric)
        if v is None:
            continue
        if r["method"] == "none":
            none = float(v)
        elif r["method"] == "lmadda":
            per_seed.setdefault(int(r["seed"]), {}).setdefault(int(r["layer"]), float(v))
    return {s: (g, none) for s, g in per_seed.items()}


def _rows_of(doc: dict) -> list:
    import dataclasses

    from napari_lmadda.adapt.recommend import LayerGap

    names = [f.name for f in dataclasses.fields(LayerGap)]
    return [LayerGap(**{k: (math.nan if r.get(k) is None else r[k]) for k in names})
            for r in doc["rows"]]


def rule_table(args: argparse.Namespace) -> None:
    """Judge every rule on every grid, from saved measurements (see the module docstring)."""
    from napari_lmadda.adapt.recommend import RULES, choose_layer

    results = []
    for path in sorted(Path(args.profiles).glob("*_m*.json")):
        doc = json.loads(path.read_text())
        case, mseed = path.stem.rsplit("_m", 1)
        rows = _rows_of(doc)
        picks = {}
        for rule in RULES:
            layer, conf, _, det = choose_layer(rows, p_value=doc["p_value"],
                                               num_layers=doc["settings"]["num_layers"],
                                               rule=rule)
            picks[rule] = {"layer": layer, "confidence": conf, "ranking": det["ranking"]}
        sources = []
        if case.startswith("real_"):
            task, _, shift = case[len("real_"):].partition("_")
            if args.real is not None:
                sources.append(("real, 300 steps", grids_from_real(args.real, task, shift)))
        else:
            if args.runs is not None and args.runs.exists():
                sources.append(("quality, 600 steps", grids_from_runs(args.runs, case)))
            if args.grid is not None and args.grid.exists():
                sources.append(("auto grid, 1200 steps", grids_from_auto(args.grid, case)))
        for label, grids in sources:
            grids = {k: v for k, v in grids.items() if v[0]}
            if not grids:
                continue
            layers = sorted({la for g, _ in grids.values() for la in g})
            median = {la: statistics.median([g[la] for g, _ in grids.values() if la in g])
                      for la in layers}
            none = next(iter(grids.values()))[1]
            row = {"case": case, "measure_seed": int(mseed), "grid": label,
                   "seeds": sorted(grids), "scores": median, "none": none, "rules": {}}
            for rule, pk in picks.items():
                row["rules"][rule] = {**pk, **judge(median, none, pk["layer"]),
                                      **per_seed_counts(grids, pk["layer"]),
                                      "top3": any(judge(median, none, la).get("within_tolerance")
                                                  for la in pk["ranking"][:3])
                                      if pk["layer"] is not None else None}
            results.append(row)
    write_rule_table(results, args)


def write_rule_table(results: list[dict], args: argparse.Namespace) -> None:
    from napari_lmadda.adapt.recommend import DEFAULT_RULE, RULES

    lines = ["<!-- generated by benchmarks/recommend_validation.py --profiles -->",
             f"Each rule re-applied to the saved measurements; a pick is judged on every "
             f"per-layer grid of its case (score of the picked layer within {TOLERANCE} of the "
             "best layer's, median over the grid's seeds; `none` = no adaptation needed, judged "
             "with the no-adaptation score). `-` = the picked layer was not run in that grid. "
             f"Default rule: `{DEFAULT_RULE}`.", "",
             "| case (measurement seed) | grid | seeds | layers run: score (best **bold**) | "
             + " | ".join(RULES) + " |", "|---|---|---|---|" + "---|" * len(RULES)]
    for r in results:
        best = max(r["scores"], key=r["scores"].get)
        sc = ", ".join((f"**{la}: {v:.3f}**" if la == best else f"{la}: {v:.3f}")
                       for la, v in sorted(r["scores"].items()))
        cells = []
        for rule in RULES:
            j = r["rules"][rule]
            pick = "none" if j["layer"] is None else str(j["layer"])
            ok = {True: "yes", False: "**no**", None: "-"}[j.get("within_tolerance")]
            top3 = "" if j.get("top3") is None else (" (top 3: yes)" if j["top3"]
                                                     else " (top 3: no)")
            cells.append(f"{pick}: {ok}{top3}")
        lines.append(f"| {r['case']} (m{r['measure_seed']}) | {r['grid']} | "
                     f"{','.join(map(str, r['seeds']))} | {sc} | " + " | ".join(cells) + " |")
    lines.append("")
    for rule in RULES:
        judged = [r["rules"][rule].get("within_tolerance") for r in results]
        judged = [j for j in judged if j is not None]
        top3 = [r["rules"][rule].get("top3") for r in results]
        top3 = [t for t in top3 if t is not None]
        seeds_in = sum(r["rules"][rule].get("seeds_within", 0) for r in results)
        seeds_n = sum(r["rules"][rule].get("seeds_judged", 0) for r in results)
        lines.append(f"- `{rule}`: within {TOLERANCE} of the best layer on {sum(judged)} of "
                     f"{len(judged)} judged grids (median over seeds), {seeds_in} of {seeds_n} "
                     f"single-seed grids; a layer within {TOLERANCE} among its top 3 on "
                     f"{sum(top3)} of {len(top3)}")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rules.md").write_text(text)
    safe = json.loads(json.dumps(results, default=float).replace("NaN", "null"))
    (args.out / "rules.json").write_text(json.dumps(safe, indent=1) + "\n")
    print(f"wrote {args.out / 'rules.md'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="demo", help="source model file (demo)")
    p.add_argument("--shifts", default=",".join(SHIFTS), help="shifts to validate")
    p.add_argument("--n-images", type=int, default=48, help="unlabeled fields per domain (48)")
    p.add_argument("--size", type=int, default=256, help="field side (256)")
    p.add_argument("--patches", type=int, default=32)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--probe-steps", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", action="append", default=[], metavar="SHIFT=PATH",
                   help="sweep.json of `lmadda sweep` for a shift (repeatable)")
    p.add_argument("--runs", type=Path, default=None, help="runs.jsonl of benchmarks/quality.py")
    p.add_argument("--tag", default="", help="tag of the runs.jsonl rows to use ('')")
    p.add_argument("--all-tags", action="store_true",
                   help="also judge every other tag of runs.jsonl with >= 2 LM-ADDA layers")
    p.add_argument("--real", type=Path, default=None,
                   help="results folder of benchmarks/real_data.py (adds the real-data rows)")
    p.add_argument("--reuse", type=Path, default=None,
                   help="read the synthetic recommendations from this validation.json")
    p.add_argument("--uncertainty-layers", default="",
                   help="depths for the SIT-ADDA-Auto selector, e.g. 1,2,3 (off)")
    p.add_argument("--uncertainty-seeds", default="0,1", help="ensemble seeds (0,1)")
    p.add_argument("--steps", type=int, default=300, help="LM-ADDA steps per depth (300)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profiles", type=Path, default=None,
                   help="folder of saved measurements: judge every rule offline")
    p.add_argument("--grid", type=Path, default=None,
                   help="grid.jsonl of benchmarks/auto_grid.py (with --profiles)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    if args.profiles is not None:
        rule_table(args)
        return
    torch.set_num_threads(args.threads)
    sweeps = dict(s.split("=", 1) for s in args.sweep)
    unc_layers = [int(v) for v in args.uncertainty_layers.split(",") if v]
    unc_seeds = [int(v) for v in args.uncertainty_seeds.split(",") if v]
    args.out.mkdir(parents=True, exist_ok=True)
    reused = {}
    if args.reuse is not None:
        reused = {r["shift"]: r for r in json.loads(args.reuse.read_text())
                  if r["shift"] in SHIFTS}
    model = source = None
    results = []
    for shift in [s for s in args.shifts.split(",") if s]:
        kw = SHIFTS[shift]
        if shift in reused and not unc_layers:
            old = reused[shift]
            rec_fields = {k: old[k] for k in ("recommended", "confidence", "p_value", "seconds",
                                              "reason")}
            print(f"\n=== {shift}: recommendation read from {args.reuse}: "
                  f"{old['recommended']}", flush=True)
        else:
            if model is None:
                model = load_model(args.model)
                source = make_domain(args.n_images, modality="phase", size=args.size,
                                     seed=SOURCE_SEED)["input"]
            target = make_domain(args.n_images, size=args.size, seed=TARGET_SEED, **kw)["input"]
            t0 = time.perf_counter()
            rec = recommend_layer(model, source, target, n_patches=args.patches,
                                  patch_size=args.patch, probe_steps=args.probe_steps,
                                  device="cpu", seed=args.seed)
            secs = time.perf_counter() - t0
            print(f"\n=== {shift} ({secs:.0f} s)\n{format_recommendation_table(rec)}\n"
                  f"{rec.summary()}\nreason: {rec.reason}", flush=True)
            plot_recommendation(rec, args.out / f"{shift}.png", title=f"source -> {shift}")
            rec_fields = {"recommended": rec.layer, "confidence": rec.confidence,
                          "p_value": rec.p_value, "seconds": secs, "reason": rec.reason}
        tags = [args.tag]
        if args.all_tags and args.runs is not None and args.runs.exists():
            tags += [t for t in tags_in_runs(args.runs, shift) if t != args.tag]
        for tag in tags:
            per_layer, none, grids = {}, math.nan, {}
            if shift in sweeps and tag == args.tag:
                per_layer, none = pearson_from_sweep(Path(sweeps[shift]))
            elif args.runs is not None and args.runs.exists():
                per_layer, none = pearson_from_runs(args.runs, shift, tag)
                grids = grids_from_runs(args.runs, shift, tag)
            row = {"shift": shift, "tag": tag, "metric": "pearson", **rec_fields,
                   "pearson_by_layer": per_layer, "pearson_none": none,
                   **judge(per_layer, none, rec_fields["recommended"])}
            if grids:
                row |= per_seed_counts(grids, rec_fields["recommended"])
            if unc_layers and tag == args.tag:
                if model is None:
                    model = load_model(args.model)
                    source = make_domain(args.n_images, modality="phase", size=args.size,
                                         seed=SOURCE_SEED)["input"]
                target = make_domain(args.n_images, size=args.size, seed=TARGET_SEED,
                                     **kw)["input"]
                test = make_domain(8, size=args.size, seed=TEST_SEED, **kw)
                chosen, scores, pear = uncertainty_selection(
                    model, source, target, test, unc_layers, unc_seeds, args.steps, args.patch)
                row |= {"uncertainty_layer": chosen, "uncertainty_scores": scores,
                        "uncertainty_pearson": pear}
                print(f"SIT-ADDA-Auto: depth {chosen}; uncertainty {scores}; Pearson {pear}")
            results.append(row)
    if args.real is not None:
        results += real_rows(args.real)
    write_report(results, args)


def _f(v, fmt=".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def _summary(rows: list[dict], what: str) -> str:
    judged = [r["within_tolerance"] for r in rows if r.get("within_tolerance") is not None]
    seeds_in = sum(r.get("seeds_within", 0) for r in rows)
    seeds_n = sum(r.get("seeds_judged", 0) for r in rows)
    unmeasured = sum(1 for r in rows if "best_layer" in r and r.get("within_tolerance") is None)
    text = (f"{what}: recommended layer within {TOLERANCE} of the best layer in "
            f"{sum(judged)} of {len(judged)} grids (median over seeds)")
    if seeds_n:
        text += f", {seeds_in} of {seeds_n} single-seed grids"
    if unmeasured:
        text += (f"; {unmeasured} grid(s) not judged (recommended layer not run, or only one "
                 "layer run)")
    return text


def write_report(results: list[dict], args: argparse.Namespace) -> None:
    header = ("| case | tag | metric | recommended | confidence | p | best layer (score) | "
              "recommended's score | within 0.02 | per seed | uncertainty pick (Pearson) |")
    lines = ["<!-- generated by benchmarks/recommend_validation.py -->",
             f"model: `{args.model}`; {args.n_images} fields of {args.size} px per domain; "
             f"{args.patches} patches of {args.patch} px; probe {args.probe_steps} steps "
             "(synthetic rows; the real-data rows use their own source models, see "
             "docs/real_data.md). Scores: median over seeds; Pearson is the mean over "
             "channels; `none needed` is judged with the no-adaptation score.", "",
             header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rec = "none needed" if r["recommended"] is None else str(r["recommended"])
        best = (f"{r['best_layer']} ({_f(r['pearson_best'])})" if "best_layer" in r else "-")
        within = {True: "yes", False: "**no**"}.get(r.get("within_tolerance"), "-")
        if "best_layer" in r and r.get("within_tolerance") is None:
            within = f"not judged (layers run: {r['layers_measured']})"
        seeds = (f"{r['seeds_within']} of {r['seeds_judged']}" if r.get("seeds_judged")
                 else "-")
        unc = "-"
        if "uncertainty_layer" in r:
            u = r["uncertainty_layer"]
            unc = f"{u} ({_f(r['uncertainty_pearson'].get(u))})"
        lines.append(f"| {r['shift']} | {r.get('tag') or '-'} | {r.get('metric', 'pearson')} | "
                     f"{rec} | {r['confidence']:.2f} | {_f(r['p_value'], '.2g')} | {best} | "
                     f"{_f(r.get('pearson_recommended'))} | {within} | {seeds} | {unc} |")
    synth = [r for r in results if not r["shift"].startswith("real:")]
    real = [r for r in results if r["shift"].startswith("real:")]
    lines.append("")
    if synth:
        lines.append("- " + _summary(synth, "synthetic"))
    if real:
        lines.append("- " + _summary(real, "real data"))
    if synth and real:
        lines.append("- " + _summary(results, "all"))
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    (args.out / "validation.md").write_text(text)
    safe = json.loads(json.dumps(results, default=float).replace("NaN", "null"))
    (args.out / "validation.json").write_text(json.dumps(safe, indent=2) + "\n")
    print(f"wrote {args.out / 'validation.md'} and validation.json")


if __name__ == "__main__":
    main()
