"""The fused passes of a :class:`fastmlp.MLP` over one batch, in scratch buffers lent per call.

The forward pass runs each layer's GEMM with its bias and activation fused
(:func:`logits_into`); the backward pass (:func:`backward_and_update`) hands each
layer, output first, to the optimizer, which computes that layer's gradients
(the activation's derivative folded into the dX GEMM) and updates its
parameters: plain SGD inside the backward GEMM itself. ``train_step``, which
runs in one thread at a time, keeps its own scratch buffers (:class:`OwnBuffers`),
so a training loop allocates nothing after its first step; the inference calls
borrow theirs from a :class:`BufferPool`, so concurrent calls never share a buffer.

Shapes: B batch, D n_inputs, H_l the width of layer l's output, C n_classes.
"""
from __future__ import annotations

import threading

import numpy as np

from fastmlp import _kernels as K

__all__ = ["BufferPool", "Buffers", "Loan", "OwnBuffers", "backward_and_update", "image_input", "logits_into", "new_buffers"]

# Idle buffer sets are kept for this many distinct batch sizes (training batch, eval chunk, last chunk...),
# and at most this many per size (one per thread that called at once, up to the bound).
MAX_BATCH_SIZES = 4
MAX_IDLE_PER_SIZE = 4


class Buffers:
    """Scratch space for one pass over a batch of B rows.

    ``acts[l]`` (B, H_l) layer outputs, ``grads[l]`` (B, H_l) their gradients (not
    the output layer's), ``scratch`` (1, n) the forward GEMMs' work space or None,
    ``images`` (B, D) a converted :class:`~fastmlp.images.ImageBatch` (made on first use) or None.
    """

    __slots__ = ("acts", "grads", "scratch", "images")

    def __init__(self, acts, grads, scratch):
        self.acts, self.grads, self.scratch, self.images = acts, grads, scratch, None


class BufferPool:
    """Buffer sets by batch size, each lent to one caller at a time: concurrent callers never share one.

    ``with pool.lent(batch) as bufs:`` hands out an idle set for that batch
    size (made by ``make(batch)`` when none is idle) and takes it back after. A
    caller that borrows in turn (a training loop) gets the same set every time,
    so it allocates nothing after its first step.
    """

    def __init__(self, make):
        self.make = make
        self.lock = threading.Lock()
        self.idle: dict[int, list] = {}  # batch size -> idle sets, least recently used size first

    def lent(self, batch) -> "Loan":
        """A context manager lending a buffer set for ``batch`` rows."""
        return Loan(self, batch)

    def borrow(self, batch) -> Buffers:
        """An idle buffer set for ``batch`` rows (a new one when none is idle); :meth:`give` takes it back."""
        with self.lock:
            sets = self.idle.get(batch)
            bufs = sets.pop() if sets else None
        return self.make(batch) if bufs is None else bufs

    def give(self, batch, bufs) -> None:
        with self.lock:
            sets = self.idle.pop(batch, [])
            if len(sets) < MAX_IDLE_PER_SIZE:
                sets.append(bufs)
            self.idle[batch] = sets  # now the most recently used size
            if len(self.idle) > MAX_BATCH_SIZES:
                self.idle.pop(next(iter(self.idle)))


class OwnBuffers:
    """Buffer sets by batch size for a caller that runs in one thread at a time: nothing lent, no lock.

    ``train_step`` (serialized by its own lock) keeps its sets here, so a step
    takes its buffers with one dictionary lookup; ``get(batch)`` makes a set on
    first use, keeping the sets of the MAX_BATCH_SIZES most recent sizes.
    """

    def __init__(self, make):
        self.make = make
        self.sets: dict[int, Buffers] = {}

    def get(self, batch) -> Buffers:
        bufs = self.sets.get(batch)
        if bufs is None:
            if len(self.sets) >= MAX_BATCH_SIZES:
                self.sets.pop(next(iter(self.sets)))
            bufs = self.sets[batch] = self.make(batch)
        return bufs


class Loan:
    """``with`` block of :meth:`BufferPool.lent` (a plain class: a step pays for no generator)."""

    __slots__ = ("pool", "batch", "bufs")

    def __init__(self, pool, batch):
        self.pool, self.batch, self.bufs = pool, batch, None

    def __enter__(self) -> Buffers:
        self.bufs = self.pool.borrow(self.batch)
        return self.bufs

    def __exit__(self, *exc_info) -> None:
        self.pool.give(self.batch, self.bufs)


def new_buffers(model, batch) -> Buffers:
    """A buffer set for ``batch`` rows through ``model`` (its ``linears``, ``n_inputs`` and ``dtype``)."""
    widths = [lin.out_features for lin in model.linears]
    acts = [np.empty((batch, w), dtype=model.dtype) for w in widths]
    grads = [np.empty((batch, w), dtype=model.dtype) for w in widths[:-1]]
    # Forward scratch: the transposed GEMM of small batches and the partial sums of a K-split.
    sizes = [model.n_inputs, *widths]
    need = max(K.forward_scratch_size(batch, i, o) for i, o in zip(sizes[:-1], sizes[1:]))
    scratch = np.empty((1, need), dtype=model.dtype) if need else None
    return Buffers(acts, grads, scratch)


def logits_into(model, x, bufs, images=None):
    """Forward pass of x (B, D) into the activation buffers of ``bufs``; returns the logits buffer (B, C).

    With ``images`` (an :class:`~fastmlp.images.ImageBatch`), the first layer converts
    them into x (None where not kept: see :func:`image_input`) first.
    """
    acts, scratch = bufs.acts, bufs.scratch
    last = len(model.linears) - 1
    hidden = K.ACTIVATIONS[model.activation]
    h = x
    for l, lin in enumerate(model.linears):
        w, b = lin.weight_and_bias()
        act = hidden if l < last else 0  # the output layer's logits: no activation
        if l == 0 and images is not None:
            K.linear_forward_images(acts[0], x, images.pixels, images.index, images.offset, images.scale, w, b,
                                    act, scratch)
        else:
            K.linear_forward(acts[l], h, w, b, act, scratch)
        h = acts[l]
    return h


def image_input(model, images, bufs, keep=True) -> np.ndarray | None:
    """The buffer (B, D) of ``bufs`` that ``images`` (checked against ``model``) are converted into.

    With ``keep=False`` (no backward pass reads it) None where the first layer's
    GEMM converts into its own panels only (``K.forward_images_needs_x``).
    """
    if not keep and not K.forward_images_needs_x(len(images), model.dtype):
        return None
    if bufs.images is None:
        bufs.images = np.empty((len(images), model.n_inputs), dtype=model.dtype)
    return bufs.images


def backward_and_update(model, dlogits, x, images, bufs, optimizer, lr) -> None:
    """Backward pass from dL/dlogits (B, C) (overwritten), each layer updated by ``optimizer`` at rate ``lr``.

    ``x`` is the first layer's input (B, D), or None where ``images`` were not
    kept: the optimizer then gets the ImageBatch itself.
    """
    grads = bufs.grads
    acts = bufs.acts
    hidden = K.ACTIVATIONS[model.activation]
    dout = dlogits
    for l in range(len(model.linears) - 1, -1, -1):
        x_in = acts[l - 1] if l else (images if x is None else x)
        dx = grads[l - 1] if l else None  # no gradient for the input itself
        # x_in of a hidden layer is the activation's output: dx gets its derivative
        optimizer.update_layer(l, model.linears[l], dout, x_in, dx, hidden if l else 0, lr)
        dout = dx
