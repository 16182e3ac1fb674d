"""Device selection: ``auto`` picks CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["resolve_device", "release_memory", "autocast_dtype", "AMP_MODES"]

AMP_MODES = ("off", "bf16", "fp16")


def resolve_device(device: str | None = "auto") -> torch.device:
    """Turn a user's device string into a :class:`torch.device`.

    Parameters
    ----------
    device : str or None
        ``"auto"`` (default; CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``
        or ``"mps"``. The environment variable ``LMADDA_DEVICE`` overrides ``"auto"``.

    Returns
    -------
    torch.device
        The device to use.

    Raises
    ------
    ConfigError
        If the device is unknown or not available on this machine.
    """
    import torch

    name = (device or "auto").strip().lower()
    if name == "auto":
        name = os.environ.get("LMADDA_DEVICE", "auto").strip().lower() or "auto"
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(
            f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps"
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r} asked for, but only {torch.cuda.device_count()} "
                "CUDA device(s) exist"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"device {device!r} asked for, but MPS is not available here")
    elif dev.type != "cpu":
        raise ConfigError(f"unsupported device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    return dev


def release_memory(device: torch.device | str | None = None) -> None:
    """Give cached accelerator memory back after a run or a cancel.

    Parameters
    ----------
    device : torch.device or str, optional
        The device that was used; nothing happens for the CPU.
    """
    import gc

    import torch

    gc.collect()
    kind = torch.device(device).type if device is not None else None
    if (kind in (None, "cuda")) and torch.cuda.is_available():
        torch.cuda.empty_cache()
    if kind == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def autocast_dtype(amp: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for a mixed-precision mode on a device, or None for ``off``.

    Parameters
    ----------
    amp : {"off", "bf16", "fp16"}
        Mixed-precision mode.
    device : torch.device or str
        The resolved device (not ``auto``).

    Returns
    -------
    torch.dtype or None
        ``torch.bfloat16`` / ``torch.float16``, or None when ``amp`` is ``off``.

    Raises
    ------
    ConfigError
        fp16 anywhere but CUDA (the CPU has no fast fp16 kernels and gradient scaling is
        CUDA-only here), bf16 on MPS or on a GPU without bf16 support, or an unknown mode.
    """
    import torch

    if amp not in AMP_MODES:
        raise ConfigError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    if amp == "off":
        return None
    dev = torch.device(device)
    if amp == "fp16":
        if dev.type != "cuda":
            raise ConfigError(f"amp fp16 needs a CUDA device, the run uses {dev.type}: "
                              "use amp bf16 on the CPU, or off")
        return torch.float16
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"amp bf16 is supported on cpu and cuda, not {dev.type}: use off")
    if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("amp bf16 asked for, but this GPU has no bfloat16 support: "
                          "use fp16 or off")
    return torch.bfloat16
