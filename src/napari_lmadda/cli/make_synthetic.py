"""``lmadda make-synthetic``: write a synthetic domain (input + DAPI + CD29 targets) to disk."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "make-synthetic"
HELP = (
    "Write synthetic MSC-like fields of one domain (input, DAPI and CD29 targets) as float32 "
    "TIFF files."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``make-synthetic`` to its parser."""
    from ..data.synthetic import DEFAULT_MAGNITUDE, MODALITIES, SHIFTS

    defaults = ", ".join(
        f"{k} {v:g}" for k, v in DEFAULT_MAGNITUDE.items() if k not in ("none", "brightfield")
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--n", type=int, default=20, help="number of fields (default 20)")
    parser.add_argument("--size", type=int, default=256, help="field size in pixels (default 256)")
    parser.add_argument(
        "--modality", choices=MODALITIES, default="phase", help="input modality (default phase)"
    )
    parser.add_argument(
        "--shift", choices=sorted(SHIFTS), default="none", help="domain shift (default none)"
    )
    parser.add_argument(
        "--magnitude",
        type=float,
        default=None,
        help=f"shift strength (defaults: {defaults})",
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument(
        "--density", type=float, default=1.0, help="cell density multiplier (default 1)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")


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
