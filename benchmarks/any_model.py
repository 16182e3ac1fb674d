"""Any-model benchmark: LM-ADDA on networks that are not pix2pix-shaped (issue 17).

Commands, results written incrementally under ``benchmarks/results/any_model/``:

``speed``
    One LM-ADDA training step of the engine (the forward pass stops at the tap, by raising
    from a hook for an ``--arch`` network) against the same step with full forward passes
    and the tap taken by a hook ("naive"), alternating step by step; also the project's UNet
    native vs. the same UNet wrapped as an arbitrary network (hook overhead).
``forward``
    The forward pass alone: stopped at each tap (``model(x, upto=tap)``) vs. the full pass.
``train``
    Trains the test architectures (``tests/arch_zoo.py``: CARE-style UNet with additive
    skips, residual UNet) as source models on the synthetic phase-contrast data of the demo
    model (96 fields, seed 1; validation 8 fields, seed 2), through ``load_arch`` as a user's
    ``--arch`` would.
``run``
    none / AdaBN / LM-ADDA at an early, a middle and a late module of each, on the bright
    field shift of ``benchmarks/quality.py`` (same unlabeled source and target fields, same
    test fields with ground truth, used only for scoring); the kept state is chosen by the
    label-free criterion. Runs append to ``runs.jsonl`` with their settings and CPU time and
    are skipped when a run with the same settings is present.
``report``
    Tables to ``any_model.md`` (pasted into ``docs/benchmarks.md``, "Any model (issue 17)").

Why ``run`` defaults to 64 px patches and batch 4: the first run (400 steps, batch 8,
128 px, ``runs_b8_p128_400steps.jsonl``) took 2437 s of wall time for the ResUNet's early
tap. Measured (``time.process_time``, one thread): that step costs 1.8 s of CPU at
``enc.0`` against 0.6 s at ``enc.3``, because ``enc.0`` is at full resolution (8 x 128 x 128),
where the layer discriminator's three forward and two backward passes cost most of the
step (the network before the tap is cheap); evaluations (every 100 steps, 3.5 s CPU
each) were a small part. 400 x 1.8 s = 720 s of CPU; the rest of the 2437 s was the load
of the shared 2-core machine (wall/CPU 3-5x while 5-7 jobs ran). No thread
oversubscription (one torch thread). 64 px patches and batch 4 make a step ~8x cheaper.

    OMP_NUM_THREADS=1 python benchmarks/any_model.py speed
    OMP_NUM_THREADS=1 python benchmarks/any_model.py forward
    OMP_NUM_THREADS=1 python benchmarks/any_model.py train --arch care
    OMP_NUM_THREADS=1 python benchmarks/any_model.py run --arch care --seeds 0,1
    python benchmarks/any_model.py report

The Quality protocol's budget (600 steps, batch 8 of 128 px, criterion every 100 steps),
run when the machine was quieter (one job of this benchmark, one thread)::

    OMP_NUM_THREADS=1 python benchmarks/any_model.py run --arch care --seeds 0 \
        --taps middle,early2 --steps 600 --batch 8 --patch 128 --eval-every 100

Measured CPU per run at that budget (runs.jsonl, ``cpu_seconds``): ``enc.1`` 329-353 s
(CareUNet), 466 s (ResUNet); the middle taps 142-156 s (CareUNet ``bottom``), 340 s
(ResUNet ``enc.3``); AdaBN 7-13 s. A late tap (``dec.2``, about 3.7 s of CPU per step at
batch 8 of 128 px) would take about 37 min of CPU per run: not run.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "any_model"
ZOO = ROOT / "tests" / "arch_zoo.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

from napari_lmadda.adapt.config import AdaptConfig  # noqa: E402
from napari_lmadda.adapt.engine import iter_adapt  # noqa: E402
from napari_lmadda.adapt.events import Step  # noqa: E402
from napari_lmadda.adapt.sampling import to_tensor  # noqa: E402
from napari_lmadda.data.datasets import ArrayDataset, PatchSampler  # noqa: E402
from napari_lmadda.data.synthetic import make_domain  # noqa: E402
from napari_lmadda.models import UNetGenerator  # noqa: E402
from napari_lmadda.models.arch import load_arch  # noqa: E402
from napari_lmadda.models.discriminator import LayerDiscriminator  # noqa: E402
from napari_lmadda.models.tapped import TappedModel  # noqa: E402

#: architecture name -> (class in tests/arch_zoo.py, keyword arguments, taps); "early2" is
#: the first tap below full resolution, where a step costs about half of "early"'s
ARCHS = {
    "care": ("CareUNet", {"out_channels": 2, "depth": 3, "ngf": 8},
             {"early": "enc.0", "early2": "enc.1", "middle": "bottom", "late": "dec.2"}),
    "resunet": ("ResUNet", {"out_channels": 2, "depth": 3, "ngf": 8},
                {"early": "enc.0", "early2": "enc.1", "middle": "enc.3", "late": "dec.2"}),
}


# ------------------------------------------------------------------ speed
class NaiveStep:
    """LM-ADDA's step with full forward passes; the tap taken by a hook on its module.

    Same losses, optimisers, discriminator and EMA as the engine (as in
    ``benchmarks/speed.py``); every parameter of G' tracks gradients.
    """

    def __init__(self, model, layer: int, cfg: AdaptConfig) -> None:
        self.cfg = cfg
        self.G = copy.deepcopy(model).eval().requires_grad_(False)
        self.Gp = copy.deepcopy(model).eval().requires_grad_(True)
        self.params = [p for i in range(1, layer + 1) for p in self.Gp.block(i).parameters()]
        self.ema = copy.deepcopy(self.Gp).requires_grad_(False)
        self.ema_params = [p for i in range(1, layer + 1)
                           for p in self.ema.block(i).parameters()]
        self.taps: dict[str, torch.Tensor] = {}
        self._counts: list[list[int]] = []  # calls of the hooked modules in this pass
        for key, net in (("G", self.G), ("Gp", self.Gp)):
            self._hook(net, layer, key)
        info = {i.index: i for i in model.describe_layers(cfg.patch_size)}[layer]
        self.D = LayerDiscriminator(info.channels, min(info.height, info.width), ndf=cfg.ndf,
                                    spectral_norm=cfg.d_spectral_norm)
        betas = (cfg.beta1, cfg.beta2)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=betas)
        self.opt_g = torch.optim.Adam(self.params, lr=cfg.lr_g, betas=betas)

    def _hook(self, net, layer: int, key: str) -> None:
        if isinstance(net, TappedModel):
            t = net.describe_layers(self.cfg.patch_size)[layer - 1]
            mod, call = dict(net.net.named_modules())[t.module], t.call
        else:  # the project's UNet: the block's output is the tap
            mod, call = net.block(layer), 1
        count = [0]

        def grab(m, a, y):
            count[0] += 1
            if count[0] == call:
                self.taps[key] = y.clone()

        mod.register_forward_hook(grab)
        self._counts.append(count)

    def _run(self, net, x):
        for c in self._counts:
            c[0] = 0
        net(x)

    def step(self, xs: torch.Tensor, xt: torch.Tensor) -> None:
        with torch.no_grad():
            self._run(self.G, xs)
        fs = self.taps["G"]
        self._run(self.Gp, xt)
        ft = self.taps["Gp"]
        self.opt_d.zero_grad(set_to_none=True)
        ls, lt = self.D(fs), self.D(ft.detach())
        loss_d = 0.5 * (F.mse_loss(ls, torch.ones_like(ls)) + F.mse_loss(lt, torch.zeros_like(lt)))
        loss_d.backward()
        self.opt_d.step()
        self.opt_g.zero_grad(set_to_none=True)
        lg = self.D(ft)
        loss = F.mse_loss(lg, torch.ones_like(lg))
        self._run(self.Gp, xs)
        loss = loss + self.cfg.source_weight * (self.taps["Gp"] - fs).abs().mean() / (
            fs.std() + 1e-6)
        loss.backward()
        self.opt_g.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_params, self.params, 1.0 - self.cfg.ema_decay)


def time_steps(model, layer: int, src, tgt, cfg: AdaptConfig, n: int) -> tuple[float, float]:
    """Median engine and naive step times (alternating, after one warm-up step each).

    CPU time of this process (``time.process_time``, one torch thread): on a machine shared
    by other jobs, wall time measures the load as much as the step.
    """
    run_cfg = dataclasses.replace(cfg, steps=n + 2, eval_every=10**9)
    gen = iter_adapt(model, src, tgt, method="lmadda", layers=layer, config=run_cfg)

    def engine() -> float:
        t = time.process_time()
        for ev in gen:
            if isinstance(ev, Step):
                return time.process_time() - t
        raise RuntimeError("the engine stopped early")

    torch.manual_seed(cfg.seed)
    naive = NaiveStep(model, layer, cfg)
    ss = PatchSampler(ArrayDataset(src), cfg.patch_size, cfg.batch_size, seed=0)
    st = PatchSampler(ArrayDataset(tgt), cfg.patch_size, cfg.batch_size, seed=1)

    def naive_step() -> float:
        t = time.process_time()
        naive.step(to_tensor(ss.sample(), "cpu"), to_tensor(st.sample(), "cpu"))
        return time.process_time() - t

    engine()
    naive_step()
    te, tn = [], []
    for _ in range(n):
        te.append(engine())
        tn.append(naive_step())
    gen.close()
    return statistics.median(te), statistics.median(tn)


def cmd_speed(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    rows = []
    # the project's UNet as in benchmarks/speed.py, native and wrapped as any network
    torch.manual_seed(0)
    unet = UNetGenerator(num_downs=8, ngf=32, out_channels=2).eval()
    dom = make_domain(2, size=256, seed=0)["input"]
    dom_t = make_domain(2, size=256, seed=1, shift="overexpose")["input"]
    cfg = AdaptConfig(batch_size=2, patch_size=256, eval_patches=2, device="cpu", ndf=32)
    wrapped = TappedModel(copy.deepcopy(unet), input_size=256)
    for layer, name in ((2, "down.1"), (8, "down.7")):
        for label, model, tap in (("UNet (project class)", unet, layer),
                                  ("UNet as any network", wrapped, wrapped.layer_index(name))):
            te, tn = time_steps(model, tap, dom, dom_t, cfg, args.steps)
            rows.append((label, f"{layer} = {name}", te, tn))
            print(rows[-1], flush=True)
    # the test architectures at 128 px
    dom = make_domain(4, size=128, seed=0)["input"]
    dom_t = make_domain(4, size=128, seed=1, shift="brightfield")["input"]
    cfg = AdaptConfig(batch_size=4, patch_size=128, eval_patches=2, device="cpu", ndf=32)
    for arch in ("care", "resunet"):
        cls, kw, taps = ARCHS[arch]
        model = load_arch(f"{ZOO}:{cls}", kwargs=kw, input_size=128)
        for where, tap in taps.items():
            te, tn = time_steps(model, model.layer_index(tap), dom, dom_t, cfg, args.steps)
            rows.append((f"{cls} ({arch})", f"{where}: {tap}", te, tn))
            print(rows[-1], flush=True)
    lines = [
        "| network | tap | engine CPU s/step | naive CPU s/step | naive/engine |",
        "|---|---|---:|---:|---:|",
        *[f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.3f} | {r[3] / r[2]:.2f}x |" for r in rows],
        "",
        f"CPU time of the process (1 torch thread), median of {args.steps} steps after one "
        f"warm-up, engine and naive alternating; load average {load:.1f} at start (2 shared "
        "cores). Engine: `lmadda` on the adaptation loop (the forward passes stop at the "
        "tap). Naive: the same step with full forward passes, the tap taken by a hook.",
    ]
    (OUT / "speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def cmd_forward(args: argparse.Namespace) -> None:
    """Forward pass stopped at the tap vs the full forward pass (no gradients)."""
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, args.size, args.size)
    rows = []

    def timed(model, upto=None) -> float:
        t = time.process_time()
        model(x, upto=upto)
        return time.process_time() - t

    for arch, (cls, kw, taps) in ARCHS.items():
        model = load_arch(f"{ZOO}:{cls}", kwargs=kw, input_size=args.size).eval()
        with torch.no_grad():
            model(x)  # warm-up
            for where, tap in taps.items():
                layer = model.layer_index(tap)
                stop, full = [], []
                for _ in range(args.repeats):  # alternating: the load hits both alike
                    stop.append(timed(model, layer))
                    full.append(timed(model))
                info = model.describe_layers(args.size)[layer - 1]
                rows.append((f"{cls} ({arch})", f"{where}: `{tap}` ({layer}/"
                             f"{model.num_layers})", f"{info.channels}x{info.height}x"
                             f"{info.width}", statistics.median(stop), statistics.median(full)))
                print(rows[-1], flush=True)
    lines = [
        "| network | tap (index/taps) | tap shape | stopped at tap, CPU ms | full forward, "
        "CPU ms | full/stopped |",
        "|---|---|---|---:|---:|---:|",
        *[f"| {r[0]} | {r[1]} | {r[2]} | {1e3 * r[3]:.0f} | {1e3 * r[4]:.0f} | "
          f"{r[4] / r[3]:.2f}x |" for r in rows],
        "",
        f"Forward passes without gradients, batch {args.batch} of {args.size} px, CPU time of "
        f"the process (1 torch thread), median of {args.repeats} alternating repeats; load "
        f"average {load:.1f} at start (2 shared cores). Stopped: `TappedModel(x, upto=tap)`, "
        "which raises from the tap's hook.",
    ]
    (OUT / "forward.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# ------------------------------------------------------------------ quality
def _model_path(arch: str) -> Path:
    return OUT / f"{arch}_source.pt"


#: the control: the project's UNet (the bundled demo model) at early/middle/late layers,
#: under the same adaptation settings as the other networks
CONTROL_LAYERS = {"early": 2, "middle": 6, "late": 10}


def _source(arch: str):
    """The trained source model of ``arch`` and its taps {where: name}."""
    if arch == "demo":
        from napari_lmadda.models import load_model

        model = load_model("demo")
        return model, {w: model.layer_name(n) for w, n in CONTROL_LAYERS.items()}
    cls, _, taps = ARCHS[arch]
    return load_arch(f"{ZOO}:{cls}", weights=_model_path(arch)), taps


def _index(model, name: str) -> int:
    return next(i for i in range(1, model.num_layers + 1) if model.layer_name(i) == name)


def cmd_train(args: argparse.Namespace) -> None:
    from demo_recipe import demo_recipe_data  # noqa: PLC0415 - benchmarks/ is on sys.path
    from napari_lmadda.models import save_model
    from napari_lmadda.training import SourceTrainConfig, train_source
    from napari_lmadda.training.source import TARGET_RANGE

    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    cls, kw, _ = ARCHS[args.arch]
    torch.manual_seed(0)
    model = load_arch(f"{ZOO}:{cls}", kwargs=kw, input_size=128)
    pairs, (vx, vy) = demo_recipe_data()
    sampler = PatchSampler(pairs, 128, 8, seed=0, augment=True)
    meta = {"channel_names": ["DAPI", "CD29"], "input_percentiles": [1.0, 99.8],
            "target_range": list(TARGET_RANGE),
            "provenance": {"script": "benchmarks/any_model.py train", "arch": args.arch}}
    t0 = time.time()

    def show(ev):
        if getattr(ev, "is_best", None) is not None:
            print(f"step {ev.step:5d}  val Pearson {ev.criterion:.3f}  {time.time() - t0:.0f} s",
                  flush=True)

    res = train_source(sampler, (vx, vy), model=model, meta=meta, callback=show,
                       config=SourceTrainConfig(steps=args.steps,
                                                eval_every=max(1, args.steps // 4),
                                                device="cpu"))
    hist = {h["step"]: h for h in res.history}[res.best_step]
    res.model.meta["provenance"]["validation_pearson"] = dict(
        zip(["DAPI", "CD29"], hist["per_channel"]))
    save_model(res.model, _model_path(args.arch))
    (OUT / f"{args.arch}_source.json").write_text(json.dumps(
        {"arch": args.arch, "class": cls, "kwargs": kw, "steps": args.steps,
         "best_step": res.best_step, "val_pearson": hist["per_channel"],
         "params": sum(p.numel() for p in res.model.parameters()),
         "seconds": time.time() - t0}, indent=1))
    print(f"{args.arch}: best step {res.best_step}, val Pearson {hist['per_channel']} "
          f"({time.time() - t0:.0f} s)")


def _settings(args: argparse.Namespace) -> dict:
    return {"steps": args.steps, "batch": args.batch, "patch": args.patch,
            "eval_every": args.eval_every}


def cmd_run(args: argparse.Namespace) -> None:
    from napari_lmadda.evaluation.sweep import iter_sweep
    from napari_lmadda.jsonsafe import json_safe
    from quality import domains

    torch.set_num_threads(args.threads)
    model, taps = _source(args.arch)
    source, target, ev = domains("brightfield")
    runs = OUT / "runs.jsonl"
    settings = _settings(args)
    done = set()
    if runs.exists():
        for line in runs.read_text().splitlines():
            r = json.loads(line)
            if all(r.get(k) == v for k, v in settings.items()):
                done.add((r["arch"], r["method"], r["tap"], r["seed"]))
    cfg = AdaptConfig(steps=args.steps, batch_size=args.batch, patch_size=args.patch,
                      eval_every=args.eval_every, device="cpu")
    wanted = [w for w in args.taps.split(",") if w]
    for seed in [int(s) for s in args.seeds.split(",")]:
        methods = [m for m in args.methods.split(",")
                   if (args.arch, m, None, seed) not in done and not (m == "none" and seed)]
        layers = [_index(model, taps[w]) for w in wanted
                  if (args.arch, "lmadda", taps[w], seed) not in done]
        if not methods and not layers:
            continue
        runs_it = iter_sweep(model, source, target, layers=layers, methods=methods,
                             seeds=[seed], config=cfg, eval_set=ev)
        while True:
            # CPU time of this process: on the shared machine wall time measures the load
            t_cpu = time.process_time()
            run = next(runs_it, None)
            if run is None:
                break
            tap = model.layer_name(run.layer) if run.layer is not None else None
            row = {"arch": args.arch, "tap": tap,
                   "where": next((w for w, t in taps.items() if t == tap), None),
                   **run.to_dict(), **settings, "cpu_seconds": time.process_time() - t_cpu,
                   "load": os.getloadavg()[0]}
            with runs.open("a") as fh:
                fh.write(json.dumps(json_safe(row)) + "\n")
            print(f"{args.arch} {run.label} ({tap}) seed {seed}: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in run.pearson.items())
                  + f"  kept step {run.best_step}, {run.seconds:.0f} s wall, "
                  f"{row['cpu_seconds']:.0f} s CPU", flush=True)


def _upto(infos: dict, layer: int) -> int:
    """Parameters trained when matching ``layer``: a tap's own count, or a UNet's layers 1..l."""
    if hasattr(infos[layer], "params_upto"):
        return int(infos[layer].params_upto)
    return sum(int(infos[i].trainable_params) for i in infos if i <= layer)


def _fmt(vals: list[float]) -> str:
    if not vals:
        return "-"
    med = statistics.median(vals)
    return f"{med:.3f}" if len(vals) == 1 else f"{med:.3f} [{min(vals):.3f}, {max(vals):.3f}]"


def _budget(r: dict) -> tuple:
    return (r.get("steps"), r.get("batch"), r.get("patch"), r.get("eval_every"))


def _pixels(b: tuple) -> int:
    """Patch pixels seen per domain over a run: the budget's size."""
    return int(b[0] or 0) * int(b[1] or 0) * int(b[2] or 0) ** 2


