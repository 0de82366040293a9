"""Data parallelism on :mod:`torch.distributed`: who am I, and the few collectives pyrovae needs.

pyrovae trains one model on ``W`` processes with
:class:`~torch.nn.parallel.DistributedDataParallel` (see :func:`pyrovae.fit.run_svi`) and shards
evaluation over them. The processes are started by ``torchrun`` (one node:
``torchrun --standalone --nproc-per-node=W -m pyrovae fit ...``; SLURM:
``srun ... torchrun --nnodes=$SLURM_NNODES --nproc-per-node=W --rdzv-backend=c10d ...``), which
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables;
:func:`init_from_env` turns them into a process group (gloo on CPU, NCCL on CUDA).

Every helper here is a no-op for one process without a process group (``W = 1``), so the same
code runs either way. Cells are sharded in contiguous row ranges in rank order
(:func:`shard`), and :func:`gather_rows` concatenates per-rank rows in rank order, which is
therefore cell order.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "init_from_env",
    "destroy",
    "process_group",
    "barrier",
    "all_reduce_sum",
    "any_rank",
    "broadcast_object",
    "all_gather_object",
    "shard",
    "gather_rows",
]


def is_distributed() -> bool:
    """Whether a :mod:`torch.distributed` process group is initialized."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes :math:`W` (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this is rank 0, the process that writes files and shows progress."""
    return rank() == 0


def _comm_device() -> torch.device:
    """Where collective tensors must live: the current CUDA device for NCCL, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_from_env(backend: str | None = None) -> bool:
    """Initialize the default process group from ``torchrun``'s environment variables.

    Does nothing (returns ``False``) when ``RANK``/``WORLD_SIZE`` are not set or a group already
    exists. The backend defaults to NCCL when CUDA is available (the process then uses device
    ``LOCAL_RANK``) and gloo otherwise.

    :returns: whether a process group was created here (the caller then calls :func:`destroy`).
    """
    if is_distributed() or "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    return True


def destroy(wait: bool = True) -> None:
    """Destroy the default process group (no-op without one).

    :param wait: first wait at a barrier for every rank, so that no rank tears its connections
        down while another still uses them (a gloo rank that left early was seen to abort with
        ``terminate called without an active exception``). Every rank calls it on the normal
        path; after an error pass ``False``: the other ranks may never arrive.
    """
    if not is_distributed():
        return
    if wait and world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()


@contextlib.contextmanager
def process_group(backend: str | None = None):
    """The default process group for the ``with`` block, made from torchrun's environment by
    :func:`init_from_env` (nothing happens without it, or when a group exists already).

    A group made here is destroyed on leaving: after every rank has arrived when the block
    ends normally, at once when it raises (the other ranks may never arrive; :func:`destroy`).
    Yields whether the group was made here.
    """
    created = init_from_env(backend)
    try:
        yield created
    except BaseException:
        if created:
            destroy(wait=False)
        raise
    if created:
        destroy()


def barrier() -> None:
    """Wait for every rank (no-op for ``W = 1``)."""
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(value: float) -> float:
    """The sum of ``value`` over ranks (float64), identical on every rank."""
    if world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on at least one rank; identical on every rank."""
    if world_size() == 1:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (picklable objects)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(n: int, rank_: int | None = None, world_size_: int | None = None) -> slice:
    """This rank's contiguous range of ``n`` rows: rank ``r`` of ``W`` gets rows
    :math:`[\\lfloor rn/W \\rfloor, \\lfloor (r+1)n/W \\rfloor)`, so the shards are disjoint,
    complete, in rank order, and differ in size by at most one row."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world_size_ is None else world_size_
    if not 0 <= r < w:
        raise ValueError(f"rank {r} is not in [0, {w})")
    return slice(r * n // w, (r + 1) * n // w)


def gather_rows(rows: np.ndarray, dst: int | None = None) -> np.ndarray | None:
    """Concatenate every rank's ``rows`` (this rank's :func:`shard` of an array) in rank order.

    :param rows: this rank's rows (any leading length, same trailing shape on every rank).
    :param dst: ``None``: the result on every rank; a rank: only there (``None`` elsewhere).
    """
    if world_size() == 1:
        return rows
    rows = np.asarray(rows)
    if dst is None:
        parts = all_gather_object(rows)
    else:
        parts = [None] * world_size() if rank() == dst else None
        dist.gather_object(rows, parts, dst=dst)
        if rank() != dst:
            return None
    return np.concatenate(parts, axis=0)
