"""Multi-layer LM-ADDA: one discriminator per listed layer, losses summed.

The paper found a single layer usually better ("less is more"); this is here to compare.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ..errors import ConfigError
from ..models.unet import UNetGenerator
from .adversarial import run_adversarial
from .config import AdaptConfig
from .events import Event

__all__ = ["NAME", "run"]

NAME = "lmadda-multi"


def run(
    model: UNetGenerator,
    source,
    target,
    *,
    layers: tuple[int, ...],
    config: AdaptConfig,
    cancel: Callable[[], bool] | None = None,
    monitor=None,
    run_state=None,
) -> Iterator[Event]:
    """Match at every layer in ``layers`` (two or more)."""
    if len(set(layers)) < 2:
        raise ConfigError(f"lmadda-multi needs two or more layers, got {list(layers)}")
    return run_adversarial(
        model,
        source,
        target,
        layers=tuple(layers),
        config=config,
        method=NAME,
        cancel=cancel,
        monitor=monitor,
        run_state=run_state,
    )
