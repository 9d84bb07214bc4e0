"""Hyper-parameter search over the MLP trainers with Optuna: ``python -m fastmlp.search``.

Drives ``fastmlp.train`` (``--model numpy``) or ``torch_models.train_mlp`` (``--model
torch``) through their Python API (``train(args, data=..., on_eval=...)``) and stores
the study in an Optuna storage, so that a search can be stopped, resumed and shared by
several worker processes, on one machine or many.

Selection never sees the test set
---------------------------------
Every trial trains on the training split minus ``--validation_size`` images and is
scored by its final accuracy on those held-out images (the objective Optuna maximises).
The trainers always evaluate a split called "test", so a trial is handed the
validation split in that slot: search workers never load the real test set into a
trial, and no test number is stored in the study. When the search ends, the best trial's
configuration is retrained once (same training split, same ``--seed``: it reproduces
the trial) and evaluated on the test set once, at the end of training; that number goes
to ``results.md`` only. (``fastmlp.train`` also scores the untrained network at step 0,
which carries no information about the configuration.)

Samplers
--------
- ``grid``: Optuna's GridSampler over the grid of the reports' Table 1 (hidden units
  {[256,256,256], [512,256,128,64], [1024,512,256,128]} x batch {200,600,1000} x steps
  {2000,5000}, Adam, learning rate 2e-5: 18 trials), or the axes given by ``--grid``
  (JSON text or file; the axes it names replace the default ones). The grid is done when
  every point has been run once.
- ``evolution``: Optuna's NSGAIISampler (a genetic algorithm; single objective) over the
  number of hidden layers and their widths, the learning rate (log), batch size, steps,
  optimizer, weight decay and, for the torch model, dropout
  (:data:`fastmlp.search_space.EVOLUTION_SPACE`).
- ``tpe`` and ``random``: the same space with Optuna's TPESampler / RandomSampler.

Pruning (``--pruner``) stops hopeless trials on their validation curve: the trainer's
``on_eval`` callback reports the validation accuracy at every evaluation.

Workers, storage, resuming
--------------------------
The study lives in ``--storage``: by default a journal file ``<out_dir>/study.journal``
(Optuna's JournalStorage with a file backend, safe for several processes on one
machine); any SQLAlchemy URL (``postgresql://user:pw@host/db``, ``mysql://...``,
``sqlite:///file.db``) serves workers on several machines. ``--n_workers N`` starts N
worker processes on this machine; more workers anywhere join by running the same command
with the same ``--study_name`` and ``--storage`` (give each a distinct ``--worker_index``
so that their samplers draw different random numbers, and ``--skip_final`` to all but
one). Trial numbers are handed out by the storage, so no trial is lost or run twice;
the GridSampler maps trial number k to grid point k.

``--n_trials`` is the TOTAL number of finished (complete or pruned) trials the study
should reach, not a number per invocation: re-running the same command resumes an
interrupted study and only runs what is missing (a finished study runs nothing).

A worker that dies in the middle of a trial (killed, machine lost) stops sending the
trial's heartbeat; after ``--grace_period`` seconds another worker (or the next run)
marks the trial FAIL and queues a copy of it (Optuna's
``RetryHeartbeatStaleTrialCallback``, at most ``--max_retry`` times). RDBStorage has
this heartbeat built in; Optuna 5.0's JournalStorage does not, so
:class:`HeartbeatJournalStorage` adds it (the heartbeat is a timestamp in the trial's
system attributes). A trial stopped by Ctrl-C is marked FAIL by Optuna and queued again
by the next run (when it starts: two runs started at the same instant could both queue it,
so start hand-made workers a few seconds apart; ``--n_workers`` does this once for all).

Outputs in ``--out_dir`` (default ``runs/search/<study_name>``), written atomically:
``trials.csv`` (one row per trial: the columns of ``study.trials_dataframe()``),
``results.md`` (the trials as in the reports' Table 1, then the retrained best with its
test accuracy), ``final.json``, ``optimization_history.png``, ``param_importances.png``,
``intermediate_values.png``, the journal, and ``trials/trial_NNNN/`` (each trial's
curves and metrics; checkpoints are deleted) and ``final/`` (the retrained best run).

Examples
--------
The reports' grid for the PyTorch MLP with two workers, then a quick evolutionary search::

    python -m fastmlp.search --model torch --sampler grid --n_workers 2 --data_dir ../shared/data
    python -m fastmlp.search --model numpy --sampler evolution --n_trials 40 --max_steps_cap 500

Workers on several machines sharing a PostgreSQL database::

    python -m fastmlp.search --sampler tpe --n_trials 100 --study_name big \\
        --storage postgresql://user:pw@db-host/optuna --worker_index K [--skip_final]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import functools
import importlib
import io
import json
import multiprocessing
import os
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from fastmlp import runlog
from fastmlp.atomic import atomic_path, atomic_write_json, atomic_write_text
from fastmlp.hyperparams import NONNEGATIVE_INT, POSITIVE_INT, POSITIVE_NUMBER, flag_type
from fastmlp.search_space import (
    DEFAULT_GRID,
    format_hidden_units,
    grid_size,
    parse_grid,
    parse_space,
    suggest_config,
)

if TYPE_CHECKING:  # Optuna is the optional "search" extra: imported where it is used
    import optuna

__all__ = [
    "HEARTBEAT_ATTR",
    "MODELS",
    "PRUNERS",
    "SAMPLERS",
    "SearchError",
    "build_parser",
    "main",
    "open_storage",
    "run_search",
]

#: --model -> the trainer module driven for it.
MODELS = {"numpy": "fastmlp.train", "torch": "torch_models.train_mlp"}
SAMPLERS = ("grid", "evolution", "tpe", "random")
PRUNERS = ("median", "halving", "none")

#: Trial system attribute holding the unix time of the trial's last heartbeat (journal storage).
HEARTBEAT_ATTR = "fastmlp:heartbeat"
#: Study user attribute recording the settings a study was created with (checked on resume).
SETTINGS_ATTR = "fastmlp_search"
#: The weight init of every trial unless --trainer_flags names one: PyTorch's own
#: (what the reports' searches used) for the torch MLP, He (kaiming) for fastmlp's.
DEFAULT_INIT = {"torch": "torch", "numpy": "kaiming"}

#: Trainer flags the search sets itself; --trainer_flags may not give them.
_SEARCH_OWNED_FLAGS = frozenset({
    "dnn_hidden_units", "learning_rate", "batch_size", "max_steps", "optimizer", "weight_decay",
    "dropout", "seed", "validation_size", "out_dir", "resume", "data_dir", "eval_freq", "quiet",
    "dry_run", "threads", "num_threads", "device",
})
# Test hook (not a flag): seconds to sleep in every evaluation callback, so that a test can
# kill a worker deterministically in the middle of a trial.
_EVAL_SLEEP_ENV = "FASTMLP_SEARCH_TEST_EVAL_SLEEP"


class SearchError(ValueError):
    """A bad flag or an unusable storage / data folder; the message is one line for the user."""


class WorkerError(RuntimeError):
    """A worker process started by ``--n_workers`` exited with an error."""


# --------------------------------------------------------------------------- optuna access
def _optuna():
    """Import Optuna, or fail with the install hint (it is the ``search`` extra)."""
    try:
        import optuna
    except ImportError:
        raise SearchError("fastmlp.search needs Optuna, which is not installed: "
                          "pip install 'fastmlp[search]'") from None
    return optuna


@contextlib.contextmanager
def _quiet_optuna_warnings():
    """Hide Optuna's ExperimentalWarning/FutureWarning for the features used on purpose."""
    optuna = _optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


