"""Training machinery shared by ``torch_models.train_mlp`` and ``torch_models.train_convnet``.

What lives here, so that each trainer module only says *which* model, optimizer,
schedule and input layout it uses:

- device choice (``--device {auto,cpu,cuda}``) and CPU thread count (``--num_threads``);
- distributed setup/teardown under ``torchrun`` (:func:`distributed_context`);
- checkpoints written atomically through :func:`fastmlp.atomic.atomic_path` + ``torch.save``
  and read back for ``--resume`` (:func:`save_checkpoint`, :func:`load_checkpoint`);
- whole-split evaluation (:func:`evaluate`);
- one training forward/backward (:func:`forward_backward`, also timed by
  ``benches/convnet_step.py``);
- the step loop (:func:`fit`): tqdm bar with the running loss, NaN/inf check
  (:class:`fastmlp.runlog.DivergenceError`), evaluation + checkpoint every
  ``--eval_freq`` steps and at the end, curves and metrics through
  :class:`fastmlp.runlog.RunLog`.

Precision, backends and the GPU
-------------------------------
The autocast dtype comes from :mod:`torch_models.precision` (what ``--amp`` applies on
this device, recorded in the checkpoint and ``metrics.json``), the cuDNN/TF32/determinism
switches from :mod:`torch_models.devices` (``--deterministic``; what ``--resume`` promises
on a GPU is written there). On CUDA, batches reach the GPU from pinned buffers
(:mod:`torch_models.transfer`) and the per-step losses are read every
:data:`CUDA_READ_EVERY` steps (:mod:`torch_models.step_stats`), so the host does not wait
for the GPU at every step; a NaN/inf loss is then found up to that many steps late, but
still names its step and never reaches a checkpoint (the losses are read before every
evaluation). On the CPU the loss is checked before every update.

Distributed data parallel (torchrun)
------------------------------------
When ``WORLD_SIZE`` > 1 (torchrun sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) the
process group is initialised with NCCL on CUDA and gloo on CPU and the model is
wrapped in ``DistributedDataParallel``. Batches are sharded by **slicing the global
batch**: every rank keeps an identical, identically seeded training ``DataSet``,
draws the same global batch of ``--batch_size`` examples and trains on its own
contiguous slice of ``batch_size / world_size`` rows (``--batch_size`` must be a
multiple of the world size, with at least two rows per rank for BatchNorm). Each rank
gathers the global batch on the host (the ``DataSet``'s order is what ``--resume``
restores) and copies only its slice to its device. So the sequence of global batches, the epoch
bookkeeping and the checkpointed data state are those of a single-process run,
and DDP's gradient averaging gives the gradient of the global batch mean loss
(BatchNorm layers still see only their rank's slice: no SyncBatchNorm).
Dropout/augmentation randomness differs per rank (torch seed ``seed + rank``);
every rank's RNG state is gathered into the checkpoint.

Evaluation is sharded too: each rank evaluates a contiguous slice of the split
and the loss/correct counts are all-reduced (BatchNorm running statistics are
first broadcast from rank 0, whose state is what the checkpoint stores), so all
ranks hold the same metrics and call ``on_eval`` with them (an exception raised
by ``on_eval`` therefore stops every rank). Only rank 0 writes files and shows
the progress bar; the per-step loss shown and checked for NaN is all-reduced. A failure
while writing outputs is shared with every rank (all raise), and ranks wait for each
other before the process group is destroyed.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fastmlp.atomic import atomic_path
from fastmlp.runlog import (
    DivergenceError,
    RunLog,
    check_finite,
    default_out_dir,
    progress_bar,
    resolve_checkpoint,
)
from fastmlp.cli import explicit_flags
from torch_models.devices import backend_settings, describe_device, synchronize
from torch_models.precision import Precision, choose_precision
from torch_models.step_stats import StepStats
from torch_models.transfer import HostToDevice

__all__ = [
    "CHECKPOINT_NAME",
    "DRY_RUN_EVAL_EXAMPLES",
    "DRY_RUN_EVAL_FREQ",
    "DRY_RUN_STEPS",
    "INVOCATION_FLAGS",
    "DistContext",
    "EvalSet",
    "add_common_arguments",
    "check_common_args",
    "class_indices",
    "distributed_context",
    "evaluate",
    "explicit_flags",
    "fit",
    "forward_backward",
    "load_checkpoint",
    "resolve_checkpoint_path",
    "resolve_device",
    "resume_seed",
    "run_main",
    "save_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "torch_models.checkpoint/1"
# --dry_run (as in fastmlp.train): enough steps to exercise every code path (an
# evaluation in the middle and one at the end), evaluated on a slice of each split
# (smaller than fastmlp's 500: a ConvNet evaluation is slow on a CPU).
DRY_RUN_STEPS = 4
DRY_RUN_EVAL_FREQ = 2
DRY_RUN_EVAL_EXAMPLES = 200
#: On CUDA the per-step losses are read (a host-GPU synchronisation) every this many steps.
CUDA_READ_EVERY = 25

#: Flags that describe this invocation rather than the run: ``main`` never takes them
#: from the checkpoint on ``--resume`` (all others not given again are taken from it).
INVOCATION_FLAGS = ("resume", "out_dir", "dry_run", "quiet", "num_threads", "data_dir", "device")


# --------------------------------------------------------------------------- CLI pieces
def add_common_arguments(parser: argparse.ArgumentParser, *, learning_rate: float, max_steps: int,
                         batch_size: int, eval_freq: int) -> None:
    """Add the flags both torch trainers share, with the given course defaults."""
    parser.add_argument("--learning_rate", type=float, default=learning_rate, help="learning rate")
    parser.add_argument("--max_steps", type=int, default=max_steps, help="number of optimisation steps")
    parser.add_argument("--batch_size", type=int, default=batch_size,
                        help="global mini-batch size (split across ranks under torchrun)")
    parser.add_argument("--eval_freq", type=int, default=eval_freq,
                        help="evaluate on the whole test (and validation) set and checkpoint every N steps")
    parser.add_argument("--eval_batch_size", type=int, default=1000,
                        help="batch size for evaluation (larger: fewer passes, more memory)")
    parser.add_argument("--data_dir", default=None,
                        help="folder holding CIFAR-10 (default: $FASTMLP_DATA, else ~/.cache/fastmlp)")
    parser.add_argument("--validation_size", type=int, default=0,
                        help="training images held out (from the end of the training set) for validation")
    parser.add_argument("--seed", type=int, default=42, help="seed of the model init, batch order and dropout")
    parser.add_argument("--out_dir", default=None,
                        help="output folder (default: runs/<timestamp>, or the --resume run's folder)")
    parser.add_argument("--resume", default=None, metavar="PATH",
                        help="continue from a checkpoint.pt file or a run folder holding one")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto = cuda when available, else cpu")
    parser.add_argument("--num_threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's own choice)")
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=False,
                        help="CUDA: deterministic cuDNN/cuBLAS algorithms (torch raises on an op that has none), so "
                             "--resume repeats an uninterrupted run bit for bit on the same GPU; costs some speed. "
                             "Without it cudnn.benchmark picks the fastest convolutions per process. The CPU is "
                             "deterministic either way")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.add_argument("--plot", action="store_true",
                        help="also draw curves.png at the end (or later: python -m fastmlp.plot <out_dir>)")
    parser.add_argument("--dry_run", action="store_true",
                        help=f"print the plan, then train {DRY_RUN_STEPS} steps, evaluating every "
                             f"{DRY_RUN_EVAL_FREQ} on {DRY_RUN_EVAL_EXAMPLES} examples per split "
                             "(outputs default to runs/dryrun-<timestamp>)")


def check_common_args(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` naming the flag when a shared flag is out of range."""
    for name in ("max_steps", "batch_size", "eval_freq", "eval_batch_size"):
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name} must be a positive int, got {value!r}")
    if not (isinstance(args.validation_size, int) and args.validation_size >= 0):
        raise ValueError(f"--validation_size must be an int >= 0, got {args.validation_size!r}")
    if not (isinstance(args.learning_rate, (int, float)) and args.learning_rate > 0):
        raise ValueError(f"--learning_rate must be a positive float, got {args.learning_rate!r}")
    if not isinstance(args.seed, int) or isinstance(args.seed, bool):
        raise ValueError(f"--seed must be an int, got {args.seed!r}")
    if args.num_threads is not None and (not isinstance(args.num_threads, int) or args.num_threads < 1):
        raise ValueError(f"--num_threads must be a positive int, got {args.num_threads!r}")
    if args.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be one of auto, cpu, cuda, got {args.device!r}")
    if not isinstance(getattr(args, "deterministic", False), bool):
        raise ValueError(f"--deterministic must be a bool, got {args.deterministic!r}")


