"""Training data for the source model from paired folders.

Split by file, learned target encoding, input checks, augmented sampler and a fixed
validation batch.

Everything a user's 8- or 16-bit files need before training starts: targets of any range are
encoded with a :class:`~napari_lmadda.data.normalize.TargetNorm` learned from the training
files (stored in the model so predictions can be decoded to the target's units), targets the
model could not produce and suspicious inputs (constant, saturated) are reported by name.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..adapt.sampling import check_patch_fits
from ..data.augment import AugmentedSampler, augment_config
from ..data.datasets import PairedDataset, PairedFolders, PatchSampler, PlaneDataset
from ..data.normalize import (
    DEFAULT_PERCENTILES,
    DEFAULT_TARGET_PERCENTILES,
    TARGET_MARGIN,
    NormalizationWarning,
    RangeProblem,
    TargetNorm,
    encode_target,
    fit_target_norm,
    percentile_normalize,
)
from ..errors import ConfigError

__all__ = [
    "MappedPlanes",
    "InputProblem",
    "TrainingData",
    "scan_inputs",
    "split_by_file",
    "target_meta",
    "prepare_training",
]

PathLike = str | os.PathLike[str]
# integer full-scale values of common cameras (8, 10, 12, 14, 16 bit): a plane whose maximum
# is one of these and covers many pixels is clipped by the detector
_FULL_SCALE = (255.0, 1023.0, 4095.0, 16383.0, 65535.0)


class MappedPlanes(PlaneDataset):
    """The planes of another dataset passed through a function (normalise, encode).

    Parameters
    ----------
    parent : PlaneDataset
        Raw planes (its own cache is switched off: this dataset caches the mapped planes).
    fn : callable
        ``fn(raw plane) -> float32 plane``.
    indices : sequence of int, optional
        A subset of the parent's planes (default all).
    cache_size : int
        Mapped planes kept in memory.
    """

    def __init__(self, parent: PlaneDataset, fn: Callable[[np.ndarray], np.ndarray], *,
                 indices: Sequence[int] | None = None, cache_size: int = 64) -> None:
        super().__init__(normalize=None, cache_size=cache_size)
        self.parent, self.fn = parent, fn
        self.indices = list(range(len(parent))) if indices is None else list(indices)
        parent.cache_size = 0
        parent.clear_cache()

    def __len__(self) -> int:
        return len(self.indices)

    def _load(self, index: int) -> np.ndarray:
        return self.fn(self.parent[self.indices[index]])

    def _normalise(self, raw: np.ndarray) -> tuple[np.ndarray, None]:
        return np.asarray(raw, np.float32), None  # fn already mapped it

    def shape(self, index: int) -> tuple[int, int]:
        """``(H, W)`` of plane ``index``."""
        return self.parent.shape(self.indices[self._check_index(index)])

    def name(self, index: int) -> str:
        """The parent's name of plane ``index``."""
        return self.parent.name(self.indices[self._check_index(index)])

    def path(self, index: int) -> Path | None:
        """The file of plane ``index`` (None for arrays)."""
        getter = getattr(self.parent, "path", None)
        return getter(self.indices[self._check_index(index)]) if getter else None

    def raw(self, index: int) -> np.ndarray:
        """The unmapped plane ``index``."""
        return self.parent[self.indices[self._check_index(index)]]


@dataclass(frozen=True)
class InputProblem:
    """An input plane that will not train well: ``kind`` is ``constant`` or ``saturated``."""

    name: str
    kind: str
    value: float
    fraction: float

    def message(self) -> str:
        """One line for the user."""
        if self.kind == "constant":
            return (f"input '{self.name}' is constant (every pixel {self.value:g}): "
                    "nothing to learn from")
        return (f"input '{self.name}' is saturated: {100 * self.fraction:.0f} % of its pixels "
                f"sit at the camera's full scale {self.value:g}, where structure is lost")


