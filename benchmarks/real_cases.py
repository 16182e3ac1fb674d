"""Real-data benchmark cases: folders of 16-bit files with a real gap and an oracle.

Each case is a source microscope with labelled images and a new microscope whose images are
split three ways, disjoint: **adaptation** images (unlabeled: what a user has), **oracle**
images (labelled: the ceiling, a model trained on the new microscope itself) and **test**
images (labelled: scoring only). Everything is written as files a microscope (or a labelling
tool) would write: inputs as uint16 camera counts with an offset, targets as uint16 counts
(stains) or uint8 masks (membranes), so the product's own reading and normalisation are
exercised, not float arrays in [0, 1].

Data sets (``../shared/data``, licenses in its README):

``em``
    ssTEM membranes. Source: ISBI 2012 (30 labelled 512 px sections). New microscope:
    Drosophila VNC stack1 (20 sections of 1024 px, another lab and preparation; a real
    shift, no shift applied): sections 0-9 adaptation, 10-14 oracle, 15-19 test.
``allen_<shift>``
    Transmitted light -> DNA (Allen chunk, 32 z-slices of 128 px): z 0-13 source, 14-19
    adaptation, 20-25 oracle, 26-31 test, with the shift applied to the new microscope.
``bpae_<shift>``
    Actin -> nuclei (BPAE field, 680 x 1100 px, fluorescence in camera counts) cut into
    128 px tiles by column bands: columns 0-3 source (20 tiles), 4-5 adaptation, 6 oracle,
    7 test, with the shift applied to the new microscope.

Shifts (:data:`SHIFTS`): ``exposure`` (2x longer exposure, clipped at the 16-bit full scale),
``defocus`` (Gaussian blur, sigma 2 px), ``scale`` (2x magnification; the truth is zoomed
too), ``noise`` (20x less light: Poisson shot noise plus 5 counts of read noise). Inputs are
mapped so that the source set's 99.9th percentile sits at 50,000 counts above an offset of
100 (a well-exposed 16-bit camera); the new microscope's counts come from the same map, then
the shift.

    from real_cases import write_case
    paths = write_case("bpae_defocus", "/tmp/cases")   # -> CasePaths (folders, case.json)
    python benchmarks/real_cases.py --out /tmp/cases   # every case whose data is present
    python benchmarks/real_cases.py --baselines --cases allen_exposure   # none, AdaBN
    python benchmarks/real_cases.py --report   # the auto table (docs/benchmarks.md, (c))
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "results" / "real_cases"
SHIFTS = ("exposure", "defocus", "scale", "noise")
DATASETS = ("em", "allen", "bpae")
OFFSET, BRIGHT, FULL = 100.0, 50000.0, 65535.0
CASES: tuple[str, ...] = ("em", *(f"allen_{s}" for s in SHIFTS),
                          *(f"bpae_{s}" for s in SHIFTS))
_NEEDS = {
    "em": ["isbi2012_em_membranes/train/image", "isbi2012_em_membranes/train/label",
           "drosophila_vnc_sstem/stack1/raw", "drosophila_vnc_sstem/stack1/membranes"],
    "allen": ["allen_fnet_3d_chunk/transmitted_light.tif", "allen_fnet_3d_chunk/dna_target.tif"],
    "bpae": ["bian_notebooks_multichannel/data/BPAE_actin.tif",
             "bian_notebooks_multichannel/data/BPAE_nuclei.tif"],
}


@dataclass(frozen=True)
class CasePaths:
    """The folders of a written case (inputs and targets paired by file name)."""

    root: Path
    source_input: Path
    source_target: Path
    adapt_input: Path
    oracle_input: Path
    oracle_target: Path
    test_input: Path
    test_target: Path
    info: Path

    @classmethod
    def under(cls, root: Path) -> CasePaths:
        return cls(root, root / "source/input", root / "source/target", root / "adapt/input",
                   root / "oracle/input", root / "oracle/target", root / "test/input",
                   root / "test/target", root / "case.json")


def dataset_of(case: str) -> str:
    """``allen_defocus`` -> ``allen``."""
    return case.split("_", 1)[0]


def shift_of(case: str) -> str | None:
    return case.split("_", 1)[1] if "_" in case else None


def missing(case: str, data: Path = DATA) -> str | None:
    """Why a case cannot be built (a missing file), or None."""
    if case not in CASES:
        return f"unknown case {case!r}; cases: {', '.join(CASES)}"
    for rel in _NEEDS[dataset_of(case)]:
        if not (data / rel).exists():
            return f"'{data / rel}' not found"
    return None


# ------------------------------------------------------------------ raw splits
def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def _numbered(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern), key=lambda p: int("".join(c for c in p.stem
                                                                 if c.isdigit()) or 0))


def _splits(dataset: str, data: Path) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    """``{"source"|"adapt"|"oracle"|"test": (inputs, truths)}`` as float arrays."""
    import tifffile

    if dataset == "em":
        isbi = data / "isbi2012_em_membranes/train"
        x = [_png(p).astype(np.float32) for p in _numbered(isbi / "image", "*.png")]
        y = [(_png(p) < 128).astype(np.float32) for p in _numbered(isbi / "label", "*.png")]
        vnc = data / "drosophila_vnc_sstem/stack1"
        raw = [tifffile.imread(p).astype(np.float32) for p in sorted((vnc / "raw").glob("*.tif"))]
        mem = [(_png(p) > 0).astype(np.float32) for p in sorted((vnc / "membranes").glob("*.png"))]
        return {"source": (x, y), "adapt": (raw[:10], mem[:10]),
                "oracle": (raw[10:15], mem[10:15]), "test": (raw[15:], mem[15:])}
    if dataset == "allen":
        d = data / "allen_fnet_3d_chunk"
        tl = tifffile.imread(d / "transmitted_light.tif").astype(np.float32)
        dna = tifffile.imread(d / "dna_target.tif").astype(np.float32)
        cut = {"source": (0, 14), "adapt": (14, 20), "oracle": (20, 26), "test": (26, 32)}
        return {k: (list(tl[a:b]), list(dna[a:b])) for k, (a, b) in cut.items()}
    d = data / "bian_notebooks_multichannel/data"
    actin = tifffile.imread(d / "BPAE_actin.tif").astype(np.float32)
    nuclei = tifffile.imread(d / "BPAE_nuclei.tif").astype(np.float32)
    t = 128
    bands = {"source": range(0, 4), "adapt": range(4, 6), "oracle": range(6, 7),
             "test": range(7, 8)}
    out = {}
    for k, cols in bands.items():
        tiles = [(r * t, c * t) for c in cols for r in range(actin.shape[0] // t)]
        out[k] = ([actin[r:r + t, c:c + t] for r, c in tiles],
                  [nuclei[r:r + t, c:c + t] for r, c in tiles])
    return out


# ------------------------------------------------------------------ microscope model
def apply_shift(counts: np.ndarray, truth: np.ndarray, shift: str | None,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A new microscope's image (float counts) and the truth it corresponds to."""
    from scipy import ndimage as ndi

    if shift is None:
        return counts, truth
    if shift == "exposure":
        return OFFSET + 2.0 * (counts - OFFSET), truth  # clipped at full scale when written
    if shift == "defocus":
        return ndi.gaussian_filter(counts, 2.0, mode="reflect"), truth
    if shift == "scale":
        from napari_lmadda.data.synthetic import rescale

        return rescale(counts, 2.0), rescale(truth, 2.0)
    if shift == "noise":
        signal = np.clip(counts - OFFSET, 0, None) / 20.0
        return OFFSET + rng.poisson(signal) + rng.normal(0.0, 5.0, counts.shape), truth
    raise ValueError(f"unknown shift {shift!r}")


