"""The adaptation loop every adversarial method runs on; a method only supplies its step.

The loop owns what all methods share: the device and the torchrun process group, seeding,
the frozen source model G, the fixed evaluation patches, the EMA of what trains, the
label-free choice of the kept state (:class:`~napari_lmadda.adapt.selection.KeepBest`),
saving and resuming the run state, the events, divergence rollback, cancel, the gradient
averaging over processes, and the provenance of the result. A method is a small
:class:`Method` object:

* ``build(run)``: make its networks and optimisers; return the module that trains (its EMA
  is what gets evaluated and kept) and its trainable parameters;
* ``step(run, xs, xt)``: one training step on a source and a target batch, returning its
  losses (:class:`Losses`);
* ``metrics(run, net)``: the label-free numbers of the evaluated (EMA) networks;
* ``state_dict()`` / ``load_state_dict(state)``: its extra state in the run-state file;
* ``kept_model(run, ema, best_state)``: the model the run produces.

Optional: ``warmup`` (work before step 0), ``kept(ema)`` (the part of the EMA whose weights
are kept), ``evaluated_model`` (what ``monitor`` sees), ``provenance`` (extra keys),
``upgrade_state`` (read an older run-state layout). A method reaches layer ``l`` of the
model only through ``model.forward_taps`` / ``model.block``, so any model with that API works.

What keeps adversarial adaptation stable (it collapses easily; see REFERENCE.md and
``docs/benchmarks.md``): the EMA weights are what is evaluated and kept; a label-free
criterion is evaluated every ``eval_every`` steps on fixed patches and the best state is
kept; non-finite losses or a criterion blow-up roll back to it, and a cancel keeps it too.

Under ``torchrun`` (``WORLD_SIZE > 1``) the same loop runs in every process: each rank takes
its slice of the global batch (:func:`~napari_lmadda.adapt.sampling.shard_sampler`),
:meth:`Run.backward` averages gradients over the ranks, the criterion is evaluated on rank 0
and broadcast, cancel flags are reduced, and only rank 0 writes the run state (see
:mod:`napari_lmadda.adapt.distributed` for why this equals a single-process run up to float
rounding). ``config.amp`` runs a method's forward passes under :meth:`Run.autocast`.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..devices import autocast_dtype, resolve_device
from ..errors import CheckpointError, ConfigError
from . import distributed
from .config import AdaptConfig
from .events import AdaptResult, Evaluated, Event, Finished, Started, Step, StopReason
from .sampling import fixed_batch, shard_sampler, to_tensor
from .selection import KeepBest

__all__ = ["Losses", "Method", "Run", "run", "RUN_STATE_FORMAT"]

RUN_STATE_FORMAT = "napari-lmadda-run"


@dataclass
class Losses:
    """What one training step reports; None = not computed this step (``nan`` in events).

    ``loss_src`` is the method's third loss (source consistency; SCGAN's cycle loss).
    """

    loss_d: float | None = None
    loss_g: float | None = None
    loss_src: float | None = None
    d_acc: float | None = None
    g_updated: bool = True


class Method:
    """An adversarial method: its networks and its training step (see the module docs).

    Attributes
    ----------
    name : str
        Recorded in events, provenance and the run state.
    layers : tuple of int
        The layers it matches (events, provenance, run state).
    bn_mode : str
        Reported by ``Started``.
    uses_amp : bool
        Whether its forward passes run under ``config.amp`` (else amp is not set up).
    """

    name: str = ""
    layers: tuple[int, ...] = ()
    bn_mode: str = "eval"
    uses_amp: bool = False

    def build(self, run: Run) -> tuple[nn.Module, list[nn.Parameter]]:  # pragma: no cover
        """Make the networks and optimisers; return the module that trains and its params."""
        raise NotImplementedError

    def warmup(self, run: Run) -> str | None:
        """Work before the step-0 evaluation (not on resume); a message if cancelled."""
        return None

    def step(self, run: Run, xs: torch.Tensor, xt: torch.Tensor) -> Losses:  # pragma: no cover
        """One training step on a source batch ``xs`` and a target batch ``xt``."""
        raise NotImplementedError

    def metrics(self, run: Run, net: nn.Module) -> dict[str, float]:  # pragma: no cover
        """Label-free metrics of the EMA networks ``net`` (rank 0 only)."""
        raise NotImplementedError

    def kept(self, ema: nn.Module) -> nn.Module:
        """The part of the EMA networks whose weights a kept state holds."""
        return ema

    def evaluated_model(self, run: Run, net: nn.Module) -> nn.Module:
        """The model ``monitor`` is called with."""
        return net

    def kept_model(self, run: Run, ema: nn.Module, best_state: dict) -> nn.Module:
        """The resulting model, from the kept weights."""
        raise NotImplementedError  # pragma: no cover

    def state_dict(self) -> dict[str, Any]:
        """Extra state for the run-state file (networks, optimisers)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` from a run state."""

    def upgrade_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """Convert a run state written in an older layout (identity by default)."""
        return state

    def provenance(self) -> dict[str, Any]:
        """Extra provenance keys of the result."""
        return {}


class Run:
    """What a method's hooks see: settings, device, G, the fixed patches, the processes.

    Attributes
    ----------
    config : AdaptConfig
    device : torch.device
        This process's device.
    model : nn.Module
        The source model as given (not modified; copy it).
    G : nn.Module
        A frozen copy of the source model on ``device``.
    eval_src, eval_tgt : torch.Tensor
        The fixed evaluation patches.
    source, target : sampler
        This rank's samplers.
    rank, world, main, multi
        Process rank and count, rank 0, and whether several processes run.
    """

    def __init__(self, model: nn.Module, config: AdaptConfig, device: torch.device,
                 amp: bool, cancel: Callable[[], bool] | None) -> None:
        self.config, self.device, self.model = config, device, model
        self.multi, self.rank = distributed.is_active(), distributed.rank()
        self.world, self.main = distributed.world_size(), self.rank == 0
        distributed.per_rank_batch(config.batch_size, self.world)
        self._amp = autocast_dtype(config.amp, device) if amp else None
        # fp16 gradients underflow without loss scaling; bf16 has float32's exponent range
        self.scalers: dict[str, Any] = (
            {k: torch.amp.GradScaler(device.type) for k in ("d", "g")}
            if self._amp == torch.float16 else {})
        self._cancel = cancel
        self.G: nn.Module = None  # type: ignore[assignment]
        self.eval_src = self.eval_tgt = None
        self.source = self.target = None

    def autocast(self):
        """Mixed-precision context of the training forward passes (``config.amp``)."""
        if self._amp is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._amp)

    def backward(self, loss: torch.Tensor, opt: torch.optim.Optimizer,
                 params: list[nn.Parameter], scaler: str = "g") -> None:
        """Backward, average the gradients over the processes, optimiser step (scaled)."""
        sc = self.scalers.get(scaler)
        (sc.scale(loss) if sc is not None else loss).backward()
        if self.multi:
            distributed.all_reduce_mean_([p.grad for p in params if p.grad is not None])
        if sc is not None:  # inf/nan checks see the averaged grads: same on every rank
            sc.step(opt)
            sc.update()
        else:
            opt.step()

    def mean(self, *values: float) -> list[float]:
        """Numbers averaged over the processes (themselves in one process)."""
        if self.multi:
            return distributed.mean_scalars(list(values), self.device)
        return list(values)

    def cancelled(self) -> bool:
        """Whether to stop now (a cancel on any rank stops every rank at the same step)."""
        stop = self._cancel is not None and self._cancel()
        return distributed.any_flag(stop, self.device) if self.multi else stop


def run(
    method: Method,
    model: nn.Module,
    source,
    target,
    *,
    config: AdaptConfig,
    cancel: Callable[[], bool] | None = None,
    monitor: Callable[[int, nn.Module], dict[str, float]] | None = None,
    run_state: str | os.PathLike | None = None,
) -> Iterator[Event]:
    """Run ``method`` on the loop; yields typed events.

    Parameters
    ----------
    method : Method
        The method's step object.
    model : nn.Module
        Source model G (not modified).
    source, target : sampler
        Objects with ``sample() -> ndarray (B, C, P, P)`` of normalised source / target
        patches (see :mod:`napari_lmadda.adapt.sampling`).
    config : AdaptConfig
        Hyper-parameters.
    cancel : callable, optional
        Returns True to stop at the next step; the best state so far is kept.
    monitor : callable, optional
        ``monitor(step, model) -> dict`` called at every evaluation with the evaluated (EMA)
        model; its values are logged as ``monitor_<name>`` in the history and events but
        never used to choose the kept state (benchmarks log Pearson against ground truth
        with it). Only rank 0 calls it.
    run_state : path, optional
        File holding the full state of the run (networks, EMA, optimisers, RNG states, kept
        state, history), written atomically at every evaluation. If it exists when the run
        starts, the run resumes from it and ends where an uninterrupted run with the same
        settings would (bit-identical on the CPU). It must come from a run with the same
        method, layers and config, else :class:`ConfigError`. In a multi-process run only
        rank 0 writes it; every rank reads it when resuming.

    Yields
    ------
    Event
        ``Started``, ``Step`` per step, ``Evaluated`` per evaluation, ``Finished`` last. In a
        multi-process run every rank yields the same events.

    Notes
    -----
    Launched by torchrun with ``WORLD_SIZE > 1``, the process group is joined here unless the
    caller already did (and then left when the generator ends). ``config.batch_size`` stays
    the global batch and must split evenly over the ranks.
    """
    device = resolve_device(config.device)
    with distributed.session(device):
        yield from _loop(method, model, source, target, config,
                         distributed.local_device(device), cancel, monitor, run_state)


def _loop(method, model, source, target, cfg, device, cancel, monitor, run_state):
    """The body of :func:`run`, inside its process group (if any)."""
    r = Run(model, cfg, device, method.uses_amp, cancel)
    torch.manual_seed(cfg.seed)
    r.G = copy.deepcopy(model).to(device).eval()
    r.G.requires_grad_(False)
    r.eval_src = to_tensor(fixed_batch(source, cfg.eval_patches, cfg.seed + 1), device)
    r.eval_tgt = to_tensor(fixed_batch(target, cfg.eval_patches, cfg.seed + 2), device)
    trained, params = method.build(r)
    ema = copy.deepcopy(trained).requires_grad_(False) if cfg.ema_decay > 0 else trained
    names = {id(p): n for n, p in trained.named_parameters()}
    shadow = [dict(ema.named_parameters())[names[id(p)]] for p in params]
    # each rank draws the global batch positions and reads its own slice of them
    r.source, r.target = shard_sampler(source, r.rank, r.world), shard_sampler(
        target, r.rank, r.world)
    yield Started(method.name, method.layers, cfg.steps, sum(p.numel() for p in params),
                  str(device), method.bn_mode, cfg.criterion)

    history: list[dict[str, Any]] = []
    keep = KeepBest(cfg.criterion, cfg.patience)
    reason, message = StopReason.COMPLETED, ""
    first_step = 1
    if run_state is not None and Path(run_state).exists():
        st = method.upgrade_state(_read_run_state(run_state, method, cfg))
        trained.load_state_dict(st["gp"])
        ema.load_state_dict(st["ema"])
        method.load_state_dict(st)
        for k, sc in r.scalers.items():
            if f"scaler_{k}" in st:
                sc.load_state_dict(st[f"scaler_{k}"])
        history = list(st["history"])
        keep.restore(st["best"], st["best_state"])
        _rng_set(r.source, st["rng"]["source"])
        _rng_set(r.target, st["rng"]["target"])
        torch.set_rng_state(st["rng"]["torch"])
        first_step = int(st["step"]) + 1
    else:
        keep.best_state = _snapshot(method, ema)  # kept if a warm-up is cancelled
        message = method.warmup(r) or ""
        if message:
            reason, first_step = StopReason.CANCELLED, cfg.steps + 1  # no training
        else:
            m0 = _evaluate(method, r, ema, 0, monitor)
            keep.begin(m0["criterion"], _snapshot(method, ema))
            history.append({"step": 0, **m0})
            yield Evaluated(0, m0["criterion"], True, m0)

    t0 = time.perf_counter()
    nan = float("nan")
    step = 0
    for step in range(first_step, cfg.steps + 1):
        if r.cancelled():
            reason, step = StopReason.CANCELLED, step - 1
            message = f"cancelled after {step} steps; kept the state of step {keep.best_step}"
            break
        xs = to_tensor(r.source.sample(), device)
        xt = to_tensor(r.target.sample(), device)
        out = method.step(r, xs, xt)
        if out.g_updated and ema is not trained:
            with torch.no_grad():
                torch._foreach_lerp_(shadow, params, 1.0 - cfg.ema_decay)
        losses = (out.loss_d, out.loss_g, out.loss_src)
        elapsed = time.perf_counter() - t0
        yield Step(step, cfg.steps, *(nan if v is None else v for v in losses),
                   nan if out.d_acc is None else out.d_acc, out.g_updated, elapsed,
                   elapsed / (step - first_step + 1) * (cfg.steps - step))
        if not all(math.isfinite(v) for v in losses if v is not None):
            reason = StopReason.DIVERGED
            message = (f"losses became non-finite at step {step}; "
                       f"rolled back to step {keep.best_step}")
            break
        if step % cfg.eval_every == 0 or step == cfg.steps:
            m = _evaluate(method, r, ema, step, monitor)
            val = m["criterion"]
            improved = keep.offer(step, val, lambda: _snapshot(method, ema))
            history.append({"step": step, **m})
            if run_state is not None and r.main:
                _write_run_state(run_state, method, cfg, r, step, trained, ema, keep, history)
            yield Evaluated(step, val, improved, m)
            halt = keep.stop(step, val)
            if halt is not None:
                reason, message = halt
                break

    prov = {
        "method": method.name,
        "layers": list(method.layers),
        "best_step": keep.best_step,
        "steps_run": step,
        "criterion": cfg.criterion,
        "criterion_value": keep.best_val,
        "stop_reason": reason.value,
        "config": cfg.to_dict(),
        **method.provenance(),
    }
    yield Finished(AdaptResult(
        method.kept_model(r, ema, keep.best_state), method.name, method.layers,
        keep.best_step, cfg.criterion, reason, history, step,
        message or f"{reason.value}; kept step {keep.best_step}", prov))


def _evaluate(method: Method, r: Run, ema: nn.Module, step: int, monitor) -> dict[str, float]:
    """The label-free metrics and criterion at ``step``, rank 0's on every rank.

    Every rank then takes the same decisions (keep, roll back, stop).
    """
    m = None
    if r.main:
        m = method.metrics(r, ema)
        cfg = r.config
        m["criterion"] = (abs(m["d_acc"] - 0.5) if cfg.criterion == "d_acc"
                          else m.get(cfg.criterion, 0.0))
        if monitor is not None:
            with torch.no_grad():
                logged = monitor(step, method.evaluated_model(r, ema))
            m.update({f"monitor_{k}": float(v) for k, v in logged.items()})
    return distributed.broadcast_object(m)


def _snapshot(method: Method, ema: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.kept(ema).state_dict().items()}


# ------------------------------------------------------------------ the run-state file
def _comparable(cfg: AdaptConfig) -> dict:
    """Config fields that must match for a resume (the device may differ)."""
    d = cfg.to_dict()
    d.pop("device", None)
    return d


def _write_run_state(path, method, cfg, r, step, trained, ema, keep, history) -> None:
    from ..models.checkpoint import atomic_torch_save

    atomic_torch_save({
        "format": RUN_STATE_FORMAT,
        "method": method.name,
        "layers": list(method.layers),
        "config": _comparable(cfg),
        "step": step,
        "gp": trained.state_dict(),
        "ema": ema.state_dict(),
        **method.state_dict(),
        "best_state": keep.best_state,
        "best": keep.state(),
        "history": history,
        "rng": {"source": _rng_get(r.source), "target": _rng_get(r.target),
                "torch": torch.get_rng_state()},
        **{f"scaler_{k}": sc.state_dict() for k, sc in r.scalers.items()},
    }, path)


def _read_run_state(path, method: Method, cfg: AdaptConfig) -> dict:
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(f"cannot resume from '{path}': not a readable run state "
                              f"({type(exc).__name__})") from None
    if not isinstance(st, dict) or st.get("format") != RUN_STATE_FORMAT:
        raise CheckpointError(f"cannot resume from '{path}': not a napari-lmadda run state")
    mine = {"method": method.name, "layers": list(method.layers), "config": _comparable(cfg)}
    if isinstance(st.get("config"), dict):  # fields added since the file was written: defaults
        st["config"] = {**_comparable(AdaptConfig()), **st["config"]}
    diff = [k for k in mine if st.get(k) != mine[k]]
    if diff:
        raise ConfigError(
            f"cannot resume from '{path}': it was made with other settings ({', '.join(diff)}"
            " differ); use the same options or delete the file to start afresh")
    step, best = st.get("step"), st.get("best")
    if not (isinstance(step, int) and not isinstance(step, bool) and 0 <= step <= cfg.steps
            and isinstance(best, list | tuple) and len(best) == 4
            and isinstance(best[1], int) and 0 <= best[1] <= step):
        raise CheckpointError(  # a damaged or edited file must not report "step 1380 of 0"
            f"cannot resume from '{path}': its step ({step!r}, best {best!r}) is not within "
            f"this run's 0..{cfg.steps} steps; delete the file to start afresh")
    return st


def _rng_get(sampler) -> Any:
    rng = getattr(sampler, "rng", None)
    if rng is None or not hasattr(rng, "bit_generator"):
        return None
    st = rng.bit_generator.state
    # 128-bit integers as strings: the weights_only loader takes plain containers
    return {"bit_generator": st["bit_generator"],
            "state": {k: str(v) for k, v in st["state"].items()},
            "has_uint32": int(st.get("has_uint32", 0)), "uinteger": int(st.get("uinteger", 0))}


def _rng_set(sampler, st: Any) -> None:
    rng = getattr(sampler, "rng", None)
    if st is None or rng is None or not hasattr(rng, "bit_generator"):
        return
    rng.bit_generator.state = {
        "bit_generator": st["bit_generator"],
        "state": {k: int(v) for k, v in st["state"].items()},
        "has_uint32": st["has_uint32"], "uinteger": st["uinteger"],
    }
