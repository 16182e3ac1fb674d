"""Which layer to match, from unlabeled images only: the domain gap at every layer.

LM-ADDA's paper finds the best layer by adapting at every layer and scoring each run with
ground truth; a user with a new microscope has no ground truth. This module measures, with
the *source* model G alone, how far the target images' activations are from the source
images' at every layer, and recommends the layer at which the shift enters the
representation (the paper's observation: early layers for pixel-level shifts such as
overexposure, middle layers for scale, later layers for a change of modality).

Measurements (fixed patches; G in eval mode: BatchNorm running statistics, no dropout). The
images of each domain are dealt into four groups (by image when a domain has at least four
images, otherwise by patch) and the same number of patches is drawn from each group. Source
and target are drawn independently (different seeds), as the permutation test below needs:
two identical image sets therefore show a small gap at the noise level, not exactly 0.

* three distances of :mod:`napari_lmadda.adapt.distances` between G's taps, each in units of
  the source's per-channel spread: per-channel Wasserstein (``w2``), per-channel
  Bhattacharyya and sliced Wasserstein. The *gap* is the distance between all source and all
  target patches; the *floor* the mean distance between two groups of the same domain (how
  far one set of images of a microscope is from another set of the same microscope); the
  *between* value the mean distance between a source group and a target group.
* the accuracy of a short *probe*: a small
  :class:`~napari_lmadda.models.discriminator.LayerDiscriminator` trained for a few dozen
  steps to tell the frozen source taps from the target taps of two groups per domain,
  measured on the other two (images it has not seen; 0.5 = it cannot tell them apart).

The rule (:func:`choose_layer`), kept simple on purpose:

1. **Is there a shift at all?** Two tests, either suffices. (a) A permutation test on the
   image groups: the statistic is the mean over layers and the three distances of
   ``log(between / floor)``, computed for the true source/target labelling and for every
   other way of splitting the eight groups into two sets of four (35 splits); the shift is
   significant when the true labelling is at the top (``p = 1/35 <= alpha = 0.05``). (b) The
   probe's best held-out accuracy over the layers exceeds chance by ``z`` binomial standard
   errors of the held-out patch count, with ``z`` Bonferroni-corrected for the number of
   layers. Otherwise the answer is "no adaptation needed" (``layer`` None): the target is
   no further from the source than the source is from itself.
2. **Where, per measure.** A distance is significant at a layer when the permutation test at
   that layer alone puts the true labelling at the top; the probe when its accuracy is two
   standard errors above chance. Each measure picks the earliest layer whose significant
   gap reaches ``fraction`` (default 0.5) of its largest significant gap (the probe's gap
   is ``accuracy - 0.5``): where the shift has entered the representation, not where it is
   largest (the gap of a later layer includes everything the earlier layers let through).
3. **Layer.** The layer most measures pick (a tie goes to the earlier layer: adapting fewer
   layers is the safer choice, as in SIT-ADDA-Auto).
4. **Confidence.** The fraction of the measures that pick that layer (1.0 = all four;
   0.5 with two measures against two). For "no adaptation needed": the fraction of the
   measures that see no significant layer.

The *combined profile* (mean over the measures of their normalised significant gaps) is
reported and plotted, but the decision reads the picks.

Memory: the taps of all measured layers for ``2 * n_patches`` patches are held on the CPU at
once (about 250 MB for a ``unet_256``-shaped model with 32 patches of 128 px per domain).

:func:`select_layer_by_uncertainty` is the other selector, after SIT-ADDA-Auto (arXiv
2511.12006): given models adapted at several depths, pick the shallowest depth whose
predictive uncertainty on target images is (nearly) the lowest. Qt-free.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from ..errors import ConfigError, LmaddaError
from ..jsonsafe import json_safe

__all__ = [
    "MEASURES",
    "LayerGap",
    "LayerRecommendation",
    "measure_layer_gaps",
    "choose_layer",
    "recommend_layer",
    "probe_accuracy",
    "format_recommendation_table",
    "plot_recommendation",
    "write_recommendation",
    "select_layer_by_uncertainty",
]

#: the four gap measures, in table order
MEASURES = ("w2", "bhattacharyya", "sliced_w2", "probe")
#: rules of :func:`choose_layer` (validated in ``docs/benchmarks.md``)
RULES = ("snr-encoder", "snr", "largest-gap", "first-reaching")
DEFAULT_RULE = "snr-encoder"
_DISTANCES = ("w2", "bhattacharyya", "sliced_w2")
_GROUPS = 4  # groups of images per domain: C(8, 4) / 2 = 35 splits for the permutation test
_LABELS = {
    "w2": "W2", "bhattacharyya": "Bhattacharyya", "sliced_w2": "sliced W2", "probe": "probe"
}


@dataclass(frozen=True)
class LayerGap:
    """The domain gap measured at one layer of the source model.

    Attributes
    ----------
    layer, name, kind : int, str, str
        Layer number (1-based), its short name and kind (see ``describe_layers``).
    channels, height, width : int
        Shape of the tap for the patch size used.
    w2, bhattacharyya, sliced_w2 : float
        Distances between G's taps on all source and all target patches (0 = identical).
    w2_between, bhattacharyya_between, sliced_w2_between : float
        Mean (symmetrised) distance between a source group and a target group.
    w2_floor, bhattacharyya_floor, sliced_w2_floor : float
        Mean (symmetrised) distance between two groups of the same domain: the noise floor.
    w2_p, bhattacharyya_p, sliced_w2_p : float
        Permutation p-value of ``between / floor`` at this layer (1/35 at best).
    probe_acc : float
        Held-out accuracy of the probe (0.5 = chance; ``nan`` when no probe was trained).
    """

    layer: int
    name: str
    kind: str
    channels: int
    height: int
    width: int
    w2: float
    bhattacharyya: float
    sliced_w2: float
    w2_between: float
    bhattacharyya_between: float
    sliced_w2_between: float
    w2_floor: float
    bhattacharyya_floor: float
    sliced_w2_floor: float
    w2_p: float
    bhattacharyya_p: float
    sliced_w2_p: float
    probe_acc: float = math.nan

    def value(self, measure: str) -> float:
        """Return the gap of ``measure`` (one of :data:`MEASURES`)."""
        return self.probe_acc if measure == "probe" else float(getattr(self, measure))

    def p_value(self, measure: str) -> float:
        """Return the permutation p-value of a distance measure (``nan`` for the probe)."""
        return math.nan if measure == "probe" else float(getattr(self, f"{measure}_p"))


@dataclass
class LayerRecommendation:
    """The per-layer gaps, the recommended layer, how sure, and why.

    Attributes
    ----------
    rows : list of LayerGap
        One row per measured layer, in layer order.
    layer : int or None
        The layer to match; None when no shift was detected ("no adaptation needed").
    confidence : float
        In [0, 1]: the fraction of the measures that agree with the decision (see the module
        docstring).
    reason : str
        One or two sentences: what was decided and from which numbers.
    p_value : float
        Permutation p-value of "there is a shift" over all layers (small = shift).
    picks : dict of str to int or None
        Each measure's own pick by the same rule (None: it sees no significant gap).
    profile : dict of int to float
        The combined normalised gap per layer (what the rule reads), in [0, 1].
    significant : dict of str to list of int
        Per measure, the layers where it sees a significant gap.
    fraction, alpha : float
        The rule's parameters.
    ranking : list of int
        Layers from the most to the least recommended (empty when no layer is recommended).
    rule : str
        The rule that decided (one of :data:`RULES`).
    settings : dict
        How the measurement was made (patches, patch size, probe steps, seed, BN mode, ...).
    """

    rows: list[LayerGap]
    layer: int | None
    confidence: float
    reason: str
    p_value: float = math.nan
    picks: dict[str, int | None] = field(default_factory=dict)
    profile: dict[int, float] = field(default_factory=dict)
    significant: dict[str, list[int]] = field(default_factory=dict)
    fraction: float = 0.5
    alpha: float = 0.05
    settings: dict[str, Any] = field(default_factory=dict)
    ranking: list[int] = field(default_factory=list)
    rule: str = ""

    @property
    def shift_detected(self) -> bool:
        """Whether a domain shift was seen (and so a layer recommended)."""
        return self.layer is not None

    def row(self, layer: int) -> LayerGap:
        """Return the row of ``layer``."""
        for r in self.rows:
            if r.layer == layer:
                return r
        raise KeyError(layer)

    def summary(self) -> str:
        """One line: the decision and its confidence."""
        if self.layer is None:
            return f"no adaptation needed (confidence {self.confidence:.2f})"
        return (f"recommended layer: {self.layer} ({self.row(self.layer).name}), "
                f"confidence {self.confidence:.2f}")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict (non-finite floats become None)."""
        doc = {
            "layer": self.layer,
            "confidence": self.confidence,
            "reason": self.reason,
            "shift_detected": self.shift_detected,
            "p_value": self.p_value,
            "rule": {"name": self.rule, "fraction": self.fraction, "alpha": self.alpha},
            "ranking": self.ranking,
            "picks": self.picks,
            "significant": self.significant,
            "profile": {str(k): v for k, v in self.profile.items()},
            "settings": self.settings,
            "rows": [asdict(r) for r in self.rows],
        }
        return json_safe(doc)


