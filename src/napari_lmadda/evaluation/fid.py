"""FID and KID between two sets of images, on the project's own UNet features (no download).

Where no ground truth exists (a new microscope, no stained images), the distance between
the *distributions* of two image sets still says whether an adaptation moved the target
towards the source: compare source images with target images before and after an
image-level adaptation (SCGAN), or a translation's output with real images of the domain
it imitates.

FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) normally use Inception-v3
features, which would need downloaded ImageNet weights. Here the features are globally
averaged activations of a project UNet at one layer (default: the source model's
bottleneck), each tile of each image giving one feature vector. Any project model file or
pix2pix ``latest_net_G.pth`` can serve as the feature network (``weights=``; loaded with
``torch.load(weights_only=True)``). The numbers therefore compare image sets *under one
feature network*; they are not comparable with published Inception FIDs, nor between
different feature networks or layers.

* FID: ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)``, computed
  with symmetric eigen-decompositions (real and non-negative by construction, no
  imaginary parts to discard; fine with fewer samples than dimensions, where the
  covariances are singular, although FID is then biased upwards).
* KID: the unbiased MMD^2 with the cubic polynomial kernel ``(x.y / d + 1)^3``, averaged
  over random subsets (mean and standard deviation). Unbiased: near 0 for two draws of one
  distribution, whatever the sample size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.normalize import model_percentiles
from ..errors import ConfigError

__all__ = [
    "FidKid",
    "load_feature_model",
    "image_features",
    "frechet_distance",
    "kernel_inception_distance",
    "fid_kid",
]


@dataclass(frozen=True)
class FidKid:
    """FID and KID between two image sets, and what they were computed on."""

    fid: float
    kid_mean: float
    kid_std: float
    n_a: int
    n_b: int
    layer: int
    dims: int

    def __str__(self) -> str:
        return (f"FID {self.fid:.4g}  KID {self.kid_mean:.4g} +- {self.kid_std:.2g}  "
                f"({self.n_a} vs {self.n_b} feature vectors of {self.dims} dims, "
                f"layer {self.layer})")


def load_feature_model(weights: str | os.PathLike, device: str = "cpu") -> Any:
    """Load a feature network from a model file (weights only, never code).

    Parameters
    ----------
    weights : path-like
        A napari-lmadda model file, a pix2pix ``latest_net_G.pth`` state dict, or ``"demo"``.
        For an SCGAN (translated) model the source UNet inside it is used.
    device : str
        Where to put it.

    Returns
    -------
    UNetGenerator

    Raises
    ------
    CheckpointError
        The file is missing, damaged, unsafe or not a model (one line naming the file).
    """
    from ..models.checkpoint import load_model
    from ..models.translated import TranslatedModel

    model = load_model(weights, device)
    return model.unet if isinstance(model, TranslatedModel) else model


def _as_dataset(images: Any, percentiles: Sequence[float]) -> Any:
    """A plane dataset (normalised like the model's inputs) from a folder, arrays or dataset."""
    from ..data.datasets import ArrayDataset, ImageFolder, PlaneDataset

    pct = (float(percentiles[0]), float(percentiles[1]))
    if isinstance(images, PlaneDataset):
        return images
    if isinstance(images, str | os.PathLike):
        return ImageFolder(images, percentiles=pct)
    if isinstance(images, np.ndarray) or (
        isinstance(images, list | tuple) and images and isinstance(images[0], np.ndarray)
    ):
        return ArrayDataset(images, percentiles=pct)
    raise ConfigError(f"cannot take features of a {type(images).__name__}: give a folder, "
                      "an array (N, H, W), a list of 2-D arrays or a dataset")


def _tiles(plane: np.ndarray, tile: int | None, multiple: int) -> list[np.ndarray]:
    """Cut a plane into non-overlapping tiles (the last row/column reflect-padded)."""
    h, w = plane.shape
    if tile is None:
        th, tw = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    else:
        th = tw = tile
    ph, pw = -(-h // th) * th, -(-w // tw) * tw
    if (ph, pw) != (h, w):
        mode = "reflect" if ph - h < h and pw - w < w else "symmetric"
        plane = np.pad(plane, ((0, ph - h), (0, pw - w)), mode=mode)
    return [plane[r : r + th, c : c + tw] for r in range(0, ph, th) for c in range(0, pw, tw)]


def default_feature_layer(net: Any) -> int:
    """The default feature layer: a UNet's bottleneck, else the deepest level of the network.

    For a network given as code (a :class:`~napari_lmadda.models.tapped.TappedModel`): the
    last tap of the first run of taps at the smallest resolution (a UNet's bottom block; the
    same role as the project UNet's bottleneck).
    """
    if hasattr(net, "num_downs"):
        return int(net.num_downs)
    infos = {t.index: t for t in net.describe_layers(net.min_size * 8)}
    levels = [i for i in net.level_layers() if i != net.num_layers] or [net.num_layers]
    return min(levels, key=lambda i: (infos[i].height * infos[i].width, i))


def image_features(
    model: Any,
    images: Any,
    *,
    layer: int | None = None,
    tile: int | None = 128,
    batch_size: int = 8,
    translator: Any = None,
    percentiles: Sequence[float] | None = None,
) -> np.ndarray:
    """Globally averaged activations of ``model`` at ``layer``, one row per image tile.

    Parameters
    ----------
    model : UNetGenerator or TranslatedModel
        The feature network (its ``meta`` gives the input normalisation). For a translated
        model the features are the source UNet's on the translated images.
    images : folder, ndarray, list of ndarray or PlaneDataset
        Raw images (normalised here with the model's percentiles) or a dataset.
    layer : int, optional
        Layer ``1 .. num_layers``; default :func:`default_feature_layer`.
    tile : int or None
        Tile side (a multiple of the model's ``min_size``); each tile is one sample. None:
        one sample per whole image (padded to a multiple of ``min_size``).
    batch_size : int
        Tiles per forward pass.
    translator : callable, optional
        Applied to the normalised tiles before ``model`` (e.g. an SCGAN translator).
    percentiles : (float, float), optional
        Percentile normalisation of raw images; default the model's ``input_percentiles``.

    Returns
    -------
    ndarray
        ``(n_tiles, channels)`` float64.
    """
    import torch

    n_layers = model.num_layers
    layer = default_feature_layer(model) if layer is None else int(layer)
    if not 1 <= layer <= n_layers:
        raise ConfigError(f"layer {layer} is out of range: this model has layers 1..{n_layers}")
    m = model.min_size
    if tile is not None and (int(tile) < m or int(tile) % m):
        raise ConfigError(f"tile {tile} must be a positive multiple of {m} for this model")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    meta = getattr(model, "meta", {}) or {}
    pct = percentiles or model_percentiles(meta)
    ds = _as_dataset(images, pct)
    dev = next(model.parameters()).device
    modes = [(mod, mod.training) for mod in model.modules()]
    model.eval()
    feats: list[np.ndarray] = []
    pending: list[np.ndarray] = []

    def flush() -> None:
        x = torch.from_numpy(np.stack(pending)[:, None].astype(np.float32)).to(dev)
        if translator is not None:
            x = translator(x)
        f = model(x, upto=layer)
        feats.append(f.mean(dim=(-2, -1)).double().cpu().numpy())
        pending.clear()

    try:
        with torch.no_grad():
            for i in range(len(ds)):
                plane = np.nan_to_num(np.asarray(ds[i], dtype=np.float32))
                for t in _tiles(plane, tile, m):
                    if pending and t.shape != pending[0].shape:
                        flush()
                    pending.append(t)
                    if len(pending) >= batch_size:
                        flush()
            if pending:
                flush()
    finally:
        for mod, mode in modes:
            mod.training = mode
    if not feats:
        raise ConfigError("no images to take features of")
    return np.concatenate(feats)


def _check_features(a: np.ndarray, b: np.ndarray, least: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ConfigError(f"features must be two (n, d) arrays with the same d, got shapes "
                          f"{a.shape} and {b.shape}")
    if len(a) < least or len(b) < least:
        raise ConfigError(f"need at least {least} feature vectors per set, got {len(a)} and "
                          f"{len(b)} (give more images or a smaller tile)")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ConfigError("features contain NaN or infinite values")
    return a, b


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative eigenvalues -> 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID).

    Parameters
    ----------
    a, b : ndarray
        ``(n_a, d)`` and ``(n_b, d)`` features, at least two rows each.

    Returns
    -------
    float
        ``>= 0``; 0 for identical sets.
    """
    a, b = _check_features(a, b, 2)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    s_a, s_b = np.atleast_2d(s_a), np.atleast_2d(s_b)
    r = _sqrt_psd(s_a)
    middle = r @ s_b @ r  # similar to S_a S_b: same eigenvalues, but symmetric
    w = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(w, 0, None)).sum())
    fid = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_sqrt)
    return max(fid, 0.0)


def kernel_inception_distance(
    a: np.ndarray,
    b: np.ndarray,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Unbiased MMD^2 with the kernel ``(x.y / d + 1)^3`` over random subsets (KID).

    Parameters
    ----------
    a, b : ndarray
        ``(n_a, d)`` and ``(n_b, d)`` features, at least two rows each.
    subsets : int
        Number of random subsets.
    subset_size : int
        Rows per subset (capped at the smaller set size); every subset draws without
        replacement. When both sets are no larger than ``subset_size`` every "subset" is the
        whole set and the standard deviation is 0.
    seed : int
        Seeds the subset draws.

    Returns
    -------
    mean, std : float
        Over the subsets. The mean can be slightly negative (unbiased estimate of 0).
    """
    a, b = _check_features(a, b, 2)
    if subsets < 1 or subset_size < 2:
        raise ConfigError("subsets must be >= 1 and subset_size >= 2")
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    whole = m == len(a) == len(b)
    vals = []
    for _ in range(1 if whole else subsets):
        x = a if m == len(a) else a[rng.choice(len(a), m, replace=False)]
        y = b if m == len(b) else b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        off = m * (m - 1)
        vals.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off
                    - 2 * kxy.mean())
    return float(np.mean(vals)), float(np.std(vals))


def fid_kid(
    a: Any,
    b: Any,
    *,
    model: Any = "demo",
    weights: Any = None,
    layer: int | None = None,
    tile: int | None = 128,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    device: str = "cpu",
) -> FidKid:
    """FID and KID between image sets ``a`` and ``b`` on UNet features.

    Parameters
    ----------
    a, b : folder, ndarray, list of ndarray or PlaneDataset
        The two image sets (e.g. source images and new-microscope images).
    model : model, path or "demo"
        The source model. If it is an SCGAN (translated) model, the images of ``b`` are
        translated by its translator first ("after translation"); ``a`` never is.
    weights : path or model, optional
        A different feature network (project model or pix2pix file, loaded weights-only, or
        an already loaded model); default: the source UNet of ``model``.
    layer : int, optional
        Feature layer of the feature network; default its bottleneck.
    tile : int or None
        Tile side; each tile is one feature vector (None: one per image).
    subsets, subset_size, seed
        See :func:`kernel_inception_distance`.
    device : str
        Where the networks run.

    Returns
    -------
    FidKid
    """
    from ..models.translated import TranslatedModel

    if isinstance(model, str | os.PathLike):
        from ..models.checkpoint import load_model

        model = load_model(model, device)
    translator = model.translator if isinstance(model, TranslatedModel) else None
    if isinstance(weights, str | os.PathLike):
        net = load_feature_model(weights, device)
    elif weights is not None:
        net = weights.unet if isinstance(weights, TranslatedModel) else weights
    else:
        net = model.unet if isinstance(model, TranslatedModel) else model
    if translator is not None:
        translator.eval()
    # both sets normalised like the source model's inputs (what the translator expects)
    pct = (getattr(model, "meta", {}) or {}).get("input_percentiles")
    lay = default_feature_layer(net) if layer is None else int(layer)
    fa = image_features(net, a, layer=lay, tile=tile, percentiles=pct)
    fb = image_features(net, b, layer=lay, tile=tile, translator=translator, percentiles=pct)
    fid = frechet_distance(fa, fb)
    kid, kid_std = kernel_inception_distance(fa, fb, subsets=subsets, subset_size=subset_size,
                                             seed=seed)
    return FidKid(fid, kid, kid_std, len(fa), len(fb), lay, fa.shape[1])
