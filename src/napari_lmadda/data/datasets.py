"""Lazy datasets of 2D planes and a random patch sampler.

Conventions: a dataset item is one 2D plane, ``float32`` ``(H, W)``, normalised to the network
range (see :mod:`napari_lmadda.data.normalize`); a paired item is ``(input (H, W), target
(C, H, W))``. :class:`PatchSampler` batches are ``(B, 1, P, P)`` (inputs) and ``(B, C, P, P)``
(targets), ``float32``, C-contiguous. Everything here is numpy; torch is imported only by
:func:`to_torch`.

Memory stays bounded: a folder is indexed from file headers (no pixel is decoded to build the
index) and only the last ``cache_size`` decoded planes are kept.
"""

from __future__ import annotations

import bisect
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, EmptyFolderError, ImageReadError
from .io import (
    ImageInfo,
    ImageWarning,
    check_memory,
    file_stem,
    list_images,
    probe_image,
    read_plane,
    sanitize_plane,
)
from .normalize import (
    DEFAULT_PERCENTILES,
    NormParams,
    fixed_range_normalize,
    percentile_normalize,
)

__all__ = [
    "PlaneDataset",
    "ImageFolder",
    "ArrayDataset",
    "PairedDataset",
    "PairedFolders",
    "PairedArrays",
    "PatchSampler",
    "to_torch",
]

PathLike = str | os.PathLike[str]


def _norm_mode(normalize: bool | str | None) -> str:
    if normalize is True or normalize == "percentile":
        return "percentile"
    if normalize == "fixed":
        return "fixed"
    if normalize is False or normalize is None or normalize == "none":
        return "none"
    raise ConfigError(
        f"normalize must be True/'percentile', 'fixed' or False/None, got {normalize!r}"
    )


def _few(names: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(f"'{x}'" for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


class PlaneDataset:
    """Base of the plane datasets: normalisation and a bounded LRU cache of decoded planes.

    Subclasses implement ``__len__``, :meth:`shape`, :meth:`name` and ``_load(i)`` (the raw
    ``float32`` plane).

    Parameters
    ----------
    normalize : bool or {'percentile', 'fixed', None}
        True/'percentile': per-plane percentile normalisation (the default); 'fixed': map
        ``value_range`` to [-1, 1]; False/None: raw intensities as ``float32``.
    percentiles : (float, float)
        Percentiles of percentile normalisation.
    value_range : (float, float)
        Raw range of fixed normalisation.
    cache_size : int
        Decoded (normalised) planes kept in memory; 0 disables the cache.
    """

    def __init__(
        self,
        *,
        normalize: bool | str | None = True,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
        value_range: tuple[float, float] = (0.0, 1.0),
        cache_size: int = 64,
    ) -> None:
        if cache_size < 0:
            raise ConfigError(f"cache_size must be >= 0, got {cache_size}")
        self.normalize = _norm_mode(normalize)
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))
        self.value_range = (float(value_range[0]), float(value_range[1]))
        if self.normalize == "percentile":
            percentile_normalize(np.array([0.0, 1.0]), *self.percentiles)  # validates
        elif self.normalize == "fixed":
            fixed_range_normalize(np.zeros(1), *self.value_range)  # validates
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[int, tuple[np.ndarray, NormParams | None]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    # -- to implement ------------------------------------------------------------------
    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def shape(self, index: int) -> tuple[int, int]:  # pragma: no cover - abstract
        """Return ``(H, W)`` of plane ``index`` (without decoding it)."""
        raise NotImplementedError

    def name(self, index: int) -> str:  # pragma: no cover - abstract
        """Return a human-readable name of plane ``index`` (for messages)."""
        raise NotImplementedError

    def _load(self, index: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------
    def _check_index(self, index: int) -> int:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} planes")
        return i

    def _normalise(self, raw: np.ndarray) -> tuple[np.ndarray, NormParams | None]:
        if self.normalize == "percentile":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # constant planes are common in crops
                return percentile_normalize(raw, *self.percentiles)
        if self.normalize == "fixed":
            return fixed_range_normalize(raw, *self.value_range)
        return raw.astype(np.float32), None  # a copy: cached arrays are made read-only

    def _get(self, index: int) -> tuple[np.ndarray, NormParams | None]:
        i = self._check_index(index)
        with self._lock:
            hit = self._cache.get(i)
            if hit is not None:
                self._cache.move_to_end(i)
                self.hits += 1
                return hit
            self.misses += 1
        item = self._normalise(self._load(i))
        item[0].setflags(write=False)  # cached arrays are shared: keep them read-only
        if self.cache_size:
            with self._lock:
                self._cache[i] = item
                self._cache.move_to_end(i)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return item

    def __getitem__(self, index: int) -> np.ndarray:
        """Return plane ``index``: ``float32`` ``(H, W)``, normalised, read-only."""
        return self._get(index)[0]

    def norm_params(self, index: int) -> NormParams | None:
        """Return the normalisation parameters of plane ``index`` (None if not normalised)."""
        return self._get(index)[1]

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def cache_info(self) -> dict[str, int]:
        """Return cache statistics: ``hits``, ``misses``, ``size``, ``maxsize``."""
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "size": len(self._cache),
                "maxsize": self.cache_size,
            }

    def clear_cache(self) -> None:
        """Drop every cached plane."""
        with self._lock:
            self._cache.clear()