def run_main(train: Callable[..., dict], build_parser: Callable[[], argparse.ArgumentParser],
             argv: list[str] | None = None) -> int:
    """Body of each trainer's ``main``: parse, train, print a summary, map errors to exit codes.

    With ``--resume``, every flag not written in ``argv`` (except :data:`INVOCATION_FLAGS`)
    is taken from the checkpoint, so ``--resume RUN`` alone continues the run as it was
    started (``--max_steps`` may be raised to train longer). Under torchrun each rank
    reads the checkpoint's flags here, so on several machines the path must be readable
    on each of them.

    Returns 0 on success, 1 when training diverged (the message names the step), 2 for
    bad input (a flag out of range, a missing or mismatched checkpoint, missing data).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume is not None:
        try:
            saved = load_checkpoint(args.resume)["flags"]
        except (FileNotFoundError, ValueError) as err:
            parser.error(str(err))
        given = explicit_flags(build_parser(), argv)
        for name, value in saved.items():
            if name in vars(args) and name not in given and name not in INVOCATION_FLAGS:
                setattr(args, name, value)
    is_main = int(os.environ.get("RANK", "0")) == 0
    try:
        metrics = train(args)
    except DivergenceError as err:
        if is_main:
            print(f"error: {err}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError) as err:
        if is_main:
            print(f"error: {err}", file=sys.stderr)
        return 2
    if is_main and not args.quiet:
        parts = [f"test accuracy {metrics['test_accuracy']:.4f} (best {metrics['best_test_accuracy']:.4f})"]
        if "validation_accuracy" in metrics:
            parts.append(f"validation accuracy {metrics['validation_accuracy']:.4f}")
        parts.append(f"after {metrics['steps']} steps, {metrics['wall_seconds']:.1f} s "
                     f"({metrics['seconds_per_step'] * 1e3:.1f} ms per training step)")
        where = f"; outputs in {metrics['out_dir']}" if metrics.get("out_dir") else ""
        print(", ".join(parts) + where)
    return 0


# --------------------------------------------------------------------------- devices
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
    """Turn ``--device`` into a ``torch.device`` (``cuda:<local_rank>`` for CUDA).

    Raises ``ValueError`` when ``name`` is not auto/cpu/cuda or CUDA was asked for
    but is not available.
    """
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be one of auto, cpu, cuda, got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but torch.cuda.is_available() is False")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {local_rank} has no GPU: only {torch.cuda.device_count()} visible")
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def distributed_context(device_name: str, num_threads: int | None = None, *,
                        deterministic: bool = False) -> Iterator[DistContext]:
    """Set up device, CPU threads, backend switches and (under torchrun) the process group; undo on exit.

    The world is read from ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; with a world of
    one nothing distributed happens. A process group that already exists (made by
    the caller) is used and left alone; one made here is destroyed on exit, after a
    barrier when the body finished normally (so no rank tears the group down while
    another is still in a collective). ``torch.set_num_threads`` and the backend
    switches (:func:`torch_models.devices.backend_settings`, ``deterministic``) are
    restored on exit.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
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


