"""The training loop, written once: every trainer hands it its framework's parts.

A run is five named steps; the framework-specific work is done by a *hooks* object
(:class:`Hooks`) that the trainer builds, so the loop itself holds no model code::

    hooks = build(...)                     # the trainer: model, optimizer, batches, splits
    resume(progress, ...)                  # fresh (step 0) or from a checkpoint's step and curves
    run(hooks, plan, progress)             # step after step; evaluate-and-checkpoint every
                                           #   eval_freq steps, at step 0 and after the last one
    finish(progress, ...)                  # metrics.json from the last evaluation

Who runs it: ``fastmlp.train`` (hooks :class:`fastmlp.training.MLPHooks`), the torch
trainers (``torch_models.hooks.TorchHooks``). What the
hooks must do is written on each method of :class:`Hooks`.

Distributed runs: every rank runs the loop and calls every hook (evaluation and the
checkpoint's state gathering are collectives); a hook that writes a file writes it
on rank 0 only, and the loop itself writes through :class:`fastmlp.runlog.RunLog`
(``enabled`` on rank 0 only) and shows the bar and the evaluation lines on rank 0.
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from fastmlp.runlog import DivergenceError, RunLog, check_finite, default_out_dir, progress_bar

__all__ = [
    "DRY_RUN_EVAL_EXAMPLES",
    "DRY_RUN_EVAL_FREQ",
    "DRY_RUN_STEPS",
    "EVALUATION_SPLITS",
    "Hooks",
    "Plan",
    "Progress",
    "check_before_checkpoint",
    "check_resumable",
    "choose_out_dir",
    "evaluate_and_checkpoint",
    "evaluation_splits",
    "finish",
    "format_evaluation",
    "hold_until_update_ends",
    "resume",
    "run",
    "train_steps",
]

# --dry_run: enough steps to exercise every code path (an evaluation in the middle
# and one at the end), evaluated on a slice of each split (a ConvNet's evaluation
# of whole splits is slow on a CPU). Every trainer's learning-rate schedule keeps the
# full --max_steps as its horizon, so a dry run's rates are the real run's first ones.
DRY_RUN_STEPS = 4
DRY_RUN_EVAL_FREQ = 2
DRY_RUN_EVAL_EXAMPLES = 200

#: The progress bar shows the mean loss of this many updates.
LOSS_WINDOW = 20

#: Final metrics taken from the last evaluation, when measured.
FINAL_METRICS = ("test_loss", "test_accuracy", "validation_loss", "validation_accuracy")
#: The splits a run evaluates, when its data holds them (a search's trials: validation only).
EVALUATION_SPLITS = ("validation", "test")
_log = logging.getLogger(__name__)


def evaluation_splits(data: Mapping[str, Any], *, skip_empty: bool = False) -> dict[str, Any]:
    """``{split: data[split]}`` for the :data:`EVALUATION_SPLITS` that ``data`` holds (not None).

    With ``skip_empty``, a split of no examples (``num_examples`` 0) counts as absent.

    Raises
    ------
    ValueError
        When no split is left to evaluate.
    """
    splits = {split: data[split] for split in EVALUATION_SPLITS if data.get(split) is not None
              and not (skip_empty and data[split].num_examples == 0)}
    if not splits:
        raise ValueError(f"data: no split to evaluate; give one of {EVALUATION_SPLITS} besides 'train'")
    return splits


class Hooks(Protocol):
    """The framework-specific parts of a run, called by :func:`run` on every rank.

    Optional: ``parameters_finite() -> bool``, False when a parameter is NaN or
    infinite; when the hooks have it, :func:`evaluate_and_checkpoint` calls it before
    every checkpoint (see :func:`check_before_checkpoint`).
    """

    def step(self, step: int) -> float:
        """Make update number ``step`` (1-based) and return its batch loss, before the update.

        Draws the batch, runs forward/backward (torch: under its autocast context),
        updates the parameters (and steps a per-update scheduler). Raises
        :class:`fastmlp.runlog.DivergenceError` (via ``runlog.check_finite``) for a
        NaN/inf loss, before the update reaches the parameters.
        """

    def batch_metrics(self) -> dict[str, float]:
        """``train_accuracy`` and ``learning_rate`` of the last update (called at evaluation steps only)."""

    def evaluate(self) -> dict[str, float]:
        """``<split>_loss`` and ``<split>_accuracy`` of every evaluation split the trainer was given."""

    def save_checkpoint(self, step: int, record: Mapping[str, Any]) -> None:
        """Write the checkpoint of ``step`` in the framework's format.

        ``record`` holds ``flags``, ``rows`` (the curves so far) and ``wall_seconds``,
        to be stored with the model, optimizer, data-order and RNG states.
        """


@dataclass(frozen=True)
class Plan:
    """How many updates, and when to evaluate.

    ``eval_limit`` evaluates on the first N examples of each split (``--dry_run``).
    """

    max_steps: int
    eval_freq: int
    eval_limit: int | None = None

    @classmethod
    def from_flags(cls, max_steps: int, eval_freq: int, *, dry_run: bool = False) -> "Plan":
        """The plan of ``--max_steps``/``--eval_freq``, shortened by ``--dry_run``."""
        if dry_run:
            return cls(min(max_steps, DRY_RUN_STEPS), DRY_RUN_EVAL_FREQ, DRY_RUN_EVAL_EXAMPLES)
        return cls(max_steps, eval_freq)

    def evaluates_at(self, step: int) -> bool:
        """Every ``eval_freq`` updates, and after the last one."""
        return step % self.eval_freq == 0 or step == self.max_steps


@dataclass
class Progress:
    """Where the run stands: the last update made, the time spent, the curves (``log.rows``).

    ``wall_before`` is the time of the run's earlier sessions (from the checkpoint);
    ``started`` the ``time.perf_counter()`` at which this session began.
    """

    log: RunLog
    step: int = 0
    wall_before: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    show: bool = True  # the progress bar and the evaluation lines (not --quiet, and rank 0)

    def wall_seconds(self) -> float:
        return self.wall_before + time.perf_counter() - self.started


# --------------------------------------------------------------------------- build and resume
def choose_out_dir(out_dir: str | Path | None, checkpoint: str | Path | None, *, dry_run: bool) -> Path:
    """``--out_dir``; else the resumed checkpoint's folder; else ``runs/<timestamp>`` (``runs/dryrun-...``)."""
    if out_dir is not None:
        return Path(out_dir)
    if checkpoint is not None:
        return Path(checkpoint).parent
    return default_out_dir(prefix="dryrun-" if dry_run else "")


