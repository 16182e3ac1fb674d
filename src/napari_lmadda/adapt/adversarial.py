"""The adversarial loop shared by LM-ADDA, output-layer ADDA and multi-layer LM-ADDA.

G is the frozen source model, G' a copy whose layers ``first .. last`` (default ``1 .. l``)
train so that a discriminator cannot tell ``G'_l(x')`` (target) from ``G_l(x)`` (source).
Layers after ``l`` are never touched, so G' = G'_{<=l} followed by G_{>l}.

What keeps it stable (adversarial adaptation collapses; see REFERENCE.md and
``docs/benchmarks.md`` for the measurements behind each default):

* the forward pass stops at layer ``l``; G's source taps come from ``no_grad``;
* G and G' run in the same declared BatchNorm mode; G' starts from AdaBN statistics;
* a spectrally normalised discriminator sized for the tap, least-squares loss, a smaller
  learning rate for G' than for D, and optional accuracy gating of G' updates;
* a source-consistency term: on *source* images G'_l must still equal G_l, so G' cannot
  wander off into a mapping that fools D but forgets what G computed;
* an exponential moving average of G''s weights, which is what gets evaluated and kept;
* a label-free criterion evaluated every ``eval_every`` steps on fixed patches; the best
  state is kept, divergence (non-finite losses, criterion blow-up) rolls back to it, and a
  cancel keeps it too.

Under ``torchrun`` (``WORLD_SIZE > 1``) the same loop runs in every process: each rank takes
its slice of the global batch, gradients are averaged over the ranks, the criterion is
evaluated on rank 0 and broadcast (see :mod:`napari_lmadda.adapt.distributed` for why the
result equals a single-process run up to float rounding). ``config.amp`` runs the training
forward passes under autocast (bf16 on CPU/CUDA, fp16 with gradient scaling on CUDA).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..devices import autocast_dtype, resolve_device
from ..errors import ConfigError
from ..models.discriminator import LayerDiscriminator
from ..models.unet import UNetGenerator
from . import distributed
from .adabn import adapt_batchnorm, batchnorms_upto
from .config import AdaptConfig
from .distances import diag_w2
from .events import AdaptResult, Evaluated, Event, Finished, Started, Step, StopReason
from .sampling import fixed_batch, shard_sampler, to_tensor
from .selection import KeepBest

__all__ = ["run_adversarial", "trainable_layers"]

RUN_STATE_FORMAT = "napari-lmadda-run"


def _comparable(cfg: AdaptConfig) -> dict:
    """Config fields that must match for a resume (the device may differ)."""
    d = cfg.to_dict()
    d.pop("device", None)
    return d


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


def _load_run_state(path, method: str, layers: tuple[int, ...], cfg: AdaptConfig) -> dict:
    from ..errors import CheckpointError

    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(f"cannot resume from '{path}': not a readable run state "
                              f"({type(exc).__name__})") from None
    if not isinstance(st, dict) or st.get("format") != RUN_STATE_FORMAT:
        raise CheckpointError(f"cannot resume from '{path}': not a napari-lmadda run state")
    mine = {"method": method, "layers": list(layers), "config": _comparable(cfg)}
    if isinstance(st.get("config"), dict):  # fields added since the file was written: defaults
        st["config"] = {**_comparable(AdaptConfig()), **st["config"]}
    diff = [k for k in mine if st.get(k) != mine[k]]
    if diff:
        raise ConfigError(
            f"cannot resume from '{path}': it was made with other settings ({', '.join(diff)}"
            " differ); use the same options or delete the file to start afresh")
    return st  # criterion above this multiple of its starting value counts as divergence


def trainable_layers(
    model: UNetGenerator, layers: tuple[int, ...], cfg: AdaptConfig
) -> tuple[int, int]:
    """The ``(first, last)`` layers of G' that train for matching at ``layers``."""
    for layer in layers:
        model._check_layer(layer)
    top = max(layers)
    first, last = cfg.trainable or (1, top)
    if last > top:
        raise ConfigError(
            f"trainable layers {first}..{last} go past the matched layer {top}: layers after "
            "the matched one stay the source model's"
        )
    return first, last


