"""VGG-style convolutional network for 32x32 images (the course's ConvNet), or images of another size."""
from __future__ import annotations

import numbers

import torch
from torch import nn

__all__ = ["ConvNet", "CONVNET_CFG"]

#: The course's layer table, read left to right: an int is a
#: conv(3x3, stride 1, pad 1) + BatchNorm2d + ReLU block with that many output
#: channels, "M" a max-pool (3x3, stride 2, pad 1). Each pool halves the spatial
#: size, so 32x32 input reaches 1x1 with 512 channels after the last pool.
CONVNET_CFG: tuple = (
    64, "M",
    128, "M",
    256, 256, "M",
    512, 512, "M",
    512, 512, "M",
)

_IMAGE_SIZE = 32


def _pooled(size: int) -> int:
    """The side of a feature map after every max-pool of :data:`CONVNET_CFG` (3x3, stride 2, pad 1)."""
    for entry in CONVNET_CFG:
        if entry == "M":
            size = (size - 1) // 2 + 1
    return size


def _make_features(cfg, in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for entry in cfg:
        if entry == "M":
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        else:
            layers.append(nn.Conv2d(in_channels, entry, kernel_size=3, stride=1, padding=1))
            layers.append(nn.BatchNorm2d(entry))
            layers.append(nn.ReLU(inplace=True))
            in_channels = entry
    return nn.Sequential(*layers)


class ConvNet(nn.Module):
    """Convolutional classifier built from :data:`CONVNET_CFG`, then Linear(512, n_classes).

    Parameters
    ----------
    n_channels : int
        Channels of the input images (3 for CIFAR-10).
    n_classes : int
        Number of output logits.
    image_size : int or (int, int)
        Height and width of the input images (32: CIFAR; MNIST's 28 also pools down to 1x1).

    Attributes
    ----------
    features : nn.Sequential
        The conv/BatchNorm2d/ReLU blocks and max-pools of the table.
    classifier : nn.Linear
        512 * (pooled height) * (pooled width) -> n_classes (512 -> n_classes up to 32x32 images).

    Notes
    -----
    PyTorch's default initialisation; convolutions keep their bias, as in the course.
    """

    def __init__(self, n_channels: int, n_classes: int, image_size: int | tuple[int, int] = _IMAGE_SIZE):
        super().__init__()
        size = (image_size, image_size) if isinstance(image_size, numbers.Integral) else tuple(image_size)
        for name, value in (("n_channels", n_channels), ("n_classes", n_classes), ("image_size", size[0]),
                            ("image_size", size[-1])):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if len(size) != 2:
            raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
        self.n_channels = int(n_channels)
        self.n_classes = int(n_classes)
        self.image_size = (int(size[0]), int(size[1]))
        self.features = _make_features(CONVNET_CFG, self.n_channels)
        last_channels = [entry for entry in CONVNET_CFG if entry != "M"][-1]
        cells = _pooled(self.image_size[0]) * _pooled(self.image_size[1])
        self.classifier = nn.Linear(last_channels * cells, self.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute class logits.

        Parameters
        ----------
        x : torch.Tensor, shape (batch, n_channels, height, width) (``image_size``)
            Floating-point images; not modified.

        Returns
        -------
        logits : torch.Tensor, shape (batch, n_classes)
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        expected = (self.n_channels, *self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (batch, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}")
        return self.classifier(self.features(x).flatten(start_dim=1))
