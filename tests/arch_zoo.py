"""Image-to-image networks that are not pix2pix-shaped, for the any-model tests and benchmark.

Written here (not in the package): they stand for the architectures users bring with
``--arch file.py:Class``. Each keeps its own block order, so the tap machinery meets what real
code does: nested ``Sequential`` blocks, in-place ReLUs, ``out += identity``, a pooling layer
called at every level, additive and concatenating skips, channels-last blocks.

* :class:`CareUNet`: CSBDeep/CARE-style UNet, two 3x3 convolutions per level (conv, BN, ReLU
  twice), max-pooling, nearest upsampling + conv, *additive* skips, linear 1x1 output.
* :class:`ResUNet`: residual UNet, a strided conv down-samples, two residual blocks per level
  (``out += identity`` then an in-place ReLU), transposed convs up, concatenating skips,
  tanh output.
* :class:`NextUNet`: a small UNet whose blocks work channels-last inside (depthwise conv,
  permute, LayerNorm, Linear MLP, permute back, layer scale), as ConvNeXt blocks do.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_block(cin: int, cout: int, norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c in (cin, cout):
        layers += [nn.Conv2d(c, cout, 3, padding=1, bias=not norm)]
        if norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class CareUNet(nn.Module):
    """CARE-style UNet: two convolutions per level, additive skips."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, depth: int = 2,
                 ngf: int = 16, norm: bool = True) -> None:
        super().__init__()
        chans = [ngf * 2**k for k in range(depth + 1)]
        self.enc = nn.ModuleList(
            _conv_block(in_channels if k == 0 else chans[k - 1], chans[k], norm)
            for k in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.bottom = _conv_block(chans[depth - 1], chans[depth], norm)
        self.up = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                          nn.Conv2d(chans[k + 1], chans[k], 3, padding=1))
            for k in reversed(range(depth)))
        self.dec = nn.ModuleList(_conv_block(chans[k], chans[k], norm)
                                 for k in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        skips = []
        for block in self.enc:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(up(x) + skip)
        return self.head(x)


class ResBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the (projected) input, then ReLU (torchvision's order)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.proj = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        identity = x if self.proj is None else self.proj(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResUNet(nn.Module):
    """Residual UNet: strided-conv down, two residual blocks per level, concatenating skips."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, depth: int = 3,
                 ngf: int = 16) -> None:
        super().__init__()
        chans = [ngf * 2**k for k in range(depth + 1)]
        self.stem = nn.Conv2d(in_channels, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.enc = nn.ModuleList()
        self.enc.append(nn.Sequential(ResBlock(chans[0], chans[0]), ResBlock(chans[0], chans[0])))
        for k in range(1, depth + 1):
            self.down.append(nn.Conv2d(chans[k - 1], chans[k], 3, stride=2, padding=1))
            self.enc.append(nn.Sequential(ResBlock(chans[k], chans[k]),
                                          ResBlock(chans[k], chans[k])))
        self.up = nn.ModuleList(nn.ConvTranspose2d(chans[k + 1], chans[k], 2, stride=2)
                                for k in reversed(range(depth)))
        self.dec = nn.ModuleList(nn.Sequential(ResBlock(2 * chans[k], chans[k]),
                                               ResBlock(chans[k], chans[k]))
                                 for k in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self.enc[0](self.stem(x))
        skips = [x]
        for down, enc in zip(self.down, self.enc[1:]):
            x = enc(down(x))
            skips.append(x)
        skips.pop()
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        return torch.tanh(self.head(x))


class NextBlock(nn.Module):
    """A ConvNeXt-style block: depthwise 7x7, then LayerNorm and an MLP channels-last."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(self.act(self.fc1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class NextUNet(nn.Module):
    """Two-level UNet of :class:`NextBlock` s (channels-last taps must not be listed)."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, ngf: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, ngf, 3, padding=1)
        self.enc = NextBlock(ngf)
        self.down = nn.Conv2d(ngf, 2 * ngf, 2, stride=2)
        self.mid = NextBlock(2 * ngf)
        self.up = nn.ConvTranspose2d(2 * ngf, ngf, 2, stride=2)
        self.dec = NextBlock(ngf)
        self.head = nn.Conv2d(ngf, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        s = self.enc(self.stem(x))
        x = self.up(self.mid(self.down(s)))
        return self.head(self.dec(x + s))
