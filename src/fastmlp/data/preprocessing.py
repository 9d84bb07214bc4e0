"""From stored uint8 pixels to model inputs: the course's mean-image centring or per-channel standardisation, and augmentation.

Images stay uint8 in memory (50,000 CIFAR-10 images: 154 MB instead of 614 MB
of float32) and become floats one batch at a time, in one fused pass
(``fastmlp._kernels.convert_images``) whose arithmetic is the course's: the
pixel cast to the float dtype, minus the float mean, divided by the float std
for standardisation. So a batch is bit-identical to the same rows of the whole
set converted at once with NumPy.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from fastmlp import _kernels as K

__all__ = ["PREPROCESSINGS", "Preprocessing", "augment_batch"]

#: Accepted values of ``Preprocessing.fit(kind=...)`` and ``get_cifar10(preprocessing=...)``.
PREPROCESSINGS = ("mean_image", "standardize")


def _channel_mean_std(images: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 images (n, C, H, W) on the 0..255 scale, float64 (C,).

    Chunked, so no float copy of the whole set is made. The squares of uint8
    values are exact in float32 and their sums exact in float64, so
    E[x^2] - E[x]^2 loses nothing to cancellation beyond the final rounding.
    """
    total = np.zeros(images.shape[1])
    total_sq = np.zeros(images.shape[1])
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].astype(np.float32)
        total += part.sum(axis=(0, 2, 3), dtype=np.float64)
        total_sq += np.square(part).sum(axis=(0, 2, 3), dtype=np.float64)
    count = images.size / images.shape[1]
    mean = total / count
    return mean, np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocessing:
    """x = (pixels - offset) / scale for every one of an image's D values.

    Attributes
    ----------
    kind : {"mean_image", "standardize"}
    offset : ndarray (D,) of the float dtype
        The mean training image (``mean_image``), or each channel's mean repeated
        over its pixels (``standardize``), on the 0..255 scale.
    scale : ndarray (D,) of the float dtype, or None
        Each channel's std repeated over its pixels (``standardize``); None: no division.
    """

    kind: str
    offset: np.ndarray
    scale: np.ndarray | None

    @property
    def dtype(self) -> np.dtype:
        return self.offset.dtype

    @classmethod
    def fit(cls, train_u8: np.ndarray, kind: str, dtype) -> "Preprocessing":
        """Statistics of the training images ``train_u8`` (n, C, H, W) (or (n, ...): one channel) uint8, in ``dtype``.

        ``mean_image``: the per-pixel mean (its sum is exact in integers); ``standardize``:
        per-channel mean and std, the std floored at 1e-12.
        """
        if kind not in PREPROCESSINGS:
            raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, got {kind!r}")
        n = train_u8.shape[0]
        if kind == "mean_image":
            # Integer column sums are exact, so this equals mean(axis=0, dtype=float64); the kernel
            # reads the bytes once, split over every core (NumPy's reduction into uint32 reads them on one).
            rows = train_u8.reshape(n, -1)
            total = np.empty(rows.shape[1], dtype=np.uint64)
            K.pixel_sums(total, rows)
            return cls(kind, (total / n).astype(dtype), None)
        if train_u8.ndim != 4:  # examples without channels: one channel of all their values
            train_u8 = train_u8.reshape(n, 1, 1, -1)
        mean, std = _channel_mean_std(train_u8)
        # (x/255 - m/255) / (s/255) == (x - m) / s: one pass, same result
        spread = lambda per_channel: np.broadcast_to(per_channel[:, None, None], train_u8.shape[1:]).reshape(-1)  # noqa: E731
        return cls(kind, spread(mean).astype(dtype), spread(np.maximum(std, 1e-12)).astype(dtype))

    def apply(self, images_u8: np.ndarray, index: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Model inputs (m, D) of the dtype for ``images_u8[index]`` (all rows when ``index`` is None).

        ``images_u8`` (n, ...) uint8 with D values per image; ``out`` (m, D), C-contiguous,
        of the dtype, is overwritten and returned (a new array when None).
        """
        rows = images_u8.reshape(images_u8.shape[0], -1)
        m = rows.shape[0] if index is None else len(index)
        if out is None:
            out = np.empty((m, rows.shape[1]), dtype=self.dtype)
        K.convert_images(out, rows, index, self.offset, self.scale)
        return out


def augment_batch(images: np.ndarray, rng: np.random.Generator, *, pad: int = 4, flip: bool = True) -> np.ndarray:
    """Random crop (after zero padding) and random horizontal flip, per image.

    Vectorised: one gather for the whole batch, no loop over images. The draws
    come from ``rng`` in a fixed order (row offsets, column offsets, flips), so
    restoring the generator's state reproduces the result.

    Parameters
    ----------
    images : ndarray, shape (batch, channels, height, width)
        Not modified. Zero padding equals the mean pixel for centred data.
    rng : numpy.random.Generator
        Advanced by the draws.
    pad : int
        Pixels of zero padding on each side; the crop offset is uniform in
        ``0..2*pad`` along each axis (``pad=0``: no crop).
    flip : bool
        Mirror left-right with probability 1/2.

    Returns
    -------
    ndarray, shape and dtype of ``images``
        A new array.
    """
    if not isinstance(images, np.ndarray) or images.ndim != 4:
        got = f"shape {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be an array of shape (batch, channels, height, width), got {got}")
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad must be an int >= 0, got {pad!r}")
    n, c, h, w = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else images
    rows = rng.integers(0, 2 * pad + 1, size=n)[:, None] + np.arange(h)  # (n, h) source rows
    cols = rng.integers(0, 2 * pad + 1, size=n)[:, None] + np.arange(w)  # (n, w) source columns
    if flip:
        mirrored = rng.random(n) < 0.5
        cols = np.where(mirrored[:, None], cols[:, ::-1], cols)
    return padded[
        np.arange(n)[:, None, None, None],
        np.arange(c)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