class ImageFolder(PlaneDataset):
    """The 2D planes of every image file of a folder, decoded lazily.

    Multi-page files contribute one plane per page (rules of
    :func:`napari_lmadda.data.io.read_planes`). The index is built from file headers only.

    Parameters
    ----------
    folder_or_paths : path-like or sequence of path-like
        A folder (listed with :func:`~napari_lmadda.data.io.list_images`), one image file, or
        a sequence of image files.
    normalize, percentiles, value_range, cache_size
        See :class:`PlaneDataset`.
    recursive : bool
        List sub-folders too.
    strict : bool
        Raise on the first unreadable file instead of skipping it with an
        :class:`~napari_lmadda.data.io.ImageWarning`.
    as_grey : bool
        RGB(A) files give one luminance plane (default) or one plane per colour.
    min_size : int, optional
        Files whose planes are smaller than this (height or width) count as unreadable.

    Attributes
    ----------
    paths : list of Path
        The files kept, in order.
    skipped : list of (Path, str)
        Unreadable files and why.

    Raises
    ------
    EmptyFolderError
        No readable image.
    ImageReadError
        A bad file when ``strict``; a missing folder.
    """

    def __init__(
        self,
        folder_or_paths: PathLike | Sequence[PathLike],
        *,
        normalize: bool | str | None = True,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
        value_range: tuple[float, float] = (0.0, 1.0),
        cache_size: int = 64,
        recursive: bool = False,
        strict: bool = False,
        as_grey: bool = True,
        min_size: int | None = None,
    ) -> None:
        super().__init__(
            normalize=normalize,
            percentiles=percentiles,
            value_range=value_range,
            cache_size=cache_size,
        )
        self.as_grey = as_grey
        self.min_size = min_size
        if isinstance(folder_or_paths, (str, os.PathLike)):
            self.source = str(folder_or_paths)
            paths = list_images(folder_or_paths, recursive=recursive)
        else:
            paths = [Path(p) for p in folder_or_paths]
            self.source = f"{len(paths)} files"
            if not paths:
                raise EmptyFolderError("no image files given")
        infos, self.skipped = _probe_files(
            paths, as_grey=as_grey, min_size=min_size, strict=strict
        )
        if not infos:
            raise EmptyFolderError(
                f"no readable images in '{self.source}' ({len(self.skipped)} unreadable: "
                f"{_few([p.name for p, _ in self.skipped])})"
            )
        self._set_infos(infos)

    @classmethod
    def _from_infos(cls, infos: list[ImageInfo], source: str, **kwargs: Any) -> ImageFolder:
        """Build from headers already read (used by :class:`PairedFolders`)."""
        self = cls.__new__(cls)
        PlaneDataset.__init__(
            self,
            normalize=kwargs.get("normalize", True),
            percentiles=kwargs.get("percentiles", DEFAULT_PERCENTILES),
            value_range=kwargs.get("value_range", (0.0, 1.0)),
            cache_size=kwargs.get("cache_size", 64),
        )
        self.as_grey = kwargs.get("as_grey", True)
        self.min_size = kwargs.get("min_size")
        self.source = source
        self.skipped = []
        self._set_infos(infos)
        return self

    def _set_infos(self, infos: list[ImageInfo]) -> None:
        self._infos = infos
        self.paths = [info.path for info in infos]
        # _starts[k] = index of the first plane of file k
        self._starts = [0]
        for info in infos:
            self._starts.append(self._starts[-1] + info.n_planes)

    def __len__(self) -> int:
        return self._starts[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """Return ``(file number, plane number inside that file)`` of plane ``index``."""
        i = self._check_index(index)
        k = bisect.bisect_right(self._starts, i) - 1
        return k, i - self._starts[k]

    def path(self, index: int) -> Path:
        """Return the file holding plane ``index``."""
        return self._infos[self.locate(index)[0]].path

    def info(self, index: int) -> ImageInfo:
        """Return the header of the file holding plane ``index``."""
        return self._infos[self.locate(index)[0]]

    def shape(self, index: int) -> tuple[int, int]:
        """Return ``(H, W)`` of plane ``index`` (from the header, nothing decoded)."""
        k, j = self.locate(index)
        return self._infos[k].plane_shape(j)

    def name(self, index: int) -> str:
        """Return the file name, with ``[plane]`` for multi-plane files."""
        k, j = self.locate(index)
        info = self._infos[k]
        return info.path.name if info.n_planes == 1 else f"{info.path.name}[{j}]"

    def _load(self, index: int) -> np.ndarray:
        k, j = self.locate(index)
        info = self._infos[k]
        return read_plane(info.path, j, as_grey=self.as_grey, info=info)

    def __repr__(self) -> str:
        return (
            f"ImageFolder({self.source!r}: {len(self.paths)} files, {len(self)} planes, "
            f"normalize={self.normalize!r})"
        )


def _probe_files(
    paths: Sequence[Path], *, as_grey: bool, min_size: int | None, strict: bool
) -> tuple[list[ImageInfo], list[tuple[Path, str]]]:
    infos: list[ImageInfo] = []
    skipped: list[tuple[Path, str]] = []
    for p in paths:
        try:
            info = probe_image(p, as_grey=as_grey)
            # planes are decoded one at a time later: one that cannot fit is skipped now,
            # not when a training step needs it
            check_memory(info, info.plane_read_bytes())
            if min_size is not None:
                for s in info.series:
                    if min(s.plane_shape) < min_size:
                        h, w = s.plane_shape
                        raise ImageReadError(
                            f"'{p}' is {h}x{w} pixels, smaller than the minimum size {min_size}"
                        )
        except ImageReadError as exc:
            if strict:
                raise
            skipped.append((p, str(exc)))
            continue
        infos.append(info)
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} unreadable file(s): "
            + "; ".join(reason for _, reason in skipped[:5])
            + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""),
            ImageWarning,
            stacklevel=3,
        )
    return infos, skipped