@functools.lru_cache(maxsize=None)
def _heartbeat_journal_class():
    """:class:`optuna.storages.JournalStorage` plus Optuna's heartbeat interface.

    Built on first use because Optuna is optional. Exposed as ``HeartbeatJournalStorage``.
    """
    optuna = _optuna()
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
            ``2 * heartbeat_interval``, Optuna's choice for RDBStorage).
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
            self.grace_period = grace_period if grace_period is not None else 2 * heartbeat_interval
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
                    stale.append(trial._trial_id)
            return stale

        def get_heartbeat_interval(self) -> int | None:
            return self.heartbeat_interval

        def get_heartbeat_stale_trial_callback(self):
            return self.heartbeat_stale_trial_callback

    return HeartbeatJournalStorage


def __getattr__(name):
    if name == "HeartbeatJournalStorage":
        return _heartbeat_journal_class()
    raise AttributeError(f"module 'fastmlp.search' has no attribute {name!r}")


def open_storage(spec: str | None, out_dir: str | os.PathLike, *, heartbeat_interval: int = 30,
                 grace_period: int | None = None, max_retry: int = 2):
    """Open the study storage named by ``--storage``.

    Parameters
    ----------
    spec : str or None
        ``None``: a journal file ``<out_dir>/study.journal``. A string containing ``://``
        is an SQLAlchemy URL for Optuna's RDBStorage; anything else is a journal file path.
    out_dir : path
        The search's output folder.
    heartbeat_interval, grace_period : int
        Heartbeat of running trials (0 disables it); see :class:`HeartbeatJournalStorage`.
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
    optuna = _optuna()
    with _quiet_optuna_warnings():
        callback = (optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
                    if heartbeat_interval else None)
        if spec is not None and "://" in spec:
            if spec.split("://", 1)[0].lower().startswith("redis"):
                raise SearchError(f"--storage {spec!r}: Redis is not supported here; use a journal "
                                  "file path or an SQLAlchemy URL (postgresql://, mysql://, sqlite:///)")
            try:
                return optuna.storages.RDBStorage(
                    spec, heartbeat_interval=heartbeat_interval or None,
                    grace_period=(grace_period if heartbeat_interval else None),
                    heartbeat_stale_trial_callback=callback)
            except Exception as exc:  # driver missing, host unreachable, bad URL...
                raise SearchError(f"cannot open --storage {spec!r}: {_one_line(exc)}") from None
        path = Path(spec) if spec is not None else Path(out_dir) / "study.journal"
        from optuna.storages.journal import JournalFileBackend

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = JournalFileBackend(str(path))
            if not os.access(path, os.W_OK):
                raise PermissionError(13, "Permission denied", str(path))
            if not heartbeat_interval:
                return optuna.storages.JournalStorage(backend)
            return _heartbeat_journal_class()(
                backend, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=callback)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename and exc.filename != str(path) else ""
            raise SearchError(f"cannot open journal storage {str(path)!r}: "
                              f"{exc.strerror or exc}{where}") from None
        except ValueError as exc:  # e.g. a file that is not an Optuna journal
            raise SearchError(f"cannot read journal storage {str(path)!r}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# --------------------------------------------------------------------------- flags
# The flag checks are the constraint table's, so every command line words its errors alike.
_positive_int = flag_type(POSITIVE_INT)
_nonnegative_int = flag_type(NONNEGATIVE_INT)
_positive_float = flag_type(POSITIVE_NUMBER)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m fastmlp.search`` (defaults shown in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m fastmlp.search",
        description="Hyper-parameter search (Optuna) over the fastmlp / torch_models MLP trainers. "
                    "Trials are scored on a validation split carved from the training set; the best "
                    "configuration is retrained and tested once at the end.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    what = parser.add_argument_group("what to search")
    what.add_argument("--model", choices=tuple(MODELS), default="torch",
                      help="numpy: fastmlp.train (fastmlp MLP); torch: torch_models.train_mlp")
    what.add_argument("--sampler", choices=SAMPLERS, default="grid",
                      help="grid: GridSampler over the reports' grid or --grid; evolution: NSGAIISampler "
                           "(genetic); tpe; random")
    what.add_argument("--grid", default=None, metavar="JSON",
                      help="grid axes as a JSON object or the path of a JSON file, e.g. "
                           "'{\"batch_size\": [200, 600], \"max_steps\": [2000]}'; named axes replace the "
                           f"reports' ones, others keep them. Axes: {', '.join(DEFAULT_GRID)}")
    what.add_argument("--space", default=None, metavar="JSON",
                      help="narrow the space of --sampler evolution/tpe/random: ranges as a JSON object "
                           "or the path of a JSON file, e.g. '{\"units\": [128, 1024], \"batch_size\": "
                           "[64, 512], \"max_steps\": [2000, 5000, 500]}'; named keys replace the default "
                           "ranges. Keys: n_layers, units, learning_rate, batch_size, max_steps, optimizer, "
                           "weight_decay, dropout")
    what.add_argument("--pruner", choices=PRUNERS, default=None,
                      help="stop hopeless trials on their validation curve (when unset: none for the grid, "
                           "so that every grid point gets its full result; median otherwise)")
    what.add_argument("--population_size", type=_positive_int, default=20,
                      help="NSGA-II population (trials per generation) for --sampler evolution")
    what.add_argument("--trainer_flags", default="", metavar="FLAGS",
                      help="extra flags for every trial's trainer, fixed during the search (not the "
                           "searched ones); write it with '=' as the value starts with '--', e.g. "
                           "--trainer_flags='--init kaiming --preprocessing standardize'. Without "
                           "--init here, trials use --init torch (torch model) or kaiming (numpy model)")

    budget = parser.add_argument_group("budget")
    budget.add_argument("--n_trials", type=_positive_int, default=None,
                        help="TOTAL finished (complete or pruned) trials the study should reach, counted "
                             "over every run and worker (when unset: the whole grid; 20 for other samplers)")
    budget.add_argument("--timeout", type=_positive_float, default=None,
                        help="seconds after which this run starts no new trial")
    budget.add_argument("--max_steps_cap", type=flag_type("max_steps"), default=None,
                        help="train at most this many steps per trial (quick runs)")
    budget.add_argument("--eval_freq", type=flag_type("eval_freq"), default=250,
                        help="validation evaluation (and pruning check) every this many steps")

    data = parser.add_argument_group("data")
    data.add_argument("--data_dir", default=None,
                      help="folder holding CIFAR-10 (when unset: $FASTMLP_DATA, else ~/.cache/fastmlp)")
    data.add_argument("--validation_size", type=_positive_int, default=5000,
                      help="training images held out to score the trials (the test set is never used)")

    study = parser.add_argument_group("study and workers")
    study.add_argument("--study_name", default=None, help="when unset: <model>-<sampler>")
    study.add_argument("--storage", default=None,
                       help="journal file path, or an SQLAlchemy URL (postgresql://..., mysql://..., "
                            "sqlite:///...) for workers on several machines (when unset: "
                            "<out_dir>/study.journal)")
    study.add_argument("--n_workers", type=_positive_int, default=1,
                       help="worker processes on this machine, all sharing the storage")
    study.add_argument("--worker_index", type=_nonnegative_int, default=0,
                       help="distinct per hand-started worker: offsets the sampler's random seed")
    study.add_argument("--threads", type=flag_type("threads"), default=None,
                       help="CPU threads per worker (when unset: cores / n_workers with several workers, "
                            "else the libraries' choice)")
    study.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="device of the torch model")
    study.add_argument("--heartbeat_interval", type=_nonnegative_int, default=30,
                       help="seconds between heartbeats of a running trial (0: no heartbeat, a killed "
                            "worker's trial then stays RUNNING)")
    study.add_argument("--grace_period", type=_positive_int, default=None,
                       help="seconds without heartbeat before a running trial is failed and queued again "
                            "(when unset: 4 x heartbeat_interval)")
    study.add_argument("--max_retry", type=_nonnegative_int, default=2,
                       help="times a trial killed with its worker (or interrupted) is queued again")

    run = parser.add_argument_group("run")
    run.add_argument("--seed", type=flag_type("seed"), default=42,
                     help="seed of every trial's training (and of the samplers)")
    run.add_argument("--out_dir", default=None, help="when unset: runs/search/<study_name>")
    run.add_argument("--skip_final", action="store_true",
                     help="do not retrain and test the best configuration at the end of this run")
    run.add_argument("--dry_run", action="store_true",
                     help="check the flags and the storage, print the plan, train nothing")
    run.add_argument("--quiet", action="store_true", help="no progress bars or per-trial lines")
    return parser


def _defaults() -> dict[str, Any]:
    return vars(build_parser().parse_args([]))


@contextlib.contextmanager
def _raising_parser_errors(parser: argparse.ArgumentParser, what: str):
    """Turn the argparse exits of a trainer's parser into a SearchError."""
    def error(message):
        raise SearchError(f"{what}: {message}")

    original = parser.error
    parser.error = error
    try:
        yield parser
    finally:
        parser.error = original


