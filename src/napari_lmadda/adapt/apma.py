"""APMA: adversarial-prediction guided multi-task adaptation (Yi, Yuan and Peng; seed).

The seed adapts a segmentation U-Net with three parts, each selectable here with
``AdaptConfig.apma.parts`` (flat name ``apma_parts``; its ablation rows ``en``, ``de_feat``,
``de_pred``, ``en+de_feat`` and ``all``):

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

G' loss (the seed's Eq. 6): ``source_weight * L_src + apma.rec_weight * L_rec + L_feat' +
L_pred'`` with least-squares (or BCE) adversarial terms; R is first fitted alone through the
frozen encoder for ``apma.warmup`` steps so that its first gradients into the encoder are not
those of a random decoder. G''s layers ``1 .. top`` train, ``top`` being the deepest layer a
selected part uses (EN only: the encoder up to ``l``; with DE_feat: up to ``2n - 1``; with
DE_pred: every layer); ``AdaptConfig.trainable`` narrows that.

The rest is the loop's (:mod:`.loop`): EMA weights, the label-free criterion on fixed
patches (feature gap from the top layer to the output plus the source drift) choosing the
kept state, rollback on divergence, cancel keeping the best state, and an optional
run-state file for resuming. R and the discriminators are training-only: the
result is a plain :class:`UNetGenerator`, saved and loaded like any model.

``Step.loss_g`` is G''s loss without the source term (adversarial + weighted reconstruction);
``Step.loss_d`` and ``Step.d_acc`` are ``nan`` when no discriminator is used (``en``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.unet import UNetGenerator
from . import features
from .config import APMA_PARTS, AdaptConfig, parse_apma_parts
from .loop import Losses, Method, Run
from .sampling import to_tensor

__all__ = ["Apma", "make", "parse_parts", "ReconstructionDecoder", "apma_layers"]


def parse_parts(spec: str) -> frozenset[str]:
    """``"all"`` or ``"en+de_feat"`` -> the set of parts (validated like :class:`AdaptConfig`).

    Raises
    ------
    ConfigError
        For an unknown or repeated part.
    """
    s = parse_apma_parts(spec)
    return frozenset(APMA_PARTS) if s == "all" else frozenset(s.split("+"))


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


class Apma(Method):
    """APMA's step: reconstruction decoder, discriminators on features and predictions.

    Parameters
    ----------
    model : UNetGenerator
        The source model.
    layers : sequence of int
        Optional encoder layer read by the reconstruction decoder (EN; default the
        bottleneck); ignored without EN.
    config : AdaptConfig
        Hyper-parameters; ``config.apma`` holds APMA's own.
    """

    name = "apma"

    def __init__(self, model: UNetGenerator, layers: Sequence[int], config: AdaptConfig) -> None:
        if config.amp != "off":
            raise ConfigError(f"apma trains in float32 only: use amp 'off', not {config.amp!r}")
        self.cfg, self.bn_mode = config, config.bn_mode
        self.parts = parse_parts(config.apma.parts)
        self.en_layer, self.d_layers = apma_layers(model, self.parts, tuple(layers))
        self.layers = tuple(sorted({*self.d_layers, *((self.en_layer,) if self.en_layer else ())}))
        self.top = max(self.layers)
        self.first, self.last = features.trainable_layers(model, (self.top,), config)
        if config.criterion == "d_acc" and not self.d_layers:
            raise ConfigError("criterion d_acc needs a discriminator: apma_parts 'en' has none")

    def build(self, run: Run):  # noqa: D102
        cfg, en = self.cfg, self.en_layer
        self.student, self.params = features.make_student(run, self.first, self.last)
        self.D = features.layer_discriminators(run, self.student, self.d_layers)
        info = {i.index: i for i in self.student.describe_layers(cfg.patch_size)}
        self.R = (ReconstructionDecoder(info[en].channels, run.model.config.in_channels, en)
                  if en is not None else nn.Module()).to(run.device)
        betas = (cfg.beta1, cfg.beta2)
        self.opt_d = (torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=betas)
                      if self.d_layers else None)
        self.opt_r = (torch.optim.Adam(self.R.parameters(), lr=cfg.lr_d, betas=betas)
                      if en is not None else None)
        self.opt_g = torch.optim.Adam(self.params, lr=cfg.lr_g, betas=betas)
        n = run.model.num_layers
        ref_layers = tuple(sorted(set(range(self.top, n + 1)) | set(self.layers)))
        self.ref = features.taps(run.G, run.eval_src, ref_layers)
        return self.student, self.params

    def _rec(self, tap: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.R(tap), x)

    def warmup(self, run: Run) -> str | None:
        """Fit R alone through the frozen encoder: its first gradients must not be noise."""
        en, apma = self.en_layer, self.cfg.apma
        for _ in range(apma.warmup if en is not None and apma.rec_weight > 0 else 0):
            if run.cancelled():
                return "cancelled while fitting the reconstruction decoder: source model kept"
            xs = to_tensor(run.source.sample(), run.device)
            xt = to_tensor(run.target.sample(), run.device)
            with torch.no_grad():
                ts = run.G.forward_taps(xs, (en,))[en]
                tt = run.G.forward_taps(xt, (en,))[en]
            self.opt_r.zero_grad(set_to_none=True)
            (self._rec(ts, xs) + self._rec(tt, xt)).backward()
            self.opt_r.step()
        return None

    def step(self, run: Run, xs: torch.Tensor, xt: torch.Tensor) -> Losses:  # noqa: D102
        cfg, D, kind, en = self.cfg, self.D, self.cfg.gan_loss, self.en_layer
        n = run.model.num_layers
        gp_src = tuple(sorted({*((n,) if cfg.source_weight > 0 else ()),
                               *((en,) if en is not None else ())}))
        with torch.no_grad():
            fs = run.G.forward_taps(xs, tuple(sorted({n, *self.d_layers})))
        ft = self.student.forward_taps(xt, self.layers)

        # (1) discriminators: G's source features / predictions "real", G''s target "fake"
        ld = acc = None
        if self.d_layers:
            self.opt_d.zero_grad(set_to_none=True)
            loss_d = torch.zeros((), device=run.device)
            accs = []
            for k in self.d_layers:
                ls, lt = D[str(k)](fs[k]), D[str(k)](ft[k].detach())
                loss_d = loss_d + 0.5 * (features.gan_loss(kind, ls, True)
                                         + features.gan_loss(kind, lt, False))
                accs.append(features.accuracy(kind, ls, lt))
            run.backward(loss_d, self.opt_d, list(D.parameters()), "d")
            ld, acc = loss_d.item(), float(sum(accs) / len(accs))
        if self.d_layers and not acc >= cfg.d_gate:
            return Losses(ld, None, None, acc, g_updated=False)

        # (2) G' (and R): adversarial + reconstruction on both domains + source consistency
        self.opt_g.zero_grad(set_to_none=True)
        if self.opt_r:
            self.opt_r.zero_grad(set_to_none=True)
        loss_g = torch.zeros((), device=run.device)
        for k in self.d_layers:
            loss_g = loss_g + features.gan_loss(kind, D[str(k)](ft[k]), True)
        fsp = self.student.forward_taps(xs, gp_src) if gp_src else {}
        if en is not None:
            rec = self._rec(ft[en], xt) + self._rec(fsp[en], xs)
            loss_g = loss_g + cfg.apma.rec_weight * rec
        total, loss_src = loss_g, None
        if cfg.source_weight > 0:
            ref = fs[n]
            loss_src = (fsp[n] - ref).abs().mean() / (ref.std() + 1e-6)
            total = total + cfg.source_weight * loss_src
        run.backward(total, self.opt_g, self.params, "g")
        if self.opt_r:
            self.opt_r.step()
        return Losses(ld, loss_g.item(), None if loss_src is None else loss_src.item(), acc)

    def metrics(self, run: Run, net) -> dict[str, float]:  # noqa: D102
        m, tgt = features.feature_metrics(run, net, self.ref, self.top, self.layers)
        with torch.no_grad():
            if self.d_layers:
                accs = [features.accuracy(self.cfg.gan_loss, self.D[str(k)](self.ref[k]),
                                          self.D[str(k)](tgt[k])) for k in self.d_layers]
                m["d_acc"] = float(sum(accs) / len(accs))
            if self.en_layer is not None:
                m["rec_target"] = float(self._rec(tgt[self.en_layer], run.eval_tgt))
        return m

    def kept_model(self, run: Run, ema, best_state: dict):  # noqa: D102
        return features.kept_model(ema, best_state, run.model)

    def state_dict(self) -> dict:  # noqa: D102
        return {"d": self.D.state_dict(), "r": self.R.state_dict(),
                "opt_d": self.opt_d.state_dict() if self.opt_d else {},
                "opt_r": self.opt_r.state_dict() if self.opt_r else {},
                "opt_g": self.opt_g.state_dict()}

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        self.D.load_state_dict(state["d"])
        self.R.load_state_dict(state["r"])
        for opt, key in ((self.opt_d, "opt_d"), (self.opt_r, "opt_r"), (self.opt_g, "opt_g")):
            if opt:
                opt.load_state_dict(state[key])

    def provenance(self) -> dict:  # noqa: D102
        return {"apma_parts": "+".join(p for p in APMA_PARTS if p in self.parts),
                "encoder_layer": self.en_layer, "trainable_layers": [self.first, self.last]}


def make(model: UNetGenerator, layers: Sequence[int], config: AdaptConfig) -> Apma:
    """APMA with the parts of ``config.apma.parts``."""
    return Apma(model, layers, config)
