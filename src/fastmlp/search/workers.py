"""A worker: it loads the trial data once, then runs trials until the study needs no more.

One worker runs in this process (:func:`run_worker`); ``--n_workers N`` starts N worker
processes (:mod:`fastmlp.search.processes`), and workers on other machines join by
running the same command. A trial (:func:`make_objective`) trains one configuration on
the training split, reports its validation accuracy at every evaluation (which the
pruners read) and scores the configuration by its final validation accuracy.

A trial first checks that it is not one too many (``fastmlp.search.study.settled_surplus_reason``:
workers deciding together may start more than ``--n_trials``); a surplus trial fails at
once, without training. Its outputs go to a folder of its own (:mod:`fastmlp.search.folders`).
"""
from __future__ import annotations

import os
import time
from typing import Callable

from fastmlp.hyperparams import format_hidden_units
from fastmlp.runlog import DivergenceError
from fastmlp.search import study as studies
from fastmlp.search.adapter import TrainerAdapter, threads_per_worker
from fastmlp.search.folders import claim_trial_folder, remove_checkpoints, remove_left_checkpoints
from fastmlp.search.reports import describe, say
from fastmlp.search.settings import SearchSettings
from fastmlp.search.storage import (
    hide_trial_failure_logs,
    live_grid_point,
    open_storage,
    optuna_module,
    quiet_optuna_warnings,
    release_grid_point,
)

__all__ = ["EVAL_SLEEP_ENV", "SurplusTrial", "make_objective", "run_worker"]

# Test hook (not a flag): seconds to sleep in every evaluation callback, so that a test can
# kill a worker deterministically in the middle of a trial.
EVAL_SLEEP_ENV = "FASTMLP_SEARCH_TEST_EVAL_SLEEP"


class SurplusTrial(Exception):
    """A trial started once the earlier ones already cover the budget or its grid point: it is failed unrun."""


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
        out_dir = claim_trial_folder(settings, trial, config)
        run = adapter.run_config(adapter.run_flags(config, settings, out_dir=out_dir))

        def on_eval(step: int, metrics: dict) -> None:
            if eval_sleep:
                time.sleep(eval_sleep)
            if step <= 0:  # the untrained network says nothing about the configuration
                return
            trial.report(float(metrics["validation_accuracy"]), int(step))
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation accuracy {metrics['validation_accuracy']:.4f} at step {step}")

        try:
            result = adapter.train(run, data=data, on_eval=on_eval)
        except DivergenceError as exc:
            # A diverging configuration is a hopeless one, not a broken trial: for the grid it
            # counts as visited, for the other samplers it spends a trial of the budget.
            trial.set_user_attr("diverged", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        finally:
            remove_checkpoints(out_dir)
        if result.get("validation_accuracy") is None:
            raise RuntimeError(f"the {adapter.model} trainer returned no validation_accuracy")
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


def run_worker(settings: SearchSettings, adapter: TrainerAdapter) -> None:
    """One worker: load the data once, then run trials until the study needs no more (or ``--timeout``)."""
    optuna = optuna_module()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.monotonic()
    threads = threads_per_worker(settings)
    if threads is not None and settings.model == "torch":
        import torch

        torch.set_num_threads(threads)
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