def _normalize(args: argparse.Namespace | Mapping[str, Any]) -> argparse.Namespace:
    """Fill missing flags with defaults and check the combinations argparse cannot."""
    given = dict(args) if isinstance(args, Mapping) else dict(vars(args))
    given.pop("grid_values", None)  # derived from --grid below
    given.pop("space_values", None)  # derived from --space below
    unknown = sorted(set(given) - set(_defaults()))
    if unknown:
        raise SearchError(f"unknown flag(s) {unknown}; see `python -m fastmlp.search --help`")
    args = argparse.Namespace(**{**_defaults(), **given})
    if args.model not in MODELS:
        raise SearchError(f"--model must be one of {list(MODELS)}, got {args.model!r}")
    if args.sampler not in SAMPLERS:
        raise SearchError(f"--sampler must be one of {list(SAMPLERS)}, got {args.sampler!r}")
    if args.pruner is not None and args.pruner not in PRUNERS:
        raise SearchError(f"--pruner must be one of {list(PRUNERS)}, got {args.pruner!r}")
    if args.grid is not None and args.sampler != "grid":
        raise SearchError(f"--grid is only used by --sampler grid (got --sampler {args.sampler})")
    if args.space is not None and args.sampler == "grid":
        raise SearchError("--space is used by --sampler evolution, tpe and random; the grid takes --grid")
    if args.model == "numpy" and args.device == "cuda":
        raise SearchError("--device cuda needs --model torch (the NumPy MLP runs on the CPU)")
    if args.heartbeat_interval and args.grace_period is not None and args.grace_period <= args.heartbeat_interval:
        raise SearchError(f"--grace_period ({args.grace_period} s) must exceed --heartbeat_interval "
                          f"({args.heartbeat_interval} s), or live trials would be failed")
    if args.grace_period is None and args.heartbeat_interval:
        args.grace_period = 4 * args.heartbeat_interval
    try:
        args.grid_values = parse_grid(args.grid, model=args.model) if args.sampler == "grid" else None
        args.space_values = parse_space(args.space, model=args.model) if args.sampler != "grid" else None
    except ValueError as exc:
        raise SearchError(str(exc)) from None
    if args.study_name is None:
        args.study_name = f"{args.model}-{args.sampler}"
    if not args.study_name.strip():
        raise SearchError("--study_name must not be empty")
    if args.out_dir is None:
        args.out_dir = str(Path("runs") / "search" / args.study_name)
    if args.n_trials is None and args.sampler != "grid":
        args.n_trials = 20
    if args.pruner is None:
        args.pruner = "none" if args.sampler == "grid" else "median"
    return args


