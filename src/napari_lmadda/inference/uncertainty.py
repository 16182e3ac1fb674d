"""Predictive uncertainty of a virtual stain: MC dropout, ensembles, test-time augmentation.

The spread of several plausible predictions of the same image says where a virtual stain can
be trusted. Three ways to get them:

``mc_dropout``
    One model, its dropout modules in train mode and everything else (BatchNorm) in eval
    mode, ``n_samples`` passes. A pix2pix UNet has dropout only in the up blocks of its
    middle ``ngf*8`` blocks (down blocks 5 .. num_downs-1), so a model with ``num_downs < 6``
    or trained without dropout has none.
``tta``
    For a model without dropout: the 8 flips/rotations by 90 degrees of the input, each
    prediction transformed back. This measures how much the prediction depends on
    orientation, a weaker proxy than dropout; outputs say which method was used.
``ensemble``
    Several models (e.g. adapted with different seeds), one eval-mode pass each.

:func:`trust_map` gives the per-pixel standard deviation of a whole image in stain units,
tiled like :func:`~.inference.predict.predict_image`; :func:`uncertainty_score` the mean
standard deviation over target patches, the score of SIT-ADDA-Auto's depth selector
(:func:`~napari_lmadda.adapt.recommend.select_layer_by_uncertainty`). Qt-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = [
    "METHODS",
    "has_dropout",
    "uncertainty_method",
    "predictive_uncertainty",
    "uncertainty_score",
    "trust_map",
    "tta_predict",
]

#: how the spread is obtained
METHODS = ("auto", "mc_dropout", "tta", "ensemble")

_DIHEDRAL = [(k, f) for f in (False, True) for k in range(4)]  # (rot90 count, flip)


def has_dropout(model: Any) -> bool:
    """Whether ``model`` has a dropout module with a non-zero rate."""
    from torch import nn

    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


def uncertainty_method(models_or_model: Any, method: str = "auto") -> str:
    """Name the method :func:`predictive_uncertainty` uses (``ensemble``, ``mc_dropout``, ``tta``).

    ``auto`` means: several models -> ensemble; one model with dropout -> MC dropout;
    otherwise test-time augmentation.
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
    many = isinstance(models_or_model, list | tuple)
    if method == "auto":
        if many and len(models_or_model) > 1:
            return "ensemble"
        one = models_or_model[0] if many else models_or_model
        return "mc_dropout" if has_dropout(one) else "tta"
    if method == "ensemble" and not (many and len(models_or_model) > 1):
        raise ConfigError("an ensemble needs at least two models")
    if method == "mc_dropout":
        one = models_or_model[0] if many else models_or_model
        if not has_dropout(one):
            raise ConfigError("this model has no dropout: use method 'tta' (or 'auto')")
    return method


def _set_mc_mode(model: Any) -> None:
    """Eval mode everywhere except the dropout modules."""
    from torch import nn

    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.train()


def _tta_forward(model: Any, x: Any, k: int, flip: bool) -> Any:
    import torch

    y = torch.rot90(x, k, dims=(-2, -1))
    if flip:
        y = torch.flip(y, dims=(-1,))
    out = model(y)
    if flip:
        out = torch.flip(out, dims=(-1,))
    return torch.rot90(out, -k, dims=(-2, -1))


def _samples(models: Sequence[Any], method: str, x: Any, n_samples: int) -> Any:
    """Stacked predictions ``(S, B, C, H, W)`` of ``x`` (no grad; modes set by the caller)."""
    import torch

    with torch.no_grad():
        if method == "ensemble":
            for m in models:
                m.eval()
            return torch.stack([m(x) for m in models])
        model = models[0]
        if method == "mc_dropout":
            _set_mc_mode(model)
            return torch.stack([model(x) for _ in range(n_samples)])
        model.eval()
        if x.shape[-1] != x.shape[-2]:  # rot90 of a non-square input: flips only
            ops = [(0, False), (2, False), (0, True), (2, True)]
        else:
            ops = _DIHEDRAL
        return torch.stack([_tta_forward(model, x, k, f) for k, f in ops[: max(2, n_samples)]])


