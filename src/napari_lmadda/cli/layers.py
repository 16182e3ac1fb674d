"""``lmadda layers``: list the layers (taps) of a model that ``--layer`` accepts.

For the project's UNet (and pix2pix files) the layers ``1..2N``; for a network given with
``--arch`` every module call whose output is an image tensor, in the order they run, with
the parameters that train when matching there (see :mod:`napari_lmadda.models.tapped`).
``*`` marks their levels (the last tap at each resolution), which recommend-layer compares.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..options import add_arguments as add_arguments_of
from ..options import option

NAME = "layers"
HELP = ("List the layers of a model that --layer accepts (number, name, channels, size, "
        "trainable parameters); any PyTorch network with --arch.")


@dataclass(kw_only=True)
class LayersArgs:
    """The options of ``layers``."""

    model: str | None = option(None, "model file (napari-lmadda .pt, pix2pix, bioimage.io "
                               "package, or 'demo')", flag="--model", metavar="MODEL.pt",
                               default_text="required unless --arch")
    size: int = option(256, "input side for the shapes shown", flag="--size", low=1)
    levels: bool = option(False, "only the levels (the last tap at each resolution)",
                          flag="--levels")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``layers`` to its parser."""
    from ._arch import add_arch_arguments

    add_arguments_of(parser, LayersArgs)
    add_arch_arguments(parser, names=("arch", "arch_kwargs", "weights", "allow_code",
                                      "input_size"))


def run(args: argparse.Namespace) -> int:
    """Print the table of taps."""
    from ..errors import ConfigError
    from ..models.tapped import list_taps
    from ._arch import load_cli_model

    model = load_cli_model(args, "cpu", need_weights=False)
    if args.size % model.min_size:
        raise ConfigError(f"--size {args.size} must be a multiple of {model.min_size} for "
                          "this model")
    taps = list_taps(model, args.size)
    levels_of = getattr(model, "level_layers", None)
    levels = set(levels_of()) if levels_of is not None else set()
    shown = [t for t in taps if t.index in levels] if args.levels and levels else taps
    width = max(len(t.name) for t in shown)
    print(f"{'':1} {'layer':>5}  {'name':<{width}}  {'module':<16} {'channels':>8}  "
          f"{'size':>9}  {'trained when matched here':>25}")
    for t in shown:
        mark = "*" if t.index in levels else " "
        size = f"{t.height}x{t.width}"
        print(f"{mark} {t.index:>5}  {t.name:<{width}}  {t.kind:<16} {t.channels:>8}  "
              f"{size:>9}  {t.params_upto:>25,}")
    print(f"{model.num_layers} layers; inputs must be multiples of {model.min_size} px; "
          "--layer takes the number or the name")
    return 0
