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
from typing import Any, Mapping

import torch

from fastmlp.cli import HelpFormatter, flag_type
from fastmlp.data import example_shape
from torch_models import cli
from torch_models.distributed import distributed_context
from torch_models.hooks import TrainerSpec
from torch_models.optimizers import make_optimizer, parameter_groups
from torch_models.precision import choose_precision
from torch_models.trainer import fit

__all__ = ["augment_batch", "build_parser", "main", "train"]

CROP_PADDING = 4
# --resume: flags fixing the saved state's layout, and flags whose change alters the result.
# (--amp is not among them: the autocast dtype actually applied is compared instead.)
ARCHITECTURE_FLAGS = ("optimizer", "dataset")
TRAJECTORY_FLAGS = ("learning_rate", "batch_size", "seed", "validation_size", "preprocessing", "augment",
                    "momentum", "nesterov", "weight_decay", "label_smoothing", "lr_schedule", "warmup_steps")


def augment_batch(images: torch.Tensor, *, padding: int = CROP_PADDING,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop after zero padding, then random horizontal flip, independently per image.

    torchvision's v2 ``RandomCrop``/``RandomHorizontalFlip`` draw one set of parameters per
    call, so on a batch tensor every image would get the same crop; here the padding and the
    flip are torchvision's v2 functional ops and the per-image offsets/flip decisions are drawn
    with one random call each and applied with a single gather, so it stays a handful of
    kernels on the GPU.

    Parameters
    ----------
    images : torch.Tensor, shape (batch, channels, height, width), floating point
        Not modified.
    padding : int
        Zero padding on each side before cropping back to (height, width).
    generator : torch.Generator, optional
        Source of randomness (default: the device's global generator).

    Returns
    -------
    torch.Tensor, shape (batch, channels, height, width)
        A new tensor on the same device.
    """
    from torchvision.transforms.v2 import functional as TF

    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor of shape (batch, channels, height, width), got {shape}")
    batch, channels, height, width = images.shape
    device = images.device
    padded = TF.pad(images, [padding], fill=0.0)  # (batch, channels, height + 2p, width + 2p)
    offset_y = torch.randint(0, 2 * padding + 1, (batch, 1), device=device, generator=generator)
    offset_x = torch.randint(0, 2 * padding + 1, (batch, 1), device=device, generator=generator)
    rows = offset_y + torch.arange(height, device=device)  # (batch, height)
    cols = offset_x + torch.arange(width, device=device)  # (batch, width)
    cropped = padded[torch.arange(batch, device=device)[:, None, None, None],
                     torch.arange(channels, device=device)[None, :, None, None],
                     rows[:, None, :, None], cols[:, None, None, :]]
    flip = torch.rand(batch, device=device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], TF.horizontal_flip(cropped), cropped)


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags, with the course's defaults (shown by ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m torch_models.train_convnet",
        description="Train the VGG-style ConvNet on CIFAR-10 (course defaults: Adam 1e-4, batch 32, 5000 steps).",
        formatter_class=HelpFormatter)
    cli.add_run_arguments(parser, learning_rate=1e-4, max_steps=5000, batch_size=32, eval_freq=500)
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=False,
                        help="random crop (padding 4) + horizontal flip per training image, on the device")
    opt = parser.add_argument_group("optimisation (defaults: the course's Adam)")
    cli.add_optimization_arguments(opt, optimizer="adam", decayed="convolution and Linear kernels",
                                   momentum_note=" (--lr_schedule onecycle cycles it 0.85-0.95)")
    opt.add_argument("--label_smoothing", type=flag_type("label_smoothing"), default=0.0,
                     help="label smoothing of the training loss (the evaluation loss is the plain cross-entropy)")
    speed = parser.add_argument_group("speed")
    speed.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                       help="mixed precision: bfloat16 autocast where the device computes bf16 natively (a CPU "
                            "with AVX512-BF16/AMX, where steps run up to ~2x faster; an Ampere or newer GPU), "
                            "float16 with a gradient scaler on older GPUs, float32 with a warning on CPUs without "
                            "bf16. Cost: convolutions and matmuls round to 8 (bf16) or 11 (fp16) significant "
                            "bits; weights, optimizer state and loss stay float32")
    speed.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                       help="NHWC memory format: faster convolutions on CPUs and on tensor cores, the same "
                            "arithmetic in another order. Default (None): on whenever --amp applies an autocast "
                            "dtype, else off (so the plain command stays the course's run)")
    speed.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                       help="torch.compile the model once (training and evaluation): faster steps after a "
                            "compilation of up to minutes (timed apart, as compile_seconds)")
    return parser


def train(args: argparse.Namespace | Mapping[str, Any], *, data=None, on_eval=None) -> dict:
    """Run one training as described by ``args`` (from :func:`build_parser`); return its metrics.

    Parameters
    ----------
    args : argparse.Namespace or mapping
        E.g. ``build_parser().parse_args([...])``; not modified (flags it lacks take their
        defaults; every value is checked against :mod:`fastmlp.hyperparams`). ``sys.argv``
        is not read.
    data : dict, optional
        A pre-loaded ``fastmlp.data.get_cifar10(...)`` result (any ``flatten``/``one_hot``;
        its own numpy augmentation is not used, ``--augment`` is); when given,
        ``--data_dir``, ``--validation_size`` and ``--preprocessing`` are the caller's. Not modified.
    on_eval : callable, optional
        ``on_eval(step, metrics)`` after each evaluation; an exception it raises propagates.

    Returns
    -------
    dict
        What ``metrics.json`` holds (``test_accuracy``, ``test_loss``, ``best_test_accuracy``,
        ``validation_*`` when present, ``steps``, ``wall_seconds``, ``seconds_per_step``, ``amp``...).

    Raises
    ------
    fastmlp.runlog.DivergenceError
        On a NaN/inf training or evaluation loss, or NaN/inf weights after an update (the last
        good checkpoint is kept).
    TypeError, ValueError, FileNotFoundError
        For a flag out of range (naming it) or an unusable ``--resume`` path.
    """
    args = cli.checked_args(args, build_parser)

    def build_model() -> torch.nn.Module:
        from torch_models.convnet import ConvNet

        return ConvNet(input_shape[0], n_classes, image_size=input_shape[1:])

    def build_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
        return make_optimizer(args.optimizer, parameter_groups(model, args.weight_decay), args.learning_rate,
                              momentum=args.momentum, nesterov=args.nesterov)

    with distributed_context(args.device, args.threads, deterministic=args.deterministic) as ctx:
        if data is None:
            from fastmlp.data import load_dataset

            data = load_dataset(args.dataset, args.data_dir, one_hot=False, validation_size=args.validation_size,
                                preprocessing=args.preprocessing, flatten=False, seed=args.seed)
        input_shape, n_classes = example_shape(data)
        if len(input_shape) != 3:
            raise ValueError(f"--dataset {args.dataset}: the ConvNet needs images (channels, height, width), "
                             f"got examples of shape {input_shape} (use torch_models.train_mlp)")
        precision = choose_precision(args.amp, ctx.device, warn=ctx.is_main)
        # Channels-last pays off most with low-precision convolutions; by default it follows them.
        channels_last = precision.enabled if args.channels_last is None else args.channels_last
        spec = TrainerSpec(
            name="train_convnet", input_shape=input_shape, build_model=build_model, build_optimizer=build_optimizer,
            precision=precision, augment=augment_batch if args.augment else None, channels_last=channels_last,
            compile_model=args.compile, label_smoothing=args.label_smoothing, cycle_momentum=True,
            min_local_batch=2, architecture_flags=ARCHITECTURE_FLAGS, trajectory_flags=TRAJECTORY_FLAGS,
            plan_notes=(f"augment {args.augment}, channels_last {channels_last}, compile {args.compile}, "
                        f"preprocessing {args.preprocessing}",
                        f"{args.optimizer} (momentum {args.momentum}, nesterov {args.nesterov}), weight decay "
                        f"{args.weight_decay} on kernels only, label smoothing {args.label_smoothing}"))
        return fit(args, spec, ctx=ctx, data=data, on_eval=on_eval)


def main(argv: list[str] | None = None) -> int:
    """``python -m torch_models.train_convnet``: parse ``argv`` (default ``sys.argv[1:]``), train, return the exit code.

    0 done, 1 diverged, 2 bad input (a flag, the checkpoint, the data), 130 Ctrl-C.
    """
    return cli.main(argv, build_parser=build_parser, train=train)


if __name__ == "__main__":
    raise SystemExit(main())
