"""Augment, adapt, or both? Plain vs augmented source models, each followed by adaptation.

For every benchmark shift (the synthetic shifts of ``PROJECT_DOMAINS`` and the real cases of
``benchmarks/real_cases.py``) this compares a source model trained as usual ("plain":
rotations and flips) with one trained with the ``robust`` augmentation preset, each
followed by no adaptation, AdaBN and LM-ADDA at the layer recommended without labels
(``napari_lmadda.adapt.recommend``) and, as a reference that needs labels, at the best
layer among those run.

Synthetic shifts: the plain source model is the bundled demo model, and its runs are read
from ``benchmarks/results/quality/runs.jsonl`` (600 steps, not recomputed); the augmented
model is trained with the demo model's recipe plus ``--augment robust``.

    python benchmarks/augment.py train-synthetic                  # augmented demo-like model
    python benchmarks/augment.py recommend --source robust --shift brightfield
    python benchmarks/augment.py run --source robust --shift brightfield --seeds 0,1,2
    python benchmarks/augment.py oracle-synthetic --shift defocus  # ceiling (labelled target)
    python benchmarks/augment.py report                           # -> results/augment/report.md

Every run appends one line to ``benchmarks/results/augment/runs.jsonl`` (runs already there
are skipped, so an interrupted benchmark resumes). Run it with one thread per process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "augment"
QUALITY = ROOT / "benchmarks" / "results" / "quality"
SYNTH_SHIFTS = ("brightfield", "overexpose", "scale", "defocus")
CHANNELS = ["DAPI", "CD29"]
N_UNLABELED, N_TEST = 48, 8


def synthetic_model_path(out: Path, source: str, seed: int = 0) -> Path:
    return out / "models" / f"synthetic_{source}_s{seed}.pt"


# ------------------------------------------------------------------ training
def cmd_train_synthetic(args: argparse.Namespace) -> None:
    """The demo model's recipe (scripts/train_demo_model.py) with an augmentation preset."""
    from demo_recipe import demo_recipe_data  # noqa: PLC0415 - benchmarks/ is on sys.path
    from napari_lmadda.data.augment import AugmentedSampler
    from napari_lmadda.models import UNetConfig, save_model
    from napari_lmadda.training import SourceTrainConfig, train_source
    from napari_lmadda.training.source import TARGET_RANGE

    t0 = time.time()
    pairs, (vx, vy) = demo_recipe_data()
    sampler = AugmentedSampler(pairs, 128, 8, augment=args.augment, seed=args.seed)
    meta = {"channel_names": CHANNELS, "input_percentiles": [1.0, 99.8],
            "target_range": list(TARGET_RANGE),
            "provenance": {"script": "benchmarks/augment.py train-synthetic",
                           "augment": args.augment,
                           "augment_config": sampler.config.to_dict()}}
    arch = UNetConfig(num_downs=6, ngf=16, in_channels=1, out_channels=2, norm="batch")
    cfg = SourceTrainConfig(steps=args.steps, eval_every=250, device="cpu", seed=args.seed)

    def show(ev):
        if getattr(ev, "is_best", None) is not None:
            print(f"step {ev.step:5d}  val Pearson {ev.criterion:.4f}  "
                  f"{time.time() - t0:5.0f} s", flush=True)

    res = train_source(sampler, (vx, vy), arch=arch, config=cfg, meta=meta, callback=show)
    path = synthetic_model_path(Path(args.out), args.augment, args.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(res.model, path, half=True)
    info = {"augment": args.augment, "seed": args.seed, "steps": args.steps,
            "best_step": res.best_step, "val_pearson": res.best_pearson,
            "seconds": time.time() - t0, "history": res.history}
    path.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {path}: best step {res.best_step}, val Pearson {res.best_pearson:.4f}, "
          f"{time.time() - t0:.0f} s", flush=True)


def cmd_oracle_synthetic(args: argparse.Namespace) -> None:
    """The ceiling of a synthetic shift: the demo architecture trained on labelled target fields.

    The recipe of ``benchmarks/quality.py oracle`` (96 training and 8 validation fields of
    the shifted microscope, 2500 steps), for the shifts that benchmark does not cover
    (defocus); scored on the same 8 test fields as the adaptation rows.
    """
    from demo_recipe import train_oracle  # noqa: PLC0415 - benchmarks/ is on sys.path
    from napari_lmadda.data.synthetic import PROJECT_DOMAINS
    from napari_lmadda.evaluation.sweep import pearson_per_channel

    t0 = time.time()
    res = train_oracle(PROJECT_DOMAINS[args.shift], args.steps)
    scores = pearson_per_channel(res.model, synthetic_case(args.shift)["eval"])
    doc = {"shift": args.shift, "pearson": scores, "steps": args.steps,
           "best_step": res.best_step, "val_pearson": res.best_pearson,
           "seconds": time.time() - t0,
           "recipe": "benchmarks/quality.py oracle (96 labelled target fields, seed 1)"}
    out = Path(args.out) / f"oracle_{args.shift}.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(out)
    print(f"oracle {args.shift}: {scores} ({time.time() - t0:.0f} s)", flush=True)


