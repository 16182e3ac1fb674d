"""Synthetic light-microscopy fields of mesenchymal-stem-cell-like cells, with paired stains.

The paper's data (human MSCs imaged in phase contrast, stained for DAPI and CD29) is not
public, so the project benchmarks on fields made here. One random field of cells (its
geometry: cell bodies with processes, one nucleus each, nucleoli, fibres and granules) is
rendered several ways:

``phase``
    Phase-contrast-like input. The optical path difference (thickness) map of the cells is
    high-passed: cells appear as a darker relief with the classic bright halo at their edges,
    nuclei thicker and darker with dark nucleoli, on a grey background (~0.45) with mild
    shading and camera noise.
``brightfield``
    Bright-field-like input of the same field: a weak absorption image
    (``exp(-k * absorption)``, blurred) under uneven illumination on a bright background
    (~0.75). Cells are only slightly darker, edges weak, nuclei faint. It is a different
    modality, not a gain/offset of ``phase``: the two correlate weakly pixel by pixel.
``dapi``
    Nucleus stain target: bright nuclei with per-nucleus brightness and chromatin texture,
    nucleoli excluded, dark elsewhere.
``cd29``
    CD29-like (integrin beta-1) target: a perinuclear halo (bright just outside the nucleus,
    decaying outward, stronger on the side facing the cell body) plus enhancement along
    each cell's membrane (including between touching cells), weak diffuse cytoplasm,
    per-cell expression level.
``nuclei``, ``cells``
    int32 label images (0 = background).

All images are float32 in [0, 1] and the generator is deterministic given the seed. The
domain-shift transforms (:func:`overexpose`, :func:`rescale`, :func:`defocus`,
:func:`add_noise`) and :func:`make_domain` / :func:`write_domain` build the source and
target domains of the benchmark: source = phase, no shift; targets = bright-field,
phase overexposed 1.5x, phase zoomed 2x, defocused phase (see :data:`PROJECT_DOMAINS`).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import fft as _fft
from scipy import ndimage as ndi

from ..errors import ConfigError

__all__ = [
    "SyntheticField",
    "make_field",
    "make_fields",
    "overexpose",
    "rescale",
    "defocus",
    "add_noise",
    "SHIFTS",
    "MODALITIES",
    "MARKERS",
    "DEFAULT_MAGNITUDE",
    "PROJECT_DOMAINS",
    "make_domain",
    "write_domain",
]

MODALITIES = ("phase", "brightfield")
MARKERS = ("dapi", "cd29")
SHIFTS = {"none", "brightfield", "overexpose", "scale", "defocus", "noise"}

#: magnitude used by :func:`make_domain` when none is given, per shift
DEFAULT_MAGNITUDE: dict[str, float] = {
    "none": 1.0,
    "brightfield": 1.0,
    "overexpose": 1.5,  # gain
    "scale": 2.0,  # zoom factor
    "defocus": 2.0,  # gaussian sigma, pixels
    "noise": 0.05,  # gaussian noise std, in image units
}

#: the benchmark's domains: keyword arguments for :func:`make_domain`
PROJECT_DOMAINS: dict[str, dict[str, Any]] = {
    "source": {"modality": "phase", "shift": "none"},
    "brightfield": {"modality": "phase", "shift": "brightfield"},
    "overexpose": {"modality": "phase", "shift": "overexpose", "magnitude": 1.5},
    "scale": {"modality": "phase", "shift": "scale", "magnitude": 2.0},
    "defocus": {"modality": "phase", "shift": "defocus", "magnitude": 2.0},
}

_GENERATOR = "napari_lmadda.data.synthetic"
_N_DIRECTIONS = 512  # angular resolution of cell outlines
_N_ORIENT = 4  # fibre-texture orientations rendered per field
_CELLS_PER_FIELD = (3.0, 10.0)  # cells per 256x256 field at density 1
_BASE_AREA = 256 * 256


@dataclass
class SyntheticField:
    """One synthetic field: two input modalities, two stain targets and label images.

    Attributes
    ----------
    phase, brightfield : numpy.ndarray
        (H, W) float32 inputs in [0, 1].
    dapi, cd29 : numpy.ndarray
        (H, W) float32 targets in [0, 1].
    nuclei, cells : numpy.ndarray
        (H, W) int32 label images; nucleus ``i`` lies in cell ``i``.
    seed : int or None
        The seed the field was made from (informational).
    """

    phase: np.ndarray
    brightfield: np.ndarray
    dapi: np.ndarray
    cd29: np.ndarray
    nuclei: np.ndarray
    cells: np.ndarray
    seed: int | None = field(default=None, compare=False)

    def input(self, modality: str) -> np.ndarray:
        """Return the input image of a modality, ``"phase"`` or ``"brightfield"``."""
        if modality not in MODALITIES:
            raise ConfigError(f"unknown modality {modality!r}; choose one of {MODALITIES}")
        return getattr(self, modality)

    def target(self, marker: str) -> np.ndarray:
        """Return the target image of a marker, ``"dapi"`` or ``"cd29"``."""
        if marker not in MARKERS:
            raise ConfigError(f"unknown marker {marker!r}; choose one of {MARKERS}")
        return getattr(self, marker)


# --------------------------------------------------------------------------------------
# smooth random textures


def _freq_grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    fy = _fft.fftfreq(shape[0]).astype(np.float32)[:, None]
    fx = _fft.rfftfreq(shape[1]).astype(np.float32)[None, :]
    return fy, fx


def _spectral_noise(
    rng: np.random.Generator, spectra: tuple[np.ndarray, np.ndarray], shape: tuple[int, int]
) -> np.ndarray:
    """Stack of real noise maps with given amplitude spectra, each zero mean and unit std.

    Complex gaussian coefficients are drawn directly in the half-spectrum (rfft layout), and
    only where a spectrum is not negligible (drawing random numbers dominates the cost), so
    one inverse FFT per map makes it. ``spectra`` is ``(flat_index, amplitude)`` from
    :func:`_texture_filters`.
    """
    flat_index, amplitude = spectra
    n = int(flat_index[-1] // (shape[0] * (shape[1] // 2 + 1))) + 1
    coeffs = np.zeros((n, shape[0], shape[1] // 2 + 1), np.complex64)
    draw = rng.standard_normal((flat_index.size, 2), dtype=np.float32).view(np.complex64)[:, 0]
    coeffs.reshape(-1)[flat_index] = draw * amplitude
    coeffs[:, 0, 0] = 0.0
    maps = _fft.irfft2(coeffs, s=shape, axes=(-2, -1), workers=-1)
    sample = maps[:, ::4, ::4]  # mean/std estimated on a subsample: cheap and close enough
    maps -= sample.mean(axis=(1, 2), keepdims=True)
    maps /= sample.std(axis=(1, 2), keepdims=True) + 1e-12
    return maps


def _band(f: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((f - centre) / width) ** 2)


@functools.lru_cache(maxsize=8)
def _texture_filters(
    shape: tuple[int, int], scale: float
) -> tuple[tuple[np.ndarray, np.ndarray], list[str]]:
    """Amplitude spectra of every texture a field needs (frequencies in cycles/pixel).

    Returned sparse, as the flat indices into an (n, H, W // 2 + 1) stack where a spectrum
    exceeds 1e-3 of its peak and the amplitudes there, with the names of the n maps.

    ``scale`` > 1 makes every texture coarser (used to keep textures tied to cell size).
    """
    fy, fx = _freq_grid(shape)
    f = np.sqrt(fy**2 + fx**2) * scale
    filters: dict[str, np.ndarray] = {}
    # fractal ("Perlin-like") 1/f^1.6 roughness for cell and nucleus outlines
    ff = np.maximum(f, 1.0 / 64)
    low_pass = np.exp(-((f / 0.12) ** 2))
    filters["edge"] = ff**-1.6 * low_pass
    # granules/vesicles, chromatin, adhesion puncta, fine cytoplasm texture
    filters["granule"] = _band(f, 0.16, 0.05)
    filters["chromatin"] = _band(f, 0.10, 0.05) + 0.5 * _band(f, 0.25, 0.06)
    filters["puncta"] = _band(f, 0.20, 0.06)
    filters["fine"] = ff**-1.0 * np.exp(-((f / 0.3) ** 2))
    filters["bf_texture"] = _band(f, 0.07, 0.035)
    # stress-fibre texture: long along the fibre direction, dense across it
    fyy, fxx = fy * scale, fx * scale
    for k in range(_N_ORIENT):
        phi = math.pi * k / _N_ORIENT
        f_par = fxx * math.cos(phi) + fyy * math.sin(phi)
        f_perp = -fxx * math.sin(phi) + fyy * math.cos(phi)
        filters[f"fibre{k}"] = np.exp(-0.5 * (f_par / 0.02) ** 2) * _band(
            np.abs(f_perp), 0.14, 0.08
        )
    names = list(filters)
    dense = np.stack([filters[k] / filters[k].max() for k in names]).astype(np.float32)
    flat_index = np.flatnonzero(dense > 1e-3)
    return (flat_index, dense.reshape(-1)[flat_index]), names


def _slow_waves(rng: np.random.Generator, shape: tuple[int, int], n: int = 3) -> np.ndarray:
    """Smooth field of a few random long plane waves (< 1.5 cycles per field), std ~1.

    Stands in for uneven illumination and shading; far cheaper than a low-passed noise map.
    """
    yy = np.linspace(0.0, 1.0, shape[0], dtype=np.float32)[:, None]
    xx = np.linspace(0.0, 1.0, shape[1], dtype=np.float32)[None, :]
    out = np.zeros(shape, np.float32)
    amp = np.float32(math.sqrt(2.0 / n))
    for _ in range(n):
        ky, kx = rng.uniform(-1.5, 1.5, 2) * 2 * np.pi
        ph = rng.uniform(0, 2 * np.pi)
        # cos(a + b) = cos a cos b - sin a sin b: two outer products instead of a full cos
        a, b = ky * yy + ph, kx * xx
        out += amp * (np.cos(a) * np.cos(b) - np.sin(a) * np.sin(b))
    return out


# --------------------------------------------------------------------------------------
# cell geometry


@dataclass
class _Cell:
    cy: float
    cx: float
    angle: float  # long-axis direction, radians
    a: float  # long semi-axis of the body
    b: float  # short semi-axis of the body
    harm: np.ndarray  # (k, amplitude, phase) rows of radial harmonics
    processes: list[tuple[float, float, float]]  # (direction, length, base half-width)
    ny: float  # nucleus centre
    nx: float
    na: float  # nucleus semi-axes
    nb: float
    nangle: float
    nharm: np.ndarray
    nucleoli: list[tuple[float, float, float]]  # (y, x, sigma)
    dapi_level: float
    cd29_level: float


def _draw_cells(rng: np.random.Generator, shape: tuple[int, int], density: float) -> list[_Cell]:
    h, w = shape
    area_ratio = h * w / _BASE_AREA
    n = max(1, int(round(density * area_ratio * rng.uniform(*_CELLS_PER_FIELD))))
    cells: list[_Cell] = []
    for _ in range(n):
        a = rng.uniform(28.0, 48.0)
        b = a * rng.uniform(0.4, 0.75)
        # centre: rejection-sampled so bodies rarely pile up, but neighbours may touch
        for _try in range(40):
            cy = rng.uniform(-0.05, 1.05) * h
            cx = rng.uniform(-0.05, 1.05) * w
            if all(
                math.hypot(cy - c.cy, cx - c.cx) > 0.75 * (max(b, 0.5 * a) + max(c.b, 0.5 * c.a))
                for c in cells
            ):
                break
        angle = rng.uniform(0.0, math.pi)
        ks = np.arange(2, 7, dtype=np.float32)
        harm = np.stack(
            [ks, rng.normal(0.0, 0.22, ks.size) / ks**0.8, rng.uniform(0, 2 * np.pi, ks.size)],
            axis=1,
        )
        # spindle / stellate processes: mostly along the long axis, sometimes extra ones
        n_proc = int(rng.choice([1, 2, 2, 2, 3, 3, 4]))
        processes = []
        for j in range(n_proc):
            if j < 2:
                direction = angle + j * math.pi + rng.normal(0.0, 0.25)
            else:
                direction = rng.uniform(0.0, 2 * math.pi)
            length = a * rng.uniform(1.1, 2.2)
            half_width = b * rng.uniform(0.3, 0.65)
            processes.append((direction, length, half_width))
        # nucleus: an ellipse inside the body, off-centre along the long axis
        na = rng.uniform(8.0, 13.0)
        nb = na * rng.uniform(0.6, 0.9)
        shift = rng.uniform(-0.3, 0.3) * a
        ny = cy + shift * math.sin(angle) + rng.normal(0.0, 0.1 * b)
        nx = cx + shift * math.cos(angle) + rng.normal(0.0, 0.1 * b)
        nangle = angle + rng.normal(0.0, 0.3)
        nk = np.arange(2, 6, dtype=np.float32)
        nharm = np.stack(
            [nk, rng.normal(0.0, 0.05, nk.size) / nk**0.5, rng.uniform(0, 2 * np.pi, nk.size)],
            axis=1,
        )
        nucleoli = []
        for _ in range(int(rng.integers(1, 4))):
            rr = rng.uniform(0.0, 0.5) * nb
            tt = rng.uniform(0.0, 2 * math.pi)
            nucleoli.append(
                (ny + rr * math.sin(tt), nx + rr * math.cos(tt), rng.uniform(1.2, 2.2))
            )
        cells.append(
            _Cell(
                cy=cy, cx=cx, angle=angle, a=a, b=b, harm=harm, processes=processes,
                ny=ny, nx=nx, na=na, nb=nb, nangle=nangle, nharm=nharm, nucleoli=nucleoli,
                dapi_level=float(rng.uniform(0.55, 1.0)),
                cd29_level=float(rng.uniform(0.35, 1.0)),
            )
        )  # fmt: skip
    return cells


def _ellipse_radius(theta: np.ndarray, a: float, b: float, harm: np.ndarray) -> np.ndarray:
    """Radius of a noisy ellipse (long axis along theta = 0) in polar direction ``theta``.

    Evaluated on a table of 512 directions and looked up, which is much cheaper than the
    harmonic series at every pixel.
    """
    table_theta = np.linspace(-np.pi, np.pi, _N_DIRECTIONS, endpoint=False, dtype=np.float32)
    c, s = np.cos(table_theta), np.sin(table_theta)
    r = a * b / np.sqrt((b * c) ** 2 + (a * s) ** 2)
    wobble = np.zeros_like(table_theta)
    for k, amp, ph in harm:
        wobble += amp * np.cos(k * table_theta + ph)
    table = (r * np.exp(wobble)).astype(np.float32)
    idx = np.round((theta + np.pi) * (_N_DIRECTIONS / (2 * np.pi))).astype(np.intp)
    return table[idx % _N_DIRECTIONS]


def _rasterise(cells: list[_Cell], shape: tuple[int, int], edge: np.ndarray, nuc_edge: np.ndarray):
    """Label images, nucleus dome profile and nucleoli map of a list of cells.

    Each cell has a score (1 at its centre, 0 on its outline, negative outside; nucleus
    pixels score above 1); a pixel belongs to the cell with the highest positive score, so
    touching cells split along a natural border and a nucleus is never covered by a
    neighbour.
    """
    h, w = shape
    best = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.int32)
    nuc_scores = []
    for idx, c in enumerate(cells, start=1):
        reach = max([c.a * 1.6] + [p[1] + p[2] for p in c.processes]) + 4
        y0, y1 = max(0, int(c.cy - reach)), min(h, int(c.cy + reach) + 1)
        x0, x1 = max(0, int(c.cx - reach)), min(w, int(c.cx + reach) + 1)
        if y0 >= y1 or x0 >= x1:
            nuc_scores.append(None)
            continue
        yy = np.arange(y0, y1, dtype=np.float32)[:, None]
        xx = np.arange(x0, x1, dtype=np.float32)[None, :]
        dy, dx = yy - c.cy, xx - c.cx
        rho = np.sqrt(dy**2 + dx**2)
        theta = np.arctan2(dy, dx)
        score = 1.0 - rho / _ellipse_radius(theta - c.angle, c.a, c.b, c.harm)
        for direction, length, half_width in c.processes:
            along = dx * math.cos(direction) + dy * math.sin(direction)
            perp = np.abs(-dx * math.sin(direction) + dy * math.cos(direction))
            t = np.clip(along / length, 0.0, 1.0)
            hw = half_width * (1.0 - t) ** 0.8 + 1.2
            proc = np.where((along >= 0) & (along <= length), 1.0 - perp / hw, -1.0)
            score = np.maximum(score, proc)
        score = score + 0.13 * edge[y0:y1, x0:x1]
        # nucleus
        ndy, ndx = yy - c.ny, xx - c.nx
        nrho = np.sqrt(ndy**2 + ndx**2)
        ntheta = np.arctan2(ndy, ndx) - c.nangle
        nrad = _ellipse_radius(ntheta, c.na, c.nb, c.nharm)
        nscore = 1.0 - nrho / nrad + 0.05 * nuc_edge[y0:y1, x0:x1]
        margin = 1.0 - nrho / (1.5 * nrad)
        score = np.where(margin > 0, np.maximum(score, 1.0 + margin), score)
        win = score > best[y0:y1, x0:x1]
        best[y0:y1, x0:x1] = np.where(win, score, best[y0:y1, x0:x1])
        labels[y0:y1, x0:x1] = np.where(win, idx, labels[y0:y1, x0:x1])
        nuc_scores.append(((y0, y1, x0, x1), nscore))
    nuclei = np.zeros(shape, np.int32)
    dome = np.zeros(shape, np.float32)
    nucleoli = np.zeros(shape, np.float32)
    for idx, (c, item) in enumerate(zip(cells, nuc_scores), start=1):
        if item is None:
            continue
        (y0, y1, x0, x1), nscore = item
        inside = (nscore > 0) & (labels[y0:y1, x0:x1] == idx)
        nuclei[y0:y1, x0:x1][inside] = idx
        # dome profile: sqrt(1 - (r/R)^2) with r/R = 1 - score
        prof = np.sqrt(np.clip(1.0 - (1.0 - nscore) ** 2, 0.0, 1.0))
        dome[y0:y1, x0:x1] = np.where(inside, prof, dome[y0:y1, x0:x1])
        yy = np.arange(y0, y1, dtype=np.float32)[:, None]
        xx = np.arange(x0, x1, dtype=np.float32)[None, :]
        blobs = np.zeros(nscore.shape, np.float32)
        for ly, lx, sig in c.nucleoli:
            blobs += np.exp(-((yy - ly) ** 2 + (xx - lx) ** 2) / (2 * sig**2))
        nucleoli[y0:y1, x0:x1] += np.where(inside, np.minimum(blobs, 1.0), 0.0)
    return labels, nuclei, dome, nucleoli


# --------------------------------------------------------------------------------------
# rendering


def _inner_boundary(labels: np.ndarray) -> np.ndarray:
    """Pixels of a cell that touch another label (background or a neighbour cell)."""
    b = np.zeros(labels.shape, bool)
    b[1:] |= labels[1:] != labels[:-1]
    b[:-1] |= labels[:-1] != labels[1:]
    b[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    b[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return b & (labels > 0)


def _render(
    cells: list[_Cell], shape: tuple[int, int], rng: np.random.Generator
) -> SyntheticField:
    filters, names = _texture_filters(shape, scale=1.0)
    tex = dict(zip(names, _spectral_noise(rng, filters, shape)))
    # the nucleus outline noise is the outline noise seen through a point reflection
    nuc_edge = tex["edge"][::-1, ::-1]
    labels, nuclei, dome, nucleoli = _rasterise(cells, shape, tex["edge"], nuc_edge)
    cellmask = labels > 0
    nucmask = nuclei > 0

    # per-cell lookups (index 0 = background)
    n = len(cells)
    orient_lut = np.zeros(n + 1, np.intp)
    dapi_lut = np.zeros(n + 1, np.float32)
    cd29_lut = np.zeros(n + 1, np.float32)
    ny_lut = np.zeros(n + 1, np.float32)
    nx_lut = np.zeros(n + 1, np.float32)
    pol_lut = np.zeros(n + 1, np.float32)
    for i, c in enumerate(cells, start=1):
        orient_lut[i] = int(round(c.angle / math.pi * _N_ORIENT)) % _N_ORIENT
        dapi_lut[i] = c.dapi_level
        cd29_lut[i] = c.cd29_level
        ny_lut[i], nx_lut[i] = c.ny, c.nx
        # CD29 halo is stronger on the side of the nucleus that faces the cell body
        pol_lut[i] = math.atan2(c.cy - c.ny, c.cx - c.nx)
    fibres = np.stack([tex[f"fibre{k}"] for k in range(_N_ORIENT)])
    fibre = np.take_along_axis(fibres, orient_lut[labels][None], axis=0)[0]

    # Euclidean distance where the shape of a long profile shows (the CD29 halo); the cheap
    # chamfer distance where only the first few pixels matter (lamella edge, membrane)
    d_nuc = ndi.distance_transform_edt(~nucmask).astype(np.float32)
    d_edge = ndi.distance_transform_cdt(cellmask, metric="taxicab").astype(np.float32)
    d_mem = ndi.distance_transform_cdt(~_inner_boundary(labels), metric="taxicab")
    d_mem = d_mem.astype(np.float32)

    granules = np.clip(tex["granule"] - 1.2, 0.0, None)  # sparse vesicles
    perinuclear = np.exp(-d_nuc / 16.0)
    lamella = 1.0 - np.exp(-d_edge / 2.5)
    chromatin = tex["chromatin"]

    # optical thickness (phase delay) of the cells: a thin lamella thickening towards the
    # nucleus, stress fibres along the long axis, vesicles near the nucleus, the nuclear dome
    patchy_fibre = fibre * np.clip(1.0 + tex["fine"], 0.0, None)  # fibres in bundles
    cyto = cellmask * lamella * (0.45 + 0.55 * perinuclear) * (1.0 + 0.07 * patchy_fibre)
    cyto += cellmask * lamella * perinuclear * 0.3 * granules
    thickness = 0.5 * cyto + dome * (0.3 + 0.06 * chromatin) + 0.2 * nucleoli
    thickness = ndi.gaussian_filter(thickness, 0.7, truncate=3.0)

    # phase contrast: high-passed thickness -> dark relief with bright halos (shade-off)
    relief = thickness - ndi.gaussian_filter(thickness, 5.0, truncate=3.0)
    fine = thickness - ndi.gaussian_filter(thickness, 1.5, truncate=3.0)
    shading = 1.0 + 0.035 * _slow_waves(rng, shape)
    phase = 0.45 * shading - 1.6 * relief - 0.4 * fine - 0.06 * thickness
    phase = phase + np.float32(0.012) * rng.standard_normal(shape, dtype=np.float32)
    phase = np.clip(phase, 0.0, 1.0)

    # bright field: weak absorption (nuclei, dark granules), blurred, uneven illumination
    absorb = (
        0.10 * cyto * (1.0 + 0.5 * tex["bf_texture"])
        + 0.22 * dome * (1.0 + 0.25 * chromatin)
        + 0.25 * cellmask * granules * perinuclear
        + 0.10 * nucleoli
    )
    transmission = ndi.gaussian_filter(np.exp(-absorb), 1.2, truncate=3.0)
    # a slightly defocused phase object: faint edges with the opposite sign of phase contrast
    edge_term = 0.05 * ndi.gaussian_laplace(thickness, 2.0, truncate=3.0)
    yy = np.linspace(-1.0, 1.0, shape[0], dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, shape[1], dtype=np.float32)[None, :]
    gy, gx = rng.uniform(-0.07, 0.07, 2)
    cy, cx = rng.uniform(-0.4, 0.4, 2)
    vignette = (xx - cx) ** 2 + (yy - cy) ** 2
    illum = 0.78 * (1.0 + gx * xx + gy * yy - 0.07 * vignette + 0.025 * _slow_waves(rng, shape))
    bright = illum * (transmission + edge_term)
    bright = bright + np.float32(0.007) * rng.standard_normal(shape, dtype=np.float32)
    bright = np.clip(bright, 0.0, 1.0)

    # DAPI: per-nucleus brightness, chromatin texture, nucleoli exclude the dye
    dapi = dapi_lut[nuclei] * np.sqrt(dome) * (0.8 + 0.2 * chromatin) * (1.0 - 0.65 * nucleoli)
    dapi = ndi.gaussian_filter(np.clip(dapi, 0.0, None), 1.0, truncate=3.0) + 0.02
    dapi = np.clip(dapi, 0.0, 1.0)

    # CD29: perinuclear halo + membrane + weak cytoplasm, per-cell expression
    rr, cc = np.indices(shape, dtype=np.float32)
    dy, dx = rr - ny_lut[labels], cc - nx_lut[labels]
    facing = (dx * np.cos(pol_lut)[labels] + dy * np.sin(pol_lut)[labels]) / (
        np.sqrt(dx**2 + dy**2) + 1e-3
    )
    x = d_nuc / 3.0
    halo = x * np.exp(1.0 - x) * 0.6 + 0.4 * np.exp(-d_nuc / 10.0) * (d_nuc > 0)
    halo = halo * (0.7 + 0.3 * facing)
    membrane = np.exp(-(d_mem**2) / (2 * 1.6**2)) * (
        0.5 + 0.5 * np.clip(0.5 + 0.4 * tex["puncta"], 0.0, 1.0)
    )
    diffuse = 0.12 * (1.0 + 0.3 * tex["fine"])
    cd29 = cellmask * cd29_lut[labels] * (1.0 * halo + 0.45 * membrane + diffuse)
    cd29 = cd29 * (1.0 + 0.15 * tex["fine"])
    cd29 = ndi.gaussian_filter(np.clip(cd29, 0.0, None), 1.0, truncate=3.0) + 0.015
    cd29 = np.clip(cd29, 0.0, 1.0)

    return SyntheticField(
        phase=phase.astype(np.float32),
        brightfield=bright.astype(np.float32),
        dapi=dapi.astype(np.float32),
        cd29=cd29.astype(np.float32),
        nuclei=nuclei,
        cells=labels,
    )


def _as_shape(size: int | tuple[int, int]) -> tuple[int, int]:
    shape = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    if len(shape) != 2 or min(shape) < 16:
        raise ConfigError(f"size must be an int or (height, width) of at least 16, got {size!r}")
    return shape  # type: ignore[return-value]


def _field_from_rng(
    rng: np.random.Generator, size: int | tuple[int, int], density: float = 1.0
) -> SyntheticField:
    if not density > 0:
        raise ConfigError(f"density must be positive, got {density!r}")
    shape = _as_shape(size)
    cells = _draw_cells(rng, shape, density)
    return _render(cells, shape, rng)


def make_field(
    size: int | tuple[int, int] = 256, seed: int = 0, *, density: float = 1.0
) -> SyntheticField:
    """Make one synthetic field of MSC-like cells.

    Parameters
    ----------
    size : int or (int, int)
        Field size in pixels, square if an int. Cell size does not depend on it; a bigger
        field holds more cells.
    seed : int
        Seed of the random generator; the same seed gives identical arrays.
    density : float
        Multiplies the number of cells (3-10 per 256x256 field at 1.0).

    Returns
    -------
    SyntheticField
        Inputs, targets and label images of the field.
    """
    fld = _field_from_rng(np.random.default_rng(seed), size, density)
    fld.seed = seed
    return fld


def _child_rng(seed: int, i: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))


def make_fields(
    n: int, size: int | tuple[int, int] = 256, seed: int = 0, **kw: Any
) -> list[SyntheticField]:
    """Make ``n`` independent fields; field ``i`` depends only on ``(seed, i)``.

    So ``make_fields(n)[:k]`` equals ``make_fields(k)``.

    Parameters
    ----------
    n : int
        Number of fields.
    size : int or (int, int)
        Field size, see :func:`make_field`.
    seed : int
        Base seed.
    **kw
        Passed on to :func:`make_field` (``density``).

    Returns
    -------
    list of SyntheticField
    """
    out = []
    for i in range(int(n)):
        fld = _field_from_rng(_child_rng(seed, i), size, **kw)
        out.append(fld)
    return out


# --------------------------------------------------------------------------------------
# domain shifts


def overexpose(img: np.ndarray, factor: float) -> np.ndarray:
    """Overexpose an image: multiply by a gain and clip at the saturation level 1.0.

    Parameters
    ----------
    img : numpy.ndarray
        Image in [0, 1].
    factor : float
        Gain (1.5 = 150 % exposure).

    Returns
    -------
    numpy.ndarray
        float32 image in [0, 1].
    """
    if not factor > 0:
        raise ConfigError(f"overexposure factor must be positive, got {factor!r}")
    return np.clip(np.asarray(img, np.float32) * np.float32(factor), 0.0, 1.0)


def rescale(img: np.ndarray, factor: float, *, order: int = 1) -> np.ndarray:
    """Zoom an image by ``factor`` about its centre, keeping its shape.

    For ``factor > 1`` the central ``1/factor`` part of the image is magnified (a crop). For
    ``factor < 1`` the image shrinks and the border is filled by reflection, which is an
    artefact: callers that need a clean zoom-out should render a field ``1/factor`` times
    bigger, rescale it and crop the centre (as :func:`make_domain` does). Apply the same call
    to the target so input and target stay aligned.

    Parameters
    ----------
    img : numpy.ndarray
        (..., H, W) image; leading axes are kept.
    factor : float
        Zoom factor.
    order : int
        Spline order of the interpolation (0 for label images, 1 linear).

    Returns
    -------
    numpy.ndarray
        Zoomed image of the same shape; float32 unless ``order == 0`` (dtype kept).
    """
    if not factor > 0:
        raise ConfigError(f"scale factor must be positive, got {factor!r}")
    arr = np.asarray(img)
    if arr.ndim > 2:
        return np.stack([rescale(a, factor, order=order) for a in arr])
    src = arr if order == 0 else arr.astype(np.float32)
    if factor < 1 and order > 0:  # anti-alias before shrinking
        src = ndi.gaussian_filter(src, 0.5 * (1.0 / factor - 1.0))
    h, w = arr.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    inv = 1.0 / factor
    out = ndi.affine_transform(
        src,
        np.array([inv, inv]),
        offset=(cy - inv * cy, cx - inv * cx),
        output_shape=(h, w),
        order=order,
        mode="reflect",
        prefilter=order > 1,
    )
    return out if order == 0 else out.astype(np.float32)


def defocus(img: np.ndarray, sigma: float) -> np.ndarray:
    """Simulate defocus with a gaussian blur of ``sigma`` pixels (float32 out)."""
    if sigma < 0:
        raise ConfigError(f"defocus sigma must be >= 0, got {sigma!r}")
    arr = np.asarray(img, np.float32)
    if sigma == 0:
        return arr.copy()
    axes = (arr.ndim - 2, arr.ndim - 1)
    return ndi.gaussian_filter(arr, sigma, axes=axes, mode="reflect").astype(np.float32)


def add_noise(img: np.ndarray, sigma: float, seed: int, *, poisson: float = 0.0) -> np.ndarray:
    """Add seeded camera-like noise and clip to [0, 1].

    Parameters
    ----------
    img : numpy.ndarray
        Image in [0, 1].
    sigma : float
        Standard deviation of the additive gaussian (read) noise.
    seed : int
        Seed of the noise; the same seed gives the same noise.
    poisson : float
        Strength of signal-dependent (shot-like) noise: its variance is ``poisson * img``.

    Returns
    -------
    numpy.ndarray
        float32 image in [0, 1].
    """
    if sigma < 0 or poisson < 0:
        raise ConfigError("noise sigma and poisson strength must be >= 0")
    arr = np.asarray(img, np.float32)
    rng = np.random.default_rng(seed)
    std = np.sqrt(np.float32(sigma) ** 2 + np.float32(poisson) * np.clip(arr, 0.0, None))
    noisy = arr + std * rng.standard_normal(arr.shape, dtype=np.float32)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def _crop_centre(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = img.shape[-2:]
    y0, x0 = (h - shape[0]) // 2, (w - shape[1]) // 2
    return img[..., y0 : y0 + shape[0], x0 : x0 + shape[1]]


def make_domain(
    n: int,
    *,
    modality: str = "phase",
    shift: str = "none",
    magnitude: float | None = None,
    size: int | tuple[int, int] = 256,
    seed: int = 0,
    density: float = 1.0,
) -> dict[str, np.ndarray]:
    """Make ``n`` fields of one domain: input with a shift applied, and both targets.

    Parameters
    ----------
    n : int
        Number of fields.
    modality : str
        Input modality, ``"phase"`` or ``"brightfield"``.
    shift : str
        One of :data:`SHIFTS`: ``"none"``; ``"brightfield"`` (the input is the bright-field
        image, whatever ``modality`` says); ``"overexpose"`` (gain ``magnitude`` with
        clipping); ``"scale"`` (zoom by ``magnitude`` about the centre; applied to the
        targets too, and rendered on a bigger field when zooming out so there is no
        padding); ``"defocus"`` (gaussian blur, sigma ``magnitude`` pixels); ``"noise"``
        (gaussian noise of std ``magnitude``, seeded per field).
    magnitude : float, optional
        Strength of the shift; :data:`DEFAULT_MAGNITUDE` gives the default of each shift.
    size : int or (int, int)
        Output image size.
    seed : int
        Base seed; field ``i`` depends only on ``(seed, i)`` as in :func:`make_fields`.
    density : float
        Cell density, see :func:`make_field`.

    Returns
    -------
    dict of str to numpy.ndarray
        ``{"input": (n, H, W), "dapi": (n, H, W), "cd29": (n, H, W)}``, float32 in [0, 1].
    """
    if shift not in SHIFTS:
        raise ConfigError(f"unknown shift {shift!r}; choose one of {sorted(SHIFTS)}")
    if modality not in MODALITIES:
        raise ConfigError(f"unknown modality {modality!r}; choose one of {MODALITIES}")
    if n < 1:
        raise ConfigError(f"number of fields must be at least 1, got {n!r}")
    mag = float(DEFAULT_MAGNITUDE[shift] if magnitude is None else magnitude)
    if not math.isfinite(mag):  # nan would silently give NaN images
        raise ConfigError(f"magnitude must be a finite number, got {magnitude!r}")
    if not (isinstance(density, int | float) and math.isfinite(density)):
        raise ConfigError(f"density must be a finite number, got {density!r}")
    if shift == "brightfield":
        modality = "brightfield"
    shape = _as_shape(size)
    render_shape = shape
    if shift == "scale":
        if not mag > 0:
            raise ConfigError(f"scale factor must be positive, got {mag!r}")
        if mag < 1:
            render_shape = tuple(int(math.ceil(s / mag)) + 2 for s in shape)  # type: ignore
    out = {k: np.empty((n, *shape), np.float32) for k in ("input", *MARKERS)}
    for i in range(n):
        fld = _field_from_rng(_child_rng(seed, i), render_shape, density)
        x = fld.input(modality)
        targets = {m: fld.target(m) for m in MARKERS}
        if shift == "overexpose":
            x = overexpose(x, mag)
        elif shift == "defocus":
            x = defocus(x, mag)
        elif shift == "noise":
            noise_seed = int(np.random.SeedSequence(seed, spawn_key=(i, 1)).generate_state(1)[0])
            x = add_noise(x, mag, noise_seed)
        elif shift == "scale":
            x = _crop_centre(rescale(x, mag), shape)
            targets = {m: _crop_centre(rescale(t, mag), shape) for m, t in targets.items()}
        out["input"][i] = x
        for m in MARKERS:
            out[m][i] = targets[m]
    return out


def write_domain(
    folder: str | Path, n: int, *, overwrite: bool = False, **make_domain_kwargs: Any
) -> dict[str, Path]:
    """Make a domain with :func:`make_domain` and write it as float32 TIFF files.

    Files are ``folder/input/field_000.tif``, ``folder/dapi/field_000.tif`` and
    ``folder/cd29/field_000.tif``; each carries a JSON description (generator, seed, field
    index, modality, shift, magnitude, size).

    Parameters
    ----------
    folder : str or pathlib.Path
        Output folder (created if missing).
    n : int
        Number of fields.
    overwrite : bool
        Replace existing files; without it an existing file is an error.
    **make_domain_kwargs
        ``modality``, ``shift``, ``magnitude``, ``size``, ``seed``, ``density``.

    Returns
    -------
    dict of str to pathlib.Path
        The sub-folders ``{"input": ..., "dapi": ..., "cd29": ...}``.

    Raises
    ------
    napari_lmadda.errors.ConfigError
        If a file to write exists and ``overwrite`` is false.
    """
    import tifffile

    folder = Path(folder)
    subdirs = {k: folder / k for k in ("input", *MARKERS)}
    names = [f"field_{i:03d}.tif" for i in range(int(n))]
    if not overwrite:
        existing = [d / nm for d in subdirs.values() for nm in names if (d / nm).exists()]
        if existing:
            raise ConfigError(
                f"{existing[0]} already exists ({len(existing)} file(s) would be overwritten); "
                "pass overwrite=True (--overwrite) to replace them"
            )
    data = make_domain(n, **make_domain_kwargs)
    shift = make_domain_kwargs.get("shift", "none")
    magnitude = make_domain_kwargs.get("magnitude")
    meta = {
        "generator": _GENERATOR,
        "seed": int(make_domain_kwargs.get("seed", 0)),
        "modality": "brightfield"
        if shift == "brightfield"
        else make_domain_kwargs.get("modality", "phase"),
        "shift": shift,
        "magnitude": float(DEFAULT_MAGNITUDE[shift] if magnitude is None else magnitude),
        "density": float(make_domain_kwargs.get("density", 1.0)),
    }
    for key, d in subdirs.items():
        d.mkdir(parents=True, exist_ok=True)
        for i, nm in enumerate(names):
            desc = json.dumps({**meta, "image": key, "field": i})
            tifffile.imwrite(d / nm, data[key][i], description=desc, metadata=None)
    return subdirs
