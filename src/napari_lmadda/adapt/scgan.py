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
* cycle consistency ``|F(T(y)) - y| + |T(F(x)) - x|`` (weight ``scgan.cycle``, 10 in the
  paper) and identity ``|T(x) - x| + |F(y) - y|`` (weight ``scgan.identity``, 0.5);
* Adam (``scgan.lr``, betas ``beta1``, ``beta2``) for both translators and both
  discriminators, an EMA of the translators' weights (``ema_decay``) that is what gets
  evaluated and kept;
* for the CPU: small translators (``scgan.ngf`` 8, ``scgan.blocks`` 3, where CycleGAN has
  64 and 9) trained on random ``scgan.crop`` (64 px) crops of the sampled patches.

The options are ``AdaptConfig.scgan`` (flat names ``scgan_lr``, ``scgan_ngf``, ...); the
loop (:mod:`.loop`) does the EMA, selection, cancel and resume.

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
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.translated import TranslatedModel, Translator, TranslatorConfig
from ..models.unet import UNetGenerator
from .config import AdaptConfig
from .distances import diag_w2
from .features import taps
from .loop import Losses, Method, Run

__all__ = ["Scgan", "make", "SSDiscriminator"]


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


def _crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """A random ``size`` x ``size`` crop of a batch (one offset per batch; 0 = no crop)."""
    h, w = x.shape[-2:]
    if size <= 0 or (size >= h and size >= w):
        return x
    sh, sw = min(size, h), min(size, w)
    r = int(torch.randint(0, h - sh + 1, (1,)))
    c = int(torch.randint(0, w - sw + 1, (1,)))
    return x[..., r : r + sh, c : c + sw]


