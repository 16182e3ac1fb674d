"""Distances between the activations of two domains at one layer.

Each spatial position of a ``(B, C, H, W)`` feature map is treated as a C-dimensional sample.
Per-channel (diagonal) forms stay stable for hundreds of channels. All distances here are
divided by the source's per-channel variance so that layers of different scale can be
averaged (see REFERENCE.md, "Distances between layer activations").
"""

from __future__ import annotations

import torch

__all__ = [
    "channel_moments",
    "diag_w2",
    "diag_bhattacharyya",
    "sliced_w2",
    "layer_distances",
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
