"""torch.distributed helpers for running under ``torchrun`` (gloo on CPU, NCCL on GPU).

Outside torchrun every helper degrades to the single-process answer, so library code calls them
unconditionally. Work is split by example index, never by batch position, so gathered results
equal a single-process run exactly.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from modelsoup.errors import ModelSoupError


def launched_by_torchrun() -> bool:
    """True when the environment carries torchrun's rendezvous variables."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else CPU; ``cuda`` without CUDA errors.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cpu":
        return torch.device("cpu")
    if device in ("cuda", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", local % torch.cuda.device_count())
        if device == "cuda":
            raise ModelSoupError(
                "--device cuda: no CUDA device is available (use --device cpu or auto)"
            )
        return torch.device("cpu")
    raise ModelSoupError(f"unknown device {device!r} (use cpu, cuda or auto)")


#: Seconds a collective (e.g. the sweep's final barrier) may wait for the slowest rank.
DEFAULT_TIMEOUT_S = 6 * 3600


def init(device: str = "auto") -> torch.device:
    """Join the process group when launched by torchrun (idempotent) and return this rank's device.

    The backend is NCCL when this rank runs on a GPU, gloo otherwise. Collectives wait up to
    ``$MODELSOUP_DIST_TIMEOUT`` seconds (default 6 hours: a sweep's ranks may finish their trials
    far apart) before failing.

    Example:
        >>> init("cpu")  # outside torchrun: no process group, just the device
        device(type='cpu')
    """
    dev = resolve_device(device)
    if launched_by_torchrun() and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        raw = os.environ.get("MODELSOUP_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
        try:
            seconds = float(raw)
        except ValueError:
            raise ModelSoupError(
                f"MODELSOUP_DIST_TIMEOUT={raw!r}: give a number of seconds"
            ) from None
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=seconds))
        # Without this, gloo's worker threads can outlive the interpreter and the process
        # aborts at exit ("terminate called without an active exception", SIGABRT).
        atexit.register(_destroy_process_group)
    return dev


def shutdown() -> None:
    """End a successful run under torchrun: wait for every rank, then destroy the process group.

    A rank that tears its group down while a peer is still finishing can abort (gloo); the
    barrier makes every rank leave together. Nothing happens outside torchrun. (On other exits
    the group is destroyed without a barrier, at interpreter exit.)

    Example:
        >>> shutdown()  # the last line of a torchrun entry point
    """
    barrier()
    _destroy_process_group()


def _destroy_process_group() -> None:
    if dist.is_initialized():
        # already torn down, or a peer is gone: the process is exiting anyway
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def active() -> bool:
    """Whether a process group of more than one rank is running (torchrun).

    Example:
        >>> active()  # a plain `python` process
        False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside torchrun).

    Example:
        >>> rank()
        0
    """
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """The number of ranks (1 outside torchrun).

    Example:
        >>> world_size()
        1
    """
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process should write files and print results (rank 0)."""
    return rank() == 0


def shard_range(
    n: int, rank_: int | None = None, world: int | None = None, *, block: int = 1
) -> range:
    """The contiguous block of ``range(n)`` owned by a rank; blocks cover ``n`` exactly once.

    With ``block > 1`` the split is made of whole runs of ``block`` items (the last one may be
    short), so that a rank's batches are exactly batches of a single-process pass.

    Example:
        >>> [list(shard_range(5, r, 2)) for r in range(2)]
        [[0, 1, 2], [3, 4]]
        >>> [list(shard_range(5, r, 2, block=2)) for r in range(2)]
        [[0, 1, 2, 3], [4]]
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    blocks = -(-n // block)
    base, extra = divmod(blocks, w)
    start = r * base + min(r, extra)
    stop = start + base + (1 if r < extra else 0)
    return range(min(n, start * block), min(n, stop * block))


def gather_rows(local: torch.Tensor, n: int, *, block: int = 1) -> torch.Tensor:
    """Concatenate every rank's :func:`shard_range` block of rows into the full ``[n, ...]`` tensor.

    ``local`` holds this rank's rows of ``shard_range(n, block=block)``, in order. Bool tensors
    travel as uint8 (gloo cannot gather bools).

    Example:
        >>> gather_rows(torch.arange(3), 3)  # outside torchrun: the rows themselves
        tensor([0, 1, 2])
    """
    if not active():
        return local
    w = world_size()
    sizes = [len(shard_range(n, r, w, block=block)) for r in range(w)]
    if local.shape[0] != sizes[rank()]:
        raise ModelSoupError(
            f"gather_rows: rank {rank()} holds {local.shape[0]} rows, its shard has {sizes[rank()]}"
        )
    wire = local.to(torch.uint8) if local.dtype == torch.bool else local
    padded = torch.zeros((max(sizes), *wire.shape[1:]), dtype=wire.dtype, device=wire.device)
    padded[: wire.shape[0]] = wire
    padded = _to_comm_device(padded)
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)
    out = torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(local.device)
    return out.bool() if local.dtype == torch.bool else out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place; returned for convenience).

    Example:
        >>> all_reduce_sum(torch.tensor([1.0, 2.0]))  # outside torchrun: unchanged
        tensor([1., 2.])
    """
    if active():
        moved = _to_comm_device(t)
        dist.all_reduce(moved)
        if moved is not t:
            t.copy_(moved)
    return t


def all_reduce_max(value: int) -> int:
    """The largest of every rank's ``value``.

    Example:
        >>> all_reduce_max(3)  # outside torchrun
        3
    """
    if not active():
        return value
    t = _to_comm_device(torch.tensor([value], dtype=torch.int64))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s object on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (nothing outside torchrun).

    Example:
        >>> barrier()  # every rank has written its part before rank 0 reads them
    """
    if active():
        dist.barrier()


def _to_comm_device(t: torch.Tensor) -> torch.Tensor:
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        return t.cuda()
    return t
