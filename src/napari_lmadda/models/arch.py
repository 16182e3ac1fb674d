"""Networks built from architecture code the user names, with weights loaded as data.

An architecture is code: importing ``file.py`` runs whatever it contains. napari-lmadda runs
architecture code **only when the user asks for it explicitly**:

* ``--arch path/to/file.py:ClassName`` on the command line (or :func:`load_arch` in Python);
  ``--arch-kwargs '{"depth": 3}'`` are the class's keyword arguments;
* ``--allow-code`` for the architecture file inside a bioimage.io package;
* ``--arch model.torchscript.pt`` for a TorchScript file (predict only: hooks cannot be
  attached to a scripted network, so it cannot be adapted).

Opening, dropping or loading a file never runs code. A project model file made from such a
network (adapted, or trained with ``train-source --arch``) stores a *reference* to its
architecture (file, class, keyword arguments, the file's sha256) next to the weights;
:func:`~napari_lmadda.models.checkpoint.load_model` refuses it with a message naming the
``--arch`` to give, and :func:`load_arch` with ``weights=`` that file rebuilds it.

Weights always load as data: ``torch.load(weights_only=True)``, with the one-line errors of
:mod:`~napari_lmadda.models.checkpoint`. A state dict may be plain, nested under
``state_dict``/``model_state_dict``/``model``, or prefixed ``module.``/``model.``/``net.``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import os
import sys
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .tapped import TappedModel

__all__ = [
    "parse_arch",
    "build_network",
    "read_weights",
    "fit_weights",
    "load_arch",
    "is_torchscript",
    "ScriptedModel",
    "arch_hint",
    "stored_arch",
    "load_bioimageio_tapped",
    "code_to_run",
    "load_code_model",
]

CODE_FORMAT_VERSION = 4  # model files whose architecture is user code (see checkpoint.py)
_PREFIXES = ("module.", "model.", "net.", "_orig_mod.")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_arch(text: str) -> tuple[str, str]:
    """Split ``file.py:Class`` (or ``package.module:Class``) into source and name.

    Raises
    ------
    ConfigError
        Not of that form, or the file does not exist.
    """
    src, sep, name = str(text).rpartition(":")
    if not sep or not src or not name.isidentifier():
        raise ConfigError(f"--arch {text!r}: expected path/to/file.py:ClassName "
                          "(or package.module:ClassName)")
    if src.endswith(".py") or os.sep in src or "/" in src:
        p = Path(src).expanduser()
        if not p.is_file():
            raise ConfigError(f"--arch: architecture file '{p}' does not exist")
        return str(p.resolve()), name
    return src, name


def _import(source: str) -> Any:
    """Import a ``.py`` file (under a name unique to its contents) or an installed module."""
    if not source.endswith(".py"):
        try:
            return importlib.import_module(source)
        except Exception as exc:  # noqa: BLE001 - user code: any error, one line
            raise ConfigError(f"--arch: cannot import module '{source}' ({_short(exc)})") from None
    path = Path(source)
    digest = _sha256(path)[:16]
    modname = f"_lmadda_arch_{path.stem}_{digest}"
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--arch: '{path}' is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    sys.path.insert(0, str(path.parent))  # the file may import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - user code: any error, one line
        del sys.modules[modname]
        raise ConfigError(f"--arch: '{path}' fails to import ({_short(exc)})") from None
    finally:
        sys.path.remove(str(path.parent))
    return module


def build_network(source: str, name: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """RUN the architecture code and build ``name(**kwargs)`` (untrained).

    Only for a user who asked for this code to run (see the module docs).

    Raises
    ------
    ConfigError
        The code fails to import, has no ``name``, or the call fails or is not a module.
    """
    module = _import(source)
    cls = getattr(module, name, None)
    if cls is None or not callable(cls):
        raise ConfigError(f"--arch: '{source}' defines no class or function '{name}'")
    try:
        net = cls(**dict(kwargs or {}))
    except Exception as exc:  # noqa: BLE001 - user code: any error, one line
        raise ConfigError(f"--arch: cannot build {name}({_kw_text(kwargs)}) "
                          f"({_short(exc)})") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"--arch: {name}(...) returned a {type(net).__name__}, "
                          "not a torch.nn.Module")
    return net


def _kw_text(kwargs: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in (kwargs or {}).items())


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read a state dict as data; also a project model file's metadata (else None).

    Returns
    -------
    (state_dict, meta)
        Float tensors as float32; ``meta`` only for a napari-lmadda model file.

    Raises
    ------
    CheckpointError
        Missing, damaged, unsafe, or no state dict inside (one line, nothing executed).
    """
    from .checkpoint import DEFAULT_META, FORMAT, _torch_load

    p = Path(path).expanduser()
    obj = _torch_load(p)
    meta = None
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        meta = {**DEFAULT_META, **dict(obj.get("meta") or {})}
        obj = obj.get("state_dict")
    else:
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"'{p}' holds no state dict (a mapping of names to tensors)")
    sd = {str(k): (v.float() if v.is_floating_point() else v) for k, v in obj.items()}
    return sd, meta


