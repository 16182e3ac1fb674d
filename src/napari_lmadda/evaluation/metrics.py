"""Image-translation and segmentation metrics, and evaluation of a folder of predictions.

Every metric takes ``(pred, truth)`` arrays of equal shape and returns a Python ``float``.
Undefined values are ``nan`` and never produce numpy warnings: the Pearson correlation of a
constant image, SSIM/PSNR when the truth has no intensity range. Pixels where either image is
not finite are ignored by :func:`pearson`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ImageReadError

__all__ = [
    "pearson",
    "pearson_per_image",
    "pearson_pooled",
    "ssim",
    "psnr",
    "dice",
    "jaccard",
    "summarize",
    "evaluate_folders",
    "format_table",
    "result_to_json",
    "AVAILABLE_METRICS",
]

#: Metric names :func:`evaluate_folders` understands (dice/jaccard are added for masks).
AVAILABLE_METRICS = ("pearson", "ssim", "psnr")


def _pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred)
    t = np.asarray(truth)
    if p.shape != t.shape:
        raise ConfigError(f"prediction shape {p.shape} differs from truth shape {t.shape}")
    return p, t


def _pearson_flat(p: np.ndarray, t: np.ndarray) -> float:
    p = p.astype(np.float64, copy=False).ravel()
    t = t.astype(np.float64, copy=False).ravel()
    ok = np.isfinite(p) & np.isfinite(t)
    if not ok.all():
        p, t = p[ok], t[ok]
    if p.size < 2:
        return math.nan
    dp = p - p.mean()
    dt = t - t.mean()
    denom = math.sqrt(float(dp @ dp) * float(dt @ dt))
    if denom == 0.0 or not math.isfinite(denom):
        return math.nan
    return float(np.clip(float(dp @ dt) / denom, -1.0, 1.0))


def pearson(pred: np.ndarray, truth: np.ndarray) -> float:
    """Pearson correlation coefficient of the pixel intensities of two images.

    Parameters
    ----------
    pred, truth : numpy.ndarray
        Same shape, any real dtype.

    Returns
    -------
    float
        In [-1, 1]; ``nan`` (without a warning) when either image is constant over the
        pixels finite in both, or fewer than 2 such pixels exist.

    Raises
    ------
    ConfigError
        Shapes differ.
    """
    p, t = _pair(pred, truth)
    return _pearson_flat(p, t)


def _as_list(images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim >= 3 else [images]
    return [np.asarray(a) for a in images]


def _pairs(
    preds: np.ndarray | Sequence[np.ndarray], truths: np.ndarray | Sequence[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    ps, ts = _as_list(preds), _as_list(truths)
    if len(ps) != len(ts):
        raise ConfigError(f"{len(ps)} predictions but {len(ts)} ground-truth images")
    return [_pair(p, t) for p, t in zip(ps, ts)]


def pearson_per_image(
    preds: np.ndarray | Sequence[np.ndarray], truths: np.ndarray | Sequence[np.ndarray]
) -> np.ndarray:
    """Pearson correlation of each image pair.

    Parameters
    ----------
    preds, truths : numpy.ndarray or sequence of numpy.ndarray
        ``(N, H, W)`` arrays, or sequences of N arrays (shapes may differ between pairs).

    Returns
    -------
    numpy.ndarray
        ``float64`` ``(N,)``.
    """
    return np.array([_pearson_flat(p, t) for p, t in _pairs(preds, truths)], dtype=np.float64)


def pearson_pooled(
    preds: np.ndarray | Sequence[np.ndarray], truths: np.ndarray | Sequence[np.ndarray]
) -> float:
    """Pearson correlation over all pixels of all images together.

    Unlike the mean of :func:`pearson_per_image` it also rewards getting the brightness
    *between* images right.

    Parameters
    ----------
    preds, truths : numpy.ndarray or sequence of numpy.ndarray
        As :func:`pearson_per_image`.

    Returns
    -------
    float
        ``nan`` if undefined (see :func:`pearson`).
    """
    pairs = _pairs(preds, truths)
    if not pairs:
        return math.nan
    p = np.concatenate([a.astype(np.float64).ravel() for a, _ in pairs])
    t = np.concatenate([b.astype(np.float64).ravel() for _, b in pairs])
    return _pearson_flat(p, t)


def _data_range(truth: np.ndarray, data_range: float | None) -> float:
    if data_range is not None:
        return float(data_range)
    finite = truth[np.isfinite(truth)]
    if finite.size == 0:
        return 0.0
    return float(finite.max()) - float(finite.min())


def ssim(pred: np.ndarray, truth: np.ndarray, data_range: float | None = None) -> float:
    """Structural similarity (scikit-image, 7x7 window, or smaller for small images).

    Parameters
    ----------
    pred, truth : numpy.ndarray
        2D (or nD) arrays of the same shape.
    data_range : float, optional
        Intensity range; default ``truth.max() - truth.min()``.

    Returns
    -------
    float
        ``nan`` when the range is 0 or the image is smaller than 3 pixels along an axis.
    """
    from skimage.metrics import structural_similarity

    p, t = _pair(pred, truth)
    p = p.astype(np.float64)
    t = t.astype(np.float64)
    rng = _data_range(t, data_range)
    side = min(p.shape)
    win = min(7, side if side % 2 else side - 1)
    if (
        rng <= 0
        or not math.isfinite(rng)
        or win < 3
        or not (np.isfinite(p).all() and np.isfinite(t).all())
    ):
        return math.nan
    return float(structural_similarity(p, t, data_range=rng, win_size=win))


def psnr(pred: np.ndarray, truth: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB (scikit-image's definition).

    Parameters
    ----------
    pred, truth : numpy.ndarray
        Same shape.
    data_range : float, optional
        Intensity range; default ``truth.max() - truth.min()``.

    Returns
    -------
    float
        ``inf`` for identical images, ``nan`` when the range is 0 or a pixel is not finite.
    """
    from skimage.metrics import peak_signal_noise_ratio

    p, t = _pair(pred, truth)
    p = p.astype(np.float64)
    t = t.astype(np.float64)
    rng = _data_range(t, data_range)
    if rng <= 0 or not math.isfinite(rng) or not (np.isfinite(p).all() and np.isfinite(t).all()):
        return math.nan
    if np.array_equal(p, t):
        return math.inf
    return float(peak_signal_noise_ratio(t, p, data_range=rng))


