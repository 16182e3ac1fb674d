"""The project's model file: weights + architecture + provenance in one ``.pt`` file.

The file is a ``torch.save`` of plain containers (dicts, lists, strings, numbers, tensors), so
it loads with ``torch.load(..., weights_only=True)``: a model file received by e-mail is data,
never code. pix2pix ``latest_net_G.pth`` state dicts load too; their architecture is
detected from the keys and shapes.

Layout::

    {"format": "napari-lmadda-model", "format_version": 1,
     "arch": {UNetConfig fields}, "state_dict": {...},
     "meta": {"channel_names": [...], "input_percentiles": [lo, hi],
              "target_range": [lo, hi], "provenance": {...}}}

Format versions (a file is written with the lowest version that can describe it, so older
readers keep reading what they can, and refuse the rest with their "written by a newer
napari-lmadda" message instead of mis-loading it):

1. A plain UNet whose outputs map to one ``target_range: [lo, hi]`` for every channel.
2. An image-level adapted model (:class:`~napari_lmadda.models.translated.TranslatedModel`,
   made by SCGAN): ``"arch"`` stays the source UNet's, a ``"translator"`` record holds the
   translator's architecture, and the state dict holds both networks (``translator.*`` and
   ``unet.*`` keys).
3. A model whose targets were normalised per output channel
   (:class:`~napari_lmadda.data.normalize.TargetNorm`): ``target_range`` is a list of one
   ``[lo, hi]`` per channel and ``target_norm`` says how they were chosen and whether
   decoded predictions are in the targets' units or per-image normalised units. A version-2
   reader would refuse the per-channel ranges as damaged, or, worse, ignore
   ``target_norm: {"units": "normalised"}`` and present normalised values as stain units;
   hence a new version. A ``"translator"`` record may appear in version 3 too.
4. A network built from the user's architecture code
   (:class:`~napari_lmadda.models.tapped.TappedModel`, see :mod:`~napari_lmadda.models.arch`):
   ``"arch"`` holds a *reference* to that code (file, class, keyword arguments, sha256) and
   the traced input size and channels, the state dict its weights; the metadata are those of
   version 3 (per-channel ``target_range``, ``target_norm``). Loading it here is refused with
   a message naming the ``--arch`` that rebuilds it: opening a file never runs code. A
   version-3 reader would read the reference as a UNet architecture with default fields,
   hence a version of its own. (Files written by the development branch before this version
   existed say version 3 with such a reference; they are recognised and refused alike.)
"""

from __future__ import annotations

import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..data.normalize import DEFAULT_PERCENTILES, TargetNorm
from ..errors import CheckpointError, ConfigError, LmaddaError
from ..memory import fmt_bytes, memory_budget
from .pix2pix import detect_pix2pix_config, is_pix2pix_state_dict, pix2pix_to_flat
from .tapped import TappedModel
from .translated import TranslatedModel, Translator, TranslatorConfig
from .unet import NORMS, UNetConfig, UNetGenerator

__all__ = [
    "FORMAT",
    "validate_architecture",
    "file_version",
    "DEFAULT_META",
    "save_model",
    "load_model",
    "read_checkpoint",
    "atomic_torch_save",
]

FORMAT = "napari-lmadda-model"
FORMAT_VERSION = 4  # the newest version read; each file is written with the lowest that fits
_TRANSLATED_VERSION = 2
_TARGET_NORM_VERSION = 3
_CODE_VERSION = 4  # the architecture is user code: a reference is stored, never run here
DEFAULT_META: dict[str, Any] = {
    "channel_names": None,  # e.g. ["DAPI", "CD29"]; None -> "channel 0", ...
    "input_percentiles": list(DEFAULT_PERCENTILES),
    "target_range": [0.0, 1.0],  # tanh output [-1, 1] maps to this range
    "provenance": {},
}


# (type, low, high) of every UNetConfig field: a model file is data, checked before use
_INT_FIELDS = {"in_channels": (1, 64), "out_channels": (1, 64), "num_downs": (2, 12),
               "ngf": (1, 4096)}
#: Bytes per parameter while training: weights, gradients and Adam's two moments (float32).
_TRAIN_BYTES_PER_PARAM = 16


