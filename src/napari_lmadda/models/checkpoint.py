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
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import CheckpointError
from .pix2pix import detect_pix2pix_config, is_pix2pix_state_dict, pix2pix_to_flat
from .unet import UNetConfig, UNetGenerator

__all__ = [
    "FORMAT",
    "DEFAULT_META",
    "save_model",
    "load_model",
    "read_checkpoint",
    "atomic_torch_save",
]

FORMAT = "napari-lmadda-model"
FORMAT_VERSION = 1
DEFAULT_META: dict[str, Any] = {
    "channel_names": None,  # e.g. ["DAPI", "CD29"]; None -> "channel 0", ...
    "input_percentiles": [1.0, 99.8],
    "target_range": [0.0, 1.0],  # tanh output [-1, 1] maps to this range
    "provenance": {},
}


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
    """
    from ..data.io import atomic_write

    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CheckpointError(f"cannot save '{path}': folder '{folder}' does not exist")
    return atomic_write(path, lambda tmp: torch.save(obj, tmp), overwrite=True)


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
    model : UNetGenerator
        The model.
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
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": model.config.to_dict(),
        "state_dict": sd,
        "meta": _plain(m),
    }
    return atomic_torch_save(payload, path)


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


def _torch_load(path: Path) -> Any:
    if not path.exists():
        raise CheckpointError(f"model file '{path}' does not exist")
    if path.is_dir():
        raise CheckpointError(f"'{path}' is a folder, not a model file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"model file '{path}' is empty (0 bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refused to load '{path}': it contains Python objects other than weights "
            f"(only plain tensors and containers are accepted; nothing was executed): {exc}"
        ) from None
    except Exception as exc:  # torch raises many types for foreign or damaged files
        raise CheckpointError(
            f"'{path}' is not a readable PyTorch model file (truncated or corrupt?): {exc}"
        ) from None


def read_checkpoint(path: str | os.PathLike) -> tuple[UNetConfig, dict, dict]:
    """Read a model file without building the model.

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
    path = Path(path)
    obj = _torch_load(path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        if int(obj.get("format_version", 0)) > FORMAT_VERSION:
            raise CheckpointError(
                f"'{path}' was written by a newer napari-lmadda (format version "
                f"{obj.get('format_version')}); this version reads up to {FORMAT_VERSION}"
            )
        try:
            cfg = UNetConfig.from_dict(obj["arch"])
            sd = dict(obj["state_dict"])
        except (KeyError, TypeError) as exc:
            raise CheckpointError(
                f"'{path}' is a napari-lmadda model file with a damaged header: {exc}"
            ) from None
        meta = {**DEFAULT_META, **dict(obj.get("meta") or {})}
    elif isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if not is_pix2pix_state_dict(obj):
            keys = ", ".join(list(obj)[:3]) or "no keys"
            raise CheckpointError(
                f"'{path}' holds a state dict that is neither a napari-lmadda model nor a pix2pix "
                f"UnetGenerator (expected keys like 'model.model.0.weight'; found {keys})"
            )
        cfg = detect_pix2pix_config(obj)
        sd = pix2pix_to_flat(obj, cfg)
        meta = {
            **DEFAULT_META,
            "provenance": {"source": "pix2pix latest_net_G.pth", "file": path.name},
        }
    else:
        raise CheckpointError(
            f"'{path}' is not a model file: expected a napari-lmadda model or a pix2pix state "
            f"dict, found a {type(obj).__name__}"
        )
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    return cfg, sd, meta


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, eval_mode: bool = True
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

    Returns
    -------
    UNetGenerator
        The model, with ``model.meta`` holding channel names, normalisation and provenance.

    Raises
    ------
    CheckpointError
        If the file is not a loadable model; the message says what was expected and found.
    """
    from ..devices import resolve_device

    if str(path) == "demo":
        from ..assets import demo_model_path

        path = demo_model_path()
    cfg, sd, meta = read_checkpoint(path)
    model = UNetGenerator(cfg)
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # tensor shapes that do not fit the declared architecture
        raise CheckpointError(
            f"'{path}' does not fit the architecture it declares: {exc}"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"'{path}' does not fit the architecture it declares ({cfg}): "
            f"missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}"
        )
    model.meta = meta
    model.to(resolve_device(device) if isinstance(device, str) else device)
    return model.eval() if eval_mode else model