def scan_inputs(planes: Any, *, saturated_fraction: float = 0.05,
                sample: int = 65536, seed: int = 0) -> list[InputProblem]:
    """Find constant and saturated raw input planes (one plane in memory at a time).

    Parameters
    ----------
    planes : dataset
        ``len()``, ``[i]`` -> raw plane, ``name(i)``.
    saturated_fraction : float
        Report a plane when at least this fraction of its pixels equals its maximum and that
        maximum is an integer camera full scale (255, 1023, 4095, 16383, 65535).
    sample : int
        Pixels looked at per plane (a random sample; the minimum and maximum are exact).
    seed : int
        Seed of the sample.
    """
    rng = np.random.default_rng(seed)
    out: list[InputProblem] = []
    for i in range(len(planes)):
        x = np.asarray(planes[i]).reshape(-1)
        x = x[np.isfinite(x)]
        if x.size == 0:
            continue
        lo, hi = float(x.min()), float(x.max())
        name = planes.name(i) if hasattr(planes, "name") else f"plane {i}"
        if hi == lo:
            out.append(InputProblem(name, "constant", lo, 1.0))
            continue
        if hi in _FULL_SCALE:
            pick = x if x.size <= sample else x[rng.integers(0, x.size, sample)]
            frac = float(np.mean(pick == hi))
            if frac >= saturated_fraction:
                out.append(InputProblem(name, "saturated", hi, frac))
    return out


def split_by_file(pairs: PairedDataset, val_fraction: float, seed: int
                  ) -> tuple[list[int], list[int], list[str]]:
    """Split pair indices into training and validation by file (patches never straddle).

    Returns
    -------
    train, val : list of int
        Pair indices; ``val`` is empty with a single file or ``val_fraction == 0``.
    val_files : list of str
        Names of the held-out files.
    """
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    files: dict[str, list[int]] = {}
    for i in range(len(pairs)):
        p = pairs.path(i)
        files.setdefault(str(p) if p is not None else pairs.name(i), []).append(i)
    keys = list(files)
    if len(keys) < 2 or val_fraction == 0:
        return list(range(len(pairs))), [], []
    order = np.random.default_rng(seed).permutation(len(keys))
    n_val = min(len(keys) - 1, max(1, int(round(val_fraction * len(keys)))))
    val_keys = {keys[i] for i in order[:n_val]}
    train = [i for k in keys if k not in val_keys for i in files[k]]
    val = [i for k in keys if k in val_keys for i in files[k]]
    return train, val, sorted(Path(k).name for k in val_keys)


def target_meta(norm: TargetNorm) -> dict[str, Any]:
    """``norm.to_meta()``, with ``target_range`` as one pair when every channel shares it.

    The single-pair form is what model files have always held, so a model trained on a
    one-channel (or uniformly encoded) target stays readable by older versions too;
    :meth:`TargetNorm.from_meta` reads both forms.
    """
    meta = norm.to_meta()
    if len(set(zip(norm.lo, norm.hi))) == 1:
        meta["target_range"] = [norm.lo[0], norm.hi[0]]
    return meta


@dataclass
class TrainingData:
    """What :func:`prepare_training` built.

    Attributes
    ----------
    sampler : AugmentedSampler
        Training batches (inputs normalised per image, targets encoded with ``target_norm``).
    val : (ndarray, ndarray)
        Fixed validation inputs ``(N, 1, P, P)`` and encoded targets ``(N, C, P, P)``.
    target_norm : TargetNorm
        The learned target encoding (its ``to_meta()`` belongs in the model file).
    target_problems : list of RangeProblem
        Training or validation targets the model cannot produce.
    input_problems : list of InputProblem
        Constant or saturated inputs.
    channel_names : list of str
    n_train, n_val : int
        Planes on each side.
    val_files : list of str
        Held-out files (empty when validating on training patches).
    meta : dict
        Model metadata: channel names, input percentiles, target normalisation, provenance.
    """

    sampler: Any
    val: tuple[np.ndarray, np.ndarray]
    target_norm: TargetNorm
    target_problems: list[RangeProblem]
    input_problems: list[InputProblem]
    channel_names: list[str]
    n_train: int
    n_val: int
    val_files: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def warnings(self) -> list[str]:
        """Every problem found, one line each (for the CLI and the GUI)."""
        lines = [p.message(self.channel_names[p.channel]) for p in self.target_problems]
        return lines + [p.message() for p in self.input_problems]


