"""Scaling of folder prediction with dask (``lmadda predict``), on this machine.

Measures, in one run, with the bundled demo model (UNet num_downs=6, ngf=16, 2 stains):

(a) throughput (images/s) of predicting a folder of 256x256 synthetic phase-contrast images
    against the number of dask workers: the local threaded scheduler with 1 and 2 threads,
    and a ``dask.distributed`` LocalCluster of 1 and 2 single-thread worker processes, next
    to the sequential ``predict_folder`` (no dask). torch uses one thread per worker.
(b) memory as the folder grows (100 -> 300 -> 1000 images of 128x128): peak numpy
    allocations (tracemalloc) and peak resident set size above the resident size before the
    call (ru_maxrss - psutil rss), each size in a fresh subprocess.
(c) one large image (default 4096x4096 uint16 TIFF, tiled): ``predict_image`` in memory
    against the dask path writing OME-Zarr chunk by chunk, peak memory as in (b).
(d) mixed precision: seconds per 256x256 image and Pearson against the synthetic truth for
    float32, bf16 and fp16 autocast, and the lowest Pearson between the bf16/fp16 and
    float32 predictions.

The machine has 2 logical CPUs shared with other processes, so absolute times are noisy and
the 2-worker speed-up is bounded by what the other processes leave. Prints the tables and
writes ``benchmarks/results/scaling_predict.md``. Not a test.

    python benchmarks/scaling_predict.py            # ~5-10 min
    python benchmarks/scaling_predict.py --quick    # smaller folders and image, ~2 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _make_folder(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` synthetic phase-contrast images (a few distinct fields, cycled) as uint16 TIFFs."""
    import tifffile

    from napari_lmadda.data.synthetic import make_domain

    folder.mkdir(parents=True, exist_ok=True)
    fields = make_domain(min(n, 16), modality="phase", size=size, seed=seed)["input"]
    for i in range(n):
        img = fields[i % len(fields)]
        img = (np.clip(img, 0, None) / max(float(img.max()), 1e-6) * 60000).astype(np.uint16)
        tifffile.imwrite(folder / f"img_{i:05d}.tif", img)
    return folder


# ------------------------------------------------------------------ child processes
def _child(spec: dict) -> dict:
    """Run one measured prediction in this (fresh) process and return the numbers."""
    import resource
    import tracemalloc

    import psutil
    import torch

    torch.set_num_threads(1)
    from napari_lmadda.inference.predict import predict_image
    from napari_lmadda.inference.predict_dask import predict_folder_dask
    from napari_lmadda.models.checkpoint import load_model

    model = load_model("demo", device="cpu")
    # warm up (imports, oneDNN kernels) before the baseline
    predict_image(model, np.zeros((128, 128), np.float32), tile=128)
    import dask.array  # noqa: F401
    import zarr  # noqa: F401

    rss0 = psutil.Process().memory_info().rss
    tracemalloc.start()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec["what"] == "folder":
            report = predict_folder_dask(model, spec["images"], spec["out"], workers=2,
                                         overwrite=True)
            assert not report.skipped, report.summary()
        elif spec["what"] == "image":
            import tifffile

            img = tifffile.imread(spec["images"])
            y = predict_image(model, img, tile=256, overlap=32, batch_size=4)
            assert y.shape[1:] == img.shape
            del img, y
        else:  # the large image with dask into OME-Zarr
            report = predict_folder_dask(model, spec["images"], spec["out"], workers=2,
                                         out_format="ome-zarr", overwrite=True, tile=256,
                                         overlap=32, batch_size=4, chunk=1024)
            assert len(report.written) == 1, report.summary()
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"seconds": seconds, "tracemalloc_mib": peak / 2**20,
            "rss_above_mib": max(0, maxrss - rss0) / 2**20}


