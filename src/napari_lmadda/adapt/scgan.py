"""SCGAN: image-level adaptation with a self-supervised CycleGAN (Bourou et al., NeurIPS 2022).

Instead of changing the source model G, SCGAN learns to translate new-microscope images
into the source style and then runs G, unchanged, on the translation. It is an unpaired
CycleGAN (Zhu et al. 2017) whose two discriminators get a self-supervised task so that
they learn useful features from tens to a few hundred images:

* two translators, T: target -> source (the one kept) and F: source -> target, small
  ResNet generators (:class:`~napari_lmadda.models.translated.Translator`) that start as
  the identity;
* two PatchGAN discriminators D_s and D_t with least-squares (LSGAN) losses;
* self-supervision as in the seed paper (Liu et al. 2021, FastGAN): each discriminator's
  encoder features feed a small decoder that must reconstruct, from *real* images only,
  (a) the whole image at half resolution and (b) a random quadrant of it from the
  matching quadrant of the features; the L1 reconstruction loss is added to D's loss;
* cycle consistency ``|F(T(y)) - y| + |T(F(x)) - x|`` (weight ``scgan_cycle``, 10 in the
  paper) and identity ``|T(x) - x| + |F(y) - y|`` (weight ``scgan_identity``, 0.5);
* Adam (``scgan_lr``, betas ``beta1``, ``beta2``) for both translators and both
  discriminators, an EMA of the translators' weights (``ema_decay``) that is what gets
  evaluated and kept;
* for the CPU: small translators (``scgan_ngf`` 8, ``scgan_blocks`` 3, where CycleGAN has
  64 and 9) trained on random ``scgan_crop`` (64 px) crops of the sampled patches.

Label-free selection (``criterion="gap"``, the default): every ``eval_every`` steps, on
fixed patches, the per-channel Wasserstein distance
(:func:`~napari_lmadda.adapt.distances.diag_w2`) between G's activations on translated
target patches and on source patches, averaged over G's layers from the bottleneck to the
output, plus the relative cycle error ``|F(T(y)) - y| / std(y)`` on the target patches
(a translation that looks like the source but lost the target's content pays for it there).
``tap_w2`` uses the bottleneck distance alone, ``d_acc`` D_s's accuracy nearest 0.5,
``last`` the final state. The best state is kept; a cancel keeps it too.

The result is a :class:`~napari_lmadda.models.translated.TranslatedModel` ``G(T(x))``,
saved and loaded like any model file and used as is by ``lmadda predict``.

On the synthetic bright-field benchmark (demo model, 600 steps, seed 0), the paper's
learning rate 2e-4 with ``ema_decay`` 0.995 left the translator close to the identity
(the criterion kept step 0: Pearson = no adaptation); ``scgan_lr=1e-3, ema_decay=0.95``
kept step 500 (test Pearson DAPI 0.800 -> 0.819, CD29 0.633 -> 0.646; FID at the bottleneck
998 -> 606). CycleGAN-style translation usually trains for far more steps than a CPU run
allows; with a GPU, use more steps.
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
from ..models.translated import TranslatedModel, Translator, TranslatorConfig
from ..models.unet import UNetGenerator
from .adversarial import RUN_STATE_FORMAT, _comparable, _load_run_state, _rng_get, _rng_set
from .config import AdaptConfig
from .distances import diag_w2
from .events import AdaptResult, Evaluated, Event, Finished, Started, Step, StopReason
from .sampling import fixed_batch, to_tensor
from .selection import KeepBest

__all__ = ["NAME", "run", "SSDiscriminator"]

NAME = "scgan"


class SSDiscriminator(nn.Module):
    """LSGAN PatchGAN discriminator with a self-supervised reconstruction decoder.

    The encoder has three stride-2 convs (features at 1/8 of the input side); a 3x3 conv
    turns them into a map of real/fake scores. The decoder (four convs, two x2
    up-samplings) maps features back to an image at 1/2 of the input side.

    Parameters
    ----------
    channels : int
        Image channels.
    ndf : int
        Width of the first conv (doubles twice).
    """

    def __init__(self, channels: int = 1, ndf: int = 16) -> None:
        super().__init__()
        c1, c2, c3 = ndf, ndf * 2, ndf * 4
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, c1, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.InstanceNorm2d(c2), nn.LeakyReLU(0.2),
            nn.Conv2d(c2, c3, 4, stride=2, padding=1), nn.InstanceNorm2d(c3), nn.LeakyReLU(0.2),
        )
        self.head = nn.Conv2d(c3, 1, 3, padding=1)
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c3, c2, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c2, c1, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c1, c1, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(c1, channels, 3, padding=1),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch scores (about 1 = real, 0 = fake under the LSGAN loss)."""
        return self.head(self.encoder(x))

    def ssl_loss(self, x: torch.Tensor, quadrant: int) -> torch.Tensor:
        """Reconstruction loss on real images ``x`` (whole image and one quadrant).

        Parameters
        ----------
        x : torch.Tensor
            Real images ``(B, C, H, W)``, sides multiples of 16.
        quadrant : int
            0..3, which quadrant of the features (and the image) the second term uses.
        """
        f = self.encoder(x)
        small = F.avg_pool2d(x, 2)
        whole = F.l1_loss(self.decoder(f), small)
        fh, fw = f.shape[-2] // 2, f.shape[-1] // 2
        sh, sw = small.shape[-2] // 2, small.shape[-1] // 2
        r, c = divmod(int(quadrant), 2)
        fq = f[..., r * fh : (r + 1) * fh, c * fw : (c + 1) * fw]
        xq = small[..., r * sh : (r + 1) * sh, c * sw : (c + 1) * sw]
        part = F.l1_loss(self.decoder(fq), xq)
        return whole + part