def _masks(pred_mask: np.ndarray, true_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, t = _pair(pred_mask, true_mask)
    return p.astype(bool), t.astype(bool)


def dice(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """Dice coefficient ``2|A∩B| / (|A| + |B|)`` of two masks (non-zero = foreground).

    Returns
    -------
    float
        In [0, 1]; 1.0 when both masks are empty.
    """
    p, t = _masks(pred_mask, true_mask)
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / total


def jaccard(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """Jaccard index (IoU) ``|A∩B| / |A∪B|`` of two masks (non-zero = foreground).

    Returns
    -------
    float
        In [0, 1]; 1.0 when both masks are empty.
    """
    p, t = _masks(pred_mask, true_mask)
    union = int(np.logical_or(p, t).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(p, t).sum()) / union


def _stats(values: Iterable[float]) -> dict[str, float]:
    v = np.asarray(list(values), dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return {"mean": math.nan, "median": math.nan, "n": 0}
    return {"mean": float(np.mean(v)), "median": float(np.median(v)), "n": int(v.size)}


_FUNCS = {"pearson": pearson, "ssim": ssim, "psnr": psnr, "dice": dice, "jaccard": jaccard}


def summarize(
    preds: np.ndarray | Sequence[np.ndarray],
    truths: np.ndarray | Sequence[np.ndarray],
    *,
    metrics: Sequence[str] = AVAILABLE_METRICS,
) -> dict[str, Any]:
    """Compute metrics per image, their mean/median, and the pooled Pearson correlation.

    Parameters
    ----------
    preds, truths : numpy.ndarray or sequence of numpy.ndarray
        ``(N, H, W)`` or sequences of N arrays. For ``dice``/``jaccard`` pass masks.
    metrics : sequence of str
        Names among ``pearson``, ``ssim``, ``psnr``, ``dice``, ``jaccard``.

    Returns
    -------
    dict
        ``{"n": N, "per_image": {metric: [N floats]}, "summary": {metric: {"mean",
        "median", "n"}}, "pearson_pooled": float}`` (``pearson_pooled`` only with
        ``pearson``). Mean/median ignore ``nan`` (``n`` counts the values used).
    """
    unknown = [m for m in metrics if m not in _FUNCS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown}; choose from {sorted(_FUNCS)}")
    pairs = _pairs(preds, truths)
    per_image = {m: [float(_FUNCS[m](p, t)) for p, t in pairs] for m in metrics}
    out: dict[str, Any] = {
        "n": len(pairs),
        "per_image": per_image,
        "summary": {m: _stats(v) for m, v in per_image.items()},
    }
    if "pearson" in metrics:
        out["pearson_pooled"] = pearson_pooled([p for p, _ in pairs], [t for _, t in pairs])
    return out


def _is_mask_like(arr: np.ndarray) -> bool:
    """Bool, or at most two distinct values (a binary mask in any encoding: 0/1, 0/255)."""
    if arr.dtype.kind == "b":
        return True
    return np.unique(arr[np.isfinite(arr)]).size <= 2


def evaluate_folders(
    pred_dir: str | os.PathLike[str],
    truth_dir: str | os.PathLike[str],
    *,
    metrics: Sequence[str] = AVAILABLE_METRICS,
    threshold: float | None = None,
    normalize: str | None = None,
    stop_on_error: bool = False,
    channel: str | None = None,
) -> dict[str, Any]:
    """Compare every prediction file with the ground-truth file of the same name.

    Files are matched by name without suffix (case-sensitive); a prediction named
    ``<stem>_pred`` (as ``lmadda predict`` writes them) pairs with the truth ``<stem>``. Each
    2D plane is one image (multi-plane files give ``name[k]`` entries).

    A prediction holding several named channels (``lmadda predict``'s files hold every
    stain) is compared through one of them: ``channel``, else the channel named like the
    truth folder (``bf_truth/dapi`` -> ``DAPI``, case-insensitive), else every plane when
    both files hold as many planes; otherwise the pair is refused with a message naming the
    channels. Intensities are compared raw unless
    ``normalize='percentile'``, which percentile-normalises both images of a pair before
    SSIM/PSNR (Pearson does not depend on it).

    Dice and Jaccard are added when ``threshold`` is given or every truth plane is mask-like
    (at most 2 distinct values, e.g. 0/1 or 0/255). A label image (many integer values) is
    not mask-like: pass ``threshold`` (``truth > threshold`` is then its mask).

    * truth mask: ``truth != 0`` if mask-like, else ``truth > threshold``;
    * predicted mask: ``pred > threshold`` if given; else ``pred != 0`` if the prediction
      holds 0 and at most one other value; else ``pred >`` the midpoint of all truths' min
      and max (0.5 for 0/1 masks; pass ``threshold`` for label images, or for probability
      maps scored against 0/255 masks).

    Parameters
    ----------
    pred_dir, truth_dir : path-like
        Folders (or single files) of predictions and ground truth.
    metrics : sequence of str
        Intensity metrics among :data:`AVAILABLE_METRICS`.
    threshold : float, optional
        Foreground threshold for Dice/Jaccard.
    normalize : {None, 'percentile'}
        Intensity normalisation before SSIM/PSNR.
    stop_on_error : bool
        Raise on the first unreadable or mismatched pair; by default such a pair is skipped
        with an :class:`~napari_lmadda.data.io.ImageWarning` and listed in ``skipped``.
    channel : str, optional
        The prediction channel to score (by name, case-insensitive).

    Returns
    -------
    dict
        :func:`summarize`'s keys plus ``names``, ``pred_dir``, ``truth_dir``, ``threshold``,
        ``normalize``, ``channel`` (the prediction channel scored, None when files are
        compared plane by plane) and ``unmatched`` (``{"pred": [...], "truth": [...]}``).

    Raises
    ------
    EmptyFolderError
        A folder holds no image or no name matches.
    ImageReadError
        A file is unreadable, or a prediction and its truth differ in shape.
    """
    import warnings

    from ..data.datasets import _few, _stem_map
    from ..data.io import ImageWarning, list_images, read_planes
    from ..data.normalize import percentile_normalize
    from ..errors import EmptyFolderError

    unknown = [m for m in metrics if m not in AVAILABLE_METRICS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown}; choose from {list(AVAILABLE_METRICS)}")
    if threshold is not None and not (isinstance(threshold, int | float)
                                      and math.isfinite(threshold)):
        raise ConfigError(f"threshold must be a finite number, got {threshold!r}")
    if normalize not in (None, "none", "percentile"):
        raise ConfigError(f"normalize must be None or 'percentile', got {normalize!r}")
    pred_map = _pair_prediction_names(_stem_map(list_images(pred_dir), pred_dir),
                                      _stem_map(list_images(truth_dir), truth_dir))
    truth_map = _stem_map(list_images(truth_dir), truth_dir)
    common = [s for s in pred_map if s in truth_map]
    truth_name = Path(truth_dir).name if Path(truth_dir).is_dir() else Path(truth_dir).parent.name
    chosen: list[str | None] = []
    if not common:
        raise EmptyFolderError(
            f"no prediction in '{pred_dir}' has a ground-truth file of the same name in "
            f"'{truth_dir}' (predictions: {_few([p.name for p in pred_map.values()], 3)}; "
            f"truth: {_few([p.name for p in truth_map.values()], 3)})"
        )

    names: list[str] = []
    preds: list[np.ndarray] = []
    truths: list[np.ndarray] = []
    mask_like = True
    skipped: list[tuple[str, str]] = []
    for stem in common:
        pp, tp = pred_map[stem], truth_map[stem]
        try:
            p_planes, t_planes = read_planes(pp), read_planes(tp)
            p_planes, picked = _select_channel(pp, p_planes, t_planes, truth_name, channel)
            if len(p_planes) != len(t_planes) or any(
                a.shape != b.shape for a, b in zip(p_planes, t_planes)
            ):
                raise ImageReadError(
                    f"prediction '{pp}' ({len(p_planes)} plane(s) of {p_planes[0].shape}) and "
                    f"truth '{tp}' ({len(t_planes)} plane(s) of {t_planes[0].shape}) differ "
                    f"in shape"
                )
        except ImageReadError as exc:
            if stop_on_error:
                raise
            warnings.warn(f"skipped '{stem}': {exc}", ImageWarning, stacklevel=2)
            skipped.append((stem, str(exc)))
            continue
        chosen.append(picked)
        mask_like = mask_like and all(_is_mask_like(b) for b in t_planes)
        for k, (a, b) in enumerate(zip(p_planes, t_planes)):
            names.append(pp.name if len(p_planes) == 1 else f"{pp.name}[{k}]")
            preds.append(a)
            truths.append(b)

    if not preds:  # every pair was skipped: report the first reason
        more = f" (and {len(skipped) - 1} more unusable pair(s))" if len(skipped) > 1 else ""
        raise ImageReadError(skipped[0][1] + more)
    if normalize == "percentile":
        with np.errstate(all="ignore"):
            n_preds = [percentile_normalize(a)[0] for a in preds]
            n_truths = [percentile_normalize(b)[0] for b in truths]
    else:
        n_preds, n_truths = preds, truths
    result = summarize(n_preds, n_truths, metrics=[m for m in metrics if m != "pearson"])
    if "pearson" in metrics:
        result["per_image"] = {
            "pearson": pearson_per_image(preds, truths).tolist(),
            **result["per_image"],
        }
        result["summary"] = {
            "pearson": _stats(result["per_image"]["pearson"]),
            **result["summary"],
        }
        result["pearson_pooled"] = pearson_pooled(preds, truths)

    used_threshold = threshold
    if threshold is not None or mask_like:
        d, j = [], []
        lo = min(float(b.min()) for b in truths)
        hi = max(float(b.max()) for b in truths)
        for a, b in zip(preds, truths):
            t_mask = b != 0 if mask_like else b > threshold
            if threshold is not None:
                p_mask = a > threshold
            elif np.unique(a[a != 0]).size <= 1:  # 0 and at most one other value
                p_mask = a != 0
            else:
                mid = 0.5 * (lo + hi)
                used_threshold = mid
                p_mask = a > mid
            d.append(dice(p_mask, t_mask))
            j.append(jaccard(p_mask, t_mask))
        result["per_image"]["dice"] = d
        result["per_image"]["jaccard"] = j
        result["summary"]["dice"] = _stats(d)
        result["summary"]["jaccard"] = _stats(j)

    paired = set(common)
    result.update(
        names=names,
        pred_dir=str(pred_dir),
        truth_dir=str(truth_dir),
        threshold=used_threshold,
        normalize=normalize if normalize != "none" else None,
        channel=chosen[0] if chosen and len(set(chosen)) == 1 else (chosen or None),
        skipped=[{"name": n, "reason": r} for n, r in skipped],
        unmatched={
            "pred": [p.name for s, p in pred_map.items() if s not in paired],
            "truth": [p.name for s, p in truth_map.items() if s not in paired],
        },
    )
    return result


def _pair_prediction_names(preds: dict[str, Path], truths: dict[str, Path]) -> dict[str, Path]:
    """Key predictions by their truth's stem: ``<stem>_pred`` pairs with ``<stem>``."""
    out: dict[str, Path] = {}
    for stem, path in preds.items():
        key = stem
        if stem not in truths and stem.endswith("_pred") and stem[:-5] in truths:
            key = stem[:-5]
        if key not in out or key == stem:  # an exact name wins over a "_pred" one
            out[key] = path
    return out


def _select_channel(pred: Path, p_planes: list[np.ndarray], t_planes: list[np.ndarray],
                    truth_name: str, channel: str | None
                    ) -> tuple[list[np.ndarray], str | None]:
    """The planes of one named channel of a prediction file (see :func:`evaluate_folders`).

    Raises
    ------
    ConfigError
        No channel can be chosen (a choice for the user, not a damaged pair).
    """
    from ..data.io import read_tiff_metadata
    from ..errors import LmaddaError

    try:
        names = read_tiff_metadata(pred).get("channels")
    except LmaddaError:
        names = None
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)
            and len(p_planes) % len(names) == 0):
        if channel is not None:
            raise ConfigError(f"prediction '{pred}' names no channels, so channel "
                                 f"'{channel}' cannot be chosen")
        return p_planes, None
    n = len(names)
    lower = [name.lower() for name in names]
    if channel is not None:
        if channel.lower() not in lower:
            raise ConfigError(f"prediction '{pred}' has no channel '{channel}' (it holds "
                                 f"{', '.join(names)})")
        index = lower.index(channel.lower())
    elif truth_name.lower() in lower:
        index = lower.index(truth_name.lower())
    elif n == 1:
        index = 0
    elif len(p_planes) == len(t_planes):
        return p_planes, None  # every channel against every truth plane
    else:
        raise ConfigError(
            f"prediction '{pred}' holds the channels {', '.join(names)} and the truth folder "
            f"'{truth_name}' is named after none of them: choose one with --channel")
    return p_planes[index::n], names[index]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.4f}"
    return str(v)


def format_table(result: dict[str, Any]) -> str:
    """Render :func:`summarize` / :func:`evaluate_folders` output as an aligned text table.

    One row per image, then ``mean`` and ``median`` rows, then the pooled Pearson
    correlation and any unmatched files.

    Parameters
    ----------
    result : dict
        The metrics dict.

    Returns
    -------
    str
        The table (no trailing newline).
    """
    per_image: dict[str, list[float]] = result.get("per_image", {})
    cols = list(per_image)
    n = result.get("n", len(next(iter(per_image.values()), [])))
    names = result.get("names") or [f"image {i}" for i in range(n)]
    rows = [["image", *cols]]
    rows += [[names[i], *(_fmt(per_image[c][i]) for c in cols)] for i in range(n)]
    rows.append(["mean", *(_fmt(result["summary"][c]["mean"]) for c in cols)])
    rows.append(["median", *(_fmt(result["summary"][c]["median"]) for c in cols)])
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]

    def line(r: list[str]) -> str:
        return "  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:]))])

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    out = [
        line(rows[0]),
        rule,
        *(line(r) for r in rows[1:-2]),
        rule,
        *(line(r) for r in rows[-2:]),
    ]
    if "pearson_pooled" in result:
        out.append(f"pooled pearson (all pixels of all images): {_fmt(result['pearson_pooled'])}")
    if result.get("threshold") is not None:
        out.append(f"mask threshold: {_fmt(float(result['threshold']))}")
    unmatched = result.get("unmatched") or {}
    for side in ("pred", "truth"):
        if unmatched.get(side):
            from ..data.datasets import _few

            out.append(f"unmatched {side} files ({len(unmatched[side])}): {_few(unmatched[side])}")
    return "\n".join(out)


def result_to_json(result: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of a result dict that strict JSON accepts (nan/inf become None).

    Parameters
    ----------
    result : dict
        A metrics dict.

    Returns
    -------
    dict
        The same structure with non-finite floats replaced by None and paths by strings.
    """

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, np.ndarray):
            return clean(v.tolist())
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, Path):
            return str(v)
        return v

    return clean(result)
