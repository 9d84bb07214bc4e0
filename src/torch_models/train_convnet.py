"""Train the VGG-style ConvNet (:class:`torch_models.convnet.ConvNet`) on CIFAR-10.

Defaults are the course's (Adam, ``--learning_rate 1e-4 --max_steps 5000 --batch_size 32
--eval_freq 500``, per-pixel mean-image preprocessing), read with
:func:`fastmlp.data.get_cifar10`. Extras for speed and accuracy:

- ``--device {auto,cpu,cuda}``; ``--num_threads`` (CPU threads, default torch's own choice);
- ``--amp``: bf16 autocast on CUDA. **On CPU it is ignored with a warning** (so one command
  line works on any machine); ``metrics.json``'s ``amp`` says whether it was active;
- ``--channels_last`` memory format; ``--compile`` (``torch.compile``; the first steps are slow);
- ``--augment``: random crop (zero padding 4) + horizontal flip, drawn independently for each
  image of the batch, on the device (:func:`augment_batch`);
- ``--lr_schedule {constant,cosine,onecycle}`` stepped every step, its state checkpointed;
- ``--preprocessing {mean_image,standardize}``.

Outputs in ``--out_dir`` (default ``runs/<timestamp>``), the same as ``fastmlp.train``:
``metrics.json``, ``curves.csv``, ``curves.png`` and ``checkpoint.pt`` (model, optimizer,
scheduler, step, data-order and RNG states; rewritten atomically at every evaluation). The
whole test set (and validation set) is evaluated every ``--eval_freq`` steps and at the end,
in batches of ``--eval_batch_size``; ``--resume PATH`` continues a run.

Examples
--------
One process::

    python -m torch_models.train_convnet --augment --lr_schedule cosine --learning_rate 1e-3 \\
        --amp --channels_last --out_dir runs/convnet

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
import copy
import warnings

import torch

from torch_models import trainer

__all__ = ["augment_batch", "build_parser", "main", "train"]

N_CHANNELS = 3
N_CLASSES = 10
INPUT_SHAPE = (N_CHANNELS, 32, 32)
CROP_PADDING = 4
# --resume: flags fixing the saved state's layout, and flags whose change alters the result.
ARCHITECTURE_FLAGS = ("lr_schedule",)
TRAJECTORY_FLAGS = ("learning_rate", "batch_size", "seed", "validation_size", "preprocessing", "augment", "amp")


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
        description="Train the VGG-style ConvNet on CIFAR-10 with Adam (course defaults).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    trainer.add_common_arguments(parser, learning_rate=1e-4, max_steps=5000, batch_size=32, eval_freq=500)
    parser.add_argument("--preprocessing", choices=("mean_image", "standardize"), default="mean_image",
                        help="mean_image = course (per-pixel mean image subtracted, 0..255); "
                             "standardize = per-channel mean/std on 0..1")
    parser.add_argument("--lr_schedule", choices=("constant", "cosine", "onecycle"), default="constant",
                        help="per-step learning-rate schedule over --max_steps (peak = --learning_rate)")
    parser.add_argument("--augment", action="store_true",
                        help="random crop (padding 4) + horizontal flip per training image, on the device")
    parser.add_argument("--amp", action="store_true",
                        help="bf16 autocast on CUDA (ignored with a warning on CPU)")
    parser.add_argument("--channels_last", action="store_true", help="channels-last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    return parser


def _checked_args(args: argparse.Namespace) -> argparse.Namespace:
    args = copy.copy(args)  # the caller's Namespace (e.g. a search's) is left untouched
    trainer.check_common_args(args)
    if args.preprocessing not in ("mean_image", "standardize"):
        raise ValueError(f"--preprocessing must be mean_image or standardize, got {args.preprocessing!r}")
    if args.lr_schedule not in ("constant", "cosine", "onecycle"):
        raise ValueError(f"--lr_schedule must be one of constant, cosine, onecycle, got {args.lr_schedule!r}")
    return args


def _make_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int):
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=optimizer.param_groups[0]["lr"],
                                                   total_steps=total_steps)
    return None


def train(args: argparse.Namespace, *, data=None, on_eval=None) -> dict:
    """Run one training as described by ``args`` (from :func:`build_parser`); return its metrics.

    Parameters
    ----------
    args : argparse.Namespace
        E.g. ``build_parser().parse_args([...])``; not modified. ``sys.argv`` is not read.
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
        On a NaN/inf loss (the last checkpoint is kept).
    ValueError, FileNotFoundError
        For a flag out of range or an unusable ``--resume`` path.
    """
    args = _checked_args(args)

    def build_model() -> torch.nn.Module:
        from torch_models.convnet import ConvNet

        return ConvNet(N_CHANNELS, N_CLASSES)

    def build_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=args.learning_rate)

    with trainer.distributed_context(args.device, args.num_threads) as ctx:
        amp = bool(args.amp)
        if amp and ctx.device.type != "cuda":
            warnings.warn("--amp (bf16 autocast) is only used on CUDA; training in float32 on the CPU",
                          stacklevel=2)
            amp = False
        if data is None:
            from fastmlp.data import get_cifar10

            data = get_cifar10(args.data_dir, one_hot=False, validation_size=args.validation_size,
                               preprocessing=args.preprocessing, flatten=False, seed=args.seed)
        return trainer.fit(
            args, trainer_name="train_convnet", ctx=ctx, data=data, input_shape=INPUT_SHAPE,
            build_model=build_model, build_optimizer=build_optimizer,
            build_scheduler=lambda optimizer: _make_scheduler(args.lr_schedule, optimizer, args.max_steps),
            augment=augment_batch if args.augment else None, channels_last=args.channels_last,
            compile_model=args.compile, amp=amp, on_eval=on_eval,
            architecture_flags=ARCHITECTURE_FLAGS, trajectory_flags=TRAJECTORY_FLAGS,
            plan_notes=(f"augment {args.augment}, amp {amp}, channels_last {args.channels_last}, "
                        f"compile {args.compile}, preprocessing {args.preprocessing}",))


def main(argv: list[str] | None = None) -> int:
    """``python -m torch_models.train_convnet``: parse ``argv`` (default ``sys.argv[1:]``), train, return the exit code."""
    return trainer.run_main(train, build_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
