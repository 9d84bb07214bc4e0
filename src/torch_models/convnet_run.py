"""One run of the VGG-style ConvNet (:class:`torch_models.convnet.ConvNet`) from its configuration: :func:`train`.

What ``python -m torch_models.train_convnet`` runs, and what a program calls with a
:class:`torch_models.config.ConvNetConfig`: load the data (images of any shape), choose
the precision for the device, build the model and its optimizer, train on
:func:`torch_models.trainer.fit`, augmenting batches on the device (:func:`augment_batch`).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from fastmlp.data import example_shape
from torch_models.config import ConvNetConfig
from torch_models.distributed import distributed_context
from torch_models.hooks import TrainerSpec
from torch_models.optimizers import optimizer_for
from torch_models.precision import Precision, choose_precision
from torch_models.trainer import fit

__all__ = ["ARCHITECTURE", "CROP_PADDING", "TRAJECTORY", "augment_batch", "train"]

CROP_PADDING = 4
# On resuming: settings fixing the saved state's layout, and settings whose change alters the result.
# (amp is not among them: the autocast dtype actually applied is compared instead.)
ARCHITECTURE = ("optimizer", "dataset")
TRAJECTORY = ("learning_rate", "batch_size", "seed", "validation_size", "preprocessing", "augment",
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


def train(config: ConvNetConfig, *, data: Mapping[str, Any] | None = None,
          on_eval: Callable[[int, dict], None] | None = None,
          checkpoint: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run the training ``config`` describes; return its metrics (``amp`` and the device's features among them).

    As :func:`torch_models.mlp_run.train`, for the ConvNet: ``data`` holds images (its own
    NumPy augmentation is not used, ``config.augment`` augments on the device).

    Raises
    ------
    ValueError
        Also for examples that are no images (channels, height, width).
    """
    with distributed_context(config.device, config.threads, deterministic=config.deterministic) as ctx:
        if data is None:
            from fastmlp.data import load_dataset

            data = load_dataset(config.dataset, config.data_dir, one_hot=False, flatten=False, seed=config.seed,
                                validation_size=config.validation_size, preprocessing=config.preprocessing)
        input_shape, n_classes = example_shape(data)
        if len(input_shape) != 3:
            raise ValueError(f"--dataset {config.dataset}: the ConvNet needs images (channels, height, width), "
                             f"got examples of shape {input_shape} (use torch_models.train_mlp)")
        spec = _spec(config, input_shape, n_classes, choose_precision(config.amp, ctx.device, warn=ctx.is_main))
        return fit(config, spec, ctx=ctx, data=data, on_eval=on_eval, checkpoint=checkpoint)


def _spec(config: ConvNetConfig, input_shape: tuple[int, ...], n_classes: int,
          precision: Precision) -> TrainerSpec:
    """The ConvNet trainer's parts for ``config`` over images of ``input_shape`` in ``n_classes`` classes."""
    # Channels-last pays off most with low-precision convolutions; by default it follows them.
    channels_last = precision.enabled if config.channels_last is None else config.channels_last

    def build_model() -> torch.nn.Module:
        from torch_models.convnet import ConvNet

        return ConvNet(input_shape[0], n_classes, image_size=input_shape[1:])

    return TrainerSpec(
        name="train_convnet", input_shape=input_shape, build_model=build_model,
        build_optimizer=lambda model: optimizer_for(model, config),
        precision=precision, augment=augment_batch if config.augment else None, channels_last=channels_last,
        compile_model=config.compile, label_smoothing=config.label_smoothing, cycle_momentum=True,
        min_local_batch=2, architecture=ARCHITECTURE, trajectory=TRAJECTORY,
        plan_notes=(f"augment {config.augment}, channels_last {channels_last}, compile {config.compile}, "
                    f"preprocessing {config.preprocessing}",
                    f"{config.optimizer} (momentum {config.momentum}, nesterov {config.nesterov}), weight decay "
                    f"{config.weight_decay} on kernels only, label smoothing {config.label_smoothing}"))
