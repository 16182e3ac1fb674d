"""Intensity normalisation to and from the network range ``[-1, 1]``.

The project's default for network inputs is per-image percentile normalisation with
:data:`DEFAULT_PERCENTILES`: the ``p_low`` percentile maps to -1 and the ``p_high`` percentile
to +1, without clipping (values outside the percentiles go beyond [-1, 1]). Targets with a
known range (e.g. a probability map in [0, 1]) use :func:`fixed_range_normalize`.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = [
    "DEFAULT_PERCENTILES",
    "model_percentiles",
    "NETWORK_RANGE",
    "NormParams",
    "NormalizationWarning",
    "percentile_normalize",
    "fixed_range_normalize",
    "apply_normalization",
    "denormalize",
    "TARGET_MODES",
    "TargetNorm",
    "DEFAULT_TARGET_PERCENTILES",
    "TARGET_MARGIN",
    "RangeProblem",
    "fit_target_norm",
    "encode_target",
]

#: Default (low, high) percentiles of per-image input normalisation.
DEFAULT_PERCENTILES: tuple[float, float] = (1.0, 99.8)


def model_percentiles(model_or_meta: Any) -> tuple[float, float]:
    """The input percentiles a model was trained with (its ``meta``), else the default.

    Parameters
    ----------
    model_or_meta : model or mapping
        A model with a ``meta`` dict, or that dict (``input_percentiles``); None or a model
        without them gives :data:`DEFAULT_PERCENTILES`.
    """
    meta = model_or_meta if isinstance(model_or_meta, dict) else getattr(
        model_or_meta, "meta", None)
    pct = (meta or {}).get("input_percentiles") or DEFAULT_PERCENTILES
    return float(pct[0]), float(pct[1])


#: The range the network works in: ``lo`` maps to the first value, ``hi`` to the second.
NETWORK_RANGE: tuple[float, float] = (-1.0, 1.0)

_F32_MAX = float(np.finfo(np.float32).max)
# elements converted to float64 at a time: bounds the temporaries of large images
_CHUNK = 1 << 20


class NormalizationWarning(UserWarning):
    """An image could not be normalised the usual way (e.g. it is constant)."""


@dataclass(frozen=True)
class NormParams:
    """The affine map used to normalise one image: ``out = 2 * (x - lo) / (hi - lo) - 1``.

    Attributes
    ----------
    lo, hi : float
        Raw intensities mapped to -1 and +1 (``hi > lo`` always).
    p_low, p_high : float or None
        The percentiles ``lo`` and ``hi`` came from; None for a fixed range.
    """

    lo: float
    hi: float
    p_low: float | None = None
    p_high: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        """Return a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormParams:
        """Build from :meth:`to_dict`'s output.

        Raises
        ------
        ConfigError
            Missing keys or ``hi <= lo``.
        """
        try:
            lo, hi = float(data["lo"]), float(data["hi"])
            p_low = None if data.get("p_low") is None else float(data["p_low"])
            p_high = None if data.get("p_high") is None else float(data["p_high"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid normalisation parameters {data!r}: {exc}") from exc
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise ConfigError(f"invalid normalisation parameters: need lo < hi, got {lo}, {hi}")
        return cls(lo=lo, hi=hi, p_low=p_low, p_high=p_high)


def _check_percentiles(p_low: float, p_high: float) -> None:
    if not (0.0 <= p_low < p_high <= 100.0):
        raise ConfigError(
            f"percentiles must satisfy 0 <= p_low < p_high <= 100, got {p_low}, {p_high}"
        )


def apply_normalization(img: np.ndarray, params: NormParams) -> np.ndarray:
    """Map raw intensities to the network range with given parameters.

    Parameters
    ----------
    img : numpy.ndarray
        Any shape, any real dtype.
    params : NormParams
        The map to apply.

    Returns
    -------
    numpy.ndarray
        ``float32``, same shape; NaN stays NaN, values beyond the float32 range saturate.
        Computed in float64 a chunk at a time, so a large image needs little more memory
        than its ``float32`` result.
    """
    x = np.asarray(img)
    out = np.empty(x.shape, np.float32)
    flat_in, flat_out = x.reshape(-1), out.reshape(-1)
    lo, scale = params.lo, params.hi - params.lo
    half = not np.isfinite(scale)  # lo and hi near +-1.8e308: work with halves, no overflow
    if half:
        lo, scale = 0.5 * params.lo, 0.5 * params.hi - 0.5 * params.lo
    for start in range(0, flat_in.size, _CHUNK):
        t = flat_in[start : start + _CHUNK].astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            if half:
                t *= 0.5
            t -= lo  # same operations, in the same order, as 2 * (x - lo) / scale - 1
            t *= 2.0
            t /= scale
            t -= 1.0
            np.clip(t, -_F32_MAX, _F32_MAX, out=t)  # only guards float32 overflow to inf
        flat_out[start : start + _CHUNK] = t
    return out


def percentile_normalize(
    img: np.ndarray,
    p_low: float = DEFAULT_PERCENTILES[0],
    p_high: float = DEFAULT_PERCENTILES[1],
    *,
    eps: float = 1e-6,
) -> tuple[np.ndarray, NormParams]:
    """Normalise an image by its percentiles: ``p_low`` -> -1, ``p_high`` -> +1, no clipping.

    Percentiles are computed over the finite pixels only (NaN/Inf ignored; NaN stays NaN in
    the output).

    Degenerate images: when the two percentiles are closer than ``eps`` (relative to their
    magnitude, or absolutely below magnitude 1) -- e.g. a dark image with a few bright
    spots -- ``hi`` falls back to the maximum finite pixel (or, for a bright image with a few
    dark pixels, ``lo`` to the minimum). If no pixel differs the image is constant: ``hi``
    is set to ``lo + 1`` (``lo + eps * |lo|`` for huge values, where ``lo + 1 == lo``), the
    output is all -1 and a :class:`NormalizationWarning` is emitted. Nothing is ever
    divided by zero.

    Parameters
    ----------
    img : numpy.ndarray
        Any shape, any real dtype.
    p_low, p_high : float
        Percentiles in [0, 100], ``p_low < p_high``.
    eps : float
        Smallest usable ``hi - lo`` (relative to ``max(1, |lo|, |hi|)``).

    Returns
    -------
    out : numpy.ndarray
        ``float32``, same shape as ``img``.
    params : NormParams
        The map used; :func:`denormalize` inverts it.

    Raises
    ------
    ConfigError
        Invalid percentiles.
    """
    _check_percentiles(p_low, p_high)
    x = np.asarray(img)
    if x.dtype.kind not in "biuf":
        raise ConfigError(f"cannot normalise an array of dtype {x.dtype}")
    if x.dtype.kind == "f":
        mask = np.isfinite(x)
        finite = x.reshape(-1) if mask.all() else x[mask]
        del mask
    else:
        finite = x.reshape(-1)
    finite = finite.astype(np.float64)  # a copy that np.percentile may reorder in place
    if finite.size == 0:
        lo = hi = 0.0
    else:
        lo, hi = (
            float(v) for v in np.percentile(finite, [p_low, p_high], overwrite_input=True)
        )
    tol = eps * max(1.0, abs(lo), abs(hi))
    if hi - lo < tol and finite.size:
        if float(finite.max()) - lo >= tol:  # dark image with a few bright pixels
            hi = float(finite.max())
        elif hi - float(finite.min()) >= tol:  # bright image with a few dark pixels
            lo = float(finite.min())
    if hi - lo < tol:
        warnings.warn(
            f"image is constant (value {lo:g}); normalised to all {NETWORK_RANGE[0]:g}",
            NormalizationWarning,
            stacklevel=2,
        )
        hi = lo + max(1.0, tol)  # lo + 1 == lo for |lo| >= 2**53
    del finite
    params = NormParams(lo=lo, hi=hi, p_low=float(p_low), p_high=float(p_high))
    return apply_normalization(x, params), params


def fixed_range_normalize(
    img: np.ndarray, lo: float = 0.0, hi: float = 1.0
) -> tuple[np.ndarray, NormParams]:
    """Map a known intensity range ``[lo, hi]`` to ``[-1, 1]`` (no clipping).

    Parameters
    ----------
    img : numpy.ndarray
        Any shape, any real dtype.
    lo, hi : float
        Raw values mapped to -1 and +1.

    Returns
    -------
    out : numpy.ndarray
        ``float32``, same shape.
    params : NormParams
        With ``p_low = p_high = None``.

    Raises
    ------
    ConfigError
        ``hi <= lo`` or a non-finite bound.
    """
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ConfigError(f"fixed normalisation range needs lo < hi, got ({lo}, {hi})")
    params = NormParams(lo=lo, hi=hi)
    return apply_normalization(img, params), params


def denormalize(
    out: np.ndarray, params: NormParams, *, dtype: np.dtype | type | str = np.float32
) -> np.ndarray:
    """Invert a normalisation: ``x = lo + (out + 1) / 2 * (hi - lo)``.

    Parameters
    ----------
    out : numpy.ndarray
        Values in network range.
    params : NormParams
        The parameters the forward map returned.
    dtype : dtype
        Output dtype (``float32`` by default; no rounding or clipping is done).

    Returns
    -------
    numpy.ndarray
        Raw intensities.
    """
    y = np.asarray(out, dtype=np.float64)
    x = params.lo + (y + 1.0) * 0.5 * (params.hi - params.lo)
    return x.astype(dtype)


#: How a model's target normalisation was chosen (``TargetNorm.mode``): ``dataset`` = robust
#: percentiles over the whole training set per channel; ``image`` = per-image percentiles
#: (CARE-style; predictions are in normalised units); ``fixed`` = a given range (the range
#: of every model file written before the target normalisation was learned).
TARGET_MODES: tuple[str, ...] = ("dataset", "image", "fixed")


@dataclass(frozen=True)
class TargetNorm:
    """How a model's output channels map to stain units (stored in the model file).

    Channel ``c`` of the network's output ``y`` (tanh, in ``[-1, 1]``) means the stain value
    ``lo[c] + (y + 1) / 2 * (hi[c] - lo[c])``; training encodes targets with the inverse.

    Attributes
    ----------
    lo, hi : tuple of float
        Per output channel, the stain values the network's -1 and +1 stand for
        (``lo[c] != hi[c]``, both finite).
    mode : {"dataset", "image", "fixed"}
        How ``lo``/``hi`` were chosen (see :data:`TARGET_MODES`).
    percentiles : (float, float) or None
        The percentiles behind ``dataset`` and ``image`` modes.
    units : {"target", "normalised"}
        ``target``: decoded predictions are in the training targets' own units;
        ``normalised``: they are per-image normalised values (``image`` mode), not
        comparable with the targets' raw intensities.
    """

    lo: tuple[float, ...]
    hi: tuple[float, ...]
    mode: str = "fixed"
    percentiles: tuple[float, float] | None = None
    units: str = "target"

    def __post_init__(self) -> None:
        lo = tuple(float(v) for v in self.lo)
        hi = tuple(float(v) for v in self.hi)
        if not lo or len(lo) != len(hi):
            raise ConfigError(f"target range needs one (lo, hi) per channel, got {lo}, {hi}")
        for a, b in zip(lo, hi):
            if not (np.isfinite(a) and np.isfinite(b)) or a == b:
                raise ConfigError(f"target range needs finite lo != hi, got ({a}, {b})")
        if self.mode not in TARGET_MODES:
            raise ConfigError(f"target normalisation mode must be one of {TARGET_MODES}, "
                              f"got {self.mode!r}")
        if self.units not in ("target", "normalised"):
            raise ConfigError(f"target units must be 'target' or 'normalised', got {self.units!r}")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)
        if self.percentiles is not None:
            pl, ph = (float(v) for v in self.percentiles)
            _check_percentiles(pl, ph)
            object.__setattr__(self, "percentiles", (pl, ph))

    @property
    def channels(self) -> int:
        """Number of output channels described."""
        return len(self.lo)

    @classmethod
    def fixed(cls, lo: float, hi: float, channels: int = 1) -> TargetNorm:
        """The same fixed range for every channel (e.g. the legacy ``(-0.05, 1.05)``)."""
        return cls((lo,) * channels, (hi,) * channels, mode="fixed")

    def _bounds(self, ndim: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
        shape = [1] * ndim
        shape[axis] = self.channels
        lo = np.asarray(self.lo, np.float64).reshape(shape)
        hi = np.asarray(self.hi, np.float64).reshape(shape)
        return lo, hi

    def decode(self, y: np.ndarray, axis: int = 0) -> np.ndarray:
        """Network output -> stain units (``float32``); ``axis`` is the channel axis."""
        y = np.asarray(y)
        lo, hi = self._bounds(y.ndim, axis)
        return (lo + (y.astype(np.float64) + 1.0) * 0.5 * (hi - lo)).astype(np.float32)

    def encode(self, x: np.ndarray, axis: int = 0) -> np.ndarray:
        """Stain units -> network range (``float32``); the inverse of :meth:`decode`."""
        x = np.asarray(x)
        lo, hi = self._bounds(x.ndim, axis)
        return (2.0 * (x.astype(np.float64) - lo) / (hi - lo) - 1.0).astype(np.float32)

    def to_meta(self) -> dict[str, Any]:
        """The model-file metadata: ``target_range`` (per channel) and ``target_norm``."""
        return {
            "target_range": [[a, b] for a, b in zip(self.lo, self.hi)],
            "target_norm": {
                "mode": self.mode,
                "percentiles": None if self.percentiles is None else list(self.percentiles),
                "units": self.units,
            },
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any], channels: int) -> TargetNorm:
        """Read a model's metadata; a legacy ``target_range: [lo, hi]`` covers every channel.

        Raises
        ------
        ConfigError
            The range is malformed or does not describe ``channels`` channels.
        """
        rng = meta.get("target_range", (0.0, 1.0))
        info = meta.get("target_norm") or {}
        if not isinstance(info, dict):
            raise ConfigError(f"invalid target normalisation {info!r}")
        try:
            pairs = [(float(rng[0]), float(rng[1]))] * channels if (
                len(rng) == 2 and not hasattr(rng[0], "__len__")
            ) else [(float(a), float(b)) for a, b in rng]
        except (TypeError, ValueError):
            raise ConfigError(f"invalid target range {rng!r}") from None
        if len(pairs) != channels:
            raise ConfigError(
                f"target range describes {len(pairs)} channel(s), the model has {channels}")
        pct = info.get("percentiles")
        return cls(
            tuple(a for a, _ in pairs), tuple(b for _, b in pairs),
            mode=info.get("mode", "fixed"),
            percentiles=None if pct is None else tuple(pct),
            units=info.get("units", "target"),
        )


#: Default (low, high) percentiles of a learned target normalisation (``dataset`` and
#: ``image`` modes): wide, so the brightest structures (nuclei) stay representable.
DEFAULT_TARGET_PERCENTILES: tuple[float, float] = (0.1, 99.9)
#: Room left beyond the learned range, as a fraction of it: background at exactly -1 would
#: push tanh into saturation, where sparse targets stop getting gradient (for a [0, 1]
#: target this gives the range (-0.05, 1.05) every model used before).
TARGET_MARGIN = 0.05


@dataclass(frozen=True)
class RangeProblem:
    """A target plane with values the model cannot produce (see :func:`fit_target_norm`).

    Attributes
    ----------
    channel : int
        Output channel.
    name : str
        The plane's name (file name, ``[plane]`` for stacks).
    vmin, vmax : float
        The plane's smallest and largest value.
    outside : float
        Fraction of its pixels outside the representable range (estimated from a sample).
    lo, hi : float
        The representable range (the model's -1 and +1).
    """

    channel: int
    name: str
    vmin: float
    vmax: float
    outside: float
    lo: float
    hi: float

    def message(self, channel_name: str | None = None) -> str:
        """One line for the user."""
        ch = channel_name or f"channel {self.channel}"
        return (f"target '{self.name}' ({ch}) runs from {self.vmin:g} to {self.vmax:g}, but the "
                f"model can only produce {self.lo:g} to {self.hi:g}: {100 * self.outside:.1f} % "
                "of its pixels cannot be learned")


def _widen(lo: float, hi: float, margin: float) -> tuple[float, float]:
    span = hi - lo
    return lo - margin * span, hi + margin * span


def fit_target_norm(
    channels: Any,
    *,
    mode: str = "dataset",
    percentiles: tuple[float, float] = DEFAULT_TARGET_PERCENTILES,
    fixed_range: tuple[float, float] | None = None,
    margin: float = TARGET_MARGIN,
    max_samples: int = 2_000_000,
    outside_tolerance: float = 0.01,
    seed: int = 0,
) -> tuple[TargetNorm, list[RangeProblem]]:
    """Learn how to encode training targets, and find targets the model could not learn.

    One pass over the targets, one plane in memory at a time, keeping a random sample of
    at most about ``max_samples`` pixels per channel (at least 64 per plane), so a folder of
    any size needs bounded memory.

    Parameters
    ----------
    channels : sequence of datasets
        One per output channel; each has ``len()``, ``[i]`` -> the raw 2D plane (any dtype and
        range: uint8, uint16, 12-bit in 16, float, negative, z-scored) and optionally
        ``name(i)``.
    mode : {"dataset", "image", "fixed"}
        ``dataset``: robust percentiles over the whole set per channel (relative brightness of
        fields survives; predictions come out in target units). ``image``: each target is
        normalised by its own percentiles (CARE-style; predictions in normalised units, 0 =
        the image's low percentile, 1 = its high percentile). ``fixed``: ``fixed_range``.
    percentiles : (float, float)
        Low and high percentiles for ``dataset`` and ``image``.
    fixed_range : (float, float), optional
        The stain range of ``fixed`` mode (e.g. ``(0, 1)`` for probability maps).
    margin : float
        Room beyond the range as a fraction of it (:data:`TARGET_MARGIN`).
    max_samples : int
        Pixel samples kept per channel.
    outside_tolerance : float
        A plane with more than this fraction of its pixels outside the representable
        range is reported.
    seed : int
        Seed of the pixel sampling.

    Returns
    -------
    norm : TargetNorm
        The normalisation (``to_meta()`` goes into the model file).
    problems : list of RangeProblem
        Planes the model cannot represent (empty in ``image`` mode).

    Raises
    ------
    ConfigError
        Bad settings, no planes, or a channel whose targets are all one value (in ``dataset``
        mode: nothing to learn).
    """
    if mode not in TARGET_MODES:
        raise ConfigError(f"target normalisation must be one of {TARGET_MODES}, got {mode!r}")
    _check_percentiles(*percentiles)
    if not (0 <= margin < 1):
        raise ConfigError(f"target margin must be in [0, 1), got {margin}")
    if mode == "fixed":
        if fixed_range is None:
            raise ConfigError("fixed target normalisation needs a range (lo, hi)")
        a, b = (float(v) for v in fixed_range)
        if not (np.isfinite(a) and np.isfinite(b) and b > a):
            raise ConfigError(f"target range needs lo < hi, got ({a}, {b})")
    chans = list(channels)
    if not chans or any(len(c) == 0 for c in chans):
        raise ConfigError("no target planes to learn the target normalisation from")
    rng = np.random.default_rng(seed)
    los, his = [], []
    problems: list[RangeProblem] = []
    for ci, ds in enumerate(chans):
        n = len(ds)
        per_plane = int(min(65536, max(64, max_samples // n)))
        samples: list[np.ndarray] = []
        extremes: list[tuple[float, float]] = []
        for i in range(n):
            plane = np.asarray(ds[i])
            flat = plane.reshape(-1)
            finite = flat if plane.dtype.kind in "biu" else flat[np.isfinite(flat)]
            if finite.size == 0:
                samples.append(np.zeros(0, np.float64))
                extremes.append((np.nan, np.nan))
                continue
            extremes.append((float(finite.min()), float(finite.max())))
            pick = finite if finite.size <= per_plane else \
                finite[rng.integers(0, finite.size, per_plane)]
            samples.append(pick.astype(np.float64))
            del plane, flat, finite
        if mode == "image":
            los.append(-margin)
            his.append(1.0 + margin)
            continue
        if mode == "fixed":
            lo, hi = _widen(float(fixed_range[0]), float(fixed_range[1]), margin)
        else:
            pooled = np.concatenate(samples)
            if pooled.size == 0:
                raise ConfigError(f"target channel {ci} has no finite pixel")
            plo, phi = (float(v) for v in np.percentile(pooled, percentiles))
            if not phi > plo:  # mostly one value (e.g. an almost empty stain)
                plo, phi = float(pooled.min()), float(pooled.max())
            if not phi > plo:
                raise ConfigError(
                    f"every sampled target pixel of channel {ci} has the value {plo:g}: "
                    "there is nothing to learn (wrong folder, or empty stain?)")
            lo, hi = _widen(plo, phi, margin)
            del pooled
        los.append(lo)
        his.append(hi)
        for i, (smp, (vmin, vmax)) in enumerate(zip(samples, extremes)):
            if smp.size == 0 or (vmin >= lo and vmax <= hi):
                continue
            outside = float(np.mean((smp < lo) | (smp > hi)))
            if outside > outside_tolerance:
                name = ds.name(i) if hasattr(ds, "name") else f"plane {i}"
                problems.append(RangeProblem(ci, name, vmin, vmax, outside, lo, hi))
    pct = None if mode == "fixed" else (float(percentiles[0]), float(percentiles[1]))
    norm = TargetNorm(tuple(los), tuple(his), mode=mode, percentiles=pct,
                      units="normalised" if mode == "image" else "target")
    return norm, problems


def encode_target(plane: np.ndarray, norm: TargetNorm, channel: int = 0) -> np.ndarray:
    """Encode one raw target plane to the network range with a model's target normalisation.

    ``dataset``/``fixed``: the affine map of ``norm`` (:meth:`TargetNorm.encode`);
    ``image``: the plane's own percentiles map to 0 and 1 (normalised units), then ``norm``.
    A constant plane in ``image`` mode encodes as its low end (with a
    :class:`NormalizationWarning`).

    Returns
    -------
    numpy.ndarray
        ``float32``, same shape.
    """
    x = np.asarray(plane)
    lo, hi = norm.lo[channel], norm.hi[channel]
    if norm.mode == "image":
        pct = norm.percentiles or DEFAULT_TARGET_PERCENTILES
        v, _ = percentile_normalize(x, *pct)
        u = (v.astype(np.float64) + 1.0) * 0.5
        return (2.0 * (u - lo) / (hi - lo) - 1.0).astype(np.float32)
    return apply_normalization(x, NormParams(lo=lo, hi=hi))  # chunked: bounded memory
