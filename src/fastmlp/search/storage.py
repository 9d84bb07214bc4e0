"""Where a study lives, and the only module that reaches into Optuna's internals.

Optuna is the ``search`` extra: :func:`optuna_module` imports it or explains how to
install it. :func:`open_storage` opens ``--storage`` (a journal file, or an SQLAlchemy
URL for workers on several machines), with heartbeats for running trials so that the
trial of a worker that died is failed and queued again.

What is not Optuna's public API, kept here (and, for the journal file's lines, in
:mod:`fastmlp.search.journal`) so that an Optuna upgrade breaks few modules:

- ``optuna.storages._heartbeat.BaseHeartbeat``, the interface through which Optuna's
  optimize loop sends heartbeats; RDBStorage implements it, Optuna 5.0's
  JournalStorage does not, so :class:`HeartbeatJournalStorage` adds it;
- a trial's storage id (``FrozenTrial._trial_id``), which the storage calls take:
  :func:`trial_id`;
- the ``"grid_id"`` system attribute by which the GridSampler marks the grid point
  a trial took: :func:`grid_point`, :func:`live_grid_point`, :func:`release_grid_point`;
- the logger of Optuna's optimize loop, whose "Trial N failed" lines
  :func:`hide_trial_failure_logs` holds back for trials failed on purpose.

Workers started together on a fresh storage race to create it: an SQL database's
tables and version rows, or the study. :func:`open_storage` and
:func:`fastmlp.search.study.open_study` retry what such a race makes fail
(:func:`retry_creation_race`) instead of letting the worker die.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from fastmlp.search.errors import SearchError
from fastmlp.search.journal import checked_journal_backend_class

__all__ = [
    "GRACE_PERIOD_FACTOR",
    "HEARTBEAT_ATTR",
    "grid_point",
    "heartbeat_journal_class",
    "hide_trial_failure_logs",
    "live_grid_point",
    "one_line",
    "open_storage",
    "optuna_module",
    "quiet_optuna_warnings",
    "release_grid_point",
    "retry_creation_race",
    "trial_id",
]

T = TypeVar("T")

#: Words of the errors that workers creating one storage at the same moment get from
#: SQLite, PostgreSQL or MySQL (a table or row another worker just created, a locked file).
CREATION_RACE_WORDS = ("already exists", "unique constraint", "duplicate", "database is locked")

#: Trial system attribute holding the unix time of the trial's last heartbeat (journal storage).
HEARTBEAT_ATTR = "fastmlp:heartbeat"
#: A running trial is stale after this many heartbeat intervals without one (``--grace_period``'s default).
GRACE_PERIOD_FACTOR = 4


def optuna_module():
    """Import Optuna, or fail with the install hint (it is the ``search`` extra)."""
    try:
        import optuna
    except ImportError:
        raise SearchError("fastmlp.search needs Optuna, which is not installed: "
                          "pip install 'fastmlp[search]'") from None
    return optuna


@contextlib.contextmanager
def quiet_optuna_warnings():
    """Hide Optuna's ExperimentalWarning/FutureWarning for the features used on purpose."""
    optuna = optuna_module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def trial_id(trial) -> int:
    """The storage's id of ``trial`` (a FrozenTrial or Trial), which storage calls take."""
    return trial._trial_id


def grid_point(trial) -> int | None:
    """The grid point the GridSampler gave ``trial`` (None: none yet, or another sampler)."""
    return trial.system_attrs.get("grid_id")


def live_grid_point(trial) -> int | None:
    """The grid point of a running ``optuna.Trial`` (the storage's current value)."""
    return trial.storage.get_trial_system_attrs(trial_id(trial)).get("grid_id")


def release_grid_point(trial) -> None:
    """Give back the grid point of a running ``optuna.Trial`` that will not train (a surplus one).

    The GridSampler counts the point of every finished trial (FAIL too) as visited; a
    trial without a point counts for none, so the point is handed out again.
    """
    trial.storage.set_trial_system_attr(trial_id(trial), "grid_id", None)


class _HideTrialFailures(logging.Filter):
    def __init__(self, numbers: set[int]):
        super().__init__()
        self.numbers = numbers

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(tuple(f"Trial {n} failed" for n in self.numbers))


@contextlib.contextmanager
def hide_trial_failure_logs(numbers: set[int]) -> Iterator[None]:
    """Drop Optuna's "Trial N failed ..." log lines (with their traceback) for the trial numbers in ``numbers``.

    ``numbers`` may grow inside the block: a trial failed on purpose adds its number.
    """
    hide = _HideTrialFailures(numbers)
    logger = logging.getLogger("optuna.study._optimize")
    logger.addFilter(hide)
    try:
        yield
    finally:
        logger.removeFilter(hide)


def retry_creation_race(create: Callable[[], T], *, attempts: int = 20) -> T:
    """``create()``, tried again (after 0.05-0.5 s) while it fails as workers creating one storage at once do.

    Other errors, and the last attempt's, propagate.
    """
    for attempt in range(attempts):
        try:
            return create()
        except Exception as exc:
            if attempt == attempts - 1 or not any(w in str(exc).lower() for w in CREATION_RACE_WORDS):
                raise
            time.sleep(random.uniform(0.05, 0.5))
    raise AssertionError("unreachable")


