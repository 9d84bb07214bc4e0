"""What the torch trainers' command lines share: their common flags, their checks, ``main``.

Why a module of its own: ``torch_models.train_mlp`` and ``torch_models.train_convnet``
take the same run, data and optimisation flags, checked against the one constraint table
(:mod:`fastmlp.hyperparams`), so a bad value reads the same as in ``fastmlp.train``;
and both mains are :func:`fastmlp.cli.run_main` over the torch checkpoint. This is
command-line code: the library modules (:mod:`torch_models.trainer` and below) do not
import it.
"""
from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from fastmlp import cli
from fastmlp.cli import flag_type
from fastmlp.data import DATASET_NAMES, PREPROCESSINGS
from fastmlp.hyperparams import DEVICES, Boolean, NoneOr, check, check_all, check_sizes
from fastmlp.loop import DRY_RUN_EVAL_EXAMPLES, DRY_RUN_EVAL_FREQ, DRY_RUN_STEPS
from fastmlp.optim import OPTIMIZERS, check_optimizer
from fastmlp.schedules import SCHEDULES
from torch_models.checkpoint import load_checkpoint, resolve_checkpoint_path

__all__ = ["add_optimization_arguments", "add_run_arguments", "checked_args", "main"]

#: A flag's entry in the constraint table, where the names differ.
TABLE_NAMES = {"dnn_hidden_units": "hidden_units", "init": "torch_init"}
# Switches that are no hyper-parameters, checked as bools (channels_last: None is "auto").
_SWITCHES = {"amp": Boolean(), "compile": Boolean(), "deterministic": Boolean(), "quiet": Boolean(),
             "overwrite": Boolean(),
             "dry_run": Boolean(), "plot": Boolean(), "channels_last": NoneOr(Boolean())}
_PATHS = ("data_dir", "out_dir", "resume")


def add_run_arguments(parser: argparse.ArgumentParser, *, learning_rate: float, max_steps: int,
                      batch_size: int, eval_freq: int, eval_batch_size: int = 1000) -> None:
    """Add the run, data and device flags both torch trainers share, with the trainer's course defaults."""
    parser.add_argument("--learning_rate", type=flag_type("learning_rate"), default=learning_rate,
                        help="(peak) learning rate")
    parser.add_argument("--max_steps", type=flag_type("max_steps"), default=max_steps,
                        help="number of optimisation steps")
    parser.add_argument("--batch_size", type=flag_type("batch_size"), default=batch_size,
                        help="global mini-batch size (split across ranks under torchrun)")
    parser.add_argument("--eval_freq", type=flag_type("eval_freq"), default=eval_freq,
                        help="evaluate on the whole test (and validation) set and checkpoint every N steps")
    parser.add_argument("--eval_batch_size", type=flag_type("eval_batch_size"), default=eval_batch_size,
                        help="batch size for evaluation (larger: fewer passes, more memory)")
    parser.add_argument("--dataset", type=flag_type("dataset"), choices=DATASET_NAMES, default="cifar10",
                        help="the data set (fastmlp.data.registry); npz: --data_dir names the file")
    parser.add_argument("--data_dir", default=None,
                        help="folder holding the data set, or the .npz file (default: $FASTMLP_DATA, else "
                             "~/.cache/fastmlp)")
    parser.add_argument("--validation_size", type=flag_type("validation_size"), default=0,
                        help="training images held out (from the end of the training set) for validation")
    parser.add_argument("--preprocessing", type=flag_type("preprocessing"), choices=PREPROCESSINGS,
                        default="mean_image", help="mean_image: subtract the mean training image (the course's, "
                                                   "0..255 scale); standardize: per-channel mean/std (0..1 scale)")
    parser.add_argument("--seed", type=flag_type("seed"), default=42,
                        help="seed of the model init, batch order and dropout/augmentation")
    parser.add_argument("--out_dir", default=None,
                        help="output folder (default: runs/<timestamp>, or the --resume run's folder)")
    parser.add_argument("--resume", default=None, metavar="PATH",
                        help="continue from a checkpoint.pt file or a run folder holding one; flags not given "
                             "are taken from it")
    cli.add_overwrite_argument(parser)
    parser.add_argument("--device", type=flag_type("device"), choices=DEVICES, default="auto",
                        help="auto = cuda when available, else cpu")
    parser.add_argument("--threads", type=flag_type("threads"), default=None,
                        help="CPU threads for torch (default: torch's own choice)")
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=False,
                        help="CUDA: deterministic cuDNN/cuBLAS algorithms (torch raises on an op that has none), so "
                             "--resume repeats an uninterrupted run bit for bit on the same GPU; costs some speed. "
                             "Without it cudnn.benchmark picks the fastest convolutions per process. The CPU is "
                             "deterministic either way")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.add_argument("--plot", action="store_true",
                        help="also draw curves.png at the end (or later: python -m fastmlp.plot <out_dir>)")
    parser.add_argument("--dry_run", action="store_true",
                        help=f"print the plan, then train {DRY_RUN_STEPS} steps, evaluating every "
                             f"{DRY_RUN_EVAL_FREQ} on {DRY_RUN_EVAL_EXAMPLES} examples per split; the learning-rate "
                             "schedule keeps the full --max_steps horizon (outputs default to runs/dryrun-<timestamp>)")


