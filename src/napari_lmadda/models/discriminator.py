"""Discriminators that fit the tap they judge.

pix2pix's 70x70 PatchGAN (three stride-2 convs, then two 4x4 stride-1 convs) needs a map
of more than 16 px; a UNet bottleneck is 1x1 to 4x4. :class:`LayerDiscriminator` keeps the
PatchGAN pattern but adapts its depth to the tap: a 1x1 conv from the tap's channels to
``ndf``, then ``clamp(log2(H) - 4, 0, 3)`` stride-2 convs, then size-preserving 3x3 convs to a
map of logits. No BatchNorm (it would normalise away the mean/variance shift between
domains that the discriminator must see); optional spectral norm to keep it Lipschitz.
"""

from __future__ import annotations

import math

from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

__all__ = ["LayerDiscriminator", "PatchDiscriminator", "n_strided"]


def n_strided(size: int) -> int:
    """Stride-2 convs for a tap of side ``size``: ``clamp(log2(size) - 4, 0, 3)``."""
    return int(min(3, max(0, math.floor(math.log2(max(1, size))) - 4)))


class LayerDiscriminator(nn.Module):
    """A PatchGAN-style discriminator sized for one layer's activations.

    Parameters
    ----------
    in_channels : int
        Channels of the tap.
    size : int
        Smallest spatial side of the tap.
    ndf : int
        Width of the first layer (doubles with each stride-2 conv, at most ``8 * ndf``).
    n_hidden : int
        Size-preserving 3x3 convs after the strided part.
    spectral_norm : bool
        Wrap every conv in spectral normalisation.
    """

    def __init__(
        self,
        in_channels: int,
        size: int,
        *,
        ndf: int = 64,
        n_hidden: int = 1,
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()

        def conv(cin: int, cout: int, k: int, s: int, p: int) -> nn.Module:
            c = nn.Conv2d(cin, cout, k, stride=s, padding=p)
            nn.init.normal_(c.weight, 0.0, 0.02)
            nn.init.zeros_(c.bias)
            return _sn(c) if spectral_norm else c

        layers: list[nn.Module] = [conv(in_channels, ndf, 1, 1, 0), nn.LeakyReLU(0.2)]
        ch = ndf
        for _ in range(n_strided(size)):
            nxt = min(ch * 2, ndf * 8)
            layers += [conv(ch, nxt, 4, 2, 1), nn.LeakyReLU(0.2)]
            ch = nxt
        for _ in range(n_hidden):
            nxt = min(ch * 2, ndf * 8)
            layers += [conv(ch, nxt, 3, 1, 1), nn.LeakyReLU(0.2)]
            ch = nxt
        layers.append(conv(ch, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)
        self.in_channels = in_channels
        self.size = size

    def forward(self, x):  # noqa: D102
        return self.net(x)


class PatchDiscriminator(LayerDiscriminator):
    """Conditional PatchGAN for supervised pix2pix training: judges ``cat(input, output)``."""

    def __init__(self, in_channels: int, out_channels: int, size: int, **kw) -> None:
        super().__init__(in_channels + out_channels, size, **kw)
