"""LM-ADDA: adversarial matching at one chosen layer ``l`` (Goyal et al.).

G' = copy of G; layers ``<= l`` of G' train so that a discriminator cannot tell G'_l on
new-microscope images from G_l on source images; layers after ``l`` stay G's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ..errors import ConfigError
from ..models.unet import UNetGenerator
from .adversarial import run_adversarial
from .config import AdaptConfig
from .events import Event

__all__ = ["NAME", "run"]

NAME = "lmadda"


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
    """Match at exactly one layer (``layers == (l,)``)."""
    if len(layers) != 1:
        raise ConfigError(f"lmadda matches one layer; got {list(layers)} (use lmadda-multi)")
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
