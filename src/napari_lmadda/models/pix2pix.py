"""Read pix2pix ``latest_net_G.pth`` state dicts into :class:`UNetGenerator`.

pix2pix's ``UnetGenerator`` nests one ``UnetSkipConnectionBlock`` per level. Block ``k``
(1 = outermost) lives under the key prefix ``model.model.`` (k = 1) or
``model.model.1`` + ``.model.3`` * (k-2) + ``.model.`` (k >= 2). Inside a block the module
indices are: outermost ``0`` down conv, ``3`` up conv; middle ``1`` down conv, ``2`` down
norm, ``5`` up conv, ``6`` up norm; innermost ``1`` down conv, ``3`` up conv, ``4`` up norm.
(Facts from pytorch-CycleGAN-and-pix2pix ``models/networks.py``; see REFERENCE.md.)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import CheckpointError
from .unet import UNetConfig

__all__ = [
    "block_prefix",
    "pix2pix_to_flat",
    "flat_to_pix2pix",
    "detect_pix2pix_config",
    "is_pix2pix_state_dict",
    "strip_module_prefix",
]


def block_prefix(k: int) -> str:
    """Key prefix of pix2pix block ``k`` (1 = outermost)."""
    if k == 1:
        return "model.model."
    return "model.model.1" + ".model.3" * (k - 2) + ".model."


def _module_pairs(cfg: UNetConfig) -> list[tuple[str, str]]:
    """(pix2pix module prefix, flat module prefix) for every parametrised module."""
    n = cfg.num_downs
    pairs = []
    for k in range(1, n + 1):
        p, j = block_prefix(k), n - k  # up[j] is block k's up part
        if k == 1:
            pairs += [(p + "0.", "down.0.0."), (p + "3.", f"up.{j}.conv.")]
        elif k == n:
            pairs += [(p + "1.", f"down.{k - 1}.0."), (p + "3.", f"up.{j}.conv.")]
            pairs += [(p + "4.", f"up.{j}.norm.")]
        else:
            pairs += [(p + "1.", f"down.{k - 1}.0."), (p + "2.", f"down.{k - 1}.1.")]
            pairs += [(p + "5.", f"up.{j}.conv."), (p + "6.", f"up.{j}.norm.")]
    return pairs


def strip_module_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix that ``DataParallel`` adds to every key."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def is_pix2pix_state_dict(sd: Mapping[str, object]) -> bool:
    """Whether the keys look like pix2pix's nested UNet."""
    keys = strip_module_prefix(sd).keys() if sd else ()
    return "model.model.0.weight" in keys


def detect_pix2pix_config(sd: Mapping[str, torch.Tensor]) -> UNetConfig:
    """Infer the architecture of a pix2pix UNet from its keys and tensor shapes.

    Parameters
    ----------
    sd : mapping
        A pix2pix generator state dict (``module.`` prefix allowed).

    Returns
    -------
    UNetConfig
        ``num_downs``, ``ngf``, in/out channels and norm as found; ``use_dropout`` is
        pix2pix's default (on), since dropout has no weights to detect.

    Raises
    ------
    CheckpointError
        If the keys or shapes are not those of a pix2pix UNet.
    """
    sd = strip_module_prefix(sd)
    if "model.model.0.weight" not in sd:
        some = ", ".join(list(sd)[:4]) or "no keys"
        raise CheckpointError(
            "not a pix2pix UnetGenerator state dict: expected a key 'model.model.0.weight', "
            f"found {some}"
        )
    w0 = sd["model.model.0.weight"]
    if w0.ndim != 4 or tuple(w0.shape[-2:]) != (4, 4):
        raise CheckpointError(
            f"'model.model.0.weight' has shape {tuple(w0.shape)}, expected (ngf, in, 4, 4)"
        )
    ngf, cin = int(w0.shape[0]), int(w0.shape[1])
    up = sd.get("model.model.3.weight")
    if up is None or up.ndim != 4:
        raise CheckpointError("pix2pix state dict lacks the output layer 'model.model.3.weight'")
    cout = int(up.shape[1])
    n = 1
    while any(k.startswith(block_prefix(n + 1)) for k in sd):
        n += 1
    if n < 2:
        raise CheckpointError("pix2pix state dict has a single block: not a UNet")
    p2 = block_prefix(2)
    if n > 2 and p2 + "2.running_mean" in sd:
        norm, bias = "batch", False
    elif p2 + "1.bias" in sd:
        norm, bias = "instance", True
    else:
        norm, bias = "none", False
    return UNetConfig(
        in_channels=cin,
        out_channels=cout,
        num_downs=n,
        ngf=ngf,
        norm=norm,
        use_dropout=True,
        bias=bias,
    )


def pix2pix_to_flat(sd: Mapping[str, torch.Tensor], cfg: UNetConfig) -> dict[str, torch.Tensor]:
    """Rename a pix2pix state dict to the keys of :class:`UNetGenerator`.

    Parameters
    ----------
    sd : mapping
        pix2pix state dict (``module.`` prefix allowed).
    cfg : UNetConfig
        The architecture (see :func:`detect_pix2pix_config`).

    Returns
    -------
    dict
        State dict for ``UNetGenerator(cfg)``.

    Raises
    ------
    CheckpointError
        If a key is left over or missing.
    """
    src = strip_module_prefix(sd)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for p_old, p_new in _module_pairs(cfg):
        for key in [k for k in src if k.startswith(p_old) and "." not in k[len(p_old) :]]:
            out[p_new + key[len(p_old) :]] = src[key]
            used.add(key)
    extra = sorted(set(src) - used)
    if extra:
        raise CheckpointError(
            f"pix2pix state dict has {len(extra)} key(s) that do not fit a UNet with "
            f"num_downs={cfg.num_downs}: {', '.join(extra[:3])}"
        )
    return out


def flat_to_pix2pix(sd: Mapping[str, torch.Tensor], cfg: UNetConfig) -> dict[str, torch.Tensor]:
    """Rename a :class:`UNetGenerator` state dict to pix2pix's nested keys (for export)."""
    out: dict[str, torch.Tensor] = {}
    for p_old, p_new in _module_pairs(cfg):
        for key, value in sd.items():
            if key.startswith(p_new) and "." not in key[len(p_new) :]:
                out[p_old + key[len(p_new) :]] = value
    return out
