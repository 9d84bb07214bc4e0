"""One torch training run on :mod:`fastmlp.loop`: what ``train_mlp`` and ``train_convnet`` share.

Each trainer module says *which* model, optimizer and input layout it uses (a
:class:`~torch_models.hooks.TrainerSpec`) and calls :func:`fit`, which runs the loop every
trainer runs (:mod:`fastmlp.loop`): evaluate the untrained model, then train, evaluating
and checkpointing every ``--eval_freq`` steps and after the last one, then write
``metrics.json``. The parts live in modules of one concern each:

- :mod:`torch_models.distributed`: device, threads, torchrun's process group, collectives;
- :mod:`torch_models.hooks`: the loop's hooks (step, evaluation, checkpoint, resume);
- :mod:`torch_models.evaluation`: whole-split evaluation, shared between ranks;
- :mod:`torch_models.checkpoint`: ``checkpoint.pt``, data only, read without running code;
- :mod:`torch_models.rng`: the random streams a resume continues;
- :mod:`torch_models.precision`, :mod:`torch_models.devices`: ``--amp``, cuDNN/TF32/determinism.

The command lines' shared flags and ``main`` are :mod:`torch_models.cli`.

Distributed data parallel (torchrun)
------------------------------------
When ``WORLD_SIZE`` > 1 the model is wrapped in ``DistributedDataParallel`` and batches
are sharded by **slicing the global batch**: every rank keeps an identical, identically
seeded training ``DataSet``, draws the same global batch of ``--batch_size`` examples and
trains on its own contiguous slice of ``batch_size / world_size`` rows (``--batch_size``
must be a multiple of the world size, with at least two rows per rank for BatchNorm).
So the sequence of global batches, the epoch bookkeeping and the checkpointed data state
are those of a single-process run, and DDP's gradient averaging gives the gradient of
the global batch mean loss (BatchNorm layers still see only their rank's slice: no
SyncBatchNorm). Dropout/augmentation randomness differs per rank (torch seed
``seed + rank``); every rank's RNG state is gathered into the checkpoint.

Evaluation is sharded too: each rank evaluates a contiguous slice of the split and the
loss/correct counts are all-reduced (BatchNorm running statistics are first broadcast
from rank 0, whose state is what the checkpoint stores), so all ranks hold the same
metrics and call ``on_eval`` with them (an exception raised by ``on_eval`` therefore
stops every rank). Only rank 0 writes files and shows the progress bar; the per-step
loss shown and checked for NaN is all-reduced. A failure while writing outputs is
shared with every rank (all raise), and ranks wait for each other before the process
group is destroyed.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from fastmlp import loop
from fastmlp.data import dataset_metrics
from fastmlp.runlog import RunLog
from torch_models.checkpoint import CHECKPOINT_NAME, load_checkpoint, resolve_checkpoint_path
from torch_models.config import TorchRunConfig
from torch_models.devices import describe_device
from torch_models.distributed import DistContext, broadcast_object, local_batch_size, on_every_rank
from torch_models.hooks import TorchHooks, TrainerSpec
from torch_models.precision import Precision, choose_precision

__all__ = ["TrainerSpec", "fit"]

_log = logging.getLogger(__name__)


class _SharedRunLog(RunLog):
    """A :class:`RunLog` (written by rank 0) whose failed write raises on every rank (see ``on_every_rank``)."""

    def __init__(self, ctx: DistContext, out_dir: Path, flags: Mapping[str, Any], *, plot: bool):
        self.ctx = ctx
        on_every_rank(ctx, lambda: RunLog.__init__(self, out_dir, flags, enabled=ctx.is_main, plot=plot),
                      "creating the output folder")

    def restore(self, rows: list[dict], up_to_step: int | None = None) -> None:
        on_every_rank(self.ctx, lambda: RunLog.restore(self, rows, up_to_step), "writing curves.csv")

    def record(self, step: int, **values: float) -> None:
        on_every_rank(self.ctx, lambda: RunLog.record(self, step, **values), f"writing the curves of step {step}")

    def finish(self, **metrics: Any) -> dict[str, Any]:
        return on_every_rank(self.ctx, lambda: RunLog.finish(self, **metrics), "writing metrics.json")


def _run_flags(config: TorchRunConfig, plan: loop.Plan) -> dict[str, Any]:
    """The run's settings as stored, by flag name (JSON values), with the plan's steps."""
    flags = {**config.as_flags(), "max_steps": plan.max_steps, "eval_freq": plan.eval_freq}
    return json.loads(json.dumps(dict(sorted(flags.items())), default=str))


def _warn_on_precision_change(checkpoint: Mapping[str, Any], precision: Precision, path: str) -> None:
    """Warn when the checkpoint trained under another autocast dtype than this run applies.

    Weights and optimizer state are float32 either way, so the checkpoint loads; only the
    trajectory changes.
    """
    saved = checkpoint["precision"].get("autocast_dtype") or "float32"
    current = precision.dtype_name or "float32"
    if saved != current:
        warnings.warn(f"--resume {path}: the checkpoint trained under {saved} autocast, this run trains under "
                      f"{current} ({precision.reason}); the float32 weights and optimizer state load unchanged, "
                      "but the result will differ from an uninterrupted run", stacklevel=3)


def _read_checkpoint(path: str, ctx: DistContext) -> dict:
    """The checkpoint at ``path``, read by rank 0 and sent to the others, so that a bad path
    fails on every rank instead of leaving the others waiting in a collective."""
    loaded: Any = None
    if ctx.is_main:
        try:
            loaded = load_checkpoint(path)
        except (OSError, ValueError) as exc:
            loaded = exc
    loaded = broadcast_object(loaded, ctx)
    if isinstance(loaded, BaseException):
        raise loaded
    return loaded


def _checkpoint_to_resume(config: TorchRunConfig, spec: TrainerSpec, ctx: DistContext, flags: Mapping[str, Any],
                          precision: Precision, loaded: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The checkpoint ``config.resume`` names (None without one), checked against this run's ``flags``.

    ``loaded``: that checkpoint, already read (by the command line, for its flags), else it is read here.
    """
    if not config.resume:
        return None
    if loaded is None:
        loaded = _read_checkpoint(config.resume, ctx)
    if loaded["trainer"] != spec.name:
        raise ValueError(f"--resume: {config.resume} is a {loaded['trainer']} checkpoint, not a {spec.name} one")
    loop.check_resumable(loaded["flags"], flags, config.resume, warn=ctx.is_main,
                         architecture=tuple(config.flag(name) for name in spec.architecture),
                         trajectory=tuple(config.flag(name) for name in spec.trajectory))
    if ctx.is_main:
        _warn_on_precision_change(loaded, precision, config.resume)
    return loaded