class _Restore:
    """Restore the train/eval flags of every module of some models on exit."""

    def __init__(self, models: Sequence[Any]) -> None:
        self.flags = [(m, m.training) for model in models for m in model.modules()]

    def __enter__(self) -> _Restore:
        return self

    def __exit__(self, *exc: Any) -> None:
        for m, f in self.flags:
            m.training = f


def predictive_uncertainty(
    models_or_model: Any,
    images: Any,
    *,
    n_samples: int = 8,
    method: str = "auto",
    seed: int = 0,
    batch_size: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and standard deviation of several predictions of the same images.

    Parameters
    ----------
    models_or_model : UNetGenerator or sequence of UNetGenerator
        One model (MC dropout, or test-time augmentation without dropout) or an ensemble.
    images : ndarray or torch.Tensor
        Normalised network inputs ``(N, H, W)`` or ``(N, C, H, W)``, sides multiples of
        ``2**num_downs`` (no normalisation or tiling here; see :func:`trust_map`).
    n_samples : int
        Passes for MC dropout; at most 8 transforms for TTA; ignored for an ensemble.
    method : {"auto", "mc_dropout", "tta", "ensemble"}
        See :func:`uncertainty_method`.
    seed : int
        Seeds the dropout masks (the global RNG is left untouched).
    batch_size : int
        Images per forward pass.

    Returns
    -------
    mean, std : ndarray
        ``(N, C_out, H, W)`` float32, in network units ([-1, 1]); ``std`` is the population
        standard deviation over the samples.
    """
    import torch

    if int(n_samples) < 2:
        raise ConfigError(f"n_samples must be >= 2, got {n_samples}")
    models = list(models_or_model) if isinstance(models_or_model, list | tuple) else [
        models_or_model]
    if not models:
        raise ConfigError("no model given")
    kind = uncertainty_method(models_or_model, method)
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(
        np.ascontiguousarray(np.asarray(images, np.float32)))
    if x.ndim == 3:
        x = x[:, None]
    dev = next(models[0].parameters()).device
    means, stds = [], []
    with _Restore(models), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(0, len(x), batch_size):
            s = _samples(models, kind, x[i : i + batch_size].float().to(dev), int(n_samples))
            means.append(s.mean(0).cpu())
            stds.append(s.std(0, unbiased=False).cpu())
    return torch.cat(means).numpy(), torch.cat(stds).numpy()


def uncertainty_score(models_or_model: Any, images: Any, *, n_samples: int = 8,
                      method: str = "auto", seed: int = 0) -> float:
    """Mean predictive standard deviation over target images (lower = more certain).

    The score of SIT-ADDA-Auto's depth selector; see :func:`predictive_uncertainty` for the
    arguments.
    """
    _, std = predictive_uncertainty(models_or_model, images, n_samples=n_samples,
                                    method=method, seed=seed)
    return float(std.mean())


class _SpreadModel:
    """Wraps a model so that one ``forward`` returns the spread (or mean) of several passes.

    It quacks like a :class:`UNetGenerator` for :func:`~.inference.predict.predict_image`
    (``config``, ``min_size``, ``meta``, ``parameters``, ``modules``, ``eval``), which then
    does the normalisation, padding, tiling and blending.
    """

    def __init__(self, model: Any, method: str, n_samples: int, reduce: str = "std") -> None:
        self.model, self.method, self.n_samples = model, method, n_samples
        self.reduce = reduce
        self.config = model.config
        self.min_size = model.min_size
        self.meta = getattr(model, "meta", {}) or {}

    def parameters(self) -> Any:
        return self.model.parameters()

    def modules(self) -> Any:
        return self.model.modules()

    def eval(self) -> _SpreadModel:
        self.model.eval()
        return self

    def __call__(self, x: Any) -> Any:
        samples = _samples([self.model], self.method, x, self.n_samples)
        return samples.mean(0) if self.reduce == "mean" else samples.std(0, unbiased=False)


def trust_map(
    model: Any,
    image2d: np.ndarray,
    *,
    n_samples: int = 8,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int = 4,
    method: str = "auto",
    seed: int = 0,
    normalize: bool = True,
    to_stain: bool = True,
) -> np.ndarray:
    """Per-pixel standard deviation of a model's prediction of one image (a trust map).

    MC dropout (dropout in train mode, BatchNorm in eval mode) when the model has dropout,
    otherwise test-time augmentation (flips and rotations); :func:`uncertainty_method` tells
    which. The image is normalised, padded and tiled as by
    :func:`~.inference.predict.predict_image`, and the tiles' standard deviations are
    blended with the same window.

    Parameters
    ----------
    model : UNetGenerator
        The (adapted) model.
    image2d : ndarray
        ``(H, W)`` raw image (or normalised with ``normalize=False``).
    n_samples : int
        Passes per tile (at most 8 for test-time augmentation).
    tile, overlap, batch_size : int
        Tiling, as for prediction.
    method : {"auto", "mc_dropout", "tta"}
        How the predictions are varied.
    seed : int
        Seeds the dropout masks: the same seed gives the same map (global RNG untouched).
    normalize : bool
        Apply the model's percentile normalisation first.
    to_stain : bool
        Express the spread in each channel's stain units (the model's
        :class:`~napari_lmadda.data.normalize.TargetNorm`), else network units.

    Returns
    -------
    ndarray
        ``(C, H, W)`` float32 standard deviation, same height and width as the image.
    """
    import torch

    from .predict import predict_image

    if method == "ensemble":
        raise ConfigError("trust_map takes one model: use predictive_uncertainty for ensembles")
    if int(n_samples) < 2:
        raise ConfigError(f"n_samples must be >= 2, got {n_samples}")
    kind = uncertainty_method(model, method)
    wrapped = _SpreadModel(model, kind, int(n_samples))
    with _Restore([model]), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        std = predict_image(wrapped, image2d, tile=tile, overlap=overlap, batch_size=batch_size,
                            normalize=normalize, to_stain=False)
    if to_stain:
        from ..data.normalize import TargetNorm

        # TargetNorm.decode is affine per channel: a spread of s network units is
        # s * (hi - lo) / 2 units of that channel (its target units, or normalised ones)
        norm = TargetNorm.from_meta(wrapped.meta, std.shape[0])
        half = 0.5 * np.abs(np.asarray(norm.hi, np.float64) - np.asarray(norm.lo, np.float64))
        std = (std * half[:, None, None]).astype(np.float32)
    return np.maximum(std, 0).astype(np.float32)


def tta_predict(
    model: Any,
    image2d: np.ndarray,
    *,
    n_samples: int = 8,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int = 4,
) -> np.ndarray:
    """Predict one image as the average over flips and 90-degree rotations (TTA).

    Each tile is predicted in up to 8 orientations (4 for a non-square tile), each prediction
    turned back, and the mean taken; the tiles are then blended as by
    :func:`~.inference.predict.predict_image`. The spread of the same predictions is
    :func:`trust_map` with ``method="tta"``.

    Parameters
    ----------
    model : UNetGenerator
        The (adapted) model.
    image2d : ndarray
        ``(H, W)`` raw image.
    n_samples : int
        Orientations per tile (2 to 8).
    tile, overlap, batch_size : int
        Tiling, as for prediction.

    Returns
    -------
    ndarray
        ``(C, H, W)`` float32 in stain units, same height and width as the image.
    """
    from .predict import predict_image

    if int(n_samples) < 2:
        raise ConfigError(f"n_samples must be >= 2, got {n_samples}")
    wrapped = _SpreadModel(model, "tta", int(n_samples), reduce="mean")
    with _Restore([model]):
        return predict_image(wrapped, image2d, tile=tile, overlap=overlap,
                             batch_size=batch_size)
