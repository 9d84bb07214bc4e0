"""Train the fastmlp MLP on CIFAR-10: ``python -m fastmlp.train``.

The defaults are the course's: one hidden layer of 100 units, weights from
N(0, 1e-4^2), plain SGD with learning rate 2e-3, batches of 200, 1500 steps,
an evaluation on the whole test set every 100 steps (what they reach:
BENCHMARKS.md). Every run writes, into ``--out_dir``
(default ``runs/<timestamp>``): ``metrics.json`` (flags, final and best
accuracy, steps, wall time, library version), ``curves.csv``, ``curves.png``
``checkpoint.npz`` (rewritten at every evaluation; ``--resume`` continues
from it to exactly the result of an uninterrupted run) and, at the end,
``model.safetensors`` (the network with its preprocessing and class names:
``fastmlp.load``, ``python -m fastmlp.predict``).

Examples
--------
The course run, then a logistic regression, then a quick check of the set-up::

    python -m fastmlp.train --data_dir ../shared/data
    python -m fastmlp.train --dnn_hidden_units "" --learning_rate 1e-3
    python -m fastmlp.train --dry_run

Continue an interrupted run (flags not given again are taken from the
checkpoint; ``--max_steps`` may be raised to train longer)::

    python -m fastmlp.train --resume runs/20250101-120000

Recipe: >= 0.55 test accuracy within 5000 steps
-----------------------------------------------
Wider and deeper, He (kaiming) initialisation, Nesterov momentum with a short
warm-up and a cosine decay to zero, weight decay, per-channel standardisation
and random crops/flips::

    python -m fastmlp.train --dnn_hidden_units 1024,512 --init kaiming \\
        --optimizer momentum --momentum 0.9 --nesterov --learning_rate 0.05 \\
        --weight_decay 5e-4 --lr_schedule cosine --warmup_steps 200 \\
        --preprocessing standardize --augment --batch_size 256 \\
        --max_steps 5000 --eval_freq 500 --seed 0

(What it reached, and in how long: BENCHMARKS.md.)

Python API
----------
``build_parser()``, ``main(argv=None) -> int`` and ``train(args, *, data=None,
on_eval=None) -> dict``, the command line's run as a function (see
:func:`fastmlp.training.train`: ``data`` holds pre-loaded splits, the ones to
evaluate among them, ``on_eval(step, metrics)`` may raise to stop the run). This
module is the command line only; the training lives in :mod:`fastmlp.training`
(the loop in :mod:`fastmlp.loop`), the flag checks in :mod:`fastmlp.hyperparams`,
what command lines share in :mod:`fastmlp.cli`.
"""
from __future__ import annotations

import argparse
import gc
from typing import Any, Callable, Mapping

