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
  G(source) (for scores read at a fixed set of layers);
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

__all__ = ["FixedProbe", "SCORE_NAMES"]

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

    @torch.no_grad()
    def scores(self, net: Any, *, tta: bool = True) -> dict[str, float]:
        """Every score of the module docstring for candidate ``net`` (lower is better)."""
        n = self.num_layers
        was = net.training
        net.eval()
        try:
            tgt = self._taps(net, self.tgt, self.layers)
            out_src = self._taps(net, self.src, (n,))[n]
            aug = None
            if tta:  # 4 of the 8 views on half the patches: a quarter of the cost
                half = self.tgt[: max(1, len(self.tgt) // 2)]
                views = [tgt[n][: len(half)]]
                for k in (1, 2, 4):
                    y = self._taps(net, _dihedral(half, k), (n,))[n]
                    views.append(_undihedral(y, k))
                aug = torch.stack(views)
        finally:
            net.train(was)
        ref = self.ref_src[n]
        spread = ref.transpose(0, 1).reshape(ref.shape[1], -1).double().var(dim=1) + _EPS
        out = {
            "out_w2": diag_w2(ref, tgt[n]),
            "out_q": _quantile_w2(ref, tgt[n], spread),
            "out_fd": _frechet(self._pixels(ref), self._pixels(tgt[n])) / float(spread.mean()),
            "drift": float((out_src - ref).abs().mean() / (ref.std() + _EPS)),
            **{f"w2_L{k}": diag_w2(self.ref_src[k], tgt[k]) for k in self.layers},
        }
        if aug is not None:
            out["tta"] = float((aug - aug.mean(0, keepdim=True)).abs().mean() / (ref.std() + _EPS))
        return out

    @staticmethod
    def _pixels(y: torch.Tensor, max_rows: int = 65536) -> np.ndarray:
        """Per-pixel rows ``(N*H*W, C)`` of a prediction, evenly subsampled."""
        rows = y.transpose(0, 1).reshape(y.shape[1], -1).T.double().cpu().numpy()
        step = max(1, len(rows) // max_rows)
        return rows[::step]