def _table(rows: list[dict], arch: str) -> list[str]:
    """One network's table (none, AdaBN, LM-ADDA per tap) of the runs ``rows``."""
    if arch == "demo":
        model, taps = _source(arch)
        head = (f"**Control: the project's UNet** (the bundled demo model, "
                f"{sum(p.numel() for p in model.parameters()):,} parameters, "
                f"{model.num_layers} layers; same adaptation settings)")
    else:
        src = json.loads((OUT / f"{arch}_source.json").read_text())
        cls, kw, _ = ARCHS[arch]
        model, taps = _source(arch)
        head = (f"**{cls}** (`tests/arch_zoo.py`, {json.dumps(kw)}; {src['params']:,} "
                f"parameters, {model.num_layers} taps; trained {src['steps']} steps, "
                f"validation Pearson DAPI {src['val_pearson'][0]:.3f}, CD29 "
                f"{src['val_pearson'][1]:.3f})")
    lines = [
        head,
        "",
        "| method | tap | layer | trained parameters | seeds | Pearson DAPI | Pearson CD29 "
        "| kept step | CPU s |",
        "|---|---|---:|---:|---:|---|---|---|---:|",
    ]
    infos = {t.index: t for t in model.describe_layers(128)}
    where_label = {"early": "early", "early2": "early, 1/2 res.", "middle": "middle",
                   "late": "late"}
    order = [("none", None), ("adabn", None),
             *[("lmadda", taps[w]) for w in ("early", "early2", "middle", "late") if w in taps]]
    for method, tap in order:
        sel = [r for r in rows if r["arch"] == arch and r["method"] == method
               and r["tap"] == tap]
        if not sel:
            continue
        layer = _index(model, tap) if tap else None
        label = {"none": "no adaptation", "adabn": "AdaBN"}.get(method, "LM-ADDA")
        where = where_label[next((w for w, t in taps.items() if t == tap), "early")]
        lines.append(
            f"| {label} | {f'{where}: `{tap}`' if tap else '-'} | {layer or '-'} | "
            f"{f'{_upto(infos, layer):,}' if layer else '-'} | {len(sel)} | "
            f"{_fmt([r['pearson']['DAPI'] for r in sel])} | "
            f"{_fmt([r['pearson']['CD29'] for r in sel])} | "
            f"{statistics.median(r['best_step'] for r in sel):.0f} | "
            f"{statistics.median(r.get('cpu_seconds', math.nan) for r in sel):.0f} |")
    return [*lines, ""]