def kept_model(ema: UNetGenerator, best_state: dict, model: UNetGenerator) -> UNetGenerator:
    """The EMA network with the kept weights, frozen, in eval mode, with G's metadata."""
    ema.load_state_dict(best_state)
    result = ema.eval()
    for bn in batchnorms_upto(result):  # undo the momentum-0 trick of bn_mode="train"
        bn.momentum = 0.1
    result.requires_grad_(False)
    result.meta = {**getattr(model, "meta", {})}
    return result


def _set_bn_mode(model: UNetGenerator, mode: str) -> None:
    """eval: running stats; train: batch stats with running stats frozen (momentum 0)."""
    model.eval()
    if mode == "train":
        for bn in batchnorms_upto(model):
            bn.train()
            bn.momentum = 0.0


def _gan_loss(kind: str, logits: torch.Tensor, real: bool) -> torch.Tensor:
    logits = logits.float()  # losses in float32 also under autocast (no-op otherwise)
    if kind == "lsgan":
        return F.mse_loss(logits, torch.full_like(logits, 1.0 if real else 0.0))
    return F.binary_cross_entropy_with_logits(
        logits, torch.full_like(logits, 1.0 if real else 0.0)
    )


def _accuracy(kind: str, src_logits: torch.Tensor, tgt_logits: torch.Tensor) -> float:
    thr = 0.5 if kind == "lsgan" else 0.0
    return 0.5 * (
        float((src_logits > thr).float().mean()) + float((tgt_logits <= thr).float().mean())
    )


