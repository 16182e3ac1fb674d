"""Training augmentations that imitate other microscopes (robust source training).

A source model that has seen its inputs darker, brighter, blurred, noisier and at other
pixel sizes during training is less surprised by a new microscope; this is the idea of
robust virtual staining (VisCy/Cytoland, Liu et al. 2025), which trains with random
intensity scaling and shifts, gamma, Gaussian smoothing, Gaussian noise, zoom and flips.
The transforms here are written for this project on numpy/scipy (scipy.ndimage does the
blur and the resampling); nothing of VisCy's code is used.

Three presets (:data:`AUGMENT_PRESETS`):

``none``
    Patches as cropped.
``basic``
    Random 90-degree rotations and flips (the pix2pix/CARE habit; the default and what
    ``train-source`` always did before presets existed).
``robust``
    ``basic`` plus, each with its own probability: scale jitter (zoom 0.67-1.5x, input and
    target together), defocus blur (Gaussian sigma 0-1.5 px), saturation (the brightest
    1-10 % of a patch clipped, as an overexposed camera does, then re-stretched as per-image
    normalisation would), Poisson-Gaussian noise (20-1000 photons at the patch's bright
    level, read noise up to 2 % of the range), gamma 0.67-1.5 and a gain/offset mismatch
    of the normalisation (gain 0.75-1.33, offset +-0.15 in network units). Only the input is
    changed by the intensity transforms; geometric ones move input and target together.

The ranges are plausible microscope-to-microscope differences chosen before any benchmark
was run; they were not tuned on the benchmark's shifts (the synthetic 2x zoom and sigma-2
defocus lie partly outside them).

Inputs arrive already normalised per image (see :mod:`napari_lmadda.data.normalize`), so an
exposure change on its own would be undone by normalisation; what survives normalisation
is saturation, noise, blur, nonlinearity and the pixel size, and those are what ``robust``
imitates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..errors import ConfigError
from .datasets import PairedDataset, PatchSampler, PlaneDataset

__all__ = [
    "AUGMENT_PRESETS",
    "AugmentConfig",
    "augment_config",
    "augment_input",
    "AugmentedSampler",
    "describe_preset",
]

#: Names accepted by ``--augment`` and :func:`augment_config`.
AUGMENT_PRESETS: tuple[str, ...] = ("none", "basic", "robust")


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to apply and how strongly.

    Ranges are ``(low, high)``; a probability of 0 switches a transform off.

    Attributes
    ----------
    flips : bool
        Random 90-degree rotation and horizontal flip (input and target).
    p_scale, scale : float, (float, float)
        Probability and zoom range (log-uniform); >1 magnifies. Input and target together.
    p_blur, blur_sigma : float, (float, float)
        Probability and Gaussian sigma range in pixels (defocus).
    p_saturate, saturate_top : float, (float, float)
        Probability and fraction range of the brightest pixels clipped.
    p_noise, photons, read_noise : float, (float, float), (float, float)
        Probability, bright-level photon count range (log-uniform) and read-noise standard
        deviation range (fraction of the normalised range) of Poisson-Gaussian noise.
    p_gamma, gamma : float, (float, float)
        Probability and gamma range (log-uniform).
    p_gain, gain, offset : float, (float, float), (float, float)
        Probability, gain range (log-uniform) and offset range (network units).
    """

    flips: bool = True
    p_scale: float = 0.0
    scale: tuple[float, float] = (1 / 1.5, 1.5)
    p_blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.0, 1.5)
    p_saturate: float = 0.0
    saturate_top: tuple[float, float] = (0.01, 0.10)
    p_noise: float = 0.0
    photons: tuple[float, float] = (20.0, 1000.0)
    read_noise: tuple[float, float] = (0.0, 0.02)
    p_gamma: float = 0.0
    gamma: tuple[float, float] = (1 / 1.5, 1.5)
    p_gain: float = 0.0
    gain: tuple[float, float] = (0.75, 1 / 0.75)
    offset: tuple[float, float] = (-0.15, 0.15)

    def __post_init__(self) -> None:
        for name in ("p_scale", "p_blur", "p_saturate", "p_noise", "p_gamma", "p_gain"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise ConfigError(f"augmentation probability {name} must be in [0, 1], got {v!r}")
        positive = ("scale", "photons", "gamma", "gain")
        for name in (*positive, "blur_sigma", "saturate_top", "read_noise", "offset"):
            lo, hi = (float(v) for v in getattr(self, name))
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ConfigError(f"augmentation range {name} needs low <= high, got {lo}, {hi}")
            if name in positive and lo <= 0:
                raise ConfigError(f"augmentation range {name} must be > 0, got {lo}")
            object.__setattr__(self, name, (lo, hi))
        if self.blur_sigma[0] < 0 or self.read_noise[0] < 0:
            raise ConfigError("blur sigma and read noise must be >= 0")
        if not 0 <= self.saturate_top[0] <= self.saturate_top[1] < 1:
            raise ConfigError(f"saturate_top must lie in [0, 1), got {self.saturate_top}")

    @property
    def changes_intensity(self) -> bool:
        """True when any input-only (intensity, blur, noise) transform is on."""
        return any(p > 0 for p in (self.p_blur, self.p_saturate, self.p_noise,
                                   self.p_gamma, self.p_gain))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in the model's provenance)."""
        return asdict(self)


_PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(flips=False),
    "basic": AugmentConfig(flips=True),
    "robust": AugmentConfig(flips=True, p_scale=0.5, p_blur=0.5, p_saturate=0.25,
                            p_noise=0.5, p_gamma=0.5, p_gain=0.5),
}


