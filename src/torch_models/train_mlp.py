"""Train the PyTorch MLP (:class:`torch_models.mlp.MLP`) on CIFAR-10: the course's PyTorch MLP script.

Defaults are the course's (SGD without momentum, ``--learning_rate 2e-3 --max_steps 1500
--batch_size 200 --eval_freq 100``, one hidden layer of 100 units; ``--dnn_hidden_units ""``
is multinomial logistic regression). Images are flattened to 3072 float32 values after
the course's preprocessing (the training split's per-pixel mean image subtracted, 0..255
scale), read with :func:`fastmlp.data.get_cifar10`.

Outputs in ``--out_dir`` (default ``runs/<timestamp>``), the same as ``fastmlp.train``:
``metrics.json``, ``curves.csv``, ``curves.png`` and ``checkpoint.pt`` (model, optimizer,
step, data-order and RNG states; rewritten atomically at every evaluation). The whole
test set (and the validation set, with ``--validation_size``) is evaluated every
``--eval_freq`` steps and at the end; ``curves.csv``'s ``train_loss``/``train_accuracy``
are the mean over the training batches since the previous evaluation.

Examples
--------
One process (CPU or one GPU)::

    python -m torch_models.train_mlp --dnn_hidden_units 512,256 --optimizer adam \\
        --learning_rate 1e-3 --batchnorm torch --dropout 0.2 --out_dir runs/mlp
    python -m torch_models.train_mlp --resume runs/mlp --max_steps 3000   # continue it

One machine with N GPUs (or N CPU processes with gloo; ``--batch_size`` stays global and
must be a multiple of N, each rank trains on its slice of every batch)::

    torchrun --standalone --nproc_per_node=N -m torch_models.train_mlp --batch_size 200 ...

Several machines (run on each machine, with its own ``--node_rank``)::

    torchrun --nnodes=M --nproc_per_node=N --node_rank=K --rdzv_backend=c10d \\
        --rdzv_id=mlp1 --rdzv_endpoint=HOST0:29500 -m torch_models.train_mlp ...

Only rank 0 writes outputs; ``--resume`` needs the checkpoint readable on rank 0's machine.
See :mod:`torch_models.trainer` for how batches and evaluation are shared between ranks.
"""
from __future__ import annotations

import argparse
import copy

import torch

from torch_models import trainer

__all__ = ["build_parser", "main", "parse_hidden_units", "train"]

N_INPUTS = 3 * 32 * 32
N_CLASSES = 10
# --resume: flags fixing the saved tensors' shapes, and flags whose change alters the result.
ARCHITECTURE_FLAGS = ("dnn_hidden_units", "batchnorm", "optimizer")
TRAJECTORY_FLAGS = ("learning_rate", "batch_size", "weight_decay", "dropout", "seed", "validation_size")


def parse_hidden_units(text: str | list | tuple) -> list[int]:
    """``"512,256"`` -> ``[512, 256]``; ``""`` -> ``[]`` (logistic regression). Lists pass through checked."""
    if isinstance(text, (list, tuple)):
        units = list(text)
    elif isinstance(text, str):
        try:
            units = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--dnn_hidden_units must be comma-separated positive ints, got {text!r}") from None
    else:
        raise argparse.ArgumentTypeError(
            f"--dnn_hidden_units must be a str like '100,50' or a list of ints, got {type(text).__name__}")
    if any(isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in units):
        raise argparse.ArgumentTypeError(f"--dnn_hidden_units must be positive ints, got {text!r}")
    return units


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags, with the course's defaults (shown by ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m torch_models.train_mlp",
        description="Train the PyTorch MLP on CIFAR-10 (course defaults).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dnn_hidden_units", type=parse_hidden_units, default="100",
                        help="comma-separated hidden layer sizes; empty = logistic regression")
    trainer.add_common_arguments(parser, learning_rate=2e-3, max_steps=1500, batch_size=200, eval_freq=100)
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                        help="sgd = plain SGD (no momentum) as in the course")
    parser.add_argument("--weight_decay", type=float, default=0.0, help="L2 weight decay of the optimizer")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout after each hidden ReLU")
    parser.add_argument("--batchnorm", choices=("none", "torch", "custom"), default="none",
                        help="BatchNorm before each hidden Linear: torch.nn.BatchNorm1d or the custom one")
    return parser


def _checked_args(args: argparse.Namespace) -> argparse.Namespace:
    args = copy.copy(args)  # the caller's Namespace (e.g. a search's) is left untouched
    trainer.check_common_args(args)
    try:
        args.dnn_hidden_units = parse_hidden_units(args.dnn_hidden_units)
    except argparse.ArgumentTypeError as err:
        raise ValueError(str(err)) from None
    if args.optimizer not in ("sgd", "adam"):
        raise ValueError(f"--optimizer must be 'sgd' or 'adam', got {args.optimizer!r}")
    if args.batchnorm not in ("none", "torch", "custom"):
        raise ValueError(f"--batchnorm must be one of none, torch, custom, got {args.batchnorm!r}")
    if not (isinstance(args.weight_decay, (int, float)) and args.weight_decay >= 0):
        raise ValueError(f"--weight_decay must be a float >= 0, got {args.weight_decay!r}")
    if not (isinstance(args.dropout, (int, float)) and 0 <= args.dropout < 1):
        raise ValueError(f"--dropout must be a float in [0, 1), got {args.dropout!r}")
    return args


def train(args: argparse.Namespace, *, data=None, on_eval=None) -> dict:
    """Run one training as described by ``args`` (from :func:`build_parser`); return its metrics.

    Parameters
    ----------
    args : argparse.Namespace
        E.g. ``build_parser().parse_args([...])``; not modified. ``sys.argv`` is not read.
    data : dict, optional
        A pre-loaded ``fastmlp.data.get_cifar10(...)`` result (any ``flatten``/``one_hot``);
        when given, ``--data_dir``, ``--validation_size`` and the preprocessing are the
        caller's. Not modified.
    on_eval : callable, optional
        ``on_eval(step, metrics)`` after each evaluation (``train_loss``, ``train_accuracy``,
        ``test_loss``, ``test_accuracy`` and ``validation_*`` when there is a validation set);
        an exception it raises (e.g. ``optuna.TrialPruned``) propagates out of ``train``.

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

    def build_model() -> torch.nn.Module:
        from torch_models.mlp import MLP

        return MLP(N_INPUTS, args.dnn_hidden_units, N_CLASSES, dropout=args.dropout, batchnorm=batchnorm)

    def build_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
        kind = torch.optim.SGD if args.optimizer == "sgd" else torch.optim.Adam
        return kind(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)

    with trainer.distributed_context(args.device, args.num_threads) as ctx:
        if data is None:
            from fastmlp.data import get_cifar10

            data = get_cifar10(args.data_dir, one_hot=False, validation_size=args.validation_size,
                               preprocessing="mean_image", flatten=True, seed=args.seed)
        return trainer.fit(args, trainer_name="train_mlp", ctx=ctx, data=data, input_shape=(N_INPUTS,),
                           build_model=build_model, build_optimizer=build_optimizer, on_eval=on_eval,
                           architecture_flags=ARCHITECTURE_FLAGS, trajectory_flags=TRAJECTORY_FLAGS,
                           plan_notes=(f"hidden units {args.dnn_hidden_units or '[] (logistic regression)'}, "
                                       f"dropout {args.dropout}, batchnorm {args.batchnorm}",))


def main(argv: list[str] | None = None) -> int:
    """``python -m torch_models.train_mlp``: parse ``argv`` (default ``sys.argv[1:]``), train, return the exit code."""
    return trainer.run_main(train, build_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
