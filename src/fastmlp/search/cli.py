"""``python -m fastmlp.search``: the flags, their checks, the whole search, the exit status.

:func:`run_search` is the search as a function: open the storage and the study, queue
again the trials an earlier run lost to Ctrl-C, run the workers, retrain the best
configuration once, write the outputs. :func:`main` maps its outcome to the exit
status: 0 done, 1 the final retrain diverged or a worker process failed, 2 bad flags,
an unusable storage or missing data (one line on stderr), 130 Ctrl-C, 143 SIGTERM,
129 SIGHUP (:mod:`fastmlp.search.signals`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from fastmlp.cli import EXIT_BAD_INPUT, HelpFormatter, flag_type, library_messages_on_console
from fastmlp.data import DATASET_NAMES
from fastmlp.hyperparams import DEVICES, NONNEGATIVE_INT, POSITIVE_INT, POSITIVE_NUMBER
from fastmlp.runlog import DivergenceError
from fastmlp.search import signals
from fastmlp.search import study as studies
from fastmlp.search.adapter import MODELS, TrainerAdapter
from fastmlp.search.errors import SearchError, WorkerError
from fastmlp.search.final import final_retrain
from fastmlp.search.reports import fmt, say, warnings_as_lines, write_outputs
from fastmlp.search.space import DEFAULT_GRID, grid_size, parse_grid, parse_space
from fastmlp.search.storage import GRACE_PERIOD_FACTOR, open_storage, optuna_module
from fastmlp.search.workers import run_worker, run_workers

if TYPE_CHECKING:  # Optuna is the optional "search" extra: imported where it is used
    import optuna

__all__ = ["build_parser", "checked_args", "main", "run_search"]


def _add_what_to_search(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to search")
    what.add_argument("--model", choices=tuple(MODELS), default="torch",
                      help="numpy: fastmlp.train (fastmlp MLP); torch: torch_models.train_mlp")
    what.add_argument("--sampler", choices=studies.SAMPLERS, default="grid",
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
    what.add_argument("--pruner", choices=studies.PRUNERS, default=None,
                      help="stop hopeless trials on their validation curve (when unset: none for the grid, "
                           "so that every grid point gets its full result; median otherwise)")
    what.add_argument("--population_size", type=flag_type(POSITIVE_INT), default=20,
                      help="NSGA-II population (trials per generation) for --sampler evolution")
    what.add_argument("--trainer_flags", default="", metavar="FLAGS",
                      help="extra flags for every trial's trainer, fixed during the search (not the "
                           "searched ones); write it with '=' as the value starts with '--', e.g. "
                           "--trainer_flags='--init kaiming --preprocessing standardize'. Without "
                           "--init here, trials use --init torch (torch model) or kaiming (numpy model)")


def _add_budget_and_data(parser: argparse.ArgumentParser) -> None:
    budget = parser.add_argument_group("budget")
    budget.add_argument("--n_trials", type=flag_type(POSITIVE_INT), default=None,
                        help="TOTAL finished (complete or pruned) trials the study should reach, counted "
                             "over every run and worker (when unset: the whole grid; 20 for other samplers)")
    budget.add_argument("--timeout", type=flag_type(POSITIVE_NUMBER), default=None,
                        help="seconds after which this run starts no new trial")
    budget.add_argument("--max_steps_cap", type=flag_type("max_steps"), default=None,
                        help="train at most this many steps per trial (quick runs)")
    budget.add_argument("--eval_freq", type=flag_type("eval_freq"), default=250,
                        help="validation evaluation (and pruning check) every this many steps")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", type=flag_type("dataset"), choices=DATASET_NAMES, default="cifar10",
                      help="the data set (fastmlp.data.registry)")
    data.add_argument("--data_dir", default=None,
                      help="folder holding the data set, or the .npz file (when unset: $FASTMLP_DATA, else "
                           "~/.cache/fastmlp)")
    data.add_argument("--validation_size", type=flag_type(POSITIVE_INT), default=5000,
                      help="training images held out to score the trials (the test set is never used)")


def _add_study_and_run(parser: argparse.ArgumentParser) -> None:
    study = parser.add_argument_group("study and workers")
    study.add_argument("--study_name", default=None, help="when unset: <model>-<sampler>")
    study.add_argument("--storage", default=None,
                       help="journal file path, or an SQLAlchemy URL (postgresql://..., mysql://..., "
                            "sqlite:///...) for workers on several machines (when unset: "
                            "<out_dir>/study.journal)")
    study.add_argument("--n_workers", type=flag_type(POSITIVE_INT), default=1,
                       help="worker processes on this machine, all sharing the storage")
    study.add_argument("--worker_index", type=flag_type(NONNEGATIVE_INT), default=0,
                       help="distinct per hand-started worker: offsets the sampler's random seed")
    study.add_argument("--threads", type=flag_type("threads"), default=None,
                       help="CPU threads per worker (when unset: cores / n_workers with several workers, "
                            "else the libraries' choice)")
    study.add_argument("--device", type=flag_type("device"), choices=DEVICES, default="auto",
                       help="device of the torch model")
    study.add_argument("--heartbeat_interval", type=flag_type(NONNEGATIVE_INT), default=30,
                       help="seconds between heartbeats of a running trial (0: no heartbeat, a killed "
                            "worker's trial then stays RUNNING)")
    study.add_argument("--grace_period", type=flag_type(POSITIVE_INT), default=None,
                       help="seconds without heartbeat before a running trial is failed and queued again "
                            f"(when unset: {GRACE_PERIOD_FACTOR} x heartbeat_interval)")
    study.add_argument("--max_retry", type=flag_type(NONNEGATIVE_INT), default=2,
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m fastmlp.search`` (defaults shown in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m fastmlp.search",
        description="Hyper-parameter search (Optuna) over the fastmlp / torch_models MLP trainers. "
                    "Trials are scored on a validation split carved from the training set; the best "
                    "configuration is retrained and tested once at the end.",
        formatter_class=HelpFormatter,
    )
    _add_what_to_search(parser)
    _add_budget_and_data(parser)
    _add_study_and_run(parser)
    return parser


def _defaults() -> dict[str, Any]:
    return vars(build_parser().parse_args([]))


def _check_combinations(args: argparse.Namespace) -> None:
    if args.model not in MODELS:
        raise SearchError(f"--model must be one of {list(MODELS)}, got {args.model!r}")
    if args.sampler not in studies.SAMPLERS:
        raise SearchError(f"--sampler must be one of {list(studies.SAMPLERS)}, got {args.sampler!r}")
    if args.pruner is not None and args.pruner not in studies.PRUNERS:
        raise SearchError(f"--pruner must be one of {list(studies.PRUNERS)}, got {args.pruner!r}")
    if args.grid is not None and args.sampler != "grid":
        raise SearchError(f"--grid is only used by --sampler grid (got --sampler {args.sampler})")
    if args.space is not None and args.sampler == "grid":
        raise SearchError("--space is used by --sampler evolution, tpe and random; the grid takes --grid")
    if args.model == "numpy" and args.device == "cuda":
        raise SearchError("--device cuda needs --model torch (the NumPy MLP runs on the CPU)")
    if args.heartbeat_interval and args.grace_period is not None and args.grace_period <= args.heartbeat_interval:
        raise SearchError(f"--grace_period ({args.grace_period} s) must exceed --heartbeat_interval "
                          f"({args.heartbeat_interval} s), or live trials would be failed")


def checked_args(args: argparse.Namespace | Mapping[str, Any]) -> argparse.Namespace:
    """Fill missing flags with defaults, check the combinations argparse cannot, derive the rest.

    Adds ``grid_values`` / ``space_values`` (the parsed ``--grid`` / ``--space``) and the
    defaults that depend on other flags (``--study_name``, ``--out_dir``, ``--n_trials``,
    ``--pruner``, ``--grace_period``).

    Raises
    ------
    SearchError
        For an unknown flag, a bad combination, a bad grid or space.
    """
    given = dict(args) if isinstance(args, Mapping) else dict(vars(args))
    given.pop("grid_values", None)  # derived from --grid below
    given.pop("space_values", None)  # derived from --space below
    unknown = sorted(set(given) - set(_defaults()))
    if unknown:
        raise SearchError(f"unknown flag(s) {unknown}; see `python -m fastmlp.search --help`")
    args = argparse.Namespace(**{**_defaults(), **given})
    _check_combinations(args)
    if args.grace_period is None and args.heartbeat_interval:
        args.grace_period = GRACE_PERIOD_FACTOR * args.heartbeat_interval
    try:
        args.grid_values = parse_grid(args.grid, model=args.model) if args.sampler == "grid" else None
        args.space_values = parse_space(args.space, model=args.model) if args.sampler != "grid" else None
    except (TypeError, ValueError) as exc:
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


def _plan(args: argparse.Namespace, study) -> str:
    """What ``--dry_run`` prints: the study as it stands, and what this command would run."""
    by_state = studies.counts(study) if study is not None else {}
    plan = [
        f"study {args.study_name!r} in {args.storage or Path(args.out_dir) / 'study.journal'}: "
        + (", ".join(f"{n} {s.lower()}" for s, n in by_state.items() if n) or "new"),
        f"model {args.model} ({MODELS[args.model]}), sampler {args.sampler}, pruner {args.pruner}, "
        f"{args.n_workers} worker(s), target "
        + (f"{args.n_trials} finished trials" if args.n_trials else "the whole grid"),
    ]
    if args.grid_values is not None:
        plan.append(f"grid of {grid_size(args.grid_values)} points: {json.dumps(args.grid_values)}")
    if args.space_values is not None:
        plan.append(f"space: {json.dumps(args.space_values)}")
    return "\n".join(plan)


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
    args = checked_args(args)
    optuna = optuna_module()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    adapter = TrainerAdapter(args.model, args.trainer_flags)
    adapter.check_optimizers((args.grid_values or args.space_values)["optimizer"])
    try:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SearchError(f"cannot create --out_dir {args.out_dir!r}: {exc.strerror or exc}") from None
    storage = open_storage(args.storage, args.out_dir, heartbeat_interval=args.heartbeat_interval,
                           grace_period=args.grace_period, max_retry=args.max_retry)
    if args.dry_run:
        study = studies.open_study(args, storage, create=False)
        print(_plan(args, study))
        return study
    study = studies.open_study(args, storage)
    queued = studies.requeue_interrupted(study, args)
    if queued:
        say(args, f"queued again {queued} trial(s) interrupted in an earlier run")
    say(args, f"study {args.study_name!r}: {studies.counts_text(study)}; outputs in {args.out_dir}")
    if args.n_workers == 1:
        run_worker(args, adapter=adapter)
    else:
        run_workers(args)
    study = studies.open_study(args, storage)  # fresh view of what every worker wrote
    final = None if args.skip_final else final_retrain(study, args, adapter)
    write_outputs(study, args, final)
    if final is not None:
        say(args, f"best trial {final['trial_number']}: validation {final['trial_validation_accuracy']:.4f}, "
                  f"retrained test accuracy {fmt(final['test_accuracy'])}; see {Path(args.out_dir) / 'results.md'}")
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
            run_search(args)
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
