"""Train the VGG-style ConvNet (:class:`torch_models.convnet.ConvNet`) on CIFAR-10.

Defaults are the course's (Adam, ``--learning_rate 1e-4 --max_steps 5000 --batch_size 32
--eval_freq 500``, per-pixel mean-image preprocessing), read with
:func:`fastmlp.data.get_cifar10`. Extras for speed and accuracy:

- ``--device {auto,cpu,cuda}``; ``--threads`` (CPU threads, default torch's own choice);
- ``--amp``: mixed precision as :mod:`torch_models.precision` decides for the device:
  bfloat16 autocast on a CPU with native bf16 (AVX512-BF16/AMX; speed-ups in BENCHMARKS.md)
  or a GPU with it, float16 with a gradient scaler on an older GPU, float32 (with a warning)
  on a CPU without bf16. ``metrics.json`` records what was applied (``amp``,
  ``autocast_dtype``, ``grad_scaler``, the device and its features);
- ``--channels_last``: NHWC memory format; by default on whenever ``--amp`` applies an
  autocast dtype (so ``--device cpu --amp`` is the fastest configuration on this CPU), off
  otherwise (the course's run stays the course's); ``--no-channels_last`` forces it off;
- ``--compile`` (``torch.compile``, once for training and evaluation; its first step is
  timed apart); ``--deterministic`` (see :mod:`torch_models.devices`);
- ``--augment``: random crop (zero padding 4) + horizontal flip, drawn independently for each
  image of the batch, on the device (:func:`augment_batch`);
- ``--lr_schedule {constant,cosine,step,onecycle}`` and ``--warmup_steps``: fastmlp's
  schedules (:mod:`fastmlp.schedules`), as in ``torch_models.train_mlp``; ``onecycle`` has
  PyTorch's ``OneCycleLR`` rates and, as it does, cycles the momentum of ``--optimizer
  momentum`` (or Adam's beta1) between 0.95 and 0.85;
- ``--optimizer {sgd,momentum,adam}`` with ``--momentum``, ``--nesterov``, ``--weight_decay``
  (convolution and Linear kernels only) as in ``torch_models.train_mlp``, and
  ``--label_smoothing`` of the training loss;
- ``--preprocessing {mean_image,standardize}``.

On ``--resume`` the schedule keeps the horizon (``--max_steps``) the run was started
with, and this invocation's ``--learning_rate``, ``--weight_decay``, ``--momentum`` and
``--nesterov`` replace the hyper-parameters stored with the optimizer state (a change is
warned about). Resuming across ``--amp`` on and off works (the checkpoint is float32)
with a warning that the result differs from an uninterrupted run.

Outputs in ``--out_dir`` (default ``runs/<timestamp>``), the same as ``fastmlp.train``:
``metrics.json``, ``curves.csv``, ``curves.png`` (with ``--plot``) and ``checkpoint.pt``
(model, optimizer, schedule, step, data-order and RNG states, as data only:
:mod:`torch_models.checkpoint`; rewritten atomically at every evaluation). The
whole test set (and validation set) is evaluated every ``--eval_freq`` steps and at the end,
in batches of ``--eval_batch_size``; ``--resume PATH`` continues a run.

Examples
--------
One process (the fastest CPU configuration: bf16 autocast and channels-last)::

    python -m torch_models.train_convnet --device cpu --amp --out_dir runs/convnet

The recipe aimed at >= 0.88 test accuracy in an hour on a 2-core AVX512-BF16 CPU (what it
reached: BENCHMARKS.md)::

    python -m torch_models.train_convnet --device cpu --amp --preprocessing standardize --augment \\
        --optimizer momentum --momentum 0.9 --nesterov --weight_decay 5e-4 --label_smoothing 0.1 \\
        --lr_schedule onecycle --learning_rate 0.2 --batch_size 256 --max_steps 3000 --eval_freq 1000

One machine with N GPUs (``--batch_size`` stays the global batch and must be a multiple of N;
each rank trains on its slice of every batch)::

    torchrun --standalone --nproc_per_node=N -m torch_models.train_convnet --batch_size 256 --amp ...

Several machines (run on each machine, with its own ``--node_rank``)::

    torchrun --nnodes=M --nproc_per_node=N --node_rank=K --rdzv_backend=c10d \\
        --rdzv_id=convnet1 --rdzv_endpoint=HOST0:29500 -m torch_models.train_convnet ...

Only rank 0 writes outputs and shows progress; see :mod:`torch_models.trainer` for how
batches and evaluation are shared between ranks.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Mapping

from fastmlp.cli import config_from_args
from torch_models import cli, convnet_run
from torch_models.config import ConvNetConfig

__all__ = ["build_parser", "main", "train"]

_GROUPS = {"run": "run", "data": "data", "optimisation": "optimisation (defaults: the course's Adam)",
           "speed": "speed"}


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags, one per setting of :class:`~torch_models.config.ConvNetConfig` (``--help``)."""
    return cli.build_parser(
        ConvNetConfig, prog="python -m torch_models.train_convnet", groups=_GROUPS,
        description="Train the VGG-style ConvNet on CIFAR-10 (course defaults: Adam 1e-4, batch 32, 5000 steps).")


def train(args: argparse.Namespace | Mapping[str, Any], *, data: Mapping[str, Any] | None = None,
          on_eval: Callable[[int, dict], None] | None = None) -> dict:
    """:func:`torch_models.convnet_run.train` of parsed flags ``args`` (``build_parser().parse_args([...])``).

    Flags ``args`` lacks take their defaults; each value is checked (the message names its
    flag). ``data`` and ``on_eval`` are :func:`torch_models.convnet_run.train`'s. ``sys.argv`` is not read.
    """
    return convnet_run.train(config_from_args(ConvNetConfig, args), data=data, on_eval=on_eval)


def main(argv: list[str] | None = None) -> int:
    """``python -m torch_models.train_convnet``: parse ``argv`` (default ``sys.argv[1:]``), train, return the exit code.

    0 done, 1 diverged, 2 bad input (a flag, the checkpoint, the data), 130 Ctrl-C.
    """
    return cli.main(argv, build_parser=build_parser, config=ConvNetConfig, train=convnet_run.train)


if __name__ == "__main__":
    raise SystemExit(main())