def augment_config(preset: str | AugmentConfig, **overrides: Any) -> AugmentConfig:
    """Return the :class:`AugmentConfig` of a preset name (or a config), with overrides.

    Raises
    ------
    ConfigError
        Unknown preset name or an invalid override.
    """
    if isinstance(preset, AugmentConfig):
        cfg = preset
    elif preset in _PRESETS:
        cfg = _PRESETS[preset]
    else:
        raise ConfigError(f"--augment must be one of {', '.join(AUGMENT_PRESETS)}, "
                          f"got {preset!r}")
    try:
        return replace(cfg, **overrides) if overrides else cfg
    except TypeError as exc:
        raise ConfigError(f"unknown augmentation option: {exc}") from None


def describe_preset(name: str) -> str:
    """One line saying what a preset does (for ``--help`` and the GUI)."""
    return {
        "none": "no augmentation",
        "basic": "random 90-degree rotations and flips",
        "robust": "rotations/flips + zoom 0.67-1.5x, defocus blur, saturation, "
                  "Poisson-Gaussian noise, gamma and gain/offset (imitates other microscopes)",
    }[name]


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def augment_input(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Apply the input-only transforms of ``cfg`` to one normalised 2D patch.

    The order follows the light path: optics (blur), detector (saturation, noise), then the
    display/normalisation mismatch (gamma, gain/offset).

    Parameters
    ----------
    x : numpy.ndarray
        ``(H, W)`` patch in network units (roughly [-1, 1], not clipped).
    rng : numpy.random.Generator
        Source of randomness.
    cfg : AugmentConfig
        What to apply.

    Returns
    -------
    numpy.ndarray
        A new ``float32`` array of the same shape (``x`` is not changed).
    """
    out = np.array(x, dtype=np.float32, copy=True)
    if cfg.p_blur and rng.random() < cfg.p_blur:
        sigma = float(rng.uniform(*cfg.blur_sigma))
        if sigma > 0:
            out = ndi.gaussian_filter(out, sigma, mode="reflect").astype(np.float32)
    if cfg.p_saturate and rng.random() < cfg.p_saturate:
        top = float(rng.uniform(*cfg.saturate_top))
        lo, ceil = (float(v) for v in np.percentile(out, [1.0, 100.0 * (1.0 - top)]))
        if ceil - lo > 1e-6:
            # per-image normalisation of a clipped image stretches [p1, clip] to [-1, 1]
            out = 2.0 * (np.minimum(out, ceil) - lo) / (ceil - lo) - 1.0
    if cfg.p_noise and rng.random() < cfg.p_noise:
        photons = _log_uniform(rng, *cfg.photons)
        read = float(rng.uniform(*cfg.read_noise))
        u = np.clip((out + 1.0) * 0.5, 0.0, None)  # [0, 1] = [dark, bright level]
        shot = rng.poisson(u * photons) / photons
        noisy = shot + rng.normal(0.0, read, size=u.shape) if read > 0 else shot
        out = out + 2.0 * (noisy - u)  # keep what lay below 0 (values under p_low)
    if cfg.p_gamma and rng.random() < cfg.p_gamma:
        g = _log_uniform(rng, *cfg.gamma)
        u = (out + 1.0) * 0.5
        out = 2.0 * np.sign(u) * np.abs(u) ** g - 1.0
    if cfg.p_gain and rng.random() < cfg.p_gain:
        out = _log_uniform(rng, *cfg.gain) * out + float(rng.uniform(*cfg.offset))
    return np.asarray(out, dtype=np.float32)


class AugmentedSampler:
    """Random patches with an augmentation preset: a drop-in for ``PatchSampler``.

    Geometric transforms (rotations, flips, zoom) act on input and target together;
    intensity transforms on the input only.

    Parameters
    ----------
    dataset : PairedDataset or PlaneDataset
        Normalised planes (targets already encoded to the network range).
    patch_size, batch_size : int
        Output patch side P and batch size B.
    augment : str or AugmentConfig
        Preset name (:data:`AUGMENT_PRESETS`) or a config.
    seed : int
        Seed: the same seed and dataset give the same batches.
    """

    def __init__(self, dataset: PairedDataset | PlaneDataset, patch_size: int,
                 batch_size: int, *, augment: str | AugmentConfig = "basic",
                 seed: int = 0) -> None:
        self.config = augment_config(augment)
        self.patch_size = int(patch_size)
        self.batch_size = int(batch_size)
        cfg = self.config
        # zoom-out needs a larger crop, resampled down to P
        self._inner_size = (
            int(math.ceil(self.patch_size / cfg.scale[0])) if cfg.p_scale and cfg.scale[0] < 1
            else self.patch_size
        )
        self._inner = PatchSampler(dataset, self._inner_size, batch_size, seed=seed,
                                   augment=cfg.flips)
        self.dataset = dataset
        self.paired = self._inner.paired
        self.rng = np.random.default_rng([int(seed), 0x5EED])

    def _geometry(self, stack: np.ndarray) -> np.ndarray:
        p, q = self.patch_size, self._inner_size
        cfg = self.config
        if cfg.p_scale and self.rng.random() < cfg.p_scale:
            s = _log_uniform(self.rng, *cfg.scale)
            c = int(min(q, max(2, round(p / s))))
        else:
            c = p
        y0 = int(self.rng.integers(0, q - c + 1))
        x0 = int(self.rng.integers(0, q - c + 1))
        crop = stack[:, y0: y0 + c, x0: x0 + c]
        if c == p:
            return crop
        zoomed = ndi.zoom(crop, (1.0, p / c, p / c), order=1, mode="grid-mirror",
                          grid_mode=True)
        return zoomed[:, :p, :p]

    def sample(self) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Draw one batch: ``(B, 1, P, P)`` inputs (and ``(B, C, P, P)`` targets)."""
        batch = self._inner.sample()
        x, y = batch if self.paired else (batch, None)
        stack = x if y is None else np.concatenate([x, y], axis=1)
        cfg = self.config
        outs = []
        for item in stack:
            item = self._geometry(item) if self._inner_size != self.patch_size or \
                cfg.p_scale else item
            if cfg.changes_intensity:
                item = item.copy()
                item[0] = augment_input(item[0], self.rng, cfg)
            outs.append(item)
        full = np.ascontiguousarray(np.stack(outs), dtype=np.float32)
        if y is None:
            return full
        return full[:, :1].copy(), full[:, 1:].copy()

    def __iter__(self):
        """Yield batches forever."""
        while True:
            yield self.sample()
