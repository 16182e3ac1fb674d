"""A pix2pix-compatible UNet generator built as a flat, explicit list of blocks.

Why not pix2pix's nested ``UnetSkipConnectionBlock``: LM-ADDA needs the activation of one
layer *l* and nothing after it. With the nested design that means forward hooks, and
pix2pix's in-place LeakyReLU/ReLU silently modify the tensors a hook captured. Here every
block is a plain module, no activation runs in place, and ``forward(x, upto=l)`` stops at
layer *l* (for ``l <= num_downs`` the decoder is never run).

Layer numbering (``n = num_downs``, layers ``1 .. 2n``):

* layers ``1 .. n`` are the down blocks; the tap of layer ``k`` is ``e_k``, the block's
  output before the LeakyReLU that the next block applies (pix2pix's block output);
* layers ``n+1 .. 2n`` are the up blocks, innermost first; the tap of layer ``n+j`` is the
  up block's own output ``y`` (before it is concatenated with the skip), and layer ``2n`` is
  the tanh output image.

Computation (identical to pix2pix ``UnetGenerator``, including its in-place quirk that
the skip connections carry ``LeakyReLU(e_k)``, not ``e_k``)::

    e_1 = conv_1(x)
    a_k = leaky_relu(e_k, 0.2)
    e_k = norm_k(conv_k(a_{k-1}))            1 < k < n      (e_n: no norm)
    y_n = norm(convT(relu(e_n)))
    y_k = [dropout](norm(convT(relu(cat(a_k, y_{k+1})))))   1 < k < n
    out = tanh(convT_1(relu(cat(a_1, y_2))))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

try:
    from ..errors import ConfigError
except ImportError:  # loaded as a lone file (e.g. a bioimage.io package's architecture)

    class ConfigError(ValueError):  # type: ignore[no-redef]
        """An architecture option is out of its valid range (the package's own type there)."""


__all__ = ["UNetConfig", "UNetGenerator", "LayerInfo"]

NORMS = ("batch", "instance", "none")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`UNetGenerator`.

    Parameters
    ----------
    in_channels, out_channels : int
        Image channels in and out.
    num_downs : int
        Number of down blocks (7 = pix2pix ``unet_128``, 8 = ``unet_256``). An input side
        must be a multiple of ``2**num_downs``.
    ngf : int
        Filters of the first layer; the block ``k`` has ``ngf * min(2**(k-1), 8)``.
    norm : {"batch", "instance", "none"}
        Normalisation layers, as pix2pix's ``--norm``.
    use_dropout : bool
        Dropout(0.5) after the up blocks of the middle ``ngf*8`` blocks (pix2pix default on).
    bias : bool or None
        Conv biases in the inner blocks; ``None`` follows pix2pix (only with instance norm).
    """

    in_channels: int = 1
    out_channels: int = 1
    num_downs: int = 8
    ngf: int = 64
    norm: str = "batch"
    use_dropout: bool = True
    bias: bool | None = None

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS}, got {self.norm!r}")
        for name in ("in_channels", "out_channels", "ngf"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 2 <= int(self.num_downs) <= 12:
            raise ConfigError(f"num_downs must be between 2 and 12, got {self.num_downs}")

    @property
    def use_bias(self) -> bool:
        """Whether the inner convolutions have a bias term."""
        return self.norm == "instance" if self.bias is None else bool(self.bias)

    @property
    def num_layers(self) -> int:
        """Number of taps, ``2 * num_downs``."""
        return 2 * self.num_downs

    def channels(self, k: int) -> int:
        """Channels produced by down block ``k`` (1-based)."""
        return self.ngf * min(2 ** (k - 1), 8)

    def to_dict(self) -> dict:
        """Plain dict (JSON- and ``weights_only``-safe)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        """Inverse of :meth:`to_dict`, ignoring unknown keys."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class LayerInfo:
    """One tap of the UNet: what ``forward(x, upto=index)`` returns."""

    index: int
    name: str
    kind: str  # "down" | "bottleneck" | "up" | "output"
    channels: int
    height: int
    width: int
    trainable_params: int = field(default=0)

    def __str__(self) -> str:
        return f"{self.index:2d} {self.name:<12} {self.channels:4d} ch  {self.height}x{self.width}"


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.Identity()


class DownBlock(nn.Sequential):
    """Conv 4x4 stride 2, then the norm (none for the outermost and innermost)."""

    def __init__(self, cin: int, cout: int, *, bias: bool, norm: str) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=bias)]
        if norm != "none":
            layers.append(_norm(norm, cout))
        super().__init__(*layers)


class UpBlock(nn.Module):
    """ReLU, ConvTranspose 4x4 stride 2, then norm + optional dropout, or tanh (outermost)."""

    def __init__(
        self, cin: int, cout: int, *, bias: bool, norm: str, dropout: bool, outermost: bool
    ) -> None:
        super().__init__()
        self.outermost = outermost
        self.conv = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=bias)
        self.norm = nn.Identity() if outermost else _norm(norm, cout)
        self.dropout = nn.Dropout(0.5) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(F.relu(x)))
        return torch.tanh(y) if self.outermost else self.dropout(y)


def checked_taps(model: Any, x: torch.Tensor, layers: Any) -> list[int]:
    """The distinct 1-based layers of ``layers``, sorted, each checked against ``model``.

    ``x`` is checked as the model's input when any layer is asked for.
    """
    wanted = sorted({int(i) for i in layers})
    for layer in wanted:
        model._check_layer(layer)
    if wanted:
        model.check_input(x)
    return wanted


class UNetGenerator(nn.Module):
    """pix2pix ``UnetGenerator`` with explicit layer taps.

    Parameters
    ----------
    config : UNetConfig, optional
        The architecture; keyword arguments override its fields.
    **kwargs
        Fields of :class:`UNetConfig` (``num_downs``, ``ngf``, ``norm``, ...).

    Attributes
    ----------
    down : nn.ModuleList
        ``down[k-1]`` is layer ``k``.
    up : nn.ModuleList
        ``up[j-1]`` is layer ``num_downs + j`` (innermost first).
    """

    def __init__(self, config: UNetConfig | None = None, **kwargs) -> None:
        super().__init__()
        cfg = config or UNetConfig()
        if kwargs:
            cfg = UNetConfig.from_dict({**cfg.to_dict(), **kwargs})
        self.config = cfg
        n, bias, norm = cfg.num_downs, cfg.use_bias, cfg.norm
        down = []
        for k in range(1, n + 1):
            cin = cfg.in_channels if k == 1 else cfg.channels(k - 1)
            inner_norm = norm if 1 < k < n else "none"
            down.append(DownBlock(cin, cfg.channels(k), bias=bias, norm=inner_norm))
        up = []
        for k in range(n, 0, -1):  # block k's up part, innermost first
            cin = cfg.channels(k) if k == n else 2 * cfg.channels(k)
            cout = cfg.out_channels if k == 1 else cfg.channels(k - 1)
            up.append(
                UpBlock(
                    cin,
                    cout,
                    bias=True if k == 1 else bias,
                    norm=norm,
                    dropout=cfg.use_dropout and 5 <= k <= n - 1,
                    outermost=k == 1,
                )
            )
        self.down = nn.ModuleList(down)
        self.up = nn.ModuleList(up)
        self.reset_parameters()

    # ------------------------------------------------------------------ structure
    @property
    def num_downs(self) -> int:
        """Number of down blocks."""
        return self.config.num_downs

    @property
    def num_layers(self) -> int:
        """Number of layers (taps), ``2 * num_downs``."""
        return self.config.num_layers

    @property
    def min_size(self) -> int:
        """Input sides must be multiples of this (``2**num_downs``)."""
        return 2**self.config.num_downs

    def block(self, layer: int) -> nn.Module:
        """The module that computes layer ``layer`` (1-based)."""
        self._check_layer(layer)
        n = self.num_downs
        return self.down[layer - 1] if layer <= n else self.up[layer - n - 1]

    def blocks_upto(self, layer: int) -> list[nn.Module]:
        """The modules of layers ``1 .. layer`` (what LM-ADDA may train)."""
        return [self.block(i) for i in range(1, layer + 1)]

    def reset_parameters(self, std: float = 0.02) -> None:
        """pix2pix ``init_weights('normal')``: conv N(0, std), BN weight N(1, std), biases 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, std)
                nn.init.zeros_(m.bias)

    def _check_layer(self, layer: int) -> None:
        if not 1 <= int(layer) <= self.num_layers:
            raise ConfigError(
                f"layer {layer} is out of range: this UNet has layers 1..{self.num_layers}"
            )

    def layer_name(self, layer: int) -> str:
        """A short human name for a layer (``down3``, ``bottleneck``, ``up12``, ``output``)."""
        self._check_layer(layer)
        n = self.num_downs
        if layer == n:
            return "bottleneck"
        if layer == 2 * n:
            return "output"
        return f"down{layer}" if layer < n else f"up{layer}"

    def describe_layers(self, input_size: int | tuple[int, int] = 256) -> list[LayerInfo]:
        """Channels and spatial size of every layer for an input of ``input_size``.

        Parameters
        ----------
        input_size : int or (int, int)
            Input height and width.

        Returns
        -------
        list of LayerInfo
            One entry per layer, index 1 first.
        """
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        n, cfg = self.num_downs, self.config
        out = []
        for layer in range(1, 2 * n + 1):
            if layer <= n:
                ch, f = cfg.channels(layer), 2**layer
                kind = "bottleneck" if layer == n else "down"
            else:
                k = 2 * n + 1 - layer  # block index
                ch = cfg.out_channels if k == 1 else cfg.channels(k - 1)
                f = 2 ** (k - 1)
                kind = "output" if k == 1 else "up"
            params = sum(p.numel() for p in self.block(layer).parameters())
            out.append(LayerInfo(layer, self.layer_name(layer), kind, ch, h // f, w // f, params))
        return out

    # ------------------------------------------------------------------ forward
    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error for an input of the wrong rank, channels or size."""
        if x.ndim != 4:
            raise ConfigError(
                f"expected a (batch, channels, H, W) tensor, got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.config.in_channels:
            raise ConfigError(
                f"this model takes {self.config.in_channels} input channel(s), got {x.shape[1]}"
            )
        m = self.min_size
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ConfigError(
                f"input size {tuple(x.shape[-2:])} is not a multiple of {m} (2**num_downs); "
                "pad or tile the image (predict does this for you)"
            )

    def forward(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """Run the network, or only up to layer ``upto``.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, in_channels, H, W)`` with ``H, W`` multiples of ``2**num_downs``.
        upto : int, optional
            Return the activation of this layer (1-based) instead of the output.

        Returns
        -------
        torch.Tensor
            The output image, or the tap of layer ``upto``.
        """
        layer = self.num_layers if upto is None else int(upto)
        return self.forward_taps(x, (layer,))[layer]

    def forward_taps(self, x: torch.Tensor, layers) -> dict[int, torch.Tensor]:
        """Activations of several layers from one pass that stops at the deepest one.

        Parameters
        ----------
        x : torch.Tensor
            Input batch.
        layers : iterable of int
            Layers to return (1-based).

        Returns
        -------
        dict
            ``{layer: activation}``.
        """
        wanted = checked_taps(self, x, layers)
        if not wanted:
            return {}
        last, n = wanted[-1], self.num_downs
        taps: dict[int, torch.Tensor] = {}
        skips: list[torch.Tensor] = []  # a_k = leaky_relu(e_k), the skip inputs
        h = x
        for k in range(1, min(last, n) + 1):
            e = self.down[k - 1](h if k == 1 else skips[-1])
            if k in wanted:
                taps[k] = e
            if k < n and k < last:
                skips.append(F.leaky_relu(e, 0.2))
            h = e
        if last <= n:
            return taps
        y = self.up[0](h)  # layer n+1 from e_n
        if n + 1 in wanted:
            taps[n + 1] = y
        for j in range(2, last - n + 1):  # layer n+j consumes cat(a_k, y), k = n-j+1
            a = skips[n - j]
            y = self.up[j - 1](torch.cat([a, y], dim=1))
            if n + j in wanted:
                taps[n + j] = y
        return taps