def _describe_plan(spec: TrainerSpec, config: TorchRunConfig, hooks: TorchHooks, *, plan: loop.Plan,
                   out_dir: Path, train_examples: int) -> str:
    """The ``--dry_run`` plan: what the full run would do, and this dry run's part of it."""
    ctx, model = hooks.ctx, hooks.parts.model
    backend = ", ".join(f"{k} {v}" for k, v in ctx.backend.items())
    schedule = hooks.parts.scheduler.schedule
    sizes = {"train": train_examples, **{split: s.total for split, s in hooks.eval_sets.items()}}
    lines = [
        f"{spec.name} --dry_run: the full run would train {config.max_steps} steps of global batch "
        f"{config.batch_size} on {ctx.device} (world size {ctx.world_size}), evaluating on the whole "
        f"test/validation sets and checkpointing every {config.eval_freq} steps;",
        f"  this dry run trains {plan.max_steps} steps, evaluating every {plan.eval_freq} on at most "
        f"{plan.eval_limit} examples per split",
        "  data: " + ", ".join(f"{k} {v} examples" for k, v in sizes.items()),
        f"  model: {sum(p.numel() for p in model.parameters()):,} parameters\n"
        + "\n".join("    " + line for line in repr(model).splitlines()),
        f"  optimizer: {type(hooks.parts.optimizer).__name__}, lr schedule {schedule.kind} peaking at "
        f"{schedule.base_lr} over {schedule.total_steps} steps ({schedule.warmup_steps} warm-up)",
        f"  precision: {hooks.precision.dtype_name or 'float32'} ({hooks.precision.reason}); backends: {backend}",
        *(f"  {line}" for line in spec.plan_notes),
        f"  outputs: {out_dir}",
        f"  resume: {config.resume or 'no'}",
    ]
    return "\n".join(lines)


