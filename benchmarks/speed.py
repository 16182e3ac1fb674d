"""Speed and memory of the adaptation engine and of tiled prediction, on this machine.

Measures, in one run:

(a) the wall time of one LM-ADDA training step (sampling, discriminator update, G' update
    with the source-consistency term, EMA) at several layers of a pix2pix ``unet_256``-shaped
    model, for the engine (forward passes stop at layer l) and for a straightforward
    implementation that runs the full G and G' every step and takes layer l's activation with
    a forward hook; the ratio naive/engine is the speed-up of stopping early;
(b) the achieved GFLOP/s of those steps (FLOPs counted with
    ``torch.utils.flop_counter.FlopCounterMode``) as a fraction of a 2048x2048 float32
    matmul timed in the same run (what this CPU reaches on dense math);
(c) the peak memory of tiled prediction (``predict_image``) of a 4096x4096 image, measured
    in a fresh subprocess: numpy allocations (tracemalloc) and the peak resident set size
    (ru_maxrss) above the resident size just before the call (psutil), against the size of
    the input image and of the output array.

Prints a table and writes ``benchmarks/results/speed.md``. Not a test.

    python benchmarks/speed.py                      # defaults below (~5-10 min on 1 thread)
    python benchmarks/speed.py --layers 2,16 --steps 2 --mem-size 2048   # quicker
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from napari_lmadda.adapt.config import AdaptConfig
from napari_lmadda.adapt.engine import iter_adapt
from napari_lmadda.adapt.events import Step
from napari_lmadda.adapt.sampling import to_tensor
from napari_lmadda.data.datasets import ArrayDataset, PatchSampler
from napari_lmadda.data.synthetic import make_domain
from napari_lmadda.models import UNetGenerator
from napari_lmadda.models.discriminator import LayerDiscriminator

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------ the naive reference
class NaiveLMADDA:
    """LM-ADDA written the obvious way: full forward passes, layer l taken with a hook.

    Same losses, optimisers, discriminator and EMA as the engine; only the forward passes
    differ (they run to the output image, and every parameter of G' tracks gradients).
    """

    def __init__(self, model: UNetGenerator, layer: int, cfg: AdaptConfig, size: int) -> None:
        self.cfg = cfg
        self.G = copy.deepcopy(model).eval().requires_grad_(False)
        self.Gp = copy.deepcopy(model).eval().requires_grad_(True)
        self.params = [p for i in range(1, layer + 1) for p in self.Gp.block(i).parameters()]
        self.ema = copy.deepcopy(self.Gp).requires_grad_(False)
        self.ema_params = [p for i in range(1, layer + 1)
                           for p in self.ema.block(i).parameters()]
        self.taps: dict[str, torch.Tensor] = {}
        self.G.block(layer).register_forward_hook(lambda m, i, o: self.taps.__setitem__("G", o))
        self.Gp.block(layer).register_forward_hook(
            lambda m, i, o: self.taps.__setitem__("Gp", o))
        info = {i.index: i for i in model.describe_layers(size)}[layer]
        self.D = LayerDiscriminator(info.channels, min(info.height, info.width), ndf=cfg.ndf,
                                    spectral_norm=cfg.d_spectral_norm)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d,
                                      betas=(cfg.beta1, cfg.beta2))
        self.opt_g = torch.optim.Adam(self.params, lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))

    def step(self, xs: torch.Tensor, xt: torch.Tensor) -> float:
        with torch.no_grad():
            self.G(xs)
        fs = self.taps["G"]
        self.Gp(xt)
        ft = self.taps["Gp"]
        self.opt_d.zero_grad(set_to_none=True)
        ls, lt = self.D(fs), self.D(ft.detach())
        loss_d = 0.5 * (F.mse_loss(ls, torch.ones_like(ls)) + F.mse_loss(lt, torch.zeros_like(lt)))
        loss_d.backward()
        self.opt_d.step()
        self.opt_g.zero_grad(set_to_none=True)
        lg = self.D(ft)
        loss = F.mse_loss(lg, torch.ones_like(lg))
        self.Gp(xs)
        fsp = self.taps["Gp"]
        loss = loss + self.cfg.source_weight * (fsp - fs).abs().mean() / (fs.std() + 1e-6)
        loss.backward()
        self.opt_g.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_params, self.params, 1.0 - self.cfg.ema_decay)
        return loss_d.item()


# ------------------------------------------------------------------ measurements
def matmul_gflops(n: int = 2048, repeats: int = 7) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def compare_at_layer(model, src, tgt, layer, cfg, n_timed, warmup):
    """Median step times and FLOPs per step of the engine and of :class:`NaiveLMADDA`.

    The two alternate step by step, so a change in the machine's load (it is shared) hits
    both alike. The FLOPs of each are counted on one extra, untimed step.
    """
    total = warmup + n_timed + 1
    run_cfg = AdaptConfig(**{**cfg.to_dict(), "steps": total, "eval_every": 10**9,
                             "trainable": None})
    gen = iter_adapt(model, src, tgt, method="lmadda", layers=layer, config=run_cfg)

    def engine_step() -> float:
        """Run the generator to its next Step; the time from resume to yield."""
        t = time.perf_counter()
        for ev in gen:
            if isinstance(ev, Step):
                return time.perf_counter() - t
        raise RuntimeError("the engine stopped early")

    torch.manual_seed(cfg.seed)
    naive = NaiveLMADDA(model, layer, cfg, cfg.patch_size)
    ss = PatchSampler(ArrayDataset(src), cfg.patch_size, cfg.batch_size, seed=cfg.seed)
    st = PatchSampler(ArrayDataset(tgt), cfg.patch_size, cfg.batch_size, seed=cfg.seed + 1000)

    def naive_step() -> float:
        t = time.perf_counter()
        naive.step(to_tensor(ss.sample(), "cpu"), to_tensor(st.sample(), "cpu"))
        return time.perf_counter() - t

    t_eng, t_nai = [], []
    engine_step()  # step 1 (after the engine's set-up) and warm-up
    naive_step()
    for i in range(2, warmup + n_timed + 1):
        dt_engine, dt_naive = engine_step(), naive_step()
        if i > warmup:
            t_eng.append(dt_engine)
            t_nai.append(dt_naive)
    with FlopCounterMode(display=False) as fc:
        engine_step()
    f_eng = fc.get_total_flops()
    gen.close()
    with FlopCounterMode(display=False) as fc:
        naive_step()
    return statistics.median(t_eng), f_eng, statistics.median(t_nai), fc.get_total_flops()


_MEMORY_SNIPPET = textwrap.dedent("""
    import json, resource, sys, time, tracemalloc
    import numpy as np, psutil, torch
    torch.set_num_threads({threads})
    from napari_lmadda.models import UNetGenerator
    from napari_lmadda.inference.predict import predict_image
    torch.manual_seed(0)
    model = UNetGenerator(num_downs={num_downs}, ngf={ngf}, out_channels={out_channels}).eval()
    rng = np.random.default_rng(0)
    image = rng.random(({size}, {size}), dtype=np.float32)
    # warm up torch's allocator and kernels on one small tile first
    predict_image(model, image[:256, :256], tile=256, overlap=32)
    rss0 = psutil.Process().memory_info().rss  # current, not peak: growth above it
    tracemalloc.start()
    t = time.perf_counter()
    out = predict_image(model, image, tile={tile}, overlap={overlap}, batch_size={batch})
    seconds = time.perf_counter() - t
    _, numpy_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    json.dump({{"image_bytes": image.nbytes, "output_bytes": out.nbytes,
               "numpy_peak": numpy_peak, "rss_peak_growth": rss1 - rss0,
               "seconds": seconds, "shape": list(out.shape)}}, sys.stdout)
""")


def prediction_memory(args) -> dict:
    code = _MEMORY_SNIPPET.format(threads=args.threads, num_downs=args.num_downs,
                                  ngf=args.mem_ngf, out_channels=2, size=args.mem_size,
                                  tile=256, overlap=32, batch=4)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    return json.loads(proc.stdout)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    return (f"{cpu}; {os.cpu_count()} logical CPUs (shared with other processes; load "
            f"average {load[0]:.2f} at start); {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}; torch {torch.__version__} "
            f"({torch.get_num_threads()} thread(s)); numpy {np.__version__}")


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-downs", type=int, default=8)
    p.add_argument("--ngf", type=int, default=32)
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--layers", default="2,8,16")
    p.add_argument("--steps", type=int, default=4, help="timed steps per layer (median)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: the machine is shared; ratios are what matter)")
    p.add_argument("--mem-size", type=int, default=4096, help="side of the predicted image")
    p.add_argument("--mem-ngf", type=int, default=16,
                   help="ngf of the prediction model (memory is dominated by the arrays)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "speed.md")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    desc = machine()
    print(desc, flush=True)
    layers = [int(v) for v in args.layers.split(",")]
    torch.manual_seed(0)
    model = UNetGenerator(num_downs=args.num_downs, ngf=args.ngf, out_channels=2).eval()
    dom = make_domain(2, size=args.patch, seed=0)["input"]
    dom_t = make_domain(2, size=args.patch, seed=1, shift="overexpose")["input"]
    cfg = AdaptConfig(batch_size=args.batch, patch_size=args.patch, eval_patches=2,
                      device="cpu", ndf=32)
    peak_before = matmul_gflops()
    print(f"2048x2048 float32 matmul: {peak_before:.1f} GFLOP/s", flush=True)

    rows = []
    for layer in layers:
        t_eng, f_eng, t_nai, f_nai = compare_at_layer(model, dom, dom_t, layer, cfg,
                                                      args.steps, max(1, args.warmup))
        g_eng = f_eng / t_eng / 1e9
        rows.append((layer, t_eng, t_nai, t_nai / t_eng, f_eng / 1e9, f_nai / 1e9, g_eng))
        print(f"layer {layer:2d}: engine {t_eng:.3f} s ({f_eng / 1e9:.1f} GFLOP, "
              f"{g_eng:.1f} GFLOP/s)  naive {t_nai:.3f} s ({f_nai / 1e9:.1f} GFLOP)  "
              f"naive/engine {t_nai / t_eng:.2f}x", flush=True)

    peak_after = matmul_gflops()
    peak = max(peak_before, peak_after)
    print(f"2048x2048 float32 matmul again: {peak_after:.1f} GFLOP/s", flush=True)
    rows = [(*r[:7], r[6] / peak, r[5] / r[2] / peak) for r in rows]
    mem = prediction_memory(args)
    mib = 2**20
    print(f"prediction of {args.mem_size}^2: numpy peak {mem['numpy_peak'] / mib:.0f} MiB, "
          f"RSS peak growth {mem['rss_peak_growth'] / mib:.0f} MiB, in {mem['seconds']:.1f} s",
          flush=True)

    lines = [
        "# Speed and memory (benchmarks/speed.py)",
        "",
        f"Machine: {desc}.",
        "",
        f"Model: UNet num_downs={args.num_downs} (pix2pix unet_256 shape), ngf={args.ngf}, "
        f"1 -> 2 channels; steps of batch {args.batch} x {args.patch}x{args.patch} patches per "
        f"domain; AdaptConfig defaults otherwise (lsgan, spectral-norm D with ndf=32, "
        f"source-consistency term, EMA). Median of {args.steps} timed steps after "
        f"{max(1, args.warmup)} warm-up step(s), engine and naive steps alternating (the "
        "machine is shared). FLOPs counted with torch's FlopCounterMode "
        "(convolutions and matmuls, forward and backward).",
        "",
        f"Dense reference: 2048x2048 float32 matmul = **{peak:.1f} GFLOP/s** (the better of "
        f"{peak_before:.1f} before and {peak_after:.1f} after the training steps; median of "
        "7 products each).",
        "",
        "## (a, b) One LM-ADDA training step: engine vs. full forward passes with a hook",
        "",
        "| layer | engine s/step | naive s/step | naive/engine | engine GFLOP/step "
        "| naive GFLOP/step | engine GFLOP/s | engine / matmul | naive / matmul |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]:.3f} | {r[2]:.3f} | {r[3]:.2f}x | {r[4]:.1f} | "
                     f"{r[5]:.1f} | {r[6]:.1f} | {r[7]:.2f} | {r[8]:.2f} |")
    img_mib, out_mib = mem["image_bytes"] / mib, mem["output_bytes"] / mib
    lines += [
        "",
        f"## (c) Tiled prediction of a {args.mem_size}x{args.mem_size} float32 image",
        "",
        f"Model ngf={args.mem_ngf}, num_downs={args.num_downs}; tiles 256 px, overlap 32, "
        "4 tiles per batch; measured in a fresh subprocess after a warm-up tile.",
        "",
        "| quantity | MiB | x (image + output) |",
        "|---|---:|---:|",
        f"| input image (H, W) float32 | {img_mib:.0f} | |",
        f"| output (2, H, W) float32 | {out_mib:.0f} | |",
        f"| numpy peak during predict_image (tracemalloc) | {mem['numpy_peak'] / mib:.0f} | "
        f"{mem['numpy_peak'] / (mem['image_bytes'] + mem['output_bytes']):.2f} |",
        f"| peak RSS above the RSS before predict_image (ru_maxrss - rss) | "
        f"{mem['rss_peak_growth'] / mib:.0f} | "
        f"{mem['rss_peak_growth'] / (mem['image_bytes'] + mem['output_bytes']):.2f} |",
        "",
        f"Prediction time: {mem['seconds']:.1f} s.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print()
    print("\n".join(lines[lines.index("## (a, b) One LM-ADDA training step: engine vs. full "
                                      "forward passes with a hook"):]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