def add_optimization_arguments(group, *, optimizer: str, decayed: str, momentum_note: str = "") -> None:
    """Add ``--optimizer/--momentum/--nesterov/--weight_decay/--lr_schedule/--warmup_steps``.

    Parameters
    ----------
    group : argparse.ArgumentParser or argument group
    optimizer : str
        The trainer's default ``--optimizer``.
    decayed : str
        What ``--weight_decay`` decays, for the help (e.g. "Linear weights").
    momentum_note : str
        Appended to ``--momentum``'s help.
    """
    group.add_argument("--optimizer", type=flag_type("optimizer"), choices=OPTIMIZERS, default=optimizer,
                       help="sgd: plain SGD (the course's MLP); momentum: SGD with --momentum; adam")
    group.add_argument("--momentum", type=flag_type("momentum"), default=0.9,
                       help="momentum of --optimizer momentum" + momentum_note)
    group.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=False, help="Nesterov momentum (with --optimizer momentum)")
    group.add_argument("--weight_decay", type=flag_type("weight_decay"), default=0.0,
                       help=f"L2 weight decay of the {decayed} only (not biases or BatchNorm parameters), as "
                            "fastmlp does")
    group.add_argument("--lr_schedule", type=flag_type("lr_schedule"), choices=SCHEDULES, default="constant",
                       help="learning rate of each step (fastmlp.schedules, peak --learning_rate): cosine: decay to "
                            "0 over --max_steps; step: x0.1 at 50%% and 75%% of the steps; onecycle: PyTorch's "
                            "OneCycleLR (up over 30%% of the steps, or --warmup_steps, then down)")
    group.add_argument("--warmup_steps", type=flag_type("warmup_steps"), default=0,
                       help="linear learning-rate warm-up over this many steps (onecycle: the length of its rise)")


def checked_args(args: argparse.Namespace | Mapping[str, Any],
                 build_parser: Callable[[], argparse.ArgumentParser]) -> argparse.Namespace:
    """A checked copy of ``args``; flags it lacks (a Namespace built by hand) get the parser's defaults.

    Every flag with an entry in the constraint table is checked against it (the
    message names the flag: ``--batch_size: expected an integer > 0, got 0``).

    Raises
    ------
    TypeError, ValueError
        Naming the flag.
    """
    given = dict(args) if isinstance(args, Mapping) else dict(vars(copy.copy(args)))
    values = check_all({**vars(build_parser().parse_args([])), **given}, TABLE_NAMES, label=lambda flag: f"--{flag}")
    check_sizes(values, TABLE_NAMES, label=lambda flag: f"--{flag}")
    for flag, value in values.items():
        if flag in _SWITCHES:
            values[flag] = check(_SWITCHES[flag], value, label=f"--{flag}")
        elif flag in _PATHS and value is not None:
            values[flag] = str(value)
    check_optimizer(values["optimizer"], values["momentum"], values["nesterov"], label=lambda flag: f"--{flag}")
    return argparse.Namespace(**values)


def main(argv: list[str] | None, *, build_parser: Callable[[], argparse.ArgumentParser],
         train: Callable[[argparse.Namespace], Mapping[str, Any]]) -> int:
    """A torch trainer's ``main``: :func:`fastmlp.cli.run_main` over ``checkpoint.pt``.

    Exit status (:data:`fastmlp.exits.EXIT_STATUSES`) 0 done, 1 diverged, 2 bad input (a
    flag, a checkpoint that is missing, foreign or damaged, missing data, an --out_dir
    holding another run), 74 I/O error, 130/143/129 Ctrl-C/SIGTERM/SIGHUP. Under torchrun every rank reads the
    checkpoint's flags (so on several machines the path must be readable on each) and
    only rank 0 prints.
    """
    return cli.run_main(argv, build_parser=build_parser, train=train,
                        saved_flags=lambda path: load_checkpoint(path)["flags"],
                        checkpoint_dir=lambda path: Path(resolve_checkpoint_path(path)).parent,
                        is_main=int(os.environ.get("RANK", "0")) == 0)
