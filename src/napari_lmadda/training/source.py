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
from collections.abc import Callable, Iterator
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

__all__ = ["SourceTrainConfig", "TrainResult", "iter_train_source", "train_source", "TARGET_RANGE"]

# Stain values [0, 1] are encoded as TARGET_RANGE -> [-1, 1]: background at exactly -1 would
# push the tanh output into saturation, where sparse targets (nuclei) stop getting gradient.
TARGET_RANGE = (-0.05, 1.05)


@dataclass
class SourceTrainConfig:
    """Options of :func:`train_source`.

    Parameters
    ----------
    steps, batch_size, patch_size : int
        Training length and batches of ``batch_size`` patches of ``patch_size`` px.
    lr : float
        Adam learning rate (pix2pix: 2e-4, betas 0.5/0.999).
    lambda_l1, lambda_gan : float
        Weights of the L1 loss and of the conditional PatchGAN loss (0 = L1 only).
    lr_decay : bool
        Linear decay of the learning rate over the second half (pix2pix schedule).
    eval_every : int
        Steps between validations (Pearson on the validation patches).
    seed : int
        Seeds initialisation and sampling.
    device : str
        ``auto``, ``cpu``, ``cuda[:N]``, ``mps``.
    """

    steps: int = 2000
    batch_size: int = 8
    patch_size: int = 128
    lr: float = 2e-4
    lambda_l1: float = 100.0
    lambda_gan: float = 0.0
    lr_decay: bool = True
    eval_every: int = 100
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "patch_size", "eval_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {v!r}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= 1):
            raise ConfigError(f"lr must be in (0, 1], got {self.lr!r}")
        for name in ("lambda_l1", "lambda_gan"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if self.lambda_l1 < 0 or self.lambda_gan < 0 or self.lambda_l1 + self.lambda_gan == 0:
            raise ConfigError("lambda_l1 and lambda_gan must be >= 0 and not both 0")


@dataclass
class TrainResult:
    """The trained model (best validation state) and its history."""

    model: UNetGenerator
    best_step: int
    best_pearson: float
    reason: StopReason
    history: list[dict[str, Any]] = field(default_factory=list)


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

    Yields
    ------
    Started, Step, Evaluated, then a final ``TrainResult``.
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
    yield TrainResult(G, best_step, best, reason, history)


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