def validate_architecture(
    arch: Mapping[str, Any], *, path: Any = None, training: bool = False
) -> UNetConfig:
    """Check every architecture field (type and range) and the model's size against memory.

    Used when a model file is read and by ``train-source`` before a network is built, so a
    crafted or mistyped architecture (``ngf`` 1e9, ``"4"``, 4.5) is one line, never an
    overflow, a TypeError or gigabytes allocated.

    Parameters
    ----------
    arch : mapping
        :class:`UNetConfig` fields (unknown keys are ignored; missing ones take defaults).
    path : path-like, optional
        The model file, named in the message (errors are then :class:`CheckpointError`).
    training : bool
        Count the memory of training (weights, gradients, optimiser state), not only of
        the weights.

    Returns
    -------
    UNetConfig
        The architecture.

    Raises
    ------
    ConfigError
        A field of the wrong type or out of range, or a model larger than the memory budget
        (:class:`CheckpointError` when ``path`` is given).
    """
    def fail(msg: str) -> LmaddaError:
        if path is None:
            return ConfigError(msg)
        return CheckpointError(f"'{path}' declares an impossible architecture: {msg}")

    if not isinstance(arch, Mapping):
        raise fail(f"expected a mapping of architecture fields, got {type(arch).__name__}")
    for name, (lo, hi) in _INT_FIELDS.items():
        if name not in arch:
            continue
        v = arch[name]
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise fail(f"{name} must be a whole number in {lo}..{hi}, got {v!r}")
    if "norm" in arch and arch["norm"] not in NORMS:
        raise fail(f"norm must be one of {', '.join(NORMS)}, got {arch['norm']!r}")
    if "use_dropout" in arch and not isinstance(arch["use_dropout"], bool):
        raise fail(f"use_dropout must be true or false, got {arch['use_dropout']!r}")
    if "bias" in arch and arch["bias"] is not None and not isinstance(arch["bias"], bool):
        raise fail(f"bias must be true, false or None, got {arch['bias']!r}")
    try:
        cfg = UNetConfig.from_dict(dict(arch))
        with torch.device("meta"):  # shapes only: nothing is allocated
            n_params = sum(p.numel() for p in UNetGenerator(cfg).parameters())
    except (ConfigError, TypeError, ValueError, RuntimeError) as exc:
        raise fail(_one_line(exc)) from None
    per_param = _TRAIN_BYTES_PER_PARAM if training else 4
    need, budget = n_params * per_param, memory_budget()
    if need > budget:
        what = "training it needs" if training else "its weights need"
        raise fail(
            f"a UNet with {cfg.num_downs} down blocks and ngf {cfg.ngf} has {n_params:,} "
            f"parameters; {what} {fmt_bytes(need)}, more than the {fmt_bytes(budget)} of "
            "memory available (LMADDA_MEMORY_BUDGET)"
        )
    return cfg


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file in the same folder, then rename over ``path``.

    A crash or kill during the save leaves the old file (or none), never a partial one.

    Parameters
    ----------
    obj : object
        What to save (plain containers and tensors).
    path : path-like
        Destination.

    Returns
    -------
    Path
        The destination path.

    Raises
    ------
    CheckpointError
        The folder does not exist.
    OutputWriteError
        The folder is not writable or the disk is full; ``path`` is left as it was.
    """
    from ..data.io import atomic_write

    def _write(tmp: Path) -> None:
        # a Python file object: a full disk raises OSError (torch's own writer raises a
        # RuntimeError), which atomic_write turns into OutputWriteError
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)

    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CheckpointError(f"cannot save '{path}': folder '{folder}' does not exist")
    return atomic_write(path, _write, overwrite=True)


def save_model(
    model: UNetGenerator,
    path: str | os.PathLike,
    *,
    meta: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Save a model with its architecture and provenance (atomically).

    Parameters
    ----------
    model : UNetGenerator or TranslatedModel
        The model (a translated model is stored with its translator).
    path : path-like
        Destination ``.pt`` file.
    meta : mapping, optional
        Channel names, normalisation, ...; defaults to the model's own ``meta``.
    provenance : mapping, optional
        Merged into ``meta["provenance"]`` (data, training, method, ...).
    half : bool
        Store float tensors as float16 (half the size; loaded back as float32).

    Returns
    -------
    Path
        The written file.
    """
    m = {**DEFAULT_META, **getattr(model, "meta", {}), **(meta or {})}
    prov = {**m.get("provenance", {}), **(provenance or {})}
    prov.setdefault("library", f"napari-lmadda {__version__}")
    prov.setdefault("torch", torch.__version__)
    m["provenance"] = prov
    sd = {
        k: (
            v.detach().to("cpu", torch.float16)
            if half and v.is_floating_point()
            else v.detach().cpu()
        )
        for k, v in model.state_dict().items()
    }
    try:  # a file this project writes is one it can read back
        TargetNorm.from_meta(m, model.config.out_channels)
    except ConfigError as exc:
        raise ConfigError(f"cannot save '{path}': {exc}") from None
    payload = {
        "format": FORMAT,
        "format_version": file_version(m, isinstance(model, TranslatedModel)),
        "arch": model.config.to_dict(),
        "state_dict": sd,
        "meta": _plain(m),
    }
    if isinstance(model, TranslatedModel):
        payload["translator"] = model.translator.config.to_dict()
    if isinstance(model, TappedModel):
        payload["format_version"] = _CODE_VERSION
    return atomic_torch_save(payload, path)


