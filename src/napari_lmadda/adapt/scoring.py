"""Label-free scores of a candidate model, measured the same way for every candidate.

The engine's ``gap`` criterion averages distances over the layers from the matched layer *l*
to the output, so its value depends on *l*: it ranks the checkpoints of one run but cannot
say whether matching at layer 2 did better than matching at layer 10, or than AdaBN. A
:class:`FixedProbe` holds fixed source and target patches and the source model G's outputs
and activations on them (computed once and shared by every candidate), and
:meth:`FixedProbe.scores` measures any candidate G' on the same footing:

* ``out_w2``: per-channel Wasserstein distance (Gaussian form, in units of the source
  spread) between G'(target) and G(source) *predictions*: does the adapted model predict
  stains distributed like the source model's on source images?
* ``out_q``: the same with the exact one-dimensional Wasserstein distance of the pixel
  values (sorted quantiles), which also sees skew and saturation;
* ``out_fd``: Frechet distance of the joint per-pixel prediction (all channels at once);
* ``w2_L<k>``: per-channel Wasserstein distance at every layer *k*, G'(target) against
  G(source) (for scores read at a fixed set of layers); ``fd_L<k>``: the Frechet distance
  of all channels jointly at layer *k*, which also sees correlations between channels;
* ``ctx_fd``: Frechet distance of 4x4 neighbourhoods of the predictions (local structure);
* ``drift``: how much G' changed its predictions on *source* images (mean absolute change
  in units of the source spread);
* ``tta``: test-time-augmentation inconsistency on target images: the spread of the
  predictions over flips and quarter turns of the input (4 of the 8 views, on half of the
  patches, to keep the cost near one extra pass), mapped back (a model that
  has learnt the new microscope should be as consistent there as G is on source images).

Lower is better for every score. Qt-free; the model is only run in eval mode under
``no_grad``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .distances import diag_w2

__all__ = ["FixedProbe", "SCORE_NAMES", "quantile_sketch", "sketch_w2", "paired_gain",
           "image_patches"]

_EPS = 1e-6
#: scores of :meth:`FixedProbe.scores` besides the per-layer ``w2_L<k>``
SCORE_NAMES = ("out_w2", "out_q", "out_fd", "drift", "tta")


def _quantile_w2(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, n: int = 1024) -> float:
    """Mean over channels of the exact 1-D W2^2 between pixel values, over ``scale``."""
    qs = (np.arange(n) + 0.5) / n
    out = []
    for c in range(a.shape[1]):
        xa = np.sort(a[:, c].reshape(-1).double().cpu().numpy())
        xb = np.sort(b[:, c].reshape(-1).double().cpu().numpy())
        qa = xa[(qs * (len(xa) - 1)).round().astype(int)]
        qb = xb[(qs * (len(xb) - 1)).round().astype(int)]
        out.append(float(((qa - qb) ** 2).mean() / float(scale[c])))
    return float(np.mean(out))


def image_patches(obj: Any, n: int, patch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` fixed patches spread evenly over the images, and the image each came from.

    Patches of one image are alike, so a bootstrap that resamples *patches* understates how
    much a score would change with other images; :func:`paired_gain` resamples the images
    (``ids``). Image ``i`` gives ``n // m`` or ``n // m + 1`` patches (``m`` images; with more
    images than patches, ``n`` images evenly spaced give one each). A sampler without a
    dataset gives ``n`` patches from its own stream, each its own "image".

    Parameters
    ----------
    obj : dataset, sampler, array or folder
        The images (anything :func:`~napari_lmadda.adapt.sampling.make_sampler` accepts).
    n, patch_size, seed : int
        Number and side of the patches; the seed of their positions.

    Returns
    -------
    patches : ndarray
        ``(n, H, W)`` (or ``(n, C, H, W)``) float32 patches.
    ids : ndarray
        ``(n,)`` image index of each patch.
    """
    from ..data.datasets import PatchSampler
    from .recommend import _Subset
    from .sampling import fixed_batch, make_sampler

    sampler = make_sampler(obj, patch_size, n, seed=seed, role="images")
    ds = getattr(sampler, "dataset", None)
    if not isinstance(sampler, PatchSampler) or sampler.paired:
        return fixed_batch(sampler, n, seed), np.arange(n)
    m = len(ds)
    if m >= n:
        chosen = np.linspace(0, m - 1, n).round().astype(int)
        counts = {int(i): 1 for i in chosen}
    else:
        counts = {i: n // m + (1 if i < n % m else 0) for i in range(m)}
    parts, ids = [], []
    for i, k in counts.items():
        if k:
            parts.append(PatchSampler(_Subset(ds, [i]), patch_size, k, seed=seed + i).sample())
            ids += [i] * k
    return np.concatenate(parts), np.asarray(ids)


def quantile_sketch(y: torch.Tensor | np.ndarray, q: int = 256) -> np.ndarray:
    """Per patch and channel, ``q`` evenly spaced quantiles of the pixel values: ``(N, C, q)``.

    A patch's sketch stands for its pixels in :func:`sketch_w2`, so that a set of patches can
    be resampled (bootstrap) without sorting all pixels again.
    """
    a = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y, np.float64)
    a = a.reshape(a.shape[0], a.shape[1], -1)
    return np.quantile(a, (np.arange(q) + 0.5) / q, axis=2).transpose(1, 2, 0)


