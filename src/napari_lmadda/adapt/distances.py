"""Distances between the activations of two domains at one layer.

Each spatial position of a ``(B, C, H, W)`` feature map is treated as a C-dimensional sample.
Per-channel (diagonal) forms stay stable for hundreds of channels. All distances here are
divided by the source's per-channel variance so that layers of different scale can be
averaged (see REFERENCE.md, "Distances between layer activations").
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "channel_moments",
    "diag_w2",
    "diag_bhattacharyya",
    "sliced_w2",
    "layer_distances",
    "pairwise_distances",
    "DISTANCE_NAMES",
]

_EPS = 1e-6


def channel_moments(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation over batch and space.

    Parameters
    ----------
    f : torch.Tensor
        ``(B, C, H, W)`` activations.

    Returns
    -------
    mean, std : torch.Tensor
        Each ``(C,)``, float64.
    """
    x = f.detach().double().transpose(0, 1).reshape(f.shape[1], -1)
    return x.mean(dim=1), x.std(dim=1, unbiased=False)


def diag_w2(source: torch.Tensor, target: torch.Tensor) -> float:
    """Squared 2-Wasserstein distance of per-channel Gaussians, scaled by source variance.

    ``mean_c [(mu_c - mu'_c)^2 + (sigma_c - sigma'_c)^2] / (sigma_c^2 + eps)``; 0 for identical
    distributions, about 1 when the means differ by one source standard deviation.
    """
    m1, s1 = channel_moments(source)
    m2, s2 = channel_moments(target)
    scale = s1.pow(2) + s1.pow(2).mean() * 1e-3 + _EPS
    return float((((m1 - m2) ** 2 + (s1 - s2) ** 2) / scale).mean())


def diag_bhattacharyya(source: torch.Tensor, target: torch.Tensor) -> float:
    """Bhattacharyya distance of per-channel Gaussians, averaged over channels."""
    m1, s1 = channel_moments(source)
    m2, s2 = channel_moments(target)
    floor = s1.pow(2).mean() * 1e-3 + _EPS
    v1, v2 = s1.pow(2) + floor, s2.pow(2) + floor
    d = (m1 - m2) ** 2 / (4 * (v1 + v2)) + 0.5 * torch.log((v1 + v2) / (2 * torch.sqrt(v1 * v2)))
    return float(d.mean())


def sliced_w2(
    source: torch.Tensor,
    target: torch.Tensor,
    *,
    n_proj: int = 64,
    max_samples: int = 4096,
    seed: int = 0,
) -> float:
    """Sliced 2-Wasserstein distance (squared) over random unit projections of the channels.

    Samples are standardised by the source's per-channel statistics first; both sets are
    subsampled to the same size so the 1-D distances are sorted-sample differences.
    """
    g = torch.Generator().manual_seed(seed)
    m1, s1 = channel_moments(source)
    a = source.detach().double().transpose(0, 1).reshape(source.shape[1], -1).T
    b = target.detach().double().transpose(0, 1).reshape(target.shape[1], -1).T
    a, b = (a - m1) / (s1 + _EPS), (b - m1) / (s1 + _EPS)
    n = min(len(a), len(b), max_samples)
    a = a[torch.randperm(len(a), generator=g)[:n]]
    b = b[torch.randperm(len(b), generator=g)[:n]]
    proj = torch.randn(a.shape[1], n_proj, generator=g, dtype=torch.float64)
    proj /= proj.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a @ proj, dim=0)
    pb, _ = torch.sort(b @ proj, dim=0)
    return float(((pa - pb) ** 2).mean())


#: the distances of :func:`layer_distances`, in the order tables show them
DISTANCE_NAMES = ("w2", "bhattacharyya", "sliced_w2")


def layer_distances(
    source: torch.Tensor, target: torch.Tensor, *, seed: int = 0
) -> dict[str, float]:
    """Compute the three distances of this module between two ``(B, C, H, W)`` activations.

    Parameters
    ----------
    source, target : torch.Tensor
        Activations of the same layer for the two domains (sizes may differ in ``B``).
    seed : int
        Seed of the random projections of :func:`sliced_w2`.

    Returns
    -------
    dict of str to float
        ``{"w2": ..., "bhattacharyya": ..., "sliced_w2": ...}`` (see :data:`DISTANCE_NAMES`).
    """
    return {
        "w2": diag_w2(source, target),
        "bhattacharyya": diag_bhattacharyya(source, target),
        "sliced_w2": sliced_w2(source, target, seed=seed),
    }


def pairwise_distances(
    groups: list[torch.Tensor] | tuple[torch.Tensor, ...],
    *,
    reference: torch.Tensor | None = None,
    n_proj: int = 64,
    max_samples: int = 4096,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Symmetric matrices of the three distances between every two sets of activations.

    Every pair is scaled by the *same* per-channel statistics, those of ``reference``
    (default: the first set), so the matrices are symmetric and comparable with
    ``diag_w2(reference, ...)``. For the sliced distance, every set is standardised,
    subsampled to the same size, projected on the same random directions and sorted once, so
    ``G`` sets cost ``G`` sorts instead of ``G * (G - 1)``.

    Parameters
    ----------
    groups : sequence of torch.Tensor
        ``G`` activations ``(B_g, C, H, W)`` of the same layer.
    reference : torch.Tensor, optional
        Activations whose per-channel moments scale all distances.
    n_proj, max_samples, seed :
        As in :func:`sliced_w2`.

    Returns
    -------
    dict of str to ndarray
        ``{"w2": (G, G), "bhattacharyya": (G, G), "sliced_w2": (G, G)}``, zero diagonals.
    """
    ref = groups[0] if reference is None else reference
    m0, s0 = channel_moments(ref)
    var0 = s0.pow(2)
    scale = var0 + var0.mean() * 1e-3 + _EPS
    floor = var0.mean() * 1e-3 + _EPS
    moments = [channel_moments(x) for x in groups]
    n_groups = len(groups)
    out = {k: np.zeros((n_groups, n_groups)) for k in DISTANCE_NAMES}
    for i in range(n_groups):
        for j in range(i + 1, n_groups):
            (mi, si), (mj, sj) = moments[i], moments[j]
            w2 = float((((mi - mj) ** 2 + (si - sj) ** 2) / scale).mean())
            vi, vj = si.pow(2) + floor, sj.pow(2) + floor
            bh = (mi - mj) ** 2 / (4 * (vi + vj)) + 0.5 * torch.log(
                (vi + vj) / (2 * torch.sqrt(vi * vj)))
            out["w2"][i, j] = out["w2"][j, i] = w2
            out["bhattacharyya"][i, j] = out["bhattacharyya"][j, i] = float(bh.mean())
    g = torch.Generator().manual_seed(seed)
    channels = ref.shape[1]
    proj = torch.randn(channels, n_proj, generator=g, dtype=torch.float64)
    proj /= proj.norm(dim=0, keepdim=True)
    n = min(min(x.shape[0] * x.shape[2] * x.shape[3] for x in groups), max_samples)
    sorted_proj = []
    for x in groups:
        a = x.detach().double().transpose(0, 1).reshape(channels, -1).T
        a = a[torch.randperm(len(a), generator=g)[:n]]
        sorted_proj.append(np.sort((((a - m0) / (s0 + _EPS)) @ proj).numpy().T, axis=1))
    for i in range(n_groups):
        for j in range(i + 1, n_groups):
            d = float(np.mean((sorted_proj[i] - sorted_proj[j]) ** 2))
            out["sliced_w2"][i, j] = out["sliced_w2"][j, i] = d
    return out