# ------------------------------------------------------------------ cases
def synthetic_case(shift: str) -> dict:
    """The quality benchmark's images for a synthetic shift (same seeds as quality.py)."""
    from napari_lmadda.data.synthetic import PROJECT_DOMAINS, make_domain
    from napari_lmadda.evaluation.sweep import EvalSet

    kw = PROJECT_DOMAINS[shift]
    source = make_domain(N_UNLABELED, modality="phase", size=256, seed=11)["input"]
    target = make_domain(N_UNLABELED, size=256, seed=12, **kw)["input"]
    test = make_domain(N_TEST, size=256, seed=13, **kw)
    truths = [np.stack([test["dapi"][i], test["cd29"][i]]) for i in range(N_TEST)]
    ev = EvalSet(list(test["input"]), truths, [f"test{i}" for i in range(N_TEST)], CHANNELS)
    return {"source": source, "target": target, "eval": ev, "patch": 128, "steps": 600,
            "key_channel": "CD29"}


def load_case(case: str) -> dict:
    """A synthetic shift name, or ``real:<name>`` (see ``benchmarks/real_cases.py``)."""
    if case.startswith("real:"):
        import real_cases  # noqa: PLC0415 - benchmarks/ is on sys.path when run as a script

        return real_cases.benchmark_case(case.split(":", 1)[1])
    return synthetic_case(case)


def source_model_path(out: Path, case: str, source: str) -> Path | str:
    """The plain or augmented source model of a case."""
    if case.startswith("real:"):
        import real_cases  # noqa: PLC0415

        return real_cases.source_model_path(case.split(":", 1)[1], source)
    return "demo" if source == "plain" else synthetic_model_path(out, source)


def recommend_path(out: Path, case: str, source: str) -> Path:
    return out / "recommend" / f"{case.replace(':', '_')}_{source}.json"


def get_recommendation(out: Path, case: str, source: str, d: dict | None = None) -> dict:
    """The label-free layer recommendation for (case, source), computed once and cached."""
    from napari_lmadda.adapt.recommend import recommend_layer
    from napari_lmadda.models import load_model

    path = recommend_path(out, case, source)
    if path.exists():
        return json.loads(path.read_text())
    d = d or load_case(case)
    model = load_model(source_model_path(out, case, source))
    t0 = time.time()
    rec = recommend_layer(model, d["source"], d["target"], n_patches=32,
                          patch_size=d["patch"], probe_steps=60, device="cpu", seed=0)
    doc = {"case": case, "source": source, "recommended": rec.layer,
           "confidence": rec.confidence, "p_value": rec.p_value, "reason": rec.reason,
           "seconds": time.time() - t0}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    return doc


def _key(r: dict) -> tuple:
    return (r["case"], r["source"], r["method"], r["layer"], int(r["seed"]), r.get("tag", ""))


def read_runs(out: Path) -> list[dict]:
    """This benchmark's runs plus, for synthetic shifts, the plain demo model's quality runs."""
    rows: dict[tuple, dict] = {}
    path = out / "runs.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows.setdefault(_key(r), r)
    qpath = QUALITY / "runs.jsonl"
    if qpath.exists():
        for line in qpath.read_text().splitlines():
            r = json.loads(line)
            if r.get("tag", "") or r["method"] not in ("none", "adabn", "lmadda"):
                continue
            if r.get("config", {}).get("steps") != 600:
                continue
            r = {**r, "case": r["shift"], "source": "plain", "tag": "", "from": "quality"}
            rows.setdefault(_key(r), r)
    return list(rows.values())


