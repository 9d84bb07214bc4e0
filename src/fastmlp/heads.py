"""An MLP's output heads: each one's course-contract module, its fused kernels and the targets it takes.

- ``softmax`` with the cross-entropy (targets: class indices (B,) or one-hot (B, C));
- ``logistic``, a sigmoid per output with the binary cross-entropy summed over
  the outputs (multilabel targets (B, C) in [0, 1]; with C = 1, two classes as
  scikit-learn fits them);
- ``identity`` with scikit-learn's squared loss, half the mean over rows and
  outputs (targets (B, C), or (B,) when C = 1; its gradient is scikit-learn's, C
  times that loss's).

Shapes: B batch, C outputs (classes, labels or targets).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from fastmlp import _kernels as K
from fastmlp._validation import as_float_2d, as_labels
from fastmlp.modules import IdentityModule, SigmoidModule, SoftMaxModule

__all__ = ["HEADS", "Head", "check_sample_weight", "check_targets"]


class Head(NamedTuple):
    """One output head with its loss."""

    #: The course's module for it (``forward_kernel`` gives the head's values from the logits).
    module: type
    #: ``(dZ (B, C), Z (B, C), T, weights=None) -> (loss, n_correct)``: loss and gradient in one pass.
    step: Callable
    #: ``(Z, T) -> (loss, n_correct)``: the loss alone.
    loss: Callable


HEADS = {
    "softmax": Head(SoftMaxModule, K.softmax_cross_entropy_forward_backward, K.softmax_cross_entropy_forward),
    "logistic": Head(SigmoidModule, K.logistic_cross_entropy_forward_backward, K.logistic_cross_entropy_forward),
    "identity": Head(IdentityModule, K.squared_error_forward_backward, K.squared_error_forward),
}


def check_targets(output, y, batch, n_classes, dtype) -> np.ndarray:
    """``y`` checked for the head ``output``: int64 labels (B,) for softmax, else (B, C) of ``dtype``.

    Softmax takes class indices (B,) or one-hot rows (B, C); logistic (B, C) in
    [0, 1]; identity (B, C), or (B,) when C = 1.
    """
    if output == "softmax":
        return as_labels("y", y, batch, n_classes)
    arr = np.asarray(y)
    if arr.ndim == 1 and n_classes == 1:
        arr = arr.reshape(-1, 1)
    t = as_float_2d("y", arr, dtype, n_classes)
    if t.shape[0] != batch:
        raise ValueError(f"y: expected {batch} rows of targets (one per row of x), got {t.shape[0]}")
    if not np.isfinite(t).all():
        raise ValueError("y: expected finite target values, got NaN or inf")
    if output == "logistic" and not ((t >= 0) & (t <= 1)).all():
        raise ValueError(f"y: expected targets in [0, 1] for output='logistic', got values in "
                         f"[{t.min()}, {t.max()}]")
    return t


def _check_finite_nonnegative(w) -> None:
    if not (np.isfinite(w).all() and (w >= 0).all()):
        raise ValueError("sample_weight: expected finite weights >= 0, got a negative, NaN or inf weight")


def check_sample_weight(sample_weight, batch, dtype) -> np.ndarray:
    """``sample_weight`` checked: (B,) of ``dtype``, finite, >= 0, with a positive sum."""
    w = np.asarray(sample_weight)
    if w.dtype.kind not in "biuf":
        raise TypeError(f"sample_weight: expected a real numeric array, got dtype {w.dtype}")
    if w.shape != (batch,):
        raise ValueError(f"sample_weight: expected shape ({batch},) (one weight per row of x), got {w.shape}")
    w = w.astype(dtype, copy=False)
    # Once per step, two reductions settle the usual case (a NaN or negative weight fails the minimum, an
    # inf makes the sum inf); the full check runs only when they cannot (bad weights, a finite sum too large).
    total = w.sum() if w.size and w.min() >= 0 else math.nan
    if not math.isfinite(total):
        _check_finite_nonnegative(w)
        total = w.sum() if math.isnan(total) else total  # no weights at all; or the finite ones overflowed
    if not total > 0:
        raise ValueError("sample_weight: expected a positive sum, got all zeros")
    return w
