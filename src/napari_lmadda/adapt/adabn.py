"""AdaBN: re-estimate batch-norm statistics on the new microscope's images (seed 003).

Only the BatchNorm modules change; they are put in train mode alone (dropout stays off), the
target images go through the network under ``no_grad``, and each BatchNorm's running mean and
variance become the exact population statistics of its input over all target batches (sums
of x and x^2 per channel, not an average of per-batch variances). Then the model is back in
eval mode. A pix2pix UNet's innermost block has no BatchNorm, and BN adaptation only changes
eval-mode inference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..models.unet import UNetGenerator
from .config import AdaptConfig
from .events import AdaptResult, Event, Finished, Started, Step, StopReason

__all__ = ["NAME", "adapt_batchnorm", "run", "batchnorms_upto"]

NAME = "adabn"


def batchnorms_upto(model: UNetGenerator, layer: int | None = None) -> list[nn.BatchNorm2d]:
    """BatchNorm modules of layers ``1 .. layer`` (all layers if None)."""
    last = model.num_layers if layer is None else int(layer)
    return [
        m for b in model.blocks_upto(last) for m in b.modules() if isinstance(m, nn.BatchNorm2d)
    ]


def adapt_batchnorm(
    model: UNetGenerator,
    batches: Iterator[torch.Tensor] | list[torch.Tensor],
    *,
    upto: int | None = None,
) -> int:
    """Replace BN running statistics of layers ``<= upto`` by those of ``batches`` (in place).

    Parameters
    ----------
    model : UNetGenerator
        Model to adapt; left in eval mode.
    batches : iterable of torch.Tensor
        Target-domain input batches ``(B, C, H, W)`` on the model's device.
    upto : int, optional
        Last layer whose BatchNorms are re-estimated (all by default); the forward pass stops
        there.

    Returns
    -------
    int
        Number of BatchNorm modules updated.
    """
    n = 0
    for n in iter_adapt_batchnorm(model, batches, upto=upto):  # noqa: B007
        pass
    return len(batchnorms_upto(model, upto))


def iter_adapt_batchnorm(
    model: UNetGenerator, batches, *, upto: int | None = None
) -> Iterator[int]:
    """Generator form of :func:`adapt_batchnorm`: yields the number of batches done.

    The statistics are written when the generator is exhausted; a consumer that stops early
    (cancel) leaves the model's statistics unchanged.
    """
    bns = batchnorms_upto(model, upto)
    if not bns:
        return
    sums: dict[nn.Module, list] = {bn: [0.0, 0.0, 0] for bn in bns}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor]) -> None:
        x = inputs[0].detach().double()
        acc = sums[module]
        acc[0] = acc[0] + x.sum(dim=(0, 2, 3))
        acc[1] = acc[1] + (x * x).sum(dim=(0, 2, 3))
        acc[2] += x.numel() // x.shape[1]

    last = max(
        i
        for i in range(1, model.num_layers + 1)
        if any(m in bns for m in model.block(i).modules())
    )
    saved = [bn.momentum for bn in bns]
    model.eval()
    handles = [bn.register_forward_pre_hook(hook) for bn in bns]
    try:
        for bn in bns:  # batch statistics downstream while the sums are gathered
            bn.train()
            bn.momentum = 0.0  # running stats are set from the sums below, not by torch
        for i, x in enumerate(batches, 1):
            with torch.no_grad():
                model(x, upto=last)
            yield i
    finally:
        for h in handles:
            h.remove()
        for bn, momentum in zip(bns, saved):
            bn.momentum = momentum
        model.eval()
    for bn in bns:
        s, s2, count = sums[bn]
        if count < 2:
            continue
        mean = s / count
        var = (s2 / count - mean * mean).clamp_min(0) * (count / (count - 1))
        bn.running_mean.copy_(mean.to(bn.running_mean))
        bn.running_var.copy_(var.to(bn.running_var))


def run(
    model: UNetGenerator,
    source,
    target,
    *,
    layers: tuple[int, ...] = (),
    config: AdaptConfig,
    cancel: Callable[[], bool] | None = None,
    monitor: Callable | None = None,
) -> Iterator[Event]:
    """AdaBN as an adaptation method: up to 50 target batches re-estimate the BNs.

    ``layers`` (optional) limits the re-estimated BatchNorms to layers ``<= max(layers)``.
    A cancelled run returns the source model unchanged (partial statistics are not kept).
    """
    import copy
    import time

    from ..devices import resolve_device
    from .sampling import to_tensor

    device = resolve_device(config.device)
    adapted = copy.deepcopy(model).to(device).eval()
    upto = max(layers) if layers else None
    n_batches = max(1, min(config.steps, 50))
    yield Started(
        NAME, tuple(layers), n_batches, 0, str(device), "train (statistics only)", "none"
    )
    t0 = time.perf_counter()
    batches = (to_tensor(target.sample(), device) for _ in range(n_batches))
    done = 0
    gen = iter_adapt_batchnorm(adapted, batches, upto=upto)
    for done in gen:
        if cancel is not None and cancel():
            gen.close()
            adapted = copy.deepcopy(model).to(device).eval()
            yield Finished(
                AdaptResult(
                    adapted,
                    NAME,
                    tuple(layers),
                    0,
                    "none",
                    StopReason.CANCELLED,
                    steps_done=done,
                    message="cancelled: statistics left unchanged",
                )
            )
            return
        el = time.perf_counter() - t0
        nan = float("nan")
        yield Step(done, n_batches, nan, nan, nan, nan, False, el, el / done * (n_batches - done))
    yield Finished(
        AdaptResult(
            adapted, NAME, tuple(layers), done, "none", StopReason.COMPLETED, steps_done=done
        )
    )
