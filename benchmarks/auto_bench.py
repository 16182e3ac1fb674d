"""``method="auto"`` run for real on the benchmark cases (not a test).

Runs :func:`napari_lmadda.adapt.auto.iter_auto` with the engine's defaults (1200 steps per
candidate) on a case of ``auto_grid.py`` and a seed, logs the ground truth of the kept model
on the 8 labelled test fields (never seen by auto) and of every candidate checkpoint auto
evaluated (through the monitor), the candidates, the steps and the wall time, and appends one
line to ``benchmarks/results/auto/auto_runs.jsonl``. ``auto_replay.py`` predicts the same
choices from the full candidate grids; this checks the prediction and measures the cost.

    python benchmarks/auto_bench.py --case brightfield --seed 0
    python benchmarks/auto_bench.py --case real:bpae_defocus --steps 400   # real_cases.py
    python benchmarks/auto_bench.py --case real:allen_exposure --steps 400 --keep-adabn \
        --out benchmarks/results/auto/auto_runs_real_keep_adabn.jsonl   # the rule before 2 Dec
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from auto_grid import OUT, _pearson, domains
from napari_lmadda.adapt.auto import KEEP_ADABN, format_report, iter_auto
from napari_lmadda.adapt.config import AdaptConfig
from napari_lmadda.adapt.events import Evaluated, Finished, Step
from napari_lmadda.jsonsafe import json_safe
from napari_lmadda.models import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--layers", default="", help="candidate layers (default: recommended)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT / "auto_runs.jsonl")
    p.add_argument("--keep-adabn", action="store_true",
                   help="measure the rule before 2 Dec (AdaBN may be kept if stable)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    patch = 128
    if args.case.startswith("real:"):  # a real case, with the plain source model of augment.py
        import augment  # noqa: PLC0415 - benchmarks/ is on sys.path when run as a script

        d = augment.load_case(args.case)
        model = load_model(str(augment.source_model_path(augment.OUT, args.case, "plain")))
        source, target, ev, patch = d["source"], d["target"], d["eval"], d["patch"]
    else:
        model = load_model("demo")
        source, target, ev = domains(args.case)
    evaluated = []

    def monitor(step, net):
        m = _pearson(net, ev)
        evaluated.append({"step": step, **m})
        return m

    cfg = AdaptConfig(steps=args.steps, device="cpu", seed=args.seed, patch_size=patch)
    layers = tuple(int(v) for v in args.layers.split(",") if v)
    t0, res, steps = time.perf_counter(), None, 0
    total = "?"
    # --keep-adabn measures the older rule; it is not a product setting
    rule = "if-stable" if args.keep_adabn else KEEP_ADABN
    for e in iter_auto(model, source, target, layers=layers, config=cfg, monitor=monitor,
                       keep_adabn=rule):
        if isinstance(e, Step):
            steps, total = e.step, e.total_steps
        if isinstance(e, Evaluated):  # progress, for a long run watched through its log
            truth = evaluated[-1].get("pearson", float("nan")) if evaluated else float("nan")
            if evaluated:  # which candidate and step this truth belongs to (best by labels)
                evaluated[-1].update(layer=e.metrics.get("layer"), score=e.criterion,
                                     candidate_step=e.metrics.get("candidate_step"))
            print(f"step {e.step}/{total} layer "
                  f"{e.metrics.get('layer', 0):.0f}: score {e.criterion:.4f} truth {truth:.3f}"
                  f" ({time.perf_counter() - t0:.0f} s)", flush=True)
        if isinstance(e, Finished):
            res = e.result
    seconds = time.perf_counter() - t0
    rep = res.report
    row = {"case": args.case, "seed": args.seed, "steps": args.steps, "winner": rep.winner,
           "keep_adabn": args.keep_adabn,
           "best_step": res.best_step, "adapted": rep.adapted, "truth": _pearson(res.model, ev),
           "none": _pearson(model, ev), "steps_used": rep.steps_used, "step_events": steps,
           "budget": rep.steps_budget, "seconds": seconds, "message": res.message,
           "recommendation": rep.recommendation,
           "candidates": [vars(c) for c in rep.candidates], "monitor": evaluated}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as fh:
        fh.write(json.dumps(json_safe(row)) + "\n")
    print(format_report(rep))
    print(f"{args.case} seed {args.seed}: kept {rep.winner}, Pearson "
          f"{row['truth']['pearson']:.3f} (none {row['none']['pearson']:.3f}), "
          f"{rep.steps_used} steps, {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
