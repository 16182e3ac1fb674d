"""Supervised training of the source model (pix2pix-style)."""

from .source import SourceTrainConfig, TrainResult, iter_train_source, train_source

__all__ = ["SourceTrainConfig", "TrainResult", "iter_train_source", "train_source"]