# --------------------------------------------------------------------------- trainers
class _Trainer:
    """The trainer module of ``--model`` and how to fill its flags for one configuration."""

    def __init__(self, model: str, trainer_flags: str):
        self.model = model
        self.module_name = MODELS[model]
        self.module = importlib.import_module(self.module_name)
        try:
            self.base_argv = shlex.split(trainer_flags or "")
        except ValueError as exc:
            raise SearchError(f"--trainer_flags: {exc}") from None
        given = {token[2:].split("=", 1)[0] for token in self.base_argv if token.startswith("--")}
        owned = sorted(given & _SEARCH_OWNED_FLAGS)
        if owned:
            raise SearchError(f"--trainer_flags may not set {', '.join('--' + f for f in owned)}: the "
                              "search sets them (use the search's own flags or --grid)")
        if "init" not in given:
            # The reports' searches (Adam at lr 2e-5) used PyTorch's default init; with the
            # course's N(0, 1e-4^2) weights such a small step size does not learn at all.
            self.base_argv = ["--init", DEFAULT_INIT[model], *self.base_argv]
        with _raising_parser_errors(self.module.build_parser(), "--trainer_flags") as parser:
            self.base = parser.parse_args(self.base_argv)
        actions = {a.dest: a for a in self.module.build_parser()._actions}
        self.optimizers = tuple(actions["optimizer"].choices)
        self.optimizer_note = f"with --model {model}"
        if getattr(self.base, "nesterov", False):
            # Both trainers refuse --nesterov with any optimizer but SGD with momentum.
            self.optimizers = tuple(o for o in self.optimizers if o == "momentum")
            self.optimizer_note = "with --trainer_flags --nesterov"
        self.has_dropout = "dropout" in actions
        self.threads_flag = "num_threads" if "num_threads" in actions else "threads"

    def check_optimizers(self, choices) -> None:
        """Refuse a grid or space whose optimizers this trainer, with its fixed flags, cannot run."""
        unavailable = [name for name in choices if name not in self.optimizers]
        if unavailable:
            raise SearchError(f"optimizer(s) {unavailable} of the grid/space are not available "
                              f"{self.optimizer_note} (choices: {list(self.optimizers)}); narrow the "
                              "optimizers with --grid or --space")

    def namespace(self, config: Mapping[str, Any], args: argparse.Namespace, *, out_dir: Path,
                  eval_freq: int | None = None) -> argparse.Namespace:
        """The trainer's flags for ``config`` (a configuration of :mod:`fastmlp.search_space`)."""
        self.check_optimizers([config["optimizer"]])
        if config.get("dropout") and not self.has_dropout:
            raise SearchError(f"dropout is not available with --model {self.model}")
        ns = copy.copy(self.base)
        max_steps = int(config["max_steps"])
        ns.dnn_hidden_units = format_hidden_units(config["hidden_units"])
        ns.learning_rate = float(config["learning_rate"])
        ns.batch_size = int(config["batch_size"])
        ns.max_steps = max_steps
        ns.optimizer = str(config["optimizer"])
        ns.weight_decay = float(config["weight_decay"])
        if self.has_dropout:
            ns.dropout = float(config.get("dropout", 0.0))
        ns.eval_freq = min(int(eval_freq or args.eval_freq), max_steps)
        ns.seed = int(args.seed)
        ns.validation_size = int(args.validation_size)
        ns.data_dir = args.data_dir
        ns.out_dir = str(out_dir)
        ns.resume = None
        # Trials run quietly: their trainer's "test" lines would show validation numbers (the
        # stand-in split), and several workers' progress bars would interleave.
        ns.quiet = True
        ns.dry_run = False
        setattr(ns, self.threads_flag, _threads_per_worker(args))
        if hasattr(ns, "device"):
            ns.device = args.device
        return ns

    def command(self, ns: argparse.Namespace) -> str:
        """The shell command running ``ns`` by hand (for results.md)."""
        defaults = vars(self.module.build_parser().parse_args([]))
        parts = ["python", "-m", self.module_name]
        for name, value in vars(ns).items():
            if name in ("out_dir", "quiet", "resume", "dry_run", self.threads_flag) or value is None:
                continue
            if value == defaults.get(name) and name not in ("dnn_hidden_units", "learning_rate",
                                                            "batch_size", "max_steps", "optimizer"):
                continue
            if isinstance(value, bool):
                if value:
                    parts.append(f"--{name}")
                continue
            if isinstance(value, (list, tuple)):
                value = format_hidden_units(value)
            parts += [f"--{name}", shlex.quote(str(value))]
        return " ".join(parts)

    def load_data(self, args: argparse.Namespace, *, for_trials: bool) -> dict:
        """``get_cifar10`` as the trainer would load it for ``--seed``; for trials, test withheld.

        For trials the returned dict's ``"test"`` entry IS the validation DataSet: the
        trainers evaluate a "test" split unconditionally, and the real test images must not
        reach a trial (see the module docstring).
        """
        from fastmlp.data import get_cifar10

        dtype = np.float64 if getattr(self.base, "dtype", "float32") == "float64" else np.float32
        data_seed = int(args.seed)
        if self.model == "numpy":  # fastmlp.train seeds the batch order with a seed derived from --seed
            data_seed = self.module.derive_seeds(int(args.seed))[1]
        try:
            data = get_cifar10(args.data_dir, one_hot=False, validation_size=int(args.validation_size),
                               preprocessing=getattr(self.base, "preprocessing", "mean_image"),
                               flatten=True, dtype=dtype, augment=bool(getattr(self.base, "augment", False)),
                               seed=data_seed)
        except (ValueError, TypeError, OSError) as exc:
            raise SearchError(f"cannot load CIFAR-10 (--data_dir {args.data_dir!r}, --validation_size "
                              f"{args.validation_size}): {_one_line(exc)}") from None
        if for_trials:
            data = {"train": data["train"], "validation": data["validation"], "test": data["validation"]}
        return data


