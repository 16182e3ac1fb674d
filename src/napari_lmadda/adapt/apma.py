"""APMA: adversarial-prediction guided multi-task adaptation (Yi, Yuan and Peng; seed).

The seed adapts a segmentation U-Net with three parts, each selectable here with
``AdaptConfig.apma_parts`` (its ablation rows ``en``, ``de_feat``, ``de_pred``, ``en+de_feat``
and ``all``):

* **EN** (encoding-stage adaptation): a reconstruction decoder R on the shared encoder
  rebuilds the input image of *both* domains from the encoder tap ``e_l`` (default the
  bottleneck; ``layers=(l,)`` with ``l <= num_downs`` chooses another). R has no skip
  connections, so the tap itself has to carry the target image.
* **DE_feat**: a discriminator on the last decoder features before the output layer
  (layer ``2 * num_downs - 1``).
* **DE_pred**: a discriminator on the predictions (the output layer, as in ADDA).

Our setting differs from the seed's in one point: there are no source labels, only unlabeled
source images and the frozen source model G. The seed's supervised segmentation loss on
source images is therefore replaced by a consistency term with G's own predictions on those
images (pseudo-labels): ``|G'(x) - G(x)| / std(G(x))`` on source patches, weighted by
``AdaptConfig.source_weight``. The discriminators take G's source features / predictions
as "real" (as the project's ADDA does): the consistency term ties G'(x) to G(x) anyway, and a
fixed reference is steadier than the moving G'(x).

G' loss (the seed's Eq. 6): ``source_weight * L_src + apma_rec_weight * L_rec + L_feat' +
L_pred'`` with least-squares (or BCE) adversarial terms; R is first fitted alone through the
frozen encoder for ``apma_warmup`` steps so that its first gradients into the encoder are not
those of a random decoder. G''s layers ``1 .. top`` train, ``top`` being the deepest layer a
selected part uses (EN only: the encoder up to ``l``; with DE_feat: up to ``2n - 1``; with
DE_pred: every layer); ``AdaptConfig.trainable`` narrows that.

The rest is the project's adversarial machinery (see :mod:`.adversarial`): EMA weights, the
label-free criterion on fixed patches (feature gap from the top layer to the output plus the
source drift) choosing the kept state, rollback on divergence, cancel keeping the best state,
and an optional run-state file for resuming. R and the discriminators are training-only: the
result is a plain :class:`UNetGenerator`, saved and loaded like any model.

``Step.loss_g`` is G''s loss without the source term (adversarial + weighted reconstruction);
``Step.loss_d`` and ``Step.d_acc`` are ``nan`` when no discriminator is used (``en``).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import resolve_device
from ..errors import ConfigError
from ..models.discriminator import LayerDiscriminator
from ..models.unet import UNetGenerator
from .adversarial import (
    RUN_STATE_FORMAT,
    _accuracy,
    _comparable,
    _gan_loss,
    _load_run_state,
    _rng_get,
    _rng_set,
    _set_bn_mode,
    _taps,
    kept_model,
    trainable_layers,
)
from .config import APMA_PARTS, AdaptConfig
from .distances import diag_w2
from .events import AdaptResult, Evaluated, Event, Finished, Started, Step, StopReason
from .sampling import fixed_batch, to_tensor
from .selection import KeepBest

__all__ = ["NAME", "run", "parse_parts", "ReconstructionDecoder", "apma_layers"]

NAME = "apma"


def parse_parts(spec: str) -> frozenset[str]:
    """``"all"`` or ``"en+de_feat"`` -> the set of parts (validated like :class:`AdaptConfig`).

    Raises
    ------
    ConfigError
        For an unknown or repeated part.
    """
    s = str(spec).strip().lower().replace(" ", "")
    if s == "all":
        return frozenset(APMA_PARTS)
    names = s.split("+")
    if any(n not in APMA_PARTS for n in names) or len(set(names)) != len(names):
        raise ConfigError(
            f"apma_parts must be 'all' or parts joined by '+' from {', '.join(APMA_PARTS)} "
            f"(e.g. en+de_feat), got {spec!r}"
        )
    return frozenset(names)


def apma_layers(
    model: UNetGenerator, parts: frozenset[str], layers: tuple[int, ...] = ()
) -> tuple[int | None, tuple[int, ...]]:
    """The EN encoder tap (None without EN) and the discriminated layers of ``parts``.

    ``layers`` chooses the EN tap (one layer ``<= num_downs``; default the bottleneck) and is
    ignored without EN.
    """
    n = model.num_downs
    en_layer = None
    if "en" in parts:
        if len(layers) > 1:
            raise ConfigError(
                f"apma takes one encoder layer for its reconstruction decoder, got {list(layers)}"
            )
        en_layer = int(layers[0]) if layers else n
        if not 1 <= en_layer <= n:
            raise ConfigError(
                f"apma's reconstruction decoder reads an encoder layer (1..{n}), got {en_layer}"
            )
    d_layers = tuple(
        layer
        for part, layer in (("de_feat", 2 * n - 1), ("de_pred", 2 * n))
        if part in parts
    )
    return en_layer, d_layers


class ReconstructionDecoder(nn.Module):
    """Rebuild the input image from one encoder tap (training-only; no skip connections).

    ``LeakyReLU(0.2)`` first (a tap is the block output before the activation the next block
    applies), then ``n_up`` transposed 4x4 stride-2 convolutions halving the width (at least
    ``min(in_channels, 16)``) with ReLUs between them; the last one is linear to ``out_channels``.

    Parameters
    ----------
    in_channels : int
        Channels of the tap.
    out_channels : int
        Channels of the image.
    n_up : int
        Factor-2 upsamplings (the tap's layer index).
    """

    def __init__(self, in_channels: int, out_channels: int, n_up: int) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.LeakyReLU(0.2)]
        ch, floor = in_channels, min(in_channels, 16)
        for i in range(n_up):
            last = i == n_up - 1
            nxt = out_channels if last else max(floor, ch // 2)
            mods.append(nn.ConvTranspose2d(ch, nxt, 4, stride=2, padding=1))
            if not last:
                mods.append(nn.ReLU())
            ch = nxt
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.net(x)


def run(
    model: UNetGenerator,
    source,
    target,
    *,
    layers: tuple[int, ...] = (),
    config: AdaptConfig,
    cancel: Callable[[], bool] | None = None,
    monitor: Callable[[int, UNetGenerator], dict[str, float]] | None = None,
    run_state: str | os.PathLike | None = None,
) -> Iterator[Event]:
    """Adapt ``model`` with the APMA parts of ``config.apma_parts``; yields typed events.

    Parameters
    ----------
    model : UNetGenerator
        Source model G (not modified).
    source, target : sampler
        ``sample() -> (B, C, P, P)`` normalised source / target patches.
    layers : tuple of int
        Optional encoder layer read by the reconstruction decoder (EN; default the
        bottleneck); ignored without EN.
    config : AdaptConfig
        Hyper-parameters; ``apma_parts``, ``apma_rec_weight`` and ``apma_warmup`` are APMA's.
    cancel : callable, optional
        Returns True to stop at the next step; the best state so far is kept.
    monitor : callable, optional
        ``monitor(step, model) -> dict`` logged at every evaluation (never used to choose).
    run_state : path, optional
        Run-state file written at every evaluation and resumed from when it exists (see
        :func:`~napari_lmadda.adapt.adversarial.run_adversarial`).

    Yields
    ------
    Event
        ``Started``, ``Step`` per step, ``Evaluated`` per evaluation, ``Finished`` last.
    """
    cfg = config
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("apma runs in a single process: start it without torchrun")
    if getattr(cfg, "amp", "off") != "off":
        raise ConfigError(f"apma trains in float32 only: use amp 'off', not {cfg.amp!r}")
    parts = parse_parts(cfg.apma_parts)
    n_layers = model.num_layers
    en_layer, d_layers = apma_layers(model, parts, tuple(layers))
    used = tuple(sorted({*d_layers, *((en_layer,) if en_layer else ())}))
    top = max(used)
    first, last = trainable_layers(model, (top,), cfg)
    if cfg.criterion == "d_acc" and not d_layers:
        raise ConfigError("criterion d_acc needs a discriminator: apma_parts 'en' has none")
    use_rec = en_layer is not None
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)

    G = copy.deepcopy(model).to(device)
    G.requires_grad_(False)
    Gp = copy.deepcopy(model).to(device)
    Gp.requires_grad_(False)
    params = [p for i in range(first, last + 1) for p in Gp.block(i).parameters()]
    for p in params:
        p.requires_grad_(True)
    if not params:
        raise ConfigError(f"layers {first}..{last} have no trainable parameters")

    eval_src = to_tensor(fixed_batch(source, cfg.eval_patches, cfg.seed + 1), device)
    eval_tgt = to_tensor(fixed_batch(target, cfg.eval_patches, cfg.seed + 2), device)
    _set_bn_mode(G, cfg.bn_mode)
    _set_bn_mode(Gp, cfg.bn_mode)
    ema = copy.deepcopy(Gp).requires_grad_(False) if cfg.ema_decay > 0 else Gp
    ema_params = [p for i in range(first, last + 1) for p in ema.block(i).parameters()]

    info = {i.index: i for i in Gp.describe_layers(cfg.patch_size)}
    D = nn.ModuleDict(
        {
            str(k): LayerDiscriminator(
                info[k].channels,
                min(info[k].height, info[k].width),
                ndf=cfg.ndf,
                spectral_norm=cfg.d_spectral_norm,
            )
            for k in d_layers
        }
    ).to(device)
    R = (
        ReconstructionDecoder(info[en_layer].channels, model.config.in_channels, en_layer)
        if use_rec
        else nn.Module()
    ).to(device)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2)) if (
        d_layers
    ) else None
    opt_r = torch.optim.Adam(R.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2)) if (
        use_rec
    ) else None
    opt_g = torch.optim.Adam(params, lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))

    eval_layers = tuple(range(top, n_layers + 1))
    tap_layers = tuple(sorted(set(eval_layers) | set(used)))
    ref_src = _taps(G, eval_src, tap_layers)

    def rec_loss(tap: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(R(tap), x)

    def evaluate(net: UNetGenerator) -> dict[str, float]:
        tgt = _taps(net, eval_tgt, tap_layers)
        src_p = _taps(net, eval_src, (n_layers,))[n_layers]
        gaps = [diag_w2(ref_src[k], tgt[k]) for k in eval_layers]
        drift = float((src_p - ref_src[n_layers]).abs().mean() / (ref_src[n_layers].std() + 1e-6))
        m = {
            "gap": float(sum(gaps) / len(gaps)) + drift,
            "tap_w2": diag_w2(ref_src[top], tgt[top]),
            "out_w2": gaps[-1],
            "source_drift": drift,
        }
        with torch.no_grad():
            if d_layers:
                accs = [
                    _accuracy(cfg.gan_loss, D[str(k)](ref_src[k]), D[str(k)](tgt[k]))
                    for k in d_layers
                ]
                m["d_acc"] = float(sum(accs) / len(accs))
            if use_rec:
                m["rec_target"] = float(rec_loss(tgt[en_layer], eval_tgt))
        m["criterion"] = (
            abs(m["d_acc"] - 0.5) if cfg.criterion == "d_acc" else m.get(cfg.criterion, 0.0)
        )
        if monitor is not None:
            m.update({f"monitor_{k}": float(v) for k, v in monitor(step, net).items()})
        return m

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in ema.state_dict().items()}

    def save_run_state() -> None:
        from ..models.checkpoint import atomic_torch_save

        atomic_torch_save(
            {
                "format": RUN_STATE_FORMAT,
                "method": NAME,
                "layers": list(used),
                "config": _comparable(cfg),
                "step": step,
                "gp": Gp.state_dict(),
                "ema": ema.state_dict(),
                "d": D.state_dict(),
                "r": R.state_dict(),
                "opt_d": opt_d.state_dict() if opt_d else {},
                "opt_r": opt_r.state_dict() if opt_r else {},
                "opt_g": opt_g.state_dict(),
                "best_state": keep.best_state,
                "best": keep.state(),
                "history": history,
                "rng": {"source": _rng_get(source), "target": _rng_get(target),
                        "torch": torch.get_rng_state()},
            },
            run_state,
        )

    n_params = sum(p.numel() for p in params)
    yield Started(NAME, used, cfg.steps, n_params, str(device), cfg.bn_mode, cfg.criterion)

    history: list[dict[str, Any]] = []
    keep = KeepBest(cfg.criterion, cfg.patience)
    step = 0
    reason, message = StopReason.COMPLETED, ""
    resumed = run_state is not None and Path(run_state).exists()
    if resumed:
        st = _load_run_state(run_state, NAME, used, cfg)
        Gp.load_state_dict(st["gp"])
        ema.load_state_dict(st["ema"])
        D.load_state_dict(st["d"])
        R.load_state_dict(st["r"])
        if opt_d:
            opt_d.load_state_dict(st["opt_d"])
        if opt_r:
            opt_r.load_state_dict(st["opt_r"])
        opt_g.load_state_dict(st["opt_g"])
        history = list(st["history"])
        keep.restore(st["best"], st["best_state"])
        _rng_set(source, st["rng"]["source"])
        _rng_set(target, st["rng"]["target"])
        torch.set_rng_state(st["rng"]["torch"])
        first_step = int(st["step"]) + 1
    else:
        keep.best_state = snapshot()  # kept if cancelled during the warm-up
        first_step = 1
        # fit R alone through the frozen encoder: its first gradients must not be noise
        for _ in range(cfg.apma_warmup if use_rec and cfg.apma_rec_weight > 0 else 0):
            if cancel is not None and cancel():
                reason, step = StopReason.CANCELLED, 0
                message = "cancelled while fitting the reconstruction decoder: source model kept"
                first_step = cfg.steps + 1  # skip training
                break
            xs = to_tensor(source.sample(), device)
            xt = to_tensor(target.sample(), device)
            with torch.no_grad():
                ts = G.forward_taps(xs, (en_layer,))[en_layer]
                tt = G.forward_taps(xt, (en_layer,))[en_layer]
            opt_r.zero_grad(set_to_none=True)
            (rec_loss(ts, xs) + rec_loss(tt, xt)).backward()
            opt_r.step()
        if reason is StopReason.COMPLETED:
            m0 = evaluate(ema)
            keep.begin(m0["criterion"], snapshot())
            history.append({"step": 0, **m0})
            yield Evaluated(0, m0["criterion"], True, m0)

    t0 = time.perf_counter()
    nan = float("nan")
    src_layers = tuple(sorted({n_layers, *d_layers}))
    gp_src_layers = tuple(sorted(
        {*((n_layers,) if cfg.source_weight > 0 else ()), *((en_layer,) if use_rec else ())}
    ))
    gp_tgt_layers = used
    for step in range(first_step, cfg.steps + 1):
        if cancel is not None and cancel():
            reason, step = StopReason.CANCELLED, step - 1
            message = f"cancelled after {step} steps; kept the state of step {keep.best_step}"
            break
        xs = to_tensor(source.sample(), device)
        xt = to_tensor(target.sample(), device)
        with torch.no_grad():
            fs = G.forward_taps(xs, src_layers)
        ft = Gp.forward_taps(xt, gp_tgt_layers)

        # (1) discriminators: G's source features / predictions "real", G''s target "fake"
        ld, acc = nan, nan
        if d_layers:
            opt_d.zero_grad(set_to_none=True)
            loss_d = torch.zeros((), device=device)
            accs = []
            for k in d_layers:
                ls, lt = D[str(k)](fs[k]), D[str(k)](ft[k].detach())
                loss_d = loss_d + 0.5 * (
                    _gan_loss(cfg.gan_loss, ls, True) + _gan_loss(cfg.gan_loss, lt, False)
                )
                accs.append(_accuracy(cfg.gan_loss, ls, lt))
            loss_d.backward()
            opt_d.step()
            ld, acc = loss_d.item(), float(sum(accs) / len(accs))

        # (2) G' (and R): adversarial + reconstruction on both domains + source consistency
        g_updated = not d_layers or acc >= cfg.d_gate
        loss_g_val, loss_src_val = nan, nan
        if g_updated:
            opt_g.zero_grad(set_to_none=True)
            if opt_r:
                opt_r.zero_grad(set_to_none=True)
            loss_g = torch.zeros((), device=device)
            for k in d_layers:
                loss_g = loss_g + _gan_loss(cfg.gan_loss, D[str(k)](ft[k]), True)
            fsp = Gp.forward_taps(xs, gp_src_layers) if gp_src_layers else {}
            if use_rec:
                rec = rec_loss(ft[en_layer], xt) + rec_loss(fsp[en_layer], xs)
                loss_g = loss_g + cfg.apma_rec_weight * rec
            total = loss_g
            if cfg.source_weight > 0:
                ref = fs[n_layers]
                loss_src = (fsp[n_layers] - ref).abs().mean() / (ref.std() + 1e-6)
                total = total + cfg.source_weight * loss_src
                loss_src_val = loss_src.item()
            total.backward()
            opt_g.step()
            if opt_r:
                opt_r.step()
            loss_g_val = loss_g.item()
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

        g_finite = math.isfinite(loss_g_val) and (
            cfg.source_weight == 0 or math.isfinite(loss_src_val)
        )
        if (d_layers and not math.isfinite(ld)) or (g_updated and not g_finite):
            reason = StopReason.DIVERGED
            message = (f"losses became non-finite at step {step}; "
                       f"rolled back to step {keep.best_step}")
            break
        if step % cfg.eval_every == 0 or step == cfg.steps:
            m = evaluate(ema)
            val = m["criterion"]
            improved = keep.offer(step, val, snapshot)
            history.append({"step": step, **m})
            if run_state is not None:
                save_run_state()
            yield Evaluated(step, val, improved, m)
            halt = keep.stop(step, val)
            if halt is not None:
                reason, message = halt
                break

    result = kept_model(ema, keep.best_state, model)
    prov = {
        "method": NAME,
        "apma_parts": "+".join(p for p in APMA_PARTS if p in parts),
        "encoder_layer": en_layer,
        "layers": list(used),
        "trainable_layers": [first, last],
        "best_step": keep.best_step,
        "steps_run": step,
        "criterion": cfg.criterion,
        "criterion_value": keep.best_val,
        "stop_reason": reason.value,
        "config": cfg.to_dict(),
    }
    yield Finished(
        AdaptResult(
            result,
            NAME,
            used,
            keep.best_step,
            cfg.criterion,
            reason,
            history,
            step,
            message or f"{reason.value}; kept step {keep.best_step}",
            prov,
        )
    )