def _final_metrics(hooks: TorchHooks, progress: loop.Progress, *, out_dir: Path, dry_run: bool) -> dict[str, Any]:
    """What ``metrics.json`` holds besides the loop's own (the last evaluation, steps, wall time)."""
    ctx, spec = hooks.ctx, hooks.spec
    return {
        "trainer": spec.name,
        "seconds_per_step": hooks.clock.seconds_per_step,
        "steps_this_session": progress.step - (hooks.first_step - 1),
        "n_parameters": sum(p.numel() for p in hooks.parts.model.parameters()),
        "world_size": ctx.world_size,
        **hooks.clock.state(),
        **describe_device(ctx.device),
        **ctx.backend,
        **hooks.precision.record(),
        "channels_last": bool(spec.channels_last),
        "compile": bool(spec.compile_model),
        "dry_run": dry_run,
        "out_dir": str(out_dir) if ctx.is_main else None,
    }


def fit(config: TorchRunConfig, spec: TrainerSpec, *, ctx: DistContext, data: Mapping[str, Any],
        on_eval: Callable[[int, dict], None] | None = None,
        checkpoint: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train, evaluate, checkpoint and log one run; return the metrics written to ``metrics.json``.

    Each evaluation records a ``curves.csv`` row (``train_loss``/``train_accuracy`` of
    that step's batch, before the update; the whole test/validation splits; the step's
    learning rate), rewrites ``checkpoint.pt`` and calls ``on_eval``.

    Parameters
    ----------
    config : torch_models.config.TorchRunConfig
        The run's settings (the trainer's subclass: all are stored in the outputs, by flag name).
    spec : TrainerSpec
        The trainer's model, optimizer and input layout.
    ctx : torch_models.distributed.DistContext
        From :func:`torch_models.distributed.distributed_context`.
    data : mapping
        ``fastmlp.data.get_cifar10`` output: ``"train"`` and the splits to evaluate,
        ``"validation"`` and/or ``"test"`` ``DataSet``\\ s (labels as indices or one-hot,
        images in any layout with ``prod(spec.input_shape)`` values each). Not modified:
        batches are drawn from a fresh ``DataSet`` over the same arrays, seeded with ``config.seed``.
    on_eval : callable, optional
        ``on_eval(step, metrics)`` after each evaluation and checkpoint, ``metrics`` holding
        ``step`` and the ``curves.csv`` row; may raise to stop the run (it propagates).
    checkpoint : mapping, optional
        The checkpoint ``config.resume`` names, when the caller has read it already (a
        command line, for its flags); else it is read here.

    Raises
    ------
    fastmlp.runlog.DivergenceError
        On a NaN/inf training loss (on the CPU before that step's update, on CUDA up to
        :data:`torch_models.hooks.CUDA_READ_EVERY` steps later), or on a NaN/inf
        evaluation loss or parameter after an update (:func:`fastmlp.loop.check_before_checkpoint`);
        the checkpoint of the last good evaluation is kept.
    ValueError, FileNotFoundError
        For a batch that does not split between the ranks, or an unusable ``--resume``.
    """
    local_batch_size(config.batch_size, ctx.world_size, spec.min_local_batch)  # before any collective
    plan = loop.Plan.from_flags(config.max_steps, config.eval_freq, dry_run=config.dry_run)
    precision = spec.precision if spec.precision is not None else choose_precision(False, ctx.device)
    flags = _run_flags(config, plan)
    checkpoint = _checkpoint_to_resume(config, spec, ctx, flags, precision, checkpoint)
    resumed_from = resolve_checkpoint_path(config.resume) if config.resume and ctx.is_main else None
    out_dir = broadcast_object(loop.choose_out_dir(config.out_dir, resumed_from, dry_run=config.dry_run)
                               if ctx.is_main else None, ctx)
    hooks = TorchHooks.build(spec, config, data, ctx=ctx, plan=plan, precision=precision,
                             checkpoint_path=out_dir / CHECKPOINT_NAME)
    progress = loop.Progress(_SharedRunLog(ctx, out_dir, flags, plot=config.plot), show=ctx.is_main and not config.quiet)
    if checkpoint is not None:
        hooks.restore(checkpoint, seed=config.seed)
        loop.resume(progress, step=checkpoint["step"], rows=checkpoint["curves"],
                    wall_seconds=checkpoint["wall_seconds"], max_steps=plan.max_steps)
    elif ctx.rank:
        torch.manual_seed(config.seed + ctx.rank)  # rank 0 keeps the single-process stream
    if config.dry_run and ctx.is_main:
        _log.info(_describe_plan(spec, config, hooks, plan=plan, out_dir=out_dir,
                                 train_examples=data["train"].num_examples))
    loop.run(hooks, plan, progress, desc=spec.name, on_eval=on_eval)
    return loop.finish(progress, **_final_metrics(hooks, progress, out_dir=out_dir, dry_run=config.dry_run),
                       **dataset_metrics(config.dataset, data["train"]))
