"""How well do the label-free criteria rank checkpoints, layers and methods? (not a test)

Every adaptation run of the benchmarks logs, at each evaluation, the label-free metrics of
the engine (``gap``, ``tap_w2``, ``out_w2``, ``source_drift``, ``d_acc``, and any score a
benchmark monitor added) next to a ground-truth score of the same checkpoint (``monitor_*``:
Pearson on a few test fields, or Dice), which was never used for selection. This script
reads those histories and asks two questions:

1. **Checkpoints of one run.** Per run and criterion: the Spearman correlation between
   ``-criterion`` and the ground truth over the run's checkpoints (1 = ranks them exactly
   as the labels would), and the *regret*: ground truth of the best checkpoint minus that of
   the checkpoint the criterion keeps (0 = it kept the best).
2. **Across layers and methods.** Per grid (one shift, one seed: every LM-ADDA layer and
   every other method run with that seed), all checkpoints of all runs pooled, including
   step 0 (= no adaptation): the pooled Spearman of a score that is measured the same way for
   every candidate, and the regret of picking the single checkpoint with the lowest score
   among all runs. Layer-dependent criteria (``gap``, ``tap_w2``) are shown too, to show why
   they cannot choose between layers.

Scores are lower-is-better. ``d_acc`` is read as ``|d_acc - 0.5|``. Derived scores:
``out_w2+drift`` (``out_w2 + source_drift``), ``out_w2+2drift``, and ``last`` (the final
checkpoint; only for question 1).

    python benchmarks/criteria_validation.py \
        --runs benchmarks/results/quality/runs.jsonl --runs benchmarks/results/real/runs.jsonl

Prints tables and writes ``benchmarks/results/criteria/validation.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "criteria"

#: engine metrics that are not scores of a checkpoint
_NOT_SCORES = {"step", "criterion"}


def _truth(h: dict) -> float | None:
    """Ground truth of a checkpoint: mean of its ``monitor_*`` values (None when absent)."""
    vals = [v for k, v in h.items() if k.startswith("monitor_") and v is not None]
    return float(np.mean(vals)) if vals else None


def scores_of(h: dict) -> dict[str, float]:
    """Every lower-is-better label-free score of one history row (engine's and derived)."""
    out = {}
    for k, v in h.items():
        if k in _NOT_SCORES or k.startswith("monitor_") or v is None:
            continue
        if not isinstance(v, int | float) or not math.isfinite(float(v)):
            continue
        out[k] = abs(float(v) - 0.5) if k == "d_acc" else float(v)
    if "out_w2" in out and "source_drift" in out:
        out["out_w2+drift"] = out["out_w2"] + out["source_drift"]
        out["out_w2+2drift"] = out["out_w2"] + 2 * out["source_drift"]
    # fixed sets of layers (auto_scores.py rows carry every layer)
    for kind in ("w2", "fd"):
        per = {int(k.split("_L")[1]): v for k, v in out.items() if k.startswith(f"{kind}_L")}
        if per:
            n = max(per)
            out[f"late_{kind}"] = float(np.mean([per[k] for k in per if k >= n - 2]))
            out[f"all_{kind}"] = float(np.mean(list(per.values())))
    return out


def load_scores(path: Path, methods: set[str] | None = None) -> list[dict]:
    """Runs from ``auto_scores.py``'s per-checkpoint rows (floor rows skipped)."""
    runs: dict[tuple, dict] = {}
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        if r["method"] == "floor" or (methods and r["method"] not in methods):
            continue
        truth = r.get("truth", {}).get("monitor_pearson")
        if truth is None:
            continue
        key = (r["case"], r["method"], r["layer"], r["seed"], f"{r['steps']} steps")
        run = runs.setdefault(key, {"case": r["case"], "tag": "", "method": r["method"],
                                    "layer": r["layer"], "seed": r["seed"], "history": []})
        run["history"].append({"step": r["step"], **r["scores"], "monitor_pearson": truth})
    for run in runs.values():
        run["history"].sort(key=lambda h: h["step"])
    return list(runs.values())


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan when either side is constant."""
    from scipy.stats import spearmanr

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return math.nan
    return float(spearmanr(a, b).statistic)


def load_runs(paths: list[Path], methods: set[str] | None = None) -> list[dict]:
    """Runs with a history carrying ground truth, one per (case, method, layer, seed, tag)."""
    runs, seen = [], set()
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            if methods and r["method"] not in methods:
                continue
            case = r.get("case") or (f"{r['task']} {r['shift']}".strip() if "task" in r
                                     else r["shift"])
            key = (case, r["method"], r.get("layer"), r["seed"], r.get("tag", ""))
            if key in seen:
                continue
            seen.add(key)
            hist = [h for h in r.get("history", []) if _truth(h) is not None]
            if not hist:
                continue
            runs.append({"case": case, "tag": r.get("tag", ""), "method": r["method"],
                         "layer": r.get("layer"), "seed": r["seed"], "history": hist})
    return runs


def label(run: dict) -> str:
    return f"{run['method']}{'' if run['layer'] is None else ' L' + str(run['layer'])}"


def within_run(runs: list[dict]) -> list[dict]:
    """Question 1: one row per run and criterion."""
    rows = []
    for run in runs:
        hist = run["history"]
        if len(hist) < 2:
            continue
        truth = [_truth(h) for h in hist]
        best = max(truth)
        per = [scores_of(h) for h in hist]
        names = sorted(set.intersection(*(set(p) for p in per)))
        for name in [*names, "last"]:
            if name == "last":
                rho, pick = math.nan, len(hist) - 1
            else:
                vals = [p[name] for p in per]
                rho = spearman([-v for v in vals], truth)
                pick = int(np.argmin(vals))
            rows.append({"case": run["case"], "tag": run["tag"], "run": label(run),
                         "seed": run["seed"], "criterion": name, "spearman": rho,
                         "regret": best - truth[pick], "swing": best - min(truth)})
    return rows


def across_runs(runs: list[dict]) -> list[dict]:
    """Question 2: one row per grid (case, tag, seed) and score, checkpoints pooled."""
    grids: dict[tuple, list[dict]] = {}
    for run in runs:
        grids.setdefault((run["case"], run["tag"], run["seed"]), []).append(run)
    rows = []
    for (case, tag, seed), rs in sorted(grids.items(), key=str):
        if len(rs) < 2:
            continue
        points = [(label(r), h["step"], _truth(h), scores_of(h)) for r in rs for h in r["history"]]
        truth = [p[2] for p in points]
        best = max(truth)
        names = sorted(set.intersection(*(set(p[3]) for p in points)))
        # the best run by its *last* checkpoint's truth: what a per-run oracle would pick
        for name in names:
            vals = [p[3][name] for p in points]
            i = int(np.argmin(vals))
            rows.append({"case": case, "tag": tag, "seed": seed, "score": name,
                         "runs": len(rs), "checkpoints": len(points),
                         "spearman": spearman([-v for v in vals], truth),
                         "pick": f"{points[i][0]} step {points[i][1]}",
                         "regret": best - truth[i], "best": best,
                         "none": next((p[2] for p in points if p[1] == 0), math.nan)})
    return rows


def _med(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    if not vals:
        return "-"
    return f"{statistics.median(vals):.2f}"


def _fmt(v: float, f: str = ".3f") -> str:
    return "-" if v is None or not math.isfinite(v) else format(v, f)


def report(w: list[dict], a: list[dict]) -> str:
    """Markdown tables of both questions."""
    lines = ["<!-- generated by benchmarks/criteria_validation.py -->", "",
             "**Checkpoints within a run** (median over runs of the Spearman between "
             "-criterion and ground truth; regret = truth of the best checkpoint minus truth "
             "of the kept one: median / max over runs)", ""]
    crits = sorted({r["criterion"] for r in w}, key=lambda c: (c == "last", c))
    cases = sorted({(r["case"], r["tag"]) for r in w})
    lines.append("| case | runs | " + " | ".join(crits) + " |")
    lines.append("|---|---|" + "---|" * len(crits))
    for case, tag in [*cases, ("all", None)]:
        sel = [r for r in w if case == "all" or (r["case"], r["tag"]) == (case, tag)]
        n = len({(r["run"], r["seed"], r["case"], r["tag"]) for r in sel})
        cells = []
        for c in crits:
            rs = [r for r in sel if r["criterion"] == c]
            if not rs:
                cells.append("-")
                continue
            reg = [r["regret"] for r in rs]
            cells.append(f"{_med([r['spearman'] for r in rs])} / {_med(reg)} / "
                         f"{max(reg):.2f}")
        name = case + (f" ({tag})" if tag else "")
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: Spearman / median regret / max regret.", "",
              "**Across layers and methods** (all checkpoints of all runs of one seed "
              "pooled, step 0 = no adaptation; pooled Spearman, and the regret of keeping "
              "the single checkpoint with the lowest score)", ""]
    scores = sorted({r["score"] for r in a})
    lines.append("| grid | runs | checkpoints | none | best | " + " | ".join(scores) + " |")
    lines.append("|---|---|---|---|---|" + "---|" * len(scores))
    grids = sorted({(r["case"], r["tag"], r["seed"]) for r in a}, key=str)
    for g in grids:
        rs = {r["score"]: r for r in a if (r["case"], r["tag"], r["seed"]) == g}
        any_r = next(iter(rs.values()))
        cells = [f"{_fmt(rs[s]['spearman'], '.2f')} / {_fmt(rs[s]['regret'], '.3f')}"
                 if s in rs else "-" for s in scores]
        name = f"{g[0]}{' (' + g[1] + ')' if g[1] else ''} s{g[2]}"
        lines.append(f"| {name} | {any_r['runs']} | {any_r['checkpoints']} | "
                     f"{_fmt(any_r['none'])} | {_fmt(any_r['best'])} | " + " | ".join(cells)
                     + " |")
    cells = []
    for s in scores:
        rs = [r for r in a if r["score"] == s]
        cells.append(f"{_med([r['spearman'] for r in rs])} / {_med([r['regret'] for r in rs])}"
                     f" (max {max(r['regret'] for r in rs):.3f})")
    lines.append("| median over grids | | | | | " + " | ".join(cells) + " |")
    lines += ["", "Cells: pooled Spearman / regret of the pick."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=Path, action="append", default=[],
                   help="a runs.jsonl with histories (repeatable)")
    p.add_argument("--scores", type=Path, default=None,
                   help="scores.jsonl of benchmarks/auto_scores.py (every checkpoint scored)")
    p.add_argument("--methods", default="",
                   help="only runs of these methods, e.g. lmadda (default: all)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    methods = {m for m in args.methods.split(",") if m} or None
    runs = load_runs(args.runs, methods) if args.runs else []
    if args.scores is not None:
        runs += load_scores(args.scores, methods)
    w, a = within_run(runs), across_runs(runs)
    text = report(w, a)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "validation.md").write_text(text)
    safe = json.loads(json.dumps({"within_run": w, "across_runs": a}).replace("NaN", "null"))
    (args.out / "validation.json").write_text(json.dumps(safe, indent=1) + "\n")
    print(f"wrote {args.out / 'validation.md'}")


if __name__ == "__main__":
    main()