# ------------------------------------------------------------------ measurement
def _collect_taps(model: Any, patches: np.ndarray, layers: Sequence[int], device: Any,
                  batch: int) -> dict[int, Any]:
    """G's taps of ``layers`` for all patches, on the CPU (eval mode, no grad)."""
    import torch

    from .sampling import to_tensor

    parts: dict[int, list] = {layer: [] for layer in layers}
    with torch.no_grad():
        for i in range(0, len(patches), batch):
            taps = model.forward_taps(to_tensor(patches[i : i + batch], device), layers)
            for layer in layers:
                parts[layer].append(taps[layer].float().cpu())
    return {layer: torch.cat(v) for layer, v in parts.items()}


class _Subset:
    """The planes ``indices`` of a dataset, for :class:`PatchSampler` (len, getitem, name)."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.dataset[self.indices[index]]

    def name(self, index: int) -> str:
        return self.dataset.name(self.indices[index])


def _draw_groups(obj: Any, n_groups: int, n_per: int, patch_size: int, seed: int,
                 role: str) -> tuple[list[np.ndarray], str]:
    """``n_per`` patches from each of ``n_groups`` disjoint groups of a domain's images.

    Images are dealt into groups by a seeded permutation of their indices (``"image"``); a
    domain with fewer images than groups, or given as a sampler, is split by patch
    (``"patch"``).
    """
    from ..data.datasets import PatchSampler
    from .sampling import fixed_batch, make_sampler

    sampler = make_sampler(obj, patch_size, n_per, seed=seed, role=role)
    ds = getattr(sampler, "dataset", None)
    if isinstance(sampler, PatchSampler) and not sampler.paired and len(ds) >= n_groups:
        order = np.random.default_rng(seed).permutation(len(ds))
        return [PatchSampler(_Subset(ds, order[g::n_groups]), patch_size, n_per,
                             seed=seed + 1 + g).sample() for g in range(n_groups)], "image"
    every = fixed_batch(sampler, n_groups * n_per, seed)
    return [every[g * n_per : (g + 1) * n_per] for g in range(n_groups)], "patch"


def probe_accuracy(
    source: Any,
    target: Any,
    heldout: tuple[Any, Any] | None = None,
    *,
    steps: int = 60,
    batch_size: int = 8,
    ndf: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    device: Any = "cpu",
) -> float:
    """Held-out accuracy of a small discriminator trained to tell two sets of taps apart.

    A :class:`~napari_lmadda.models.discriminator.LayerDiscriminator` (``n_hidden=0``, no
    spectral norm, BCE loss, Adam) trains for ``steps`` steps on ``source`` vs ``target``;
    its accuracy on ``heldout`` (a source and a target set it has not seen) is averaged over
    the positions of its logit map and balanced between the two domains. Taps are
    standardised with the training source's per-channel mean and spread first, so the same
    learning rate suits every layer. Without ``heldout``, each set is split in two (the same
    split for sets of equal size, so that identical sets stay at chance).

    Parameters
    ----------
    source, target : torch.Tensor
        ``(N, C, H, W)`` taps of one layer to train on.
    heldout : (torch.Tensor, torch.Tensor), optional
        Source and target taps to measure the accuracy on.
    steps, batch_size, ndf, lr : int, int, int, float
        Probe training.
    seed : int
        Seeds the split, the probe's initialisation and its batches (global RNG untouched).
    device : str or torch.device
        Where the probe trains.

    Returns
    -------
    float
        Accuracy in [0, 1]; 0.5 = chance (e.g. exactly 0.5 for identical taps).
    """
    import torch
    import torch.nn.functional as F

    from ..models.discriminator import LayerDiscriminator
    from .distances import channel_moments

    g = torch.Generator().manual_seed(seed)
    if heldout is not None:
        s_tr, t_tr, (s_te, t_te) = source, target, heldout
    else:
        if source.shape[0] < 2 or target.shape[0] < 2:
            raise ConfigError("the probe needs at least 2 patches per domain")
        ps = torch.randperm(source.shape[0], generator=g)
        pt = ps if target.shape[0] == source.shape[0] else torch.randperm(target.shape[0],
                                                                          generator=g)
        s_tr, s_te = source[ps[: len(ps) // 2]], source[ps[len(ps) // 2 :]]
        t_tr, t_te = target[pt[: len(pt) // 2]], target[pt[len(pt) // 2 :]]
    mean, std = channel_moments(s_tr)
    mean = mean.float().view(1, -1, 1, 1)
    std = (std.float() + 1e-6 + std.float().mean() * 1e-3).view(1, -1, 1, 1)

    def prep(x: Any) -> Any:
        return ((x - mean) / std).to(device)

    s_tr, s_te, t_tr, t_te = prep(s_tr), prep(s_te), prep(t_tr), prep(t_te)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        d = LayerDiscriminator(source.shape[1], min(source.shape[-2:]), ndf=ndf, n_hidden=0)
    d = d.to(device).train()
    opt = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.5, 0.999))
    for _ in range(int(steps)):
        i = torch.randint(0, len(s_tr), (batch_size,), generator=g)
        j = torch.randint(0, len(t_tr), (batch_size,), generator=g)
        ls, lt = d(s_tr[i]), d(t_tr[j])
        loss = (F.binary_cross_entropy_with_logits(ls, torch.ones_like(ls))
                + F.binary_cross_entropy_with_logits(lt, torch.zeros_like(lt)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    d.eval()
    with torch.no_grad():
        a_s = float((d(s_te) > 0).float().mean())
        a_t = float((d(t_te) <= 0).float().mean())
    return 0.5 * (a_s + a_t)


def measure_layer_gaps(
    model: Any,
    source: Any,
    target: Any,
    *,
    layers: Sequence[int] | str | None = None,
    n_patches: int = 32,
    patch_size: int = 128,
    probe_steps: int = 60,
    device: str = "auto",
    seed: int = 0,
    batch_size: int = 8,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> list[LayerGap]:
    """Measure the domain gap at every layer of the source model.

    Parameters
    ----------
    model : UNetGenerator
        The source model G (not modified; its train/eval flags are restored).
    source, target : folder, array ``(N, H, W)``, dataset or sampler
        Unlabeled images; anything :func:`~napari_lmadda.adapt.sampling.make_sampler` takes.
    layers : sequence of int or str, optional
        Layers to measure (``"1-8"``, ``[1, 2, 3]``); all by default.
    n_patches : int
        Fixed patches per domain (at least 8), drawn evenly from four groups of its images
        (a multiple of 4 uses them all). Source and target are drawn with different seeds.
    patch_size : int
        Patch side, a multiple of ``2**num_downs``.
    probe_steps : int
        Training steps of the probe per layer; 0 skips the probe (faster, three measures).
    device : str
        ``auto``, ``cpu``, ``cuda[:N]`` or ``mps``.
    seed : int
        Seeds the split of the images, the patches, the projections and the probes.
    batch_size : int
        Patches per forward pass (and per probe step and domain).
    progress : callable, optional
        ``progress(done, total, message)`` after each layer.
    cancel : callable, optional
        Polled after each layer; returning True raises :class:`LmaddaError`.

    Returns
    -------
    list of LayerGap
        One row per layer, in layer order.
    """
    return _measure(model, source, target, layers=layers, n_patches=n_patches,
                    patch_size=patch_size, probe_steps=probe_steps, device=device, seed=seed,
                    batch_size=batch_size, progress=progress, cancel=cancel)[0]


def _splits(n_groups: int) -> np.ndarray:
    """Every split of ``2 * n_groups`` groups into two equal sets, as boolean masks.

    Row 0 is the true labelling (the first ``n_groups`` are the source); group 0 is always in
    the first set, so a split and its mirror image appear once.
    """
    masks = []
    for rest in itertools.combinations(range(1, 2 * n_groups), n_groups - 1):
        m = np.zeros(2 * n_groups, bool)
        m[[0, *rest]] = True
        masks.append(m)
    return np.array(masks)


def _split_stats(dist: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean between-set and within-set distance of every split (``dist`` symmetric)."""
    between = np.array([dist[np.ix_(m, ~m)].mean() for m in masks])
    within = np.array([
        (dist[np.ix_(m, m)].sum() + dist[np.ix_(~m, ~m)].sum()) / (m.sum() * (m.sum() - 1) * 2)
        for m in masks])
    return between, within


