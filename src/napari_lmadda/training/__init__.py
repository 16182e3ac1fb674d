"""Supervised training of the source model (pix2pix-style)."""

from .data import TrainingData, prepare_training
from .source import (
    SIZE_PRESETS,
    NotLearning,
    SourceTrainConfig,
    TimeEstimate,
    TrainResult,
    iter_train_source,
    size_preset,
    train_source,
)

__all__ = [
    "SourceTrainConfig",
    "TrainResult",
    "NotLearning",
    "TimeEstimate",
    "SIZE_PRESETS",
    "size_preset",
    "iter_train_source",
    "train_source",
    "TrainingData",
    "prepare_training",
]
