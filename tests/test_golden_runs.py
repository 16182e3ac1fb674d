"""Golden runs: every method, short fixed-seed runs on the CPU, bit for bit as recorded.

The numbers in ``tests/data/golden/runs.json`` (every step's losses, every evaluation's
label-free metrics, the kept step, the provenance and a hash of the kept weights) were
recorded from the code before the adaptation loop was unified (issue 12); a refactor of the
engine must reproduce them exactly (floats compared with ``==``). The folder also holds files
written by that code: the tiny source model, interrupted runs' states (``*.run``) that must
resume to the recorded uninterrupted result, and adapted model files that must still load.

Inputs are made here with numpy only (no project generator, no normalisation), so changes to
the synthetic data or to intensity handling elsewhere do not move these numbers.

Re-record (only when a change of behaviour is intended, and say so in the commit)::

    OMP_NUM_THREADS=1 PYTHONPATH=src python tests/test_golden_runs.py record
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from napari_lmadda.adapt.config import AdaptConfig
from napari_lmadda.adapt.engine import iter_adapt
from napari_lmadda.adapt.events import Evaluated, Finished, Started, Step
from napari_lmadda.data.datasets import ArrayDataset
from napari_lmadda.models import UNetGenerator, load_model, save_model

DATA = Path(__file__).parent / "data" / "golden"
BASE = dict(steps=6, batch_size=2, patch_size=32, eval_every=2, eval_patches=4, ndf=4,
            device="cpu", seed=0)

#: name -> (method, layers, AdaptConfig overrides, cancel after N polls, with monitor)
RUNS: dict[str, tuple[str, Any, dict, int | None, bool]] = {
    "none": ("none", None, {}, None, False),
    "adabn": ("adabn", None, {}, None, False),
    "adabn-momentum-L3": ("adabn", 3, {"adabn_stats": "momentum"}, None, False),
    "adabn-listed-2,3": ("adabn", "2,3", {"adabn_layers": "listed"}, None, False),
    "adabn-cancel": ("adabn", None, {}, 2, False),
    "adda": ("adda", None, {"criterion": "last", "lr_g": 1e-3}, None, True),
    "lmadda-L3": ("lmadda", 3, {"criterion": "last"}, None, True),
    "lmadda-L3-variant": ("lmadda", 3, {"init_adabn": True, "bn_mode": "train",
                                        "trainable": (2, 3), "d_gate": 0.5,
                                        "gan_loss": "vanilla", "criterion": "d_acc",
                                        "ema_decay": 0.0, "lr_g": 1e-3}, None, False),
    "lmadda-L5-tap": ("lmadda", 5, {"criterion": "tap_w2", "patience": 1, "source_weight": 0.0,
                                    "d_spectral_norm": False, "steps": 10}, None, False),
    "lmadda-L3-bf16": ("lmadda", 3, {"amp": "bf16", "criterion": "last"}, None, False),
    "lmadda-L3-cancel": ("lmadda", 3, {"lr_g": 1e-3}, 3, False),
    "lmadda-L3-diverge": ("lmadda", 3, {"lr_g": 1.0, "lr_d": 1.0, "ema_decay": 0.0,
                                        "steps": 8}, None, False),
    "lmadda-multi-2,5": ("lmadda-multi", "2,5", {"criterion": "last"}, None, False),
    "apma-all": ("apma", None, {"apma_warmup": 2, "criterion": "last"}, None, True),
    "apma-en-L3": ("apma", 3, {"apma_parts": "en", "apma_warmup": 3, "lr_g": 1e-3}, None,
                   False),
    "apma-de_pred": ("apma", None, {"apma_parts": "de_pred", "criterion": "d_acc"}, None,
                     False),
    "apma-en+de_feat": ("apma", None, {"apma_parts": "en+de_feat", "apma_warmup": 1,
                                       "apma_rec_weight": 0.5, "ema_decay": 0.0}, None, False),
    "apma-cancel-warmup": ("apma", None, {"apma_warmup": 5}, 2, False),
    "apma-cancel": ("apma", None, {"apma_warmup": 1}, 4, False),
    "scgan": ("scgan", None, {"scgan_ngf": 4, "scgan_blocks": 1, "scgan_crop": 16,
                        "criterion": "last"}, None, True),
    "scgan-whole": ("scgan", None, {"scgan_ngf": 4, "scgan_blocks": 1, "scgan_crop": 0,
                                    "scgan_identity": 0.0, "scgan_lr": 1e-3,
                                    "criterion": "tap_w2"}, None, False),
    "scgan-cancel": ("scgan", None, {"scgan_ngf": 4, "scgan_blocks": 1, "scgan_crop": 16}, 3,
                     False),
}
#: interrupted runs kept as files: resuming them must end at the uninterrupted golden run
RESUMED = {"lmadda-L3": 3, "apma-all": 5, "scgan": 3}
#: adapted models saved as files by the recording code (a plain UNet and an SCGAN model)
SAVED = ("lmadda-L3", "scgan")


# ------------------------------------------------------------------ inputs
def fields(seed: int, n: int = 3, size: int = 48) -> list[np.ndarray]:
    """Blobs on a smooth background in [-1, 1], made with numpy alone."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = []
    for _ in range(n):
        img = 0.2 * np.sin(xx / 7.0 + rng.random() * 6) * np.cos(yy / 9.0)
        for _ in range(6):
            cy, cx, r = rng.random(3) * [size, size, 5] + [0, 0, 3]
            img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        out.append(np.clip(img - 0.5, -1, 1).astype(np.float32))
    return out


