"""Models: the pix2pix-compatible UNet with layer taps, discriminators, model files."""

from .checkpoint import load_model, read_checkpoint, save_model
from .unet import LayerInfo, UNetConfig, UNetGenerator

__all__ = [
    "UNetGenerator",
    "UNetConfig",
    "LayerInfo",
    "load_model",
    "save_model",
    "read_checkpoint",
]