def check_resumable(saved: Mapping[str, Any], flags: Mapping[str, Any], where: str, *,
                    architecture: tuple[str, ...], trajectory: tuple[str, ...], warn: bool = True,
                    label: Callable[[str], str] = lambda name: f"--{name}") -> None:
    """Refuse or warn about settings that differ from the checkpoint's.

    Parameters
    ----------
    saved, flags : mapping
        The checkpoint's settings and this run's, by the same names.
    where : str
        The checkpoint, for the message.
    architecture : tuple of str
        Flags fixing the shapes of the saved state: a change is refused.
    trajectory : tuple of str
        Flags whose change makes the result differ from an uninterrupted run: a
        warning (also for ``max_steps`` under a decaying ``lr_schedule``, whose
        horizon it is). ``warn=False`` on the ranks other than 0.
    label : callable
        What the messages call a setting (default: ``--<name>``, a command line's flag).

    Raises
    ------
    ValueError
        Naming the first architecture flag that changed.
    """
    for name in architecture:
        if name in saved and saved[name] != flags.get(name):
            raise ValueError(f"cannot resume from {where!r}: it was trained with {label(name)} {saved[name]!r}, "
                             f"this run asks for {flags.get(name)!r}")
    if flags.get("lr_schedule") not in (None, "constant"):
        trajectory = (*trajectory, "max_steps")
    changed = [name for name in trajectory if name in saved and saved[name] != flags.get(name)]
    if changed and warn:
        horizon = "; the learning-rate schedule keeps the horizon it was created with" if "max_steps" in changed else ""
        warnings.warn("resuming with changed flags ("
                      + ", ".join(f"{label(name)} {saved[name]!r} -> {flags.get(name)!r}" for name in changed)
                      + f"): the result will differ from an uninterrupted run{horizon}", stacklevel=3)