def _broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (identity without a process group)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather_objects(obj: Any, ctx: DistContext) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not ctx.distributed:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """``torch.save(state)`` to ``path`` atomically (a crash leaves the previous file intact)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)
    return path


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/checkpoint.pt`` when ``path`` is a run folder (FileNotFoundError naming ``--resume`` if neither)."""
    return resolve_checkpoint(path, CHECKPOINT_NAME)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` onto the CPU.

    Checkpoints hold NumPy/Python objects (data-order and RNG states) besides
    tensors, so they are unpickled with ``weights_only=False``: resume only from
    checkpoints you (or this code) wrote.
    """
    path = resolve_checkpoint_path(path)
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"--resume: {path} is not a torch_models checkpoint "
                         f"(expected format {CHECKPOINT_FORMAT!r})")
    return state


def _rng_state(ctx: DistContext) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(ctx.device) if ctx.device.type == "cuda" else None,
    }


def resume_seed(seed: int, rank: int, step: int) -> int:
    """Seed of a rank's torch generators when a checkpoint's streams cannot be continued.

    Distinct per rank and per resume step, so no rank repeats another's draws or the
    stream a fresh run starts with.
    """
    return seed + rank + 7919 * step


def _restore_rng_state(checkpoint: Mapping[str, Any], ctx: DistContext, seed: int) -> None:
    per_rank = checkpoint["rng"]["per_rank"]
    step = int(checkpoint["step"])
    mine = per_rank[ctx.rank] if len(per_rank) == ctx.world_size else None
    # Dropout masks and crops come from the generator of the device they run on: the
    # checkpoint's stream of that device continues only if it was saved from that device.
    saved_on_cuda = mine is not None and mine["cuda"] is not None
    if mine is None or saved_on_cuda != (ctx.device.type == "cuda"):
        # Still a valid continuation, just not bit-identical to an uninterrupted run.
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
    np.random.set_state(checkpoint["rng"]["numpy"])
    random.setstate(checkpoint["rng"]["python"])


# --------------------------------------------------------------------------- evaluation
@dataclasses.dataclass
class EvalSet:
    """This rank's slice of an evaluation split, ready for :func:`evaluate`.

    Attributes
    ----------
    images : torch.Tensor, shape (n_local, *input_shape), float32
        On the training device (moved once, not per evaluation).
    labels : torch.Tensor, shape (n_local,), int64
        Class indices, on the same device.
    total : int
        Examples in the whole split (all ranks together).
    """

    images: torch.Tensor
    labels: torch.Tensor
    total: int

    @classmethod
    def from_dataset(cls, dataset, *, input_shape: tuple[int, ...], ctx: DistContext,
                     limit: int | None = None) -> "EvalSet":
        """Slice ``dataset`` (a ``fastmlp.data.DataSet``) for this rank; ``limit`` keeps the first N."""
        x, y = dataset.as_arrays(flatten=False)
        if limit is not None:
            x, y = x[:limit], y[:limit]
        n = len(x)
        lo, hi = n * ctx.rank // ctx.world_size, n * (ctx.rank + 1) // ctx.world_size
        images = _images_to_tensor(x[lo:hi], input_shape).to(ctx.device)
        labels = torch.from_numpy(class_indices(y[lo:hi])).to(ctx.device)
        return cls(images, labels, n)


def class_indices(labels: np.ndarray) -> np.ndarray:
    """Class indices, shape (n,) int64, from indices (n,) or one-hot rows (n, n_classes)."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels.argmax(axis=1)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (n,) or (n, n_classes), got {labels.shape}")
    return labels.astype(np.int64, copy=False)


def _model_input_array(x: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """Contiguous float32 array of shape (n, *input_shape): ``x`` itself when it already is one."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    expected = math.prod(input_shape)
    if x.ndim < 2 or math.prod(x.shape[1:]) != expected:
        raise ValueError(f"images must have {expected} values per example (model input {input_shape}), "
                         f"got array of shape {x.shape}")
    return x.reshape(len(x), *input_shape)


def _images_to_tensor(x: np.ndarray, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Float32 CPU tensor of shape (n, *input_shape) sharing memory with ``x`` when possible."""
    return torch.from_numpy(_model_input_array(x, input_shape))


def evaluate(model: nn.Module, eval_set: EvalSet, *, batch_size: int, ctx: DistContext,
             autocast_dtype: torch.dtype | None = None, channels_last: bool = False,
             static_shapes: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over a whole split (all ranks together).

    Runs in batches of ``batch_size`` under ``torch.inference_mode()`` and, with
    ``autocast_dtype``, under the training run's autocast. ``model`` is put in eval mode
    for the pass and restored to its previous mode.

    Parameters
    ----------
    static_shapes : bool
        Zero-pad the last, ragged batch to the full batch (the padding rows are not
        counted), so a compiled model sees one input shape and never recompiles. The
        batch is ``min(batch_size, examples on this rank)``.
    """
    was_training = model.training
    model.eval()
    n = len(eval_set.labels)
    batch_size = max(1, min(batch_size, n))
    padded_tail = None
    if static_shapes and n % batch_size:
        # Made here, outside inference mode, so it is an ordinary tensor like the other batches
        # (a compiled model's guards tell the two kinds apart).
        tail = eval_set.images[n - n % batch_size:]
        padded_tail = torch.cat([tail, tail.new_zeros(batch_size - len(tail), *tail.shape[1:])])
    try:
        with torch.inference_mode():
            stats = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # loss sum, correct, count
            for start in range(0, n, batch_size):
                x = eval_set.images[start:start + batch_size]
                y = eval_set.labels[start:start + batch_size]
                if padded_tail is not None and len(y) < batch_size:
                    x = padded_tail
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(ctx.device.type, dtype=autocast_dtype or torch.bfloat16,
                                    enabled=autocast_dtype is not None):
                    logits = model(x)[:len(y)]
                stats[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
                stats[1] += (logits.argmax(dim=1) == y).sum()
                stats[2] += len(y)
        if ctx.distributed:
            dist.all_reduce(stats)
        loss_sum, correct, count = stats.tolist()
    finally:
        model.train(was_training)
    return loss_sum / count, correct / count


def forward_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, precision: Precision,
                     scaler: torch.amp.GradScaler, label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One training forward pass under ``precision``'s autocast, the loss, and its backward pass.

    The caller zeroes the gradients before and steps the optimizer after (through
    ``scaler.step``: with a float16 scaler the gradients are scaled).

    Parameters
    ----------
    model : nn.Module
        In training mode; maps ``x`` to logits of shape (batch, n_classes).
    x : torch.Tensor, shape (batch, *input_shape)
    y : torch.Tensor, shape (batch,), int64 class indices
    precision : torch_models.precision.Precision
    scaler : torch.amp.GradScaler
        From ``precision.make_grad_scaler()``.
    label_smoothing : float
        Of the cross-entropy (``torch.nn.functional.cross_entropy``).

    Returns
    -------
    loss : torch.Tensor, 0-d
        The batch's mean loss (float32, detached, not read from the device).
    correct : torch.Tensor, 0-d int64
        How many rows of the batch the logits classify correctly.
    """
    with precision.autocast():
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)  # reduced in float32
    scaler.scale(loss).backward()
    return loss.detach(), (logits.detach().argmax(dim=1) == y).sum()


# --------------------------------------------------------------------------- the loop
def _flags_of(args: argparse.Namespace) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(vars(args).items())}


def _check_resumable(saved: Mapping[str, Any], current: Mapping[str, Any], path: str,
                     architecture_flags: tuple[str, ...], trajectory_flags: tuple[str, ...], *,
                     warn: bool = True) -> None:
    for name in architecture_flags:
        if name in saved and saved[name] != current.get(name):
            raise ValueError(f"cannot resume from {path!r}: it was trained with --{name} {saved[name]!r}, "
                             f"this run asks for {current.get(name)!r}")
    if not warn:
        return
    changed = [f"--{name} {saved[name]!r} -> {current.get(name)!r}" for name in trajectory_flags
               if name in saved and saved[name] != current.get(name)]
    if changed:
        warnings.warn("resuming with changed flags (" + ", ".join(changed) + "): the result will differ "
                      "from an uninterrupted run", stacklevel=3)
    if (saved.get("max_steps") != current.get("max_steps")
            and current.get("lr_schedule") not in (None, "constant")):
        warnings.warn("--max_steps differs from the checkpoint's: the learning-rate schedule keeps the "
                      "horizon it was created with", stacklevel=3)


def _warn_on_precision_change(checkpoint: Mapping[str, Any], precision: Precision, path: str) -> None:
    """Warn when the checkpoint trained under another autocast dtype than this run applies.

    Weights and optimizer state are float32 either way, so the checkpoint loads; only the
    trajectory changes. Checkpoints from before the applied dtype was recorded say
    ``amp`` as requested: with ``--amp`` their dtype is unknown.
    """
    recorded = checkpoint.get("precision")
    if recorded is not None:
        saved = recorded["autocast_dtype"] or "float32"
    else:
        saved = "unknown (not recorded)" if checkpoint["flags"].get("amp") else "float32"
    current = precision.dtype_name or "float32"
    if saved != current:
        warnings.warn(f"--resume {path}: the checkpoint trained under {saved} autocast, this run trains under "
                      f"{current} ({precision.reason}); the float32 weights and optimizer state load unchanged, "
                      "but the result will differ from an uninterrupted run", stacklevel=3)


def _checkpoint_to_resume(args: argparse.Namespace, ctx: DistContext, trainer_name: str, flags: Mapping[str, Any],
                          architecture_flags: tuple[str, ...], trajectory_flags: tuple[str, ...]) -> dict | None:
    """The ``--resume`` checkpoint (None without it), checked against this run's flags.

    Read by rank 0 and sent to the others, so a bad path fails on every rank instead of
    leaving the others waiting in a collective.
    """
    if not args.resume:
        return None
    loaded: Any = None
    if ctx.is_main:
        try:
            loaded = load_checkpoint(args.resume)
        except (OSError, ValueError) as err:
            loaded = err
    loaded = _broadcast_object(loaded, ctx)
    if isinstance(loaded, BaseException):
        raise loaded
    if loaded["trainer"] != trainer_name:
        raise ValueError(f"--resume: {args.resume} is a {loaded['trainer']} checkpoint, not a {trainer_name} one")
    _check_resumable(loaded["flags"], flags, str(args.resume), architecture_flags, trajectory_flags,
                     warn=ctx.is_main)
    return loaded


def _local_batch_size(batch_size: int, world_size: int, min_local_batch: int) -> int:
    """Rows of the global batch each rank trains on (``ValueError`` naming ``--batch_size`` when unusable)."""
    if batch_size % world_size:
        raise ValueError(f"--batch_size {batch_size} must be a multiple of the world size "
                         f"{world_size} (each rank trains on an equal slice of the global batch)")
    local = batch_size // world_size
    if local < min_local_batch:
        per_rank = f" per rank (world size {world_size})" if world_size > 1 else ""
        raise ValueError(f"--batch_size {batch_size} gives {local} example(s){per_rank}, but the model's BatchNorm "
                         f"layers need at least {min_local_batch} per batch to compute batch statistics")
    return local


def _on_every_rank(ctx: DistContext, action: Callable[[], None], what: str) -> None:
    """Run ``action`` on every rank; if it raised on any rank, raise on all.

    Used around file writes (which rank 0 alone makes): a rank whose write fails would
    otherwise leave the others blocked in their next collective until it times out.
    """
    error = None
    try:
        action()
    except Exception as err:  # noqa: BLE001 - shared with the other ranks, then re-raised
        error = err
    if ctx.distributed:
        failures = [f for f in _gather_objects(None if error is None else f"{type(error).__name__}: {error}", ctx)
                    if f is not None]
        if error is None and failures:
            raise RuntimeError(f"another rank failed while {what}: {failures[0]}")
    if error is not None:
        raise error


class _TrainingClock:
    """Seconds spent training, measured between synchronisation points.

    CUDA kernels finish after the host has moved on, so the time of a stretch of steps is
    only known once the device has caught up: the clock is stopped (after synchronising)
    before each evaluation and started again after it. The first step of a compiled model
    (compilation) is counted apart, in ``warmup_seconds``.
    """

    def __init__(self, device: torch.device, state: Mapping[str, Any] | None = None):
        state = state or {}
        self.device = device
        self.seconds = float(state.get("train_seconds", 0.0))
        self.steps = int(state.get("timed_steps", state.get("step", 0)))  # older checkpoints timed every step
        self.warmup_seconds = float(state.get("compile_seconds", 0.0))
        self._start, self._pending = time.perf_counter(), 0

    def start(self) -> None:
        self._start, self._pending = time.perf_counter(), 0

    def tick(self) -> None:
        self._pending += 1

    def stop(self, *, warmup: bool = False) -> None:
        synchronize(self.device)
        elapsed = time.perf_counter() - self._start
        if warmup:
            self.warmup_seconds += elapsed
        else:
            self.seconds += elapsed
            self.steps += self._pending
        self._pending = 0

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps if self.steps else float("nan")

    def state(self) -> dict[str, Any]:
        return {"train_seconds": self.seconds, "timed_steps": self.steps, "compile_seconds": self.warmup_seconds}


def _format_report(step: int, row: Mapping[str, float]) -> str:
    parts = [f"step {step:6d}"]
    for split in ("train", "validation", "test"):
        if f"{split}_accuracy" in row:
            parts.append(f"{split} loss {row[f'{split}_loss']:.4f} acc {row[f'{split}_accuracy']:.4f}")
    return "  ".join(parts)


def _describe_plan(*, trainer_name, ctx, model, optimizer, scheduler, data_sizes, args, max_steps,
                   out_dir, precision, extra) -> str:
    n_params = sum(p.numel() for p in model.parameters())
    backend = ", ".join(f"{k} {v}" for k, v in ctx.backend.items())
    lines = [
        f"{trainer_name} --dry_run: the full run would train {args.max_steps} steps of global batch "
        f"{args.batch_size} on {ctx.device} (world size {ctx.world_size}), evaluating on the whole "
        f"test/validation sets and checkpointing every {args.eval_freq} steps;",
        f"  this dry run trains {max_steps} steps, evaluating every {DRY_RUN_EVAL_FREQ} on at most "
        f"{DRY_RUN_EVAL_EXAMPLES} examples per split",
        "  data: " + ", ".join(f"{k} {v} examples" for k, v in data_sizes.items()),
        f"  model: {n_params:,} parameters\n" + "\n".join("    " + line for line in repr(model).splitlines()),
        f"  optimizer: {type(optimizer).__name__} lr={args.learning_rate}"
        + (f", schedule {type(scheduler).__name__}" if scheduler is not None else ", constant lr"),
        f"  precision: {precision.dtype_name or 'float32'} ({precision.reason}); backends: {backend}",
        *(f"  {line}" for line in extra),
        f"  outputs: {out_dir}",
        f"  resume: {args.resume or 'no'}",
    ]
    return "\n".join(lines)


def fit(args: argparse.Namespace, *, trainer_name: str, ctx: DistContext, data: Mapping[str, Any],
        input_shape: tuple[int, ...], build_model: Callable[[], nn.Module],
        build_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
        build_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        dataset_augment: bool = False,
        channels_last: bool = False, compile_model: bool = False, precision: Precision | None = None,
        label_smoothing: float = 0.0, min_local_batch: int = 1,
        on_eval: Callable[[int, dict], None] | None = None,
        architecture_flags: tuple[str, ...] = (), trajectory_flags: tuple[str, ...] = (),
        plan_notes: tuple[str, ...] = ()) -> dict:
    """Train, evaluate, checkpoint and log one run; return the metrics written to metrics.json.

    The untrained model is evaluated at step 0 (the start of the curves, as in
    ``fastmlp.train``), then every ``args.eval_freq`` steps and after the last step;
    each evaluation records a ``curves.csv`` row (``train_loss``/``train_accuracy`` of
    that step's batch, before the update; the whole test/validation splits; the
    step's learning rate), rewrites ``checkpoint.pt`` and calls ``on_eval``.

    Parameters
    ----------
    args : argparse.Namespace
        Checked flags of :func:`add_common_arguments` plus the trainer's own (all are
        stored in the outputs). Not modified.
    trainer_name : str
        Stored in the checkpoint; a checkpoint of another trainer is refused on resume.
    ctx : DistContext
        From :func:`distributed_context`.
    data : mapping
        ``fastmlp.data.get_cifar10`` output: ``"train"`` and the splits to evaluate, ``"validation"``
        and/or ``"test"`` ``DataSet``\\ s (labels as indices or one-hot, images in any
        layout with ``prod(input_shape)`` values each). Not modified: batches are drawn
        from a fresh ``DataSet`` over the same arrays, seeded with ``args.seed``.
    input_shape : tuple of int
        Shape of one model input, e.g. ``(3072,)`` or ``(3, 32, 32)``; images are reshaped to it.
    build_model, build_optimizer, build_scheduler : callables
        Make the model (on the CPU, right after ``torch.manual_seed(args.seed)``), the
        optimizer over its parameters, and an optional LR scheduler stepped every step.
    augment : callable, optional
        ``(local_batch, *input_shape) -> same`` transform of training batches, on the device.
    dataset_augment : bool
        Crop and flip training batches in NumPy (``fastmlp.data.DataSet(augment=True)``)
        before they reach the device; the draws come from the batch-order generator, so
        the checkpointed data state keeps ``--resume`` exact.
    channels_last, compile_model : bool
        Channels-last memory format; ``torch.compile`` (the model is compiled once, for
        training and evaluation, and its first step is timed apart as ``compile_seconds``).
    precision : torch_models.precision.Precision, optional
        Autocast dtype and gradient scaling (default: float32); recorded in the
        checkpoint and ``metrics.json``.
    label_smoothing : float
        Of the training loss (the evaluation loss is the plain cross-entropy).
    min_local_batch : int
        Fewest rows a rank's slice of the batch may have (2 for models with BatchNorm).
    on_eval : callable, optional
        ``on_eval(step, metrics)`` after each evaluation and checkpoint, ``metrics`` holding
        ``step`` and the ``curves.csv`` row; may raise to stop the run (it propagates).
    architecture_flags, trajectory_flags : tuple of str
        On ``--resume``: flags whose change makes the checkpoint unloadable (``ValueError``)
        and flags whose change makes the result differ from an uninterrupted run (warning).
    plan_notes : tuple of str
        Extra lines for the ``--dry_run`` plan.

    Raises
    ------
    fastmlp.runlog.DivergenceError
        On a NaN/inf training loss (on the CPU before that step's update, on CUDA up to
        :data:`CUDA_READ_EVERY` steps later); the checkpoint of the last evaluation is kept.
    """

    dry_run = bool(args.dry_run)
    max_steps = min(args.max_steps, DRY_RUN_STEPS) if dry_run else args.max_steps
    eval_freq = DRY_RUN_EVAL_FREQ if dry_run else args.eval_freq
    eval_limit = DRY_RUN_EVAL_EXAMPLES if dry_run else None
    local_batch = _local_batch_size(args.batch_size, ctx.world_size, min_local_batch)
    precision = precision if precision is not None else choose_precision(False, ctx.device)
    flags = {**_flags_of(args), "max_steps": max_steps, "eval_freq": eval_freq}
    checkpoint = _checkpoint_to_resume(args, ctx, trainer_name, flags, architecture_flags, trajectory_flags)
    if checkpoint is not None and ctx.is_main:
        _warn_on_precision_change(checkpoint, precision, str(args.resume))

    # ---- where outputs go (decided on rank 0, which alone writes)
    out_dir = None
    if ctx.is_main:
        if args.out_dir is not None:
            out_dir = str(args.out_dir)
        elif args.resume:
            out_dir = str(resolve_checkpoint_path(args.resume).parent)
        else:
            out_dir = str(default_out_dir(prefix="dryrun-" if dry_run else ""))
    out_dir = Path(_broadcast_object(out_dir, ctx))

    # ---- data: a private, seeded batch order; evaluation splits moved to the device once
    source = data["train"]
    train_set = source.reseeded(args.seed, augment=dataset_augment, flatten=False)
    # The splits evaluated are the ones ``data`` holds (a search's trials: validation only).
    eval_sets = {split: EvalSet.from_dataset(data[split], input_shape=input_shape, ctx=ctx, limit=eval_limit)
                 for split in ("validation", "test") if data.get(split) is not None and data[split].num_examples}

    # ---- model, optimizer, schedule (same init on every rank; DDP also broadcasts rank 0's)
    torch.manual_seed(args.seed)
    raw_model = build_model()
    if checkpoint is not None:
        try:
            raw_model.load_state_dict(checkpoint["model"])
        except RuntimeError as err:
            raise ValueError(f"--resume: the checkpoint's model does not match the one the flags "
                             f"build: {err}") from None
    raw_model.to(ctx.device)
    if channels_last:
        raw_model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(raw_model)
    scheduler = build_scheduler(optimizer) if build_scheduler is not None else None
    scaler = precision.make_grad_scaler()
    if checkpoint is not None:
        try:
            optimizer.load_state_dict(checkpoint["optimizer"])
        except ValueError as err:
            raise ValueError(f"--resume: the checkpoint's optimizer state does not fit the optimizer the flags "
                             f"build: {err}") from None
        if scheduler is not None and checkpoint.get("scheduler") is not None:
            scheduler.load_state_dict(checkpoint["scheduler"])
        if scaler.is_enabled() and checkpoint.get("grad_scaler"):
            scaler.load_state_dict(checkpoint["grad_scaler"])
    if compile_model:
        raw_model.compile()  # in place, once: the DDP wrapper and evaluation call the same compiled module
    train_model: nn.Module = raw_model
    if ctx.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            raw_model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    # ---- run state
    runlog = RunLog(out_dir, flags, enabled=ctx.is_main, plot=bool(getattr(args, "plot", False)))
    step, prior_wall = 0, 0.0
    clock = _TrainingClock(ctx.device, checkpoint)
    if checkpoint is not None:
        step = int(checkpoint["step"])
        if step > max_steps:
            raise ValueError(f"cannot resume: the checkpoint is at step {step}, past --max_steps {max_steps}")
        prior_wall = float(checkpoint["wall_seconds"])
        train_set.set_state(checkpoint["train_data"])
        # The checkpoint carries its curve rows, so resuming into another --out_dir keeps them.
        runlog.restore(checkpoint["curves"], up_to_step=step)
        _restore_rng_state(checkpoint, ctx, args.seed)
    elif ctx.rank:
        torch.manual_seed(args.seed + ctx.rank)  # rank 0 keeps the single-process stream

    if dry_run and ctx.is_main:
        sizes = {"train": source.num_examples, **{k: v.total for k, v in eval_sets.items()}}
        print(_describe_plan(trainer_name=trainer_name, ctx=ctx, model=raw_model, optimizer=optimizer,
                             scheduler=scheduler, data_sizes=sizes, args=args, max_steps=max_steps,
                             out_dir=out_dir, precision=precision, extra=plan_notes), flush=True)

    started = time.perf_counter()
    bar = progress_bar(max_steps, initial=step, disable=args.quiet or not ctx.is_main, desc=trainer_name)

    def evaluate_and_checkpoint(step: int, row: dict[str, float]) -> None:
        """Whole-split evaluation, curves row, checkpoint, report, ``on_eval``: on every rank."""
        if ctx.distributed:  # evaluate with rank 0's BatchNorm statistics, as checkpointed
            for buffer in raw_model.buffers():
                dist.broadcast(buffer, src=0)
        for split, eval_set in eval_sets.items():
            row[f"{split}_loss"], row[f"{split}_accuracy"] = evaluate(
                raw_model, eval_set, batch_size=args.eval_batch_size, ctx=ctx, autocast_dtype=precision.dtype,
                channels_last=channels_last, static_shapes=compile_model)
        rng = _gather_objects(_rng_state(ctx), ctx)  # a collective: before the rank-0-only write

        def write() -> None:
            runlog.record(step, **row)
            if not ctx.is_main:
                return
            save_checkpoint(out_dir / CHECKPOINT_NAME, {
                "format": CHECKPOINT_FORMAT,
                "trainer": trainer_name,
                "step": step,
                "flags": flags,
                "precision": precision.record(),
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "grad_scaler": scaler.state_dict(),
                "train_data": train_set.get_state(),
                "rng": {"per_rank": rng, "numpy": np.random.get_state(), "python": random.getstate()},
                "curves": [dict(r) for r in runlog.rows],
                "wall_seconds": prior_wall + time.perf_counter() - started,
                **clock.state(),
                "world_size": ctx.world_size,
            })
            if not args.quiet:
                bar.write(_format_report(step, row))

        _on_every_rank(ctx, write, f"writing the curves and checkpoint of step {step}")
        if on_eval is not None:
            on_eval(step, {"step": step, **row})

    try:
        if step == 0:  # the untrained model: chance level, the start of the curves
            evaluate_and_checkpoint(0, {})
        to_device = HostToDevice(ctx.device)
        stats = StepStats(ctx.device, 1 if ctx.device.type == "cpu" else CUDA_READ_EVERY, ctx.world_size)
        running_loss, running_steps, last = 0.0, 0, (math.nan, math.nan)
        lo, hi = ctx.rank * local_batch, (ctx.rank + 1) * local_batch
        first_step = step + 1
        raw_model.train()
        clock.start()
        while step < max_steps:
            step += 1
            x_np, y_np = train_set.next_batch(args.batch_size)  # the global batch; this rank's slice:
            x = to_device(_model_input_array(x_np[lo:hi], input_shape))
            y = to_device(class_indices(y_np[lo:hi]))
            if augment is not None:
                x = augment(x)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            loss, correct = forward_backward(train_model, x, y, precision=precision, scaler=scaler,
                                             label_smoothing=label_smoothing)
            stats.add(step, loss, correct)
            at_eval = step % eval_freq == 0 or step == max_steps
            if at_eval or stats.full:
                # Read before the update: with one step per read (the CPU) a diverged step never
                # reaches the parameters; an evaluation never checkpoints one.
                for read_step, batch_loss, batch_correct in stats.read():
                    last = (check_finite(batch_loss, read_step), batch_correct)
                    running_loss += last[0]
                    running_steps += 1
                bar.set_postfix(loss=f"{running_loss / running_steps:.4f}", refresh=False)
            learning_rate = optimizer.param_groups[0]["lr"]
            scaler.step(optimizer)  # optimizer.step(), after unscaling when float16 needs a scaler
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            clock.tick()
            bar.update(1)
            if compile_model and step == first_step:
                clock.stop(warmup=True)  # compilation: kept out of seconds_per_step
                clock.start()
            if at_eval:
                clock.stop()
                evaluate_and_checkpoint(step, {"train_loss": last[0], "train_accuracy": last[1] / args.batch_size,
                                               "learning_rate": learning_rate})
                running_loss, running_steps = 0.0, 0
                clock.start()
    finally:
        bar.close()

    last_row = runlog.rows[-1]
    final = {k: last_row[k] for k in ("test_loss", "test_accuracy", "validation_loss", "validation_accuracy")
             if k in last_row}
    metrics: dict[str, Any] = {}

    def finish() -> None:
        metrics.update(runlog.finish(
            **final,
            trainer=trainer_name,
            steps=step,
            wall_seconds=prior_wall + time.perf_counter() - started,
            seconds_per_step=clock.seconds_per_step,
            steps_this_session=step - (int(checkpoint["step"]) if checkpoint is not None else 0),
            n_parameters=sum(p.numel() for p in raw_model.parameters()),
            world_size=ctx.world_size,
            **clock.state(),
            **describe_device(ctx.device),
            **ctx.backend,
            **precision.record(),
            channels_last=bool(channels_last),
            compile=bool(compile_model),
            dry_run=dry_run,
            out_dir=str(out_dir) if ctx.is_main else None,
        ))

    _on_every_rank(ctx, finish, "writing metrics.json")
    return metrics
