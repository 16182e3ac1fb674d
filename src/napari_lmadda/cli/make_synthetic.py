"""``lmadda make-synthetic``: write a synthetic domain (input + DAPI + CD29 targets) to disk."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..data.synthetic import DEFAULT_MAGNITUDE, MODALITIES, SHIFTS
from ..options import add_arguments as add_arguments_of
from ..options import option

NAME = "make-synthetic"
HELP = (
    "Write synthetic MSC-like fields of one domain (input, DAPI and CD29 targets) as float32 "
    "TIFF files."
)


_DEFAULT_MAGNITUDES = ", ".join(
    f"{k} {v:g}" for k, v in DEFAULT_MAGNITUDE.items() if k not in ("none", "brightfield"))


@dataclass(kw_only=True)
class MakeSyntheticArgs:
    """The options of ``make-synthetic``."""

    out: Path = option(help="output folder", flag="--out")
    n: int = option(20, "number of fields", flag="--n", default_text="default 20")
    size: int = option(256, "field size in pixels", flag="--size", default_text="default 256")
    modality: str = option("phase", "input modality", flag="--modality", choices=MODALITIES,
                           default_text="default phase")
    shift: str = option("none", "domain shift", flag="--shift", choices=tuple(sorted(SHIFTS)),
                        default_text="default none")
    magnitude: float | None = option(None, "shift strength", flag="--magnitude",
                                     default_text=f"defaults: {_DEFAULT_MAGNITUDES}")
    seed: int = option(0, "base seed", flag="--seed", default_text="default 0")
    density: float = option(1.0, "cell density multiplier", flag="--density",
                            default_text="default 1")
    overwrite: bool = option(False, "replace existing files", flag="--overwrite")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``make-synthetic`` to its parser (:class:`MakeSyntheticArgs`)."""
    add_arguments_of(parser, MakeSyntheticArgs)


def run(args: argparse.Namespace) -> int:
    """Write the domain and print where it went."""
    from ..data.synthetic import write_domain
    from ..errors import ConfigError

    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out '{args.out}' is a file; give a folder")
    paths = write_domain(
        args.out,
        args.n,
        overwrite=args.overwrite,
        modality=args.modality,
        shift=args.shift,
        magnitude=args.magnitude,
        size=args.size,
        seed=args.seed,
        density=args.density,
    )
    mag = "" if args.magnitude is None else f" {args.magnitude:g}"
    print(
        f"wrote {args.n} synthetic field(s) of {args.size}x{args.size} px "
        f"({args.modality}, shift {args.shift}{mag}, seed {args.seed}):"
    )
    for key, path in paths.items():
        print(f"  {key:6s} {path}")
    return 0
