"""ADDA at the output layer (Tzeng et al. 2017 applied to image translation).

The discriminator judges the virtual stains themselves: G'(x') against G(x). This is the
baseline LM-ADDA is compared with; every layer of G' trains (LM-ADDA's step at the last
layer, :class:`~napari_lmadda.adapt.lmadda.LayerMatching`).
"""

from __future__ import annotations

from collections.abc import Sequence

from .config import AdaptConfig
from .lmadda import LayerMatching

__all__ = ["make"]


def make(model, layers: Sequence[int], config: AdaptConfig) -> LayerMatching:
    """Match at the output layer; ``layers`` is ignored."""
    return LayerMatching(model, (model.num_layers,), config, "adda")