def _log_ratio(between: np.ndarray, within: np.ndarray) -> np.ndarray:
    tiny = 1e-12 + 1e-9 * float(max(between.max(), within.max()))
    return np.log((between + tiny) / (within + tiny))


def _p_value(stat: np.ndarray) -> float:
    """Fraction of the splits whose statistic is at least the true labelling's (row 0)."""
    return float(np.mean(stat >= stat[0] - 1e-12 * max(1.0, abs(stat[0]))))


def _measure(model: Any, source: Any, target: Any, *, layers: Any, n_patches: int,
             patch_size: int, probe_steps: int, device: str, seed: int, batch_size: int,
             progress: Any, cancel: Any) -> tuple[list[LayerGap], dict[str, Any]]:
    """:func:`measure_layer_gaps`, plus the global permutation test and the split used."""
    from ..devices import resolve_device
    from .distances import layer_distances, pairwise_distances
    from .engine import parse_layers

    if int(n_patches) < 2 * _GROUPS:
        raise ConfigError(
            f"n_patches must be >= {2 * _GROUPS} ({_GROUPS} groups of 2), got {n_patches}")
    if int(probe_steps) < 0:
        raise ConfigError(f"probe_steps must be >= 0, got {probe_steps}")
    if int(patch_size) < 1 or int(patch_size) % model.min_size:
        raise ConfigError(
            f"patch size {patch_size} must be a multiple of {model.min_size} for this model")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    lays = parse_layers(layers, model.num_layers) if layers not in (None, "") else tuple(
        range(1, model.num_layers + 1))
    dev = resolve_device(device)
    ng, n_per = _GROUPS, int(n_patches) // _GROUPS
    sg, split_s = _draw_groups(source, ng, n_per, patch_size, seed, "source")
    tg, split_t = _draw_groups(target, ng, n_per, patch_size, seed + 1, "target")
    info = {i.index: i for i in model.describe_layers(patch_size)}
    flags = [(m, m.training) for m in model.modules()]
    p0 = next(model.parameters(), None)
    home = p0.device if p0 is not None else dev
    model.to(dev).eval()
    try:
        taps_s = _collect_taps(model, np.concatenate(sg), lays, dev, batch_size)
        taps_t = _collect_taps(model, np.concatenate(tg), lays, dev, batch_size)
    finally:
        for m, f in flags:
            m.training = f
        model.to(home)
    masks = _splits(ng)
    global_stat = np.zeros(len(masks))
    rows = []
    for done, layer in enumerate(lays, 1):
        s, t = taps_s.pop(layer), taps_t.pop(layer)
        groups = [x[g * n_per : (g + 1) * n_per] for x in (s, t) for g in range(ng)]
        dist = pairwise_distances(groups, reference=s, seed=seed)
        gap = layer_distances(s, t, seed=seed)
        between, floor, pval = {}, {}, {}
        for m in _DISTANCES:
            b, w = _split_stats(dist[m], masks)
            stat = _log_ratio(b, w)
            global_stat += stat / (len(_DISTANCES) * len(lays))
            between[m], floor[m], pval[m] = float(b[0]), float(w[0]), _p_value(stat)
        half = n_per * (ng // 2)
        acc = (probe_accuracy(s[:half], t[:half], (s[half:], t[half:]), steps=probe_steps,
                              batch_size=batch_size, seed=seed + layer, device=dev)
               if probe_steps > 0 else math.nan)
        li = info[layer]
        rows.append(LayerGap(layer, li.name, li.kind, li.channels, li.height, li.width,
                             *(gap[m] for m in _DISTANCES), *(between[m] for m in _DISTANCES),
                             *(floor[m] for m in _DISTANCES), *(pval[m] for m in _DISTANCES),
                             acc))
        if progress is not None:
            progress(done, len(lays), f"layer {layer} ({li.name})")
        if cancel is not None and cancel():
            raise LmaddaError("layer recommendation cancelled")
    how = {"split": split_s if split_s == split_t else "patch", "groups": ng,
           "patches_per_group": n_per, "n_heldout": 2 * (ng - ng // 2) * n_per,
           "p_value": _p_value(global_stat), "n_splits": len(masks)}
    return rows, how


# ------------------------------------------------------------------ the rule
def _probe_threshold(n_heldout: int) -> float:
    """Chance plus two binomial standard errors for ``n_heldout`` held-out patches."""
    return 0.5 + 2.0 * math.sqrt(0.25 / max(1, n_heldout))


def _first_reaching(profile: Mapping[int, float], fraction: float) -> int | None:
    top = max(profile.values(), default=0.0)
    if not top > 0:
        return None
    return next(layer for layer in sorted(profile) if profile[layer] >= fraction * top - 1e-12)


def _depth_hint(layer: int, num_layers: int) -> str:
    """Say how the paper reads a depth (a heuristic, not a measurement)."""
    n = num_layers // 2
    if layer <= max(1, n // 3):
        return "an early layer, as for pixel-level shifts (exposure, contrast, noise)"
    if layer <= n:
        return "a middle encoder layer, as for changes of scale or texture"
    return "a decoder layer, as for changes of modality or content"


def layer_snr(row: LayerGap, measure: str) -> float:
    """Return ``log(between / floor)`` of a distance at one layer.

    How many times further the new images are from the source images than two sets of
    source images are from each other (0 = no further).
    """
    between = float(getattr(row, f"{measure}_between"))
    floor = float(getattr(row, f"{measure}_floor"))
    tiny = 1e-12 + 1e-9 * max(between, floor)
    return math.log((between + tiny) / (floor + tiny))


def _measure_scores(rows: Sequence[LayerGap], rule: str, measures: Sequence[str],
                    alpha: float, p_thr: float) -> dict[str, dict[int, float]]:
    """Per measure, the score of every layer that the rule maximises."""
    out: dict[str, dict[int, float]] = {}
    for m in measures:
        if rule in ("snr", "snr-encoder"):
            out[m] = {r.layer: layer_snr(r, m) for r in rows}
            continue
        raw = {}
        for r in rows:
            v = r.value(m)
            ok = v >= p_thr if m == "probe" else (v > 0 and r.p_value(m) <= alpha)
            raw[r.layer] = (v - 0.5 if m == "probe" else v) if ok else 0.0
        top = max(raw.values())
        out[m] = {layer: (v / top if top > 0 else 0.0) for layer, v in raw.items()}
    return out


def choose_layer(
    rows: Sequence[LayerGap],
    *,
    p_value: float,
    fraction: float = 0.5,
    alpha: float = 0.05,
    n_heldout: int = 32,
    num_layers: int | None = None,
    rule: str | None = None,
) -> tuple[int | None, float, str, dict[str, Any]]:
    """Apply a recommendation rule (default :data:`DEFAULT_RULE`) to measured rows.

    Parameters
    ----------
    rows : sequence of LayerGap
        What :func:`measure_layer_gaps` returned.
    p_value : float
        The global permutation p-value (is there a shift at all?).
    fraction : float
        In (0, 1]: for the ``first-reaching`` rule, the recommended layer is the earliest
        whose gap reaches this fraction of the maximum.
    alpha : float
        Significance level of the permutation tests (global and per layer).
    n_heldout : int
        Held-out patches of the probe (both domains), for its significance threshold.
    num_layers : int, optional
        Layers of the model (the encoder is ``1 .. num_layers // 2``; default: the last row).
    rule : str, optional
        One of :data:`RULES` (see the module docstring); None = :data:`DEFAULT_RULE`.

    Returns
    -------
    layer : int or None
        The recommended layer, or None for "no adaptation needed".
    confidence : float
        Agreement of the measures with the decision, in [0, 1].
    reason : str
        Why.
    details : dict
        ``picks``, ``profile``, ``significant`` and ``ranking`` (see
        :class:`LayerRecommendation`).
    """
    rule = DEFAULT_RULE if rule is None else rule
    if rule not in RULES:
        raise ConfigError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction!r}")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")
    if not rows:
        raise ConfigError("no layer was measured")
    layers = [r.layer for r in rows]
    names = {r.layer: r.name for r in rows}
    total = num_layers or max(layers)
    p_thr = _probe_threshold(n_heldout)
    measures = [m for m in MEASURES if all(math.isfinite(r.value(m)) for r in rows)]
    significant = {m: [r.layer for r in rows
                       if (r.value(m) >= p_thr if m == "probe"
                           else r.value(m) > 0 and r.p_value(m) <= alpha)]
                   for m in measures}
    snr_rule = rule in ("snr", "snr-encoder")
    voters = [m for m in measures if m != "probe"] if snr_rule else measures
    scores = _measure_scores(rows, rule, voters, alpha, p_thr)
    combined = {layer: float(np.mean([scores[m][layer] for m in voters])) for layer in layers}
    allowed = ([k for k in layers if k <= total // 2] or layers) if rule == "snr-encoder" \
        else layers
    if rule == "first-reaching":
        picks = {m: _first_reaching(scores[m], fraction) for m in voters}
    else:
        picks = {m: (max(allowed, key=lambda k, m=m: (scores[m][k], -k))
                     if max(scores[m][k] for k in allowed) > 0 else None) for m in voters}
    ranking = sorted(allowed, key=lambda k: (-combined[k], k)) + sorted(
        (k for k in layers if k not in allowed), key=lambda k: (-combined[k], k))
    top = max(combined.values())
    profile = {k: (max(v, 0.0) / top if top > 0 else 0.0) for k, v in combined.items()}
    seeing = [m for m in measures if significant[m]]
    probe_hit = False
    if "probe" in measures:
        z = NormalDist().inv_cdf(1 - alpha / len(rows))
        probe_hit = max(r.probe_acc for r in rows) >= 0.5 + z * math.sqrt(0.25 / n_heldout)
    details = {"picks": picks, "profile": profile, "significant": significant,
               "ranking": ranking}
    probe_txt = ""
    if "probe" in measures:
        best_probe = max(r.probe_acc for r in rows)
        probe_txt = f"; the probe's best held-out accuracy is {best_probe:.2f} (chance 0.5)"
    shift = p_value <= alpha or probe_hit
    test_txt = (f"permutation p = {p_value:.2g}" if p_value <= alpha else
                f"probe above chance at the Bonferroni level; permutation p = {p_value:.2g}")
    if shift and not seeing and not snr_rule:
        reason = (
            f"no layer to recommend: the target differs from the source overall (permutation "
            f"p = {p_value:.2g}) but no single layer shows it significantly; measure with more "
            f"patches or images{probe_txt}"
        )
        details["ranking"] = []
        return None, 0.0, reason, details
    if not shift:
        conf = 1.0 - len(seeing) / len(measures)
        reason = (
            f"no adaptation needed: the target images are no further from the source images "
            f"than two sets of source images are from each other (permutation p = "
            f"{p_value:.2g} > {alpha:g}; {len(measures) - len(seeing)} of {len(measures)} "
            f"measures see no significant layer){probe_txt}"
        )
        details["ranking"] = []
        return None, conf, reason, details
    if rule == "first-reaching":
        votes = [v for v in picks.values() if v is not None]
        layer = min(set(votes), key=lambda k: (-votes.count(k), k))
        details["ranking"] = [layer] + [k for k in ranking if k != layer]
    else:
        layer = ranking[0]
    agree = [m for m in voters if picks[m] == layer]
    conf = len(agree) / len(voters)
    pick_txt = ", ".join(
        f"{_LABELS[m]} {picks[m] if picks[m] is not None else '-'}" for m in voters)
    if snr_rule:
        r = next(r for r in rows if r.layer == layer)
        ratio = math.exp(combined[layer])
        where = "among the encoder layers, " if rule == "snr-encoder" else ""
        nxt = ", ".join(str(k) for k in details["ranking"][1:3])
        reason = (
            f"match layer {layer} ({names[layer]}): {where}it is where the new images stand "
            f"out most from the source images, {ratio:.1f}x further from them than two sets "
            f"of source images are from each other (W2 between {r.w2_between:.3g}, within "
            f"{r.w2_floor:.3g}); {len(agree)} of {len(voters)} distances pick it ({pick_txt});"
            f" next: layers {nxt}; shift detected ({test_txt}){probe_txt}"
        )
    else:
        reason = (
            f"match layer {layer} ({names[layer]}): {len(agree)} of {len(voters)} measures "
            f"pick it as the first layer where their gap reaches {fraction:.0%} of its largest "
            f"({pick_txt}); shift detected ({test_txt}){probe_txt}"
        ) if rule == "first-reaching" else (
            f"match layer {layer} ({names[layer]}): the largest combined gap; {len(agree)} of "
            f"{len(voters)} measures pick it ({pick_txt}); shift detected ({test_txt})"
            f"{probe_txt}"
        )
    if num_layers:
        reason += f". Heuristic reading: {_depth_hint(layer, num_layers)}"
    return layer, conf, reason, details


def recommend_layer(
    model: Any,
    source: Any,
    target: Any,
    *,
    fraction: float = 0.5,
    alpha: float = 0.05,
    layers: Sequence[int] | str | None = None,
    n_patches: int = 32,
    patch_size: int = 128,
    probe_steps: int = 60,
    device: str = "auto",
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    rule: str | None = None,
) -> LayerRecommendation:
    """Measure the gap at every layer and recommend the layer to match (no labels needed).

    Parameters
    ----------
    model : UNetGenerator
        The source model.
    source, target : folder, array ``(N, H, W)``, dataset or sampler
        Unlabeled source-microscope and new-microscope images.
    fraction, alpha : float
        Parameters of the rule (:func:`choose_layer`).
    rule : str, optional
        One of :data:`RULES`; None = :data:`DEFAULT_RULE`.
    layers, n_patches, patch_size, probe_steps, device, seed, progress, cancel :
        As in :func:`measure_layer_gaps`.

    Returns
    -------
    LayerRecommendation
        Rows, recommended layer (None = no adaptation needed), confidence and reason.
    """
    rows, how = _measure(model, source, target, layers=layers, n_patches=n_patches,
                         patch_size=patch_size, probe_steps=probe_steps, device=device,
                         seed=seed, batch_size=8, progress=progress, cancel=cancel)
    n_held = how["n_heldout"]
    layer, conf, reason, det = choose_layer(rows, p_value=how["p_value"], fraction=fraction,
                                            alpha=alpha, n_heldout=n_held,
                                            num_layers=model.num_layers, rule=rule)
    settings = {"n_patches": int(n_patches), "patch_size": int(patch_size),
                "probe_steps": int(probe_steps), "seed": int(seed), "bn_mode": "eval",
                "probe_threshold": _probe_threshold(n_held), "num_layers": model.num_layers,
                **{k: how[k] for k in ("split", "groups", "patches_per_group", "n_splits")}}
    return LayerRecommendation(rows, layer, conf, reason, how["p_value"], det["picks"],
                               det["profile"], det["significant"], fraction, alpha, settings,
                               det["ranking"], rule or DEFAULT_RULE)


# ------------------------------------------------------------------ output
def _g(v: float) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.3g}"


def format_recommendation_table(rec: LayerRecommendation) -> str:
    """Format the per-layer table as text (``*`` = significant, ``<`` = recommended).

    Columns: layer, name, channels, size, the three distances, probe accuracy, and the
    combined normalised gap the rule reads.
    """
    header = ["layer", "name", "ch", "size", "W2", "Bhattacharyya", "sliced W2", "probe acc",
              "gap", ""]
    body = []
    for r in rec.rows:
        cells = [str(r.layer), r.name, str(r.channels), f"{r.height}x{r.width}"]
        for m in MEASURES:
            mark = "*" if r.layer in rec.significant.get(m, []) else ""
            cells.append(_g(r.value(m)) + mark)
        cells.append(_g(rec.profile.get(r.layer, math.nan)))
        cells.append("<" if r.layer == rec.layer else "")
        body.append(cells)
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    right = {0, 2, 4, 5, 6, 7, 8}
    lines = ["  ".join(x.rjust(w) if i in right else x.ljust(w)
                       for i, (x, w) in enumerate(zip(line, widths))).rstrip()
             for line in [header, ["-" * w for w in widths], *body]]
    return "\n".join(lines)


def plot_recommendation(rec: LayerRecommendation, path: str | Path, *,
                        title: str | None = None) -> Path:
    """Plot the normalised gap per layer for each measure, the combined gap and the pick.

    Each measure is divided by its maximum over the layers (the probe as ``accuracy - 0.5``);
    the threshold ``fraction`` of the combined maximum is dashed; the recommended layer is a
    vertical line. Rendered with Agg (no display needed).

    Returns
    -------
    Path
        The PNG written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..data.io import atomic_write

    xs = [r.layer for r in rec.rows]
    fig = Figure(figsize=(8.0, 3.6), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    styles = {"w2": ("tab:blue", "o"), "bhattacharyya": ("tab:orange", "s"),
              "sliced_w2": ("tab:green", "^"), "probe": ("tab:red", "D")}
    for m in MEASURES:
        vals = np.array([r.value(m) - (0.5 if m == "probe" else 0.0) for r in rec.rows])
        if not np.isfinite(vals).all():
            continue
        top = vals.max()
        norm = vals / top if top > 0 else np.zeros_like(vals)
        color, marker = styles[m]
        ax.plot(xs, norm, marker=marker, ms=4, lw=1, color=color, alpha=0.8, label=_LABELS[m])
    comb = [rec.profile.get(x, math.nan) for x in xs]
    ax.plot(xs, comb, color="black", lw=2.2, label="combined (significant only)")
    top = max((v for v in comb if math.isfinite(v)), default=0.0)
    if top > 0:
        ax.axhline(rec.fraction * top, color="0.4", ls="--", lw=1,
                   label=f"{rec.fraction:.0%} of max")
    if rec.layer is not None:
        ax.axvline(rec.layer, color="tab:purple", lw=2, alpha=0.6,
                   label=f"recommended: {rec.layer} ({rec.confidence:.2f})")
    else:
        ax.text(0.5, 0.9, "no adaptation needed", transform=ax.transAxes, ha="center")
    ax.set_xticks(xs)
    ax.set_xlabel("layer")
    ax.set_ylabel("gap / max over layers")
    ax.set_ylim(-0.05, 1.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        ax.set_title(title, fontsize=9)
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write(Path(path), lambda p: p.write_bytes(buf.getvalue()), overwrite=True)


def write_recommendation(rec: LayerRecommendation, out_dir: str | Path, *,
                         overwrite: bool = False, title: str | None = None) -> dict[str, Path]:
    """Write ``recommend.json`` and ``recommend.png`` into ``out_dir`` (created).

    Returns
    -------
    dict of str to Path
        ``{"json": ..., "png": ...}``.
    """
    import json

    from ..data.io import atomic_write
    from ..errors import OutputExistsError

    out = Path(out_dir)
    if not overwrite:
        for name in ("recommend.json", "recommend.png"):
            if (out / name).exists():
                raise OutputExistsError(f"'{out / name}' already exists (use --overwrite)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create '{out}': {exc.strerror or exc}") from None
    text = json.dumps(rec.to_dict(), indent=2, allow_nan=False) + "\n"
    paths = {"json": atomic_write(out / "recommend.json",
                                  lambda p: p.write_text(text, encoding="utf-8"),
                                  overwrite=True)}
    paths["png"] = plot_recommendation(rec, out / "recommend.png", title=title)
    return paths


# ------------------------------------------------------------------ SIT-ADDA-Auto selector
def select_layer_by_uncertainty(
    candidates: Mapping[int, Any],
    images: Any,
    *,
    n_samples: int = 8,
    tolerance: float = 0.05,
    seed: int = 0,
) -> tuple[int, dict[int, float]]:
    """Pick the adaptation depth whose adapted model(s) are least uncertain on target images.

    After SIT-ADDA-Auto (arXiv 2511.12006): adapt at several (early) depths, score each with
    the predictive uncertainty of an ensemble (or MC dropout) on unlabeled target images, and
    keep the *shallowest* depth whose score is within ``tolerance`` (relative) of the lowest.

    Parameters
    ----------
    candidates : mapping of int to model or sequence of models
        Depth (matched layer) -> the model adapted there, or an ensemble of them (e.g. one per
        seed). A single model is scored by MC dropout (or test-time augmentation without
        dropout), see :func:`~napari_lmadda.inference.uncertainty.predictive_uncertainty`.
    images : ndarray
        Normalised target patches ``(N, H, W)`` or ``(N, 1, H, W)``.
    n_samples : int
        Stochastic passes for a single model.
    tolerance : float
        Relative slack (0.05 = 5 %) in favour of shallower depths.
    seed : int
        Seeds MC dropout.

    Returns
    -------
    layer : int
        The chosen depth.
    scores : dict of int to float
        Mean predictive standard deviation per depth (lower = more certain).
    """
    from ..inference.uncertainty import uncertainty_score

    if not candidates:
        raise ConfigError("no candidate depths to choose from")
    if tolerance < 0:
        raise ConfigError(f"tolerance must be >= 0, got {tolerance!r}")
    scores = {int(k): uncertainty_score(v, images, n_samples=n_samples, seed=seed)
              for k, v in sorted(candidates.items())}
    best = min(scores.values())
    layer = min(k for k, v in scores.items() if v <= best * (1 + tolerance) + 1e-12)
    return layer, scores
