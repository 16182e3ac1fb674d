"""Turn what a user hands the engine (folder, array, dataset, sampler) into patch samplers."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["make_sampler", "check_patch_fits", "fixed_batch", "to_tensor", "shard_sampler",
           "ShardedSampler"]


def make_sampler(
    obj: Any, patch_size: int, batch_size: int, *, seed: int = 0, role: str = "images"
):
    """A :class:`~napari_lmadda.data.datasets.PatchSampler` (or ``obj`` if it already samples).

    Parameters
    ----------
    obj : sampler, PlaneDataset, ndarray, list of ndarray, or path
        Anything with ``sample()`` is used as is; a dataset is wrapped; an array ``(N, H, W)``
        or a list of 2-D arrays becomes an :class:`ArrayDataset`; a path an
        :class:`ImageFolder` (both normalised with the project's default percentiles); an
        array ``(N, C, H, W)`` with C > 1, or a
        :class:`~napari_lmadda.data.stacks.ChannelStacks`, gives ``(B, C, P, P)`` batches
        (models with C input channels).
    patch_size, batch_size : int
        Patch side and patches per batch.
    seed : int
        The sampler's seed.
    role : str
        Used in error messages ("source", "target").
    """
    from ..data.datasets import ArrayDataset, ImageFolder, PatchSampler, PlaneDataset
    from ..data.stacks import ChannelStacks

    if hasattr(obj, "sample"):
        return obj
    if isinstance(obj, PlaneDataset | ChannelStacks):
        ds = obj
    elif isinstance(obj, np.ndarray) and obj.ndim == 4 and obj.shape[1] > 1:
        ds = ChannelStacks.from_datasets([ArrayDataset(obj[:, c]) for c in range(obj.shape[1])])
    elif isinstance(obj, np.ndarray) or (
        isinstance(obj, list | tuple) and obj and isinstance(obj[0], np.ndarray)
    ):
        ds = ArrayDataset(obj)
    elif isinstance(obj, str | os.PathLike):
        ds = ImageFolder(obj)
    else:
        raise ConfigError(
            f"cannot use a {type(obj).__name__} as {role} images: "
            "give a folder, an array or a dataset"
        )
    check_patch_fits(ds, patch_size, role)
    return PatchSampler(ds, patch_size, batch_size, seed=seed)


def check_patch_fits(dataset: Any, patch_size: int, role: str = "images") -> None:
    """Refuse a patch size larger than every plane of a dataset.

    Planes smaller than the patch are reflect-padded by the sampler, which is fine for a few
    small images; when *no* plane is large enough every patch would be mostly padding, so
    this is almost certainly a wrong ``--patch``. Only plane shapes are looked at (file
    headers for a folder; nothing is decoded).

    Parameters
    ----------
    dataset : PlaneDataset or PairedDataset
        Anything with ``len()`` and ``shape(i) -> (H, W)``.
    patch_size : int
        Patch side.
    role : str
        Used in the message ("source", "target", "training").

    Raises
    ------
    ConfigError
        ``patch_size`` exceeds the smaller side of every plane.
    """
    n = len(dataset)
    if n == 0 or not hasattr(dataset, "shape"):
        return
    best = (0, 0)
    for i in range(n):
        h, w = dataset.shape(i)
        if min(h, w) >= patch_size:
            return
        if min(h, w) > min(best):
            best = (h, w)
    raise ConfigError(
        f"patch size {patch_size} is larger than every {role} image (the largest is "
        f"{best[0]}x{best[1]} pixels): choose a patch size of at most {min(best)}"
    )


def fixed_batch(sampler, n: int, seed: int) -> np.ndarray:
    """``n`` patches drawn with their own seed (the sampler's own stream is not advanced)."""
    from ..data.datasets import PatchSampler

    if isinstance(sampler, PatchSampler):
        return PatchSampler(sampler.dataset, sampler.patch_size, n, seed=seed).sample()
    parts, total = [], 0
    while total < n:
        b = sampler.sample()
        parts.append(b)
        total += len(b)
    return np.concatenate(parts)[:n]


def to_tensor(batch: np.ndarray, device) -> Any:
    """Return a float32 ``(B, C, H, W)`` tensor on ``device`` (adds C to ``(B, H, W)``).

    For a CUDA device the batch goes through page-locked (pinned) memory and is copied
    asynchronously (``non_blocking``), so the copy overlaps with the GPU work already queued;
    on other devices it is a plain copy.
    """
    import torch

    a = np.asarray(batch, dtype=np.float32)
    if a.ndim == 3:
        a = a[:, None]
    t = torch.from_numpy(np.ascontiguousarray(a))
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class ShardedSampler:
    """One process's share of another sampler's batches.

    Every rank holds a copy of the same sampler (same seed) and draws the same *global*
    batch; rank ``r`` of ``world`` keeps patches ``r * b .. (r + 1) * b - 1`` with
    ``b = global / world``. Concatenating the ranks' batches in rank order therefore gives
    exactly what the wrapped sampler alone would have returned, which is what lets a
    multi-process run reproduce a single-process run. For a
    :class:`~napari_lmadda.data.datasets.PatchSampler` only this rank's patches are read:
    the others' random draws (plane, crop position, augmentation) are replayed from the plane
    shapes without decoding them. Any other sampler is sampled in full and sliced.

    Parameters
    ----------
    sampler : object with ``sample()``
        The sampler of the global batch.
    rank, world : int
        This process's rank and the number of processes.

    Raises
    ------
    ConfigError
        The global batch is not a multiple of ``world`` (when it is first known).
    """

    def __init__(self, sampler: Any, rank: int, world: int) -> None:
        if not 0 <= rank < world:
            raise ConfigError(f"rank {rank} is outside 0..{world - 1}")
        self.sampler, self.rank, self.world = sampler, int(rank), int(world)
        size = getattr(sampler, "batch_size", None)
        if size is not None:
            self._share(int(size))

    @property
    def rng(self) -> Any:
        """The wrapped sampler's random generator (saved and restored by run states)."""
        return getattr(self.sampler, "rng", None)

    def _share(self, size: int) -> tuple[int, int]:
        from .distributed import per_rank_batch

        b = per_rank_batch(size, self.world)
        return self.rank * b, (self.rank + 1) * b

    def _replayable(self) -> bool:
        from ..data.datasets import PatchSampler

        s = self.sampler
        return (isinstance(s, PatchSampler) and not s.paired and s.pad_small
                and hasattr(s.dataset, "shape"))

    def _skip(self, index: int) -> None:
        # the random draws of PatchSampler._crop for this plane, without reading it
        s = self.sampler
        h, w = s.dataset.shape(index)
        h, w = max(h, s.patch_size), max(w, s.patch_size)  # reflect padding of small planes
        s.rng.integers(0, h - s.patch_size + 1)
        s.rng.integers(0, w - s.patch_size + 1)
        if s.augment:
            s.rng.integers(0, 4)
            s.rng.integers(0, 2)

    def sample(self) -> np.ndarray:
        """Draw the next global batch and return this rank's slice, ``(B / world, 1, P, P)``."""
        if not self._replayable():
            full = self.sampler.sample()
            lo, hi = self._share(len(full))
            return full[lo:hi]
        s = self.sampler
        lo, hi = self._share(s.batch_size)
        idx = s.rng.integers(0, len(s.dataset), size=s.batch_size)
        xs = []
        for j, i in enumerate(idx):
            if lo <= j < hi:
                xs.append(s._crop(int(i))[0])
            else:
                self._skip(int(i))
        return np.ascontiguousarray(np.stack(xs), dtype=np.float32)  # (B / world, C, P, P)


def shard_sampler(sampler: Any, rank: int, world: int) -> Any:
    """``sampler`` itself for one process, else a :class:`ShardedSampler` for ``rank``."""
    if world <= 1:
        return sampler
    return ShardedSampler(sampler, rank, world)