def resume(progress: Progress, *, step: int, rows: list[dict], wall_seconds: float, max_steps: int) -> None:
    """Continue from a checkpoint at ``step``: its curves (up to ``step``) and its time.

    The trainer has put back its own state (model, optimizer, batches, RNGs) already.

    Raises
    ------
    ValueError
        If the checkpoint is past ``max_steps``, or its curve rows are damaged.
    """
    if step > max_steps:
        raise ValueError(f"cannot resume: the checkpoint is at step {step}, past --max_steps {max_steps}")
    progress.step = int(step)
    progress.wall_before = float(wall_seconds)
    try:
        progress.log.restore(rows, up_to_step=step)
    except ValueError as exc:
        raise ValueError(f"cannot resume: a corrupt checkpoint: {exc}") from None


# --------------------------------------------------------------------------- step, evaluate
class _Update:
    """Whether an update (or a checkpoint write) is running, and the stop held until it ends
    (see :func:`hold_until_update_ends`)."""

    running = False
    held: BaseException | None = None


def hold_until_update_ends(stop: BaseException) -> bool:
    """Keep ``stop`` to be raised when the running update ends; False when none is running.

    For signal handlers (which run in the main thread, between two of its Python
    instructions): a SIGTERM, SIGHUP or Ctrl-C that arrives during an update lets
    that update finish, so the model is never left half-updated; one that arrives
    while the checkpoint is written lets the write finish, so the stop is reported
    as a stop, not as the error of a file cut in the middle.
    """
    if not _Update.running:
        return False
    _Update.held = _Update.held or stop
    return True


class _StopsHeld:
    """``with _StopsHeld():`` a stop signal within the block is held (:func:`hold_until_update_ends`) and raised
    after it, unless the block itself raised. A plain class: every update enters one, and pays for no generator."""

    __slots__ = ()

    def __enter__(self) -> None:
        _Update.running, _Update.held = True, None

    def __exit__(self, exc_type, exc, traceback) -> None:
        _Update.running = False
        if exc_type is not None:
            return
        held, _Update.held = _Update.held, None
        if held is not None:
            raise held


def _update(step: Callable[[int], float], n: int) -> float:
    """``step(n)``, then any stop that :func:`hold_until_update_ends` held during it."""
    with _StopsHeld():
        return step(n)


def train_steps(step: Callable[[int], float], start: int, stop: int, bar, *,
                after_step: Callable[[int, float], None] | None = None) -> None:
    """Updates ``start + 1`` .. ``stop``: ``loss = step(n)``, the bar, then ``after_step(n, loss)``.

    A stop signal during an update is raised once the update has ended (:func:`hold_until_update_ends`).
    """
    recent: list[float] = []
    for n in range(start + 1, stop + 1):
        loss = _update(step, n)
        bar.update(1)
        recent.append(loss)
        if len(recent) == LOSS_WINDOW:
            bar.set_postfix(loss=f"{sum(recent) / LOSS_WINDOW:.4f}", refresh=False)
            recent.clear()
        if after_step is not None:
            after_step(n, loss)


def check_before_checkpoint(hooks: Hooks, step: int, row: Mapping[str, float]) -> None:
    """Refuse to checkpoint a diverged model: raise :class:`DivergenceError` naming ``step``.

    The hooks' ``step`` checks the loss of each batch *before* its update, so an
    update that made the parameters NaN/inf is seen here, at the evaluation after
    it: every ``*_loss`` of ``row`` (the batch's and each evaluated split's) must be
    finite, and so must the parameters when the hooks have ``parameters_finite()``.
    The checkpoint of the last evaluation that passed stays.
    """
    for key, value in row.items():
        if key.endswith("_loss"):
            check_finite(value, step, what=key)
    parameters_finite = getattr(hooks, "parameters_finite", None)
    if parameters_finite is not None and not parameters_finite():
        raise DivergenceError(step, float("nan"), "a parameter is NaN or infinite after the update")