@torch.no_grad()
def _taps(
    model: UNetGenerator, x: torch.Tensor, layers, chunk: int = 8
) -> dict[int, torch.Tensor]:
    parts = [model.forward_taps(x[i : i + chunk], layers) for i in range(0, len(x), chunk)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def run_adversarial(
    model: UNetGenerator,
    source,
    target,
    *,
    layers: tuple[int, ...],
    config: AdaptConfig,
    method: str,
    cancel: Callable[[], bool] | None = None,
    monitor: Callable[[int, UNetGenerator], dict[str, float]] | None = None,
    run_state: str | os.PathLike | None = None,
) -> Iterator[Event]:
    """Adapt ``model`` by adversarial matching at ``layers``; yields typed events.

    Parameters
    ----------
    model : UNetGenerator
        Source model G (not modified).
    source, target : sampler
        Objects with ``sample() -> ndarray (B, C, P, P)`` of normalised source / target patches
        (see :mod:`napari_lmadda.adapt.sampling`).
    layers : tuple of int
        Layers matched (one for LM-ADDA, the output layer for ADDA, several for multi).
    config : AdaptConfig
        Hyper-parameters.
    method : str
        Name recorded in events and provenance.
    cancel : callable, optional
        Returns True to stop at the next step; the best state so far is kept.
    monitor : callable, optional
        ``monitor(step, model) -> dict`` called at every evaluation with the evaluated (EMA)
        model; its values are logged as ``monitor_<name>`` in the history and events but
        never used to choose the kept state (benchmarks use it to log Pearson against
        ground truth, to validate the label-free criterion).
    run_state : path, optional
        File holding the full state of the run (G', EMA, discriminator, optimisers, RNG
        states, best state, history), written atomically at every evaluation. If it exists
        when the run starts, the run resumes from it and ends where an uninterrupted run with
        the same settings would (bit-identical on the CPU). It must come from a run with the
        same method, layers and config, else :class:`ConfigError`. In a multi-process run
        only rank 0 writes it; every rank reads it when resuming.

    Yields
    ------
    Event
        ``Started``, ``Step`` per step, ``Evaluated`` per evaluation, ``Finished`` last.
        In a multi-process run every rank yields the same events with the same losses and
        criterion values (averaged over the ranks, or rank 0's); only rank 0 calls
        ``monitor``.

    Notes
    -----
    Launched by torchrun with ``WORLD_SIZE > 1``, the process group is joined here unless the
    caller already did (and then left when the generator ends). ``config.batch_size`` stays the
    global batch and must split evenly over the ranks. With ``bn_mode="train"`` each rank
    normalises with its own shard's batch statistics, so such runs match a single-process run
    less closely than the default ``eval`` mode, which has no batch statistics.
    """
    cfg = config
    device = resolve_device(cfg.device)
    with distributed.session(device):
        yield from _run(model, source, target, layers=layers, cfg=cfg, method=method,
                        device=distributed.local_device(device), cancel=cancel,
                        monitor=monitor, run_state=run_state)


def _run(model, source, target, *, layers, cfg, method, device, cancel, monitor, run_state):
    """The body of :func:`run_adversarial`, inside its process group (if any)."""
    layers = tuple(sorted({int(v) for v in layers}))
    if not layers:
        raise ConfigError("no layer to match")
    first, last = trainable_layers(model, layers, cfg)
    top, n_layers = max(layers), model.num_layers
    multi, rank, world = distributed.is_active(), distributed.rank(), distributed.world_size()
    main = rank == 0
    distributed.per_rank_batch(cfg.batch_size, world)
    amp_dtype = autocast_dtype(cfg.amp, device)

    def autocast():
        if amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    # fp16 gradients underflow without loss scaling; bf16 has float32's exponent range
    scalers = ([torch.amp.GradScaler(device.type) for _ in range(2)]
               if amp_dtype == torch.float16 else [None, None])
    scaler_d, scaler_g = scalers
    torch.manual_seed(cfg.seed)

    G = copy.deepcopy(model).to(device)
    G.requires_grad_(False)
    Gp = copy.deepcopy(model).to(device)
    Gp.requires_grad_(False)
    train_blocks = [Gp.block(i) for i in range(first, last + 1)]
    params = [p for b in train_blocks for p in b.parameters()]
    for p in params:
        p.requires_grad_(True)
    if not params:
        raise ConfigError(f"layers {first}..{last} have no trainable parameters")

    eval_src = to_tensor(fixed_batch(source, cfg.eval_patches, cfg.seed + 1), device)
    eval_tgt = to_tensor(fixed_batch(target, cfg.eval_patches, cfg.seed + 2), device)
    if cfg.init_adabn and batchnorms_upto(Gp, last):
        chunks = [
            eval_tgt[i : i + cfg.batch_size] for i in range(0, len(eval_tgt), cfg.batch_size)
        ]
        adapt_batchnorm(Gp, chunks, upto=last)
    distributed.broadcast_module_(Gp)  # every rank starts from rank 0's G' (as DDP does)
    _set_bn_mode(G, cfg.bn_mode)
    _set_bn_mode(Gp, cfg.bn_mode)
    ema = copy.deepcopy(Gp).requires_grad_(False) if cfg.ema_decay > 0 else Gp
    ema_params = [
        p for b in (ema.block(i) for i in range(first, last + 1)) for p in b.parameters()
    ]

    size = cfg.patch_size
    info = {i.index: i for i in Gp.describe_layers(size)}
    D = torch.nn.ModuleDict(
        {
            str(layer): LayerDiscriminator(
                info[layer].channels,
                min(info[layer].height, info[layer].width),
                ndf=cfg.ndf,
                spectral_norm=cfg.d_spectral_norm,
            )
            for layer in layers
        }
    ).to(device)
    distributed.broadcast_module_(D)
    d_params = list(D.parameters())
    # each rank draws the global batch positions and reads its own slice of them
    source, target = shard_sampler(source, rank, world), shard_sampler(target, rank, world)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    opt_g = torch.optim.Adam(params, lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))

    # reference activations of the frozen G on the fixed source patches (for the criterion)
    eval_layers = tuple(range(top, n_layers + 1))
    tap_layers = tuple(sorted(set(eval_layers) | set(layers)))
    # G is frozen: computed once; only rank 0 evaluates
    ref_src = _taps(G, eval_src, tap_layers) if main else {}

    def evaluate(net: UNetGenerator) -> dict[str, float]:
        tgt = _taps(net, eval_tgt, tap_layers)
        src_p = _taps(net, eval_src, (n_layers,))[n_layers]
        gaps = [diag_w2(ref_src[k], tgt[k]) for k in eval_layers]
        drift = float((src_p - ref_src[n_layers]).abs().mean() / (ref_src[n_layers].std() + 1e-6))
        with torch.no_grad():
            accs = [
                _accuracy(cfg.gan_loss, D[str(k)](ref_src[k]), D[str(k)](tgt[k])) for k in layers
            ]
        m = {
            "gap": float(sum(gaps) / len(gaps)) + drift,
            "tap_w2": diag_w2(ref_src[top], tgt[top]),
            "out_w2": gaps[-1],
            "source_drift": drift,
            "d_acc": float(sum(accs) / len(accs)),
        }
        m["criterion"] = (
            abs(m["d_acc"] - 0.5) if cfg.criterion == "d_acc" else m.get(cfg.criterion, 0.0)
        )
        if monitor is not None:
            m.update({f"monitor_{k}": float(v) for k, v in monitor(step, net).items()})
        return m

    def evaluate_everywhere(net: UNetGenerator) -> dict[str, float]:
        # rank 0's numbers on every rank: all ranks then take the same decisions
        return distributed.broadcast_object(evaluate(net) if main else None)

    def backward_step(loss, opt, scaler, grads_of) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if multi:
            distributed.all_reduce_mean_([p.grad for p in grads_of if p.grad is not None])
        if scaler is not None:  # inf/nan checks see the averaged grads: same on every rank
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in ema.state_dict().items()}

    def save_run_state() -> None:
        from ..models.checkpoint import atomic_torch_save

        atomic_torch_save(
            {
                "format": RUN_STATE_FORMAT,
                "method": method,
                "layers": list(layers),
                "config": _comparable(cfg),
                "step": step,
                "gp": Gp.state_dict(),
                "ema": ema.state_dict(),
                "d": D.state_dict(),
                "opt_d": opt_d.state_dict(),
                "opt_g": opt_g.state_dict(),
                "best_state": keep.best_state,
                "best": keep.state(),
                "history": history,
                "rng": {"source": _rng_get(source), "target": _rng_get(target),
                        "torch": torch.get_rng_state()},
                **({"scaler_d": scaler_d.state_dict(), "scaler_g": scaler_g.state_dict()}
                   if scaler_d is not None else {}),
            },
            run_state,
        )

    n_params = sum(p.numel() for p in params)
    yield Started(method, layers, cfg.steps, n_params, str(device), cfg.bn_mode, cfg.criterion)

    history: list[dict[str, Any]] = []
    keep = KeepBest(cfg.criterion, cfg.patience)
    step = 0
    if run_state is not None and Path(run_state).exists():
        st = _load_run_state(run_state, method, layers, cfg)
        Gp.load_state_dict(st["gp"])
        ema.load_state_dict(st["ema"])
        D.load_state_dict(st["d"])
        opt_d.load_state_dict(st["opt_d"])
        opt_g.load_state_dict(st["opt_g"])
        if scaler_d is not None and "scaler_d" in st:
            scaler_d.load_state_dict(st["scaler_d"])
            scaler_g.load_state_dict(st["scaler_g"])
        history = list(st["history"])
        keep.restore(st["best"], st["best_state"])
        _rng_set(source, st["rng"]["source"])
        _rng_set(target, st["rng"]["target"])
        torch.set_rng_state(st["rng"]["torch"])
        first_step = int(st["step"]) + 1
    else:
        m0 = evaluate_everywhere(ema)
        keep.begin(m0["criterion"], snapshot())
        history.append({"step": 0, **m0})
        yield Evaluated(0, m0["criterion"], True, m0)
        first_step = 1

    reason, message = StopReason.COMPLETED, ""
    t0 = time.perf_counter()
    nan = float("nan")
    for step in range(first_step, cfg.steps + 1):
        stop = cancel is not None and cancel()
        if multi:  # a cancel on any rank stops every rank at the same step
            stop = distributed.any_flag(stop, device)
        if stop:
            reason, step = StopReason.CANCELLED, step - 1
            message = f"cancelled after {step} steps; kept the state of step {keep.best_step}"
            break
        xs = to_tensor(source.sample(), device)
        xt = to_tensor(target.sample(), device)
        with torch.no_grad(), autocast():
            fs = G.forward_taps(xs, layers)
        with autocast():
            ft = Gp.forward_taps(xt, layers)

        # (1) discriminator: source taps are "real", target taps "fake"
        opt_d.zero_grad(set_to_none=True)
        loss_d = torch.zeros((), device=device)
        accs = []
        for k in layers:
            with autocast():
                ls, lt = D[str(k)](fs[k]), D[str(k)](ft[k].detach())
            loss_d = loss_d + 0.5 * (
                _gan_loss(cfg.gan_loss, ls, True) + _gan_loss(cfg.gan_loss, lt, False)
            )
            accs.append(_accuracy(cfg.gan_loss, ls, lt))
        backward_step(loss_d, opt_d, scaler_d, d_params)
        acc, ld = float(sum(accs) / len(accs)), loss_d.item()
        if multi:  # global-batch values: the gate below is taken identically on every rank
            acc, ld = distributed.mean_scalars([acc, ld], device)

        # (2) G': target taps labelled "source", plus consistency on source images
        g_updated = acc >= cfg.d_gate
        loss_g_val, loss_src_val = nan, nan
        if g_updated:
            opt_g.zero_grad(set_to_none=True)
            with autocast():
                logits = [D[str(k)](ft[k]) for k in layers]
            loss_g = sum(_gan_loss(cfg.gan_loss, lg, True) for lg in logits)
            total = loss_g
            if cfg.source_weight > 0:
                with autocast():
                    fsp = Gp.forward_taps(xs, layers)
                # the spread of G's taps over the *global* batch (a per-rank spread would
                # make the shards' gradients differ from the single-process one)
                spread = {k: distributed.global_std(fs[k].float()) for k in layers}
                loss_src = sum(
                    (fsp[k].float() - fs[k].float()).abs().mean() / (spread[k] + 1e-6)
                    for k in layers
                ) / len(layers)
                total = total + cfg.source_weight * loss_src
                loss_src_val = loss_src.item()
            backward_step(total, opt_g, scaler_g, params)
            loss_g_val = loss_g.item()
            if multi:
                loss_g_val, loss_src_val = distributed.mean_scalars(
                    [loss_g_val, loss_src_val], device)
            if ema is not Gp:
                with torch.no_grad():
                    torch._foreach_lerp_(ema_params, params, 1.0 - cfg.ema_decay)
        elapsed = time.perf_counter() - t0
        yield Step(
            step,
            cfg.steps,
            ld,
            loss_g_val,
            loss_src_val,
            acc,
            g_updated,
            elapsed,
            elapsed / (step - first_step + 1) * (cfg.steps - step),
        )

        if not math.isfinite(ld) or (g_updated and not math.isfinite(loss_g_val)):
            reason = StopReason.DIVERGED
            message = (f"losses became non-finite at step {step}; "
                       f"rolled back to step {keep.best_step}")
            break
        if step % cfg.eval_every == 0 or step == cfg.steps:
            m = evaluate_everywhere(ema)
            val = m["criterion"]
            improved = keep.offer(step, val, snapshot)
            history.append({"step": step, **m})
            if run_state is not None and main:
                save_run_state()
            yield Evaluated(step, val, improved, m)
            halt = keep.stop(step, val)
            if halt is not None:
                reason, message = halt
                break

    result = kept_model(ema, keep.best_state, model)
    prov = {
        "method": method,
        "layers": list(layers),
        "trainable_layers": [first, last],
        "best_step": keep.best_step,
        "steps_run": step,
        "criterion": cfg.criterion,
        "criterion_value": keep.best_val,
        "stop_reason": reason.value,
        "config": cfg.to_dict(),
        "processes": world,
    }
    yield Finished(
        AdaptResult(
            result,
            method,
            layers,
            keep.best_step,
            cfg.criterion,
            reason,
            history,
            step,
            message or f"{reason.value}; kept step {keep.best_step}",
            prov,
        )
    )
