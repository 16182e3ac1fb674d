"""Peak memory of the hostile-input cases of issue 14, under an address-space cap.

Each case builds a hostile file next to good ones and runs the command a user would run, in
a fresh process under ``ulimit -v`` (the cap), measured with ``/usr/bin/time -v`` (peak
resident memory, wall time, exit status). The last line the command printed on stderr shows
how it ended (a one-line message, or the last line of a traceback).

    python benchmarks/hostile_memory.py                      # this checkout's src/
    python benchmarks/hostile_memory.py --src /tmp/old/src   # another version, same cases
    python benchmarks/hostile_memory.py --cap-gib 6 --timeout 300 --cases reader,predict

Cases:

* ``reader``: the napari reader on a folder of 3 good 64x64 TIFFs and ``bomb.tif`` (3.3 MB,
  zlib-tiled, declaring 40000x40000 uint16: 3 GiB decoded, 6 GiB as float32 planes);
* ``predict``: ``lmadda predict`` of that folder (TIFF output);
* ``predict-zarr``: the same with ``--format ome-zarr`` (the bomb is then streamed band by
  band; it would take hours on a CPU, so the case is stopped by ``--timeout`` and reports
  the memory reached by then, and whether a temporary folder was left);
* ``adapt``: ``lmadda adapt`` with the bomb among the target images;
* ``model-zip``: ``lmadda predict --model bomb.pt``, a 4 MB zip model whose pickle inflates
  to 4 GiB;
* ``train-ngf``: ``lmadda train-source --ngf 100000000``;
* ``pages``: ``lmadda predict`` of a folder holding a TIFF of 100,000 pages of 8x8 pixels.

Numbers depend on the machine and its load (the project's machine: 2 shared cores, 24 GiB);
peak memory is what matters here, wall times are indicative only.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
CASES = ("reader", "predict", "predict-zarr", "adapt", "model-zip", "train-ngf", "pages")


def bomb_tiff(path: Path, side: int = 40000, tile: int = 1024) -> Path:
    """Pre-encoded zlib tiles of zeros: a few MB declaring ``side`` x ``side`` uint16."""
    encoded = zlib.compress(np.zeros((tile, tile), np.uint16).tobytes(), 9)
    n = (-(-side // tile)) ** 2
    tifffile.imwrite(path, iter([encoded] * n), shape=(side, side), dtype="uint16",
                     tile=(tile, tile), compression="zlib")
    return path


def good_images(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        tifffile.imwrite(folder / f"img{i}.tif", rng.integers(0, 4000, (64, 64), np.uint16))
    return folder


def zip_bomb_model(good: Path, path: Path, inflated: int = 4 * 2**30) -> Path:
    """A model zip whose data.pkl declares ``inflated`` bytes (deflated zeros after it)."""
    chunk = b"\0" * (64 * 2**20)
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(path, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if not item.filename.endswith("data.pkl"):
                zout.writestr(item, data)
                continue
            info = zipfile.ZipInfo(item.filename)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zout.open(info, "w", force_zip64=True) as fh:
                fh.write(data)
                left = inflated - len(data)
                while left > 0:
                    fh.write(chunk[: min(left, len(chunk))])
                    left -= len(chunk)
    return path


def tiny_model(path: Path, src: Path) -> Path:
    code = ("import sys, torch; from napari_lmadda.models import UNetGenerator, save_model; "
            "torch.manual_seed(0); m = UNetGenerator(num_downs=3, ngf=4, out_channels=2); "
            "m.meta = {'channel_names': ['DAPI', 'CD29']}; save_model(m, sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True,
                   env={**os.environ, "PYTHONPATH": str(src)})
    return path


def build(work: Path, src: Path, cases: list[str]) -> dict[str, list[str]]:
    """Make the files and return each case's command line (after ``python``)."""
    model = tiny_model(work / "tiny.pt", src)
    folder = good_images(work / "imgs")
    bomb_tiff(folder / "bomb.tif")
    lm = ["-m", "napari_lmadda"]
    cmds: dict[str, list[str]] = {}
    if "reader" in cases:
        cmds["reader"] = ["-c", (
            "import sys; import napari_lmadda._reader as r; "
            "r._notify = lambda kind, msg: print(kind + ': ' + msg, file=sys.stderr); "
            "layers = r.read_folder(sys.argv[1]); "
            "print('layers', [getattr(x[0], 'shape', None) for x in layers])"), str(folder)]
    if "predict" in cases:
        cmds["predict"] = [*lm, "predict", "--model", str(model), "--images", str(folder),
                           "--out", str(work / "out_tif"), "--workers", "2"]
    if "predict-zarr" in cases:
        cmds["predict-zarr"] = [*lm, "predict", "--model", str(model), "--images",
                                str(folder), "--out", str(work / "out_zarr"), "--format",
                                "ome-zarr", "--workers", "2"]
    if "adapt" in cases:
        src_imgs = good_images(work / "src")
        cmds["adapt"] = [*lm, "adapt", "--model", str(model), "--source", str(src_imgs),
                         "--target", str(folder), "--method", "lmadda", "--layer", "2",
                         "--steps", "2", "--eval-every", "1", "--batch", "2", "--patch", "32",
                         "--out", str(work / "adapted.pt")]
    if "model-zip" in cases:
        zip_bomb_model(model, work / "bomb.pt")
        cmds["model-zip"] = [*lm, "predict", "--model", str(work / "bomb.pt"), "--images",
                             str(work / "src" if (work / "src").exists() else folder),
                             "--out", str(work / "out_zip")]
    if "train-ngf" in cases:
        good_images(work / "tin")
        good_images(work / "tdapi")
        cmds["train-ngf"] = [*lm, "train-source", "--inputs", str(work / "tin"), "--targets",
                             str(work / "tdapi"), "--out", str(work / "g.pt"), "--ngf",
                             "100000000", "--num-downs", "3", "--patch", "32", "--steps", "1"]
    if "pages" in cases:
        pages = good_images(work / "pages", 1)
        tifffile.imwrite(pages / "long.tif", np.zeros((100_000, 8, 8), np.uint8),
                         metadata=None)
        cmds["pages"] = [*lm, "predict", "--model", str(model), "--images", str(pages),
                         "--out", str(work / "out_pages")]
    return cmds


