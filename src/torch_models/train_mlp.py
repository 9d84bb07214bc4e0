"""Train the PyTorch MLP (:class:`torch_models.mlp.MLP`) on CIFAR-10: the course's PyTorch MLP script.

Defaults are the course's, the same as ``python -m fastmlp.train``'s (so the two reach about
the same test accuracy, ~0.45): one hidden layer of 100 units, weights from N(0, 1e-4^2)
and zero biases (``--init normal``), plain SGD (no momentum) with ``--learning_rate 2e-3``,
``--max_steps 1500 --batch_size 200 --eval_freq 100``; ``--dnn_hidden_units ""`` is
multinomial logistic regression. Images are flattened to 3072 float32 values after the
course's preprocessing (the training split's per-pixel mean image subtracted, 0..255
scale), read with :func:`fastmlp.data.get_cifar10`.

The optimisation and data flags are fastmlp.train's, built on its code: ``--optimizer
{sgd,momentum,adam}`` (``torch.optim.SGD``/``Adam``; ``--momentum``, ``--nesterov``),
``--weight_decay`` on the Linear weights only (fastmlp's convention: no decay of biases
or BatchNorm parameters), ``--lr_schedule``/``--warmup_steps``
(:class:`fastmlp.schedules.LearningRateSchedule`, which sets every parameter group's
learning rate before each update), ``--preprocessing`` and ``--augment`` (random crop and
flip done by :class:`fastmlp.data.DataSet`). ``--init torch`` keeps PyTorch's default
initialisation; ``kaiming``/``xavier`` are He/Glorot normal with zero biases.

Outputs in ``--out_dir`` (default ``runs/<timestamp>``), the same as ``fastmlp.train``:
``metrics.json``, ``curves.csv``, ``curves.png`` and ``checkpoint.pt`` (model, optimizer,
step, data-order and RNG states; rewritten atomically at every evaluation). The whole
test set (and the validation set, with ``--validation_size``) is evaluated every
``--eval_freq`` steps and at the end; ``curves.csv``'s ``train_loss``/``train_accuracy``
are those of the evaluation step's training batch.

Examples
--------
One process (CPU or one GPU)::

    python -m torch_models.train_mlp --dnn_hidden_units 512,256 --optimizer adam \\
        --learning_rate 1e-3 --batchnorm torch --dropout 0.2 --out_dir runs/mlp
    python -m torch_models.train_mlp --resume runs/mlp --max_steps 3000   # continue it

The fastmlp recipe (He init, Nesterov momentum, warm-up + cosine, standardised and
augmented images)::

    python -m torch_models.train_mlp --dnn_hidden_units 1024,512 --init kaiming \\
        --optimizer momentum --momentum 0.9 --nesterov --learning_rate 0.05 \\
        --weight_decay 5e-4 --lr_schedule cosine --warmup_steps 200 \\
        --preprocessing standardize --augment --batch_size 256 --max_steps 5000 --eval_freq 500

One machine with N GPUs (or N CPU processes with gloo; ``--batch_size`` stays global and
must be a multiple of N, each rank trains on its slice of every batch)::

    torchrun --standalone --nproc_per_node=N -m torch_models.train_mlp --batch_size 200 ...

Several machines (run on each machine, with its own ``--node_rank``)::

    torchrun --nnodes=M --nproc_per_node=N --node_rank=K --rdzv_backend=c10d \\
        --rdzv_id=mlp1 --rdzv_endpoint=HOST0:29500 -m torch_models.train_mlp ...

Only rank 0 writes outputs; ``--resume`` needs the checkpoint readable on rank 0's machine.
See :mod:`torch_models.trainer` for how batches and evaluation are shared between ranks.
On ``--resume`` the learning-rate schedule keeps the horizon (``--max_steps``) the run was
started with, and this invocation's ``--learning_rate``, ``--weight_decay``, ``--momentum``
and ``--nesterov`` replace the hyper-parameters stored with the optimizer state.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
from typing import Any, Callable

import torch
from torch import nn

from fastmlp.data import PREPROCESSINGS
from fastmlp.modules import INITS
from fastmlp.optim import OPTIMIZERS
from fastmlp.schedules import SCHEDULES, LearningRateSchedule
# The constraint table's checks, so both trainers accept and reject the same values.
from fastmlp.hyperparams import checker, flag_type, parse_hidden_units
from torch_models import trainer
from torch_models.optimizers import make_optimizer, parameter_groups

__all__ = [
    "COURSE_INIT_STD",
    "INIT_CHOICES",
    "ScheduledHyperParameters",
    "build_parser",
    "initialize_parameters",
    "main",
    "make_optimizer",
    "parameter_groups",
    "parse_hidden_units",
    "train",
]

N_INPUTS = 3 * 32 * 32
N_CLASSES = 10
#: Standard deviation of the course's weight initialisation (``--init normal``, fastmlp's default).
COURSE_INIT_STD = 1e-4
#: ``--init``: fastmlp's initialisations plus ``torch`` (leave PyTorch's default one).
INIT_CHOICES = (*INITS, "torch")
# --resume: flags fixing the saved tensors' shapes (and the optimizer's state layout), and
# flags whose change alters the result. The schedule is a pure function of the step, so
# --lr_schedule can change on resume (the result then differs from an uninterrupted run).
ARCHITECTURE_FLAGS = ("dnn_hidden_units", "batchnorm", "optimizer")
TRAJECTORY_FLAGS = ("learning_rate", "batch_size", "momentum", "nesterov", "weight_decay", "lr_schedule",
                    "warmup_steps", "init", "dropout", "preprocessing", "augment", "seed", "validation_size")


# --------------------------------------------------------------------------- model and optimizer
@torch.no_grad()
def initialize_parameters(model: nn.Module, init: str) -> None:
    """Re-initialise every ``nn.Linear`` of ``model`` in place as fastmlp does (``torch``: leave it).

    ``normal``: weights from N(0, ``COURSE_INIT_STD``^2) (the course's); ``kaiming``: He normal,
    N(0, 2 / fan_in); ``xavier``: Glorot normal, N(0, 2 / (fan_in + fan_out)). Biases are set
    to zero. Other layers (BatchNorm) keep their own initialisation. Draws from torch's
    global generator.

    Raises
    ------
    ValueError
        If ``init`` is not one of :data:`INIT_CHOICES`.
    """
    if init not in INIT_CHOICES:
        raise ValueError(f"--init must be one of {INIT_CHOICES}, got {init!r}")
    if init == "torch":
        return
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        if init == "normal":
            nn.init.normal_(module.weight, mean=0.0, std=COURSE_INIT_STD)
        elif init == "kaiming":
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        else:
            nn.init.xavier_normal_(module.weight)
        nn.init.zeros_(module.bias)


class ScheduledHyperParameters:
    """Sets an optimizer's hyper-parameters from the run's flags; ``trainer.fit``'s scheduler.

    Before every update each parameter group's learning rate is ``schedule(step)``
    (:class:`fastmlp.schedules.LearningRateSchedule`, steps counted from 1), a pure function
    of the step: the state is just the number of updates made, so ``--resume`` is exact.
    ``load_state_dict`` (which ``fit`` calls right after the optimizer's) also puts back the
    group settings the optimizer was built with (weight decay, momentum, Nesterov), which
    ``Optimizer.load_state_dict`` had replaced with the checkpoint's: this run's flags win.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Its ``param_groups`` are modified in place (``"lr"`` now and at every :meth:`step`).
    schedule : fastmlp.schedules.LearningRateSchedule
        ``total_steps`` is the horizon; a resumed run keeps the checkpoint's horizon.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: LearningRateSchedule):
        self.optimizer = optimizer
        self.schedule = schedule
        self.updates_done = 0
        self._group_settings = [{k: v for k, v in group.items() if k != "params"}
                                for group in optimizer.param_groups]
        self._apply_lr()

    def _apply_lr(self) -> None:
        lr = self.schedule(self.updates_done + 1)  # the rate of the next update
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        """Count the update just made; set the rate of the next one."""
        self.updates_done += 1
        self._apply_lr()

    def state_dict(self) -> dict[str, Any]:
        """``updates_done``, the schedule's ``kind``/``base_lr``/``warmup_steps``/``total_steps``."""
        return {"updates_done": self.updates_done, **dataclasses.asdict(self.schedule)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (the update count and the horizon), with this run's group settings."""
        self.updates_done = int(state["updates_done"])
        self.schedule = dataclasses.replace(self.schedule, total_steps=int(state["total_steps"]))
        for group, settings in zip(self.optimizer.param_groups, self._group_settings):
            group.update(settings)
        self._apply_lr()


# --------------------------------------------------------------------------- flags
def build_parser() -> argparse.ArgumentParser:
    """The command-line flags, with the course's defaults (shown by ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m torch_models.train_mlp",
        description="Train the PyTorch MLP on CIFAR-10 (course defaults, the same as python -m fastmlp.train; "
                    "see the module docstring for a recipe reaching >= 0.55 test accuracy).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dnn_hidden_units", type=flag_type("hidden_units"),
                        default="100", help="comma-separated hidden layer sizes; empty = logistic regression")
    trainer.add_common_arguments(parser, learning_rate=2e-3, max_steps=1500, batch_size=200, eval_freq=100)
    opt = parser.add_argument_group("optimisation (as in fastmlp.train)")
    opt.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd",
                     help="sgd: plain SGD as in the course; momentum: SGD with --momentum; adam")
    opt.add_argument("--momentum", type=flag_type("momentum"), default=0.9,
                     help="momentum of --optimizer momentum")
    opt.add_argument("--nesterov", action="store_true", help="Nesterov momentum (with --optimizer momentum)")
    opt.add_argument("--weight_decay", type=float, default=0.0,
                     help="L2 weight decay of the Linear weights only (not biases or BatchNorm parameters), "
                          "as fastmlp does")
    opt.add_argument("--init", choices=INIT_CHOICES, default="normal",
                     help="Linear weights: normal = the course's N(0, 1e-4^2), kaiming = He normal, "
                          "xavier = Glorot normal (zero biases for these); torch = PyTorch's default init")
    opt.add_argument("--lr_schedule", choices=SCHEDULES, default="constant",
                     help="cosine: decay to 0 over --max_steps; step: x0.1 at 50%% and 75%% of the steps "
                          "(fastmlp.schedules)")
    opt.add_argument("--warmup_steps", type=flag_type("warmup_steps"), default=0,
                     help="linear learning-rate warm-up over this many steps")
    model = parser.add_argument_group("model")
    model.add_argument("--dropout", type=float, default=0.0, help="dropout after each hidden ReLU")
    model.add_argument("--batchnorm", choices=("none", "torch", "custom"), default="none",
                       help="BatchNorm before each hidden Linear: torch.nn.BatchNorm1d or the custom one")
    data = parser.add_argument_group("data")
    data.add_argument("--preprocessing", choices=PREPROCESSINGS, default="mean_image",
                      help="mean_image: subtract the mean training image (course); standardize: per-channel "
                           "mean/std")
    data.add_argument("--augment", action="store_true",
                      help="random crop (zero padding 4) and horizontal flip of training images, done by "
                           "fastmlp.data.DataSet")
    return parser


def _checked_args(args: argparse.Namespace) -> argparse.Namespace:
    """A checked copy of ``args``; flags it lacks (a Namespace built by hand) get their defaults."""
    defaults = vars(build_parser().parse_args([]))
    args = argparse.Namespace(**{**defaults, **vars(copy.copy(args))})  # the caller's Namespace is untouched
    trainer.check_common_args(args)
    checks: dict[str, Callable[[Any], Any]] = {"dnn_hidden_units": parse_hidden_units, "momentum": checker("momentum"),
                                               "warmup_steps": checker("warmup_steps")}
    for name, check in checks.items():
        try:
            setattr(args, name, check(getattr(args, name)))
        except (TypeError, ValueError) as err:
            raise ValueError(f"--{name}: {err}") from None
    choices = {"optimizer": OPTIMIZERS, "init": INIT_CHOICES, "lr_schedule": SCHEDULES,
               "preprocessing": PREPROCESSINGS, "batchnorm": ("none", "torch", "custom")}
    for name, allowed in choices.items():
        if getattr(args, name) not in allowed:
            raise ValueError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(args, name)!r}")
    if not (isinstance(args.weight_decay, (int, float)) and args.weight_decay >= 0):
        raise ValueError(f"--weight_decay must be a float >= 0, got {args.weight_decay!r}")
    if not (isinstance(args.dropout, (int, float)) and 0 <= args.dropout < 1):
        raise ValueError(f"--dropout must be a float in [0, 1), got {args.dropout!r}")
    args.nesterov, args.augment = bool(args.nesterov), bool(args.augment)
    if args.nesterov and (args.optimizer != "momentum" or args.momentum == 0):
        raise ValueError(f"--nesterov needs --optimizer momentum and --momentum > 0, got --optimizer "
                         f"{args.optimizer} --momentum {args.momentum}")
    return args


# --------------------------------------------------------------------------- training
def train(args: argparse.Namespace, *, data=None, on_eval=None) -> dict:
    """Run one training as described by ``args`` (from :func:`build_parser`); return its metrics.

    Parameters
    ----------
    args : argparse.Namespace
        E.g. ``build_parser().parse_args([...])``; not modified (flags it lacks take their
        defaults). ``sys.argv`` is not read.
    data : dict, optional
        A pre-loaded ``fastmlp.data.get_cifar10(...)`` result (any ``flatten``/``one_hot``);
        when given, ``--data_dir``, ``--validation_size`` and ``--preprocessing`` are the
        caller's (``--augment`` still applies: batches are drawn from a private DataSet
        over the same arrays). Not modified.
    on_eval : callable, optional
        ``on_eval(step, metrics)`` after each evaluation (``train_loss``, ``train_accuracy``,
        ``learning_rate``, ``test_loss``, ``test_accuracy`` and ``validation_*`` when there
        is a validation set); an exception it raises (e.g. ``optuna.TrialPruned``)
        propagates out of ``train``.

    Returns
    -------
    dict
        What ``metrics.json`` holds: ``test_accuracy``, ``test_loss``, ``best_test_accuracy``,
        ``validation_*`` when present, ``steps``, ``wall_seconds``, ``seconds_per_step``, ``flags``...

    Raises
    ------
    fastmlp.runlog.DivergenceError
        On a NaN/inf loss (the last checkpoint is kept).
    ValueError, FileNotFoundError
        For a flag out of range or an unusable ``--resume`` path.
    """
    args = _checked_args(args)
    batchnorm = None if args.batchnorm == "none" else args.batchnorm

    def build_model() -> nn.Module:
        from torch_models.mlp import MLP

        model = MLP(N_INPUTS, args.dnn_hidden_units, N_CLASSES, dropout=args.dropout, batchnorm=batchnorm)
        initialize_parameters(model, args.init)
        return model

    def build_optimizer(model: nn.Module) -> torch.optim.Optimizer:
        return make_optimizer(args.optimizer, parameter_groups(model, args.weight_decay), args.learning_rate,
                              momentum=args.momentum, nesterov=args.nesterov)

    def build_scheduler(optimizer: torch.optim.Optimizer) -> ScheduledHyperParameters:
        # The horizon is the full --max_steps even in a --dry_run: it shows the real run's first steps.
        schedule = LearningRateSchedule(args.learning_rate, args.max_steps, args.lr_schedule,
                                        warmup_steps=args.warmup_steps)
        return ScheduledHyperParameters(optimizer, schedule)

    with trainer.distributed_context(args.device, args.num_threads, deterministic=args.deterministic) as ctx:
        if data is None:
            from fastmlp.data import get_cifar10

            data = get_cifar10(args.data_dir, one_hot=False, validation_size=args.validation_size,
                               preprocessing=args.preprocessing, flatten=True, augment=args.augment,
                               seed=args.seed)
        return trainer.fit(args, trainer_name="train_mlp", ctx=ctx, data=data, input_shape=(N_INPUTS,),
                           build_model=build_model, build_optimizer=build_optimizer,
                           build_scheduler=build_scheduler, dataset_augment=args.augment,
                           min_local_batch=1 if batchnorm is None else 2, on_eval=on_eval,
                           architecture_flags=ARCHITECTURE_FLAGS, trajectory_flags=TRAJECTORY_FLAGS,
                           plan_notes=(f"hidden units {args.dnn_hidden_units or '[] (logistic regression)'}, "
                                       f"init {args.init}, dropout {args.dropout}, batchnorm {args.batchnorm}",
                                       f"{args.optimizer} (momentum {args.momentum}, nesterov {args.nesterov}), "
                                       f"weight decay {args.weight_decay} on weights only, lr schedule "
                                       f"{args.lr_schedule} with {args.warmup_steps} warm-up steps",
                                       f"preprocessing {args.preprocessing}, augment {args.augment}"))


def main(argv: list[str] | None = None) -> int:
    """``python -m torch_models.train_mlp``: parse ``argv`` (default ``sys.argv[1:]``), train, return the exit code."""
    return trainer.run_main(train, build_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