def evaluate_and_checkpoint(hooks: Hooks, progress: Progress, step: int, row: Mapping[str, float], *,
                            on_eval: Callable[[int, dict], None] | None = None) -> dict[str, float]:
    """Evaluate, check for divergence, add the curves' row, write the checkpoint, log the line, call ``on_eval``.

    ``row`` holds the training batch's numbers (empty at step 0). The line
    (:func:`format_evaluation`) is an INFO record of this module's logger when
    ``progress.show``; the command lines print it above the progress bar. Returns the
    report ``on_eval`` gets: ``step`` and the row. A diverged model
    (:func:`check_before_checkpoint`) raises :class:`DivergenceError` before anything is
    recorded or written.
    """
    row = {key: float(value) for key, value in {**row, **hooks.evaluate()}.items()}
    check_before_checkpoint(hooks, step, row)
    progress.log.record(step, **row)
    with _StopsHeld():  # a stop signal lets the checkpoint be written whole
        hooks.save_checkpoint(step, {"flags": progress.log.flags, "rows": progress.log.rows,
                                     "wall_seconds": progress.wall_seconds()})
    report = {"step": step, **row}
    if progress.show:
        _log.info(format_evaluation(report))
    if on_eval is not None:
        on_eval(step, report)
    return report


def format_evaluation(report: Mapping[str, float]) -> str:
    """``step    100  train loss 2.1 acc 0.2  test loss ...``: the line shown at each evaluation."""
    parts = [f"step {int(report['step']):6d}"]
    for split in ("train", "validation", "test"):
        if f"{split}_accuracy" in report:
            parts.append(f"{split} loss {report[f'{split}_loss']:.4f} acc {report[f'{split}_accuracy']:.4f}")
    return "  ".join(parts)


def run(hooks: Hooks, plan: Plan, progress: Progress, *, desc: str = "train",
        on_eval: Callable[[int, dict], None] | None = None) -> None:
    """Train from ``progress.step`` to ``plan.max_steps``, evaluating and checkpointing on the way.

    A fresh run (step 0, no curve yet) first evaluates the untrained model: the start
    of the curves (a run resumed from that evaluation's checkpoint has its row already).
    An exception of a hook or of ``on_eval`` (e.g. ``optuna.TrialPruned``,
    ``DivergenceError``, ``KeyboardInterrupt``) stops the run and propagates; the
    checkpoint of the last evaluation stays.
    """
    bar = progress_bar(plan.max_steps, initial=progress.step, disable=not progress.show, desc=desc)

    def after_step(step: int, loss: float) -> None:
        progress.step = step
        if plan.evaluates_at(step):
            evaluate_and_checkpoint(hooks, progress, step, {"train_loss": loss, **hooks.batch_metrics()},
                                    on_eval=on_eval)

    try:
        if progress.step == 0 and not progress.log.rows:  # not again when resumed from step 0's checkpoint
            evaluate_and_checkpoint(hooks, progress, 0, {}, on_eval=on_eval)
        train_steps(hooks.step, progress.step, plan.max_steps, bar, after_step=after_step)
    finally:
        bar.close()


# --------------------------------------------------------------------------- finish
def finish(progress: Progress, **extra: Any) -> dict[str, Any]:
    """Write ``metrics.json`` and ``curves.png``; return the metrics.

    They are the last evaluation's ``test_*``/``validation_*``, the best accuracies
    (:meth:`RunLog.finish`), ``steps``, ``wall_seconds`` and the trainer's ``extra``.
    """
    last = progress.log.rows[-1]
    final = {key: last[key] for key in FINAL_METRICS if key in last}
    return progress.log.finish(**final, steps=progress.step, wall_seconds=progress.wall_seconds(), **extra)
