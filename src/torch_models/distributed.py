"""Where a torch run executes: its device, its CPU threads and its place among torchrun's ranks.

Why a module of its own: every other part of a run (the batches, the evaluation, the
checkpoint) asks the same two questions, "which device?" and "which rank?", and the
collectives that keep the ranks in step must be made the same way everywhere.

The world is read from torchrun's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; a world of one
is an ordinary single-process run and nothing here makes a collective call then. The
process group uses NCCL on CUDA and gloo on the CPU.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.distributed as dist

from fastmlp.hyperparams import check
from torch_models.devices import backend_settings

__all__ = [
    "DistContext",
    "broadcast_object",
    "distributed_context",
    "gather_objects",
    "local_batch_size",
    "on_every_rank",
    "resolve_device",
]

@dataclasses.dataclass(frozen=True)
class DistContext:
    """Where this process runs: its device and its place among the torchrun ranks.

    ``owns_group`` is True when :func:`distributed_context` created the process
    group (and must destroy it); ``backend`` holds the settings of
    :func:`torch_models.devices.backend_settings` in force.
    """

    device: torch.device
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False
    backend: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """Turn ``--device`` (``auto``: CUDA when torch sees a GPU, else the CPU) into a ``torch.device``.

    CUDA is ``cuda:<local_rank>``.

    Raises
    ------
    TypeError, ValueError
        When ``name`` is not one of :data:`fastmlp.hyperparams.DEVICES` (the table's
        message), or CUDA was asked for but is not available.
    """
    check("device", name, label="--device")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but torch.cuda.is_available() is False")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {local_rank} has no GPU: only {torch.cuda.device_count()} visible")
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def distributed_context(device_name: str, threads: int | None = None, *,
                        deterministic: bool = False) -> Iterator[DistContext]:
    """Set up device, CPU threads, backend switches and (under torchrun) the process group; undo on exit.

    A process group that already exists (made by the caller) is used and left alone; one
    made here is destroyed on exit, after a barrier when the body finished normally (so
    no rank tears the group down while another is still in a collective).
    ``torch.set_num_threads`` and the backend switches
    (:func:`torch_models.devices.backend_settings`, ``deterministic``) are restored on exit.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    device = resolve_device(device_name, local_rank if world_size > 1 else 0)
    owns_group = False
    try:
        if world_size > 1:
            if device.type == "cuda":
                torch.cuda.set_device(device)  # NCCL collectives use the current device
            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                        init_method="env://")
                owns_group = True
            world_size, rank = dist.get_world_size(), dist.get_rank()
        with backend_settings(device, deterministic=deterministic) as backend:
            yield DistContext(device, world_size, rank, local_rank, owns_group, backend)
        if owns_group:
            dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()
        torch.set_num_threads(previous_threads)


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself without a process group)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, ctx: DistContext) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not ctx.distributed:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def on_every_rank(ctx: DistContext, action: Callable[[], Any], what: str) -> Any:
    """Run ``action`` on every rank and return its result; if it raised on any rank, raise on all.

    Used around file writes (which rank 0 alone makes): a rank whose write fails would
    otherwise leave the others blocked in their next collective until it times out.
    ``what`` names the action in the other ranks' ``RuntimeError``.
    """
    error, result = None, None
    try:
        result = action()
    except Exception as exc:  # noqa: BLE001 - shared with the other ranks, then re-raised
        error = exc
    if ctx.distributed:
        failures = [f for f in gather_objects(None if error is None else f"{type(error).__name__}: {error}", ctx)
                    if f is not None]
        if error is None and failures:
            raise RuntimeError(f"another rank failed while {what}: {failures[0]}")
    if error is not None:
        raise error
    return result


def local_batch_size(batch_size: int, world_size: int, min_local_batch: int) -> int:
    """Rows of the global batch each rank trains on.

    Raises
    ------
    ValueError
        Naming ``--batch_size`` when it is not a multiple of the world size, or leaves a
        rank fewer than ``min_local_batch`` rows (2 for BatchNorm's batch statistics).
    """
    if batch_size % world_size:
        raise ValueError(f"--batch_size {batch_size} must be a multiple of the world size "
                         f"{world_size} (each rank trains on an equal slice of the global batch)")
    local = batch_size // world_size
    if local < min_local_batch:
        per_rank = f" per rank (world size {world_size})" if world_size > 1 else ""
        raise ValueError(f"--batch_size {batch_size} gives {local} example(s){per_rank}, but the model's BatchNorm "
                         f"layers need at least {min_local_batch} per batch to compute batch statistics")
    return local
