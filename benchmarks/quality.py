"""Quality benchmark: does adaptation help, reliably, on the synthetic microscopy shifts?

For a source model (default: the bundled demo model, phase contrast -> DAPI, CD29) and a
domain shift of the synthetic generator (bright field, overexposure 1.5x, scale 2x), this
runs no adaptation, AdaBN, output-layer ADDA and LM-ADDA at the listed layers for several
seeds, each at the state the engine kept *without labels*, and scores Pearson on held-out
target fields with ground truth. An oracle (the same architecture trained on labelled
target data) gives the ceiling. Every run also logs ground-truth Pearson at each evaluation
(never used for selection) so the report can show how much checkpoints swing and how close
the label-free choice comes to the best checkpoint.

    python benchmarks/quality.py run --shift brightfield --seeds 0,1,2 --layers 2,4,6,8,10
    python benchmarks/quality.py oracle --shift brightfield
    python benchmarks/quality.py report            # -> docs/benchmarks.md + plots

Runs append to ``benchmarks/results/quality/runs.jsonl`` and are skipped when already there,
so an interrupted benchmark resumes, and several processes (one per shift or seed) can run
side by side on a multi-core machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from auto_grid import CASES as AUTO_CASES  # benchmarks/ is on sys.path as a script
from napari_lmadda.adapt.config import AdaptConfig
from napari_lmadda.data.synthetic import PROJECT_DOMAINS, make_domain
from napari_lmadda.evaluation.sweep import EvalSet, iter_sweep, pearson_per_channel
from napari_lmadda.jsonsafe import json_safe
from napari_lmadda.models import load_model

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "quality"
SHIFTS = {k: v for k, v in PROJECT_DOMAINS.items() if k in ("brightfield", "overexpose", "scale")}
# shifts with an oracle only (auto's table in docs/benchmarks.md): auto_grid's cases, so the
# same test fields
ORACLE_ONLY = {k: AUTO_CASES[k] for k in ("defocus", "noise")}
CHANNELS = ["DAPI", "CD29"]
N_UNLABELED, N_TEST = 48, 8


def domains(shift: str) -> tuple[np.ndarray, np.ndarray, EvalSet]:
    """Unlabeled source and target images (different fields) and the labelled test set."""
    kw = {**SHIFTS, **ORACLE_ONLY}[shift]
    source = make_domain(N_UNLABELED, modality="phase", size=256, seed=11)["input"]
    target = make_domain(N_UNLABELED, size=256, seed=12, **kw)["input"]
    test = make_domain(N_TEST, size=256, seed=13, **kw)
    truths = [np.stack([test["dapi"][i], test["cd29"][i]]) for i in range(N_TEST)]
    ev = EvalSet(list(test["input"]), truths, [f"test{i}" for i in range(N_TEST)], CHANNELS)
    return source, target, ev


def done_keys(path: Path) -> set[tuple]:
    if not path.exists():
        return set()
    keys = set()
    for line in path.read_text().splitlines():
        r = json.loads(line)
        keys.add((r["shift"], r["method"], r["layer"], r["seed"], r.get("tag", "")))
    return keys


def cmd_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs_path = out / "runs.jsonl"
    model = load_model(args.model)
    source, target, ev = domains(args.shift)
    monitor_set = EvalSet(ev.images[:4], ev.truths[:4], ev.names[:4], CHANNELS)

    def monitor(step, net):
        return {f"pearson_{k}": v for k, v in pearson_per_channel(net, monitor_set).items()}

    extra = json.loads(args.config) if args.config else {}
    cfg = AdaptConfig(steps=args.steps, device="cpu", **extra)
    layers = [int(v) for v in args.layers.split(",") if v]
    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(v) for v in args.seeds.split(",")]
    done = done_keys(runs_path)
    for seed in seeds:
        todo_layers = [
            la for la in layers if (args.shift, "lmadda", la, seed, args.tag) not in done
        ]
        todo_methods = [
            m
            for m in methods
            if (args.shift, m, None, seed, args.tag) not in done
            and not (m == "none" and seed != seeds[0])
        ]
        if not todo_layers and not todo_methods:
            continue
        t0 = time.time()
        for run in iter_sweep(
            model,
            source,
            target,
            layers=todo_layers,
            methods=todo_methods,
            seeds=[seed],
            config=cfg,
            eval_set=ev,
            monitor=monitor,
        ):
            row = {
                "shift": args.shift,
                "tag": args.tag,
                **run.to_dict(),
                "config": dataclasses.asdict(cfg) | {"seed": seed},
            }
            row["config"]["trainable"] = None
            with runs_path.open("a") as fh:
                fh.write(json.dumps(json_safe(row)) + "\n")
            print(
                f"{args.shift:11s} {run.label:10s} seed {seed}: "
                + ", ".join(f"{k} {v:.3f}" for k, v in run.pearson.items())
                + f"  (kept step {run.best_step}, {run.seconds:.0f} s, "
                f"total {time.time() - t0:.0f} s)",
                flush=True,
            )


def cmd_oracle(args: argparse.Namespace) -> None:
    """Train the demo architecture on labelled target data: the ceiling for adaptation."""
    from demo_recipe import train_oracle  # noqa: PLC0415 - benchmarks/ is on sys.path

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res = train_oracle({**SHIFTS, **ORACLE_ONLY}[args.shift], args.steps, model=args.model)
    _, _, ev = domains(args.shift)
    scores = pearson_per_channel(res.model, ev)
    (out / f"oracle_{args.shift}.json").write_text(
        json.dumps(
            {
                "shift": args.shift,
                "pearson": scores,
                "steps": args.steps,
                "seconds": time.time() - t0,
            },
            indent=1,
        )
    )
    print(f"oracle {args.shift}: {scores} ({time.time() - t0:.0f} s)")


def _fmt(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    if not vals:
        return "-"
    med = statistics.median(vals)
    if len(vals) == 1:
        return f"{med:.3f}"
    return f"{med:.3f} [{min(vals):.3f}, {max(vals):.3f}]"


def _other_configurations(out: Path) -> list[str]:
    """One table of every run made with a ``--tag`` (other steps or settings), per shift."""
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    groups: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        if r.get("tag"):
            key = (r["shift"], r["tag"], r["method"], r["layer"])
            groups.setdefault(key, {}).setdefault(r["seed"], r)  # repeated runs count once
    if not groups:
        return []
    md = [
        "\n### Other configurations (runs with a `--tag`)\n",
        "| shift | tag | method | layer | steps | seeds | Pearson DAPI | Pearson CD29 | "
        "kept step (median) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (shift, tag, method, layer), by_seed in sorted(groups.items(), key=str):
        g = list(by_seed.values())
        md.append(
            f"| {shift} | {tag} | {method} | {layer if layer is not None else '-'} | "
            f"{g[0]['config'].get('steps')} | {','.join(str(s) for s in sorted(by_seed))} | "
            f"{_fmt([r['pearson'].get('DAPI') for r in g])} | "
            f"{_fmt([r['pearson'].get('CD29') for r in g])} | "
            f"{statistics.median([r['best_step'] for r in g]):.0f} |"
        )
    return md


def cmd_report(args: argparse.Namespace) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(args.out)
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("tag", "") == args.tag]
    unique: dict[tuple, dict] = {}  # a run repeated (e.g. two processes) counts once
    for r in rows:
        unique.setdefault((r["shift"], r["method"], r["layer"], r["seed"]), r)
    rows = list(unique.values())
    md = [f"<!-- generated by benchmarks/quality.py report (tag '{args.tag}') -->"]
    for shift in SHIFTS:
        rs = [r for r in rows if r["shift"] == shift]
        if not rs:
            continue
        oracle_path = out / f"oracle_{shift}.json"
        oracle = json.loads(oracle_path.read_text())["pearson"] if oracle_path.exists() else {}
        groups: dict[str, list[dict]] = {}
        for r in rs:
            label = (
                f"LM-ADDA layer {r['layer']}"
                if r["method"] == "lmadda"
                else {
                    "none": "no adaptation",
                    "adabn": "AdaBN",
                    "adda": "ADDA (output layer)",
                    "apma": "APMA (all parts)",
                    "scgan": "SCGAN (image level)",
                }.get(r["method"], r["method"])
            )
            groups.setdefault(label, []).append(r)
        order = sorted(
            groups,
            key=lambda k: (
                k.startswith("LM-ADDA"),
                int(k.split()[-1]) if k.startswith("LM") else 0,
            ),
        )
        seeds = sorted({r["seed"] for r in rs if r["method"] != "none"})
        md += [
            f"\n### Shift: {shift} (median [min, max] over seeds {seeds})\n",
            "| method | seeds | Pearson DAPI | Pearson CD29 | kept step (median) | "
            "CD29 swing over checkpoints | CD29 kept - best checkpoint |",
            "|---|---|---|---|---|---|---|",
        ]
        for label in order:
            g = groups[label]
            swings, regrets = [], []
            for r in g:
                tr = [h.get("monitor_pearson_CD29") for h in r.get("history", [])]
                tr = [v for v in tr if v is not None]
                if len(tr) > 1:
                    swings.append(max(tr) - min(tr))
                    kept = [
                        h.get("monitor_pearson_CD29")
                        for h in r["history"]
                        if h["step"] == r["best_step"]
                    ]
                    if kept and kept[0] is not None:
                        regrets.append(kept[0] - max(tr))
            md.append(
                f"| {label} | {len(g)} | {_fmt([r['pearson'].get('DAPI') for r in g])} | "
                f"{_fmt([r['pearson'].get('CD29') for r in g])} | "
                f"{statistics.median([r['best_step'] for r in g]):.0f} | "
                f"{_fmt(swings)} | {_fmt(regrets)} |"
            )
        if oracle:
            md.append(
                f"| oracle (trained on labelled target) | 1 | {oracle['DAPI']:.3f} | "
                f"{oracle['CD29']:.3f} | - | - | - |"
            )
        # headline: best LM-ADDA layer by median CD29 vs none / ADDA / oracle
        lm = {
            k: statistics.median([r["pearson"]["CD29"] for r in v])
            for k, v in groups.items()
            if k.startswith("LM-ADDA")
        }
        base = groups.get("no adaptation")
        if lm and base:
            best = max(lm, key=lm.get)
            none = base[0]["pearson"]["CD29"]
            line = (f"\nBest LM-ADDA layer on CD29: {best.split()[-1]} (median {lm[best]:.3f})"
                    f" vs no adaptation {none:.3f}")
            if "ADDA (output layer)" in groups:
                adda = statistics.median(
                    [r["pearson"]["CD29"] for r in groups["ADDA (output layer)"]]
                )
                line += f", ADDA {adda:.3f}"
            if oracle:
                frac = (
                    (lm[best] - none) / (oracle["CD29"] - none)
                    if oracle["CD29"] != none
                    else math.nan
                )
                line += f", oracle {oracle['CD29']:.3f}: recovers {100 * frac:.0f}% of the gap."
            md.append(line)
        # plot: Pearson by layer matched, one panel per channel
        fig = Figure(figsize=(9, 3.4), dpi=110, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2)
        for ax, ch in zip(axes, CHANNELS):
            xs = sorted(int(k.split()[-1]) for k in groups if k.startswith("LM-ADDA"))
            if xs:
                vals = [[r["pearson"][ch] for r in groups[f"LM-ADDA layer {x}"]] for x in xs]
                med = np.array([statistics.median(v) for v in vals])
                lo = np.array([min(v) for v in vals])
                hi = np.array([max(v) for v in vals])
                ax.errorbar(
                    xs,
                    med,
                    yerr=[med - lo, hi - med],
                    fmt="o-",
                    color="k",
                    capsize=3,
                    label="LM-ADDA (median, min-max)",
                )
                ax.set_xticks(xs)
            styles = {
                "no adaptation": ("tab:red", "--"),
                "AdaBN": ("tab:orange", "-."),
                "ADDA (output layer)": ("tab:blue", ":"),
            }
            for label, (color, ls) in styles.items():
                if label in groups:
                    ax.axhline(
                        statistics.median([r["pearson"][ch] for r in groups[label]]),
                        color=color,
                        ls=ls,
                        label=label,
                    )
            if oracle:
                ax.axhline(oracle[ch], color="tab:green", ls="-", label="oracle")
            ax.set_title(f"{shift}: {ch}")
            ax.set_xlabel("layer matched")
            ax.set_ylabel("Pearson on target test fields")
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7)
        png = Path(args.doc_dir) / f"benchmark_{shift}{('_' + args.tag) if args.tag else ''}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png)
        md.append(f"\n![Pearson by layer matched, {shift}]({png.name})\n")
    if not args.tag:
        md += _other_configurations(out)
    text = "\n".join(md) + "\n"
    (out / f"report{('_' + args.tag) if args.tag else ''}.md").write_text(text)
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--shift", choices=list(SHIFTS), required=True)
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--layers", default="2,4,6,8,10")
    r.add_argument("--methods", default="none,adabn,adda")
    r.add_argument("--steps", type=int, default=600)
    r.add_argument("--config", default="", help="JSON of AdaptConfig overrides")
    r.add_argument("--tag", default="", help="label of this configuration in runs.jsonl")
    o = sub.add_parser("oracle")
    o.add_argument("--shift", choices=[*SHIFTS, *ORACLE_ONLY], required=True)
    o.add_argument("--steps", type=int, default=2500)
    rep = sub.add_parser("report")
    rep.add_argument("--tag", default="")
    rep.add_argument("--doc-dir", default=str(ROOT / "docs"))
    for s in (r, o, rep):
        s.add_argument("--out", default=str(OUT))
        s.add_argument("--model", default="demo")
        s.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    {"run": cmd_run, "oracle": cmd_oracle, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
