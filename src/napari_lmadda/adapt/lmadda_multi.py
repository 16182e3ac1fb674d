"""Multi-layer LM-ADDA: one discriminator per listed layer, losses summed.

The paper found a single layer usually better ("less is more"); this is here to compare.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError
from .config import AdaptConfig
from .lmadda import LayerMatching

__all__ = ["make"]


def make(model, layers: Sequence[int], config: AdaptConfig) -> LayerMatching:
    """Match at every layer of ``layers`` (two or more)."""
    if len(set(layers)) < 2:
        raise ConfigError(f"lmadda-multi needs two or more layers, got {list(layers)}")
    return LayerMatching(model, layers, config, "lmadda-multi")