def domains() -> tuple[ArrayDataset, ArrayDataset]:
    """Raw (not normalised) source fields, and overexposed, offset target fields."""
    src = fields(0)
    tgt = [np.clip(1.7 * f + 0.3, -1, 1).astype(np.float32) for f in fields(1)]
    return ArrayDataset(src, normalize=None), ArrayDataset(tgt, normalize=None)


def make_source_model() -> UNetGenerator:
    """The tiny source model of the golden runs (only used when recording)."""
    torch.manual_seed(0)
    m = UNetGenerator(num_downs=4, ngf=4, out_channels=2)
    g = torch.Generator().manual_seed(1)
    for bn in m.modules():  # non-trivial running statistics, as in a trained model
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    m.meta = {"channel_names": ["DAPI", "CD29"]}
    return m.eval()


# ------------------------------------------------------------------ canonical records
def canon(obj: Any) -> Any:
    """JSON-stable form: tuples as lists, nan/inf as strings, enums as their values."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, bool | int | str) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {str(k): canon(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [canon(v) for v in obj]
    if hasattr(obj, "value"):  # StopReason
        return obj.value
    return repr(obj)


def weights_digest(model: torch.nn.Module) -> dict[str, Any]:
    """SHA-256 of every tensor of the state dict (in key order) and the sum of the floats."""
    h = hashlib.sha256()
    total = 0.0
    sd = model.state_dict()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(t.numpy().tobytes())
        if t.is_floating_point():
            total += float(t.double().sum())
    return {"sha256": h.hexdigest(), "sum": total, "keys": len(sd)}


def monitor_fn():
    x = torch.from_numpy(np.random.default_rng(7).random((1, 1, 32, 32), dtype=np.float32))

    def monitor(step: int, net: torch.nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"step_seen": float(step), "out_mean": float(net(x).double().mean())}

    return monitor


def run(name: str, model: UNetGenerator, run_state: Path | None = None,
        cancel_after: int | None | str = "as listed") -> tuple[dict[str, Any], Any]:
    """Run one golden configuration; return its canonical record and the result.

    ``cancel_after``: cancel when polled the (N+1)-th time; None = never; by default as
    listed in :data:`RUNS`.
    """
    method, layers, overrides, cancel_default, with_monitor = RUNS[name]
    if cancel_after == "as listed":
        cancel_after = cancel_default
    polls = [0]

    def cancel() -> bool:
        polls[0] += 1
        return cancel_after is not None and polls[0] > cancel_after

    src, tgt = domains()
    events = []
    result = None
    for ev in iter_adapt(model, src, tgt, method=method, layers=layers,
                         config=AdaptConfig(**{**BASE, **overrides}), cancel=cancel,
                         monitor=monitor_fn() if with_monitor else None,
                         run_state=run_state):
        if isinstance(ev, Started):
            events.append(["started", ev.method, ev.layers, ev.total_steps, ev.trainable_params,
                           ev.device, ev.bn_mode, ev.criterion])
        elif isinstance(ev, Step):
            events.append(["step", ev.step, ev.total_steps, ev.loss_d, ev.loss_g, ev.loss_src,
                           ev.d_acc, ev.g_updated])
        elif isinstance(ev, Evaluated):
            events.append(["evaluated", ev.step, ev.criterion, ev.is_best, ev.metrics])
        elif isinstance(ev, Finished):
            result = ev.result
    assert result is not None
    record = {
        "events": events,
        "method": result.method,
        "layers": result.layers,
        "best_step": result.best_step,
        "criterion": result.criterion,
        "reason": result.reason,
        "steps_done": result.steps_done,
        "message": result.message,
        "history": result.history,
        "provenance": result.provenance,
        "weights": weights_digest(result.model),
        "model_class": type(result.model).__name__,
    }
    return canon(record), result


# ------------------------------------------------------------------ recording
def record() -> None:  # pragma: no cover - run by hand, see the module docstring
    torch.set_num_threads(1)
    DATA.mkdir(parents=True, exist_ok=True)
    save_model(make_source_model(), DATA / "source.pt", provenance={"golden": "source"})
    model = load_model(DATA / "source.pt")
    golden = {"torch": torch.__version__, "runs": {}}
    for name in RUNS:
        rec, result = run(name, model)
        golden["runs"][name] = rec
        if name in SAVED:
            save_model(result.model, DATA / f"{name}.pt", provenance=result.provenance)
        print(name, rec["reason"], rec["best_step"], rec["weights"]["sum"], flush=True)
    for name, after in RESUMED.items():
        state = DATA / f"{name}.run"
        state.unlink(missing_ok=True)
        rec, _ = run(name, model, run_state=state, cancel_after=after)
        assert rec["reason"] == "cancelled" and state.exists(), (name, rec["reason"])
        golden["runs"][f"{name}@interrupted"] = rec
    (DATA / "runs.json").write_text(json.dumps(golden, indent=1) + "\n")


# ------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return json.loads((DATA / "runs.json").read_text())


@pytest.fixture(scope="module")
def source_model():
    return load_model(DATA / "source.pt")


@pytest.mark.parametrize("name", list(RUNS))
def test_run_is_bit_identical_to_the_recording(name, golden, source_model):
    if golden["torch"] != torch.__version__:
        pytest.skip(f"recorded with torch {golden['torch']}, this is {torch.__version__}")
    rec, _ = run(name, source_model)
    want = golden["runs"][name]
    assert rec["events"] == want["events"]  # every loss, metric and decision, step by step
    assert rec == want


@pytest.mark.parametrize("name", list(RESUMED))
def test_old_run_state_resumes_to_the_uninterrupted_result(name, golden, source_model,
                                                           tmp_path):
    if golden["torch"] != torch.__version__:
        pytest.skip(f"recorded with torch {golden['torch']}, this is {torch.__version__}")
    state = tmp_path / f"{name}.run"
    shutil.copy(DATA / f"{name}.run", state)  # written by the code before the refactor
    rec, _ = run(name, source_model, run_state=state, cancel_after=None)
    want = golden["runs"][name]
    for key in ("best_step", "steps_done", "reason", "history", "weights"):
        assert rec[key] == want[key], key
    # the resumed run yields the evaluations after the interruption, as the full run did
    evals = [e for e in want["events"] if e[0] == "evaluated"]
    assert [e for e in rec["events"] if e[0] == "evaluated"] == evals[-len(
        [e for e in rec["events"] if e[0] == "evaluated"]):]


@pytest.mark.parametrize("name", SAVED)
def test_old_adapted_model_file_loads_with_its_weights(name, golden):
    model = load_model(DATA / f"{name}.pt")
    want = golden["runs"][name]
    assert type(model).__name__ == want["model_class"]
    assert weights_digest(model) == want["weights"]
    assert model.meta["provenance"]["method"] == want["method"]


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] == ["record"]:
        record()
    else:
        sys.exit("usage: python tests/test_golden_runs.py record")