def sketch_w2(ref: np.ndarray, other: np.ndarray, var: np.ndarray) -> float:
    """The ``out_q`` score from sketches: mean over channels of the 1-D W2^2 over ``var``."""
    out = []
    for c in range(ref.shape[1]):
        a, b = np.sort(ref[:, c].ravel()), np.sort(other[:, c].ravel())
        n = min(len(a), len(b))
        ia = np.linspace(0, len(a) - 1, n).round().astype(int)
        ib = np.linspace(0, len(b) - 1, n).round().astype(int)
        out.append(float(((a[ia] - b[ib]) ** 2).mean() / var[c]))
    return float(np.mean(out))


def paired_gain(ref: np.ndarray, base: np.ndarray, cand: np.ndarray, var: np.ndarray, *,
                ref_ids: np.ndarray | None = None, ids: np.ndarray | None = None,
                n_boot: int = 200, seed: int = 0, level: float = 0.05) -> tuple[float, float]:
    """How much ``cand`` improves on ``base`` by ``out_q``, and a lower confidence bound.

    Parameters
    ----------
    ref : ndarray
        Sketch (:func:`quantile_sketch`) of G's predictions on the source patches.
    base, cand : ndarray
        Sketches of two candidates' predictions on the *same* target patches.
    var : ndarray
        Per-channel variance of G's source predictions (the score's unit).
    ref_ids, ids : ndarray, optional
        The image of each source / target patch (:func:`image_patches`): images, not
        patches, are resampled. Default: every patch its own image.
    n_boot, seed, level :
        The source and the target images are resampled with replacement ``n_boot`` times
        (the same draw for both candidates: a paired comparison); the bound is the ``level``
        quantile of the resampled gains.

    Returns
    -------
    gain, lower : float
        ``score(base) - score(cand)`` on all patches, and its lower bound (> 0: ``cand`` is
        better beyond the patch-to-patch variation of the images).
    """
    rng = np.random.default_rng(seed)
    gain = sketch_w2(ref, base, var) - sketch_w2(ref, cand, var)
    groups_s = _groups(len(ref), ref_ids)
    groups_t = _groups(len(base), ids)
    boots = []
    for _ in range(int(n_boot)):
        i = np.concatenate([groups_s[g] for g in rng.integers(0, len(groups_s), len(groups_s))])
        j = np.concatenate([groups_t[g] for g in rng.integers(0, len(groups_t), len(groups_t))])
        boots.append(sketch_w2(ref[i], base[j], var) - sketch_w2(ref[i], cand[j], var))
    return float(gain), float(np.quantile(boots, level))


def _groups(n: int, ids: np.ndarray | None) -> list[np.ndarray]:
    """Patch indices per image (every patch its own image without ``ids``)."""
    if ids is None:
        return [np.array([k]) for k in range(n)]
    ids = np.asarray(ids)
    return [np.flatnonzero(ids == v) for v in np.unique(ids)]


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to the rows of ``a`` and ``b`` (float64)."""
    from ..evaluation.fid import frechet_distance

    return float(frechet_distance(a, b))


def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips/quarter turns of ``x`` (``k`` in 0..7)."""
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if k >= 4 else y


