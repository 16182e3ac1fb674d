"""``benchmarks/real_cases.py --report``: auto's table for the real cases, from logged runs.

The numbers in docs/benchmarks.md (table (c), real rows) come from this function, so its
medians, gaps and "best checkpoint by labels" are checked on hand-made log lines.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load():
    spec = importlib.util.spec_from_file_location("_bench_real_cases", BENCH / "real_cases.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _auto(seed: int, truth: float, monitor: list[dict], winner: str = "LM-ADDA layer 3") -> dict:
    return {"case": "real:em", "seed": seed, "winner": winner, "truth": {"pearson": truth},
            "none": {"pearson": 0.70}, "seconds": 100.0 + seed, "monitor": monitor}


def test_report_rows_from_logged_runs(tmp_path):
    rc = _load()
    res, out = tmp_path / "results", tmp_path / "real_cases"
    base = [{"case": "real:em", "source": "plain", "method": "none", "seed": 0,
             "pearson": {"membrane": 0.70}},
            {"case": "real:em", "source": "robust", "method": "none", "seed": 0,
             "pearson": {"membrane": 0.75}},
            *({"case": "real:em", "source": "plain", "method": "adabn", "seed": s,
               "pearson": {"membrane": v}} for s, v in ((0, 0.71), (1, 0.73), (2, 0.72))),
            {"case": "real:em", "source": "plain", "method": "none", "seed": 0, "tag": "x",
             "pearson": {"membrane": 0.0}}]  # another benchmark's tagged run: ignored
    _write(res / "augment" / "runs.jsonl", base)
    # step 0 is the source model (not an LM-ADDA checkpoint), however high its truth
    tagged = [{"step": 0, "pearson": 0.99, "layer": 2.0, "candidate_step": 0.0},
              {"step": 100, "pearson": 0.76, "layer": 2.0, "candidate_step": 100.0},
              {"step": 100, "pearson": 0.78, "layer": 3.0, "candidate_step": 100.0}]
    _write(res / "auto" / "auto_runs_real.jsonl",
           [_auto(0, 0.74, tagged), _auto(2, 0.80, tagged)])
    # an older line without layer tags: checkpoints after step 0 still count
    _write(res / "auto" / "auto_runs.jsonl",
           [_auto(1, 0.76, [{"step": 0, "pearson": 0.99}, {"step": 200, "pearson": 0.81}])])
    (out).mkdir(parents=True)
    (out / "oracle_em.json").write_text(json.dumps({"pearson": {"membrane": 0.80}}))

    row = next(line for line in rc.report(out, res).splitlines() if line.startswith("| em "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "0.100"  # oracle - none
    assert cells[2] == "0.700"
    assert cells[3] == "0.720 [0.710, 0.730] (3 seeds)"  # AdaBN, plain source
    assert cells[4] == "0.750 (1 seed)"  # augmented source
    assert cells[5] == "0.780 [0.780, 0.810] (3 seeds) (layers 3, ?, 3)"
    assert cells[6] == "0.760 [0.740, 0.800] (3 seeds)"  # auto: median of seeds 0, 1, 2
    assert cells[8] == "+0.060"
    assert cells[9] == "60 %"  # (0.76 - 0.70) / (0.80 - 0.70)
    assert cells[10] == "0.800"


def test_report_without_runs_leaves_cells_empty(tmp_path):
    rc = _load()
    text = rc.report(tmp_path / "real_cases", tmp_path / "results")
    assert len(text.strip().splitlines()) == 2 + len(rc.CASES)
    assert "| bpae_noise | - | - | - | - | - | - |" in text
