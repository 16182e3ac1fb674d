"""The bundled demo model's training recipe (``scripts/train_demo_model.py``) for benchmarks.

Imported by name by the benchmark scripts (``benchmarks/`` is on ``sys.path`` when one runs
as a script): the augmented source models, the other architectures of ``any_model.py`` and
the oracles of ``quality.py`` and ``augment.py`` all train on these fields.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_lmadda.data.datasets import PairedArrays, PatchSampler
from napari_lmadda.data.normalize import percentile_normalize
from napari_lmadda.data.synthetic import make_domain
from napari_lmadda.training.source import TARGET_RANGE

PHASE = {"modality": "phase"}


def demo_recipe_data(domain: dict[str, Any] | None = None
                     ) -> tuple[PairedArrays, tuple[np.ndarray, np.ndarray]]:
    """96 training fields (seed 1) as encoded pairs and 8 validation fields (seed 2).

    Parameters
    ----------
    domain : dict, optional
        ``make_domain`` keywords of the microscope (default: the source's phase contrast).

    Returns
    -------
    pairs : PairedArrays
        Inputs with DAPI and CD29 targets encoded from :data:`TARGET_RANGE`.
    val : tuple of ndarray
        Percentile-normalised inputs ``(N, 1, H, W)`` and targets encoded to [-1, 1].
    """
    kw = PHASE if domain is None else domain
    train = make_domain(96, size=256, seed=1, **kw)
    val = make_domain(8, size=256, seed=2, **kw)
    pairs = PairedArrays(train["input"], np.stack([train["dapi"], train["cd29"]], 1),
                         target_range=TARGET_RANGE)
    lo, hi = TARGET_RANGE
    vx = np.stack([percentile_normalize(im)[0] for im in val["input"]])[:, None]
    vy = (np.stack([val["dapi"], val["cd29"]], 1) - lo) / (hi - lo) * 2 - 1
    return pairs, (vx, vy)


def train_oracle(domain: dict[str, Any], steps: int, model: str = "demo") -> Any:
    """The demo architecture trained on labelled fields of ``domain``: an adaptation ceiling.

    Returns the :class:`~napari_lmadda.training.TrainResult`.
    """
    from napari_lmadda.models import UNetConfig, load_model
    from napari_lmadda.training import SourceTrainConfig, train_source

    pairs, val = demo_recipe_data(domain)
    src = load_model(model)
    meta = {k: src.meta[k] for k in ("channel_names", "input_percentiles", "target_range")}
    return train_source(PatchSampler(pairs, 128, 8, seed=0, augment=True), val,
                        arch=UNetConfig.from_dict(src.config.to_dict()), meta=meta,
                        config=SourceTrainConfig(steps=steps, eval_every=250, device="cpu"))
