"""``python -m napari_lmadda`` runs the ``lmadda`` command line."""

import sys

from .cli import main

sys.exit(main())