def measure(cmd: list[str], src: Path, cap_gib: float, timeout: float) -> dict:
    cap_kib = int(cap_gib * 2**20)
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1",
           "LMADDA_DEVICE": "cpu"}
    env.pop("LMADDA_MEMORY_BUDGET", None)
    quoted = " ".join(shlex.quote(c) for c in [sys.executable, *cmd])
    # time measures timeout's child (the command) when timeout stops it
    shell = (f"ulimit -v {cap_kib}; exec /usr/bin/time -v timeout -s TERM {timeout} "
             f"{quoted}")
    r = subprocess.run(["bash", "-c", shell], env=env, capture_output=True, text=True)
    err = r.stderr
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", err)
    status = re.search(r"Exit status: (\d+)", err)
    mine = [ln for ln in err.split("\tCommand being timed")[0].strip().splitlines()
            if not ln.startswith(("Command exited with", "Command terminated by"))]
    last = mine[-1] if mine else ""
    traceback = "Traceback (most recent call last)" in err
    return {
        "peak_mib": int(rss.group(1)) / 1024 if rss else float("nan"),
        "wall": wall.group(1) if wall else "?",
        "exit": int(status.group(1)) if status else ("killed" if r.returncode else 0),
        "traceback": traceback,
        "last": last[:160],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the src/ folder to measure")
    ap.add_argument("--cap-gib", type=float, default=6.0, help="ulimit -v in GiB (6)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per case (300)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated cases")
    args = ap.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    work = Path(tempfile.mkdtemp(prefix="lmadda-hostile-"))
    try:
        cmds = build(work, args.src.resolve(), cases)
        print(f"src: {args.src}  cap: ulimit -v {args.cap_gib:g} GiB  timeout: {args.timeout:g} s")
        print("| case | peak RSS (MiB) | wall | exit | traceback | how it ended |")
        print("|---|---|---|---|---|---|")
        for case in cases:
            res = measure(cmds[case], args.src.resolve(), args.cap_gib, args.timeout)
            left = ""
            if case == "predict-zarr":
                tmp = [p.name for p in (work / "out_zarr").glob(".*.tmp")] if (
                    work / "out_zarr").exists() else []
                left = f" [temporary folders left: {len(tmp)}]"
            print(f"| {case} | {res['peak_mib']:.0f} | {res['wall']} | {res['exit']} | "
                  f"{'yes' if res['traceback'] else 'no'} | {res['last']}{left} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
