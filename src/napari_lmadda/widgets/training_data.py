"""What "Train a source model" asks for, and the data it trains on (Qt-free).

:class:`TrainRequest` holds the options of ``lmadda train-source``; :func:`prepare_training`
reads the paired folders the same way the command does (files paired by name, a validation
split held out by file, fixed validation patches) and returns what
:func:`~napari_lmadda.training.source.iter_train_source` takes. It runs in the worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["TrainRequest", "PreparedTraining", "prepare_training"]


@dataclass
class TrainRequest:
    """The training panel's choices (the options of ``lmadda train-source``).

    Attributes
    ----------
    inputs : Path
        Folder of input images (e.g. phase contrast).
    targets : list of Path
        One folder of target images per output channel, files paired with the inputs by name.
    out : Path or None
        Model file to write (best state; the last state goes to ``<out>_last.pt``).
    channel_names : list of str
        Output channel names (default: the target folder names).
    arch : dict
        ``num_downs``, ``ngf`` and ``norm`` of the UNet.
    config : SourceTrainConfig
        Steps, batch, patch, learning rate, GAN weight, validation interval, seed, device.
    val_fraction : float
        Fraction of the files held out for validation.
    val_patches : int
        Fixed validation patches.
    args : TrainSourceArgs or None
        Every option as ``lmadda train-source`` takes it.
    """

    inputs: Path
    targets: list[Path]
    out: Path | None
    config: Any
    channel_names: list[str] = field(default_factory=list)
    arch: dict[str, Any] = field(default_factory=dict)
    val_fraction: float = 0.2
    val_patches: int = 32
    args: Any = None


@dataclass
class PreparedTraining:
    """Everything :func:`~napari_lmadda.training.source.iter_train_source` takes."""

    sampler: Any
    val: tuple[Any, Any]
    arch: Any
    meta: dict[str, Any]
    summary: Any


def prepare_training(request: TrainRequest) -> PreparedTraining:
    """Read the paired folders and set up sampling, as ``lmadda train-source`` does.

    Raises
    ------
    LmaddaError
        A folder holds no pairs, the patch is larger than every image, options conflict.
    """
    from ..adapt.sampling import check_patch_fits
    from ..cli.train_source import split_by_file
    from ..data.datasets import PairedFolders, PatchSampler
    from ..models.unet import UNetConfig
    from ..training.source import TARGET_RANGE
    from .worker import TrainData

    if not request.targets:
        raise ConfigError("choose at least one folder of target images (one per stain)")
    names = [n.strip() for n in request.channel_names if n.strip()] or [
        Path(t).name for t in request.targets]
    if len(names) != len(request.targets):
        raise ConfigError(f"{len(names)} channel name(s) for {len(request.targets)} target "
                          "folder(s)")
    cfg = request.config
    arch = UNetConfig(in_channels=1, out_channels=len(names), **request.arch)
    if cfg.patch_size % 2**arch.num_downs:
        raise ConfigError(f"patch {cfg.patch_size} px must be a multiple of "
                          f"{2**arch.num_downs} for a UNet with {arch.num_downs} down blocks")
    pairs = PairedFolders(request.inputs, request.targets, target_normalize="fixed",
                          target_range=TARGET_RANGE, on_unmatched="ignore")
    check_patch_fits(pairs, cfg.patch_size, "input")
    train, val, val_files = split_by_file(pairs, request.val_fraction, cfg.seed)
    if val is None:
        val = train
    sampler = PatchSampler(train, cfg.patch_size, cfg.batch_size, seed=cfg.seed, augment=True)
    vx, vy = PatchSampler(val, cfg.patch_size, max(1, request.val_patches),
                          seed=cfg.seed + 1).sample()
    skipped = tuple(f"{Path(p).name}: {why}" for p, why in getattr(pairs, "skipped", []))
    unmatched = getattr(pairs, "unmatched", {}) or {}
    meta: dict[str, Any] = {
        "channel_names": names,
        "input_percentiles": list(pairs.inputs.percentiles),
        "target_range": list(TARGET_RANGE),
        "provenance": {
            "inputs": str(request.inputs),
            "targets": [str(t) for t in request.targets],
            "n_pairs": len(pairs),
            "val_files": val_files,
            "trained_in": "napari-lmadda dock",
        },
    }
    summary = TrainData(len(train), len(val), tuple(val_files), tuple(names),
                        skipped + tuple(f"{n}: no partner" for n in
                                        unmatched.get("inputs", [])[:3]))
    return PreparedTraining(sampler, (vx, vy), arch, meta, summary)
