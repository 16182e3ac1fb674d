"""Turn what a user hands the engine (folder, array, dataset, sampler) into patch samplers."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["make_sampler", "fixed_batch", "to_tensor"]


def make_sampler(
    obj: Any, patch_size: int, batch_size: int, *, seed: int = 0, role: str = "images"
):
    """A :class:`~napari_lmadda.data.datasets.PatchSampler` (or ``obj`` if it already samples).

    Parameters
    ----------
    obj : sampler, PlaneDataset, ndarray, list of ndarray, or path
        Anything with ``sample()`` is used as is; a dataset is wrapped; an array ``(N, H, W)``
        or a list of 2-D arrays becomes an :class:`ArrayDataset`; a path an
        :class:`ImageFolder` (both normalised with the project's default percentiles).
    patch_size, batch_size : int
        Patch side and patches per batch.
    seed : int
        The sampler's seed.
    role : str
        Used in error messages ("source", "target").
    """
    from ..data.datasets import ArrayDataset, ImageFolder, PatchSampler, PlaneDataset

    if hasattr(obj, "sample"):
        return obj
    if isinstance(obj, PlaneDataset):
        ds = obj
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
    return PatchSampler(ds, patch_size, batch_size, seed=seed)


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
    """Return a float32 ``(B, C, H, W)`` tensor on ``device`` (adds C to ``(B, H, W)``)."""
    import torch

    a = np.asarray(batch, dtype=np.float32)
    if a.ndim == 3:
        a = a[:, None]
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)