def cmd_report(args: argparse.Namespace) -> None:
    """One section per budget in ``runs.jsonl`` (smallest first), then speed tables."""
    rows = [json.loads(line) for line in (OUT / "runs.jsonl").read_text().splitlines()]
    budgets = sorted({_budget(r) for r in rows}, key=_pixels)
    full = _pixels((600, 8, 128, None))
    lines = []
    for b in budgets:
        sel = [r for r in rows if _budget(r) == b]
        share = Fraction(_pixels(b), full)
        per_step = Fraction(int(b[1]) * int(b[2]) ** 2, 8 * 128**2)
        what = ("the Quality protocol's budget" if share == 1 else
                f"{share} of the Quality protocol's patch pixels: {per_step} per step, "
                f"{Fraction(int(b[0]), 600)} of its steps")
        lines += [f"#### {b[0]} steps, batch {b[1]} of {b[2]} px ({what})", ""]
        for arch in (*ARCHS, "demo"):
            if any(r["arch"] == arch for r in sel) and (
                    arch == "demo" or (OUT / f"{arch}_source.json").exists()):
                lines += _table(sel, arch)
        lines += [f"Adaptation: {b[0]} steps, batch {b[1]}, {b[2]} px patches, label-free "
                  f"criterion every {b[3]} steps (the kept state); Pearson on the held-out "
                  "test fields with ground truth; median [min, max] over seeds; CPU s = CPU "
                  "time of the run (1 torch thread).", ""]
    text = "\n".join(lines)
    for extra in ("forward.md", "speed.md"):
        if (OUT / extra).exists():
            text += "\n" + (OUT / extra).read_text()
    (OUT / "any_model.md").write_text(text)
    print(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--steps", type=int, default=4)
    s.add_argument("--threads", type=int, default=1)
    f = sub.add_parser("forward")
    f.add_argument("--batch", type=int, default=4)
    f.add_argument("--size", type=int, default=128)
    f.add_argument("--repeats", type=int, default=9)
    f.add_argument("--threads", type=int, default=1)
    t = sub.add_parser("train")
    t.add_argument("--arch", choices=list(ARCHS), required=True)
    t.add_argument("--steps", type=int, default=800)
    t.add_argument("--threads", type=int, default=1)
    r = sub.add_parser("run")
    r.add_argument("--arch", choices=[*ARCHS, "demo"], required=True)
    r.add_argument("--seeds", default="0")
    r.add_argument("--taps", default="early,middle,late")
    r.add_argument("--methods", default="none,adabn")
    # 64 px patches, batch 4: an early tap of these networks is at full resolution, where
    # the layer discriminator costs most of a step (see the module docstring)
    r.add_argument("--steps", type=int, default=300)
    r.add_argument("--batch", type=int, default=4)
    r.add_argument("--patch", type=int, default=64)
    r.add_argument("--eval-every", type=int, default=50)
    r.add_argument("--threads", type=int, default=1)
    sub.add_parser("report")
    args = p.parse_args(argv)
    commands = {"speed": cmd_speed, "forward": cmd_forward, "train": cmd_train,
                "run": cmd_run, "report": cmd_report}
    commands[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