def _run_child(spec: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "_child", json.dumps(spec)], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ (a) throughput
def throughput(tmp: Path, n: int, size: int) -> list[dict]:
    import torch

    from napari_lmadda.inference.predict import predict_folder
    from napari_lmadda.inference.predict_dask import predict_folder_dask
    from napari_lmadda.models.checkpoint import load_model

    torch.set_num_threads(1)
    images = _make_folder(tmp / "throughput", n, size)
    model = load_model("demo", device="cpu")
    rows = []

    def timed(label: str, workers: int, fn) -> None:
        fn(tmp / "warm")  # warm-up: imports, kernels, cluster start
        t0 = time.perf_counter()
        report = fn(tmp / "out")
        dt = time.perf_counter() - t0
        assert len(report.written) == n, report.summary()
        rows.append({"how": label, "workers": workers, "seconds": dt, "images_per_s": n / dt})
        print(f"  {label:<42} {workers} worker(s): {n / dt:6.2f} images/s", flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timed("predict_folder (sequential, no dask)", 1,
              lambda o: predict_folder(model, images, o, overwrite=True))
        for w in (1, 2):
            timed("dask threaded scheduler", w,
                  lambda o, w=w: predict_folder_dask(model, images, o, workers=w,
                                                     overwrite=True))
        from distributed import Client, LocalCluster

        for w in (1, 2):
            cluster = LocalCluster(n_workers=w, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=50)
            client = Client(cluster)
            client.run(lambda: __import__("torch").set_num_threads(1))
            try:
                timed("dask.distributed LocalCluster (processes)", w,
                      lambda o, c=client: predict_folder_dask(model, images, o, scheduler=c,
                                                              overwrite=True))
            finally:
                client.close()
                cluster.close()
    return rows


# ------------------------------------------------------------------ (d) mixed precision
def amp_table(n: int, size: int) -> list[dict]:
    import torch

    from napari_lmadda.data.synthetic import make_domain
    from napari_lmadda.evaluation.metrics import pearson
    from napari_lmadda.inference.predict import predict_image
    from napari_lmadda.models.checkpoint import load_model

    torch.set_num_threads(1)
    model = load_model("demo", device="cpu")
    dom = make_domain(n, modality="phase", size=size, seed=2)
    preds, rows = {}, []
    for amp in ("off", "bf16", "fp16"):
        predict_image(model, dom["input"][0], amp=amp)  # warm-up
        t0 = time.perf_counter()
        preds[amp] = np.stack([predict_image(model, x, amp=amp) for x in dom["input"]])
        dt = (time.perf_counter() - t0) / n
        p = preds[amp]
        rows.append({
            "amp": amp,
            "s_per_image": dt,
            "pearson_dapi": float(np.mean([pearson(p[i, 0], dom["dapi"][i]) for i in range(n)])),
            "pearson_cd29": float(np.mean([pearson(p[i, 1], dom["cd29"][i]) for i in range(n)])),
            "min_pearson_vs_fp32": float(min(pearson(p[i, c], preds["off"][i, c])
                                             for i in range(n) for c in range(2))),
            "max_abs_vs_fp32": float(np.abs(p - preds["off"]).max()),
        })
        print(f"  amp {amp}: {rows[-1]}", flush=True)
    return rows


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        print(json.dumps(_child(json.loads(argv[1]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller folders and large image")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "scaling_predict.md")
    args = ap.parse_args(argv)
    n_tp = 24 if args.quick else 96
    sizes = (50, 100, 200) if args.quick else (100, 300, 1000)
    big = 2048 if args.quick else 4096
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    import dask
    import distributed
    import torch
    import zarr

    machine = (f"{platform.processor() or platform.machine()}; {os.cpu_count()} logical CPUs "
               f"(shared with other processes; load average {load:.2f} at start); Python "
               f"{platform.python_version()}; torch {torch.__version__} (1 thread per worker); "
               f"dask {dask.__version__}, distributed {distributed.__version__}, "
               f"zarr {zarr.__version__}")
    print(machine, flush=True)
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        print(f"(a) throughput, {n_tp} images of 256x256", flush=True)
        tp = throughput(tmp, n_tp, 256)
        print("(b) memory vs folder size, 128x128 images", flush=True)
        mem = []
        for n in sizes:
            folder = _make_folder(tmp / f"mem{n}", n, 128)
            r = _run_child({"what": "folder", "images": str(folder), "out": str(tmp / f"o{n}")})
            mem.append({"images": n, **r})
            print(f"  {n} images: {r}", flush=True)
        print(f"(c) one {big}x{big} image", flush=True)
        import tifffile

        from napari_lmadda.data.synthetic import make_domain

        field = make_domain(1, modality="phase", size=512, seed=3)["input"][0]
        img = np.tile(field, (big // 512, big // 512))
        img = (np.clip(img, 0, None) / max(float(img.max()), 1e-6) * 60000).astype(np.uint16)
        tifffile.imwrite(tmp / "big.tif", img, tile=(256, 256))
        del img
        large = []
        for what, label in (("image", "predict_image, in memory"),
                            ("zarr", "dask, OME-Zarr chunk by chunk")):
            r = _run_child({"what": what, "images": str(tmp / "big.tif"),
                            "out": str(tmp / "bigout")})
            large.append({"how": label, **r})
            print(f"  {label}: {r}", flush=True)
    print("(d) mixed precision, 8 images of 256x256", flush=True)
    amp = amp_table(8, 256)
    text = _markdown(machine, tp, n_tp, mem, large, big, amp)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    (args.out.with_suffix(".json")).write_text(json.dumps(
        {"machine": machine, "throughput": tp, "memory": mem, "large": large, "amp": amp},
        indent=1))
    print(text)
    return 0


def _markdown(machine, tp, n_tp, mem, large, big, amp) -> str:
    base = next(r["images_per_s"] for r in tp if r["how"].startswith("dask threaded")
                and r["workers"] == 1)
    lines = [
        "# Scaling of folder prediction (benchmarks/scaling_predict.py)",
        "",
        f"Machine: {machine}. Model: the bundled demo model (UNet num_downs=6, ngf=16, "
        "1 -> 2 stains), tiles 256 px, overlap 32. Only 2 CPU cores, shared with other "
        "processes: the 2-worker numbers are bounded by what those leave, and times are noisy.",
        "",
        f"## (a) Throughput vs dask workers ({n_tp} images of 256x256)",
        "",
        "| how | workers | seconds | images/s | vs dask 1 worker |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in tp:
        lines.append(f"| {r['how']} | {r['workers']} | {r['seconds']:.1f} | "
                     f"{r['images_per_s']:.2f} | {r['images_per_s'] / base:.2f}x |")
    lines += [
        "",
        "## (b) Memory as the folder grows (128x128 images, dask threaded scheduler, 2 threads)",
        "",
        "Each size in a fresh process; peaks above the process's state after loading the model.",
        "",
        "| images | seconds | numpy peak (tracemalloc) MiB | peak RSS above start MiB |",
        "|---:|---:|---:|---:|",
    ]
    for r in mem:
        lines.append(f"| {r['images']} | {r['seconds']:.1f} | {r['tracemalloc_mib']:.1f} | "
                     f"{r['rss_above_mib']:.0f} |")
    px = big * big
    lines += [
        "",
        f"## (c) One {big}x{big} uint16 image ({px * 2 / 2**20:.0f} MiB; its 2-stain float32 "
        f"prediction is {px * 8 / 2**20:.0f} MiB)",
        "",
        "| how | seconds | numpy peak (tracemalloc) MiB | peak RSS above start MiB |",
        "|---|---:|---:|---:|",
    ]
    for r in large:
        lines.append(f"| {r['how']} | {r['seconds']:.1f} | {r['tracemalloc_mib']:.0f} | "
                     f"{r['rss_above_mib']:.0f} |")
    lines += [
        "",
        "## (d) Mixed precision (8 synthetic phase-contrast fields, 256x256, seed 2)",
        "",
        "| amp | s/image | Pearson DAPI | Pearson CD29 | min Pearson vs float32 | "
        "max abs diff vs float32 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in amp:
        lines.append(f"| {r['amp']} | {r['s_per_image']:.3f} | {r['pearson_dapi']:.5f} | "
                     f"{r['pearson_cd29']:.5f} | {r['min_pearson_vs_fp32']:.6f} | "
                     f"{r['max_abs_vs_fp32']:.2g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
