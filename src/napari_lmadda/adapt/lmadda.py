"""LM-ADDA: adversarial matching at one chosen layer ``l`` (Goyal et al.).

G' = copy of G; layers ``first .. last`` (default ``1 .. l``) of G' train so that a
discriminator cannot tell ``G'_l(x')`` on new-microscope images from ``G_l(x)`` on source
images; layers after ``l`` stay G's, so G' = G'_{<=l} followed by G_{>l}. The same step
matches several layers (one discriminator each, losses summed: ``lmadda-multi``) or the
output layer (ADDA, :mod:`.adda`).

What keeps the step stable (see REFERENCE.md and ``docs/benchmarks.md`` for the
measurements behind each default): the forward pass stops at layer ``l`` and G's source taps
come from ``no_grad``; G and G' run in the same declared BatchNorm mode; a spectrally
normalised discriminator sized for the tap, least-squares loss, a smaller learning rate for
G' than for D and optional accuracy gating of G' updates; and a source-consistency term: on
*source* images G'_l must still equal G_l, so G' cannot wander off into a mapping that fools
D but forgets what G computed. EMA, selection, rollback, resume and torchrun are the loop's
(:mod:`.loop`); under torchrun the spread that scales the consistency term is taken over the
global batch, so the shards' gradients average to the single-process one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ConfigError
from . import distributed
from .config import AdaptConfig
from .features import (
    accuracy,
    feature_metrics,
    gan_loss,
    kept_model,
    layer_discriminators,
    make_student,
    taps,
    trainable_layers,
)
from .loop import Losses, Method, Run
from .loop import run as run_loop

__all__ = ["LayerMatching", "make", "run_adversarial"]


class LayerMatching(Method):
    """Adversarial matching of G' to G at ``layers`` (LM-ADDA's step).

    Parameters
    ----------
    model : UNetGenerator
        The source model (any model with ``forward_taps`` and ``block``).
    layers : sequence of int
        The matched layers.
    config : AdaptConfig
        Hyper-parameters.
    name : str
        Recorded in events and provenance (``lmadda``, ``lmadda-multi``, ``adda``).
    """

    uses_amp = True

    def __init__(self, model, layers: Sequence[int], config: AdaptConfig,
                 name: str = "lmadda") -> None:
        self.layers = tuple(sorted({int(v) for v in layers}))
        if not self.layers:
            raise ConfigError("no layer to match")
        self.name, self.cfg, self.bn_mode = name, config, config.bn_mode
        self.first, self.last = trainable_layers(model, self.layers, config)

    def build(self, run: Run):  # noqa: D102
        cfg = self.cfg
        self.student, self.params = make_student(run, self.first, self.last,
                                                 init_adabn=cfg.init_adabn)
        self.D = layer_discriminators(run, self.student, self.layers)
        self.d_params = list(self.D.parameters())
        betas = (cfg.beta1, cfg.beta2)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=betas)
        self.opt_g = torch.optim.Adam(self.params, lr=cfg.lr_g, betas=betas)
        # G is frozen: its reference taps are computed once (by rank 0, which evaluates)
        n, top = run.model.num_layers, max(self.layers)
        ref_layers = tuple(sorted(set(range(top, n + 1)) | set(self.layers)))
        self.ref = taps(run.G, run.eval_src, ref_layers) if run.main else {}
        self.world = run.world
        return self.student, self.params

    def step(self, run: Run, xs: torch.Tensor, xt: torch.Tensor) -> Losses:  # noqa: D102
        cfg, D, kind = self.cfg, self.D, self.cfg.gan_loss
        with torch.no_grad(), run.autocast():
            fs = run.G.forward_taps(xs, self.layers)
        with run.autocast():
            ft = self.student.forward_taps(xt, self.layers)

        # (1) discriminator: source taps are "real", target taps "fake"
        self.opt_d.zero_grad(set_to_none=True)
        loss_d = torch.zeros((), device=run.device)
        accs = []
        for k in self.layers:
            with run.autocast():
                ls, lt = D[str(k)](fs[k]), D[str(k)](ft[k].detach())
            loss_d = loss_d + 0.5 * (gan_loss(kind, ls, True) + gan_loss(kind, lt, False))
            accs.append(accuracy(kind, ls, lt))
        run.backward(loss_d, self.opt_d, self.d_params, "d")
        # global-batch values: the gate below is taken identically on every rank
        acc, ld = run.mean(float(sum(accs) / len(accs)), loss_d.item())
        if not acc >= cfg.d_gate:  # D is already fooled: G' waits
            return Losses(ld, None, None, acc, g_updated=False)

        # (2) G': target taps labelled "source", plus consistency on source images
        self.opt_g.zero_grad(set_to_none=True)
        with run.autocast():
            logits = [D[str(k)](ft[k]) for k in self.layers]
        loss_g = sum(gan_loss(kind, lg, True) for lg in logits)
        total, loss_src = loss_g, None
        if cfg.source_weight > 0:
            with run.autocast():
                fsp = self.student.forward_taps(xs, self.layers)
            # the spread of G's taps over the *global* batch (a per-rank spread would make
            # the shards' gradients differ from the single-process one)
            spread = {k: distributed.global_std(fs[k].float()) for k in self.layers}
            loss_src = sum(
                (fsp[k].float() - fs[k].float()).abs().mean() / (spread[k] + 1e-6)
                for k in self.layers
            ) / len(self.layers)
            total = total + cfg.source_weight * loss_src
        run.backward(total, self.opt_g, self.params, "g")
        lg, lsrc = run.mean(loss_g.item(), float("nan") if loss_src is None else loss_src.item())
        return Losses(ld, lg, None if loss_src is None else lsrc, acc)

    def metrics(self, run: Run, net) -> dict[str, float]:  # noqa: D102
        m, tgt = feature_metrics(run, net, self.ref, max(self.layers), self.layers)
        kind = self.cfg.gan_loss
        with torch.no_grad():
            accs = [accuracy(kind, self.D[str(k)](self.ref[k]), self.D[str(k)](tgt[k]))
                    for k in self.layers]
        m["d_acc"] = float(sum(accs) / len(accs))
        return m

    def kept_model(self, run: Run, ema, best_state: dict):  # noqa: D102
        return kept_model(ema, best_state, run.model)

    def state_dict(self) -> dict:  # noqa: D102
        return {"d": self.D.state_dict(), "opt_d": self.opt_d.state_dict(),
                "opt_g": self.opt_g.state_dict()}

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        self.D.load_state_dict(state["d"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.opt_g.load_state_dict(state["opt_g"])

    def provenance(self) -> dict:  # noqa: D102
        return {"trainable_layers": [self.first, self.last], "processes": self.world}


def make(model, layers: Sequence[int], config: AdaptConfig) -> LayerMatching:
    """LM-ADDA at exactly one layer (``layers == (l,)``)."""
    if len(layers) != 1:
        raise ConfigError(f"lmadda matches one layer; got {list(layers)} (use lmadda-multi)")
    return LayerMatching(model, layers, config, "lmadda")


def run_adversarial(model, source, target, *, layers: Sequence[int], config: AdaptConfig,
                    method: str = "lmadda", cancel=None, monitor=None, run_state=None):
    """Run :class:`LayerMatching` at ``layers`` on :func:`~napari_lmadda.adapt.loop.run`.

    The adversarial loop's entry point before issue 12 (``adapt.adversarial``), kept as an
    alias for old calls.
    """
    return run_loop(LayerMatching(model, layers, config, method), model, source, target,
                    config=config, cancel=cancel, monitor=monitor, run_state=run_state)