class ArrayDataset(PlaneDataset):
    """In-memory planes with the same interface as :class:`ImageFolder`.

    Parameters
    ----------
    data : numpy.ndarray or sequence of numpy.ndarray
        ``(H, W)``, ``(N, H, W)``, ``(N, 1, H, W)``, or a sequence of 2D arrays (shapes may
        differ). Not copied; non-finite pixels are repaired (with a warning) when a plane
        is read.
    names : sequence of str, optional
        One name per plane (default ``array[i]``).
    normalize, percentiles, value_range, cache_size
        See :class:`PlaneDataset`.
    """

    def __init__(
        self,
        data: np.ndarray | Sequence[np.ndarray],
        *,
        normalize: bool | str | None = True,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
        value_range: tuple[float, float] = (0.0, 1.0),
        cache_size: int = 64,
        names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(
            normalize=normalize,
            percentiles=percentiles,
            value_range=value_range,
            cache_size=cache_size,
        )
        self._planes = _as_plane_list(data)
        if names is not None and len(names) != len(self._planes):
            raise ConfigError(f"{len(names)} names for {len(self._planes)} planes")
        self._names = list(names) if names is not None else None

    def __len__(self) -> int:
        return len(self._planes)

    def shape(self, index: int) -> tuple[int, int]:
        """Return ``(H, W)`` of plane ``index``."""
        h, w = self._planes[self._check_index(index)].shape
        return (h, w)

    def name(self, index: int) -> str:
        """Return the plane's name."""
        i = self._check_index(index)
        return self._names[i] if self._names is not None else f"array[{i}]"

    def path(self, index: int) -> None:
        """Return None: in-memory planes have no file (interface of :class:`ImageFolder`)."""
        self._check_index(index)
        return None

    def _load(self, index: int) -> np.ndarray:
        with np.errstate(over="ignore"):  # beyond float32: +-Inf, repaired (and warned) below
            plane = np.asarray(self._planes[index], dtype=np.float32)
        return sanitize_plane(plane, self.name(index))

    def __repr__(self) -> str:
        return f"ArrayDataset({len(self)} planes, normalize={self.normalize!r})"


def _as_plane_list(data: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(data, np.ndarray):
        arr = data
        if arr.ndim == 4 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim == 2:
            arr = arr[np.newaxis]
        if arr.ndim != 3:
            raise ConfigError(
                f"expected an array (H, W), (N, H, W) or (N, 1, H, W), got shape {data.shape}"
            )
        planes = list(arr)
    else:
        planes = [np.asarray(p) for p in data]
    if not planes:
        raise EmptyFolderError("no planes given (empty array or list)")
    for i, p in enumerate(planes):
        if p.ndim != 2 or p.size == 0:
            raise ConfigError(f"plane {i} has shape {p.shape}; expected a non-empty 2D array")
        if p.dtype.kind not in "biuf":
            raise ConfigError(f"plane {i} has unsupported dtype {p.dtype}")
    return planes


class PairedDataset:
    """Input planes paired with target planes of the same shape.

    Parameters
    ----------
    inputs : PlaneDataset
        Input planes.
    targets : PlaneDataset or sequence of PlaneDataset
        One dataset per target channel, each as long as ``inputs``.

    Raises
    ------
    ImageReadError
        Lengths or plane shapes differ (the message names both planes).
    """

    def __init__(
        self, inputs: PlaneDataset, targets: PlaneDataset | Sequence[PlaneDataset]
    ) -> None:
        self.inputs = inputs
        self.targets = [targets] if isinstance(targets, PlaneDataset) else list(targets)
        if not self.targets:
            raise ConfigError("at least one target dataset is needed")
        for t in self.targets:
            if len(t) != len(inputs):
                raise ImageReadError(
                    f"{len(inputs)} input planes but {len(t)} target planes ({t!r})"
                )
            for i in range(len(inputs)):
                if t.shape(i) != inputs.shape(i):
                    raise ImageReadError(
                        f"input '{inputs.name(i)}' is {_hw(inputs.shape(i))} but its target "
                        f"'{t.name(i)}' is {_hw(t.shape(i))}"
                    )

    @property
    def n_target_channels(self) -> int:
        """Number of target channels C."""
        return len(self.targets)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(input (H, W), target (C, H, W))``, both ``float32``."""
        x = self.inputs[index]
        y = np.stack([t[index] for t in self.targets])
        return x, y

    def shape(self, index: int) -> tuple[int, int]:
        """Return ``(H, W)`` of pair ``index``."""
        return self.inputs.shape(index)

    def name(self, index: int) -> str:
        """Return the input plane's name."""
        return self.inputs.name(index)

    def path(self, index: int) -> Path | None:
        """Return the input file of pair ``index`` (None for arrays)."""
        return self.inputs.path(index)  # type: ignore[attr-defined,no-any-return]

    def target_paths(self, index: int) -> list[Path | None]:
        """Return the target file of each channel of pair ``index``."""
        return [t.path(index) for t in self.targets]  # type: ignore[attr-defined]


def _hw(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


class PairedFolders(PairedDataset):
    """Input images paired with target images of the same file name (stem).

    Files are matched by stem (case-sensitive, suffix ignored: ``a.tif`` pairs with
    ``a.png``). Multi-plane files pair plane by plane.

    Parameters
    ----------
    inputs : path-like
        Folder of input images (normalised like :class:`ImageFolder`).
    targets : path-like or sequence of path-like
        One folder, or one folder per target channel (the target is stacked ``(C, H, W)``).
    normalize, percentiles, cache_size, as_grey, recursive, strict
        Input settings, see :class:`ImageFolder` (``cache_size``, ``as_grey`` and ``strict``
        apply to targets too).
    target_normalize : {'fixed', 'percentile', None}
        'fixed' maps ``target_range`` to [-1, 1]; 'percentile' as inputs; None keeps raw
        values.
    target_range : (float, float)
        Raw target range for 'fixed'.
    on_unmatched : {'warn', 'error', 'ignore'}
        What to do about files without a partner.

    Attributes
    ----------
    unmatched : dict
        ``{'inputs': [names], 'targets': [names]}`` of files without a partner.
    skipped : list of (Path, str)
        Unreadable files (their pair is dropped too).

    Raises
    ------
    EmptyFolderError
        No pair found.
    ImageReadError
        Two files with the same stem in one folder, unmatched files with
        ``on_unmatched='error'``, or a pair whose shapes differ.
    """

    def __init__(
        self,
        inputs: PathLike,
        targets: PathLike | Sequence[PathLike],
        *,
        normalize: bool | str | None = True,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
        target_normalize: str | None = "fixed",
        target_range: tuple[float, float] = (0.0, 1.0),
        cache_size: int = 64,
        as_grey: bool = True,
        recursive: bool = False,
        strict: bool = False,
        on_unmatched: str = "warn",
    ) -> None:
        if on_unmatched not in ("warn", "error", "ignore"):
            raise ConfigError(
                f"on_unmatched must be 'warn', 'error' or 'ignore', got {on_unmatched!r}"
            )
        if target_normalize not in ("fixed", "percentile", None, "none"):
            raise ConfigError(
                f"target_normalize must be 'fixed', 'percentile' or None, got {target_normalize!r}"
            )
        target_dirs = [targets] if isinstance(targets, (str, os.PathLike)) else list(targets)
        if not target_dirs:
            raise ConfigError("at least one target folder is needed")
        in_map = _stem_map(list_images(inputs, recursive=recursive), inputs)
        t_maps = [_stem_map(list_images(d, recursive=recursive), d) for d in target_dirs]

        common = [s for s in in_map if all(s in m for m in t_maps)]
        paired = set(common)
        self.unmatched = {
            "inputs": [p.name for s, p in in_map.items() if s not in paired],
            "targets": [p.name for m in t_maps for s, p in m.items() if s not in paired],
        }
        if not common:
            raise EmptyFolderError(
                f"no file of '{inputs}' has a target of the same name in "
                f"{', '.join(repr(str(d)) for d in target_dirs)}"
            )
        if self.unmatched["inputs"] or self.unmatched["targets"]:
            parts = []
            if self.unmatched["inputs"]:
                parts.append(
                    f"{len(self.unmatched['inputs'])} input file(s) in '{inputs}' "
                    f"without a target ({_few(self.unmatched['inputs'])})"
                )
            if self.unmatched["targets"]:
                parts.append(
                    f"{len(self.unmatched['targets'])} target file(s) without an "
                    f"input ({_few(self.unmatched['targets'])})"
                )
            msg = " and ".join(parts) + "; files are paired by name without suffix"
            if on_unmatched == "error":
                raise ImageReadError(msg)
            if on_unmatched == "warn":
                warnings.warn(msg, ImageWarning, stacklevel=2)

        # read every header; a bad file drops its whole pair
        in_infos, skipped = _probe_files(
            [in_map[s] for s in common], as_grey=as_grey, min_size=None, strict=strict
        )
        t_infos = []
        for m in t_maps:
            infos, sk = _probe_files(
                [m[s] for s in common], as_grey=as_grey, min_size=None, strict=strict
            )
            t_infos.append(infos)
            skipped.extend(sk)
        self.skipped = skipped
        bad = {file_stem(p) for p, _ in skipped}
        in_infos = [i for i in in_infos if file_stem(i.path) not in bad]
        t_infos = [[i for i in infos if file_stem(i.path) not in bad] for infos in t_infos]
        if not in_infos:
            raise EmptyFolderError(f"no readable pair of images in '{inputs}'")

        for t_list in t_infos:
            for a, b in zip(in_infos, t_list):
                shapes_a = [(s.plane_shape, s.n_planes) for s in a.series]
                shapes_b = [(s.plane_shape, s.n_planes) for s in b.series]
                if shapes_a != shapes_b:
                    raise ImageReadError(
                        f"'{a.path}' ({_describe(a)}) and its target '{b.path}' "
                        f"({_describe(b)}) differ in shape"
                    )
        common_kw = {"cache_size": cache_size, "as_grey": as_grey}
        input_ds = ImageFolder._from_infos(
            in_infos, str(inputs), normalize=normalize, percentiles=percentiles, **common_kw
        )
        target_ds = [
            ImageFolder._from_infos(
                t_list,
                str(d),
                normalize=target_normalize,
                percentiles=percentiles,
                value_range=target_range,
                **common_kw,
            )
            for t_list, d in zip(t_infos, target_dirs)
        ]
        super().__init__(input_ds, target_ds)


def _describe(info: ImageInfo) -> str:
    parts = [f"{info.n_planes} plane(s) of " + _hw(s.plane_shape) for s in info.series]
    return ", ".join(parts)


def _stem_map(paths: list[Path], folder: PathLike) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in paths:
        stem = file_stem(p)
        if stem in out:
            raise ImageReadError(
                f"'{out[stem].name}' and '{p.name}' in '{folder}' have the same name; "
                f"files are paired by name without suffix, so it must be unique"
            )
        out[stem] = p
    return out


class PairedArrays(PairedDataset):
    """In-memory input/target pairs (e.g. from the synthetic generator).

    Parameters
    ----------
    inputs : numpy.ndarray or sequence of numpy.ndarray
        ``(N, H, W)`` (or anything :class:`ArrayDataset` takes).
    targets : numpy.ndarray or sequence of numpy.ndarray
        ``(N, H, W)`` for one channel or ``(N, C, H, W)`` for C channels.
    normalize, percentiles, target_normalize, target_range, cache_size
        As :class:`PairedFolders`.
    """

    def __init__(
        self,
        inputs: np.ndarray | Sequence[np.ndarray],
        targets: np.ndarray | Sequence[np.ndarray],
        *,
        normalize: bool | str | None = True,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
        target_normalize: str | None = "fixed",
        target_range: tuple[float, float] = (0.0, 1.0),
        cache_size: int = 64,
    ) -> None:
        input_ds = ArrayDataset(
            inputs, normalize=normalize, percentiles=percentiles, cache_size=cache_size
        )
        t = targets
        if isinstance(t, np.ndarray) and t.ndim == 4:
            channels = [t[:, c] for c in range(t.shape[1])]
        else:
            channels = [t]
        target_ds = [
            ArrayDataset(
                c,
                normalize=target_normalize,
                percentiles=percentiles,
                value_range=target_range,
                cache_size=cache_size,
            )
            for c in channels
        ]
        super().__init__(input_ds, target_ds)


class PatchSampler:
    """Draw random square patches (random plane, random crop) from a dataset.

    Parameters
    ----------
    dataset : PlaneDataset or PairedDataset
        Where to sample from. A paired dataset gives the same crop (and augmentation) for
        input and target.
    patch_size : int
        Patch side P.
    batch_size : int
        Patches per batch B.
    seed : int
        Seed of the sampler's own random generator: the same seed and dataset give the same
        batches.
    augment : bool
        Random rot90 (k = 0..3) and horizontal flip per patch.
    pad_small : bool
        Reflect-pad planes smaller than the patch (default); if False such a plane raises
        :class:`~napari_lmadda.errors.ImageReadError`.
    """

    def __init__(
        self,
        dataset: PlaneDataset | PairedDataset,
        patch_size: int,
        batch_size: int,
        *,
        seed: int = 0,
        augment: bool = False,
        pad_small: bool = True,
    ) -> None:
        if int(patch_size) < 1:
            raise ConfigError(f"patch_size must be >= 1, got {patch_size}")
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if len(dataset) == 0:
            raise EmptyFolderError("cannot sample patches from an empty dataset")
        self.dataset = dataset
        self.patch_size = int(patch_size)
        self.batch_size = int(batch_size)
        self.augment = augment
        self.pad_small = pad_small
        self.paired = isinstance(dataset, PairedDataset)
        self.rng = np.random.default_rng(seed)

    def _crop(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        p = self.patch_size
        if self.paired:
            x, y = self.dataset[index]
            x = x if x.ndim == 3 else x[np.newaxis]  # (C_in, H, W): one or more channels
            stack = np.concatenate([x, y])  # (C_in + C, H, W): one crop for all
        else:
            x = self.dataset[index]
            stack = x if x.ndim == 3 else x[np.newaxis]
        h, w = stack.shape[-2:]
        if h < p or w < p:
            if not self.pad_small:
                raise ImageReadError(
                    f"'{self.dataset.name(index)}' is {h}x{w} pixels, smaller than the "
                    f"patch size {p}"
                )
            ph, pw = max(p - h, 0), max(p - w, 0)
            stack = np.pad(
                stack,
                ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)),
                mode="reflect" if min(h, w) > 1 else "edge",
            )
            h, w = stack.shape[-2:]
        y0 = int(self.rng.integers(0, h - p + 1))
        x0 = int(self.rng.integers(0, w - p + 1))
        patch = stack[:, y0 : y0 + p, x0 : x0 + p]
        if self.augment:
            k = int(self.rng.integers(0, 4))
            patch = np.rot90(patch, k, axes=(1, 2))
            if self.rng.integers(0, 2):
                patch = patch[:, :, ::-1]
        if self.paired:
            return patch[: len(x)], patch[len(x) :]
        return patch, None

    def sample(self) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Draw one batch.

        Returns
        -------
        numpy.ndarray or (numpy.ndarray, numpy.ndarray)
            ``(B, 1, P, P)`` ``float32`` (``(B, C_in, P, P)`` for a dataset of
            ``(C_in, H, W)`` stacks); for a paired dataset ``(inputs, targets (B, C, P, P))``.
        """
        idx = self.rng.integers(0, len(self.dataset), size=self.batch_size)
        xs, ys = [], []
        for i in idx:
            x, y = self._crop(int(i))
            xs.append(x)
            if y is not None:
                ys.append(y)
        inputs = np.ascontiguousarray(np.stack(xs), dtype=np.float32)
        if self.paired:
            return inputs, np.ascontiguousarray(np.stack(ys), dtype=np.float32)
        return inputs

    def __iter__(self) -> Iterator[np.ndarray | tuple[np.ndarray, np.ndarray]]:
        """Yield batches forever."""
        while True:
            yield self.sample()


def to_torch(batch: Any, device: Any = "cpu", *, non_blocking: bool = False) -> Any:
    """Convert a batch (array, or tuple/list of arrays) to torch tensors on ``device``.

    Parameters
    ----------
    batch : numpy.ndarray or tuple or list of numpy.ndarray
        What :meth:`PatchSampler.sample` returns.
    device : str or torch.device
        Target device.
    non_blocking : bool
        Passed to :meth:`torch.Tensor.to`.

    Returns
    -------
    torch.Tensor or tuple of torch.Tensor
        Same structure as ``batch``.
    """
    import torch

    if isinstance(batch, (tuple, list)):
        return tuple(to_torch(b, device, non_blocking=non_blocking) for b in batch)
    return torch.from_numpy(np.ascontiguousarray(batch)).to(device, non_blocking=non_blocking)