def _threads_per_worker(args: argparse.Namespace) -> int | None:
    if args.threads is not None:
        return int(args.threads)
    if args.n_workers > 1:
        return max(1, (os.cpu_count() or 1) // args.n_workers)
    return None


# --------------------------------------------------------------------------- study set-up
def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """What must not change between the runs and workers of one study."""
    return {
        "model": args.model,
        "sampler": args.sampler,
        "grid": args.grid_values,
        "space": args.space_values,
        "validation_size": int(args.validation_size),
        "seed": int(args.seed),
        "max_steps_cap": args.max_steps_cap,
        "trainer_flags": shlex.split(args.trainer_flags or ""),
    }


def _sampler_seed(args: argparse.Namespace, n_existing: int) -> int:
    # Different per worker and per resumption: a resumed random/TPE/NSGA-II study must not
    # replay the random draws of its first run.
    return int(np.random.SeedSequence([int(args.seed), int(args.worker_index), int(n_existing)])
               .generate_state(1)[0])


def _make_sampler(args: argparse.Namespace, n_existing: int):
    optuna = _optuna()
    if args.sampler == "grid":
        # Same seed in every worker and run: the shuffled grid order must agree between them.
        return optuna.samplers.GridSampler(args.grid_values, seed=int(args.seed))
    seed = _sampler_seed(args, n_existing)
    if args.sampler == "evolution":
        return optuna.samplers.NSGAIISampler(population_size=args.population_size, seed=seed)
    if args.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def _make_pruner(args: argparse.Namespace):
    optuna = _optuna()
    if args.pruner == "median":
        # No verdict before 5 finished trials, nor at a trial's first evaluation (step
        # eval_freq): Optuna may prune from step == n_warmup_steps on, hence the + 1. The first
        # evaluation says more about the warm-up and the schedule's length than the configuration.
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=args.eval_freq + 1)
    if args.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def _open_study(args: argparse.Namespace, storage, *, create: bool = True):
    """Create or load the study and check it was created with compatible settings."""
    optuna = _optuna()
    try:
        existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    except Exception as exc:
        raise SearchError(f"cannot read the studies in the storage: {_one_line(exc)}") from None
    summary = existing.get(args.study_name)
    if summary is None and not create:
        return None
    n_existing = summary.n_trials if summary is not None else 0
    try:
        study = optuna.create_study(storage=storage, sampler=_make_sampler(args, n_existing),
                                    pruner=_make_pruner(args), study_name=args.study_name,
                                    direction="maximize", load_if_exists=True)
    except OSError as exc:
        raise SearchError(f"cannot write to the storage: {exc.strerror or exc}") from None
    settings = json.loads(json.dumps(_settings(args)))  # the form it has once stored
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise SearchError(f"study {args.study_name!r} exists in the storage and minimises; "
                              "choose another --study_name")
        study.set_user_attr(SETTINGS_ATTR, settings)
    else:
        # .get on both sides: a setting added by a later version ("space") reads as None in a
        # study stored before it, which is its value when the flag is not given.
        diffs = [f"{k}: stored {stored.get(k)!r}, now {settings.get(k)!r}"
                 for k in sorted(set(stored) | set(settings)) if stored.get(k) != settings.get(k)]
        if diffs:
            raise SearchError(f"study {args.study_name!r} in this storage was created with other "
                              f"settings ({'; '.join(diffs)}); resume it with the same flags or choose "
                              "another --study_name")
    return study


# --------------------------------------------------------------------------- trials
def _trial_dir(args: argparse.Namespace, number: int) -> Path:
    return Path(args.out_dir) / "trials" / f"trial_{number:04d}"


