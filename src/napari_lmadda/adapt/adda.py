"""ADDA at the output layer (Tzeng et al. 2017 applied to image translation).

The discriminator judges the virtual stains themselves: G'(x') against G(x). This is the
baseline LM-ADDA is compared with; every layer of G' trains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ..models.unet import UNetGenerator
from .adversarial import run_adversarial
from .config import AdaptConfig
from .events import Event

__all__ = ["NAME", "run"]

NAME = "adda"


def run(
    model: UNetGenerator,
    source,
    target,
    *,
    layers: tuple[int, ...] = (),
    config: AdaptConfig,
    cancel: Callable[[], bool] | None = None,
    monitor=None,
    run_state=None,
) -> Iterator[Event]:
    """Match at the output layer; ``layers`` is ignored."""
    return run_adversarial(
        model,
        source,
        target,
        layers=(model.num_layers,),
        config=config,
        method=NAME,
        cancel=cancel,
        monitor=monitor,
        run_state=run_state,
    )
