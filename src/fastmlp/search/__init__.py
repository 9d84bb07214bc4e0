"""Hyper-parameter search over the MLP trainers with Optuna: ``python -m fastmlp.search``.

Drives ``fastmlp.train`` (``--model numpy``) or ``torch_models.train_mlp`` (``--model
torch``) through their Python API (``train(args, data=..., on_eval=...)``) and stores
the study in an Optuna storage, so that a search can be stopped, resumed and shared by
several worker processes, on one machine or many.

Selection never sees the test set
---------------------------------
Every trial trains on the training split minus ``--validation_size`` images and is
scored by its final accuracy on those held-out images (the objective Optuna maximises).
The trainers evaluate the splits they are handed, and a trial is handed the training
and validation splits only: no trial loads the test set, and no test number is stored
in the study. When the search ends, the best trial's configuration is retrained once
(same training split, same ``--seed``: it reproduces the trial) and evaluated on the
test set once, at the end of training; that number goes to ``results.md`` only. (Both
trainers also score the untrained network at step 0; the search ignores that
evaluation, which says nothing about the configuration.)

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
  (:data:`fastmlp.search.space.EVOLUTION_SPACE`).
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
one). Workers started at the same moment on a fresh storage all join: the races of
creating an SQL database's tables or the study are retried. Trial numbers are handed out
by the storage, so no trial is lost; the GridSampler maps trial number k to grid point k.
A journal whose last line was cut by a crash is repaired before the next append (the
cut bytes are set aside, :mod:`fastmlp.search.journal`); a malformed line is an error.

``--n_trials`` is the TOTAL number of finished (complete or pruned) trials the study
should reach, not a number per invocation: re-running the same command resumes an
interrupted study and only runs what is missing (a finished study runs nothing). It is
never overshot: a worker decides to start a trial before the storage numbers it, so
workers deciding together can start one trial too many (or two on one grid point); the
later-numbered one sees the earlier ones when it starts (waiting, if need be, until
their grid points are written) and fails at once without training, marked ``surplus`` (its grid point is given back; ``results.md`` leaves it
out and counts it apart, ``trials.csv`` lists it as FAIL with ``user_attrs_surplus``).

A worker that dies in the middle of a trial (killed, machine lost) stops sending the
trial's heartbeat; after ``--grace_period`` seconds another worker (or the next run)
marks the trial FAIL and queues a copy of it (Optuna's
``RetryHeartbeatStaleTrialCallback``, at most ``--max_retry`` times; ``--grace_period``
defaults to 4 heartbeat intervals, for either storage). RDBStorage has this heartbeat
built in; Optuna 5.0's JournalStorage does not, so :class:`HeartbeatJournalStorage`
adds it (the heartbeat is a timestamp in the trial's system attributes). A trial stopped by Ctrl-C is marked FAIL by Optuna and queued again
by the next run (when it starts: two runs started at the same instant could both queue it,
so start hand-made workers a few seconds apart; ``--n_workers`` does this once for all).
SIGTERM and SIGHUP stop a run as Ctrl-C does; the ``--n_workers`` parent forwards them to
its workers and waits for them (:mod:`fastmlp.search.signals`).

Outputs in ``--out_dir`` (default ``runs/search/<study_name>``), written atomically:
``trials.csv`` (one row per trial: the columns of ``study.trials_dataframe()``),
``results.md`` (the trials as in the reports' Table 1, then the retrained best with its
test accuracy), ``final.json``, ``optimization_history.png``, ``param_importances.png``,
``intermediate_values.png``, the journal, and ``trials/<study_name>/trial_NNNN/`` (each
trial's curves and metrics; created exclusively, with ``-1``... when another study of
that name in another storage took it; checkpoints are deleted, those of killed workers
too when a worker finishes, but only in folders that a worker of this study made for that
trial: a path read from a shared storage is checked, never trusted) and ``final/`` (the
retrained best run).

Examples
--------
The reports' grid for the PyTorch MLP with two workers, then a quick evolutionary search::

    python -m fastmlp.search --model torch --sampler grid --n_workers 2 --data_dir ../shared/data
    python -m fastmlp.search --model numpy --sampler evolution --n_trials 40 --max_steps_cap 500

Workers on several machines sharing a PostgreSQL database::

    python -m fastmlp.search --sampler tpe --n_trials 100 --study_name big \\
        --storage postgresql://user:pw@db-host/optuna --worker_index K [--skip_final]

Layout
------
======================  ==============================================================
``cli``                 the flags, :func:`run_search`, :func:`main` (exit status)
``settings``            :class:`SearchSettings`: the search's settings, checked once
``space``               the grid and the evolutionary space; configurations from trials
``adapter``             a trainer driven for a configuration (:class:`TrainerAdapter`)
``study``               sampler, pruner, settings check, what is left to run
``workers``             the trial objective, one worker
``processes``           ``--n_workers`` processes: started, waited for, stopped
``folders``             each trial's folder: claimed, recorded, its checkpoints deleted
``final``               the best configuration, retrained and tested once
``reports``             progress lines, ``trials.csv``, ``results.md``, plots
``storage``             ``--storage``, heartbeats; Optuna internals (and ``journal``)
``journal``             the journal file's lines checked, a cut last line set aside
``signals``             SIGTERM and SIGHUP as interrupts, the exit status of a signal
``files``               bounded reads of regular files (``--grid`` files, trial records)
``errors``              :class:`SearchError` (exit 2), :class:`WorkerError` (exit 1)
======================  ==============================================================

"""
import importlib

# The public names, each from its module; loaded on first use, so that importing one
# submodule (say the space) does not load the command line and the workers.
_HOMES = {
    "build_parser": "cli", "main": "cli", "run_search": "cli",
    "SearchError": "errors", "WorkerError": "errors",
    "HEARTBEAT_ATTR": "storage", "open_storage": "storage",
    "MODELS": "settings", "PRUNERS": "settings", "SAMPLERS": "settings", "SearchSettings": "settings",
    "SETTINGS_ATTR": "study",
}

__all__ = sorted([*_HOMES, "HeartbeatJournalStorage"])


def __getattr__(name):
    if name == "HeartbeatJournalStorage":  # a class built on first use: Optuna is optional
        return importlib.import_module("fastmlp.search.storage").heartbeat_journal_class()
    if name in _HOMES:
        return getattr(importlib.import_module(f"fastmlp.search.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'fastmlp.search' has no attribute {name!r}")