def file_version(meta: Mapping[str, Any], translated: bool = False) -> int:
    """The lowest format version that describes a model with this metadata (module docs)."""
    rng = meta.get("target_range")
    per_channel = (isinstance(rng, list | tuple) and len(rng) > 0
                   and isinstance(rng[0], list | tuple))
    if per_channel or meta.get("target_norm") is not None:
        return _TARGET_NORM_VERSION
    return _TRANSLATED_VERSION if translated else 1


def _plain(obj: Any) -> Any:
    """Convert to containers that ``weights_only`` loading accepts (tuples -> lists)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, str):
        return str(obj)  # str subclasses (e.g. TorchVersion) are not weights_only-safe
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    return str(obj)


_ZIP_MAGIC = b"PK\x03\x04"
# torch.save's legacy (pre-1.6) format starts with a protocol-2 pickle of this magic number
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_FILE_KINDS = (
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89HDF", "an HDF5 file (a Keras/TensorFlow model?)"),
    (b"\x1f\x8b", "a gzip archive"),
)


def _one_line(text: object, limit: int = 160) -> str:
    """Return the first non-empty line of a (torch) message, shortened."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _describe_bytes(head: bytes) -> str:
    """Say what a file that is not a PyTorch file looks like, from its first bytes."""
    for magic, what in _FILE_KINDS:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"binary data starting with {head[:8]!r}"
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"text starting with {' '.join(text[:24].split())!r}"
    return f"data starting with {head[:8]!r}"


def _refused(path: Path, exc: Exception) -> CheckpointError:
    """Return the error for a pickle that the weights-only unpickler refused (nothing ran)."""
    msg = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", msg) or re.search(r"[Uu]nsupported class ([\w.]+)", msg)
    what = f"a Python object ({found.group(1)})" if found else "Python objects"
    return CheckpointError(
        f"refused to load '{path}': it holds {what} other than weights and plain containers, "
        "which could run code when unpickled; nothing was executed"
    )


#: A genuine model's pickle (names, shapes, metadata) is kilobytes; its weights are separate
#: zip entries. A larger pickle is a decompression bomb for the unpickler.
MAX_PICKLE_BYTES = 64 * 2**20


def _check_zip_sizes(path: Path, size: int, entries: list[zipfile.ZipInfo]) -> None:
    """Refuse a zip whose entries would inflate beyond memory, from its zip directory alone.

    ``torch.load`` inflates every entry in memory (the pickle first); the sizes the zip
    directory declares are what it will allocate.
    """
    total = sum(int(e.file_size) for e in entries)
    pickle_size = max((int(e.file_size) for e in entries if e.filename.endswith("data.pkl")),
                      default=0)
    budget = memory_budget()
    if pickle_size > MAX_PICKLE_BYTES:
        raise CheckpointError(
            f"refused to load '{path}': its pickle inflates to {fmt_bytes(pickle_size)} "
            f"(from a {fmt_bytes(size)} file); a model's pickle is a few kB, its weights are "
            "stored beside it"
        )
    if total > budget:
        raise CheckpointError(
            f"refused to load '{path}': its zip entries inflate to {fmt_bytes(total)} (from a "
            f"{fmt_bytes(size)} file), more than the {fmt_bytes(budget)} of memory a model may "
            "use here (LMADDA_MEMORY_BUDGET)"
        )


