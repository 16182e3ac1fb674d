"""Turn what a user hands the engine (folder, array, dataset, sampler) into patch samplers."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["make_sampler", "check_patch_fits", "fixed_batch", "to_tensor"]


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
    """Return a float32 ``(B, C, H, W)`` tensor on ``device`` (adds C to ``(B, H, W)``)."""
    import torch

    a = np.asarray(batch, dtype=np.float32)
    if a.ndim == 3:
        a = a[:, None]
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)