def _make_objective(args: argparse.Namespace, trainer: _Trainer, data: dict) -> Callable:
    optuna = _optuna()
    eval_sleep = float(os.environ.get(_EVAL_SLEEP_ENV, "0") or 0)

    def objective(trial) -> float:
        config = suggest_config(trial, model=args.model, grid=args.grid_values,
                                space=args.space_values, max_steps_cap=args.max_steps_cap)
        out_dir = _trial_dir(args, trial.number)
        ns = trainer.namespace(config, args, out_dir=out_dir)
        trial.set_user_attr("hidden_units", format_hidden_units(config["hidden_units"]))
        trial.set_user_attr("steps", int(config["max_steps"]))
        trial.set_user_attr("trial_dir", str(out_dir))
        atomic_write_json(out_dir / "trial_info.json", {
            "study_name": args.study_name, "trial_number": trial.number, "config": config,
            "note": "this trial was trained with the VALIDATION split in the trainer's 'test' slot: "
                    "test_* values in metrics.json and curves.csv are validation values; the real "
                    "test set is never used in a trial",
        })

        def on_eval(step: int, metrics: dict) -> None:
            if eval_sleep:
                time.sleep(eval_sleep)
            accuracy = metrics.get("validation_accuracy")
            if step <= 0 or accuracy is None:  # step 0 is the untrained network (fastmlp)
                return
            trial.report(float(accuracy), int(step))
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation accuracy {accuracy:.4f} at step {step}")

        try:
            result = trainer.module.train(ns, data=data, on_eval=on_eval)
        except runlog.DivergenceError as exc:
            # A diverging configuration is a hopeless one, not a broken trial: for the grid it
            # counts as visited, for the other samplers it spends a trial of the budget.
            trial.set_user_attr("diverged", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        finally:
            for name in ("checkpoint.npz", "checkpoint.pt"):
                with contextlib.suppress(FileNotFoundError):
                    (out_dir / name).unlink()
        accuracy = result.get("validation_accuracy")
        if accuracy is None:
            raise RuntimeError(f"{trainer.module_name}.train returned no validation_accuracy")
        for key in ("validation_loss", "best_validation_accuracy", "wall_seconds", "steps"):
            if result.get(key) is not None:
                trial.set_user_attr(key, result[key])
        return float(accuracy)

    return objective


def _counts(study) -> dict[str, int]:
    from optuna.trial import TrialState

    counts = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    return counts


def _next_action(study, args: argparse.Namespace, heartbeat: bool) -> str:
    """``"run"`` a trial, ``"wait"`` for running ones (they may die and need a rerun), or ``"done"``."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    n_waiting = states.count(TrialState.WAITING)
    n_running = states.count(TrialState.RUNNING)
    n_done = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
    if n_waiting:
        return "run"
    below_target = args.n_trials is None or n_done + n_running < args.n_trials
    if args.sampler == "grid":
        # Grid points run or running; as Optuna's GridSampler, a FAIL point counts as visited
        # (it is queued again when it failed for a dead worker or an interrupt).
        taken = {t.system_attrs.get("grid_id") for t in trials
                 if t.state != TrialState.WAITING and "grid_id" in t.system_attrs}
        if below_target and len(taken) < grid_size(args.grid_values):
            return "run"
    elif below_target:
        return "run"
    return "wait" if (n_running and heartbeat) else "done"


def _requeue_interrupted(study, args: argparse.Namespace) -> int:
    """Queue again the trials that failed by an interrupt (Ctrl-C) and were never retried."""
    optuna = _optuna()
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    queued = 0
    with _quiet_optuna_warnings():
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=args.max_retry)
        for trial in trials:
            if (trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted")
                    and trial.number not in retried):
                frozen = copy.deepcopy(trial)
                frozen.user_attrs = {k: v for k, v in frozen.user_attrs.items() if k != "interrupted"}
                before = len(study.get_trials(deepcopy=False))
                retry(study, frozen)
                queued += len(study.get_trials(deepcopy=False)) - before
    return queued


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _describe(config_or_params: Mapping[str, Any]) -> str:
    c = config_or_params
    text = (f"hidden [{c['hidden_units']}] lr {c['learning_rate']:.3g} batch {c['batch_size']} "
            f"steps {c['max_steps']} {c['optimizer']}")
    if c.get("weight_decay"):
        text += f" wd {c['weight_decay']:.2g}"
    if c.get("dropout"):
        text += f" dropout {c['dropout']:.2f}"
    return text


def _run_worker(args: argparse.Namespace, *, trainer: _Trainer | None = None) -> None:
    """One worker: load the data once, then run trials until the study needs no more."""
    optuna = _optuna()
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.monotonic()
    threads = _threads_per_worker(args)
    if threads is not None and args.model == "torch":
        import torch

        torch.set_num_threads(threads)
    trainer = trainer or _Trainer(args.model, args.trainer_flags)
    storage = open_storage(args.storage, args.out_dir, heartbeat_interval=args.heartbeat_interval,
                           grace_period=args.grace_period, max_retry=args.max_retry)
    study = _open_study(args, storage)
    heartbeat = bool(args.heartbeat_interval)
    data = None
    objective = None
    prefix = f"[worker {args.worker_index}] " if args.n_workers > 1 else ""

    def report(study, trial) -> None:
        config = suggest_config(optuna.trial.FixedTrial(trial.params), model=args.model,
                                grid=args.grid_values, space=args.space_values,
                                max_steps_cap=args.max_steps_cap)
        config["hidden_units"] = format_hidden_units(config["hidden_units"])
        if trial.state == TrialState.COMPLETE:
            value = f"validation {trial.value:.4f}"
        elif trial.state == TrialState.PRUNED and trial.intermediate_values:
            step = max(trial.intermediate_values)
            value = f"pruned at step {step} (validation {trial.intermediate_values[step]:.4f})"
        else:
            value = trial.state.name.lower()
        seconds = trial.duration.total_seconds() if trial.duration else float("nan")
        _say(args, f"{prefix}trial {trial.number}: {_describe(config)} -> {value} ({seconds:.1f} s)")

    while True:
        if args.timeout is not None and time.monotonic() - started > args.timeout:
            _say(args, f"{prefix}--timeout {args.timeout:g} s reached: no new trial")
            return
        if heartbeat:
            with _quiet_optuna_warnings():
                optuna.storages.fail_stale_trials(study)
        action = _next_action(study, args, heartbeat)
        if action == "done":
            return
        if action == "wait":
            time.sleep(min(5.0, max(0.5, args.heartbeat_interval / 2)))
            continue
        if data is None:
            data = trainer.load_data(args, for_trials=True)
            objective = _make_objective(args, trainer, data)

        def guarded(trial):
            try:
                return objective(trial)
            except KeyboardInterrupt:
                # Marked so that the next run queues the trial again (Optuna marks it FAIL).
                trial.set_user_attr("interrupted", True)
                raise

        # A KeyboardInterrupt or an error of the trainer propagates (Optuna marks the trial FAIL).
        with _quiet_optuna_warnings():
            study.optimize(guarded, n_trials=1, callbacks=[report], gc_after_trial=True)


def _worker_process(args_dict: dict, worker_index: int) -> None:
    """Entry point of a worker process started by ``--n_workers`` (spawned: a fresh interpreter)."""
    args = argparse.Namespace(**args_dict)
    args.worker_index = int(args.worker_index) + worker_index
    try:
        _run_worker(args)
    except KeyboardInterrupt:
        sys.exit(130)
    except SearchError as exc:
        print(f"fastmlp.search worker {args.worker_index}: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def _run_workers(args: argparse.Namespace) -> None:
    """Start ``--n_workers`` worker processes and wait for them."""
    threads = _threads_per_worker(args)
    context = multiprocessing.get_context("spawn")  # no fork: torch and BLAS threads do not survive it
    # BLAS reads its thread count when it loads, so it must be in the children's environment.
    env_names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in env_names}
    processes = []
    try:
        for name in env_names:
            if saved[name] is None and threads is not None:
                os.environ[name] = str(threads)
        for index in range(args.n_workers):
            process = context.Process(target=_worker_process, args=(vars(args), index),
                                      name=f"fastmlp-search-worker-{index}")
            process.start()
            processes.append(process)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        for process in processes:
            process.join(timeout=30)
        raise
    failed = [(p.name, p.exitcode) for p in processes if p.exitcode != 0]
    if failed:
        raise WorkerError("worker process(es) failed: " + ", ".join(f"{n} exit code {c}" for n, c in failed)
                           + " (see their messages above)")


# --------------------------------------------------------------------------- the best, retrained
def _best_trial(study):
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    # Ties go to the earlier trial, as study.best_trial does.
    return max(complete, key=lambda t: (t.value, -t.number))


def _final_retrain(study, args: argparse.Namespace, trainer: _Trainer) -> dict | None:
    """Retrain the best trial's configuration and test it once; cached in final.json."""
    optuna = _optuna()
    best = _best_trial(study)
    if best is None:
        return None
    path = Path(args.out_dir) / "final.json"
    params = json.loads(json.dumps(best.params))
    if path.is_file():
        with contextlib.suppress(ValueError, OSError):
            cached = json.loads(path.read_text(encoding="utf-8"))
            if (cached.get("study_name") == args.study_name and cached.get("trial_number") == best.number
                    and cached.get("params") == params):
                return cached
    config = suggest_config(optuna.trial.FixedTrial(best.params), model=args.model,
                            grid=args.grid_values, space=args.space_values,
                            max_steps_cap=args.max_steps_cap)
    run_dir = Path(args.out_dir) / "final"
    # One evaluation, after the last step: the test set is used once.
    ns = trainer.namespace(config, args, out_dir=run_dir, eval_freq=int(config["max_steps"]))
    ns.quiet = bool(args.quiet)
    # The workers are done: the retrain may use every core (--threads when given).
    setattr(ns, trainer.threads_flag, args.threads)
    shown = {**config, "hidden_units": format_hidden_units(config["hidden_units"])}
    _say(args, f"retraining the best trial ({best.number}: {_describe(shown)}, validation "
               f"{best.value:.4f}) and testing it once")
    result = trainer.module.train(ns)  # the trainer loads the data itself, test set included
    final = {
        "study_name": args.study_name,
        "trial_number": best.number,
        "params": params,
        "config": config,
        "trial_validation_accuracy": best.value,
        "validation_accuracy": result.get("validation_accuracy"),
        "test_accuracy": result.get("test_accuracy"),
        "test_loss": result.get("test_loss"),
        "steps": result.get("steps"),
        "wall_seconds": result.get("wall_seconds"),
        "run_dir": str(run_dir),
        "command": trainer.command(ns),
    }
    atomic_write_json(path, final)
    return final


# --------------------------------------------------------------------------- outputs
def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def write_trials_csv(study, path: Path) -> None:
    """One row per trial with the columns of ``study.trials_dataframe()`` (no pandas needed)."""
    trials = study.get_trials(deepcopy=False)
    param_names = sorted({k for t in trials for k in t.params})
    attr_names = sorted({k for t in trials for k in t.user_attrs})
    header = (["number", "value", "datetime_start", "datetime_complete", "duration"]
              + [f"params_{k}" for k in param_names] + [f"user_attrs_{k}" for k in attr_names] + ["state"])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for t in trials:
        writer.writerow(
            [t.number, _cell(t.value), _cell(t.datetime_start), _cell(t.datetime_complete),
             _cell(t.duration.total_seconds() if t.duration else None)]
            + [_cell(t.params.get(k)) for k in param_names]
            + [_cell(t.user_attrs.get(k)) for k in attr_names] + [t.state.name])
    atomic_write_text(path, buffer.getvalue())


def _trial_row_config(trial, args: argparse.Namespace) -> dict | None:
    optuna = _optuna()
    try:
        return suggest_config(optuna.trial.FixedTrial(trial.params), model=args.model,
                              grid=args.grid_values, space=args.space_values,
                              max_steps_cap=args.max_steps_cap)
    except (ValueError, KeyError):  # a trial killed before all its parameters were drawn
        return None


def write_results_md(study, args: argparse.Namespace, path: Path, final: dict | None,
                     plots: Mapping[str, tuple[str | None, str]]) -> None:
    """The trials as in the reports' Table 1, then the retrained best and its test accuracy."""
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    rows = [(t, _trial_row_config(t, args)) for t in trials]
    rows = [(t, c) for t, c in rows if c is not None]
    show_wd = any(c["weight_decay"] for _, c in rows)
    show_dropout = any(c["dropout"] for _, c in rows)
    if args.sampler == "grid":
        layouts = list(args.grid_values["hidden_units"])
        order = lambda tc: (layouts.index(format_hidden_units(tc[1]["hidden_units"]))  # noqa: E731
                            if format_hidden_units(tc[1]["hidden_units"]) in layouts else len(layouts),
                            tc[1]["max_steps"], tc[1]["batch_size"], tc[1]["learning_rate"], tc[0].number)
    else:
        order = lambda tc: (-(tc[0].value if tc[0].value is not None else -1.0), tc[0].number)  # noqa: E731
    rows.sort(key=order)
    best = _best_trial(study)
    counts = _counts(study)

    lines = [f"# Hyper-parameter search `{args.study_name}`", ""]
    lines += [
        f"- model: `{args.model}` ({MODELS[args.model]}), sampler: `{args.sampler}`, pruner: `{args.pruner}`",
        f"- trials: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n),
        f"- selection: accuracy on {args.validation_size} validation images carved from the end of the "
        "training set; the test set was not used by any trial",
        f"- seed {args.seed}" + (f", steps capped at {args.max_steps_cap}" if args.max_steps_cap else "")
        + (f", trainer flags `{args.trainer_flags}`" if args.trainer_flags else ""),
        "",
        "## Trials",
        "",
    ]
    header = ["Trial", "Hidden units", "Learning rate", "Batch size", "Steps", "Optimizer"]
    header += ["Weight decay"] * show_wd + ["Dropout"] * show_dropout
    header += ["Validation accuracy", "State", "Seconds"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for trial, config in rows:
        steps = trial.user_attrs.get("steps", config["max_steps"])
        if trial.state == TrialState.PRUNED and trial.intermediate_values:
            last_step = max(trial.intermediate_values)
            value = f"({trial.intermediate_values[last_step]:.4f} at step {last_step})"
        else:
            value = f"{trial.value:.4f}" if trial.value is not None else ""
        if best is not None and trial.number == best.number:
            value = f"**{value}**"
        cells = [str(trial.number), f"[{', '.join(map(str, config['hidden_units']))}]",
                 f"{config['learning_rate']:.3g}", str(config["batch_size"]), str(steps), config["optimizer"]]
        cells += [f"{config['weight_decay']:.2g}"] * show_wd + [f"{config['dropout']:.2f}"] * show_dropout
        seconds = f"{trial.duration.total_seconds():.1f}" if trial.duration else ""
        cells += [value, trial.state.name.lower(), seconds]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Best configuration, retrained and tested once", ""]
    if final is None:
        lines.append("No completed trial yet." if best is None else
                     "Not retrained in this run (`--skip_final`).")
    else:
        c = final["config"]
        lines += [
            "| Trial | Hidden units | Learning rate | Batch size | Steps | Optimizer | Validation accuracy "
            "(search) | Validation accuracy (retrain) | Test accuracy |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {final['trial_number']} | [{', '.join(map(str, c['hidden_units']))}] | {c['learning_rate']:.3g} "
            f"| {c['batch_size']} | {final.get('steps', c['max_steps'])} | {c['optimizer']} "
            f"| {final['trial_validation_accuracy']:.4f} | {_fmt(final.get('validation_accuracy'))} "
            f"| **{_fmt(final.get('test_accuracy'))}** |",
            "",
            "Retrained on the same training split with the same seed, evaluated on the test set once, "
            f"after the last step. Reproduce it with `{final['command']}`.",
        ]
    lines += ["", "## Plots", ""]
    for name, (file, reason) in plots.items():
        lines.append(f"- {name}: " + (f"![{name}]({file})" if file else f"not drawn ({reason})"))
    atomic_write_text(path, "\n".join(lines) + "\n")


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


def write_plots(study, out_dir: Path) -> dict[str, tuple[str | None, str]]:
    """Draw optimization_history.png, param_importances.png, intermediate_values.png.

    Returns ``{plot name: (file name or None, reason it was not drawn)}``; a plot that
    cannot be drawn (too few trials, matplotlib missing) is skipped, never an error.
    """
    _optuna()
    from optuna.trial import TrialState

    names = ("optimization history", "parameter importances", "validation curves")
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as ovm
    except ImportError:
        return {name: (None, "matplotlib is not installed") for name in names}

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varied = [name for name in sorted({k for t in complete for k in t.params})
              if len({json.dumps(t.params.get(name)) for t in complete}) > 1]
    jobs = {
        "optimization history": ("optimization_history.png", ovm.plot_optimization_history,
                                 None if complete else "no completed trial"),
        "parameter importances": ("param_importances.png", ovm.plot_param_importances,
                                  "fewer than 2 completed trials" if len(complete) < 2 else
                                  "no parameter varies between the completed trials" if not varied else None),
        "validation curves": ("intermediate_values.png", ovm.plot_intermediate_values,
                              None if any(t.intermediate_values for t in study.get_trials(deepcopy=False))
                              else "no trial reported a validation curve"),
    }
    drawn: dict[str, tuple[str | None, str]] = {}
    for name, (file, plot, skip) in jobs.items():
        if skip:
            drawn[name] = (None, skip)
            continue
        try:
            with _quiet_optuna_warnings(), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                kwargs = {"params": varied} if plot is ovm.plot_param_importances else {}
                ax = plot(study, **kwargs)
                figure = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).figure
                figure.set_size_inches(9, 5)
                figure.tight_layout()
                with atomic_path(out_dir / file) as tmp:
                    figure.savefig(tmp, format="png", dpi=100)
                plt.close(figure)
            drawn[name] = (file, "")
        except Exception as exc:  # a plot is a convenience: report and go on
            drawn[name] = (None, _one_line(exc))
            plt.close("all")
    return drawn


def write_outputs(study, args: argparse.Namespace, final: dict | None) -> None:
    out_dir = Path(args.out_dir)
    write_trials_csv(study, out_dir / "trials.csv")
    plots = write_plots(study, out_dir)
    write_results_md(study, args, out_dir / "results.md", final, plots)


# --------------------------------------------------------------------------- entry points
def run_search(args: argparse.Namespace | Mapping[str, Any]) -> "optuna.Study":
    """Run (or resume) the search described by ``args`` and write its outputs.

    Parameters
    ----------
    args : argparse.Namespace or mapping
        Flags as from ``build_parser().parse_args(...)``; missing ones take their defaults.

    Returns
    -------
    optuna.Study
        The study, loaded from its storage (``study.best_trial`` is the best by validation
        accuracy). The test accuracy of the retrained best is in ``<out_dir>/final.json``.

    Raises
    ------
    SearchError
        (a ValueError) for bad flags, an unusable storage or missing data.
    """
    args = _normalize(args)
    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trainer = _Trainer(args.model, args.trainer_flags)
    trainer.check_optimizers((args.grid_values or args.space_values)["optimizer"])
    try:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SearchError(f"cannot create --out_dir {args.out_dir!r}: {exc.strerror or exc}") from None
    storage = open_storage(args.storage, args.out_dir, heartbeat_interval=args.heartbeat_interval,
                           grace_period=args.grace_period, max_retry=args.max_retry)
    if args.dry_run:
        study = _open_study(args, storage, create=False)
        counts = _counts(study) if study is not None else {}
        plan = [
            f"study {args.study_name!r} in {args.storage or Path(args.out_dir) / 'study.journal'}: "
            + (", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n) or "new"),
            f"model {args.model} ({MODELS[args.model]}), sampler {args.sampler}, pruner {args.pruner}, "
            f"{args.n_workers} worker(s), target "
            + (f"{args.n_trials} finished trials" if args.n_trials else "the whole grid"),
        ]
        if args.grid_values is not None:
            plan.append(f"grid of {grid_size(args.grid_values)} points: {json.dumps(args.grid_values)}")
        if args.space_values is not None:
            plan.append(f"space: {json.dumps(args.space_values)}")
        print("\n".join(plan))
        return study
    study = _open_study(args, storage)
    queued = _requeue_interrupted(study, args)
    if queued:
        _say(args, f"queued again {queued} trial(s) interrupted in an earlier run")
    _say(args, f"study {args.study_name!r}: {_counts_text(study)}; outputs in {args.out_dir}")
    if args.n_workers == 1:
        _run_worker(args, trainer=trainer)
    else:
        _run_workers(args)
    study = _open_study(args, storage)  # fresh view of what every worker wrote
    final = None
    if not args.skip_final:
        final = _final_retrain(study, args, trainer)
    write_outputs(study, args, final)
    if final is not None:
        _say(args, f"best trial {final['trial_number']}: validation {final['trial_validation_accuracy']:.4f}, "
                   f"retrained test accuracy {_fmt(final['test_accuracy'])}; see {Path(args.out_dir) / 'results.md'}")
    return study


def _counts_text(study) -> str:
    return ", ".join(f"{n} {s.lower()}" for s, n in _counts(study).items() if n) or "no trial yet"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m fastmlp.search``; returns the exit status.

    0 on success; 2 for bad flags, an unusable storage or missing data (one line on
    stderr); 1 when the final retrain diverged or a worker process failed; 130 on Ctrl-C.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run_search(args)
    except SearchError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except runlog.DivergenceError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except WorkerError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
