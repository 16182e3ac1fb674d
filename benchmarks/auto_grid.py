"""Candidate grids for ``--method auto``: every candidate run in full, every checkpoint kept.

For a case (a synthetic shift of the quality benchmark, or the identity case: new fields
of the *source* microscope) and a seed, this runs no adaptation, AdaBN and LM-ADDA at the
listed layers with the engine's defaults (1200 steps, evaluated every 100), and at every
evaluation

* scores the evaluated (EMA) model against ground truth on the 8 labelled test fields
  (Pearson per channel; never used for any choice), and
* saves its weights under ``--ckpt`` (outside the repository by default), so that any
  label-free score can be computed on every checkpoint afterwards
  (``benchmarks/auto_scores.py``) without training again.

One line per run is appended to ``benchmarks/results/auto/grid.jsonl`` (the engine's own
label-free metrics per evaluation, the ground truth per checkpoint, wall time); runs already
there are skipped, so the script resumes. These grids serve three questions: how well
each label-free score ranks checkpoints, layers and methods (``auto_scores.py``); whether
the layer recommendation picks a good layer (``recommend_validation.py``); and what auto's
choices would have given (replayed from the logs, checked against real auto runs).

    python benchmarks/auto_grid.py run --case brightfield --seed 0 --layers 2,3,4,6,8,10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_lmadda.adapt.config import AdaptConfig
from napari_lmadda.adapt.engine import iter_adapt
from napari_lmadda.adapt.events import Finished, Step
from napari_lmadda.data.synthetic import PROJECT_DOMAINS, make_domain
from napari_lmadda.evaluation.sweep import EvalSet, pearson_per_channel
from napari_lmadda.jsonsafe import json_safe
from napari_lmadda.models import load_model

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "auto"
CKPT = Path("/work/scratch/auto_ckpt")
CHANNELS = ["DAPI", "CD29"]
N_UNLABELED, N_TEST = 48, 8
#: the synthetic cases: the quality benchmark's shifts, plus new source-microscope fields
CASES = {
    **{k: v for k, v in PROJECT_DOMAINS.items()
       if k in ("brightfield", "overexpose", "scale", "defocus")},
    "identity": {"modality": "phase", "shift": "none"},
    "noise": {"modality": "phase", "shift": "noise", "magnitude": 0.05},
}


def case_kwargs(case: str) -> dict:
    """``make_domain`` keywords of a case; ``name@magnitude`` (``defocus@3``) sets the strength."""
    name, _, mag = case.partition("@")
    if name not in CASES:
        raise SystemExit(f"unknown case {case!r}: one of {', '.join(CASES)} (or name@magnitude)")
    return {**CASES[name], **({"magnitude": float(mag)} if mag else {})}


def domains(case: str) -> tuple[np.ndarray, np.ndarray, EvalSet]:
    """Unlabeled source and target fields and the labelled test set (quality.py's seeds)."""
    kw = case_kwargs(case)
    source = make_domain(N_UNLABELED, modality="phase", size=256, seed=11)["input"]
    target = make_domain(N_UNLABELED, size=256, seed=12, **kw)["input"]
    test = make_domain(N_TEST, size=256, seed=13, **kw)
    truths = [np.stack([test["dapi"][i], test["cd29"][i]]) for i in range(N_TEST)]
    ev = EvalSet(list(test["input"]), truths, [f"test{i}" for i in range(N_TEST)], CHANNELS)
    return source, target, ev


def done_keys(path: Path) -> set[tuple]:
    if not path.exists():
        return set()
    return {(r["case"], r["method"], r["layer"], r["seed"], r["steps"])
            for r in map(json.loads, path.read_text().splitlines())}


def _pearson(net, ev: EvalSet) -> dict[str, float]:
    """Pearson per channel on the test fields, and their mean (``pearson``)."""
    p = pearson_per_channel(net, ev)
    return {"pearson": float(np.mean(list(p.values()))),
            **{f"pearson_{k}": float(v) for k, v in p.items()}}


def _truth(net, ev: EvalSet) -> dict[str, float]:
    """:func:`_pearson` named as the engine names monitor values in a history."""
    return {f"monitor_{k}": v for k, v in _pearson(net, ev).items()}


def truth_of(h: dict) -> dict[str, float]:
    """The ground truth of a history row (early grid runs prefixed it twice)."""
    return {k.replace("monitor_monitor_", "monitor_"): v for k, v in h.items()
            if k.startswith("monitor_")}


def cmd_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "grid.jsonl"
    model = load_model(args.model)
    source, target, ev = domains(args.case)
    plan = [(m, None) for m in args.methods.split(",") if m]
    plan += [("lmadda", int(v)) for v in args.layers.split(",") if v]
    case_kwargs(args.case)  # a bad case name fails before any work
    for method, layer in plan:
        key = (args.case, method, layer, args.seed, args.steps)
        if key in done_keys(path):
            continue
        tag = f"{method}{'' if layer is None else layer}_s{args.seed}_n{args.steps}"
        ck = Path(args.ckpt) / args.case / tag
        ck.mkdir(parents=True, exist_ok=True)

        def monitor(step: int, net, ck: Path = ck) -> dict[str, float]:
            torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()},
                       ck / f"step{step:05d}.pt")
            return _pearson(net, ev)

        cfg = AdaptConfig(steps=args.steps, device="cpu", seed=args.seed)
        t0 = time.perf_counter()
        result, train_s = None, 0.0
        for evt in iter_adapt(model, source, target, method=method, layers=layer, config=cfg,
                              monitor=monitor):
            if isinstance(evt, Step):
                train_s = evt.elapsed
            if isinstance(evt, Finished):
                result = evt.result
        assert result is not None
        seconds = time.perf_counter() - t0
        history = result.history
        if not history:  # none / adabn: one checkpoint, the result itself
            torch.save({k: v.detach().cpu() for k, v in result.model.state_dict().items()},
                       ck / f"step{0:05d}.pt")
            history = [{"step": 0, **_truth(result.model, ev)}]
        row = {"case": args.case, "method": method, "layer": layer, "seed": args.seed,
               "steps": args.steps, "best_step": result.best_step,
               "steps_done": result.steps_done, "seconds": seconds, "train_seconds": train_s,
               "final": _truth(result.model, ev), "history": history, "ckpt": str(ck),
               "config": cfg.to_dict()}
        with path.open("a") as fh:
            fh.write(json.dumps(json_safe(row)) + "\n")
        print(f"{args.case} {tag}: kept step {result.best_step}, Pearson "
              f"{row['final']['monitor_pearson']:.3f} ({seconds:.0f} s)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the candidates of one case and seed")
    r.add_argument("--case", required=True,
                   help=f"one of {', '.join(CASES)}, or name@magnitude (defocus@3)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--layers", default="2,4,10")
    r.add_argument("--methods", default="none,adabn")
    r.add_argument("--steps", type=int, default=1200)
    r.add_argument("--model", default="demo")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--out", type=Path, default=OUT)
    r.add_argument("--ckpt", type=Path, default=CKPT)
    r.set_defaults(func=cmd_run)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
