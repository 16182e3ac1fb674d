"""AdaBN: re-estimate batch-norm statistics on the new microscope's images (seed 003).

Only the BatchNorm modules change; they are put in train mode alone (dropout stays off), the
target images go through the network under ``no_grad``, and then the model is back in eval
mode. Two ways to estimate the statistics (``AdaptConfig.adabn.stats``, flag ``--adabn-stats``):

* ``cumulative`` (default): each BatchNorm's running mean and variance become the exact
  population statistics of its input over all target batches (sums of x and x^2 per channel,
  not an average of per-batch variances);
* ``momentum``: torch's own running average (each BatchNorm's ``momentum``, 0.1 by default)
  starting from the source statistics - the common shortcut of forwarding target images in
  train mode; after ``k`` batches the source statistics still weigh ``0.9**k``.

Which BatchNorms (``AdaptConfig.adabn.layers``, with ``layers``): those of layers
``1 .. max(layers)`` (``upto``, default; all layers without ``layers``), or exactly those of
the listed layers (``listed``). BatchNorms that are not selected keep their source statistics
and stay in eval mode while the others are estimated. A pix2pix UNet's outermost and
innermost blocks have no BatchNorm, and BN adaptation only changes eval-mode inference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from ..errors import ConfigError
from ..models.unet import UNetGenerator
from .config import ADABN_STATS, AdaptConfig
from .events import AdaptResult, Event, Finished, Started, Step, StopReason

__all__ = [
    "NAME",
    "adapt_batchnorm",
    "iter_adapt_batchnorm",
    "run",
    "batchnorms_upto",
    "batchnorms_of",
    "bn_layers",
]

NAME = "adabn"


def batchnorms_upto(model: UNetGenerator, layer: int | None = None) -> list[nn.BatchNorm2d]:
    """BatchNorm modules of layers ``1 .. layer`` (all layers if None)."""
    last = model.num_layers if layer is None else int(layer)
    return batchnorms_of(model, range(1, last + 1))


def batchnorms_of(model: UNetGenerator, layers: Iterable[int]) -> list[nn.BatchNorm2d]:
    """BatchNorm modules of exactly the given layers (in layer order)."""
    return [
        m
        for i in sorted({int(v) for v in layers})
        for m in model.block(i).modules()
        if isinstance(m, nn.BatchNorm2d)
    ]


def bn_layers(model: UNetGenerator) -> list[int]:
    """Layers that have a BatchNorm."""
    return [i for i in range(1, model.num_layers + 1) if batchnorms_of(model, (i,))]


def _select(
    model: UNetGenerator, upto: int | None, layers: Iterable[int] | None
) -> list[nn.BatchNorm2d]:
    if upto is not None and layers is not None:
        raise ConfigError("give either upto (layers 1..upto) or layers (a set), not both")
    return batchnorms_of(model, layers) if layers is not None else batchnorms_upto(model, upto)


def adapt_batchnorm(
    model: UNetGenerator,
    batches: Iterable[torch.Tensor],
    *,
    upto: int | None = None,
    layers: Iterable[int] | None = None,
    stats: str = "cumulative",
) -> int:
    """Replace the BN running statistics of the chosen layers by those of ``batches``.

    Parameters
    ----------
    model : UNetGenerator
        Model to adapt in place; left in eval mode.
    batches : iterable of torch.Tensor
        Target-domain input batches ``(B, C, H, W)`` on the model's device.
    upto : int, optional
        Last layer whose BatchNorms are re-estimated (all by default); the forward pass stops
        there.
    layers : iterable of int, optional
        Re-estimate exactly the BatchNorms of these layers instead (not with ``upto``).
    stats : {"cumulative", "momentum"}
        Exact statistics over all batches, or torch's running average from the current ones.

    Returns
    -------
    int
        Number of BatchNorm modules updated.
    """
    for _ in iter_adapt_batchnorm(model, batches, upto=upto, layers=layers, stats=stats):
        pass
    return len(_select(model, upto, None if layers is None else list(layers)))


def iter_adapt_batchnorm(
    model: UNetGenerator,
    batches: Iterable[torch.Tensor],
    *,
    upto: int | None = None,
    layers: Iterable[int] | None = None,
    stats: str = "cumulative",
) -> Iterator[int]:
    """Generator form of :func:`adapt_batchnorm`: yields the number of batches done.

    The statistics are final when the generator is exhausted; a consumer that stops early
    (cancel) leaves the model's statistics as they were (``momentum`` mode included).
    """
    if stats not in ADABN_STATS:
        raise ConfigError(f"adabn_stats must be one of {ADABN_STATS}, got {stats!r}")
    bns = _select(model, upto, None if layers is None else list(layers))
    if not bns:
        return
    cumulative = stats == "cumulative"
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
    before = [{k: v.clone() for k, v in bn.state_dict().items()} for bn in bns]
    model.eval()
    handles = [bn.register_forward_pre_hook(hook) for bn in bns] if cumulative else []
    finished = False
    try:
        for bn in bns:  # batch statistics downstream while the statistics are gathered
            bn.train()
            if cumulative:
                bn.momentum = 0.0  # running stats are set from the sums below, not by torch
        for i, x in enumerate(batches, 1):
            with torch.no_grad():
                model(x, upto=last)
            yield i
        finished = True
    finally:
        for h in handles:
            h.remove()
        for bn, momentum, st in zip(bns, saved, before):
            bn.momentum = momentum
            if not finished:  # cancelled: momentum mode has already moved the statistics
                bn.load_state_dict(st)
        model.eval()
    if not cumulative:
        return
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
    run_state=None,
) -> Iterator[Event]:
    """AdaBN as an adaptation method: up to 50 target batches re-estimate the BNs.

    ``config.adabn.stats`` chooses exact (``cumulative``) or running-average (``momentum``)
    statistics; with ``layers``, ``config.adabn.layers`` re-estimates the BatchNorms of layers
    ``<= max(layers)`` (``upto``) or of exactly ``layers`` (``listed``). A cancelled run
    returns the source model unchanged (partial statistics are not kept). ``run_state`` is
    accepted and ignored: a run takes seconds, there is nothing to resume.

    Raises
    ------
    ConfigError
        ``listed`` layers none of which has a BatchNorm.
    """
    import copy
    import time

    from ..devices import resolve_device
    from .sampling import to_tensor

    device = resolve_device(config.device)
    adapted = copy.deepcopy(model).to(device).eval()
    listed = config.adabn.layers == "listed" and bool(layers)
    upto = None if listed or not layers else max(layers)
    chosen = tuple(layers) if listed else None
    bns = _select(adapted, upto, chosen)
    with_bn = bn_layers(adapted)
    if listed and not bns and with_bn:
        raise ConfigError(
            f"layer(s) {', '.join(map(str, layers))} have no BatchNorm; layers with one: "
            f"{', '.join(map(str, with_bn))}"
        )
    updated = [i for i in with_bn if (i in layers if listed else upto is None or i <= upto)]
    n_batches = max(1, min(config.steps, 50))
    yield Started(
        NAME, tuple(layers), n_batches, 0, str(device), "train (statistics only)", "none"
    )
    prov = {
        "method": NAME,
        "layers": list(layers),
        "adabn_stats": config.adabn.stats,
        "adabn_layers": config.adabn.layers,
        "bn_layers": updated,
        "config": config.to_dict(),
    }
    t0 = time.perf_counter()
    batches = (to_tensor(target.sample(), device) for _ in range(n_batches))
    done = 0
    gen = iter_adapt_batchnorm(
        adapted, batches, upto=upto, layers=chosen, stats=config.adabn.stats
    )
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
                    provenance={**prov, "stop_reason": StopReason.CANCELLED.value},
                )
            )
            return
        el = time.perf_counter() - t0
        nan = float("nan")
        yield Step(done, n_batches, nan, nan, nan, nan, False, el, el / done * (n_batches - done))
    yield Finished(
        AdaptResult(
            adapted,
            NAME,
            tuple(layers),
            done,
            "none",
            StopReason.COMPLETED,
            steps_done=done,
            provenance={**prov, "stop_reason": StopReason.COMPLETED.value},
        )
    )
