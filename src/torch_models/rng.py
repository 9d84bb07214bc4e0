"""The random streams of a torch run, captured as plain data and put back on ``--resume``.

Why a module of its own: a resumed run repeats an uninterrupted one only if every stream
a step draws from continues where it stopped: torch's CPU generator and the CUDA
generator of the rank's device (dropout masks, the ConvNet's crops and flips), NumPy's
and Python's global generators. The checkpoint is read with
``torch.load(weights_only=True)``, which builds tensors and plain Python values only, so
the states are stored as exactly those: NumPy's MT19937 key and Python's internal state
as int64 tensors, the rest as ints, floats and strings.
"""
from __future__ import annotations

import random
import warnings
from typing import Any, Mapping

import numpy as np
import torch

from torch_models.distributed import DistContext

__all__ = ["host_state", "rank_state", "restore", "resume_seed"]


def rank_state(ctx: DistContext) -> dict[str, torch.Tensor | None]:
    """This rank's torch generators: ``torch`` (CPU, uint8 tensor) and ``cuda`` (None on the CPU)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(ctx.device) if ctx.device.type == "cuda" else None,
    }


def host_state() -> dict[str, dict[str, Any]]:
    """NumPy's and Python's global generators as tensors and plain values (``numpy``, ``python``)."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def _restore_host_state(state: Mapping[str, Any]) -> None:
    numpy_state, python_state = state["numpy"], state["python"]
    np.random.set_state((numpy_state["name"], np.asarray(numpy_state["keys"]).astype(np.uint32),
                         int(numpy_state["pos"]), int(numpy_state["has_gauss"]),
                         float(numpy_state["cached_gaussian"])))
    random.setstate((int(python_state["version"]), tuple(int(v) for v in python_state["internal"].tolist()),
                     python_state["gauss_next"]))


def resume_seed(seed: int, rank: int, step: int) -> int:
    """Seed of a rank's torch generators when a checkpoint's streams cannot be continued.

    Distinct per rank and per resume step, so no rank repeats another's draws or the
    stream a fresh run starts with.
    """
    return seed + rank + 7919 * step


def restore(state: Mapping[str, Any], ctx: DistContext, *, seed: int, step: int) -> None:
    """Put back the streams a checkpoint saved at ``step`` (``state``: its ``rng`` entry).

    ``state["per_rank"]`` holds every rank's :func:`rank_state`; this rank continues its
    own. When the checkpoint was written by another number of processes, or on another
    device type (the device's generator draws the masks and crops), the streams cannot
    continue: the torch generators are reseeded from :func:`resume_seed` instead, with a
    warning on rank 0 (a valid continuation, not a bit-identical one).

    Raises
    ------
    ValueError, TypeError
        For a state of the wrong shape or type (a damaged checkpoint).
    """
    per_rank = state["per_rank"]
    mine = per_rank[ctx.rank] if len(per_rank) == ctx.world_size else None
    saved_on_cuda = mine is not None and mine["cuda"] is not None
    if mine is None or saved_on_cuda != (ctx.device.type == "cuda"):
        if ctx.is_main:
            why = (f"checkpoint was written by {len(per_rank)} process(es), this run has {ctx.world_size}"
                   if mine is None else f"checkpoint was written on {'CUDA' if saved_on_cuda else 'the CPU'}, "
                                        f"this run trains on {ctx.device.type.upper()}")
            warnings.warn(f"{why}: dropout/augmentation streams are reseeded from --seed, the rank and the step",
                          stacklevel=3)
        torch.manual_seed(resume_seed(seed, ctx.rank, step))  # the CPU and every CUDA generator
        if mine is None:
            return
    else:
        torch.set_rng_state(mine["torch"])
        if saved_on_cuda:
            torch.cuda.set_rng_state(mine["cuda"], ctx.device)
    _restore_host_state(state)
