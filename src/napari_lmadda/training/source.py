"""pix2pix-style supervised training of the source model G: L1, optional conditional PatchGAN.

The loop is a generator of the same typed events as adaptation (``Started``, ``Step``,
``Evaluated``, ``Finished``), so the CLI and the GUI show it the same way. The validation
criterion here *is* supervised (Pearson on held-out labelled patches): training the source
model is the one place where labels exist.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..adapt.events import Evaluated, Started, Step, StopReason
from ..devices import resolve_device
from ..errors import ConfigError
from ..models.checkpoint import save_model
from ..models.discriminator import PatchDiscriminator
from ..models.unet import UNetConfig, UNetGenerator
from ..options import option, validate

__all__ = [
    "SourceTrainConfig",
    "TrainResult",
    "NotLearning",
    "TimeEstimate",
    "SIZE_PRESETS",
    "size_preset",
    "iter_train_source",
    "train_source",
    "TARGET_RANGE",
]

# Stain values [0, 1] are encoded as TARGET_RANGE -> [-1, 1]: background at exactly -1 would
# push the tanh output into saturation, where sparse targets (nuclei) stop getting gradient.
TARGET_RANGE = (-0.05, 1.05)


#: Model and patch sizes for ``train-source --size``: UNet depth (``num_downs``), first-layer
#: filters (``ngf``), patch side and batch. ``seconds_per_1000`` is the time of 1000 training
#: steps on one free CPU core of the development machine (CPU time of one thread,
#: ``benchmarks/train_speed.py``; validations not included): a shared machine is slower, a
#: laptop's several cores faster, a GPU 10-100x faster.
SIZE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"num_downs": 4, "ngf": 8, "patch": 64, "batch": 8, "seconds_per_1000": 33},
    "small": {"num_downs": 6, "ngf": 16, "patch": 128, "batch": 8, "seconds_per_1000": 190},
    "medium": {"num_downs": 7, "ngf": 32, "patch": 128, "batch": 8, "seconds_per_1000": 575},
    "large": {"num_downs": 8, "ngf": 64, "patch": 256, "batch": 8, "seconds_per_1000": 7301},
}


def size_preset(name: str, device: str = "cpu") -> tuple[str, dict[str, Any]]:
    """Resolve ``--size`` (``auto``: ``large`` on a CUDA GPU, ``small`` on CPU/MPS).

    Raises
    ------
    ConfigError
        Unknown name.
    """
    if name == "auto":
        name = "large" if str(device).startswith("cuda") else "small"
    if name not in SIZE_PRESETS:
        raise ConfigError(f"--size must be auto or one of {', '.join(SIZE_PRESETS)}, got {name!r}")
    return name, dict(SIZE_PRESETS[name])


def _percentile_pair(value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"target_percentiles must be two numbers, got {value!r}") from None
    if not 0 <= lo < hi <= 100:
        raise ConfigError(f"target_percentiles must satisfy 0 <= low < high <= 100, "
                          f"got {lo}, {hi}")
    return lo, hi


_LR = {"low": 0.0, "high": 1.0, "low_open": True, "what": "a learning rate"}


@dataclass
class SourceTrainConfig:
    """Options of :func:`train_source` (and of the data :func:`prepare_training` builds).

    Every field carries its help and range (:mod:`napari_lmadda.options`), for the CLI and
    a GUI panel alike.
    """

    steps: int = option(2000, "training steps", low=1, label="Steps")
    batch_size: int = option(8, "patches per step", low=1, label="Batch")
    patch_size: int = option(128, "patch side in pixels, a multiple of 2**UNet depth", low=1,
                             label="Patch")
    lr: float = option(2e-4, "Adam learning rate (pix2pix: 2e-4, betas 0.5/0.999)", **_LR,
                       label="Learning rate")
    lambda_l1: float = option(100.0, "weight of the L1 loss", low=0.0)
    lambda_gan: float = option(0.0, "weight of the conditional PatchGAN loss; 0 = L1 only",
                               low=0.0)
    lr_decay: bool = option(True, "linear decay of the learning rate over the second half "
                            "(pix2pix schedule)")
    eval_every: int = option(100, "steps between validations (Pearson on held-out patches)",
                             low=1, label="Validate every")
    seed: int = option(0, "seed of initialisation, split and sampling", low=0)
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps",
                         suggestions=("auto", "cpu", "cuda", "mps"))
    warn_pearson: float = option(0.1, "say the model is not learning when validation Pearson "
                                 "stays below this", low=-1.0, high=1.0)
    warn_after: int = option(3, "... after this many validations (0 = never)", low=0)
    augment: str = option("basic", "training augmentation preset: none, basic (rotations and "
                          "flips) or robust (imitates other microscopes)",
                          choices=("none", "basic", "robust"), label="Augmentation", dock=True)
    target_norm: str = option("dataset", "target encoding: dataset (percentiles of the "
                              "whole training set, predictions in target units), image "
                              "(per image, CARE-style, normalised units) or fixed",
                              choices=("dataset", "image", "fixed"),
                              label="Target normalisation", dock=True)
    target_percentiles: tuple[float, float] = option(
        (0.1, 99.9), "percentiles of the dataset and image target encodings",
        check=_percentile_pair)

    def __post_init__(self) -> None:
        validate(self)
        if self.lambda_l1 + self.lambda_gan == 0:
            raise ConfigError("lambda_l1 and lambda_gan must be >= 0 and not both 0")


@dataclass
class TrainResult:
    """The trained model (best validation state), its history and what went wrong."""

    model: UNetGenerator
    best_step: int
    best_pearson: float
    reason: StopReason
    history: list[dict[str, Any]] = field(default_factory=list)
    not_learning: NotLearning | None = None


#: What usually keeps a source model from learning (shown with :class:`NotLearning`).
LIKELY_CAUSES: tuple[str, ...] = (
    "inputs and targets do not show the same field: files are paired by name, so check "
    "that each input and its target are the same cells, registered pixel to pixel",
    "target intensities the model cannot produce (see the warnings printed before training)",
    "the stain cannot be predicted from so small a patch: try a larger --patch or --size",
    "too few steps for this model: train longer, or use a smaller --size",
    "a learning rate too high (L1 loss jumping) or too low (L1 loss flat): try --lr",
)


@dataclass(frozen=True)
class NotLearning:
    """The model is not learning: validation Pearson still near 0 after a few evaluations.

    Attributes
    ----------
    step : int
        The step of the evaluation that triggered it.
    best_pearson : float
        Best validation Pearson so far.
    threshold : float
        The level it stayed below.
    evaluations : int
        Evaluations done.
    causes : tuple of str
        Likely causes, the most specific first.
    """

    step: int
    best_pearson: float
    threshold: float
    evaluations: int
    causes: tuple[str, ...] = LIKELY_CAUSES

    def message(self) -> str:
        """A short paragraph for the user."""
        head = (f"the model is not learning: validation Pearson is {self.best_pearson:.3f} "
                f"(below {self.threshold:g}) after {self.evaluations} evaluations "
                f"(step {self.step}). Likely causes:")
        return head + "".join(f"\n  - {c}" for c in self.causes)


@dataclass(frozen=True)
class TimeEstimate:
    """Measured speed after the first steps, and the time the whole run will take."""

    step: int
    seconds_per_step: float
    total_seconds: float

    def message(self) -> str:
        """One line for the user."""
        return (f"{self.seconds_per_step:.2f} s per step (about "
                f"{_minutes(1000 * self.seconds_per_step)} per 1000 steps): the run will "
                f"take about {_minutes(self.total_seconds)}")


def _minutes(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _pearson_per_channel(pred: torch.Tensor, truth: torch.Tensor) -> list[float]:
    out = []
    for c in range(pred.shape[1]):
        a = pred[:, c].flatten().double()
        b = truth[:, c].flatten().double()
        a, b = a - a.mean(), b - b.mean()
        den = float(a.norm() * b.norm())
        out.append(float(a @ b) / den if den > 0 else float("nan"))
    return out


def iter_train_source(
    sampler,
    val: tuple[np.ndarray, np.ndarray],
    *,
    arch: UNetConfig | None = None,
    model: UNetGenerator | None = None,
    config: SourceTrainConfig | None = None,
    meta: dict | None = None,
    out: str | Path | None = None,
    cancel: Callable[[], bool] | None = None,
    hints: Sequence[str] = (),
) -> Iterator:
    """Train G on paired patches; yield events, the last one carrying a :class:`TrainResult`.

    Parameters
    ----------
    sampler : object
        ``sample() -> (inputs (B, Cin, P, P), targets (B, Cout, P, P))``, normalised to the
        network range [-1, 1].
    val : (ndarray, ndarray)
        Fixed validation inputs and targets, same layout.
    arch : UNetConfig, optional
        Architecture of a new model (ignored when ``model`` is given).
    model : UNetGenerator, optional
        Continue training this model.
    config : SourceTrainConfig, optional
        Options.
    meta : dict, optional
        Stored in the checkpoints (channel names, normalisation, provenance).
    out : path, optional
        Writes ``<out>`` (best) and ``<out stem>_last.pt`` (last) atomically at each validation.
    cancel : callable, optional
        Returns True to stop; the best state so far is kept.
    hints : sequence of str
        Specific likely causes put first in a :class:`NotLearning` event (e.g. the names
        of targets found outside the representable range).

    Yields
    ------
    Started, Step, TimeEstimate (once, after a few steps), Evaluated, NotLearning (at most
    once), then a final ``TrainResult``.
    """
    cfg = config or SourceTrainConfig()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if model is None:  # types, ranges and memory checked before anything is allocated
        from ..models.checkpoint import validate_architecture

        arch = validate_architecture((arch or UNetConfig()).to_dict(), training=True)
    G = (model if model is not None else UNetGenerator(arch)).to(device)
    G.meta = {**getattr(G, "meta", {}), **(meta or {})}
    if cfg.patch_size % G.min_size:
        raise ConfigError(f"patch size {cfg.patch_size} must be a multiple of {G.min_size}")
    opt = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    half = cfg.steps // 2

    def lr_at(step: int) -> float:
        if not cfg.lr_decay or step <= half:
            return cfg.lr
        return cfg.lr * (1.0 - (step - half) / (cfg.steps - half + 1))

    D = opt_d = None
    if cfg.lambda_gan > 0:
        c = G.config
        D = PatchDiscriminator(c.in_channels, c.out_channels, cfg.patch_size, ndf=32).to(device)
        opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    vx = torch.as_tensor(np.asarray(val[0], np.float32), device=device)
    vy = torch.as_tensor(np.asarray(val[1], np.float32), device=device)
    out = Path(out) if out is not None else None
    last_path = out.with_name(out.stem + "_last" + out.suffix) if out is not None else None

    n_params = sum(p.numel() for p in G.parameters())
    yield Started("train-source", (), cfg.steps, n_params, str(device), "train", "val_pearson")
    best, best_step, best_state = -math.inf, 0, copy.deepcopy(G.state_dict())
    history: list[dict[str, Any]] = []
    reason, t0 = StopReason.COMPLETED, time.perf_counter()
    nan = float("nan")
    not_learning: NotLearning | None = None
    # the first steps pay for allocation and thread start-up: time the next few
    warm, est_at, t_warm = min(2, cfg.steps), min(cfg.steps, 7), t0
    for step in range(1, cfg.steps + 1):
        if cancel is not None and cancel():
            reason = StopReason.CANCELLED
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        x, y = sampler.sample()
        x = torch.as_tensor(np.asarray(x, np.float32), device=device)
        y = torch.as_tensor(np.asarray(y, np.float32), device=device)
        G.train()
        fake = G(x)
        loss_d_val = nan
        if D is not None:
            opt_d.zero_grad(set_to_none=True)
            lr_ = D(torch.cat([x, y], 1))
            lf = D(torch.cat([x, fake.detach()], 1))
            loss_d = 0.5 * (
                F.mse_loss(lr_, torch.ones_like(lr_)) + F.mse_loss(lf, torch.zeros_like(lf))
            )
            loss_d.backward()
            opt_d.step()
            loss_d_val = float(loss_d)
        opt.zero_grad(set_to_none=True)
        l1 = F.l1_loss(fake, y)
        loss = cfg.lambda_l1 * l1
        if D is not None:
            lg = D(torch.cat([x, fake], 1))
            loss = loss + cfg.lambda_gan * F.mse_loss(lg, torch.ones_like(lg))
        loss.backward()
        opt.step()
        el = time.perf_counter() - t0
        if step == warm:
            t_warm = time.perf_counter()
        elif step == est_at and est_at > warm:
            per = (time.perf_counter() - t_warm) / (step - warm)
            n_eval = cfg.steps // cfg.eval_every
            yield TimeEstimate(step, per, el + per * (cfg.steps - step)
                               + n_eval * per * max(1, len(vx)) / max(1, cfg.batch_size) / 3)
        yield Step(
            step,
            cfg.steps,
            loss_d_val,
            l1.item(),
            nan,
            nan,
            True,
            el,
            el / step * (cfg.steps - step),
        )
        if not math.isfinite(l1.item()):
            reason = StopReason.DIVERGED
            break
        if step % cfg.eval_every == 0 or step == cfg.steps:
            G.eval()
            with torch.no_grad():
                pred = torch.cat([G(vx[i : i + 8]) for i in range(0, len(vx), 8)])
            rs = _pearson_per_channel(pred, vy)
            score = float(np.nanmean(rs))
            improved = score > best
            if improved:
                best, best_step, best_state = score, step, copy.deepcopy(G.state_dict())
            row = {"step": step, "l1": l1.item(), "val_pearson": score, "per_channel": rs}
            history.append(row)
            yield Evaluated(
                step,
                score,
                improved,
                {"val_pearson": score, **{f"pearson_{i}": r for i, r in enumerate(rs)}},
            )
            if (not_learning is None and cfg.warn_after and len(history) >= cfg.warn_after
                    and not best >= cfg.warn_pearson):
                not_learning = NotLearning(step, best, cfg.warn_pearson, len(history),
                                           tuple(hints) + LIKELY_CAUSES)
                yield not_learning
            if out is not None:
                prov = {"training": {**asdict(cfg), "step": step, "val_pearson": score}}
                save_model(G, last_path, provenance=prov)
                if improved:
                    save_model(G, out, provenance=prov)
    G.load_state_dict(best_state)
    G.eval()
    G.meta["provenance"] = {
        **G.meta.get("provenance", {}),
        "training": {**asdict(cfg), "best_step": best_step, "val_pearson": best},
    }
    yield TrainResult(G, best_step, best, reason, history, not_learning)


def train_source(sampler, val, **kwargs) -> TrainResult:
    """Run :func:`iter_train_source` to the end (``callback=`` receives each event)."""
    callback = kwargs.pop("callback", None)
    result = None
    for ev in iter_train_source(sampler, val, **kwargs):
        if isinstance(ev, TrainResult):
            result = ev
        elif callback is not None:
            callback(ev)
    assert result is not None
    return result
