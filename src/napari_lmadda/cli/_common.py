"""Helpers shared by the ``lmadda`` sub-commands (not a sub-command itself).

Option groups used by several commands (the source model and images, the adaptation
hyper-parameters), cooperative Ctrl-C, and the formatting of durations and progress lines.
Options are declared once, with their help and range (:mod:`napari_lmadda.options`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ImageReadError, OutputExistsError, OutputWriteError
from ..options import add_arguments, option, values_from_args

__all__ = [
    "DomainArgs",
    "add_domain_arguments",
    "add_adapt_options",
    "adapt_config_from_args",
    "cancel_on_sigint",
    "check_folder",
    "check_new_file",
    "fmt_duration",
    "fmt_float",
    "load_model_one_line",
    "make_parent",
    "make_output_folder",
]


def fmt_duration(seconds: float) -> str:
    """``75.2`` -> ``"1m15s"``; ``3720`` -> ``"1h02m"``; ``nan``/negative -> ``"?"``."""
    if not seconds == seconds or seconds < 0 or seconds == float("inf"):  # nan / inf
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def fmt_float(value: float | None, digits: int = 4) -> str:
    """Format a float with ``digits`` significant digits; ``-`` for None/nan."""
    if value is None or value != value:
        return "-"
    return f"{value:.{digits}g}"


def check_folder(path: Path, option: str) -> Path:
    """Raise a one-line :class:`ImageReadError` unless ``path`` is an existing folder or file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ImageReadError(f"{option} '{p}' does not exist")
    return p


def check_new_file(path: Path, option: str, overwrite: bool) -> Path:
    """Check an output file may be written: refuse to replace it unless ``overwrite``."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"{option} '{p}' is a folder; give a file name such as model.pt")
    if p.exists() and not overwrite:
        raise OutputExistsError(f"{option} '{p}' already exists (use --overwrite to replace it)")
    return p


def make_parent(path: Path, option: str) -> Path:
    """Create the folder of an output file before a long run, not when saving at its end."""
    make_output_folder(path.parent, f"the folder of {option} '{path}'")
    return path


def make_output_folder(folder: Path, what: str) -> Path:
    """Create an output folder and check a file can be written in it, before any work.

    Raises
    ------
    ConfigError
        The folder cannot be created (e.g. a file has its name).
    OutputWriteError
        The folder is read-only (or the disk is full).
    """
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {what}: {exc.strerror or exc}") from None
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputWriteError(
            f"cannot write into {what} ('{folder}'): {exc.strerror or exc}"
        ) from None
    return folder


def load_model_one_line(path: str | Path, device: str = "cpu") -> Any:
    """:func:`~napari_lmadda.models.checkpoint.load_model`, with a one-line error message.

    torch's unpickling errors span several lines; the CLI prints errors as one line.
    """
    from ..errors import CheckpointError
    from ..models.checkpoint import load_model

    try:
        return load_model(path, device=device)
    except CheckpointError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        if len(lines) <= 1 and len(str(exc)) <= 300:
            raise
        first = lines[0] if lines else str(exc)
        raise CheckpointError((first[:297] + "...") if len(first) > 300 else first) from None


@dataclass(kw_only=True)
class DomainArgs:
    """``--model``, ``--source`` and ``--target``: what every adaptation command needs."""

    model: str = option(help="source model file (napari-lmadda .pt, pix2pix latest_net_G.pth, "
                        "or 'demo')", flag="--model", metavar="SRC.pt")
    source: Path = option(help="folder of unlabeled source-microscope images", flag="--source")
    target: Path = option(help="folder of unlabeled new-microscope images", flag="--target")


def add_domain_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--model``, ``--source`` and ``--target`` (:class:`DomainArgs`)."""
    add_arguments(parser, DomainArgs)


#: the AdaptConfig options ``adapt`` and ``sweep`` put on the command line (in this order)
ADAPT_FLAGS = ("steps", "lr_g", "lr_d", "batch_size", "patch_size", "eval_every", "criterion",
               "patience", "device", "apma_parts", "apma_rec_weight", "adabn_stats",
               "adabn_layers", "scgan_ngf", "scgan_blocks", "scgan_crop")


def add_adapt_options(parser: argparse.ArgumentParser) -> None:
    """Add the adaptation hyper-parameters shared by ``adapt`` and ``sweep``.

    Flags, help and choices come from the :class:`AdaptConfig` fields (:data:`ADAPT_FLAGS`).
    Every option defaults to None, meaning "the :class:`AdaptConfig` default"; validation
    happens in :class:`AdaptConfig` so the messages are the same as in the library.
    """
    from ..adapt.config import AdaptConfig

    g = parser.add_argument_group("adaptation options (defaults: AdaptConfig)")
    add_arguments(g, AdaptConfig, names=ADAPT_FLAGS, config_defaults=True)


def adapt_config_from_args(args: argparse.Namespace, **overrides: Any):
    """An :class:`AdaptConfig` from the parsed flags of its fields (given ones only)."""
    from ..adapt.config import AdaptConfig

    return AdaptConfig(**{**values_from_args(args, AdaptConfig), **overrides})


@contextmanager
def cancel_on_sigint(what: str = "the run") -> Iterator[Callable[[], bool]]:
    """Turn the first Ctrl-C into a cooperative cancel; the second one aborts.

    Yields
    ------
    callable
        ``cancel()`` -> True once Ctrl-C was pressed; pass it as the engine's ``cancel``.
    """
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag.is_set
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()
        print(f"\nstopping {what} (keeping the best state so far); press Ctrl-C again to abort",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag.is_set
    finally:
        signal.signal(signal.SIGINT, previous)
