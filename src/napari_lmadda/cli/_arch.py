"""The model options of every command that loads a model: ``--model``, or architecture code.

``--model FILE`` loads a project model file, a pix2pix ``latest_net_G.pth`` or a bioimage.io
package as data (no code runs). Any other PyTorch image-to-image network comes as
``--arch path/to/file.py:ClassName [--arch-kwargs JSON] --weights w.pt``: that file is Python
code and runs because the user named it (see :mod:`napari_lmadda.models.arch`). A project
model file made from such a network is reloaded with the same ``--arch`` and ``--model``
(or ``--weights``) set to the file. ``--arch file.torchscript.pt`` loads a TorchScript network
(predict only). A bioimage.io package's own architecture file runs only with
``--allow-code``. ``--percentiles`` and ``--channel-names`` set what the weights do not carry.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..options import add_arguments, option

__all__ = ["ArchArgs", "add_arch_arguments", "load_cli_model", "MODEL_FLAGS"]

#: every flag of :class:`ArchArgs`, for the commands that take them all
MODEL_FLAGS = ("arch", "arch_kwargs", "weights", "allow_code", "input_size", "percentiles",
               "channel_names")


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in str(text).split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers LOW,HIGH, got {text!r}") from None
    if not 0 <= lo < hi <= 100:
        raise argparse.ArgumentTypeError(f"expected 0 <= LOW < HIGH <= 100, got {text!r}")
    return lo, hi


@dataclass(kw_only=True)
class ArchArgs:
    """Options that build a model from architecture code, or complete a model's metadata."""

    arch: str | None = option(
        None, "build the model from this architecture: path/to/file.py:ClassName (RUNS that "
        "file), a bioimage.io package (RUNS its architecture file) or a TorchScript file "
        "(predict only)", flag="--arch", metavar="FILE.py:CLASS")
    arch_kwargs: str | None = option(None, "keyword arguments of the --arch class, as JSON",
                                     flag="--arch-kwargs", metavar="JSON")
    weights: Path | None = option(None, "weights of --arch: a state dict (.pt/.pth), loaded "
                                  "as data", flag="--weights", metavar="W.pt")
    allow_code: bool = option(False, "run the architecture file inside the bioimage.io "
                              "package given as --model (Python code: only for packages you "
                              "trust)", flag="--allow-code")
    input_size: int = option(256, "side of the example input that finds the taps of an "
                             "--arch network", flag="--input-size", low=1)
    percentiles: tuple[float, float] | None = option(
        None, "input normalisation percentiles LOW,HIGH (overrides the model's)",
        flag="--percentiles", metavar="LOW,HIGH", cli_type=_pair,
        default_text="the model's, else 1,99.8")
    channel_names: str | None = option(None, "names of the output channels (overrides the "
                                       "model's)", flag="--channel-names", metavar="A,B")


def add_arch_arguments(parser: argparse.ArgumentParser, names: Any = MODEL_FLAGS) -> None:
    """Add the :class:`ArchArgs` flags ``names`` to a command's parser."""
    add_arguments(parser.add_argument_group("model from architecture code"), ArchArgs,
                  names=names)


def _kwargs(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--arch-kwargs is not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ConfigError("--arch-kwargs must be a JSON object, e.g. '{\"depth\": 3}'")
    return value


def load_cli_model(args: argparse.Namespace, device: str = "cpu", *,
                   need_weights: bool = True) -> Any:
    """The model a command's flags name (one-line errors), with its metadata overrides.

    ``--arch`` builds from code (``--weights`` or ``--model`` holding the weights; untrained
    without them if not ``need_weights``); otherwise ``--model`` is loaded as data
    (``--allow-code`` lets a bioimage.io package's architecture file run).
    """
    from ..bioimageio.load import is_bioimageio_package
    from ..models.arch import ScriptedModel, is_torchscript, load_arch, load_bioimageio_tapped
    from ._common import load_model_one_line

    arch = getattr(args, "arch", None)
    model_path = getattr(args, "model", None)
    weights = getattr(args, "weights", None)
    size = getattr(args, "input_size", 256)
    if arch:
        if weights is not None and model_path is not None:
            raise ConfigError("give the weights of --arch as --weights or --model, not both")
        if ":" not in Path(arch).name and is_torchscript(arch):
            model = ScriptedModel(Path(arch).expanduser()).to(device)
        elif ":" not in Path(arch).name and is_bioimageio_package(arch):
            model = load_bioimageio_tapped(arch, weights=weights or model_path,
                                           input_size=size, device=device)
        else:
            if need_weights and weights is None and model_path is None:
                raise ConfigError(f"--arch {arch} needs its trained weights: --weights W.pt")
            model = load_arch(arch, kwargs=_kwargs(getattr(args, "arch_kwargs", None)),
                              weights=weights if weights is not None else model_path,
                              input_size=size, device=device)
    elif weights is not None:
        raise ConfigError("--weights needs --arch file.py:ClassName (the architecture of "
                          "those weights)")
    elif model_path is None:
        raise ConfigError("give --model (a model file) or --arch file.py:Class --weights w.pt")
    elif getattr(args, "allow_code", False):
        if not is_bioimageio_package(model_path):
            raise ConfigError(f"--allow-code: '{model_path}' is not a bioimage.io package")
        model = load_bioimageio_tapped(model_path, input_size=size, device=device)
    else:
        model = load_model_one_line(model_path, device)
    _override_meta(model, args)
    return model


def _override_meta(model: Any, args: argparse.Namespace) -> None:
    meta = getattr(model, "meta", None)
    if meta is None:
        return
    pct = getattr(args, "percentiles", None)
    if pct is not None:
        meta["input_percentiles"] = [float(pct[0]), float(pct[1])]
    names = getattr(args, "channel_names", None)
    if names:
        parts = [s.strip() for s in names.split(",") if s.strip()]
        cout = int(model.config.out_channels)
        if len(parts) != cout:
            raise ConfigError(f"--channel-names gives {len(parts)} name(s) for a model with "
                              f"{cout} output channel(s)")
        meta["channel_names"] = parts
