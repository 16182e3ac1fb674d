"""Files shipped inside the package: the small pretrained demo model."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

__all__ = ["demo_model_path", "ASSETS"]

ASSETS = Path(__file__).resolve().parent


def demo_model_path() -> Path:
    """Path of the bundled demo model (synthetic phase contrast -> DAPI, CD29).

    Made by ``scripts/train_demo_model.py``; see ``docs/demo_model.md`` for how well it does.
    """
    path = ASSETS / "demo_model.pt"
    if not path.is_file():
        raise CheckpointError(
            f"the bundled demo model is missing ({path}); reinstall napari-lmadda or run "
            "scripts/train_demo_model.py"
        )
    return path
