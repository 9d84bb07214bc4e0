"""The torch trainers' parts of the training loop (:class:`fastmlp.loop.Hooks`).

Why a module of its own: :mod:`fastmlp.loop` runs every trainer's steps, evaluations and
checkpoints; what a torch step, evaluation and checkpoint are (devices, autocast,
torchrun's ranks) is written here once for both torch trainers, which differ only in
their :class:`TrainerSpec`.

One step (:meth:`TorchHooks.step`)
    The global batch is drawn (every rank draws the same one), this rank's slice goes to
    the device (from pinned buffers on CUDA: :mod:`torch_models.transfer`), is augmented
    and put channels-last when the trainer asks; forward under the precision's autocast,
    backward (scaled when float16 needs it), the loss checked for NaN/inf, the update and
    then the schedule's step.

Losses on CUDA
    Reading a CUDA value makes the host wait for the GPU, so the per-step losses are read
    every :data:`CUDA_READ_EVERY` steps (:mod:`torch_models.step_stats`), at the first step
    of a session and at every evaluation step, always before that step's update. A NaN/inf
    loss is then found up to that many steps late, but still names its step and never
    reaches a checkpoint; between reads the progress bar shows the last loss read. On the
    CPU the loss is read, and checked, before every update.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fastmlp import loop
from fastmlp.runlog import check_finite
from fastmlp.schedules import LearningRateSchedule
from torch_models import rng
from torch_models.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from torch_models.config import TorchRunConfig
from torch_models.devices import synchronize
from torch_models.distributed import DistContext, gather_objects, on_every_rank
from torch_models.evaluation import EvalSet, class_indices, evaluate, model_input_array
from torch_models.optimizers import ScheduledHyperParameters, load_optimizer_state
from torch_models.precision import Precision
from torch_models.step_stats import StepStats
from torch_models.transfer import HostToDevice

__all__ = ["CUDA_READ_EVERY", "TorchHooks", "TrainerSpec", "TrainingClock", "TrainingParts", "forward_backward"]

#: On CUDA the per-step losses are read (a host-GPU synchronisation) every this many steps.
CUDA_READ_EVERY = 25


@dataclasses.dataclass(frozen=True)
class TrainerSpec:
    """What one torch trainer brings to :func:`torch_models.trainer.fit`.

    Attributes
    ----------
    name : str
        ``train_mlp``/``train_convnet``: the progress bar's label, stored in the
        checkpoint (a checkpoint of another trainer is refused on resume).
    input_shape : tuple of int
        One model input, e.g. ``(3072,)`` or ``(3, 32, 32)``; images are reshaped to it.
    build_model, build_optimizer : callables
        ``build_model() -> nn.Module`` (on the CPU, right after ``torch.manual_seed(config.seed)``);
        ``build_optimizer(model) -> torch.optim.Optimizer``.
    precision : torch_models.precision.Precision, optional
        The autocast dtype and gradient scaling (default: float32).
    augment : callable, optional
        ``(local_batch, *input_shape) -> same``: a transform of training batches on the device.
    dataset_augment : bool
        Crop and flip training batches in NumPy (``DataSet(augment=True)``), drawn from the
        batch-order generator, so the checkpointed data state keeps ``--resume`` exact.
    channels_last, compile_model : bool
        Channels-last memory format; ``torch.compile`` once, for training and evaluation
        (the first step of a session, the compilation, is timed apart).
    label_smoothing : float
        Of the training loss (the evaluation loss is the plain cross-entropy).
    cycle_momentum : bool
        Under ``--lr_schedule onecycle``, cycle the momentum as PyTorch's OneCycleLR does.
    min_local_batch : int
        Fewest rows a rank's slice of the batch may have (2 for models with BatchNorm).
    architecture, trajectory : tuple of str
        On resuming: settings (field names of the configuration) whose change is refused,
        and settings whose change is warned about (:func:`fastmlp.loop.check_resumable`).
    plan_notes : tuple of str
        Extra lines for the ``--dry_run`` plan.
    """

    name: str
    input_shape: tuple[int, ...]
    build_model: Callable[[], nn.Module]
    build_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    precision: Precision | None = None
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None
    dataset_augment: bool = False
    channels_last: bool = False
    compile_model: bool = False
    label_smoothing: float = 0.0
    cycle_momentum: bool = False
    min_local_batch: int = 1
    architecture: tuple[str, ...] = ()
    trajectory: tuple[str, ...] = ()
    plan_notes: tuple[str, ...] = ()


@dataclasses.dataclass
class TrainingParts:
    """The model and what updates it.

    ``model`` is the module whose state the checkpoint holds (compiled in place with
    ``compile_model``); ``train_model`` is what the training forward calls: ``model``
    itself, or its ``DistributedDataParallel`` wrapper under torchrun.
    """

    model: nn.Module
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: ScheduledHyperParameters
    scaler: torch.amp.GradScaler

    @classmethod
    def build(cls, spec: TrainerSpec, config: TorchRunConfig, ctx: DistContext,
              precision: Precision) -> "TrainingParts":
        """Model, optimizer, schedule and scaler of the run ``config``, on ``ctx.device``.

        The schedule spans the full ``config.max_steps`` (a dry run too, whose steps then
        have the real run's first rates). Every rank builds the same initial model.
        """
        torch.manual_seed(config.seed)
        model = spec.build_model().to(ctx.device)
        if spec.channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = spec.build_optimizer(model)
        schedule = LearningRateSchedule(config.learning_rate, config.max_steps, config.lr_schedule,
                                        warmup_steps=config.warmup_steps)
        scheduler = ScheduledHyperParameters(optimizer, schedule, cycle_momentum=spec.cycle_momentum)
        if spec.compile_model:
            model.compile()  # in place, once: the DDP wrapper and evaluation call the same compiled module
        train_model = model
        if ctx.distributed:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        return cls(model, train_model, optimizer, scheduler, precision.make_grad_scaler())

    def restore(self, checkpoint: Mapping[str, Any]) -> None:
        """Put back the model, optimizer, schedule and gradient scaler of a loaded checkpoint.

        The optimizer's buffers come back under the hyper-parameters it was built with
        (:func:`torch_models.optimizers.load_optimizer_state`), and nothing changes them afterwards.

        Raises
        ------
        ValueError
            Naming ``--resume``, when a state does not fit what the flags build.
        """
        try:
            self.model.load_state_dict(checkpoint["model"])
        except RuntimeError as exc:
            raise ValueError(f"--resume: the checkpoint's model does not match the one the flags build: {exc}") from None
        try:
            load_optimizer_state(self.optimizer, checkpoint["optimizer"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"--resume: the checkpoint's optimizer state does not fit the optimizer the flags "
                             f"build: {exc}") from None
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.scaler.is_enabled() and checkpoint.get("grad_scaler"):
            self.scaler.load_state_dict(checkpoint["grad_scaler"])


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


class TrainingClock:
    """Seconds spent training, measured between synchronisation points.

    CUDA kernels finish after the host has moved on, so the time of a stretch of steps is
    only known once the device has caught up: the clock is stopped (after synchronising)
    before each evaluation and runs again from the next step. The first step of a compiled
    model (the compilation) is counted apart, in ``warmup_seconds``.
    """

    def __init__(self, device: torch.device, state: Mapping[str, Any] | None = None):
        state = state or {}
        self.device = device
        self.seconds = float(state.get("train_seconds", 0.0))
        self.steps = int(state.get("timed_steps", 0))
        self.warmup_seconds = float(state.get("compile_seconds", 0.0))
        self._start: float | None = None
        self._pending = 0

    def start(self) -> None:
        """Run from now, unless running already (called at the start of every step)."""
        if self._start is None:
            self._start, self._pending = time.perf_counter(), 0

    def tick(self) -> None:
        """Count a step made."""
        self._pending += 1

    def stop(self, *, warmup: bool = False) -> None:
        """Add the time since the clock started to the training (or ``warmup``) time; no-op when stopped."""
        if self._start is None:
            return
        synchronize(self.device)
        elapsed = time.perf_counter() - self._start
        if warmup:
            self.warmup_seconds += elapsed
        else:
            self.seconds += elapsed
            self.steps += self._pending
        self._start, self._pending = None, 0

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps if self.steps else float("nan")

    def state(self) -> dict[str, Any]:
        return {"train_seconds": self.seconds, "timed_steps": self.steps, "compile_seconds": self.warmup_seconds}


class TorchHooks:
    """A torch trainer's steps, evaluations and checkpoints, as :func:`fastmlp.loop.run` calls them.

    Every rank holds one and the loop calls every method on every rank (the evaluation,
    the reads of the losses and the checkpoint's RNG gathering are collectives); the
    checkpoint is written by rank 0.

    Parameters
    ----------
    spec : TrainerSpec
    parts : TrainingParts
    ctx : torch_models.distributed.DistContext
    plan : fastmlp.loop.Plan
        When the loop evaluates (the losses are read before those steps' updates).
    precision : torch_models.precision.Precision
    train_set : fastmlp.data.DataSet
        This run's own, seeded batch order over the training images (not flattened).
    eval_sets : dict
        ``{split: EvalSet}``: this rank's slice of each split to evaluate.
    batch_size, eval_batch_size : int
        The global training batch; evaluation batches (memory only).
    checkpoint_path : path
        Where rank 0 writes ``checkpoint.pt``.
    """

    def __init__(self, spec: TrainerSpec, parts: TrainingParts, *, ctx: DistContext, plan: loop.Plan,
                 precision: Precision, train_set, eval_sets: Mapping[str, EvalSet], batch_size: int,
                 eval_batch_size: int, checkpoint_path: Path):
        self.spec, self.parts, self.ctx, self.plan, self.precision = spec, parts, ctx, plan, precision
        self.train_set, self.eval_sets = train_set, dict(eval_sets)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.checkpoint_path = Path(checkpoint_path)
        local = batch_size // ctx.world_size
        self._rows = slice(ctx.rank * local, (ctx.rank + 1) * local)  # this rank's slice of each batch
        self._to_device = HostToDevice(ctx.device)
        self._stats = StepStats(ctx.device, 1 if ctx.device.type == "cpu" else CUDA_READ_EVERY, ctx.world_size)
        self.clock = TrainingClock(ctx.device)
        self.first_step = 1  # of this session
        self._last_loss, self._last_correct, self._learning_rate = float("nan"), float("nan"), float("nan")

    @classmethod
    def build(cls, spec: TrainerSpec, config: TorchRunConfig, data: Mapping[str, Any], *, ctx: DistContext,
              plan: loop.Plan, precision: Precision, checkpoint_path: Path) -> "TorchHooks":
        """The hooks of the run ``config`` over ``data`` (``get_cifar10`` DataSets; not modified)."""
        train_set = data["train"].reseeded(config.seed, augment=spec.dataset_augment, flatten=False)
        eval_sets = {split: EvalSet.from_dataset(dataset, input_shape=spec.input_shape, ctx=ctx,
                                                 limit=plan.eval_limit)
                     for split, dataset in loop.evaluation_splits(data, skip_empty=True).items()}
        parts = TrainingParts.build(spec, config, ctx, precision)
        return cls(spec, parts, ctx=ctx, plan=plan, precision=precision, train_set=train_set, eval_sets=eval_sets,
                   batch_size=config.batch_size, eval_batch_size=config.eval_batch_size,
                   checkpoint_path=checkpoint_path)

    # ----------------------------------------------------------------------- the loop's hooks
    def step(self, step: int) -> float:
        """Update ``step``; its batch loss (on CUDA between reads: the last loss read, see the module)."""
        spec, parts = self.spec, self.parts
        self.clock.start()
        x_np, y_np = self.train_set.next_batch(self.batch_size)  # the global batch; this rank's slice:
        x = self._to_device(model_input_array(x_np[self._rows], spec.input_shape))
        y = self._to_device(class_indices(y_np[self._rows]))
        if spec.augment is not None:
            x = spec.augment(x)
        if spec.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        parts.optimizer.zero_grad(set_to_none=True)
        loss, correct = forward_backward(parts.train_model, x, y, precision=self.precision, scaler=parts.scaler,
                                         label_smoothing=spec.label_smoothing)
        self._stats.add(step, loss, correct)
        if self._stats.full or step == self.first_step or self.plan.evaluates_at(step):
            self._read_losses()  # before the update: a diverged step never reaches a checkpoint
        self._learning_rate = parts.optimizer.param_groups[0]["lr"]
        parts.scaler.step(parts.optimizer)  # optimizer.step(), after unscaling when float16 needs a scaler
        parts.scaler.update()
        parts.scheduler.step()
        self.clock.tick()
        if spec.compile_model and step == self.first_step:
            self.clock.stop(warmup=True)  # the compilation: kept out of seconds_per_step
        return self._last_loss

    def _read_losses(self) -> None:
        for read_step, loss, correct in self._stats.read():
            self._last_loss, self._last_correct = check_finite(loss, read_step), correct

    def batch_metrics(self) -> dict[str, float]:
        """The evaluation step's batch: ``train_accuracy`` (all ranks' rows) and its ``learning_rate``."""
        return {"train_accuracy": self._last_correct / self.batch_size, "learning_rate": self._learning_rate}

    def evaluate(self) -> dict[str, float]:
        """``<split>_loss``/``<split>_accuracy`` of every evaluation split (the clock stopped first)."""
        self.clock.stop()
        model = self.parts.model
        if self.ctx.distributed:  # evaluate with rank 0's BatchNorm statistics, as checkpointed
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)
        metrics = {}
        for split, eval_set in self.eval_sets.items():
            metrics[f"{split}_loss"], metrics[f"{split}_accuracy"] = evaluate(
                model, eval_set, batch_size=self.eval_batch_size, ctx=self.ctx, autocast_dtype=self.precision.dtype,
                channels_last=self.spec.channels_last, static_shapes=self.spec.compile_model)
        return metrics

    def parameters_finite(self) -> bool:
        """False when a parameter is NaN or infinite (asked by :func:`fastmlp.loop.check_before_checkpoint`).

        A step checks its batch loss before its update, so an update that made the weights
        inf shows only here or in the evaluation after it. Every rank holds the same
        parameters (DDP averages the gradients), so all give the same answer without a collective.
        """
        with torch.no_grad():
            return bool(all(torch.isfinite(p).all() for p in self.parts.model.parameters()))

    def save_checkpoint(self, step: int, record: Mapping[str, Any]) -> None:
        """Gather every rank's RNG state (a collective), then write ``checkpoint.pt`` on rank 0."""
        per_rank = gather_objects(rng.rank_state(self.ctx), self.ctx)

        def write() -> None:
            if self.ctx.is_main:
                save_checkpoint(self.checkpoint_path, self._checkpoint_state(step, record, per_rank))

        on_every_rank(self.ctx, write, f"writing the checkpoint of step {step}")

    def _checkpoint_state(self, step: int, record: Mapping[str, Any], per_rank: list) -> dict[str, Any]:
        parts, data_state = self.parts, self.train_set.get_state()
        return {
            "format": CHECKPOINT_FORMAT,
            "trainer": self.spec.name,
            "step": int(step),
            "flags": record["flags"],
            "precision": self.precision.record(),
            "model": parts.model.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "grad_scaler": parts.scaler.state_dict(),
            "train_data": {**data_state, "permutation": torch.from_numpy(data_state["permutation"])},
            "rng": {"per_rank": per_rank, **rng.host_state()},
            "curves": [dict(row) for row in record["rows"]],
            "wall_seconds": float(record["wall_seconds"]),
            **self.clock.state(),
            "world_size": self.ctx.world_size,
        }

    # ----------------------------------------------------------------------- resume
    def restore(self, checkpoint: Mapping[str, Any], *, seed: int) -> None:
        """Put back everything a checkpoint holds but the curves (the loop's): parts, batch order, clock, RNGs.

        Raises
        ------
        ValueError
            Naming ``--resume``, when a state does not fit this run (a damaged checkpoint,
            or one of other flags).
        """
        self.parts.restore(checkpoint)
        step = int(checkpoint["step"])
        data_state = checkpoint["train_data"]
        try:
            self.train_set.set_state({**data_state, "permutation": np.asarray(data_state.get("permutation"))})
            rng.restore(checkpoint["rng"], self.ctx, seed=seed, step=step)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"--resume: the checkpoint's batch order or random state does not fit this run "
                             f"({type(exc).__name__}: {exc})") from None
        self.clock = TrainingClock(self.ctx.device, checkpoint)
        self.first_step = step + 1