def _lsgan(scores: torch.Tensor, real: bool) -> torch.Tensor:
    return F.mse_loss(scores, torch.full_like(scores, 1.0 if real else 0.0))


@torch.no_grad()
def _apply(net: nn.Module, x: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    return torch.cat([net(x[i : i + chunk]) for i in range(0, len(x), chunk)])


@torch.no_grad()
def _taps(model: nn.Module, x: torch.Tensor, layers, chunk: int = 8) -> dict[int, torch.Tensor]:
    parts = [model.forward_taps(x[i : i + chunk], layers) for i in range(0, len(x), chunk)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """A random ``size`` x ``size`` crop of a batch (one offset per batch; 0 = no crop)."""
    h, w = x.shape[-2:]
    if size <= 0 or (size >= h and size >= w):
        return x
    sh, sw = min(size, h), min(size, w)
    r = int(torch.randint(0, h - sh + 1, (1,)))
    c = int(torch.randint(0, w - sw + 1, (1,)))
    return x[..., r : r + sh, c : c + sw]


def run(
    model: UNetGenerator,
    source,
    target,
    *,
    layers: tuple[int, ...] = (),
    config: AdaptConfig,
    cancel: Callable[[], bool] | None = None,
    monitor: Callable[[int, Any], dict[str, float]] | None = None,
    run_state: str | os.PathLike | None = None,
) -> Iterator[Event]:
    """Train the SCGAN translators and yield typed events; ``layers`` is ignored.

    Parameters
    ----------
    model : UNetGenerator
        The source model G (not modified; it is part of the result unchanged).
    source, target : sampler
        Objects with ``sample() -> ndarray (B, C, P, P)`` of normalised source / target
        patches (``P`` a multiple of 16).
    config : AdaptConfig
        ``steps``, ``batch_size``, ``patch_size``, ``scgan_*``, ``ndf``, ``beta1``,
        ``beta2``, ``ema_decay``, ``eval_every``, ``eval_patches``, ``criterion``,
        ``patience``, ``seed``, ``device``.
    cancel : callable, optional
        Returns True to stop at the next step; the best state so far is kept.
    monitor : callable, optional
        ``monitor(step, model) -> dict`` with the evaluated translated model; logged as
        ``monitor_<name>``, never used for selection.
    run_state : path, optional
        File holding the whole state of the run, written atomically at every evaluation;
        if it exists at the start the run resumes from it (same settings required).

    Yields
    ------
    Event
        ``Started``, ``Step`` per step, ``Evaluated`` per evaluation, ``Finished`` last.
    """
    cfg = config
    if cfg.patch_size % 16:
        raise ConfigError(f"scgan needs a patch size that is a multiple of 16, got "
                          f"{cfg.patch_size}")
    channels = model.config.in_channels
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)

    G = copy.deepcopy(model).to(device).eval()
    G.requires_grad_(False)
    tcfg = TranslatorConfig(channels=channels, ngf=cfg.scgan_ngf, n_blocks=cfg.scgan_blocks)
    T = Translator(tcfg).to(device)  # target -> source (kept)
    Fw = Translator(tcfg).to(device)  # source -> target (for the cycle)
    D_s = SSDiscriminator(channels, cfg.ndf // 2 or 1).to(device)  # real: source images
    D_t = SSDiscriminator(channels, cfg.ndf // 2 or 1).to(device)  # real: target images
    g_params = [*T.parameters(), *Fw.parameters()]
    d_params = [*D_s.parameters(), *D_t.parameters()]
    opt_g = torch.optim.Adam(g_params, lr=cfg.scgan_lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(d_params, lr=cfg.scgan_lr, betas=(cfg.beta1, cfg.beta2))
    use_ema = cfg.ema_decay > 0
    ema_T = copy.deepcopy(T).requires_grad_(False) if use_ema else T
    ema_F = copy.deepcopy(Fw).requires_grad_(False) if use_ema else Fw
    live = [*T.parameters(), *Fw.parameters()]
    shadow = [*ema_T.parameters(), *ema_F.parameters()]

    eval_src = to_tensor(fixed_batch(source, cfg.eval_patches, cfg.seed + 1), device)
    eval_tgt = to_tensor(fixed_batch(target, cfg.eval_patches, cfg.seed + 2), device)
    n, n_layers = G.num_downs, G.num_layers
    eval_layers = tuple(range(n, n_layers + 1))  # bottleneck .. output
    ref_src = _taps(G, eval_src, eval_layers)  # G is frozen: computed once
    tgt_std = float(eval_tgt.std()) + 1e-6
    step = 0

    def evaluate(net_t: Translator, net_f: Translator) -> dict[str, float]:
        net_t.eval()
        net_f.eval()
        moved = _apply(net_t, eval_tgt)
        back = _apply(net_f, moved)
        taps = _taps(G, moved, eval_layers)
        gaps = [diag_w2(ref_src[k], taps[k]) for k in eval_layers]
        cycle = float((back - eval_tgt).abs().mean()) / tgt_std
        with torch.no_grad():
            acc = 0.5 * (float((_apply(D_s, eval_src) > 0.5).float().mean())
                         + float((_apply(D_s, moved) <= 0.5).float().mean()))
        m = {
            "gap": float(sum(gaps) / len(gaps)) + cycle,
            "tap_w2": gaps[0],
            "out_w2": gaps[-1],
            "cycle": cycle,
            "change": float((moved - eval_tgt).abs().mean()) / tgt_std,
            "d_acc": acc,
        }
        m["criterion"] = (
            abs(m["d_acc"] - 0.5) if cfg.criterion == "d_acc" else m.get(cfg.criterion, 0.0)
        )
        if monitor is not None:
            with torch.no_grad():
                logged = monitor(step, TranslatedModel(net_t, G))
            m.update({f"monitor_{k}": float(v) for k, v in logged.items()})
        net_t.train()
        net_f.train()
        return m

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in ema_T.state_dict().items()}

    def save_run_state() -> None:
        from ..models.checkpoint import atomic_torch_save

        atomic_torch_save(
            {
                "format": RUN_STATE_FORMAT,
                "method": NAME,
                "layers": [],
                "config": _comparable(cfg),
                "step": step,
                "nets": {"T": T.state_dict(), "F": Fw.state_dict(), "ema_T": ema_T.state_dict(),
                         "ema_F": ema_F.state_dict(), "D_s": D_s.state_dict(),
                         "D_t": D_t.state_dict()},
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(),
                "best_state": keep.best_state,
                "best": keep.state(),
                "history": history,
                "rng": {"source": _rng_get(source), "target": _rng_get(target),
                        "torch": torch.get_rng_state()},
            },
            run_state,
        )

    n_params = sum(p.numel() for p in g_params)  # both translators (as G' for the others)
    yield Started(NAME, (), cfg.steps, n_params, str(device), "eval", cfg.criterion)

    history: list[dict[str, Any]] = []
    keep = KeepBest(cfg.criterion, cfg.patience)
    if run_state is not None and Path(run_state).exists():
        st = _load_run_state(run_state, NAME, (), cfg)
        nets = st["nets"]
        for net, key in ((T, "T"), (Fw, "F"), (ema_T, "ema_T"), (ema_F, "ema_F"),
                         (D_s, "D_s"), (D_t, "D_t")):
            net.load_state_dict(nets[key])
        opt_g.load_state_dict(st["opt_g"])
        opt_d.load_state_dict(st["opt_d"])
        history = list(st["history"])
        keep.restore(st["best"], st["best_state"])
        _rng_set(source, st["rng"]["source"])
        _rng_set(target, st["rng"]["target"])
        torch.set_rng_state(st["rng"]["torch"])
        first_step = int(st["step"]) + 1
    else:
        m0 = evaluate(ema_T, ema_F)
        keep.begin(m0["criterion"], snapshot())
        history.append({"step": 0, **m0})
        yield Evaluated(0, m0["criterion"], True, m0)
        first_step = 1

    reason, message = StopReason.COMPLETED, ""
    t0 = time.perf_counter()
    T.train()
    Fw.train()
    for step in range(first_step, cfg.steps + 1):
        if cancel is not None and cancel():
            reason, step = StopReason.CANCELLED, step - 1
            message = f"cancelled after {step} steps; kept the state of step {keep.best_step}"
            break
        xs = _crop(to_tensor(source.sample(), device), cfg.scgan_crop)
        yt = _crop(to_tensor(target.sample(), device), cfg.scgan_crop)

        # (1) translators: fool both discriminators, cycle back, leave own-domain images alone
        D_s.requires_grad_(False)
        D_t.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        fake_s, fake_t = T(yt), Fw(xs)
        loss_gan = _lsgan(D_s(fake_s), True) + _lsgan(D_t(fake_t), True)
        loss_cyc = F.l1_loss(Fw(fake_s), yt) + F.l1_loss(T(fake_t), xs)
        total = loss_gan + cfg.scgan_cycle * loss_cyc
        if cfg.scgan_identity > 0:
            loss_id = F.l1_loss(T(xs), xs) + F.l1_loss(Fw(yt), yt)
            total = total + cfg.scgan_identity * loss_id
        total.backward()
        opt_g.step()
        if use_ema:
            with torch.no_grad():
                torch._foreach_lerp_(shadow, live, 1.0 - cfg.ema_decay)

        # (2) discriminators: LSGAN on real vs translated, plus self-supervised reconstruction
        D_s.requires_grad_(True)
        D_t.requires_grad_(True)
        opt_d.zero_grad(set_to_none=True)
        fs, ft = fake_s.detach(), fake_t.detach()
        real_s, fake_s_sc = D_s(xs), D_s(fs)
        loss_adv_d = 0.5 * (_lsgan(real_s, True) + _lsgan(fake_s_sc, False)
                            + _lsgan(D_t(yt), True) + _lsgan(D_t(ft), False))
        quads = torch.randint(0, 4, (2,)).tolist()
        loss_ssl = D_s.ssl_loss(xs, quads[0]) + D_t.ssl_loss(yt, quads[1])
        (loss_adv_d + loss_ssl).backward()
        opt_d.step()
        acc = 0.5 * (float((real_s > 0.5).float().mean())
                     + float((fake_s_sc <= 0.5).float().mean()))

        ld, lg, lc = loss_adv_d.item(), loss_gan.item(), loss_cyc.item()
        elapsed = time.perf_counter() - t0
        yield Step(step, cfg.steps, ld, lg, lc, acc, True, elapsed,
                   elapsed / (step - first_step + 1) * (cfg.steps - step))
        if not all(math.isfinite(v) for v in (ld, lg, lc)):
            reason = StopReason.DIVERGED
            message = (f"losses became non-finite at step {step}; "
                       f"rolled back to step {keep.best_step}")
            break
        if step % cfg.eval_every == 0 or step == cfg.steps:
            m = evaluate(ema_T, ema_F)
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

    kept = Translator(tcfg).to(device)
    kept.load_state_dict(keep.best_state)
    result = TranslatedModel(kept, copy.deepcopy(model).to(device)).eval()
    result.requires_grad_(False)
    result.meta = {**getattr(model, "meta", {})}
    prov = {
        "method": NAME,
        "layers": [],
        "translator": tcfg.to_dict(),
        "best_step": keep.best_step,
        "steps_run": step,
        "criterion": cfg.criterion,
        "criterion_value": keep.best_val,
        "stop_reason": reason.value,
        "config": cfg.to_dict(),
    }
    yield Finished(
        AdaptResult(result, NAME, (), keep.best_step, cfg.criterion, reason, history, step,
                    message or f"{reason.value}; kept step {keep.best_step}", prov)
    )
