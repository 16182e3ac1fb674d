"""Per-step cost of multi-process adaptation (torch.distributed over gloo) on this machine.

Runs the same LM-ADDA adaptation (same global batch, same steps) as

* 1 process with 1 thread,
* 1 process with 2 threads,
* 2 processes with 1 thread each, launched by ``torchrun`` (gloo, CPU),

each in a fresh subprocess, and reports milliseconds per training step: the median of the
per-step times after a warm-up (evaluations are excluded: they run only after the last
step). A ratio below 1 means the 2-process run is faster than the single process. The last
column times one step's collectives alone (the same all-reduces with the same sizes, after
training): the communication part of the 2-process step.

Optionally (``--amp-check``) adapts the bundled demo model on the synthetic bright-field
shift in float32 and with bf16 autocast, and reports each adapted model's Pearson correlation
with the ground-truth stains on held-out target fields, and the time per step.

Prints tables and writes ``benchmarks/results/scaling_ddp.md``. Not a test.

    python benchmarks/scaling_ddp.py                    # tiny and demo model (~10 min)
    python benchmarks/scaling_ddp.py --models tiny --steps 20
    python benchmarks/scaling_ddp.py --amp-check --amp-steps 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
RESULTS = HERE.parent / "results" / "scaling_ddp.md"

# name -> (model, patch, layer, description)
MODELS = {
    "tiny": ("tiny", 64, 3, "UNet num_downs 5, ngf 8 (0.26 M parameters), 64 px patches, layer 3"),
    "demo": ("demo", 128, 10, "bundled demo model (num_downs 6, 1.8 M parameters), 128 px "
                              "patches, layer 10"),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(name: str):
    import torch

    from napari_lmadda.models import UNetGenerator, load_model

    if name == "demo":
        return load_model("demo")
    torch.manual_seed(0)
    return UNetGenerator(num_downs=5, ngf=8, out_channels=2).eval()


def worker(args: argparse.Namespace) -> None:
    """One process of a measured run: adapt, and (rank 0) print the step times as JSON."""
    import torch

    from napari_lmadda.adapt import distributed
    from napari_lmadda.adapt.config import AdaptConfig
    from napari_lmadda.adapt.engine import iter_adapt
    from napari_lmadda.adapt.events import Started, Step
    from napari_lmadda.data.synthetic import PROJECT_DOMAINS, make_domain

    torch.set_num_threads(args.threads)
    _, patch, layer, _ = MODELS[args.model]
    model = _model(args.model)
    src = make_domain(6, size=256, seed=0, **PROJECT_DOMAINS["source"])["input"]
    tgt = make_domain(6, size=256, seed=1, **PROJECT_DOMAINS["brightfield"])["input"]
    cfg = AdaptConfig(steps=args.steps, batch_size=args.batch, patch_size=patch,
                      eval_every=args.steps, eval_patches=8, device="cpu", amp=args.amp)
    times, t_prev, world, comm = [], None, 1, None
    with distributed.session(torch.device("cpu")):
        n_g = 0
        for ev in iter_adapt(model, src, tgt, method="lmadda", layers=layer, config=cfg):
            if isinstance(ev, Started):
                n_g = ev.trainable_params
            if isinstance(ev, Step):
                now = time.perf_counter()
                if t_prev is not None:
                    times.append(now - t_prev)
                t_prev, world = now, distributed.world_size()
        if distributed.is_active():
            comm = _step_collectives_ms(model, cfg, layer, n_g)
    if int(os.environ.get("RANK", "0")) == 0:
        print("RESULT " + json.dumps({"times": times, "world": world, "comm_ms": comm}),
              flush=True)


def _step_collectives_ms(model, cfg, layer: int, n_g: int, reps: int = 30) -> float:
    """Median ms of one step's collectives alone (same sizes and order as the loop)."""
    import torch

    from napari_lmadda.adapt import distributed
    from napari_lmadda.models.discriminator import LayerDiscriminator

    info = {i.index: i for i in model.describe_layers(cfg.patch_size)}[layer]
    d = LayerDiscriminator(info.channels, min(info.height, info.width), ndf=cfg.ndf,
                           spectral_norm=cfg.d_spectral_norm)
    cpu = torch.device("cpu")
    d_grads = [torch.randn_like(p) for p in d.parameters()]
    g_grads = [torch.randn(n_g)]
    tap = torch.randn(cfg.batch_size // distributed.world_size(), info.channels, 2, 2)
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        distributed.any_flag(False, cpu)
        distributed.all_reduce_mean_(d_grads)
        distributed.mean_scalars([0.5, 0.5], cpu)
        distributed.global_std(tap)
        distributed.all_reduce_mean_(g_grads)
        distributed.mean_scalars([0.5, 0.5], cpu)
        out.append(time.perf_counter() - t)
    return 1000 * statistics.median(out)


def measure(model: str, procs: int, threads: int, steps: int, batch: int,
            amp: str = "off") -> dict:
    """Run one configuration in a fresh subprocess; per-step times after the warm-up."""
    me = [str(HERE), "--worker", "--model", model, "--threads", str(threads), "--steps",
          str(steps), "--batch", str(batch), "--amp", amp]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *me]
    else:
        cmd = [sys.executable, *me]
    env = {**os.environ, "LMADDA_DEVICE": "cpu", "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(line[0][len("RESULT "):])
    warm = min(5, len(res["times"]) // 3)
    t = res["times"][warm:]
    return {"ms_median": 1000 * statistics.median(t), "ms_mean": 1000 * statistics.fmean(t),
            "n": len(t), "world": res["world"], "comm_ms": res.get("comm_ms")}


def amp_check(steps: int, batch: int) -> list[dict]:
    """Adapt the demo model in float32 and with bf16 autocast; Pearson on held-out fields."""
    import torch

    from napari_lmadda.adapt.config import AdaptConfig
    from napari_lmadda.adapt.engine import adapt
    from napari_lmadda.adapt.events import Step
    from napari_lmadda.data.synthetic import PROJECT_DOMAINS, make_domain
    from napari_lmadda.inference.predict import predict_image

    torch.set_num_threads(1)
    model = _model("demo")
    src = make_domain(8, size=256, seed=0, **PROJECT_DOMAINS["source"])["input"]
    tgt = make_domain(8, size=256, seed=1, **PROJECT_DOMAINS["brightfield"])["input"]
    test = make_domain(4, size=256, seed=2, **PROJECT_DOMAINS["brightfield"])
    gt = np.stack([test["dapi"], test["cd29"]], axis=1)

    def pearsons(m) -> list[float]:
        pred = np.stack([predict_image(m, x, device="cpu") for x in test["input"]])
        return [float(np.corrcoef(pred[:, c].ravel(), gt[:, c].ravel())[0, 1])
                for c in range(gt.shape[1])]

    rows = [{"run": "source model (no adaptation)", "pearson": pearsons(model), "ms": None}]
    for amp in ("off", "bf16"):
        cfg = AdaptConfig(steps=steps, batch_size=batch, patch_size=128,
                          eval_every=max(1, steps // 4), eval_patches=16, device="cpu", amp=amp)
        events: list = []
        res = adapt(model, src, tgt, method="lmadda", layers=10, config=cfg,
                    callback=events.append)
        per = np.diff([ev.elapsed for ev in events if isinstance(ev, Step)])
        rows.append({"run": f"LM-ADDA layer 10, amp {amp}", "pearson": pearsons(res.model),
                     "ms": 1000 * float(np.median(per)), "best_step": res.best_step})
    return rows


def main() -> None:
    """Measure and report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="tiny", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--amp", default="off", help=argparse.SUPPRESS)
    p.add_argument("--models", default="tiny,demo", help="tiny, demo or both (tiny,demo)")
    p.add_argument("--steps", type=int, default=30, help="training steps per run (30)")
    p.add_argument("--batch", type=int, default=8, help="global batch (8)")
    p.add_argument("--amp-check", action="store_true",
                   help="also compare float32 and bf16 adaptation of the demo model")
    p.add_argument("--amp-steps", type=int, default=60, help="steps of the amp check (60)")
    p.add_argument("--no-scaling", action="store_true", help="skip the scaling runs")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    load = os.getloadavg()
    lines = ["# Multi-process adaptation (DDP over gloo) on this machine", "",
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
             f"Python {platform.python_version()}; load average at start "
             f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (the cores are shared with other "
             "jobs: absolute numbers are noisy).", ""]
    if not args.no_scaling:
        lines += [f"LM-ADDA, global batch {args.batch}, {args.steps} steps; median ms per "
                  "training step after a 5-step warm-up (evaluations excluded).", "",
                  "| model | 1 proc x 1 thread | 1 proc x 2 threads | 2 procs x 1 thread "
                  "(gloo) | 2 procs / 1 proc x 1 thread | one step's collectives, timed alone |",
                  "|---|---|---|---|---|---|"]
        print("\n".join(lines), flush=True)
        for name in args.models.split(","):
            single = measure(name, 1, 1, args.steps, args.batch)
            single2 = measure(name, 1, 2, args.steps, args.batch)
            multi = measure(name, 2, 1, args.steps, args.batch)
            assert multi["world"] == 2 and single["world"] == 1
            row = (f"| {MODELS[name][3]} | {single['ms_median']:.1f} | "
                   f"{single2['ms_median']:.1f} | {multi['ms_median']:.1f} | "
                   f"{multi['ms_median'] / single['ms_median']:.2f} | "
                   f"{multi['comm_ms']:.2f} |")
            print(row, flush=True)
            lines.append(row)
        lines.append("")
    if args.amp_check:
        rows = amp_check(args.amp_steps, 4)
        part = ["", f"Mixed precision: demo model, synthetic bright-field target, "
                f"{args.amp_steps} steps, batch 4, 128 px, 1 thread; Pearson with the "
                "ground-truth stains on 4 held-out 256 px target fields.", "",
                "| run | Pearson DAPI | Pearson CD29 | ms / step |", "|---|---|---|---|"]
        for r in rows:
            ms = "-" if r["ms"] is None else f"{r['ms']:.0f}"
            part.append(f"| {r['run']} | {r['pearson'][0]:.4f} | {r['pearson'][1]:.4f} | {ms} |")
        print("\n".join(part), flush=True)
        lines += part
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
