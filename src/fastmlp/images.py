"""Batches of stored uint8 images that the first layer converts itself.

An :class:`ImageBatch` names rows of stored pixels and the map that turns them
into model inputs, x = (pixels[index] - offset) / scale, without converting
them. :meth:`fastmlp.MLP.train_step` takes one in place of an array: the first
layer's GEMM then converts, in each of its parallel chunks, the part of the
batch that chunk multiplies, just before and on the same core (one parallel
pass and one trip of the batch between the cores fewer per step; the
measurements are in docs/notes/). Through OpenBLAS the numbers are the same as converting first:
``train_step(batch.to_array(), ...)``. In float32 on a CPU with AVX-512, batches
above 32 rows go through fastmlp's own first-layer GEMM (``_images_gemm.h``),
which converts the pixels straight into its packed panels for the forward pass
and, with plain SGD, for the weight update: no converted batch is written at all,
and the sums differ from OpenBLAS's within float32 rounding.
:meth:`MLP.evaluate_batches` takes them too.
:meth:`fastmlp.data.DataSet.next_image_batch` and :meth:`~fastmlp.data.DataSet.image_batches` make them.

Shapes: N stored images, D values per image, B rows in the batch.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from fastmlp import _kernels as K

__all__ = ["ImageBatch"]


@dataclasses.dataclass(frozen=True, eq=False)
class ImageBatch:
    """Rows ``index`` of ``pixels``, to be used as x = (pixels[index] - offset) / scale.

    Parameters
    ----------
    pixels : ndarray (N, D) uint8
        Stored images, one per row (not copied; not modified).
    index : array-like (B,) of ints
        Row numbers in [0, N) making the batch, B >= 1 (kept as int64).
    offset : ndarray (D,) float32 or float64
        Subtracted from each pixel; its dtype is the inputs' dtype.
    scale : ndarray (D,) of the same dtype, or None
        Divisors after the subtraction; None for none.

    Raises
    ------
    TypeError, ValueError
        Naming the argument, for a wrong dtype or shape (row numbers outside
        [0, N) are refused when the batch is converted).
    """

    pixels: np.ndarray
    index: np.ndarray
    offset: np.ndarray
    scale: np.ndarray | None = None

    def __post_init__(self):
        pixels, index, offset = self.pixels, np.asarray(self.index), self.offset
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2:
            raise TypeError(f"pixels: expected a 2-D uint8 array (N, D), got {_describe(pixels)}")
        if index.dtype.kind not in "iu" or index.ndim != 1 or len(index) == 0:
            raise TypeError(f"index: expected a non-empty 1-D array of integer row numbers, got {_describe(index)}")
        object.__setattr__(self, "index", index.astype(np.int64, copy=False))
        width = pixels.shape[1]
        if (not isinstance(offset, np.ndarray) or offset.dtype not in (np.float32, np.float64)
                or offset.shape != (width,)):
            raise TypeError(f"offset: expected a float32 or float64 array of shape ({width},), got {_describe(offset)}")
        if self.scale is not None and (not isinstance(self.scale, np.ndarray) or self.scale.dtype != offset.dtype
                                       or self.scale.shape != (width,)):
            raise TypeError(f"scale: expected None or a {offset.dtype} array of shape ({width},), "
                            f"got {_describe(self.scale)}")

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, int]:
        """(B, D), the shape of the converted batch."""
        return len(self.index), self.pixels.shape[1]

    @property
    def dtype(self) -> np.dtype:
        """The inputs' dtype (``offset``'s)."""
        return self.offset.dtype

    def to_array(self, out: np.ndarray | None = None) -> np.ndarray:
        """The converted batch (B, D) of :attr:`dtype`, into ``out`` (C-contiguous, overwritten) when given."""
        if out is None:
            out = np.empty(self.shape, dtype=self.dtype)
        K.convert_images(out, self.pixels, self.index, self.offset, self.scale)
        return out


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__
