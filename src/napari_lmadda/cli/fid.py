"""``lmadda fid``: FID and KID between two image folders on the project's UNet features."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..options import add_arguments as add_arguments_of
from ..options import check_args, option

NAME = "fid"
HELP = (
    "FID and KID between two image folders (e.g. source and new-microscope images), on "
    "globally pooled features of a project UNet layer; no ground truth or download needed."
)


@dataclass(kw_only=True)
class FidArgs:
    """The options of ``fid``."""

    a: Path = option(help="first image folder (e.g. source-microscope images)", flag="--a",
                     metavar="DIR")
    b: Path = option(help="second image folder (e.g. new-microscope images)", flag="--b",
                     metavar="DIR")
    model: str | None = option(None, "source model: its normalisation, and its bottleneck as "
                               "the feature layer; an SCGAN model translates --b images first",
                               flag="--model", metavar="M.pt",
                               default_text="the bundled demo model; with --arch, the weights "
                               "of --arch")
    weights: str | None = option(None, "another feature network: a napari-lmadda or pix2pix "
                                 "model file (loaded weights-only); with --arch, the weights "
                                 "of --arch (as in every command)", flag="--weights",
                                 metavar="W.pt", default_text="the source model")
    layer: str | None = option(None, "feature layer of the feature network: a number or a "
                               "name (a module name of an --arch network)", flag="--layer",
                               metavar="L", default_text="its bottleneck (the deepest tap of "
                               "an --arch network)")
    tile: int = option(128, "tile side; every tile gives one feature vector", flag="--tile",
                       low=1)
    subsets: int = option(100, "KID subsets", flag="--subsets", low=1)
    subset_size: int = option(1000, "KID feature vectors per subset", flag="--subset-size",
                              low=2, default_text="1000, capped at the set size")
    seed: int = option(0, "seed of the KID subsets", flag="--seed")
    device: str = option("cpu", "auto, cpu, cuda, cuda:N or mps", flag="--device")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``fid`` to its parser."""
    from ._arch import add_arch_arguments

    add_arguments_of(parser, FidArgs)
    # --weights is fid's own (above): with --arch it holds the weights of --arch
    add_arch_arguments(parser, names=("arch", "arch_kwargs", "allow_code", "input_size",
                                      "percentiles"))


def run(args: argparse.Namespace) -> int:
    """Compute and print FID and KID."""
    from ..adapt.engine import layer_resolver, parse_layers
    from ..devices import resolve_device
    from ..errors import ConfigError
    from ..evaluation.fid import default_feature_layer, fid_kid
    from ..models.translated import TranslatedModel
    from ._arch import load_cli_model
    from ._common import check_folder, load_model_one_line

    check_args(args, FidArgs)
    a = check_folder(args.a, "--a")
    b = check_folder(args.b, "--b")
    device = str(resolve_device(args.device))
    if args.arch:  # --weights (or --model) are the weights of --arch, as in every command
        model, weights = load_cli_model(args, device), None
    else:
        plain = argparse.Namespace(**{**vars(args), "weights": None,
                                      "model": args.model or "demo"})
        model = load_cli_model(plain, device)
        weights = (load_model_one_line(args.weights, device) if args.weights is not None
                   else None)
    net = weights if weights is not None else model
    net = net.unet if isinstance(net, TranslatedModel) else net
    if args.layer is None:
        layer = default_feature_layer(net)
    else:
        layers = parse_layers(args.layer, net.num_layers, layer_resolver(net))
        if len(layers) != 1:
            raise ConfigError(f"--layer {args.layer}: give one feature layer")
        layer = layers[0]
    res = fid_kid(a, b, model=model, weights=weights, layer=layer, tile=args.tile,
                  subsets=args.subsets, subset_size=args.subset_size, seed=args.seed,
                  device=device)
    print(f"FID {res.fid:.6g}")
    print(f"KID {res.kid_mean:.6g} +- {res.kid_std:.3g}")
    name = f" ({net.layer_name(res.layer)})" if hasattr(net, "layer_index") else ""
    print(f"({res.n_a} vs {res.n_b} feature vectors of {res.dims} dims at layer "
          f"{res.layer}{name})")
    return 0