from fastmlp import cli, training
from fastmlp.checkpoint import load_checkpoint, resolve_checkpoint_path
from fastmlp.data import DATASET_NAMES, PREPROCESSINGS
from fastmlp.hyperparams import FloatDType, flag_type, format_hidden_units
from fastmlp.loop import DRY_RUN_EVAL_EXAMPLES, DRY_RUN_STEPS
from fastmlp.modules import INITS
from fastmlp.optim import OPTIMIZERS
from fastmlp.schedules import SCHEDULES
__all__ = ["build_parser", "main", "train"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m fastmlp.train`` (defaults shown in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m fastmlp.train",
        description="Train the fastmlp MLP on CIFAR-10 (course defaults; see the module docstring "
                    "for a recipe meant to reach >= 0.55 test accuracy).",
        formatter_class=cli.HelpFormatter,
    )
    defaults = training.DEFAULTS

    def flag(group, name: str, constraint: str | None = None, **kwargs) -> None:
        """Add ``--name`` with its default from DEFAULTS, checked by the table's ``constraint``."""
        if constraint is not None:
            kwargs["type"] = flag_type(constraint)
        group.add_argument(f"--{name}", default=defaults[name], **kwargs)

    course = parser.add_argument_group("course flags")
    course.add_argument("--dnn_hidden_units", type=flag_type("hidden_units"),
                        default=format_hidden_units(defaults["dnn_hidden_units"]),
                        help="comma-separated hidden layer sizes; '' for logistic regression")
    flag(course, "learning_rate", "learning_rate", help="peak learning rate")
    flag(course, "max_steps", "max_steps", help="number of parameter updates")
    flag(course, "batch_size", "batch_size", help="training batch size")
    flag(course, "eval_freq", "eval_freq",
         help="evaluate (and checkpoint) every this many steps, and after the last one")
    flag(course, "data_dir", help="folder holding the --dataset's files (for cifar10: cifar-10-python.tar.gz or "
                                  "cifar-10-batches-py/; for npz: the .npz file) (default: $FASTMLP_DATA, "
                                  "else ~/.cache/fastmlp)")

    opt = parser.add_argument_group("optimisation")
    flag(opt, "optimizer", "optimizer", choices=OPTIMIZERS,
         help="sgd: plain SGD (the course); momentum: SGD with --momentum; adam")
    flag(opt, "momentum", "momentum", help="momentum of --optimizer momentum")
    flag(opt, "nesterov", action=argparse.BooleanOptionalAction, help="Nesterov momentum (with --optimizer momentum)")
    flag(opt, "weight_decay", "weight_decay", help="L2 weight decay")
    flag(opt, "init", "init", choices=INITS, help="weight init; normal = the course's N(0, 1e-4^2)")
    flag(opt, "lr_schedule", "lr_schedule", choices=SCHEDULES,
         help="cosine: decay to 0 over --max_steps; step: x0.1 at 50%% and 75%% of the steps; "
              "onecycle: PyTorch's OneCycleLR (up over 30%% of the steps, or --warmup_steps, then down)")
    flag(opt, "warmup_steps", "warmup_steps", help="linear learning-rate warm-up over this many steps")

    data = parser.add_argument_group("data")
    flag(data, "dataset", "dataset", choices=DATASET_NAMES,
         help="the data set (fastmlp.data.registry); npz: --data_dir names a file with x_train, y_train, x_test, y_test")
    flag(data, "preprocessing", "preprocessing", choices=PREPROCESSINGS,
         help="mean_image: subtract the mean training image (course); standardize: per-channel mean/std")
    flag(data, "augment", action=argparse.BooleanOptionalAction, help="random crops (pad 4) and horizontal flips")
    flag(data, "validation_size", "validation_size",
         help="training images held out (from the end) as a validation set")
    flag(data, "dtype", "dtype", choices=FloatDType.NAMES, help="floating-point precision")

    run = parser.add_argument_group("run")
    flag(run, "seed", "seed", help="seed of the weights and of the batch order")
    flag(run, "out_dir", help="output folder (default: runs/<timestamp>, or the checkpoint's folder with --resume)")
    flag(run, "resume", metavar="PATH",
         help="continue from a checkpoint.npz or a run folder; flags not given are taken from it")
    cli.add_overwrite_argument(run)
    flag(run, "quiet", action="store_true", help="no progress bar or evaluation lines")
    flag(run, "plot", action="store_true",
         help="also draw curves.png at the end (imports matplotlib: ~0.5-1 s; "
              "or later: python -m fastmlp.plot <out_dir>)")
    flag(run, "dry_run", action="store_true",
         help=f"{DRY_RUN_STEPS} steps and evaluations on {DRY_RUN_EVAL_EXAMPLES} examples, "
              "to check the set-up (outputs go to runs/dryrun-<timestamp>)")
    flag(run, "eval_batch_size", "eval_batch_size",
         help="batch size of the evaluations (memory only; results do not depend on it)")
    flag(run, "threads", "threads",
         help="threads of fastmlp's kernels (and of every other BLAS pool; default: one per core)")
    return parser


def train(args: argparse.Namespace | Mapping[str, Any], *, data: Mapping[str, Any] | None = None,
          on_eval: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    """Run the training ``args`` describe; :func:`fastmlp.training.train` (see there)."""
    return training.train(args, data=data, on_eval=on_eval)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m fastmlp.train``; returns the exit status.

    The statuses of :data:`fastmlp.cli.EXIT_STATUSES`: 0 on success, 1 when
    training diverged (message on stderr), 2 on bad flags, a missing or
    incompatible checkpoint, missing data or an ``--out_dir`` holding another
    run, 74 on an I/O error, 130/143/129 on Ctrl-C/SIGTERM/SIGHUP (the message
    says how to resume).
    """
    return cli.run_main(
        argv, build_parser=build_parser,
        train=lambda args: train(args),  # looked up at call time: tests replace it
        saved_flags=lambda path: load_checkpoint(path)["meta"].get("flags", {}),
        checkpoint_dir=lambda path: resolve_checkpoint_path(path).parent)


if __name__ == "__main__":
    # A whole process: what the imports built lives until exit, so the cyclic collector
    # need not walk it over and over during the run and once more at exit.
    gc.freeze()
    raise SystemExit(main())
