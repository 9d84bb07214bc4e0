"""Workers: each loads the trial data once, then runs trials until the study needs no more.

One worker runs in this process (:func:`run_worker`); ``--n_workers N`` starts N worker
processes (:func:`run_workers`), and workers on other machines join by running the same
command. A trial (:func:`make_objective`) trains one configuration on the training split,
reports its validation accuracy at every evaluation (which the pruners read) and scores
the configuration by its final validation accuracy.

A trial first checks that it is not one too many (``fastmlp.search.study.settled_surplus_reason``:
workers deciding together may start more than ``--n_trials``); a surplus trial fails at
once, without training. Its outputs go to a folder of its own,
``<out_dir>/trials/<study name>/trial_NNNN``, created exclusively (``-1``... when taken:
two studies given one ``--out_dir`` never share one). A finished trial's checkpoint is
deleted; so are the checkpoints that killed workers left, when a worker finishes.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Callable

from fastmlp.atomic import atomic_write_json, make_new_dir
from fastmlp.hyperparams import format_hidden_units
from fastmlp.runlog import DivergenceError
from fastmlp.search import signals
from fastmlp.search import study as studies
from fastmlp.search.adapter import TrainerAdapter, threads_per_worker
from fastmlp.search.errors import SearchError, WorkerError
from fastmlp.search.files import read_regular_file
from fastmlp.search.reports import describe, say, warnings_as_lines
from fastmlp.search.settings import SearchSettings
from fastmlp.search.storage import (
    hide_trial_failure_logs,
    live_grid_point,
    open_storage,
    optuna_module,
    quiet_optuna_warnings,
    release_grid_point,
)

__all__ = ["EVAL_SLEEP_ENV", "STOP_TIMEOUT", "SurplusTrial", "make_objective", "remove_left_checkpoints",
           "run_worker", "run_workers", "stop_workers", "trial_dir", "worker_process"]

# Test hook (not a flag): seconds to sleep in every evaluation callback, so that a test can
# kill a worker deterministically in the middle of a trial.
EVAL_SLEEP_ENV = "FASTMLP_SEARCH_TEST_EVAL_SLEEP"
#: Seconds the parent waits for its workers to stop after forwarding them a signal, before SIGKILL.
STOP_TIMEOUT = 60.0
# Trainer outputs a finished trial does not keep (the model file too: the retrained best writes the one kept).
_CHECKPOINTS = ("checkpoint.npz", "checkpoint.pt", "model.safetensors")
# What a worker writes into a trial's folder before training: the proof that the folder is this study's.
_TRIAL_INFO = "trial_info.json"
_TRIAL_INFO_LIMIT = 64 * 1024


class SurplusTrial(Exception):
    """A trial started once the earlier ones already cover the budget or its grid point: it is failed unrun."""


def trial_dir(settings: SearchSettings, number: int) -> Path:
    """``<out_dir>/trials/<study name>/trial_NNNN``, where a trial's curves and metrics go.

    The study's name is kept to letters, digits, ``.``, ``-`` and ``_`` (others become
    ``_``). The trial claims the folder with :func:`fastmlp.atomic.make_new_dir`, which adds
    ``-1``, ``-2``... when another study of the same name already took it.
    """
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", settings.study_name).strip("._") or "study"
    return Path(settings.out_dir) / "trials" / name / f"trial_{number:04d}"


def _own_trial_folder(settings: SearchSettings, trial) -> Path | None:
    """The folder ``trial`` recorded as its ``trial_dir``, if a worker of this study made it here; else None.

    The storage may be shared with (or written by) anyone, so its word is checked: the
    path, symbolic links resolved, must be a ``trial_NNNN`` folder (this trial's number)
    directly inside this study's trials folder, and hold the ``trial_info.json`` a worker
    of this study wrote for this trial before training (its study name, trial number and
    the random token also stored with the trial).
    """
    recorded = trial.user_attrs.get("trial_dir")
    if not isinstance(recorded, str):
        return None
    root = os.path.realpath(trial_dir(settings, 0).parent)
    folder = Path(os.path.realpath(recorded))
    if str(folder.parent) != root or not re.fullmatch(rf"trial_{trial.number:04d}(-[0-9]+)?", folder.name):
        return None
    info = _read_small_json(folder / _TRIAL_INFO)
    expected = {"study_name": settings.study_name, "trial_number": trial.number,
                "trial_token": trial.user_attrs.get("trial_token")}
    if not isinstance(info, dict) or any(info.get(key) != value for key, value in expected.items()):
        return None
    return folder


def _read_small_json(path: Path):
    """The JSON in ``path`` if it is a regular file of at most 64 KiB that parses; else None."""
    try:
        return json.loads(read_regular_file(path, limit=_TRIAL_INFO_LIMIT, what="trial record"))
    except (OSError, ValueError, RecursionError):
        return None


def remove_left_checkpoints(study, settings: SearchSettings) -> int:
    """Delete the checkpoints left in the folders of trials no longer running (their workers were killed).

    Returns how many were deleted. Only folders that this study's workers made here are
    touched (:func:`_own_trial_folder`): those of other machines, and any path the
    storage names elsewhere, are skipped.
    """
    from optuna.trial import TrialState

    removed = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        folder = _own_trial_folder(settings, trial)
        if folder is not None:
            removed += _remove_checkpoints(folder)
    return removed


def _remove_checkpoints(folder: Path) -> int:
    removed = 0
    for name in _CHECKPOINTS:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
            removed += 1
    return removed


def _refuse_surplus(trial, settings: SearchSettings, surplus: set[int]) -> None:
    """Raise :class:`SurplusTrial` (after giving back its grid point) if ``trial`` is one too many."""
    point = live_grid_point(trial)
    reason = studies.settled_surplus_reason(trial.study, trial.number, point, settings)
    if reason is not None:
        if point is not None:
            release_grid_point(trial)
        trial.set_user_attr("surplus", reason)
        surplus.add(trial.number)
        raise SurplusTrial(reason)


def _claim_trial_folder(settings: SearchSettings, trial, config: dict) -> Path:
    """Create the trial's folder and its record (``trial_info.json``), and note the folder in the storage."""
    out_dir = make_new_dir(trial_dir(settings, trial.number))
    # The token ties the folder to this trial: the storage alone cannot make a worker
    # delete anything in a folder (see _own_trial_folder).
    token = secrets.token_hex(16)
    atomic_write_json(out_dir / _TRIAL_INFO, {
        "study_name": settings.study_name, "trial_number": trial.number, "trial_token": token, "config": config,
        "note": "trained on the training split and evaluated on the validation split only; "
                "the test set is never used in a trial",
    })
    trial.set_user_attr("hidden_units", format_hidden_units(config["hidden_units"]))
    trial.set_user_attr("steps", int(config["max_steps"]))
    trial.set_user_attr("trial_dir", str(out_dir))
    trial.set_user_attr("trial_token", token)
    return out_dir


def make_objective(settings: SearchSettings, adapter: TrainerAdapter, data: dict,
                   surplus: set[int] | None = None) -> Callable:
    """The function Optuna maximises: train the trial's configuration, return its validation accuracy.

    A surplus trial raises :class:`SurplusTrial` before anything else; its number is added to ``surplus``.
    """
    optuna = optuna_module()
    eval_sleep = float(os.environ.get(EVAL_SLEEP_ENV, "0") or 0)
    surplus = set() if surplus is None else surplus

    def objective(trial) -> float:
        _refuse_surplus(trial, settings, surplus)
        config = settings.suggest_config(trial)
        out_dir = _claim_trial_folder(settings, trial, config)
        ns = adapter.namespace(adapter.run_flags(config, settings, out_dir=out_dir))

        def on_eval(step: int, metrics: dict) -> None:
            if eval_sleep:
                time.sleep(eval_sleep)
            if step <= 0:  # the untrained network says nothing about the configuration
                return
            trial.report(float(metrics["validation_accuracy"]), int(step))
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation accuracy {metrics['validation_accuracy']:.4f} at step {step}")

        try:
            result = adapter.module.train(ns, data=data, on_eval=on_eval)
        except DivergenceError as exc:
            # A diverging configuration is a hopeless one, not a broken trial: for the grid it
            # counts as visited, for the other samplers it spends a trial of the budget.
            trial.set_user_attr("diverged", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        finally:
            _remove_checkpoints(out_dir)
        if result.get("validation_accuracy") is None:
            raise RuntimeError(f"{adapter.module_name}.train returned no validation_accuracy")
        for key in ("validation_loss", "best_validation_accuracy", "wall_seconds", "steps"):
            if result.get(key) is not None:
                trial.set_user_attr(key, result[key])
        return float(result["validation_accuracy"])

    return objective


def _trial_line(settings: SearchSettings, prefix: str):
    """Optuna callback printing one line per finished trial."""
    optuna = optuna_module()
    from optuna.trial import TrialState

    def report(study, trial) -> None:
        if trial.user_attrs.get("surplus"):
            say(settings, f"{prefix}trial {trial.number}: not run, one too many: {trial.user_attrs['surplus']}")
            return
        config = settings.suggest_config(optuna.trial.FixedTrial(trial.params))
        config["hidden_units"] = format_hidden_units(config["hidden_units"])
        if trial.state == TrialState.COMPLETE:
            value = f"validation {trial.value:.4f}"
        elif trial.state == TrialState.PRUNED and trial.intermediate_values:
            step = max(trial.intermediate_values)
            value = f"pruned at step {step} (validation {trial.intermediate_values[step]:.4f})"
        else:
            value = trial.state.name.lower()
        seconds = trial.duration.total_seconds() if trial.duration else float("nan")
        say(settings, f"{prefix}trial {trial.number}: {describe(config)} -> {value} ({seconds:.1f} s)")

    return report


def run_worker(settings: SearchSettings, *, adapter: TrainerAdapter | None = None) -> None:
    """One worker: load the data once, then run trials until the study needs no more (or ``--timeout``)."""
    optuna = optuna_module()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.monotonic()
    threads = threads_per_worker(settings)
    if threads is not None and settings.model == "torch":
        import torch

        torch.set_num_threads(threads)
    adapter = adapter or TrainerAdapter(settings.model, settings.trainer_flags)
    storage = open_storage(settings.storage, settings.out_dir, heartbeat_interval=settings.heartbeat_interval,
                           grace_period=settings.grace_period, max_retry=settings.max_retry)
    study = studies.open_study(settings, storage)
    heartbeat = bool(settings.heartbeat_interval)
    prefix = f"[worker {settings.worker_index}] " if settings.n_workers > 1 else ""
    report = _trial_line(settings, prefix)
    objective, unlogged = None, set()  # trials failed on purpose (surplus) or interrupted: no failure log
    while True:
        if settings.timeout is not None and time.monotonic() - started > settings.timeout:
            say(settings, f"{prefix}--timeout {settings.timeout:g} s reached: no new trial")
            break
        if heartbeat:
            with quiet_optuna_warnings():
                optuna.storages.fail_stale_trials(study)
        action = studies.next_action(study, settings, heartbeat)
        if action == "done":
            break
        if action == "wait":
            time.sleep(min(5.0, max(0.5, settings.heartbeat_interval / 2)))
            continue
        if objective is None:
            data = adapter.trial_data(settings)
            objective = _marking_interrupts(make_objective(settings, adapter, data, unlogged), unlogged)
        # A KeyboardInterrupt or an error of the trainer propagates (Optuna marks the trial FAIL);
        # a surplus trial is failed on purpose. Neither gets Optuna's failure message and traceback.
        with quiet_optuna_warnings(), hide_trial_failure_logs(unlogged):
            study.optimize(objective, n_trials=1, callbacks=[report], gc_after_trial=True, catch=(SurplusTrial,))
    remove_left_checkpoints(study, settings)


def _marking_interrupts(objective: Callable, unlogged: set[int]) -> Callable:
    def guarded(trial):
        try:
            return objective(trial)
        except KeyboardInterrupt:
            # Marked so that the next run queues the trial again (Optuna marks it FAIL); the
            # interrupt is reported once, by the command, not as a failure of the trial.
            unlogged.add(trial.number)
            trial.set_user_attr("interrupted", True)
            raise

    return guarded


def worker_process(settings: SearchSettings) -> None:
    """Entry point of a worker process started by ``--n_workers`` (spawned: a fresh interpreter).

    SIGINT, SIGTERM and SIGHUP stop it as Ctrl-C does (its trial is marked interrupted);
    it exits with 128 + the signal's number. It ends with its parent (SIGTERM) if the
    parent dies without stopping it.
    """
    signals.end_with_parent(multiprocessing.parent_process().pid)
    with signals.signals_as_interrupts(signals.STOP_SIGNALS, once=True), \
            warnings_as_lines(f"fastmlp.search worker {settings.worker_index}"):
        try:
            run_worker(settings)
        except KeyboardInterrupt as exc:
            sys.exit(signals.exit_status(exc))
        except SearchError as exc:
            print(f"fastmlp.search worker {settings.worker_index}: error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)


@contextlib.contextmanager
def _blas_threads_in_environment(threads: int | None):
    """BLAS reads its thread count when it loads, so it must be in the children's environment."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    try:
        for name in names:
            if saved[name] is None and threads is not None:
                os.environ[name] = str(threads)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_workers(settings: SearchSettings) -> None:
    """Start ``--n_workers`` worker processes and wait for them.

    On Ctrl-C, SIGTERM or SIGHUP (a ``KeyboardInterrupt``, :mod:`fastmlp.search.signals`)
    the signal is forwarded to every worker, they are waited for
    (:func:`stop_workers`), and the interrupt propagates.

    Raises
    ------
    WorkerError
        If a worker exited with an error (its message is on stderr).
    """
    context = multiprocessing.get_context("spawn")  # no fork: torch and BLAS threads do not survive it
    processes = []
    try:
        with _blas_threads_in_environment(threads_per_worker(settings)):
            for index in range(settings.n_workers):
                worker = settings.replace(worker_index=settings.worker_index + index)
                process = context.Process(target=worker_process, args=(worker,),
                                          name=f"fastmlp-search-worker-{index}")
                process.start()
                processes.append(process)
        for process in processes:
            process.join()
    except KeyboardInterrupt as exc:
        stop_workers(processes, signals.signal_of(exc))
        raise
    failed = [(p.name, p.exitcode) for p in processes if p.exitcode != 0]
    if failed:
        raise WorkerError("worker process(es) failed: " + ", ".join(f"{n} exit code {c}" for n, c in failed)
                          + " (see their messages above)")


def stop_workers(processes: list, signum: int, *, timeout: float = STOP_TIMEOUT) -> None:
    """Send ``signum`` to the live ``processes`` and wait for them; SIGKILL those alive after ``timeout`` s.

    Further stop signals to this process are ignored meanwhile, so that none leaves a
    worker running without its parent.
    """
    with signals.ignoring():
        for process in processes:
            if process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)
        deadline = time.monotonic() + timeout
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                process.kill()  # its trial stays RUNNING until the heartbeat rules fail and requeue it
                process.join()
