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
on_eval=None) -> dict``, the command line's run as a function over its flags (a
Namespace or a mapping by flag name, or an :class:`~fastmlp.run_config.MLPRunConfig`;
see :func:`fastmlp.training.train`: ``data`` holds pre-loaded splits, the ones to
evaluate among them, ``on_eval(step, metrics)`` may raise to stop the run). This
module is the command line only: its flags are generated from the run's settings,
:class:`fastmlp.run_config.MLPRunConfig`; the training lives in
:mod:`fastmlp.training` (the loop in :mod:`fastmlp.loop`), the checks in
:mod:`fastmlp.hyperparams`, what command lines share in :mod:`fastmlp.cli`.
"""
from __future__ import annotations

import argparse
import gc
from typing import Any, Callable, Mapping

from fastmlp import cli, training
from fastmlp.checkpoint import load_checkpoint, resolve_checkpoint_path
from fastmlp.run_config import MLPRunConfig

__all__ = ["build_parser", "main", "train"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m fastmlp.train`` (defaults shown in ``--help``).

    One flag per setting of :class:`~fastmlp.run_config.MLPRunConfig` (stored under the
    flag's name), and the command line's own ``--overwrite``.
    """
    parser = argparse.ArgumentParser(
        prog="python -m fastmlp.train",
        description="Train the fastmlp MLP on CIFAR-10 (course defaults; see the module docstring "
                    "for a recipe meant to reach >= 0.55 test accuracy).",
        formatter_class=cli.HelpFormatter,
    )
    groups = cli.add_config_arguments(parser, MLPRunConfig)
    cli.add_overwrite_argument(groups["run"])
    return parser


def train(args: MLPRunConfig | argparse.Namespace | Mapping[str, Any], *, data: Mapping[str, Any] | None = None,
          on_eval: Callable[[int, dict], None] | None = None,
          checkpoint: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run the training ``args`` describe; :func:`fastmlp.training.train` (see there).

    ``args``: a configuration, or flags as ``build_parser()`` stores them or by the
    command line's names (the latter win; those not given take their defaults;
    ``overwrite``, the command line's own, is ignored), checked
    with messages naming the flag (``--batch_size: expected an integer > 0, got -1``),
    as are the messages of a resumed checkpoint's settings.

    Raises
    ------
    ValueError
        For a name that is no flag of this command line, and as the training does.
    """
    if not isinstance(args, MLPRunConfig):
        given = dict(args) if isinstance(args, Mapping) else vars(args)
        known = {*MLPRunConfig.names(), *(MLPRunConfig.flag(name) for name in MLPRunConfig.names()), "overwrite"}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"unknown flag(s) {unknown}; see python -m fastmlp.train --help")
        args = cli.config_from_args(MLPRunConfig, given)
    return training.train(args, data=data, on_eval=on_eval, checkpoint=checkpoint,
                          label=lambda name: f"--{MLPRunConfig.flag(name)}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m fastmlp.train``; returns the exit status.

    The statuses of :data:`fastmlp.exits.EXIT_STATUSES`: 0 on success, 1 when
    training diverged (message on stderr), 2 on bad flags, a missing or
    incompatible checkpoint, missing data or an ``--out_dir`` holding another
    run, 74 on an I/O error, 130/143/129 on Ctrl-C/SIGTERM/SIGHUP (the message
    says how to resume). With ``--resume`` the checkpoint is read once: its flags
    fill in the ones not given, and the training continues from it.
    """
    return cli.run_main(
        argv, build_parser=build_parser,
        # looked up at call time: tests replace it
        train=lambda args, checkpoint: train(args, checkpoint=checkpoint),
        read_checkpoint=load_checkpoint,
        saved_flags=lambda checkpoint: MLPRunConfig.settings_of(checkpoint["meta"].get("flags", {})),
        checkpoint_dir=lambda path: resolve_checkpoint_path(path).parent)


if __name__ == "__main__":
    # A whole process: what the imports built lives until exit, so the cyclic collector
    # need not walk it over and over during the run and once more at exit.
    gc.freeze()
    raise SystemExit(main())
