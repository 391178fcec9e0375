"""torch.distributed helpers: who am I, set up / tear down, and small collectives.

Every helper also works without `torch.distributed` initialised (a single process): rank 0 of a world of 1,
and the collectives return their input. Launch several processes with
`torchrun --nproc_per_node N train.py ...`; torchrun sets RANK, LOCAL_RANK and WORLD_SIZE.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def is_dist() -> bool:
    """True when a process group is initialised (torchrun with more than one process)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def get_local_rank() -> int:
    """Index of this process on its machine (selects the GPU); LOCAL_RANK from torchrun, else 0."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """Only the main process (rank 0) writes files, logs and progress bars."""
    return get_rank() == 0


def init_distributed(device_type: str) -> bool:
    """Join the process group that torchrun describes in the environment, if there is one.

    Args:
        device_type: "cuda" (uses the NCCL backend, one GPU per process) or "cpu" (uses gloo).

    Returns:
        True when running distributed (WORLD_SIZE > 1).
    """
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1 or is_dist():
        return is_dist()
    if device_type == "cuda":
        torch.cuda.set_device(get_local_rank())
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    return True


def cleanup_distributed() -> None:
    if is_dist():
        dist.destroy_process_group()


def synchronize() -> None:
    """Barrier across processes; a no-op in a single process."""
    if is_dist() and get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Pickle-able object from every rank -> list indexed by rank (length 1 in a single process)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s object, on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s buffers (BatchNorm running statistics) into `module` on every process, in place.

    DDP broadcasts rank 0's buffers at the start of each training forward, but each process then updates its
    BatchNorm statistics from its own batch, so after the last step they differ between processes. Calling this
    before a sharded evaluation makes every process evaluate the same model: the one rank 0 saves.
    A no-op in a single process.
    """
    if not is_dist():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=src)


def reduce_mean_dict(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Average scalar tensors over ranks (all-reduce, so every rank gets the same numbers).

    Used on the loss dict for logging and for the finiteness check: a NaN on one rank becomes a NaN on all,
    so every process stops at the same iteration instead of the others waiting forever in the next all-reduce.
    The returned tensors are detached; the input is not modified.
    """
    names = sorted(values)
    stacked = torch.stack([values[k].detach().float() for k in names])  # (len(names),)
    if is_dist():
        dist.all_reduce(stacked)
        stacked /= get_world_size()
    return {k: v for k, v in zip(names, stacked, strict=True)}