def one_line(exc: BaseException) -> str:
    """``"TypeName: first line of the message"`` (a library's error, for a one-line report)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


@functools.lru_cache(maxsize=None)
def heartbeat_journal_class():
    """:class:`optuna.storages.JournalStorage` plus Optuna's heartbeat interface.

    Built on first use because Optuna is optional. Exposed as ``fastmlp.search.HeartbeatJournalStorage``.
    """
    optuna = optuna_module()
    from optuna.storages import JournalStorage
    from optuna.storages._heartbeat import BaseHeartbeat
    from optuna.trial import TrialState

    class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
        """Journal storage whose running trials send heartbeats, as RDBStorage's do.

        Optuna's optimize loop runs a thread calling :meth:`record_heartbeat` every
        ``heartbeat_interval`` seconds while a trial runs, and before each trial fails the
        trials whose last heartbeat is older than ``grace_period`` (then calls
        ``heartbeat_stale_trial_callback`` on each). Here a heartbeat is the unix time
        written to the trial's system attribute :data:`HEARTBEAT_ATTR` (one journal line),
        so every process sharing the journal file sees it; workers on one machine share
        its clock.

        Parameters
        ----------
        log_storage : optuna.storages.journal.BaseJournalBackend
            E.g. ``JournalFileBackend(path)``.
        heartbeat_interval : int
            Seconds between heartbeats (> 0).
        grace_period : int, optional
            Seconds without a heartbeat after which a running trial is stale (default
            :data:`GRACE_PERIOD_FACTOR` heartbeat intervals).
        heartbeat_stale_trial_callback : callable, optional
            ``callback(study, frozen_trial)`` for each trial failed as stale.
        """

        def __init__(self, log_storage, *, heartbeat_interval: int, grace_period: int | None = None,
                     heartbeat_stale_trial_callback=None):
            if not (isinstance(heartbeat_interval, int) and heartbeat_interval > 0):
                raise ValueError(f"heartbeat_interval must be a positive int, got {heartbeat_interval!r}")
            if grace_period is not None and not (isinstance(grace_period, int) and grace_period > 0):
                raise ValueError(f"grace_period must be a positive int or None, got {grace_period!r}")
            super().__init__(log_storage)
            self.heartbeat_interval = heartbeat_interval
            self.grace_period = grace_period or GRACE_PERIOD_FACTOR * heartbeat_interval
            self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback

        def record_heartbeat(self, trial_id: int) -> None:
            try:
                self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
            except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
                # Another worker already failed the trial as stale: nothing left to keep alive.
                pass

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            now = time.time()
            stale = []
            for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                # A retried trial inherits the old heartbeat of the trial it copies, so the
                # start of this attempt counts as a heartbeat too.
                beats = [trial.system_attrs.get(HEARTBEAT_ATTR)]
                if trial.datetime_start is not None:
                    beats.append(trial.datetime_start.timestamp())
                beats = [b for b in beats if b is not None]
                if beats and now - max(beats) > self.grace_period:
                    stale.append(trial_id(trial))
            return stale

        def get_heartbeat_interval(self) -> int | None:
            return self.heartbeat_interval

        def get_heartbeat_stale_trial_callback(self):
            return self.heartbeat_stale_trial_callback

    return HeartbeatJournalStorage


def open_storage(spec: str | None, out_dir: str | os.PathLike, *, heartbeat_interval: int = 30,
                 grace_period: int | None = None, max_retry: int = 2) -> Any:
    """Open the study storage named by ``--storage``.

    Parameters
    ----------
    spec : str or None
        ``None``: a journal file ``<out_dir>/study.journal``. A string containing ``://``
        is an SQLAlchemy URL for Optuna's RDBStorage; anything else is a journal file path.
    out_dir : path
        The search's output folder.
    heartbeat_interval : int
        Seconds between heartbeats of a running trial (0 disables them).
    grace_period : int, optional
        Seconds without a heartbeat before a running trial is failed (default
        :data:`GRACE_PERIOD_FACTOR` x ``heartbeat_interval``, for either storage).
    max_retry : int
        A trial failed for a missing heartbeat is queued again at most this many times.

    Returns
    -------
    optuna.storages.BaseStorage

    Raises
    ------
    SearchError
        When the storage cannot be opened (unreachable database, missing driver,
        unwritable path), with a one-line reason.
    """
    optuna = optuna_module()
    if heartbeat_interval:
        grace_period = grace_period or GRACE_PERIOD_FACTOR * heartbeat_interval
    with quiet_optuna_warnings():
        callback = (optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
                    if heartbeat_interval else None)
        if spec is not None and "://" in spec:
            return _open_rdb(optuna, spec, heartbeat_interval, grace_period, callback)
        path = Path(spec) if spec is not None else Path(out_dir) / "study.journal"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = checked_journal_backend_class()(str(path))
            if not os.access(path, os.W_OK):
                raise PermissionError(13, "Permission denied", str(path))
            if not heartbeat_interval:
                return optuna.storages.JournalStorage(backend)
            return heartbeat_journal_class()(
                backend, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=callback)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename and exc.filename != str(path) else ""
            raise SearchError(f"cannot open journal storage {str(path)!r}: "
                              f"{exc.strerror or exc}{where}") from None
        except SearchError:  # a malformed line, named by the backend
            raise
        except ValueError as exc:  # e.g. a file that is not an Optuna journal
            raise SearchError(f"cannot read journal storage {str(path)!r}: {one_line(exc)}") from None


def _open_rdb(optuna, url: str, heartbeat_interval: int, grace_period: int | None, callback):
    if url.split("://", 1)[0].lower().startswith("redis"):
        raise SearchError(f"--storage {url!r}: Redis is not supported here; use a journal "
                          "file path or an SQLAlchemy URL (postgresql://, mysql://, sqlite:///)")
    try:
        return retry_creation_race(lambda: optuna.storages.RDBStorage(
            url, heartbeat_interval=heartbeat_interval or None,
            grace_period=(grace_period if heartbeat_interval else None),
            heartbeat_stale_trial_callback=callback))
    except Exception as exc:  # driver missing, host unreachable, bad URL...
        raise SearchError(f"cannot open --storage {url!r}: {one_line(exc)}") from None
