"""The Optuna study: its sampler and pruner, its settings, what is left to run in it.

A study is created once and resumed by every later run and worker with the same
``--study_name`` and ``--storage``; :func:`open_study` refuses to resume it under other
settings (:func:`fixed_settings`). :func:`next_action` decides, before each trial, whether a
worker runs one, waits for running ones, or is done: ``--n_trials`` counts the finished
trials of the whole study, the grid is done when every point has been taken.

Deciding and starting are two steps, so workers deciding at the same moment can start
more trials than the budget (or two trials on one grid point). :func:`surplus_reason`
settles it once each trial has its number (:func:`settled_surplus_reason`: and once the
earlier trials' grid points are written): a trial that the earlier-numbered ones
already cover is one too many; it is failed before training, marked ``surplus``, its
grid point given back, and is never counted as finished.
"""
from __future__ import annotations

import copy
import json
import shlex
import time
from typing import Any

import numpy as np

from fastmlp.search.errors import SearchError
from fastmlp.search.settings import SearchSettings
from fastmlp.search.space import grid_size
from fastmlp.search.storage import grid_point, one_line, optuna_module, quiet_optuna_warnings, retry_creation_race

__all__ = [
    "SETTINGS_ATTR",
    "best_trial",
    "counts",
    "counts_text",
    "fixed_settings",
    "make_pruner",
    "make_sampler",
    "next_action",
    "open_study",
    "requeue_interrupted",
    "settled_surplus_reason",
    "surplus_reason",
    "unplaced_earlier",
]

#: Study user attribute recording the settings a study was created with (checked on resume).
SETTINGS_ATTR = "fastmlp_search"


def fixed_settings(settings: SearchSettings) -> dict[str, Any]:
    """What must not change between the runs and workers of one study."""
    return {
        "model": settings.model,
        "sampler": settings.sampler,
        "grid": settings.grid_values,
        "space": settings.space_values,
        "validation_size": settings.validation_size,
        # None for the default: a study stored before --dataset existed was a CIFAR-10 study
        "dataset": None if settings.dataset == "cifar10" else settings.dataset,
        "seed": settings.seed,
        "max_steps_cap": settings.max_steps_cap,
        "trainer_flags": shlex.split(settings.trainer_flags),
    }


def _sampler_seed(settings: SearchSettings, n_existing: int) -> int:
    # Different per worker and per resumption: a resumed random/TPE/NSGA-II study must not
    # replay the random draws of its first run.
    return int(np.random.SeedSequence([int(settings.seed), int(settings.worker_index), int(n_existing)])
               .generate_state(1)[0])


def make_sampler(settings: SearchSettings, n_existing: int):
    """The sampler of ``--sampler``, seeded from ``--seed`` (``n_existing``: trials already in the study)."""
    optuna = optuna_module()
    if settings.sampler == "grid":
        # Same seed in every worker and run: the shuffled grid order must agree between them.
        return optuna.samplers.GridSampler(settings.grid_values, seed=int(settings.seed))
    seed = _sampler_seed(settings, n_existing)
    if settings.sampler == "evolution":
        return optuna.samplers.NSGAIISampler(population_size=settings.population_size, seed=seed)
    if settings.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(settings: SearchSettings):
    """The pruner of ``--pruner``; it reads the validation accuracy reported at each evaluation."""
    optuna = optuna_module()
    if settings.pruner == "median":
        # No verdict before 5 finished trials, nor at a trial's first evaluation (step
        # eval_freq): Optuna may prune from step == n_warmup_steps on, hence the + 1. The first
        # evaluation says more about the warm-up and the schedule's length than the configuration.
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=settings.eval_freq + 1)
    if settings.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def open_study(settings: SearchSettings, storage, *, create: bool = True):
    """Create or load the study and check it was created with compatible settings (None: absent, ``create=False``)."""
    optuna = optuna_module()
    try:
        summaries = retry_creation_race(lambda: optuna.get_all_study_summaries(storage, include_best_trial=False))
        existing = {s.study_name: s for s in summaries}
    except Exception as exc:
        raise SearchError(f"cannot read the studies in the storage: {one_line(exc)}") from None
    summary = existing.get(settings.study_name)
    if summary is None and not create:
        return None
    n_existing = summary.n_trials if summary is not None else 0
    try:
        study = retry_creation_race(lambda: optuna.create_study(
            storage=storage, sampler=make_sampler(settings, n_existing), pruner=make_pruner(settings),
            study_name=settings.study_name, direction="maximize", load_if_exists=True))
    except OSError as exc:
        raise SearchError(f"cannot write to the storage: {exc.strerror or exc}") from None
    _check_settings(study, settings, optuna)
    return study


def _check_settings(study, settings: SearchSettings, optuna) -> None:
    current = json.loads(json.dumps(fixed_settings(settings)))  # the form it has once stored
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise SearchError(f"study {settings.study_name!r} exists in the storage and minimises; "
                              "choose another --study_name")
        study.set_user_attr(SETTINGS_ATTR, current)
        return
    # .get on both sides: a setting added by a later version ("space") reads as None in a
    # study stored before it, which is its value when the flag is not given.
    diffs = [f"{k}: stored {stored.get(k)!r}, now {current.get(k)!r}"
             for k in sorted(set(stored) | set(current)) if stored.get(k) != current.get(k)]
    if diffs:
        raise SearchError(f"study {settings.study_name!r} in this storage was created with other "
                          f"settings ({'; '.join(diffs)}); resume it with the same flags or choose "
                          "another --study_name")