def _undihedral(y: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`_dihedral`."""
    if k >= 4:
        y = torch.flip(y, dims=(-1,))
    return torch.rot90(y, -(k % 4), dims=(-2, -1))


@dataclass
class FixedProbe:
    """Fixed source/target patches and G's activations on them, to score any candidate.

    Build it with :meth:`build`; then :meth:`scores` measures a candidate model.

    Attributes
    ----------
    src, tgt : torch.Tensor
        ``(N, C, P, P)`` normalised source and target patches (on ``device``).
    ref_src : dict of int to torch.Tensor
        G's activations on ``src`` at the probed layers (output included).
    ref_out_tgt : torch.Tensor
        G's predictions on ``tgt`` (the no-adaptation candidate).
    layers : tuple of int
        Layers at which ``w2_L<k>`` is measured.
    device : torch.device
    """

    src: torch.Tensor
    tgt: torch.Tensor
    ref_src: dict[int, torch.Tensor]
    ref_out_tgt: torch.Tensor
    layers: tuple[int, ...]
    num_layers: int
    device: Any
    chunk: int = 8
    n_aux: int = 32

    @classmethod
    @torch.no_grad()
    def build(cls, model: Any, source_patches: np.ndarray, target_patches: np.ndarray, *,
              layers: Sequence[int] | None = None, device: Any = "cpu",
              chunk: int = 8) -> FixedProbe:
        """Run G once on the fixed patches (``(N, H, W)`` or ``(N, C, H, W)``, normalised).

        Parameters
        ----------
        model : UNetGenerator
            The source model G (not modified).
        source_patches, target_patches : ndarray
            Fixed patches of each domain.
        layers : sequence of int, optional
            Layers for ``w2_L<k>`` (default: every layer).
        device : str or torch.device
            Where the candidates are run.
        chunk : int
            Patches per forward pass.

        Notes
        -----
        ``drift`` and ``tta`` are measured on the first :attr:`n_aux` patches only (they
        cost extra passes); the distribution scores use every patch.
        """
        from .sampling import to_tensor

        n = model.num_layers
        lays = tuple(sorted(set(layers or range(1, n + 1)) | {n}))
        src, tgt = to_tensor(source_patches, device), to_tensor(target_patches, device)
        probe = cls(src, tgt, {}, tgt[:0], lays, n, device, chunk)
        was = model.training
        model.eval()
        try:
            probe.ref_src = probe._taps(model, src, lays)
            probe.ref_out_tgt = probe._taps(model, tgt, (n,))[n]
        finally:
            model.train(was)
        return probe

    def _taps(self, net: Any, x: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        parts = [net.forward_taps(x[i : i + self.chunk], tuple(layers))
                 for i in range(0, len(x), self.chunk)]
        return {k: torch.cat([p[k].float() for p in parts]) for k in parts[0]}

    @property
    def out_var(self) -> np.ndarray:
        """Per-channel variance of G's source predictions (the unit of ``out_q``)."""
        ref = self.ref_src[self.num_layers]
        return ref.transpose(0, 1).reshape(ref.shape[1], -1).double().var(dim=1).numpy() + _EPS

    @torch.no_grad()
    def predict(self, net: Any) -> torch.Tensor:
        """Candidate ``net``'s predictions on the target patches (eval mode)."""
        was = net.training
        net.eval()
        try:
            return self._taps(net, self.tgt, (self.num_layers,))[self.num_layers]
        finally:
            net.train(was)

    def out_q(self, net: Any) -> tuple[float, np.ndarray]:
        """The ``out_q`` score of ``net`` from one pass, and the sketch of its predictions.

        Computed from quantile sketches (what :func:`paired_gain` resamples), so it
        differs from :meth:`scores`' exact ``out_q`` by the sketch's resolution only.
        """
        sk = quantile_sketch(self.predict(net))
        return sketch_w2(self.ref_sketch, sk, self.out_var), sk

    @property
    def ref_sketch(self) -> np.ndarray:
        """Sketch of G's predictions on the source patches (computed once)."""
        if getattr(self, "_ref_sketch", None) is None:
            self._ref_sketch = quantile_sketch(self.ref_src[self.num_layers])
        return self._ref_sketch

    @torch.no_grad()
    def scores(self, net: Any, *, tta: bool = True, keep: dict | None = None
               ) -> dict[str, float]:
        """Every score of the module docstring for candidate ``net`` (lower is better).

        ``keep``, a dict, receives the candidate's predictions on the target patches
        (``"target"``) for comparisons between candidates.
        """
        n = self.num_layers
        was = net.training
        net.eval()
        try:
            tgt = self._taps(net, self.tgt, self.layers)
            out_src = self._taps(net, self.src[: self.n_aux], (n,))[n]
            tta_value = self.tta(net) if tta else None
        finally:
            net.train(was)
        if keep is not None:
            keep["target"] = tgt[n]
        ref = self.ref_src[n]
        spread = ref.transpose(0, 1).reshape(ref.shape[1], -1).double().var(dim=1) + _EPS
        out = {
            "out_w2": diag_w2(ref, tgt[n]),
            "out_q": _quantile_w2(ref, tgt[n], spread),
            "out_fd": _frechet(self._pixels(ref), self._pixels(tgt[n])) / float(spread.mean()),
            "drift": float((out_src - ref[: self.n_aux]).abs().mean() / (ref.std() + _EPS)),
            "ctx_fd": self._context_fd(ref, tgt[n]),
            **{f"w2_L{k}": diag_w2(self.ref_src[k], tgt[k]) for k in self.layers},
            **{f"fd_L{k}": self._layer_fd(self.ref_src[k], tgt[k]) for k in self.layers},
        }
        if tta_value is not None:
            out["tta"] = tta_value
        return out

    @torch.no_grad()
    def tta(self, net: Any) -> float:
        """Flip/rotation inconsistency of ``net`` on target patches (lower = more stable).

        The mean absolute deviation of the predictions over 4 of the 8 flips and quarter
        turns of the input (mapped back), on half of the auxiliary patches, in units of the
        spread of G's source predictions.
        """
        n = self.num_layers
        was = net.training
        net.eval()
        try:
            half = self.tgt[: max(1, min(len(self.tgt), self.n_aux) // 2)]
            views = [_undihedral(self._taps(net, _dihedral(half, k), (n,))[n], k)
                     for k in (0, 1, 2, 4)]
        finally:
            net.train(was)
        aug = torch.stack(views)
        spread = self.ref_src[n].std() + _EPS
        return float((aug - aug.mean(0, keepdim=True)).abs().mean() / spread)

    @classmethod
    def _layer_fd(cls, a: torch.Tensor, b: torch.Tensor) -> float:
        """Frechet distance of the per-position activations (all channels jointly).

        In units of the source's mean per-channel variance, so that layers can be compared.
        Unlike the per-channel distances it sees the correlations between channels, which
        re-estimated BatchNorm statistics (AdaBN) do not set.
        """
        pa, pb = cls._pixels(a, 20000), cls._pixels(b, 20000)
        return _frechet(pa, pb) / float(pa.var(axis=0).mean() + _EPS)

    @classmethod
    def _context_fd(cls, a: torch.Tensor, b: torch.Tensor, k: int = 4) -> float:
        """Frechet distance of ``k x k`` neighbourhoods of the predictions (local structure)."""
        ua = torch.nn.functional.unfold(a.double(), k, stride=k)  # (N, C*k*k, L)
        ub = torch.nn.functional.unfold(b.double(), k, stride=k)
        ra = ua.transpose(1, 2).reshape(-1, ua.shape[1]).cpu().numpy()
        rb = ub.transpose(1, 2).reshape(-1, ub.shape[1]).cpu().numpy()
        return _frechet(ra[:: max(1, len(ra) // 20000)], rb[:: max(1, len(rb) // 20000)]) / float(
            ra.var(axis=0).mean() + _EPS)

    @staticmethod
    def _pixels(y: torch.Tensor, max_rows: int = 65536) -> np.ndarray:
        """Per-pixel rows ``(N*H*W, C)`` of a prediction, evenly subsampled."""
        rows = y.transpose(0, 1).reshape(y.shape[1], -1).T.double().cpu().numpy()
        step = max(1, len(rows) // max_rows)
        return rows[::step]
