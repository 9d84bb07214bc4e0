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
from typing import Any, Callable, Mapping

from fastmlp.cli import config_from_args
from torch_models import cli, mlp_run
from torch_models.config import TorchMLPConfig

__all__ = ["build_parser", "main", "train"]

_GROUPS = {"run": "run", "data": "data", "optimisation": "optimisation (as in fastmlp.train)", "model": "model"}


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags, one per setting of :class:`~torch_models.config.TorchMLPConfig` (``--help``)."""
    return cli.build_parser(
        TorchMLPConfig, prog="python -m torch_models.train_mlp", groups=_GROUPS,
        description="Train the PyTorch MLP on CIFAR-10 (course defaults, the same as python -m fastmlp.train; "
                    "see the module docstring for a recipe reaching >= 0.55 test accuracy).")


def train(args: argparse.Namespace | Mapping[str, Any], *, data: Mapping[str, Any] | None = None,
          on_eval: Callable[[int, dict], None] | None = None) -> dict:
    """:func:`torch_models.mlp_run.train` of parsed flags ``args`` (``build_parser().parse_args([...])``).

    Flags ``args`` lacks take their defaults; each value is checked (the message names its
    flag). ``data`` and ``on_eval`` are :func:`torch_models.mlp_run.train`'s. ``sys.argv`` is not read.
    """
    return mlp_run.train(config_from_args(TorchMLPConfig, args), data=data, on_eval=on_eval)


def main(argv: list[str] | None = None) -> int:
    """``python -m torch_models.train_mlp``: parse ``argv`` (default ``sys.argv[1:]``), train, return the exit code.

    0 done, 1 diverged, 2 bad input (a flag, the checkpoint, the data), 130 Ctrl-C.
    """
    return cli.main(argv, build_parser=build_parser, config=TorchMLPConfig, train=mlp_run.train)


if __name__ == "__main__":
    raise SystemExit(main())
