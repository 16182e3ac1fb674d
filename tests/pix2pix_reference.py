"""A nested UNet written to pix2pix's published block structure, for equivalence tests only.

It follows the facts in REFERENCE.md (block order, in-place activations, key layout of
``UnetSkipConnectionBlock``); it is test scaffolding, not part of the package.
"""

import torch
from torch import nn


class NestedBlock(nn.Module):
    def __init__(
        self,
        outer,
        inner,
        input_nc=None,
        sub=None,
        outermost=False,
        innermost=False,
        norm="batch",
        dropout=False,
    ):
        super().__init__()
        self.outermost = outermost
        bias = norm == "instance"
        input_nc = outer if input_nc is None else input_nc

        def nrm(c):
            if norm == "batch":
                return nn.BatchNorm2d(c)
            if norm == "instance":
                return nn.InstanceNorm2d(c)
            return nn.Identity()

        downconv = nn.Conv2d(input_nc, inner, 4, 2, 1, bias=bias)
        if outermost:
            seq = [
                downconv,
                sub,
                nn.ReLU(True),
                nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1),
                nn.Tanh(),
            ]
        elif innermost:
            seq = [
                nn.LeakyReLU(0.2, True),
                downconv,
                nn.ReLU(True),
                nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=bias),
                nrm(outer),
            ]
        else:
            seq = [
                nn.LeakyReLU(0.2, True),
                downconv,
                nrm(inner),
                sub,
                nn.ReLU(True),
                nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=bias),
                nrm(outer),
            ]
            if dropout:
                seq.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class NestedUnet(nn.Module):
    def __init__(self, input_nc, output_nc, num_downs, ngf=64, norm="batch", use_dropout=False):
        super().__init__()
        b = NestedBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            b = NestedBlock(ngf * 8, ngf * 8, sub=b, norm=norm, dropout=use_dropout)
        b = NestedBlock(ngf * 4, ngf * 8, sub=b, norm=norm)
        b = NestedBlock(ngf * 2, ngf * 4, sub=b, norm=norm)
        b = NestedBlock(ngf, ngf * 2, sub=b, norm=norm)
        self.model = NestedBlock(
            output_nc, ngf, input_nc=input_nc, sub=b, outermost=True, norm=norm
        )

    def forward(self, x):
        return self.model(x)
