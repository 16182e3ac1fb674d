"""Images of several channels for models with several input channels.

The project's datasets hold 2-D planes, each normalised on its own. A model with C > 1 input
channels (a stack of focal planes, phase + DIC, ...) needs ``(C, H, W)`` images: a
:class:`ChannelStacks` groups C planes into one item, either the pages of each file (a
C-page TIFF per field: :meth:`ChannelStacks.from_pages`) or the same index of C datasets (one
folder or array per channel: :meth:`ChannelStacks.from_datasets`). Each plane keeps its own
normalisation, as every channel of a multi-channel stain does. The patch sampler, the
adaptation engine and :func:`~napari_lmadda.inference.predict.predict_image` take such
items; a model whose channel count differs from the images' is refused with one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["ChannelStacks"]


class ChannelStacks:
    """``(C, H, W)`` float32 items made of C planes of plane datasets.

    Parameters
    ----------
    members : sequence of sequence of (dataset, index)
        For each item, its C planes.
    channels : int
        C.
    """

    def __init__(self, members: Sequence[Sequence[tuple[Any, int]]], channels: int) -> None:
        if not members:
            raise ConfigError(f"no image with {channels} channels")
        self.members = [list(m) for m in members]
        self.channels = int(channels)

    @classmethod
    def from_datasets(cls, datasets: Sequence[Any]) -> ChannelStacks:
        """Item ``i`` stacks plane ``i`` of every dataset (one dataset per channel).

        Raises
        ------
        ConfigError
            The datasets differ in length or in the shape of a plane.
        """
        n = {len(d) for d in datasets}
        if len(n) != 1:
            raise ConfigError(f"the channels have different numbers of images: {sorted(n)}")
        for i in range(len(datasets[0])):
            shapes = {tuple(d.shape(i)) for d in datasets}
            if len(shapes) != 1:
                raise ConfigError(f"image {datasets[0].name(i)} has channels of different "
                                  f"sizes: {sorted(shapes)}")
        return cls([[(d, i) for d in datasets] for i in range(len(datasets[0]))],
                   len(datasets))

    @classmethod
    def from_pages(cls, folder: Any, channels: int) -> ChannelStacks:
        """Every ``channels`` consecutive planes of each file are one item.

        Raises
        ------
        ConfigError
            A file whose number of planes is not a multiple of ``channels`` (named).
        """
        by_file: dict[Any, list[int]] = {}
        for i in range(len(folder)):
            by_file.setdefault(folder.path(i), []).append(i)
        members = []
        for path, idx in by_file.items():
            if len(idx) % channels:
                raise ConfigError(f"'{path}' has {len(idx)} plane(s): the model takes "
                                  f"{channels} input channels, so each image needs a multiple "
                                  f"of {channels} planes")
            members += [[(folder, j) for j in idx[k : k + channels]]
                        for k in range(0, len(idx), channels)]
        return cls(members, channels)

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, index: int) -> np.ndarray:
        """Item ``index``: ``(C, H, W)`` float32, each plane normalised by its dataset."""
        return np.stack([d[j] for d, j in self.members[index]]).astype(np.float32, copy=False)

    def shape(self, index: int) -> tuple[int, int]:
        """``(H, W)`` of item ``index`` (without decoding it)."""
        d, j = self.members[index][0]
        return tuple(d.shape(j))  # type: ignore[return-value]

    def name(self, index: int) -> str:
        """The name of the item's first plane."""
        d, j = self.members[index][0]
        return d.name(j)

    @property
    def percentiles(self) -> Any:
        """The percentiles of the first channel's dataset (for messages and provenance)."""
        return getattr(self.members[0][0][0], "percentiles", None)
