"""napari-lmadda: layer-matching adversarial domain adaptation for microscopy image translation.

The package is a Qt-free core (models, data, adaptation, metrics, I/O, CLI) with thin napari
widgets on top. Importing the package is cheap: torch and the heavy modules load on first use.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily so `import napari_lmadda` stays fast)
_LAZY = {
    "UNetGenerator": "napari_lmadda.models.unet",
    "load_model": "napari_lmadda.models.checkpoint",
    "save_model": "napari_lmadda.models.checkpoint",
    "LmaddaError": "napari_lmadda.errors",
    "iter_adapt": "napari_lmadda.adapt.engine",
    "AdaptConfig": "napari_lmadda.adapt.config",
    "predict_image": "napari_lmadda.inference.predict",
}

# modules that moved when the root was grouped by concern: old name -> new name. Importing
# an old name gives the new module itself (one object, so patches and isinstance agree).
MOVED = {
    "napari_lmadda.predict": "napari_lmadda.inference.predict",
    "napari_lmadda.predict_dask": "napari_lmadda.inference.predict_dask",
    "napari_lmadda.uncertainty": "napari_lmadda.inference.uncertainty",
    "napari_lmadda.metrics": "napari_lmadda.evaluation.metrics",
    "napari_lmadda.fid": "napari_lmadda.evaluation.fid",
    "napari_lmadda.sweep": "napari_lmadda.evaluation.sweep",
    "napari_lmadda.recommend": "napari_lmadda.adapt.recommend",
    # the adversarial loop became adapt.loop + one step per method (issue 12); the old
    # module's names (run_adversarial, trainable_layers, kept_model) are LM-ADDA's
    "napari_lmadda.adapt.adversarial": "napari_lmadda.adapt.lmadda",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolve the old module names of :data:`MOVED` to the modules' new homes."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):  # noqa: D102
        module = importlib.import_module(MOVED[spec.name])
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module):  # noqa: D102
        # the import system has just set __spec__ to the old name's; give the module its
        # own back (relative imports inside it resolve from __spec__.parent)
        module.__spec__ = self._own_spec


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_lmadda' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
