"""bioimage.io model packages: export a project model, import a pix2pix-style UNet package.

The bioimage.io model zoo format (spec 0.5 ``rdf.yaml`` in a zip) is read by deepImageJ,
ilastik, QuPath, careamics and ``bioimageio.core``. :func:`export_bioimageio` writes one
from a project model (needs ``bioimageio.spec``: ``pip install "napari-lmadda[bioimageio]"``);
:func:`load_bioimageio` reads one back as a project model without running any code from the
package (plain zip + YAML + ``torch.load(weights_only=True)``; no extra dependency).

Nothing here imports napari or Qt; ``bioimageio.spec`` is imported only when exporting.
"""

from __future__ import annotations

from .export import PAPER_AUTHORS, PAPER_TITLE, PROJECT_URL, export_bioimageio
from .load import (
    BioimageioPackage,
    is_bioimageio_package,
    load_bioimageio,
    load_bioimageio_architecture,
    read_bioimageio_package,
)

__all__ = [
    "PAPER_AUTHORS",
    "PAPER_TITLE",
    "PROJECT_URL",
    "BioimageioPackage",
    "export_bioimageio",
    "is_bioimageio_package",
    "load_bioimageio",
    "load_bioimageio_architecture",
    "read_bioimageio_package",
]