def prepare_training(
    inputs: PathLike,
    targets: PathLike | Sequence[PathLike],
    *,
    channel_names: Sequence[str] | None = None,
    target_norm: str = "dataset",
    target_percentiles: tuple[float, float] = DEFAULT_TARGET_PERCENTILES,
    target_range: tuple[float, float] | None = None,
    input_percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    augment: str = "basic",
    patch_size: int = 128,
    batch_size: int = 8,
    val_fraction: float = 0.2,
    val_patches: int = 32,
    seed: int = 0,
    max_samples: int = 2_000_000,
    config: Any = None,
) -> TrainingData:
    """Read paired folders and build everything training needs (see module docstring).

    Parameters
    ----------
    inputs, targets : path-like
        Input folder and one target folder per output channel (files paired by name).
    channel_names : sequence of str, optional
        Default: the target folder names.
    target_norm : {"dataset", "image", "fixed"}
        How targets are encoded (:func:`~napari_lmadda.data.normalize.fit_target_norm`).
    target_percentiles : (float, float)
        Percentiles of ``dataset`` and ``image`` modes.
    target_range : (float, float), optional
        The stain range of ``fixed`` mode (default ``(0, 1)``).
    input_percentiles : (float, float)
        Per-image input normalisation.
    augment : str
        Augmentation preset (:data:`~napari_lmadda.data.augment.AUGMENT_PRESETS`).
    patch_size, batch_size, val_fraction, val_patches, seed
        Sampling and split.
    max_samples : int
        Pixels sampled per channel to learn the target normalisation.
    config : SourceTrainConfig, optional
        When given, its ``augment``, ``target_norm``, ``target_percentiles``,
        ``patch_size``, ``batch_size`` and ``seed`` replace the keywords of the same meaning.

    Raises
    ------
    ConfigError, ImageReadError, EmptyFolderError
        Bad settings or unusable folders (one-line messages naming the file).
    """
    if config is not None:
        augment, target_norm = config.augment, config.target_norm
        target_percentiles = tuple(config.target_percentiles)
        patch_size, batch_size, seed = config.patch_size, config.batch_size, config.seed
    augment_config(augment)  # validates the preset name before any file is read
    target_dirs = [targets] if isinstance(targets, (str, os.PathLike)) else list(targets)
    names = list(channel_names) if channel_names else [Path(t).name for t in target_dirs]
    if len(names) != len(target_dirs):
        raise ConfigError(f"{len(names)} channel name(s) ({', '.join(names)}) for "
                          f"{len(target_dirs)} target folder(s)")
    if val_patches < 1:
        raise ConfigError(f"validation patches must be >= 1, got {val_patches}")
    pairs = PairedFolders(inputs, target_dirs, normalize=None, target_normalize=None,
                          on_unmatched="warn")
    check_patch_fits(pairs, patch_size, "input")
    train_idx, val_idx, val_files = split_by_file(pairs, val_fraction, seed)
    train_targets = [MappedPlanes(t, lambda a: a, indices=train_idx, cache_size=0)
                     for t in pairs.targets]
    norm, problems = fit_target_norm(
        train_targets, mode=target_norm, percentiles=target_percentiles,
        fixed_range=target_range if target_range is not None else (0.0, 1.0),
        margin=TARGET_MARGIN, max_samples=max_samples, seed=seed)
    if val_idx:  # validation targets outside the learned range are worth a word too
        fixed = (norm.lo, norm.hi)
        for c, t in enumerate(pairs.targets):
            held = MappedPlanes(t, lambda a: a, indices=val_idx, cache_size=0)
            lo, hi = fixed[0][c], fixed[1][c]
            _, more = fit_target_norm([held], mode="fixed", fixed_range=(lo, hi), margin=0.0,
                                      max_samples=max_samples // 4, seed=seed) \
                if norm.mode != "image" else (None, [])
            problems += [RangeProblem(c, p.name, p.vmin, p.vmax, p.outside, p.lo, p.hi)
                         for p in more]
    input_problems = scan_inputs(pairs.inputs, seed=seed)

    def norm_input(a: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NormalizationWarning)  # reported by scan_inputs
            return percentile_normalize(a, *input_percentiles)[0]

    def side(idx: list[int]) -> PairedDataset:
        x = MappedPlanes(pairs.inputs, norm_input, indices=idx)
        ys = [MappedPlanes(t, lambda a, c=c: encode_target(a, norm, c), indices=idx)
              for c, t in enumerate(pairs.targets)]
        return PairedDataset(x, ys)

    train = side(train_idx)
    val = side(val_idx) if val_idx else train
    sampler = AugmentedSampler(train, patch_size, batch_size, augment=augment, seed=seed)
    vx, vy = PatchSampler(val, patch_size, val_patches, seed=seed + 1).sample()
    meta: dict[str, Any] = {
        "channel_names": names,
        "input_percentiles": [float(v) for v in input_percentiles],
        **target_meta(norm),
        "provenance": {
            "inputs": str(inputs),
            "targets": [str(t) for t in target_dirs],
            "n_pairs": len(pairs),
            "val_files": val_files,
            "augment": augment,
        },
    }
    return TrainingData(sampler, (vx, vy), norm, problems, input_problems, names,
                        len(train_idx), len(val_idx) if val_idx else len(train_idx),
                        val_files, meta)