def fit_weights(net: nn.Module, sd: Mapping[str, torch.Tensor], path: Any) -> None:
    """Load ``sd`` into ``net`` strictly, after removing a wrapper prefix it alone has.

    Raises
    ------
    CheckpointError
        Missing, unexpected or wrongly shaped tensors (one line naming the first of each).
    """
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    sd = dict(sd)
    for prefix in _PREFIXES:
        if (not any(k in expected for k in sd) and all(k.startswith(prefix) for k in sd)):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of the wrong shape, e.g. '{k}' is "
                         f"{tuple(sd[k].shape)} where {expected[k]} is expected")
        if missing:
            parts.append(f"{len(missing)} missing, e.g. '{missing[0]}'")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. '{unexpected[0]}'")
        raise CheckpointError(f"the weights '{path}' do not fit {type(net).__name__}: "
                              + "; ".join(parts))
    net.load_state_dict(sd, strict=True)


def _reference(source: str, name: str, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    ref: dict[str, Any] = {"kind": "python", "source": source, "class": name,
                           "kwargs": dict(kwargs or {})}
    if source.endswith(".py"):
        ref["sha256"] = _sha256(Path(source))
    return ref


def arch_hint(ref: Mapping[str, Any]) -> str:
    """The ``--arch [--arch-kwargs]`` options that rebuild a stored reference."""
    import json

    if ref.get("kind") == "bioimageio":  # the package's own architecture file
        return f"--arch {ref.get('source', '?')}"
    text = f"--arch {ref.get('source', '?')}:{ref.get('class', '?')}"
    if ref.get("kwargs"):
        text += f" --arch-kwargs '{json.dumps(ref['kwargs'])}'"
    return text


def load_arch(
    arch: str,
    *,
    kwargs: Mapping[str, Any] | None = None,
    weights: str | os.PathLike | None = None,
    input_size: int = 256,
    in_channels: int | None = None,
    meta: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> TappedModel:
    """Build ``file.py:Class`` (RUNS that file), load weights as data, and tap it.

    Parameters
    ----------
    arch : str
        ``path/to/file.py:ClassName`` or ``package.module:ClassName``.
    kwargs : mapping, optional
        Keyword arguments of the class; default: those stored in a project model file given
        as ``weights``, else none.
    weights : path, optional
        A state dict file, or a project model file made from this architecture (its
        normalisation and channel names come along). None: untrained (``train-source``).
    input_size : int
        Side of the example input the taps are traced with.
    in_channels : int, optional
        Input channels; default: stored in the model file, else the first convolution's.
    meta : mapping, optional
        Channel names, normalisation, provenance (over the file's).
    device : str or torch.device
        Where to put the model (``"auto"`` allowed).

    Returns
    -------
    TappedModel
        In eval mode, with a reference to ``arch`` for the model files it is saved to.
    """
    from ..devices import resolve_device
    from .checkpoint import DEFAULT_META

    source, name = parse_arch(arch)
    file_meta, stored = None, {}
    sd = None
    if weights is not None:
        sd, file_meta = read_weights(weights)
        stored = stored_arch(weights) if file_meta is not None else {}
    ref_kwargs = dict(kwargs) if kwargs is not None else dict(
        (stored.get("arch") or {}).get("kwargs") or {})
    old_ref = stored.get("arch") or {}
    net = build_network(source, name, ref_kwargs)
    if sd is not None:
        fit_weights(net, sd, weights)
    ref = _reference(source, name, ref_kwargs)
    if old_ref.get("sha256") and ref.get("sha256") and old_ref["sha256"] != ref["sha256"]:
        warnings.warn(f"'{source}' differs from the architecture file '{weights}' was made "
                      "with (its sha256 changed); the weights fit it all the same",
                      stacklevel=2)
    model = TappedModel(net, input_size=int(stored.get("input_size") or input_size),
                        in_channels=in_channels or stored.get("in_channels"), arch=ref)
    model.meta = {**DEFAULT_META, **(file_meta or {}), **dict(meta or {})}
    if sd is not None and file_meta is None:
        model.meta["provenance"] = {**model.meta.get("provenance", {}),
                                    "source": f"{name} from {Path(source).name}",
                                    "weights": Path(weights).name}
    model.to(resolve_device(device) if isinstance(device, str) else device)
    return model.eval()


def stored_arch(path: str | os.PathLike) -> dict[str, Any]:
    """The header of a project model file made from architecture code ({} for other files).

    Read as data (nothing runs): ``in_channels``, ``out_channels``, ``input_size`` and the
    reference ``arch`` (``kind``, ``source``, ``class``, ``kwargs``, ``sha256``) that
    :func:`arch_hint` turns into the options to give, e.g. to prefill a GUI's form.
    """
    from .checkpoint import FORMAT, _torch_load, is_code_header

    obj = _torch_load(Path(path).expanduser())
    arch = obj.get("arch") if isinstance(obj, Mapping) else None
    # version 3 too: files of the development branch before code files had a version
    if (is_code_header(arch) and obj.get("format") == FORMAT
            and obj.get("format_version") in (3, CODE_FORMAT_VERSION)):
        return dict(arch)
    return {}


def code_to_run(path: str | os.PathLike) -> str | None:
    """What code building the model of ``path`` would run (for a confirmation), else None.

    Read as data, nothing runs: a project model file made from architecture code names its
    file and class; a bioimage.io package with a ``pytorch_state_dict`` architecture file
    names that file. None for every other file (including unreadable ones).
    """
    from ..bioimageio.load import _weights_entry, is_bioimageio_package, read_bioimageio_package

    p = Path(path).expanduser()
    try:
        if is_bioimageio_package(p):
            pkg = read_bioimageio_package(p)
            try:
                arch = (_weights_entry(pkg.rdf, "pytorch_state_dict") or {}).get("architecture")
            finally:
                pkg.close()
            if isinstance(arch, Mapping) and arch.get("source") and arch.get("callable"):
                return (f"the architecture file '{arch['source']}' (class "
                        f"{arch['callable']}) inside the package '{p.name}'")
            return None
        ref = stored_arch(p).get("arch") or {}
    except (CheckpointError, ConfigError, OSError, ValueError):
        return None
    if not ref.get("source"):
        return None
    if ref.get("kind") == "bioimageio":
        return f"the architecture file inside the package '{ref['source']}'"
    return f"'{ref['source']}' (class {ref.get('class', '?')})"


def load_code_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> TappedModel:
    """Build the model of ``path`` by RUNNING the code :func:`code_to_run` names.

    Only after the user agreed (a confirmation in the napari dock).

    Raises
    ------
    CheckpointError, ConfigError
        No architecture code to run, or building / loading fails (one line).
    """
    from ..bioimageio.load import is_bioimageio_package

    p = Path(path).expanduser()
    if is_bioimageio_package(p):
        return load_bioimageio_tapped(p, device=device)
    ref = stored_arch(p).get("arch") or {}
    if not ref.get("source"):
        raise CheckpointError(f"'{p}' names no architecture code to build it from")
    if ref.get("kind") == "bioimageio":
        return load_bioimageio_tapped(ref["source"], weights=p, device=device)
    return load_arch(f"{ref['source']}:{ref.get('class', '?')}", weights=p, device=device)


# ------------------------------------------------------------------ bioimage.io packages
def load_bioimageio_tapped(
    path: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    input_size: int = 256,
    device: str | torch.device = "cpu",
) -> TappedModel:
    """A bioimage.io package's network, built by RUNNING its architecture file, tapped.

    Only for a user who asked for that code to run (``--allow-code``, or the package given
    as ``--arch``). Normalisation, stain units and channel names come from the package's
    pre- and postprocessing and output axes (as for packages read without code); a
    preprocessing other than napari-lmadda's percentile normalisation to [-1, 1] gives a
    warning and the default percentiles (``--percentiles`` sets them).

    Parameters
    ----------
    path : path-like
        The package (zip, folder or ``rdf.yaml``).
    weights : path, optional
        Other weights for the same network: a project model file adapted from it, or a state
        dict (default: the package's own).
    input_size : int
        Side of the example input that finds the taps.
    device : str or torch.device
        Where to put the model.
    """
    from ..bioimageio.load import (
        _channel_names,
        _input_percentiles,
        _target_norm,
        _weights_entry,
        load_bioimageio_architecture,
        read_bioimageio_package,
    )
    from ..data.normalize import DEFAULT_PERCENTILES
    from ..devices import resolve_device
    from .checkpoint import DEFAULT_META

    net = load_bioimageio_architecture(path)
    file_meta = None
    if weights is not None:
        sd, file_meta = read_weights(weights)
        fit_weights(net, sd, weights)
    model = TappedModel(net, input_size=input_size)
    pkg = read_bioimageio_package(path)
    try:
        arch = (_weights_entry(pkg.rdf, "pytorch_state_dict") or {}).get("architecture") or {}
        try:
            pct = _input_percentiles(pkg)
        except CheckpointError as exc:
            warnings.warn(f"{exc}; napari-lmadda normalises the inputs with the percentiles "
                          f"{DEFAULT_PERCENTILES} to [-1, 1] instead (set --percentiles)",
                          stacklevel=2)
            pct = list(DEFAULT_PERCENTILES)
        norm = _target_norm(pkg, model.config.out_channels)
        names = _channel_names(pkg)
        name = pkg.name
    finally:
        pkg.close()
    target = norm.to_meta()
    if len(set(zip(norm.lo, norm.hi))) == 1:  # one range for all channels: the legacy form
        target["target_range"] = [norm.lo[0], norm.hi[0]]
    src = Path(path).expanduser().resolve()
    ref = {"kind": "bioimageio", "source": str(src), "class": str(arch.get("callable", "?")),
           "kwargs": dict(arch.get("kwargs") or {})}
    if src.is_file():
        ref["sha256"] = _sha256(src)
    model.config = dataclasses.replace(model.config, arch=ref)
    model.meta = {
        **DEFAULT_META, "input_percentiles": pct, **target,
        "channel_names": names if names and len(names) == model.config.out_channels else None,
        "provenance": {"source": "bioimage.io package (its architecture file was run)",
                       "file": src.name, "name": name},
        **(file_meta or {}),
    }
    model.to(resolve_device(device) if isinstance(device, str) else device)
    return model.eval()


# ------------------------------------------------------------------ TorchScript
def is_torchscript(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``); never raises."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any("/code/" in n or n.startswith("code/") for n in zf.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


class ScriptedModel(nn.Module):
    """A TorchScript network for prediction: ``config``, ``min_size``, ``meta``, ``forward``.

    Adapting it is refused: its layers cannot be hooked (``num_layers`` raises the reason).
    ``min_size`` is probed: the smallest ``f`` such that a ``256 + f`` input gives an output
    of the same size.

    Parameters
    ----------
    path : path-like
        The TorchScript file (``torch.jit.load`` RUNS its TorchScript program).
    in_channels : int, optional
        Input channels; default: the second dimension of its first 4-D weight.
    meta : mapping, optional
        Channel names, normalisation.
    """

    def __init__(self, path: str | os.PathLike, *, in_channels: int | None = None,
                 meta: Mapping[str, Any] | None = None) -> None:
        from types import SimpleNamespace

        super().__init__()
        try:
            self.net = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - any damaged archive: one line
            raise CheckpointError(f"'{path}' is not a loadable TorchScript file "
                                  f"({_short(exc)})") from None
        self.net.eval()
        cin = in_channels or next((int(p.shape[1]) for p in self.net.parameters()
                                   if p.ndim == 4), None)
        if cin is None:
            raise ConfigError(f"cannot tell the input channels of '{path}': give them")
        self._path = str(path)
        self.min_size, cout = self._probe(cin)
        self.config = SimpleNamespace(in_channels=cin, out_channels=cout,
                                      to_dict=lambda: {"torchscript": self._path})
        self.meta: dict[str, Any] = dict(meta or {})

    def _probe(self, cin: int) -> tuple[int, int]:
        for k in range(8):
            f = 2**k
            try:
                with torch.no_grad():
                    y = self.net(torch.zeros(1, cin, 256 + f, 256 + f))
            except Exception:  # noqa: BLE001, S112 - a size the network refuses: try the next
                continue
            if isinstance(y, torch.Tensor) and y.ndim == 4 and y.shape[-1] == 256 + f:
                return f, int(y.shape[1])
        raise ConfigError(f"'{self._path}' does not map a (1, {cin}, H, W) image to an image "
                          "of the same size")

    @property
    def num_layers(self) -> int:
        """Refused: a scripted network has no taps."""
        raise ConfigError(
            f"'{self._path}' is a TorchScript model: it can predict, but cannot be adapted "
            "(hooks cannot be attached to its layers); give its Python architecture with "
            "--arch file.py:Class --weights w.pt")

    def describe_layers(self, input_size: Any = 256) -> list:
        """Refused: a scripted network has no taps (see :attr:`num_layers`)."""
        return self.num_layers  # raises

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.net(x)
