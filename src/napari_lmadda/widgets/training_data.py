"""What "Train a source model" asks for, and the data it trains on (Qt-free).

:class:`TrainRequest` holds the options of ``lmadda train-source``
(:class:`~napari_lmadda.cli.train_source.TrainSourceArgs`); :func:`prepare_request` resolves
them as the command does (size preset, architecture, :class:`SourceTrainConfig`), and
:func:`read_training_data` reads the paired folders with
:func:`napari_lmadda.training.prepare_training` (files paired by name, validation held out by
file, targets of any range encoded as learned from the training set). The reading runs in the
worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["TrainRequest", "prepare_request", "read_training_data"]


@dataclass
class TrainRequest:
    """A training the panel asks for, resolved.

    Attributes
    ----------
    args : TrainSourceArgs
        Every option, as ``lmadda train-source`` takes it.
    names : list of str
        Output channel names.
    arch : UNetConfig
        The architecture (the size preset's, or the depth/filters given).
    config : SourceTrainConfig
        Steps, batch, patch, learning rate, augmentation, target encoding, device...
    size : str
        The size preset used (``small``, ``medium``, ``large``).
    seconds_per_1000 : float or None
        The preset's measured CPU time per 1000 steps, when its settings are kept.
    """

    args: Any
    names: list[str]
    arch: Any
    config: Any
    size: str
    seconds_per_1000: float | None = None
    hints: list[str] = field(default_factory=list)

    @property
    def out(self) -> Path:
        """The model file to write."""
        return Path(self.args.out)

    @property
    def inputs(self) -> Path:
        """The folder of input images."""
        return Path(self.args.inputs)


def prepare_request(args: Any) -> TrainRequest:
    """Resolve ``args`` (a :class:`TrainSourceArgs`) as ``lmadda train-source`` does.

    Raises
    ------
    ConfigError
        Options that do not fit together (one line).
    """
    from ..devices import resolve_device
    from ..models.unet import UNetConfig
    from ..options import validate
    from ..training import SourceTrainConfig, size_preset

    validate(args)
    names = ([s.strip() for s in args.channel_names.split(",") if s.strip()]
             if args.channel_names else [Path(t).name for t in args.targets])
    if len(names) != len(args.targets):
        raise ConfigError(f"{len(names)} stain name(s) ({', '.join(names)}) for "
                          f"{len(args.targets)} stain folder(s)")
    if args.target_range is not None and args.target_norm != "fixed":
        raise ConfigError("a target range applies to the 'fixed' target normalisation only")
    device = str(resolve_device(args.device))
    size, preset = size_preset(args.size, device)
    given = {k: getattr(args, k) for k in ("num_downs", "ngf", "patch", "batch")}
    num_downs = given["num_downs"] if given["num_downs"] is not None else preset["num_downs"]
    ngf = given["ngf"] if given["ngf"] is not None else preset["ngf"]
    patch = given["patch"] if given["patch"] is not None else preset["patch"]
    batch = given["batch"] if given["batch"] is not None else preset["batch"]
    if patch % 2**num_downs:
        raise ConfigError(f"patch {patch} px must be a multiple of {2**num_downs} (2 to the "
                          f"power of the depth, {num_downs})")
    arch = UNetConfig(in_channels=1, out_channels=len(names), num_downs=num_downs, ngf=ngf,
                      norm=args.norm)
    eval_every = args.eval_every if args.eval_every is not None else max(1, args.steps // 20)
    config = SourceTrainConfig(
        steps=args.steps, batch_size=batch, patch_size=patch, lr=args.lr,
        lambda_gan=args.lambda_gan, eval_every=eval_every, seed=args.seed, device=args.device,
        augment=args.augment, target_norm=args.target_norm,
        target_percentiles=tuple(args.target_percentiles))
    kept = (num_downs, ngf, patch, batch) == (preset["num_downs"], preset["ngf"],
                                              preset["patch"], preset["batch"])
    return TrainRequest(args, names, arch, config, size,
                        preset.get("seconds_per_1000") if kept and device == "cpu" else None)


def read_training_data(request: TrainRequest) -> Any:
    """Read the paired folders (call it in the worker); also fills ``request.hints``.

    Returns
    -------
    TrainingData
        See :func:`napari_lmadda.training.prepare_training`.
    """
    from ..training import prepare_training

    args = request.args
    data = prepare_training(
        args.inputs, args.targets, channel_names=request.names,
        target_range=tuple(args.target_range) if args.target_range else None,
        val_fraction=args.val_fraction, val_patches=args.val_patches, config=request.config)
    data.meta = {**data.meta, "provenance": {**data.meta.get("provenance", {}),
                                             "size": request.size,
                                             "trained_in": "napari-lmadda dock"}}
    if data.target_problems:
        worst = max(data.target_problems, key=lambda p: p.outside)
        request.hints.append(
            f"targets outside what the model can produce, e.g. '{worst.name}' "
            f"({100 * worst.outside:.0f} % of its pixels): use the 'dataset' target "
            "normalisation")
    return data