def _torch_load(path: Path) -> Any:
    """Run ``torch.load(weights_only=True)`` with one-line errors saying what the file is."""
    if not path.exists():
        raise CheckpointError(f"model file '{path}' does not exist")
    if path.is_dir():
        raise CheckpointError(f"'{path}' is a folder, not a model file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise CheckpointError(f"cannot read model file '{path}': {exc.strerror or exc}") from None
    if size == 0:
        raise CheckpointError(f"model file '{path}' is empty (0 bytes)")
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as zf:
                entries = zf.infolist()
                names = [e.filename for e in entries]
        except Exception:  # BadZipFile, EOFError, NotImplementedError (odd versions), ...
            raise CheckpointError(
                f"'{path}' is a truncated or damaged PyTorch file ({size} bytes; its zip "
                "directory is missing or corrupt)"
            ) from None
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            raise CheckpointError(
                f"'{path}' is a zip archive but not a PyTorch model file (no data.pkl among "
                f"its {len(names)} entries)"
            )
        _check_zip_sizes(path, size, entries)
    elif size > memory_budget():
        raise CheckpointError(
            f"'{path}' is {fmt_bytes(size)}, more than the {fmt_bytes(memory_budget())} of "
            "memory a model may use here (LMADDA_MEMORY_BUDGET)"
        )
    elif not head.startswith(_LEGACY_MAGIC):
        if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            raise CheckpointError(
                f"refused to load '{path}': it is a plain Python pickle, not a PyTorch model "
                "file (unpickling it could run code); nothing was executed"
            )
        raise CheckpointError(
            f"'{path}' is not a PyTorch model file: it looks like {_describe_bytes(head)}"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refused(path, exc) from None
    except Exception as exc:  # torch raises many types for damaged files
        reason = _one_line(exc) or type(exc).__name__
        raise CheckpointError(
            f"'{path}' is a truncated or damaged PyTorch file ({size} bytes): {reason}"
        ) from None


def read_checkpoint(path: str | os.PathLike) -> tuple[UNetConfig, dict, dict]:
    """Read a model file without building the model.

    For a translated (SCGAN) model file, ``config`` is the source UNet's and ``state_dict``
    holds both networks (``translator.*`` and ``unet.*`` keys); :func:`load_model` builds it.

    Parameters
    ----------
    path : path-like
        A napari-lmadda ``.pt`` file or a pix2pix ``latest_net_G.pth`` state dict.

    Returns
    -------
    config : UNetConfig
        The architecture.
    state_dict : dict
        Weights with :class:`UNetGenerator` key names, float32.
    meta : dict
        Channel names, normalisation and provenance (defaults for pix2pix files).

    Raises
    ------
    CheckpointError
        If the file is missing, corrupt, unsafe, or neither format.
    """
    cfg, sd, meta, _ = _read(path)
    return cfg, sd, meta


def _read(path: str | os.PathLike) -> tuple[UNetConfig, dict, dict, TranslatorConfig | None]:
    """:func:`read_checkpoint` plus the translator's architecture (None for plain models)."""
    path = Path(path)
    obj = _torch_load(path)
    tcfg = None
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        version = obj.get("format_version", 0)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(
                f"'{path}' was written by a newer napari-lmadda (format version "
                f"{obj.get('format_version')}); this version reads up to {FORMAT_VERSION}"
            )
        if version == _CODE_VERSION or is_code_header(obj.get("arch")):
            raise CheckpointError(_needs_code(path, obj.get("arch")))
        try:
            cfg = validate_architecture(obj["arch"], path=path)
            sd = dict(obj["state_dict"])
            meta = {**DEFAULT_META, **dict(obj.get("meta") or {})}
            if version == _TRANSLATED_VERSION or "translator" in obj:
                tcfg = TranslatorConfig.from_dict(dict(obj["translator"]))
        except (KeyError, TypeError, ValueError, AttributeError, ConfigError) as exc:
            raise CheckpointError(
                f"'{path}' is a napari-lmadda model file with a damaged header "
                f"({type(exc).__name__}: {_one_line(exc)})"
            ) from None
        if not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise CheckpointError(
                f"'{path}' is a napari-lmadda model file whose weights are not all tensors"
            )
    elif isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if not is_pix2pix_state_dict(obj):
            keys = ", ".join(list(obj)[:3]) or "no keys"
            raise CheckpointError(
                f"'{path}' holds a state dict that is neither a napari-lmadda model nor a pix2pix "
                f"UnetGenerator (expected keys like 'model.model.0.weight'; found {keys})"
            )
        try:
            cfg = detect_pix2pix_config(obj)
            sd = pix2pix_to_flat(obj, cfg)
        except (LmaddaError, KeyError, ValueError, IndexError, TypeError) as exc:
            raise CheckpointError(
                f"'{path}' looks like a pix2pix state dict but cannot be read: {_one_line(exc)}"
            ) from None
        meta = {
            **DEFAULT_META,
            "provenance": {"source": "pix2pix latest_net_G.pth", "file": path.name},
        }
    else:
        raise CheckpointError(
            f"'{path}' is not a model file: expected a napari-lmadda model or a pix2pix state "
            f"dict, found a {type(obj).__name__}"
        )
    _check_meta(meta, cfg, path)
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    bad = next((k for k, v in sd.items()
                if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise CheckpointError(
            f"'{path}' holds non-finite weights (NaN or Inf), e.g. in '{bad}': every "
            "prediction would be NaN"
        )
    return cfg, sd, meta, tcfg


def is_code_header(arch: Any) -> bool:
    """Whether a file's ``"arch"`` is a reference to architecture code (format version 4).

    Also true of the version-3 files of the development branch that introduced it.
    """
    return isinstance(arch, Mapping) and isinstance(arch.get("arch"), Mapping)


def _needs_code(path: Path, header: Any) -> str:
    """The refusal of a model file whose architecture is code, naming the ``--arch`` to give."""
    from .arch import arch_hint

    ref = header.get("arch") if isinstance(header, Mapping) else None
    if not isinstance(ref, Mapping):
        return f"'{path}' is a napari-lmadda model file with a damaged architecture reference"
    if not ref.get("class"):
        return (f"'{path}' holds a network built in Python without an architecture reference; "
                "give --arch file.py:Class to rebuild it (that runs the file)")
    return (f"'{path}' holds a {ref.get('class', '?')} network whose architecture is code; "
            f"napari-lmadda runs no code from a file it opens: give {arch_hint(ref)} to "
            "rebuild it (that runs the file)")


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    eval_mode: bool = True,
    grey_only: bool = True,
) -> UNetGenerator:
    """Load a ready-to-use model from a napari-lmadda or pix2pix file.

    Parameters
    ----------
    path : path-like
        Model file, or ``"demo"`` for the bundled demo model.
    device : str or torch.device
        Where to put it (``"auto"`` allowed).
    eval_mode : bool
        Put the model in eval mode (BatchNorm uses running statistics, no dropout).
    grey_only : bool
        Refuse a model for several input channels: the project feeds one grey plane at a
        time (the napari reader, the CLI and the library refuse it alike, when loading).

    Returns
    -------
    UNetGenerator or TranslatedModel
        The model, with ``model.meta`` holding channel names, normalisation and provenance
        (a :class:`~napari_lmadda.models.translated.TranslatedModel` for SCGAN files; it is
        used exactly like a UNet).

    Raises
    ------
    CheckpointError
        If the file is not a loadable model; the message says what was expected and found.
    """
    from ..devices import resolve_device

    if str(path) == "demo":
        from ..assets import demo_model_path

        path = demo_model_path()
    from ..bioimageio.load import is_bioimageio_package, load_bioimageio

    if is_bioimageio_package(path):  # a bioimage.io zip: read as data, no package code runs
        return load_bioimageio(path, device, eval_mode=eval_mode)
    cfg, sd, meta, tcfg = _read(path)
    if grey_only and cfg.in_channels != 1:
        raise CheckpointError(
            f"'{path}' is a model for {cfg.in_channels} input channels; napari-lmadda feeds "
            "it one grey plane at a time, so only single-channel (grey-input) models can "
            "be used"
        )
    _check_fits(cfg, sd, path, tcfg)  # before allocating: a file may declare a huge network
    model = _build(cfg, tcfg)
    model.load_state_dict(sd, strict=True)
    model.meta = meta
    model.to(resolve_device(device) if isinstance(device, str) else device)
    return model.eval() if eval_mode else model


def _arch_text(cfg: UNetConfig) -> str:
    return (
        f"UNet with {cfg.num_downs} down blocks, ngf {cfg.ngf}, {cfg.in_channels} input and "
        f"{cfg.out_channels} output channel(s), norm {cfg.norm}"
    )


def _build(cfg: UNetConfig, tcfg: TranslatorConfig | None) -> torch.nn.Module:
    """The (untrained) network a file declares."""
    if tcfg is None:
        return UNetGenerator(cfg)
    return TranslatedModel(Translator(tcfg), UNetGenerator(cfg))


def _check_fits(
    cfg: UNetConfig,
    sd: Mapping[str, torch.Tensor],
    path: Any,
    tcfg: TranslatorConfig | None = None,
) -> None:
    """Compare the weights with the declared architecture built on the meta device (no memory).

    Raises
    ------
    CheckpointError
        Missing, unexpected or wrongly shaped tensors, in one line naming the first of each.
    """
    try:
        with torch.device("meta"):
            skeleton = _build(cfg, tcfg)
    except ConfigError as exc:
        raise CheckpointError(f"'{path}' declares an impossible model: {exc}") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    complex_ = [k for k in expected if k in sd and sd[k].is_complex()]
    if complex_:
        raise CheckpointError(f"'{path}' holds complex numbers in '{complex_[0]}', not weights")
    if not (missing or unexpected or wrong):
        return
    parts = []
    if wrong:
        k = wrong[0]
        parts.append(
            f"{len(wrong)} tensor(s) of the wrong shape, e.g. '{k}' is {tuple(sd[k].shape)} "
            f"where {expected[k]} is expected"
        )
    if missing:
        parts.append(f"{len(missing)} missing, e.g. '{missing[0]}'")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. '{unexpected[0]}'")
    raise CheckpointError(
        f"'{path}' does not fit the architecture it declares ({_arch_text(cfg)}"
        + (f", behind a translator with ngf {tcfg.ngf} and {tcfg.n_blocks} residual blocks"
           if tcfg is not None else "")
        + "): "
        + "; ".join(parts)
    )


def _pair(value: Any) -> tuple[float, float] | None:
    """Return ``value`` as two finite floats, or None if it is not that."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


def _check_meta(meta: dict, cfg: UNetConfig, path: Path) -> None:
    """Refuse metadata that prediction would trip over later (damaged or crafted files)."""
    pct = _pair(meta.get("input_percentiles"))
    if pct is None or not 0 <= pct[0] < pct[1] <= 100:
        raise CheckpointError(
            f"'{path}' has invalid input percentiles {meta.get('input_percentiles')!r} "
            "(expected two numbers 0 <= low < high <= 100)"
        )
    try:
        TargetNorm.from_meta(meta, cfg.out_channels)
    except (ConfigError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(
            f"'{path}' has an invalid target range or normalisation "
            f"{meta.get('target_range')!r} ({_one_line(exc)}; expected two different numbers, "
            f"or one such [lo, hi] for each of the {cfg.out_channels} output channel(s))"
        ) from None
    names = meta.get("channel_names")
    if names is not None and (
        not isinstance(names, list | tuple)
        or len(names) != cfg.out_channels
        or not all(isinstance(n, str) for n in names)
    ):
        raise CheckpointError(
            f"'{path}' has invalid channel names {names!r} (expected {cfg.out_channels} names)"
        )
    if not isinstance(meta.get("provenance"), dict):
        meta["provenance"] = {}
    meta["input_percentiles"] = list(pct)