def _counts_map(images: list[np.ndarray]) -> tuple[float, float]:
    """Offset and gain taking the source set's 0.1-99.9 % range to [OFFSET, OFFSET + BRIGHT]."""
    pooled = np.concatenate([im.ravel() for im in images])
    lo, hi = np.percentile(pooled, [0.1, 99.9])
    return float(lo), float(BRIGHT / max(hi - lo, 1e-12))


def _write_u16(path: Path, img: np.ndarray) -> None:
    import tifffile

    tifffile.imwrite(path, np.clip(np.round(img), 0, FULL).astype(np.uint16))


def write_case(case: str, root: str | os.PathLike, *, data: str | os.PathLike = DATA,
               seed: int = 0, overwrite: bool = False) -> CasePaths:
    """Write one case's folders under ``root/<case>`` and return their paths.

    Written into a temporary folder first and renamed, so an interrupted call leaves no
    half-written case. An existing complete case is reused unless ``overwrite``.

    Parameters
    ----------
    case : str
        One of :data:`CASES`.
    root : path-like
        Where to put the case folder.
    data : path-like
        The shared data folder.
    seed : int
        Seed of the noise shift.

    Raises
    ------
    FileNotFoundError
        The case's data is not there.
    """
    why = missing(case, Path(data))
    if why is not None:
        raise FileNotFoundError(why)
    dest = Path(root) / case
    paths = CasePaths.under(dest)
    if paths.info.exists() and not overwrite:
        return paths
    dataset, shift = dataset_of(case), shift_of(case)
    split = _splits(dataset, Path(data))
    rng = np.random.default_rng(seed)
    Path(root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{case}-", dir=root))
    tpaths = CasePaths.under(tmp)
    lo, gain = _counts_map(split["source"][0])
    t_lo, t_gain = _counts_map(split["source"][1])
    counts: dict[str, int] = {}
    for part, (xs, ys) in split.items():
        folders = {"source": (tpaths.source_input, tpaths.source_target),
                   "adapt": (tpaths.adapt_input, None),
                   "oracle": (tpaths.oracle_input, tpaths.oracle_target),
                   "test": (tpaths.test_input, tpaths.test_target)}[part]
        for f in folders:
            if f is not None:
                f.mkdir(parents=True, exist_ok=True)
        for i, (x, y) in enumerate(zip(xs, ys)):
            c = OFFSET + (x - lo) * gain
            if part != "source":
                c, y = apply_shift(c, y, shift, rng)
            name = f"{part}_{i:03d}.tif"
            _write_u16(folders[0] / name, c)
            if folders[1] is not None:
                if dataset == "em":  # a membrane mask as labelling tools write it
                    import tifffile

                    tifffile.imwrite(folders[1] / name, (np.asarray(y) > 0.5).astype(np.uint8)
                                     * 255)
                else:  # a stain in camera counts
                    _write_u16(folders[1] / name, 200.0 + (y - t_lo) * t_gain * 0.4)
        counts[part] = len(xs)
    info = {"case": case, "dataset": dataset, "shift": shift, "images": counts,
            "inputs": "uint16 counts, source 0.1-99.9 % -> 100..50100",
            "targets": "uint8 mask 0/255" if dataset == "em" else "uint16 counts",
            "metric": "dice" if dataset == "em" else "pearson", "seed": seed,
            "data": str(data)}
    tpaths.info.write_text(json.dumps(info, indent=1) + "\n")
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return paths


def read_case(paths: CasePaths) -> dict:
    """The case's images as arrays: source/adapt/test inputs and test truths (float32)."""
    import tifffile

    def load(folder: Path) -> list[np.ndarray]:
        return [tifffile.imread(p).astype(np.float32) for p in sorted(folder.glob("*.tif"))]

    return {"source": load(paths.source_input), "source_target": load(paths.source_target),
            "adapt": load(paths.adapt_input), "test": load(paths.test_input),
            "test_target": load(paths.test_target),
            "info": json.loads(paths.info.read_text())}


# ------------------------------------------------------------------ benchmark glue
def source_model_path(case: str, source: str, out: Path = OUT) -> Path:
    """Source model of a case's data set (shared by its shifts): ``plain`` or ``robust``."""
    return out / "models" / f"{dataset_of(case)}_{source}.pt"


def oracle_model_path(case: str, out: Path = OUT) -> Path:
    return out / "models" / f"oracle_{case}.pt"


def benchmark_case(case: str, out: Path = OUT) -> dict:
    """What ``benchmarks/augment.py`` needs: unlabeled images, an EvalSet, sizes."""
    from napari_lmadda.evaluation.sweep import EvalSet

    paths = write_case(case, out / "cases")
    d = read_case(paths)
    name = "membrane" if d["info"]["dataset"] == "em" else "stain"
    ev = EvalSet(d["test"], [t[None] for t in d["test_target"]],
                 [f"test{i}" for i in range(len(d["test"]))], [name])
    patch = 128 if d["info"]["dataset"] == "em" else 64
    return {"source": d["source"], "target": d["adapt"], "eval": ev, "patch": patch,
            "steps": 400, "key_channel": name}


def run_baselines(case: str, seeds: tuple[int, ...] = (0, 1, 2), out: Path = OUT) -> None:
    """No adaptation (plain and augmented source) and AdaBN (plain, per seed) on a case.

    ``benchmarks/augment.py``'s own runs (same code, 400 steps, same patches), appended to
    ``out/baselines/runs.jsonl`` for the cases that benchmark did not run; runs already
    there are skipped.
    """
    import augment  # noqa: PLC0415 - benchmarks/ is on sys.path when run as a script

    d = benchmark_case(case, out)
    dest = out / "baselines"
    dest.mkdir(parents=True, exist_ok=True)
    runs = [("plain", "none", 0), ("robust", "none", 0),
            *(("plain", "adabn", s) for s in seeds)]
    for source, method, seed in runs:
        augment.run_one(dest, f"real:{case}", source, method, None, seed, d)


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _first(scores: dict) -> float:
    return float(scores.get("pearson", next(iter(scores.values()))))


def report(out: Path = OUT, results: Path = ROOT / "benchmarks" / "results") -> str:
    """Table (c) of ``docs/benchmarks.md`` for the real cases, from the logged runs.

    none / AdaBN / augmented source: ``benchmarks/augment.py``'s runs (its ``runs.jsonl``,
    then ``out/baselines``); auto: ``benchmarks/auto_bench.py``'s lines for ``real:`` cases
    (``auto_runs.jsonl`` and ``auto_runs_real.jsonl``); best LM-ADDA by labels: per seed, the
    LM-ADDA checkpoint auto evaluated (step > 0) with the best test score, median over seeds;
    oracle: ``out/oracle_<case>.json``.
    """
    import math
    import statistics

    res = results
    base = [r for r in _jsonl(res / "augment" / "runs.jsonl") + _jsonl(out / "baselines"
            / "runs.jsonl") if r["case"].startswith("real:") and not r.get("tag")]
    auto = [r for r in _jsonl(res / "auto" / "auto_runs.jsonl")
            + _jsonl(res / "auto" / "auto_runs_real.jsonl") if r["case"].startswith("real:")]

    def rng(v: list[float]) -> str:
        if not v:
            return "-"
        if len(v) == 1:
            return f"{v[0]:.3f} (1 seed)"
        return f"{statistics.median(v):.3f} [{min(v):.3f}, {max(v):.3f}] ({len(v)} seeds)"

    md = ["| case | oracle - none | none | AdaBN | augmented source | best LM-ADDA checkpoint "
          "by labels, of auto's candidates *(reference)* | auto: median [min, max] | kept "
          "(seeds 0, 1, 2) | auto - none | gap closed | oracle | auto s/run |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for case in CASES:
        key = f"real:{case}"

        def vals(source: str, method: str, key: str = key) -> list[float]:
            seen: dict[int, float] = {}
            for r in base:
                if r["case"] == key and r["source"] == source and r["method"] == method:
                    seen.setdefault(int(r["seed"]), _first(r["pearson"]))
            return [seen[k] for k in sorted(seen)]

        runs: dict[int, dict] = {}
        for r in auto:
            if r["case"] == key:
                runs.setdefault(int(r["seed"]), r)
        none = vals("plain", "none") or [_first(r["none"]) for r in runs.values()][:1]
        opath = out / f"oracle_{case}.json"
        oracle = _first(json.loads(opath.read_text())["pearson"]) if opath.exists() else None
        truths = [_first(runs[s]["truth"]) for s in sorted(runs)]
        best = []
        for s in sorted(runs):
            mon = runs[s]["monitor"]
            tagged = any("layer" in m for m in mon)  # older lines: layer only in the log
            ck = [(m["pearson"], m.get("layer", math.nan)) for m in mon
                  if (not tagged or m.get("layer") is not None)
                  and m.get("candidate_step", m["step"]) > 0]
            if ck:
                best.append(max(ck))
        med = statistics.median(truths) if truths else None
        n0 = none[0] if none else None
        gap = None if oracle is None or n0 is None else oracle - n0
        closed = "-"
        if gap is not None and med is not None and gap >= 0.05:
            closed = f"{100 * (med - n0) / gap:.0f} %"
        best_cell = "-" if not best else (
            rng([b[0] for b in best]) + " (layers " + ", ".join(
                "?" if math.isnan(b[1]) else f"{b[1]:.0f}" for b in best) + ")")
        md.append(
            f"| {case} | {'-' if gap is None else f'{gap:.3f}'} | "
            f"{'-' if n0 is None else f'{n0:.3f}'} | {rng(vals('plain', 'adabn'))} | "
            f"{rng(vals('robust', 'none'))} | {best_cell} | {rng(truths)} | "
            + ", ".join(runs[s]["winner"] for s in sorted(runs)) + " | "
            + ("-" if med is None or n0 is None else f"{med - n0:+.3f}") + f" | {closed} | "
            + ("-" if oracle is None else f"{oracle:.3f}") + " | "
            + ", ".join(f"{runs[s]['seconds']:.0f}" for s in sorted(runs)) + " |")
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(OUT / "cases"))
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--baselines", action="store_true",
                   help="also run no adaptation and AdaBN on each case (run_baselines)")
    p.add_argument("--report", action="store_true",
                   help="print the real cases' auto table from the logged runs")
    args = p.parse_args(argv)
    if args.report:
        print(report())
        return 0
    if args.baselines:
        import torch

        torch.set_num_threads(1)
        for case in args.cases.split(","):
            run_baselines(case)
        return 0
    for case in args.cases.split(","):
        why = missing(case, Path(args.data))
        if why is not None:
            print(f"{case}: skipped ({why})")
            continue
        paths = write_case(case, args.out, data=args.data, overwrite=args.overwrite)
        info = json.loads(paths.info.read_text())
        print(f"{case}: {paths.root} {info['images']}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
