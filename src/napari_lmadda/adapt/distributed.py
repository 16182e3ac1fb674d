"""Multi-process adaptation with ``torch.distributed`` (launched by ``torchrun``).

``torchrun --nproc_per_node N -m napari_lmadda adapt ...`` starts N copies of the command with
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. When
``WORLD_SIZE > 1``, :func:`session` joins the process group (``nccl`` when the device is CUDA,
each rank on ``cuda:LOCAL_RANK``; ``gloo`` otherwise) and leaves it at the end, also on error.

How the adaptation loop uses it (see :func:`~napari_lmadda.adapt.loop.run`):

* every rank draws the *same* global batch positions from the same sampler stream and loads
  only its contiguous slice (:func:`~napari_lmadda.adapt.sampling.shard_sampler`), so the
  union of the per-rank batches is exactly the single-process batch;
* the gradients of G' and of the discriminator are averaged over the ranks after each
  backward pass (one flat all-reduce per network, what ``DistributedDataParallel`` computes);
  with equal shards and mean-reduced losses the average is the single-process gradient up to
  the order of float additions. The one term that is not a mean over patches, the source
  spread that scales the consistency loss, is computed over the global batch
  (:func:`global_std`);
* the discriminator accuracy (which gates G' updates), the logged losses and the cancel flag
  are reduced over the ranks, and the label-free criterion is evaluated on rank 0 and
  broadcast, so every rank takes the same decision (update, keep, roll back, stop) and no
  rank waits in a collective the others skip.

All helpers are no-ops (or return their input) when no process group is active, so the
single-process path runs the same code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "env_world_size",
    "is_active",
    "rank",
    "world_size",
    "is_main",
    "backend_for",
    "local_device",
    "init_from_env",
    "cleanup",
    "session",
    "per_rank_batch",
    "broadcast_object",
    "broadcast_module_",
    "all_reduce_mean_",
    "mean_scalars",
    "any_flag",
    "global_std",
]


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset or unreadable)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _env_int(name: str, default: int = 0) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise ConfigError(f"environment variable {name}={os.environ[name]!r} is not a "
                          "whole number (set by torchrun)") from None


def is_active() -> bool:
    """True inside an initialised process group of more than one process."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """Rank of this process (0 without a process group)."""
    import torch.distributed as dist

    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    import torch.distributed as dist

    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    """True on rank 0: the process that writes files and prints."""
    return rank() == 0


def backend_for(device: torch.device) -> str:
    """``nccl`` for CUDA devices, ``gloo`` for everything else."""
    return "nccl" if device.type == "cuda" else "gloo"


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for CUDA, ``device`` unchanged otherwise."""
    import torch

    if device.type != "cuda" or env_world_size() <= 1:
        return device
    local = _env_int("LOCAL_RANK", 0)
    if local >= torch.cuda.device_count():
        raise ConfigError(
            f"LOCAL_RANK {local} has no GPU: this machine has {torch.cuda.device_count()}; "
            "start at most that many processes per node (--nproc_per_node)"
        )
    return torch.device("cuda", local)


def init_from_env(device: torch.device) -> bool:
    """Join the process group described by torchrun's environment variables.

    Parameters
    ----------
    device : torch.device
        The device the run uses (decides the backend; CUDA ranks are pinned to
        ``cuda:LOCAL_RANK``).

    Returns
    -------
    bool
        True if this call initialised the group (the caller then calls :func:`cleanup`);
        False when ``WORLD_SIZE`` is 1 or a group already exists.

    Raises
    ------
    ConfigError
        torch was built without distributed support, or the launcher's variables are missing.
    """
    import torch
    import torch.distributed as dist

    if env_world_size() <= 1:
        return False
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if dist.is_initialized():
        return False
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE > 1 but {', '.join(missing)} not set: start the run "
                          "with torchrun (torch.distributed.run)")
    dev = local_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend_for(dev), init_method="env://",
                            world_size=env_world_size(), rank=_env_int("RANK"))
    return True


def cleanup() -> None:
    """Leave the process group if one is initialised (safe to call twice)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def session(device: torch.device) -> Iterator[bool]:
    """Join the process group for the duration of a block when launched by torchrun.

    Yields True when a group of more than one process is active. A group created here is
    destroyed on leaving the block, also when it is left by an exception; a group the caller
    created is left alone.
    """
    mine = init_from_env(device)
    try:
        yield is_active()
    finally:
        if mine:
            cleanup()


def per_rank_batch(global_batch: int, world: int) -> int:
    """Patches per rank for a global batch, refusing batches that do not split evenly.

    Raises
    ------
    ConfigError
        ``global_batch`` is not a multiple of ``world``.
    """
    if global_batch % world:
        raise ConfigError(
            f"batch size {global_batch} (the global batch, --batch) must be a multiple of the "
            f"number of processes ({world}) so that every process gets the same share"
        )
    return global_batch // world


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects; returns ``obj`` alone)."""
    import torch.distributed as dist

    if not is_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_module_(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into ``module`` on every rank."""
    import torch
    import torch.distributed as dist

    if not is_active():
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=src)


def all_reduce_mean_(tensors: Sequence[torch.Tensor]) -> None:
    """Average tensors over the ranks in place, with one collective per dtype.

    Used for gradients: the tensors are flattened into one buffer (like a
    ``DistributedDataParallel`` bucket), summed over the ranks and divided by the world size.
    Every rank must pass the same shapes in the same order.
    """
    import torch
    import torch.distributed as dist

    if not is_active() or not tensors:
        return
    world = dist.get_world_size()
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)
        offset = 0
        for t in group:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n


def mean_scalars(values: Sequence[float], device: torch.device) -> list[float]:
    """Average plain numbers over the ranks (float64; NaN on any rank gives NaN)."""
    import torch
    import torch.distributed as dist

    if not is_active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / dist.get_world_size()).tolist()


def any_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is True on any rank (cancel requests)."""
    import torch
    import torch.distributed as dist

    if not is_active():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def global_std(x: torch.Tensor) -> torch.Tensor:
    """Unbiased standard deviation of all elements of ``x`` over every rank's ``x``.

    Equals ``torch.cat(all ranks' x).std()`` up to rounding (float64 moments, combined with
    the parallel-variance formula); without a process group it is ``x.std()``. No gradient
    flows through it (the loop applies it to the frozen G's activations).
    """
    import torch
    import torch.distributed as dist

    if not is_active():
        return x.std()
    with torch.no_grad():
        xd = x.detach().to(torch.float64)
        n = xd.numel()
        mean = xd.mean()
        m2 = ((xd - mean) ** 2).sum()
        # sums of count, n*mean, within-rank M2, n*mean^2 -> total M2 about the global mean
        t = torch.stack([xd.new_tensor(float(n)), n * mean, m2, n * mean * mean])
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        count, s, m2_sum, sq = t.unbind()
        gmean = s / count
        total_m2 = m2_sum + sq - count * gmean * gmean
        var = total_m2.clamp_min(0) / (count - 1)
        return var.sqrt().to(x.dtype)