def counts(study) -> dict[str, int]:
    """Trials per state name (``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING``, ``WAITING``), and ``SURPLUS``.

    ``SURPLUS``: trials failed before training as one too many (:func:`surplus_reason`),
    not counted as ``FAIL``.
    """
    from optuna.trial import TrialState

    by_state = {**{state.name: 0 for state in TrialState}, "SURPLUS": 0}
    for trial in study.get_trials(deepcopy=False):
        by_state["SURPLUS" if trial.user_attrs.get("surplus") else trial.state.name] += 1
    return by_state


def counts_text(study) -> str:
    """``"3 complete, 1 pruned"`` (``"no trial yet"``)."""
    return ", ".join(f"{n} {s.lower()}" for s, n in counts(study).items() if n) or "no trial yet"


def next_action(study, settings: SearchSettings, heartbeat: bool) -> str:
    """``"run"`` a trial, ``"wait"`` for running ones (they may die and need a rerun), or ``"done"``."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    n_running = states.count(TrialState.RUNNING)
    n_done = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
    if states.count(TrialState.WAITING):
        return "run"
    below_target = settings.n_trials is None or n_done + n_running < settings.n_trials
    if settings.sampler == "grid":
        # Grid points run or running; as Optuna's GridSampler, a FAIL point counts as visited
        # (it is queued again when it failed for a dead worker or an interrupt).
        taken = {grid_point(t) for t in trials if t.state != TrialState.WAITING and grid_point(t) is not None}
        if below_target and len(taken) < grid_size(settings.grid_values):
            return "run"
    elif below_target:
        return "run"
    return "wait" if (n_running and heartbeat) else "done"


def surplus_reason(study, number: int, point: int | None, settings: SearchSettings) -> str | None:
    """Why the trial numbered ``number`` (on grid point ``point``), just started, is one too many; None if needed.

    It is when the trials before it fill ``--n_trials`` (finished ones, and running or
    queued ones of lower number), or when a running or finished trial of lower number
    holds its grid point. Each trial compares itself with lower numbers only, so of two
    workers that decided together the earlier trial always runs.
    """
    from optuna.trial import TrialState

    before, finished = [], (TrialState.COMPLETE, TrialState.PRUNED)
    for trial in study.get_trials(deepcopy=False):
        if trial.number != number and (trial.state in finished or (
                trial.number < number and trial.state in (TrialState.RUNNING, TrialState.WAITING))):
            before.append(trial)
    if settings.n_trials is not None and len(before) >= settings.n_trials:
        return f"--n_trials {settings.n_trials} are finished or under way in earlier trials"
    if point is not None:
        holders = [t.number for t in before if t.number < number and grid_point(t) == point]
        if holders:
            return f"grid point {point} is taken by trial {holders[0]}"
    return None


def unplaced_earlier(study, number: int) -> list[int]:
    """Numbers of the running trials before ``number`` whose grid point is not written yet.

    Optuna's GridSampler writes a trial's point (system attribute ``grid_id``) just after
    the trial is created, from the worker that created it; until then a later trial
    cannot tell which point the earlier one holds. A point given back (``grid_id`` None)
    counts as written; enqueued trials (``fixed_params``) get none.
    """
    from optuna.trial import TrialState

    return [t.number for t in study.get_trials(deepcopy=False)
            if t.number < number and t.state == TrialState.RUNNING
            and "grid_id" not in t.system_attrs and "fixed_params" not in t.system_attrs]


def settled_surplus_reason(study, number: int, point: int | None, settings: SearchSettings, *,
                           timeout: float = 30.0, poll: float = 0.05) -> str | None:
    """:func:`surplus_reason`, decided once every earlier running trial's grid point is written.

    Without the wait, a trial whose earlier twin was created but not yet given its point
    (its worker starved of CPU for a moment) would run the same point. Waits at most
    ``timeout`` seconds (an earlier worker that died before writing its point is not
    waited for longer), polling every ``poll`` seconds; no wait without a grid point.
    """
    deadline = time.monotonic() + timeout
    while True:
        # Earlier points first, the verdict second: a verdict read after every earlier
        # point was seen written cannot miss one of them.
        pending = unplaced_earlier(study, number) if point is not None else []
        reason = surplus_reason(study, number, point, settings)
        if reason is not None or not pending or time.monotonic() >= deadline:
            return reason
        time.sleep(poll)


def requeue_interrupted(study, settings: SearchSettings) -> int:
    """Queue again the trials that failed by an interrupt (Ctrl-C) and were never retried; return how many."""
    optuna = optuna_module()
    from optuna.trial import TrialState

    retry_class = optuna.storages.RetryHeartbeatStaleTrialCallback
    trials = study.get_trials(deepcopy=False)
    queued = 0
    with quiet_optuna_warnings():
        retried = {n for t in trials for n in retry_class.retry_history(t)}
        retry = retry_class(max_retry=settings.max_retry)
        for trial in trials:
            if (trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted")
                    and trial.number not in retried):
                frozen = copy.deepcopy(trial)
                frozen.user_attrs = {k: v for k, v in frozen.user_attrs.items() if k != "interrupted"}
                before = len(study.get_trials(deepcopy=False))
                retry(study, frozen)
                queued += len(study.get_trials(deepcopy=False)) - before
    return queued


def best_trial(study):
    """The complete trial of highest validation accuracy (ties: the earlier one, as ``study.best_trial``); None if none."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    return max(complete, key=lambda t: (t.value, -t.number))
