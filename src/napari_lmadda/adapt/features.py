"""What the feature-level methods share: G', its discriminators, losses and label-free metrics.

LM-ADDA (one layer, several, or the output as ADDA) and APMA train a copy G' of the source
model G whose layers ``first .. last`` change, judged by discriminators on G's and G''s
activations ("taps", ``model.forward_taps``: layer ``l`` of the model, however the model
computes it). These are the pieces they build their step from; the loop around the step
(:mod:`napari_lmadda.adapt.loop`) does the rest.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.discriminator import LayerDiscriminator
from . import distributed
from .adabn import adapt_batchnorm, batchnorms_upto
from .config import AdaptConfig
from .distances import diag_w2

__all__ = [
    "trainable_layers",
    "set_bn_mode",
    "make_student",
    "layer_discriminators",
    "gan_loss",
    "accuracy",
    "taps",
    "feature_metrics",
    "kept_model",
]


def trainable_layers(model, layers: Sequence[int], cfg: AdaptConfig) -> tuple[int, int]:
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


def set_bn_mode(model: nn.Module, mode: str) -> None:
    """eval: running stats; train: batch stats with running stats frozen (momentum 0)."""
    model.eval()
    if mode == "train":
        for bn in batchnorms_upto(model):
            bn.train()
            bn.momentum = 0.0


def make_student(run, first: int, last: int, *,
                 init_adabn: bool = False) -> tuple[nn.Module, list[nn.Parameter]]:
    """G': a copy of the source model whose layers ``first .. last`` train.

    With ``init_adabn`` the BatchNorms of layers ``<= last`` start from statistics of the
    fixed target patches. Every rank starts from rank 0's G' (as DDP does); G and G' are put
    in ``config.bn_mode``.

    Returns
    -------
    (module, parameters)
        G' and its trainable parameters (in layer order).
    """
    student = copy.deepcopy(run.model).to(run.device)
    student.requires_grad_(False)
    params = [p for i in range(first, last + 1) for p in student.block(i).parameters()]
    for p in params:
        p.requires_grad_(True)
    if not params:
        raise ConfigError(f"layers {first}..{last} have no trainable parameters")
    batch = run.config.batch_size
    if init_adabn and batchnorms_upto(student, last):
        chunks = [run.eval_tgt[i : i + batch] for i in range(0, len(run.eval_tgt), batch)]
        adapt_batchnorm(student, chunks, upto=last)
    distributed.broadcast_module_(student)
    set_bn_mode(run.G, run.config.bn_mode)
    set_bn_mode(student, run.config.bn_mode)
    return student, params


def layer_discriminators(run, student: nn.Module, layers: Sequence[int]) -> nn.ModuleDict:
    """One discriminator per layer, sized for its tap (rank 0's weights on every rank)."""
    cfg = run.config
    info = {i.index: i for i in student.describe_layers(cfg.patch_size)}
    d = nn.ModuleDict({
        str(k): LayerDiscriminator(info[k].channels, min(info[k].height, info[k].width),
                                   ndf=cfg.ndf, spectral_norm=cfg.d_spectral_norm)
        for k in layers
    }).to(run.device)
    distributed.broadcast_module_(d)
    return d


def gan_loss(kind: str, logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares (``lsgan``) or BCE-with-logits loss of ``logits`` against real/fake."""
    logits = logits.float()  # losses in float32 also under autocast (no-op otherwise)
    if kind == "lsgan":
        return F.mse_loss(logits, torch.full_like(logits, 1.0 if real else 0.0))
    return F.binary_cross_entropy_with_logits(
        logits, torch.full_like(logits, 1.0 if real else 0.0)
    )


def accuracy(kind: str, src_logits: torch.Tensor, tgt_logits: torch.Tensor) -> float:
    """Discriminator accuracy: source called real, target called fake (0.5 = chance)."""
    thr = 0.5 if kind == "lsgan" else 0.0
    return 0.5 * (
        float((src_logits > thr).float().mean()) + float((tgt_logits <= thr).float().mean())
    )


@torch.no_grad()
def taps(model: nn.Module, x: torch.Tensor, layers, chunk: int = 8) -> dict[int, torch.Tensor]:
    """``model.forward_taps`` over ``x`` in chunks, without gradients."""
    parts = [model.forward_taps(x[i : i + chunk], layers) for i in range(0, len(x), chunk)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def feature_metrics(run, net: nn.Module, ref: dict[int, torch.Tensor], top: int,
                    layers: Sequence[int]) -> tuple[dict[str, float], dict[int, torch.Tensor]]:
    """The label-free feature gap of ``net`` against G's reference taps ``ref``.

    ``gap`` is the mean per-channel Wasserstein distance between G'(target) and G(source)
    over the layers ``top .. output`` plus the source drift ``|G'(x) - G(x)| / std(G(x))``
    on source patches; ``tap_w2`` the distance at ``top``, ``out_w2`` at the output.

    Returns
    -------
    (metrics, target taps)
        The taps of ``net`` on the fixed target patches at ``layers`` and ``top .. output``
        (for a method's own metrics, e.g. the discriminators' accuracy).
    """
    n = run.model.num_layers
    gap_layers = range(top, n + 1)
    tgt = taps(net, run.eval_tgt, tuple(sorted(set(gap_layers) | set(layers))))
    src_p = taps(net, run.eval_src, (n,))[n]
    gaps = [diag_w2(ref[k], tgt[k]) for k in gap_layers]
    drift = float((src_p - ref[n]).abs().mean() / (ref[n].std() + 1e-6))
    return {
        "gap": float(sum(gaps) / len(gaps)) + drift,
        "tap_w2": diag_w2(ref[top], tgt[top]),
        "out_w2": gaps[-1],
        "source_drift": drift,
    }, tgt


def kept_model(ema: nn.Module, best_state: dict, model: nn.Module) -> nn.Module:
    """The EMA network with the kept weights, frozen, in eval mode, with G's metadata."""
    ema.load_state_dict(best_state)
    result = ema.eval()
    for bn in batchnorms_upto(result):  # undo the momentum-0 trick of bn_mode="train"
        bn.momentum = 0.1
    result.requires_grad_(False)
    result.meta = {**getattr(model, "meta", {})}
    return result
