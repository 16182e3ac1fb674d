"""napari-lmadda: layer-matching adversarial domain adaptation for microscopy image translation.

The package is a Qt-free core (models, data, adaptation, metrics, I/O, CLI) with thin napari
widgets on top. Importing the package is cheap: torch and the heavy modules load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily so `import napari_lmadda` stays fast)
_LAZY = {
    "UNetGenerator": "napari_lmadda.models.unet",
    "load_model": "napari_lmadda.models.checkpoint",
    "save_model": "napari_lmadda.models.checkpoint",
    "LmaddaError": "napari_lmadda.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_lmadda' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
