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
learning rate before each update; :mod:`torch_models.optimizers`), ``--preprocessing``
and ``--augment`` (random crop and
flip done by :class:`fastmlp.data.DataSet`). ``--init torch`` keeps PyTorch's default
initialisation; ``kaiming``/``xavier`` are He/Glorot normal with zero biases.

Outputs in ``--out_dir`` (default ``runs/<timestamp>``), the same as ``fastmlp.train``:
``metrics.json``, ``curves.csv``, ``curves.png``, ``checkpoint.pt`` (model, optimizer,
step, data-order and RNG states; rewritten atomically at every evaluation) and, at the
end, ``model.safetensors`` (the network as a fastmlp model file: ``fastmlp.load``). The whole
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
``--threads`` sets torch's CPU threads.
On ``--resume`` the learning-rate schedule keeps the horizon (``--max_steps``) the run was
started with, and this invocation's ``--learning_rate``, ``--weight_decay``, ``--momentum``
and ``--nesterov`` replace the hyper-parameters stored with the optimizer state.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from fastmlp.cli import HelpFormatter, flag_type
from fastmlp.data import example_shape
from fastmlp.hyperparams import BATCHNORMS, TORCH_INITS, parse_hidden_units
from torch_models import cli
from torch_models.distributed import distributed_context
from torch_models.hooks import TrainerSpec
from torch_models.optimizers import make_optimizer, parameter_groups
from torch_models.trainer import fit

__all__ = [
    "COURSE_INIT_STD",
    "INIT_CHOICES",
    "build_parser",
    "initialize_parameters",
    "main",
    "make_optimizer",
    "parameter_groups",
    "parse_hidden_units",
    "train",
]

#: Standard deviation of the course's weight initialisation (``--init normal``, fastmlp's default).
COURSE_INIT_STD = 1e-4
#: ``--init``: fastmlp's initialisations plus ``torch`` (leave PyTorch's default one).
INIT_CHOICES = TORCH_INITS
# --resume: flags fixing the saved tensors' shapes (and the optimizer's state layout), and
# flags whose change alters the result. The schedule is a pure function of the step, so
# --lr_schedule can change on resume (the result then differs from an uninterrupted run).
ARCHITECTURE_FLAGS = ("dnn_hidden_units", "batchnorm", "optimizer", "dataset")
TRAJECTORY_FLAGS = ("learning_rate", "batch_size", "momentum", "nesterov", "weight_decay", "lr_schedule",
                    "warmup_steps", "init", "dropout", "preprocessing", "augment", "seed", "validation_size")


# --------------------------------------------------------------------------- model
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


