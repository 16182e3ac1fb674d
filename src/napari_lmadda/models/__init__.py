"""Models: the pix2pix-compatible UNet with layer taps, any network behind taps, model files."""

from .checkpoint import load_model, read_checkpoint, save_model
from .tapped import LayerInfo, TapInfo, TappedModel, list_taps
from .unet import UNetConfig, UNetGenerator

__all__ = [
    "UNetGenerator",
    "UNetConfig",
    "LayerInfo",
    "TappedModel",
    "TapInfo",
    "list_taps",
    "load_model",
    "save_model",
    "read_checkpoint",
]
