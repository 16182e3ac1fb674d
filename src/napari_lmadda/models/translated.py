"""Image-level adaptation as a model: a translator in front of the unchanged source UNet.

SCGAN (:mod:`napari_lmadda.adapt.scgan`) learns a grey-to-grey translator T that makes
new-microscope images look like source images; the source model G then runs on T(x).
:class:`TranslatedModel` packs ``G(T(x))`` into one module that quacks like a
:class:`~napari_lmadda.models.unet.UNetGenerator` (``config``, ``meta``, ``min_size``,
``num_layers``, ``forward(x, upto=l)``, ``forward_taps`` ...), so prediction, sweeps,
uncertainty maps and model files treat it like any other model. Layer ``l`` of a translated
model is layer ``l`` of G computed on the translated image.

The translator is a small CycleGAN-style ResNet generator (Zhu et al. 2017), sized for the
CPU: a 7x7 conv, ``n_downs`` stride-2 convs, ``n_blocks`` residual blocks, as many
up-convolutions, a 7x7 conv back to one channel. Its output is *added* to the input and
the last conv starts at zero, so an untrained translator is exactly the identity: training
starts from "the images as they are", which is what a few hundred CPU steps need.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import ConfigError
from .unet import LayerInfo, UNetGenerator

__all__ = ["TranslatorConfig", "Translator", "TranslatedModel", "is_translated"]


@dataclass(frozen=True)
class TranslatorConfig:
    """Architecture of a :class:`Translator`.

    Parameters
    ----------
    channels : int
        Image channels in and out (1: grey).
    ngf : int
        Filters of the first conv; doubles with each down-sampling.
    n_downs : int
        Stride-2 convs (input sides must be multiples of ``2**n_downs``).
    n_blocks : int
        Residual blocks at the lowest resolution (CycleGAN uses 9; 3-6 suit a CPU).
    """

    channels: int = 1
    ngf: int = 16
    n_downs: int = 2
    n_blocks: int = 4

    def __post_init__(self) -> None:
        for name, lo, hi in (("channels", 1, 16), ("ngf", 1, 256), ("n_downs", 0, 4),
                             ("n_blocks", 0, 16)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ConfigError(f"translator {name} must be a whole number in {lo}..{hi}, "
                                  f"got {v!r}")

    def to_dict(self) -> dict:
        """Plain dict (JSON- and ``weights_only``-safe)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TranslatorConfig:
        """Inverse of :meth:`to_dict`, ignoring unknown keys."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


class _ResBlock(nn.Module):
    """Reflect-pad, conv 3x3, instance norm, ReLU, reflect-pad, conv 3x3, instance norm; + x."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x + self.body(x)


class Translator(nn.Module):
    """A small ResNet image-to-image generator that starts as the identity.

    Parameters
    ----------
    config : TranslatorConfig, optional
        The architecture; keyword arguments override its fields.
    """

    def __init__(self, config: TranslatorConfig | None = None, **kwargs) -> None:
        super().__init__()
        cfg = config or TranslatorConfig()
        if kwargs:
            cfg = TranslatorConfig.from_dict({**cfg.to_dict(), **kwargs})
        self.config = cfg
        c, ch = cfg.channels, cfg.ngf
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3), nn.Conv2d(c, ch, 7), nn.InstanceNorm2d(ch), nn.ReLU()
        ]
        for _ in range(cfg.n_downs):
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(ch * 2),
                       nn.ReLU()]
            ch *= 2
        layers += [_ResBlock(ch) for _ in range(cfg.n_blocks)]
        for _ in range(cfg.n_downs):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(ch // 2), nn.ReLU()]
            ch //= 2
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ch, c, 7))
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.head[1].weight)  # identity at the start

    @property
    def min_size(self) -> int:
        """Input sides must be multiples of this."""
        return 2**self.config.n_downs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Translate ``(B, C, H, W)`` images (sides multiples of :attr:`min_size`)."""
        return x + self.head(self.body(x))


def _lcm(a: int, b: int) -> int:
    from math import gcd

    return a * b // gcd(a, b)


class TranslatedModel(nn.Module):
    """``unet(translator(x))``: a source model that first translates its input.

    Parameters
    ----------
    translator : Translator
        New-microscope images -> source style.
    unet : UNetGenerator
        The unchanged source model.

    Attributes
    ----------
    meta : dict
        Channel names, normalisation and provenance (the source model's, by default).
    """

    def __init__(self, translator: Translator, unet: UNetGenerator) -> None:
        super().__init__()
        if translator.config.channels != unet.config.in_channels:
            raise ConfigError(
                f"the translator makes {translator.config.channels}-channel images but the "
                f"model takes {unet.config.in_channels} channel(s)"
            )
        self.translator = translator
        self.unet = unet
        self.meta = dict(getattr(unet, "meta", {}) or {})

    # ---------------------------------------------------------------- UNet interface
    @property
    def config(self):
        """The source model's :class:`~napari_lmadda.models.unet.UNetConfig`."""
        return self.unet.config

    @property
    def num_downs(self) -> int:
        """Down blocks of the source model."""
        return self.unet.num_downs

    @property
    def num_layers(self) -> int:
        """Layers (taps) of the source model."""
        return self.unet.num_layers

    @property
    def min_size(self) -> int:
        """Input sides must be multiples of this (the UNet's and the translator's)."""
        return _lcm(self.unet.min_size, self.translator.min_size)

    def block(self, layer: int) -> nn.Module:
        """The source model's module for ``layer``."""
        return self.unet.block(layer)

    def blocks_upto(self, layer: int) -> list[nn.Module]:
        """The source model's modules of layers ``1 .. layer``."""
        return self.unet.blocks_upto(layer)

    def layer_name(self, layer: int) -> str:
        """A short human name for a layer of the source model."""
        return self.unet.layer_name(layer)

    def describe_layers(self, input_size: int | tuple[int, int] = 256) -> list[LayerInfo]:
        """The source model's layers (see :meth:`UNetGenerator.describe_layers`)."""
        return self.unet.describe_layers(input_size)

    def _check_layer(self, layer: int) -> None:
        self.unet._check_layer(layer)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error for an input the translator or the UNet cannot take."""
        self.unet.check_input(x)
        m = self.min_size
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ConfigError(f"input size {tuple(x.shape[-2:])} is not a multiple of {m}")

    def translate(self, x: torch.Tensor) -> torch.Tensor:
        """The translated (source-style) images."""
        self.check_input(x)
        return self.translator(x)

    def forward(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """``unet(translator(x), upto=upto)``."""
        return self.unet(self.translate(x), upto=upto)

    def forward_taps(self, x: torch.Tensor, layers) -> dict[int, torch.Tensor]:
        """Activations of the source model's ``layers`` on the translated images."""
        return self.unet.forward_taps(self.translate(x), layers)

    def extra_repr(self) -> str:  # noqa: D102
        return f"translator={self.translator.config}, unet={self.unet.config}"


def is_translated(model: object) -> bool:
    """Whether ``model`` is a :class:`TranslatedModel`."""
    return isinstance(model, TranslatedModel)