# --------------------------------------------------------------------------- flags
def build_parser() -> argparse.ArgumentParser:
    """The command-line flags, with the course's defaults (shown by ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m torch_models.train_mlp",
        description="Train the PyTorch MLP on CIFAR-10 (course defaults, the same as python -m fastmlp.train; "
                    "see the module docstring for a recipe reaching >= 0.55 test accuracy).",
        formatter_class=HelpFormatter)
    parser.add_argument("--dnn_hidden_units", type=flag_type("hidden_units"),
                        default="100", help="comma-separated hidden layer sizes; empty = logistic regression")
    cli.add_run_arguments(parser, learning_rate=2e-3, max_steps=1500, batch_size=200, eval_freq=100,
                          eval_batch_size=2500)  # fastmlp.train's defaults
    opt = parser.add_argument_group("optimisation (as in fastmlp.train)")
    cli.add_optimization_arguments(opt, optimizer="sgd", decayed="Linear weights")
    opt.add_argument("--init", type=flag_type("torch_init"), choices=INIT_CHOICES, default="normal",
                     help="Linear weights: normal = the course's N(0, 1e-4^2), kaiming = He normal, "
                          "xavier = Glorot normal (zero biases for these); torch = PyTorch's default init")
    model = parser.add_argument_group("model")
    model.add_argument("--dropout", type=flag_type("dropout"), default=0.0, help="dropout after each hidden ReLU")
    model.add_argument("--batchnorm", type=flag_type("batchnorm"), choices=BATCHNORMS, default="none",
                       help="BatchNorm before each hidden Linear: torch.nn.BatchNorm1d or the custom one")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=False,
                        help="random crop (zero padding 4) and horizontal flip of training images, done by "
                             "fastmlp.data.DataSet")
    return parser


# --------------------------------------------------------------------------- training
def train(args: argparse.Namespace | Mapping[str, Any], *, data=None, on_eval=None) -> dict:
    """Run one training as described by ``args`` (from :func:`build_parser`); return its metrics.

    Parameters
    ----------
    args : argparse.Namespace or mapping
        E.g. ``build_parser().parse_args([...])``; not modified (flags it lacks take their
        defaults; every value is checked against :mod:`fastmlp.hyperparams`). ``sys.argv``
        is not read.
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
        On a NaN/inf training or evaluation loss, or NaN/inf weights after an update (the last
        good checkpoint is kept).
    TypeError, ValueError, FileNotFoundError
        For a flag out of range (naming it) or an unusable ``--resume`` path.
    """
    args = cli.checked_args(args, build_parser)
    batchnorm = None if args.batchnorm == "none" else args.batchnorm
    built: list[nn.Module] = []  # the module fit() trains (a DDP or compiled wrapper shares its parameters)
    with distributed_context(args.device, args.threads, deterministic=args.deterministic) as ctx:
        if data is None:
            from fastmlp.data import load_dataset

            data = load_dataset(args.dataset, args.data_dir, one_hot=False, validation_size=args.validation_size,
                                preprocessing=args.preprocessing, flatten=True, augment=args.augment,
                                seed=args.seed)
        metrics = fit(args, _spec(args, batchnorm, *example_shape(data), built=built), ctx=ctx, data=data,
                      on_eval=on_eval)
        if ctx.is_main:
            _save_model_file(built[-1], data["train"], Path(metrics["out_dir"]))
        return metrics


def _spec(args: argparse.Namespace, batchnorm: str | None, shape: tuple[int, ...], n_classes: int, *,
          built: list) -> TrainerSpec:
    """The MLP trainer's parts for checked flags ``args`` over examples of ``shape`` in ``n_classes`` classes;
    every model it builds is appended to ``built``."""
    n_inputs = math.prod(shape)

    def build_model() -> nn.Module:
        from torch_models.mlp import MLP

        model = MLP(n_inputs, args.dnn_hidden_units, n_classes, dropout=args.dropout, batchnorm=batchnorm)
        initialize_parameters(model, args.init)
        built.append(model)
        return model

    def build_optimizer(model: nn.Module) -> torch.optim.Optimizer:
        return make_optimizer(args.optimizer, parameter_groups(model, args.weight_decay), args.learning_rate,
                              momentum=args.momentum, nesterov=args.nesterov)

    return TrainerSpec(
        name="train_mlp", input_shape=(n_inputs,), build_model=build_model, build_optimizer=build_optimizer,
        dataset_augment=args.augment, min_local_batch=1 if batchnorm is None else 2,
        architecture_flags=ARCHITECTURE_FLAGS, trajectory_flags=TRAJECTORY_FLAGS,
        plan_notes=(f"hidden units {args.dnn_hidden_units or '[] (logistic regression)'}, init {args.init}, "
                    f"dropout {args.dropout}, batchnorm {args.batchnorm}",
                    f"{args.optimizer} (momentum {args.momentum}, nesterov {args.nesterov}), weight decay "
                    f"{args.weight_decay} on weights only",
                    f"preprocessing {args.preprocessing}, augment {args.augment}"))


def _save_model_file(model: nn.Module, train_set, out_dir: Path) -> None:
    """The run's ``model.safetensors`` (:mod:`fastmlp.modelfile`): the network in its eval-mode form
    (batch normalisation folded, dropout dropped), with the training split's preprocessing and class names."""
    from fastmlp.interop import from_torch
    from fastmlp.modelfile import MODEL_FILE_NAME, save_trained

    save_trained(from_torch(model, for_inference=True), train_set, out_dir / MODEL_FILE_NAME)


def main(argv: list[str] | None = None) -> int:
    """``python -m torch_models.train_mlp``: parse ``argv`` (default ``sys.argv[1:]``), train, return the exit code.

    0 done, 1 diverged, 2 bad input (a flag, the checkpoint, the data), 130 Ctrl-C.
    """
    return cli.main(argv, build_parser=build_parser, train=train)


if __name__ == "__main__":
    raise SystemExit(main())
