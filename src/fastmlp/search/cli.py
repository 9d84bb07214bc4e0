"""``python -m fastmlp.search``: the flags, the whole search, the exit status.

The flags are generated from :class:`~fastmlp.search.settings.SearchSettings`, which
checks them; what was parsed becomes a :class:`SearchSettings` once, and no other module
of the search reads a flag.
:func:`run_search` is the search as a function: open the storage and the study, queue
again the trials an earlier run lost to Ctrl-C, run the workers, retrain the best
configuration once, write the outputs. :func:`main` maps its outcome to the exit
status: 0 done, 1 the final retrain diverged or a worker process failed, 2 bad flags,
an unusable storage or missing data (one line on stderr), 130 Ctrl-C, 143 SIGTERM,
129 SIGHUP (:mod:`fastmlp.search.signals`).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from fastmlp.cli import (
    HelpFormatter,
    add_config_arguments,
    config_from_args,
    explicit_flags,
    library_messages_on_console,
)
from fastmlp.exits import EXIT_BAD_INPUT
from fastmlp.runlog import DivergenceError
from fastmlp.search import signals
from fastmlp.search import study as studies
from fastmlp.search.adapter import TrainerAdapter
from fastmlp.search.errors import SearchError, WorkerError
from fastmlp.search.final import final_retrain
from fastmlp.search.processes import run_workers
from fastmlp.search.reports import fmt, say, warnings_as_lines, write_outputs
from fastmlp.search.settings import MODELS, SearchSettings
from fastmlp.search.space import grid_size
from fastmlp.search.storage import open_storage, optuna_module
from fastmlp.search.workers import run_worker

if TYPE_CHECKING:  # Optuna is the optional "search" extra: imported where it is used
    import optuna

__all__ = ["build_parser", "main", "run_search", "search_settings"]


def _trainer_flags_error(message: str) -> None:
    raise SearchError(f"--trainer_flags: {message}")


def trainer_settings(model: str, trainer_flags: str) -> dict[str, Any]:
    """The settings ``--trainer_flags`` gives the trainer of ``model``, by field name, read by its own parser.

    Raises
    ------
    SearchError
        For text the shell would not split, or a flag the trainer's command line refuses.
    """
    try:
        argv = shlex.split(trainer_flags or "")
    except ValueError as exc:
        raise SearchError(f"--trainer_flags: {exc}") from None
    module = importlib.import_module(MODELS[model])
    parser, probe = module.build_parser(), module.build_parser()
    parser.error = probe.error = _trainer_flags_error  # a usage error of these flags is the search's error
    parsed = vars(parser.parse_args(argv))
    return {name: parsed[name] for name in explicit_flags(probe, argv)}


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m fastmlp.search``, generated from :class:`SearchSettings` (defaults in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m fastmlp.search",
        description="Hyper-parameter search (Optuna) over the fastmlp / torch_models MLP trainers. "
                    "Trials are scored on a validation split carved from the training set; the best "
                    "configuration is retrained and tested once at the end.",
        formatter_class=HelpFormatter,
    )
    add_config_arguments(parser, SearchSettings, skip=(*SearchSettings.DERIVED, *SearchSettings.INVOCATION_SWITCHES))
    switches = parser.add_argument_group("this invocation")
    helps = {spec.name: spec.metadata.get("help") for spec in dataclasses.fields(SearchSettings)}
    for name in SearchSettings.INVOCATION_SWITCHES:  # one invocation's switches: no --no- form
        switches.add_argument(f"--{name}", action="store_true", help=helps[name])
    return parser


def search_settings(values: SearchSettings | Mapping[str, Any] | argparse.Namespace) -> SearchSettings:
    """``values`` as :class:`SearchSettings`: flags by name, the flags they leave out at their defaults.

    ``values`` is a mapping of flags, or the Namespace of ``build_parser().parse_args(...)``.

    Raises
    ------
    SearchError
        For an unknown flag, a bad value, a bad combination, a bad grid or space.
    TypeError
        For a value of the wrong type (the constraint table's message, naming ``--<flag>``).
    """
    if isinstance(values, SearchSettings):
        return values
    if isinstance(values, argparse.Namespace):
        values = vars(values)
    unknown = sorted(set(values) - set(SearchSettings.given_names()))
    if unknown:
        raise SearchError(f"unknown flag(s) {unknown}; see `python -m fastmlp.search --help`")
    try:
        return SearchSettings.create(values, by_flag=True)
    except SearchError:
        raise
    except ValueError as exc:
        raise SearchError(str(exc)) from None


def _plan(settings: SearchSettings, study) -> str:
    """What ``--dry_run`` prints: the study as it stands, and what this command would run."""
    by_state = studies.counts(study) if study is not None else {}
    plan = [
        f"study {settings.study_name!r} in {settings.storage or Path(settings.out_dir) / 'study.journal'}: "
        + (", ".join(f"{n} {s.lower()}" for s, n in by_state.items() if n) or "new"),
        f"model {settings.model} ({MODELS[settings.model]}), sampler {settings.sampler}, pruner {settings.pruner}, "
        f"{settings.n_workers} worker(s), target "
        + (f"{settings.n_trials} finished trials" if settings.n_trials else "the whole grid"),
    ]
    if settings.grid_values is not None:
        plan.append(f"grid of {grid_size(settings.grid_values)} points: {json.dumps(settings.grid_values)}")
    if settings.space_values is not None:
        plan.append(f"space: {json.dumps(settings.space_values)}")
    return "\n".join(plan)


def run_search(settings: SearchSettings | Mapping[str, Any] | argparse.Namespace) -> "optuna.Study":
    """Run (or resume) the search described by ``settings`` and write its outputs.

    Parameters
    ----------
    settings : SearchSettings, mapping or argparse.Namespace
        The settings, or the flags by name (a mapping, or ``build_parser().parse_args(...)``;
        :func:`search_settings`: the flags left out take their defaults).

    Returns
    -------
    optuna.Study
        The study, loaded from its storage (``study.best_trial`` is the best by validation
        accuracy). The test accuracy of the retrained best is in ``<out_dir>/final.json``.

    Raises
    ------
    SearchError
        (a ValueError) for bad flags, an unusable storage or missing data.
    TypeError
        For a setting of the wrong type.
    """
    settings = search_settings(settings)
    optuna = optuna_module()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    adapter = TrainerAdapter(settings.model, trainer_settings(settings.model, settings.trainer_flags))
    adapter.check_optimizers(settings.searched["optimizer"])
    try:
        Path(settings.out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SearchError(f"cannot create --out_dir {settings.out_dir!r}: {exc.strerror or exc}") from None
    storage = open_storage(settings.storage, settings.out_dir, heartbeat_interval=settings.heartbeat_interval,
                           grace_period=settings.grace_period, max_retry=settings.max_retry)
    if settings.dry_run:
        study = studies.open_study(settings, storage, create=False)
        print(_plan(settings, study))
        return study
    study = studies.open_study(settings, storage)
    queued = studies.requeue_interrupted(study, settings)
    if queued:
        say(settings, f"queued again {queued} trial(s) interrupted in an earlier run")
    say(settings, f"study {settings.study_name!r}: {studies.counts_text(study)}; outputs in {settings.out_dir}")
    if settings.n_workers == 1:
        run_worker(settings, adapter)
    else:
        run_workers(settings, adapter)
    study = studies.open_study(settings, storage)  # fresh view of what every worker wrote
    final = None if settings.skip_final else final_retrain(study, settings, adapter)
    write_outputs(study, settings, final)
    if final is not None:
        say(settings, f"best trial {final['trial_number']}: validation {final['trial_validation_accuracy']:.4f}, "
                      f"retrained test accuracy {fmt(final['test_accuracy'])}; see "
                      f"{Path(settings.out_dir) / 'results.md'}")
    return study


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m fastmlp.search``; returns the exit status.

    0 on success; 2 for bad flags, an unusable storage or missing data (one line on
    stderr); 1 when the final retrain diverged or a worker process failed; 128 + the
    signal's number when stopped by a signal: 130 Ctrl-C (SIGINT), 143 SIGTERM, 129
    SIGHUP (the workers are told and waited for).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with signals.signals_as_interrupts(), warnings_as_lines(parser.prog), library_messages_on_console():
            run_search(config_from_args(SearchSettings, args))
    except SearchError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (DivergenceError, WorkerError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"{parser.prog}: interrupted by {signals.signal_name(exc)}; run the same command again to "
              "resume", file=sys.stderr)
        return signals.exit_status(exc)
    return 0
