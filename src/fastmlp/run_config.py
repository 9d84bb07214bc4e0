"""The settings of a fastmlp MLP run: :class:`MLPRunConfig`, one typed, checked value.

What :func:`fastmlp.training.train` takes, and what ``python -m fastmlp.train``'s
flags are generated from (:func:`fastmlp.cli.add_config_arguments`). The defaults
are the course's: one hidden layer of 100 units, weights from N(0, 1e-4^2), plain
SGD at 2e-3, batches of 200, 1500 steps, an evaluation every 100. Evaluations go
2,500 images at a time, faster than 1,000 for a little more memory
(docs/notes/benchmarks-diary-2026-12-02.md).

One name per setting: the library's (``hidden_units``); only the command line calls
it otherwise (``--dnn_hidden_units``, the course's flag), and checkpoints record the
settings by their flags (:meth:`~fastmlp.config.RunConfig.as_flags`), so runs of
every version resume alike. The torch trainers' configurations use the same names
for the same settings.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from fastmlp.config import RunConfig, setting
from fastmlp.hyperparams import Boolean, check_sizes
from fastmlp.loop import DRY_RUN_EVAL_EXAMPLES, DRY_RUN_STEPS
from fastmlp.optim import check_optimizer

__all__ = ["MLPRunConfig"]

_SWITCH = Boolean()
_COURSE, _OPTIMISATION, _DATA, _RUN = "course flags", "optimisation", "data", "run"


@dataclasses.dataclass(frozen=True)
class MLPRunConfig(RunConfig):
    """A run of the fastmlp MLP: the network, its optimisation, the data and the run's outputs.

    Every setting is checked when the configuration is made (the constraint table,
    :data:`fastmlp.hyperparams.CONSTRAINTS`), then jointly (:meth:`check_together`).
    Frozen (:meth:`~fastmlp.config.RunConfig.replace` makes a changed copy) and hashable.

    Raises
    ------
    TypeError, ValueError
        For a bad value: ``"batch_size: expected an integer > 0, got -1"``.

    Examples
    --------
    >>> MLPRunConfig(hidden_units="512,256", optimizer="momentum", nesterov=True).hidden_units
    (512, 256)
    """

    # the course's flags
    hidden_units: tuple[int, ...] = setting(
        (100,), check="hidden_units", flag="dnn_hidden_units", group=_COURSE,
        help="comma-separated hidden layer sizes; '' for logistic regression")
    learning_rate: float = setting(2e-3, check="learning_rate", group=_COURSE, help="peak learning rate")
    max_steps: int = setting(1500, check="max_steps", group=_COURSE, help="number of parameter updates")
    batch_size: int = setting(200, check="batch_size", group=_COURSE, help="training batch size")
    eval_freq: int = setting(100, check="eval_freq", group=_COURSE,
                             help="evaluate (and checkpoint) every this many steps, and after the last one")
    data_dir: str | None = setting(
        None, path=True, group=_COURSE,
        help="folder holding the --dataset's files (for cifar10: cifar-10-python.tar.gz or cifar-10-batches-py/; "
             "for npz: the .npz file) (default: $FASTMLP_DATA, else ~/.cache/fastmlp)")
    # the optimisation
    optimizer: str = setting("sgd", check="optimizer", group=_OPTIMISATION,
                             help="sgd: plain SGD (the course); momentum: SGD with --momentum; adam")
    momentum: float = setting(0.9, check="momentum", group=_OPTIMISATION, help="momentum of --optimizer momentum")
    nesterov: bool = setting(False, check="nesterov", group=_OPTIMISATION,
                             help="Nesterov momentum (with --optimizer momentum)")
    weight_decay: float = setting(0.0, check="weight_decay", group=_OPTIMISATION, help="L2 weight decay")
    init: str = setting("normal", check="init", group=_OPTIMISATION,
                        help="weight init; normal = the course's N(0, 1e-4^2)")
    lr_schedule: str = setting(
        "constant", check="lr_schedule", group=_OPTIMISATION,
        help="cosine: decay to 0 over --max_steps; step: x0.1 at 50%% and 75%% of the steps; "
             "onecycle: PyTorch's OneCycleLR (up over 30%% of the steps, or --warmup_steps, then down)")
    warmup_steps: int = setting(0, check="warmup_steps", group=_OPTIMISATION,
                                help="linear learning-rate warm-up over this many steps")
    # the data
    dataset: str = setting(
        "cifar10", check="dataset", group=_DATA,
        help="the data set (fastmlp.data.registry); npz: --data_dir names a file with x_train, y_train, x_test, y_test")
    preprocessing: str = setting(
        "mean_image", check="preprocessing", group=_DATA,
        help="mean_image: subtract the mean training image (course); standardize: per-channel mean/std")
    augment: bool = setting(False, check="augment", group=_DATA, help="random crops (pad 4) and horizontal flips")
    validation_size: int = setting(0, check="validation_size", group=_DATA,
                                   help="training images held out (from the end) as a validation set")
    dtype: str = setting("float32", check="dtype", group=_DATA, help="floating-point precision")
    # the run
    seed: int = setting(42, check="seed", help="seed of the weights and of the batch order")
    out_dir: str | None = setting(
        None, path=True, help="output folder (default: runs/<timestamp>, or the checkpoint's folder with --resume)")
    resume: str | None = setting(
        None, path=True, metavar="PATH",
        help="continue from a checkpoint.npz or a run folder; flags not given are taken from it")
    quiet: bool = setting(False, check=_SWITCH, help="no progress bar or evaluation lines")
    plot: bool = setting(False, check=_SWITCH,
                         help="also draw curves.png at the end (imports matplotlib: ~0.5-1 s; "
                              "or later: python -m fastmlp.plot <out_dir>)")
    dry_run: bool = setting(False, check=_SWITCH,
                            help=f"{DRY_RUN_STEPS} steps and evaluations on {DRY_RUN_EVAL_EXAMPLES} examples, "
                                 "to check the set-up (outputs go to runs/dryrun-<timestamp>)")
    eval_batch_size: int = setting(2500, check="eval_batch_size",
                                   help="batch size of the evaluations (memory only; results do not depend on it)")
    threads: int | None = setting(
        None, check="threads",
        help="threads of fastmlp's kernels (and of every other BLAS pool; default: one per core)")

    def check_together(self, values: dict[str, Any], label: Callable[[str], str]) -> None:
        """Nesterov momentum needs momentum; the network and a batch must fit in this machine's memory."""
        check_optimizer(values["optimizer"], values["momentum"], values["nesterov"], label=label)
        check_sizes(values, label=label)