def _claim(out: Path, key: tuple) -> bool:
    """Claim a run for this process (several workers share one plan); False if taken."""
    claims = out / "claims"
    claims.mkdir(parents=True, exist_ok=True)
    name = "_".join(str(k) for k in key).replace(":", "-").replace("/", "-")
    try:
        fd = os.open(claims / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def run_one(out: Path, case: str, source: str, method: str, layer: int | str | None,
            seed: int, d: dict, tag: str = "") -> dict | None:
    """One adaptation run scored on the case's test images; appended to runs.jsonl."""
    from napari_lmadda.adapt.config import AdaptConfig
    from napari_lmadda.evaluation.sweep import EvalSet, iter_sweep, pearson_per_channel
    from napari_lmadda.jsonsafe import json_safe
    from napari_lmadda.models import load_model

    rec_layer = None
    if layer == "rec":
        rec_layer = get_recommendation(out, case, source, d)["recommended"]
        if rec_layer is None:
            print(f"{case} {source}: no adaptation recommended; LM-ADDA@rec = none", flush=True)
            return None
        layer = int(rec_layer)
    key = (case, source, method, layer if method == "lmadda" else None, int(seed), tag)
    if key in {_key(r) for r in read_runs(out)} or not _claim(out, key):
        return None
    model = load_model(source_model_path(out, case, source))
    ev: EvalSet = d["eval"]
    mon = EvalSet(ev.images[:4], ev.truths[:4], ev.names[:4], ev.channel_names)

    def monitor(step, net):
        return {f"pearson_{k}": v for k, v in pearson_per_channel(net, mon).items()}

    cfg = AdaptConfig(steps=d["steps"], patch_size=d["patch"], device="cpu")
    t0 = time.time()
    for run in iter_sweep(model, d["source"], d["target"],
                          layers=[layer] if method == "lmadda" else [],
                          methods=[] if method == "lmadda" else [method], seeds=[seed],
                          config=cfg, eval_set=ev, monitor=monitor):
        row = {"case": case, "source": source, "tag": tag, **run.to_dict(),
               "recommended": rec_layer, "config": cfg.to_dict()}
        with (out / "runs.jsonl").open("a") as fh:
            fh.write(json.dumps(json_safe(row)) + "\n")
        print(f"{case} {source} {run.label} seed {seed}: "
              + ", ".join(f"{k} {v:.3f}" for k, v in run.pearson.items())
              + f" (kept step {run.best_step}, {time.time() - t0:.0f} s)", flush=True)
        return row
    return None


def is_done(out: Path, case: str, source: str, method: str, layer: int | str | None,
            seed: int, tag: str = "") -> bool:
    """True when the run is in runs.jsonl or claimed by a worker (no images loaded)."""
    if layer == "rec":
        path = recommend_path(out, case, source)
        if not path.exists():
            return False
        layer = json.loads(path.read_text())["recommended"]
        if layer is None:
            return True  # "no adaptation needed": LM-ADDA at the recommendation = none
    key = (case, source, method, layer if method == "lmadda" else None, int(seed), tag)
    name = "_".join(str(k) for k in key).replace(":", "-").replace("/", "-")
    return (out / "claims" / name).exists() or key in {_key(r) for r in read_runs(out)}


def parse_plan(text: str) -> list[tuple[str, str, str, int | str | None, int]]:
    """``case,source,method,layer,seed`` per line (layer: a number, ``rec`` or ``-``)."""
    plan = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        case, source, method, layer, seed = (v.strip() for v in line.split(","))
        lay: int | str | None = None if layer == "-" else (layer if layer == "rec"
                                                          else int(layer))
        plan.append((case, source, method, lay, int(seed)))
    return plan


def cmd_work(args: argparse.Namespace) -> None:
    """Work through a plan file; several workers may share it (runs are claimed)."""
    out = Path(args.out)
    cache: dict[str, dict] = {}
    while True:  # the plan is re-read every pass: edit it to reprioritise a running worker
        plan = parse_plan(Path(args.plan).read_text())
        ran = waiting = 0
        for case, source, method, layer, seed in plan:
            model = source_model_path(out, case, source)
            if model != "demo" and not Path(str(model)).exists():
                waiting += 1
                continue
            if is_done(out, case, source, method, layer, seed, args.tag):
                continue
            if args.latest_start and time.strftime("%H:%M", time.gmtime()) > args.latest_start:
                print(f"not starting {case} {source} {method} {layer} {seed}: past "
                      f"--latest-start {args.latest_start} UTC", flush=True)
                return
            if case not in cache:
                cache.clear()  # one case's images in memory at a time
                cache[case] = load_case(case)
            try:
                ran += run_one(out, case, source, method, layer, seed, cache[case],
                               args.tag) is not None
            except Exception as exc:  # keep the worker going; the error is in the log
                print(f"FAILED {case} {source} {method} {layer} {seed}: {exc!r}", flush=True)
            if ran:
                break  # back to the top: a higher-priority run may have become possible
        if not ran and (not waiting or not args.wait):
            print(f"plan done ({waiting} run(s) still waiting for a source model)", flush=True)
            return
        if not ran:
            time.sleep(60)


def _fmt(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    if not vals:
        return "-"
    med = statistics.median(vals)
    if len(vals) == 1:
        return f"{med:.3f} (1 seed)"
    return f"{med:.3f} [{min(vals):.3f}, {max(vals):.3f}] ({len(vals)} seeds)"


def _oracle(case: str) -> float | None:
    if case.startswith("real:"):
        import real_cases  # noqa: PLC0415

        path = real_cases.OUT / f"oracle_{case.split(':', 1)[1]}.json"
        key = None
    else:  # this benchmark's own oracles (defocus) first, then the quality benchmark's
        key = "CD29"
        path = next((p for p in (OUT / f"oracle_{case}.json", QUALITY / f"oracle_{case}.json")
                     if p.exists()), OUT / f"oracle_{case}.json")
    if not path.exists():
        return None
    scores = json.loads(path.read_text())["pearson"]
    return float(scores[key] if key else next(iter(scores.values())))


def cmd_report(args: argparse.Namespace) -> None:
    """The table "Augment, adapt, or both?" (markdown) from runs.jsonl."""
    out = Path(args.out)
    rows = [r for r in read_runs(out) if r.get("tag", "") == args.tag]
    cases = [c for c in (*SYNTH_SHIFTS, *sorted({r["case"] for r in rows
                                                if r["case"].startswith("real:")}))
             if any(r["case"] == c for r in rows)]
    md = ["| shift | source model | no adaptation | AdaBN | LM-ADDA, recommended layer "
          "(label-free) | LM-ADDA, best layer by labels (reference) | oracle |",
          "|---|---|---|---|---|---|---|"]
    for case in cases:
        key = "CD29" if not case.startswith("real:") else None
        for source in ("plain", "robust"):
            rs = [r for r in rows if r["case"] == case and r["source"] == source]
            if not rs:
                continue

            def vals(method, layer=None, rs=rs, key=key):
                return [(r["pearson"][key] if key else next(iter(r["pearson"].values())))
                        for r in rs if r["method"] == method
                        and (layer is None or r["layer"] == layer)]

            rec_path = recommend_path(out, case, source)
            rec = json.loads(rec_path.read_text())["recommended"] if rec_path.exists() \
                else "?"
            layers = sorted({r["layer"] for r in rs if r["method"] == "lmadda"})
            med = {la: statistics.median(vals("lmadda", la)) for la in layers}
            best = max(med, key=med.get) if med else None
            if rec is None:
                rec_cell = "none needed (= no adaptation)"
            elif rec == "?" or rec not in layers:
                rec_cell = f"L{rec}: not run"
            else:
                rec_cell = f"L{rec}: {_fmt(vals('lmadda', rec))}"
            best_cell = (f"L{best}: {_fmt(vals('lmadda', best))} (of L"
                         + ",".join(str(la) for la in layers) + ")") if best else "-"
            if layers == [rec]:  # no other layer run: nothing to choose by labels
                best_cell = "- (only the recommended layer run)"
            oracle = _oracle(case)
            none = vals("none")
            md.append(f"| {case.replace('real:', 'real ')} | {source} | "
                      f"{f'{none[0]:.3f}' if none else '-'} | "
                      f"{_fmt(vals('adabn'))} | {rec_cell} | {best_cell} | "
                      f"{'-' if oracle is None else f'{oracle:.3f}'} |")
    text = "\n".join(md) + "\n"
    (out / "report.md").write_text(text)
    print(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train-synthetic", help="demo-recipe source model with augmentation")
    t.add_argument("--augment", default="robust")
    t.add_argument("--steps", type=int, default=2500)
    t.add_argument("--seed", type=int, default=0)
    o = sub.add_parser("oracle-synthetic", help="oracle of a synthetic shift (labelled target)")
    o.add_argument("--shift", choices=SYNTH_SHIFTS, required=True)
    o.add_argument("--steps", type=int, default=2500)
    w = sub.add_parser("work", help="run the plan's runs not done yet (claims each run)")
    w.add_argument("--plan", required=True, help="file: case,source,method,layer,seed per line")
    w.add_argument("--tag", default="")
    w.add_argument("--wait", action="store_true",
                   help="wait for source models still being trained instead of finishing")
    w.add_argument("--latest-start", default="",
                   help="HH:MM (UTC, same day): start no run after this time")
    rep = sub.add_parser("report", help="the table, from runs.jsonl")
    rep.add_argument("--tag", default="")
    for s in (t, o, w, rep):
        s.add_argument("--out", default=str(OUT))
        s.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    {"train-synthetic": cmd_train_synthetic, "oracle-synthetic": cmd_oracle_synthetic,
     "work": cmd_work, "report": cmd_report}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
