"""Read a folder's images grouped by plane size (for viewer layers and the Images step)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import LmaddaError

__all__ = ["ImageGroup", "read_image_groups"]


@dataclass
class ImageGroup:
    """Planes of one size read from a folder.

    Attributes
    ----------
    shape : (int, int)
        Plane height and width.
    planes : list of numpy.ndarray
        ``float32`` planes, raw intensities.
    files : list of str
        File name of each plane (a file with several planes appears several times).
    """

    shape: tuple[int, int]
    planes: list[np.ndarray] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def stack(self) -> np.ndarray:
        """The planes as one ``(N, H, W)`` array."""
        return np.stack(self.planes)


def read_image_groups(folder: str | os.PathLike[str]) -> tuple[list[ImageGroup], list[str]]:
    """Read every image of a folder, grouped by plane size (largest group first).

    Parameters
    ----------
    folder : path-like
        A folder of images (or one image file).

    Returns
    -------
    groups : list of ImageGroup
        One group per plane size, the group with most planes first.
    skipped : list of str
        ``"file: reason"`` for each unreadable file.

    Raises
    ------
    LmaddaError
        The folder does not exist, holds no image, or no image in it can be read.
    """
    from .io import list_images, read_planes

    files = list_images(folder)
    groups: dict[tuple[int, int], ImageGroup] = {}
    skipped: list[str] = []
    for path in files:
        try:
            planes = read_planes(path)
        except LmaddaError as exc:
            skipped.append(f"{path.name}: {exc}")
            continue
        for plane in planes:
            shape = (int(plane.shape[0]), int(plane.shape[1]))
            group = groups.setdefault(shape, ImageGroup(shape))
            group.planes.append(plane)
            group.files.append(path.name)
    if not groups:
        raise LmaddaError(f"no image in '{folder}' could be read ({skipped[0]})")
    return sorted(groups.values(), key=lambda g: -len(g.planes)), skipped