class Scgan(Method):
    """SCGAN's step: translators T (target -> source) and F, self-supervised discriminators.

    What trains (and is averaged by the EMA) is ``ModuleDict(T=..., F=...)``; the kept state
    is T's, and the result is ``TranslatedModel(T, G)``. ``Step.loss_src`` is the cycle loss.
    """

    name = "scgan"

    def __init__(self, model: UNetGenerator, layers: Sequence[int], config: AdaptConfig) -> None:
        if config.patch_size % 16:
            raise ConfigError(f"scgan needs a patch size that is a multiple of 16, got "
                              f"{config.patch_size}")
        self.cfg = config

    def build(self, run: Run):  # noqa: D102
        cfg, sc, dev = self.cfg, self.cfg.scgan, run.device
        channels = run.model.config.in_channels
        self.tcfg = TranslatorConfig(channels=channels, ngf=sc.ngf, n_blocks=sc.blocks)
        self.nets = nn.ModuleDict({"T": Translator(self.tcfg).to(dev),  # target -> source
                                   "F": Translator(self.tcfg).to(dev)})  # source -> target
        self.D_s = SSDiscriminator(channels, cfg.ndf // 2 or 1).to(dev)  # real: source images
        self.D_t = SSDiscriminator(channels, cfg.ndf // 2 or 1).to(dev)  # real: target images
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.nets.parameters(), lr=sc.lr, betas=betas)
        self.opt_d = torch.optim.Adam([*self.D_s.parameters(), *self.D_t.parameters()],
                                      lr=sc.lr, betas=betas)
        n = run.G.num_downs
        self.eval_layers = tuple(range(n, run.G.num_layers + 1))  # bottleneck .. output
        self.ref = taps(run.G, run.eval_src, self.eval_layers)  # G is frozen: once
        self.tgt_std = float(run.eval_tgt.std()) + 1e-6
        return self.nets, list(self.nets.parameters())

    def step(self, run: Run, xs: torch.Tensor, xt: torch.Tensor) -> Losses:  # noqa: D102
        cfg, T, Fw, D_s, D_t = self.cfg, self.nets["T"], self.nets["F"], self.D_s, self.D_t
        xs, yt = _crop(xs, cfg.scgan.crop), _crop(xt, cfg.scgan.crop)

        # (1) translators: fool both discriminators, cycle back, leave own-domain images alone
        D_s.requires_grad_(False)
        D_t.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        fake_s, fake_t = T(yt), Fw(xs)
        loss_gan = _lsgan(D_s(fake_s), True) + _lsgan(D_t(fake_t), True)
        loss_cyc = F.l1_loss(Fw(fake_s), yt) + F.l1_loss(T(fake_t), xs)
        total = loss_gan + cfg.scgan.cycle * loss_cyc
        if cfg.scgan.identity > 0:
            loss_id = F.l1_loss(T(xs), xs) + F.l1_loss(Fw(yt), yt)
            total = total + cfg.scgan.identity * loss_id
        total.backward()
        self.opt_g.step()

        # (2) discriminators: LSGAN on real vs translated, plus self-supervised reconstruction
        D_s.requires_grad_(True)
        D_t.requires_grad_(True)
        self.opt_d.zero_grad(set_to_none=True)
        fs, ft = fake_s.detach(), fake_t.detach()
        real_s, fake_s_sc = D_s(xs), D_s(fs)
        loss_adv_d = 0.5 * (_lsgan(real_s, True) + _lsgan(fake_s_sc, False)
                            + _lsgan(D_t(yt), True) + _lsgan(D_t(ft), False))
        quads = torch.randint(0, 4, (2,)).tolist()
        loss_ssl = D_s.ssl_loss(xs, quads[0]) + D_t.ssl_loss(yt, quads[1])
        (loss_adv_d + loss_ssl).backward()
        self.opt_d.step()
        acc = 0.5 * (float((real_s > 0.5).float().mean())
                     + float((fake_s_sc <= 0.5).float().mean()))
        return Losses(loss_adv_d.item(), loss_gan.item(), loss_cyc.item(), acc)

    def metrics(self, run: Run, net) -> dict[str, float]:  # noqa: D102
        net_t, net_f = net["T"], net["F"]
        net_t.eval()
        net_f.eval()
        moved = _apply(net_t, run.eval_tgt)
        back = _apply(net_f, moved)
        moved_taps = taps(run.G, moved, self.eval_layers)
        gaps = [diag_w2(self.ref[k], moved_taps[k]) for k in self.eval_layers]
        cycle = float((back - run.eval_tgt).abs().mean()) / self.tgt_std
        with torch.no_grad():
            acc = 0.5 * (float((_apply(self.D_s, run.eval_src) > 0.5).float().mean())
                         + float((_apply(self.D_s, moved) <= 0.5).float().mean()))
        net_t.train()
        net_f.train()
        return {
            "gap": float(sum(gaps) / len(gaps)) + cycle,
            "tap_w2": gaps[0],
            "out_w2": gaps[-1],
            "cycle": cycle,
            "change": float((moved - run.eval_tgt).abs().mean()) / self.tgt_std,
            "d_acc": acc,
        }

    def kept(self, ema: nn.Module) -> nn.Module:  # noqa: D102
        return ema["T"]

    def evaluated_model(self, run: Run, net: nn.Module) -> nn.Module:  # noqa: D102
        return TranslatedModel(net["T"], run.G)

    def kept_model(self, run: Run, ema, best_state: dict):  # noqa: D102
        kept = Translator(self.tcfg).to(run.device)
        kept.load_state_dict(best_state)
        result = TranslatedModel(kept, copy.deepcopy(run.model).to(run.device)).eval()
        result.requires_grad_(False)
        result.meta = {**getattr(run.model, "meta", {})}
        return result

    def state_dict(self) -> dict:  # noqa: D102
        return {"nets": {"D_s": self.D_s.state_dict(), "D_t": self.D_t.state_dict()},
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        self.D_s.load_state_dict(state["nets"]["D_s"])
        self.D_t.load_state_dict(state["nets"]["D_t"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])

    def upgrade_state(self, state: dict) -> dict:
        """Read run states written before the loop (translators and EMA under ``nets``)."""
        nets = state.get("nets", {})
        if "gp" not in state and "T" in nets:
            def both(t: str, f: str) -> dict:
                return {**{f"T.{k}": v for k, v in nets[t].items()},
                        **{f"F.{k}": v for k, v in nets[f].items()}}

            state = {**state, "gp": both("T", "F"), "ema": both("ema_T", "ema_F")}
        return state

    def provenance(self) -> dict:  # noqa: D102
        return {"translator": self.tcfg.to_dict()}


def make(model: UNetGenerator, layers: Sequence[int], config: AdaptConfig) -> Scgan:
    """SCGAN; ``layers`` is ignored (the translator works on images)."""
    return Scgan(model, layers, config)
