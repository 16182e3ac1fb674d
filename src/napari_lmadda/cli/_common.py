"""Helpers shared by the ``lmadda`` sub-commands (not a sub-command itself).

Option groups used by several commands (adaptation hyper-parameters), cooperative Ctrl-C,
and the formatting of durations and progress lines.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ImageReadError, OutputExistsError, OutputWriteError

__all__ = [
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


def add_domain_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--model``, ``--source`` and ``--target``: what every adaptation command needs."""
    parser.add_argument("--model", required=True, metavar="SRC.pt",
                        help="source model file (napari-lmadda .pt, pix2pix latest_net_G.pth, "
                             "or 'demo')")
    parser.add_argument("--source", type=Path, required=True,
                        help="folder of unlabeled source-microscope images")
    parser.add_argument("--target", type=Path, required=True,
                        help="folder of unlabeled new-microscope images")


def _int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    return v


def add_adapt_options(parser: argparse.ArgumentParser) -> None:
    """Add the adaptation hyper-parameters shared by ``adapt`` and ``sweep``.

    Every option defaults to None, meaning "the :class:`AdaptConfig` default"; validation
    happens in :class:`AdaptConfig` so the messages are the same as in the library.
    """
    from ..adapt.config import ADABN_LAYERS, ADABN_STATS, CRITERIA, AdaptConfig

    d = AdaptConfig()
    g = parser.add_argument_group("adaptation options (defaults: AdaptConfig)")
    g.add_argument("--steps", type=_int, default=None, help=f"training steps ({d.steps})")
    g.add_argument("--lr-g", type=float, default=None, help=f"learning rate of G' ({d.lr_g:g})")
    g.add_argument("--lr-d", type=float, default=None, help=f"learning rate of D ({d.lr_d:g})")
    g.add_argument("--batch", type=_int, default=None,
                   help=f"patches per domain and step ({d.batch_size})")
    g.add_argument("--patch", type=_int, default=None,
                   help=f"patch side, a multiple of 2**num_downs ({d.patch_size})")
    g.add_argument("--eval-every", type=_int, default=None,
                   help=f"steps between evaluations of the label-free criterion ({d.eval_every})")
    g.add_argument("--criterion", choices=CRITERIA, default=None,
                   help=f"label-free criterion that picks the kept state ({d.criterion})")
    g.add_argument("--patience", type=_int, default=None,
                   help="stop after this many evaluations without improvement (off)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (auto)")
    g.add_argument("--apma-parts", default=None, metavar="PARTS",
                   help="apma: 'all' or parts joined by '+' from en, de_feat, de_pred "
                        f"(e.g. en+de_feat) ({d.apma_parts})")
    g.add_argument("--apma-rec-weight", type=float, default=None,
                   help=f"apma: weight of the reconstruction loss ({d.apma_rec_weight:g})")
    g.add_argument("--adabn-stats", choices=ADABN_STATS, default=None,
                   help="adabn: exact statistics over all target patches, or a running "
                        f"average ({d.adabn_stats})")
    g.add_argument("--adabn-layers", choices=ADABN_LAYERS, default=None,
                   help="adabn with --layer: BatchNorms of layers <= the largest given (upto), "
                        f"or of exactly the given layers (listed) ({d.adabn_layers})")
    g.add_argument("--scgan-ngf", type=_int, default=None,
                   help=f"scgan: translator width ({d.scgan_ngf}; CycleGAN uses 64)")
    g.add_argument("--scgan-blocks", type=int, default=None,
                   help=f"scgan: translator residual blocks ({d.scgan_blocks})")
    g.add_argument("--scgan-crop", type=int, default=None,
                   help=f"scgan: train on random crops of this side, 0 = whole patches "
                        f"({d.scgan_crop})")


def adapt_config_from_args(args: argparse.Namespace, **overrides: Any):
    """Build an :class:`AdaptConfig` from the options of :func:`add_adapt_options`."""
    from ..adapt.config import AdaptConfig

    kw: dict[str, Any] = {}
    for opt, field in (("steps", "steps"), ("lr_g", "lr_g"), ("lr_d", "lr_d"),
                       ("batch", "batch_size"), ("patch", "patch_size"),
                       ("eval_every", "eval_every"), ("criterion", "criterion"),
                       ("patience", "patience"), ("apma_parts", "apma_parts"),
                       ("apma_rec_weight", "apma_rec_weight"), ("adabn_stats", "adabn_stats"),
                       ("adabn_layers", "adabn_layers"), ("scgan_ngf", "scgan_ngf"),
                       ("scgan_blocks", "scgan_blocks"), ("scgan_crop", "scgan_crop")):
        v = getattr(args, opt, None)
        if v is not None:
            kw[field] = v
    kw["device"] = args.device
    if getattr(args, "seed", None) is not None:
        kw["seed"] = args.seed
    kw.update(overrides)
    return AdaptConfig(**kw)


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
