"""Evaluation of a torch model on whole splits, shared out between the ranks.

Why a module of its own: both torch trainers evaluate the same way (batches under
``torch.inference_mode()`` and the run's autocast, sums all-reduced between the ranks),
and the same conversions turn the data sets' NumPy images and labels into model inputs
for training batches too.

Each rank evaluates a contiguous slice of the split (:class:`EvalSet`), moved to the
device once; the loss sums and correct counts are all-reduced, so every rank holds the
metrics of the whole split.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from torch_models.distributed import DistContext

__all__ = ["EvalSet", "class_indices", "evaluate", "images_to_tensor", "model_input_array"]


@dataclasses.dataclass
class EvalSet:
    """This rank's slice of an evaluation split, ready for :func:`evaluate`.

    Attributes
    ----------
    images : torch.Tensor, shape (n_local, *input_shape), float32
        On the training device (moved once, not per evaluation).
    labels : torch.Tensor, shape (n_local,), int64
        Class indices, on the same device.
    total : int
        Examples in the whole split (all ranks together).
    """

    images: torch.Tensor
    labels: torch.Tensor
    total: int

    @classmethod
    def from_dataset(cls, dataset, *, input_shape: tuple[int, ...], ctx: DistContext,
                     limit: int | None = None) -> "EvalSet":
        """Slice ``dataset`` (a ``fastmlp.data.DataSet``) for this rank; ``limit`` keeps the first N."""
        x, y = dataset.as_arrays(flatten=False)
        if limit is not None:
            x, y = x[:limit], y[:limit]
        n = len(x)
        lo, hi = n * ctx.rank // ctx.world_size, n * (ctx.rank + 1) // ctx.world_size
        images = images_to_tensor(x[lo:hi], input_shape).to(ctx.device)
        labels = torch.from_numpy(class_indices(y[lo:hi])).to(ctx.device)
        return cls(images, labels, n)


def class_indices(labels: np.ndarray) -> np.ndarray:
    """Class indices, shape (n,) int64, from indices (n,) or one-hot rows (n, n_classes)."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels.argmax(axis=1)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (n,) or (n, n_classes), got {labels.shape}")
    return labels.astype(np.int64, copy=False)


def model_input_array(x: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """Contiguous float32 array of shape (n, *input_shape): ``x`` itself when it already is one."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    expected = math.prod(input_shape)
    if x.ndim < 2 or math.prod(x.shape[1:]) != expected:
        raise ValueError(f"images must have {expected} values per example (model input {input_shape}), "
                         f"got array of shape {x.shape}")
    return x.reshape(len(x), *input_shape)


def images_to_tensor(x: np.ndarray, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Float32 CPU tensor of shape (n, *input_shape) sharing memory with ``x`` when possible."""
    return torch.from_numpy(model_input_array(x, input_shape))


def evaluate(model: nn.Module, eval_set: EvalSet, *, batch_size: int, ctx: DistContext,
             autocast_dtype: torch.dtype | None = None, channels_last: bool = False,
             static_shapes: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over a whole split (all ranks together).

    Runs in batches of ``batch_size`` under ``torch.inference_mode()`` and, with
    ``autocast_dtype``, under the training run's autocast. ``model`` is put in eval mode
    for the pass and restored to its previous mode.

    Parameters
    ----------
    static_shapes : bool
        Zero-pad the last, ragged batch to the full batch (the padding rows are not
        counted), so a compiled model sees one input shape and never recompiles. The
        batch is ``min(batch_size, examples on this rank)``.
    """
    was_training = model.training
    model.eval()
    n = len(eval_set.labels)
    batch_size = max(1, min(batch_size, n))
    padded_tail = None
    if static_shapes and n % batch_size:
        # Made here, outside inference mode, so it is an ordinary tensor like the other batches
        # (a compiled model's guards tell the two kinds apart).
        tail = eval_set.images[n - n % batch_size:]
        padded_tail = torch.cat([tail, tail.new_zeros(batch_size - len(tail), *tail.shape[1:])])
    try:
        with torch.inference_mode():
            stats = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # loss sum, correct, count
            for start in range(0, n, batch_size):
                x = eval_set.images[start:start + batch_size]
                y = eval_set.labels[start:start + batch_size]
                if padded_tail is not None and len(y) < batch_size:
                    x = padded_tail
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(ctx.device.type, dtype=autocast_dtype or torch.bfloat16,
                                    enabled=autocast_dtype is not None):
                    logits = model(x)[:len(y)]
                stats[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
                stats[1] += (logits.argmax(dim=1) == y).sum()
                stats[2] += len(y)
        if ctx.distributed:
            dist.all_reduce(stats)
        loss_sum, correct, count = stats.tolist()
    finally:
        model.train(was_training)
    return loss_sum / count, correct / count
