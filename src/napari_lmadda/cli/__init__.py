"""The ``lmadda`` command: one entry point, one module per sub-command.

Each sub-command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. Errors of the project's own type, and the operating system's errors
about files (permission denied, disk full, not a folder, ...), are printed as one line (no
traceback) and give exit code 2; warnings are printed as one line each.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence

from ..errors import LmaddaError

# sub-command modules, in the order `lmadda --help` lists them
_COMMANDS = [
    "demo",
    "train_source",
    "adapt",
    "predict",
    "sweep",
    "recommend_layer",
    "layers",
    "evaluate",
    "make_synthetic",
    "fid",
    "export_bioimageio",
]


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available sub-command."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="lmadda",
        description="Adapt a microscopy image-translation UNet to a new microscope (LM-ADDA).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for modname in _COMMANDS:
        try:
            mod = importlib.import_module(f"{__name__}.{modname}")
        except ModuleNotFoundError as exc:  # a sub-command not written yet
            if exc.name == f"{__name__}.{modname}":
                continue
            raise
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        # the memory hint names only size options the command has
        sizes = [o for o in ("--tile", "--batch", "--patch", "--chunk")
                 if any(o in a.option_strings for a in p._actions)]
        p.set_defaults(_run=mod.run, _size_options=sizes)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lmadda`` command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        The process exit code (0 success, 1 cancelled/failed work, 2 bad input).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    prefix = f"lmadda {args.command}"

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        print(f"{prefix}: warning: {text}", file=sys.stderr, flush=True)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning  # one line, without the source line
            return int(args._run(args) or 0)
    except LmaddaError as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the project did not wrap: still one line, no traceback
        where = f": '{exc.filename}'" if exc.filename else ""
        print(f"{prefix}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except MemoryError:
        sizes = getattr(args, "_size_options", [])
        hint = (f" (try a smaller {', '.join(sizes[:-1])}{' or ' if len(sizes) > 1 else ''}"
                f"{sizes[-1]})") if sizes else ""
        print(f"{prefix}: error: out of memory{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
