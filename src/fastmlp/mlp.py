"""The multi-layer perceptron: the course's ``forward``/``backward`` contract plus a fused ``train_step``.

``forward``/``backward`` follow the course (probabilities out, module by
module). ``train_step`` is the fast path (:mod:`fastmlp.fused`): forward with
fused bias+activation, the output head's fused loss and gradient
(:mod:`fastmlp.heads`), backward with the activation's derivative folded into
each dX GEMM and each layer updated by the optimizer; it allocates nothing after
its first call for a given batch size.

Threads: inference (``predict_proba``, ``predict``, ``evaluate``,
``evaluate_batches``, ``forward``) may be called on one model from many
threads at once and gives each caller exactly its serial result: every call
borrows scratch buffers no other call holds. ``train_step`` from a second
thread while one runs on the same model raises ``RuntimeError`` (training
several models, one per thread, is fine and gives bitwise the serial
results). Inference concurrent with training sees weights mid-update.
``backward`` uses what the last ``forward`` kept: one thread per model.

Shapes: B batch, D n_inputs, H_l hidden widths, C n_classes, L linear layers.
"""
from __future__ import annotations

import functools
import math
import threading
from typing import NamedTuple

import numpy as np

from fastmlp import fused
from fastmlp._validation import as_float_2d, check_dtype, check_network_size, check_positive_int
from fastmlp.images import ImageBatch
from fastmlp.heads import HEADS, check_sample_weight, check_targets
from fastmlp.modules import ACTIVATION_MODULES, INITS, LinearModule

__all__ = ["MLP", "StepResult"]

# What a network setting was before it could be chosen: older checkpoints lack it.
_SETTINGS_BEFORE_CHOICE = {"activation": "relu", "output": "softmax"}


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")
    return value


class StepResult(NamedTuple):
    """What :meth:`MLP.train_step` measured on its batch, before the update."""

    #: The batch's (weighted) mean loss.
    loss: float
    #: How many rows (of positive weight) were predicted right: the arg-max class for softmax,
    #: every output for logistic, 0 for identity (no classes).
    correct: int


class MLP:
    """Linear hidden layers with an activation (ReLU by default), a linear output layer and an output head.

    Parameters
    ----------
    n_inputs : int
        Width D of the input rows.
    n_hidden : sequence of int
        Hidden layer widths; ``[]`` gives multinomial logistic regression.
    n_classes : int
        Number of outputs C: classes (softmax), labels (logistic; 1 for two classes) or targets (identity).
    dtype : float32 or float64, default float64
        Every parameter, gradient and buffer uses it; inputs are converted to it once.
    seed : int, numpy Generator or None
        Seeds the weight initialisation.
    init : {"normal", "kaiming", "xavier"}, default "normal"
        Weight initialisation (``normal`` is the course's N(0, 0.0001^2)); biases start at zero.
    activation : {"relu", "tanh", "logistic", "identity"}, default "relu"
        The hidden layers' activation; every one runs fused into the layer's
        GEMMs in ``train_step`` and inference, as the ReLU does.
    output : {"softmax", "logistic", "identity"}, default "softmax"
        The output head and its loss, fused as one kernel in ``train_step`` (see
        :mod:`fastmlp.heads`: the softmax cross-entropy, logistic outputs with the
        binary cross-entropy, or scikit-learn's squared loss).

    Attributes
    ----------
    layers : list
        ``[LinearModule, ReLUModule, ..., LinearModule, SoftMaxModule]`` (the course's order; the
        activation's and the output head's modules in place of ``ReLUModule`` and ``SoftMaxModule``).
    linears : list of LinearModule
        The parameterised layers, input to output.
    """

    def __init__(self, n_inputs, n_hidden, n_classes, *, dtype=np.float64, seed=None, init="normal",
                 activation="relu", output="softmax"):
        self.n_inputs = check_positive_int("n_inputs", n_inputs)
        self.n_classes = check_positive_int("n_classes", n_classes)
        if isinstance(n_hidden, (int, np.integer)) or n_hidden is None:
            raise TypeError(f"n_hidden: expected a sequence of layer widths (e.g. [100] or []), got {n_hidden!r}")
        self.n_hidden = [check_positive_int(f"n_hidden[{i}]", h) for i, h in enumerate(n_hidden)]
        self.dtype = check_dtype(dtype)
        self.init = _check_choice("init", init, INITS)
        self.activation = _check_choice("activation", activation, ACTIVATION_MODULES)
        self.output = _check_choice("output", output, HEADS)
        # before any allocation: a size no machine holds gets a message naming it, not a MemoryError
        check_network_size(self.n_inputs, self.n_hidden, self.n_classes, self.dtype.itemsize,
                           label=f"n_hidden {self.n_hidden}")
        rng = np.random.default_rng(seed)
        sizes = [self.n_inputs, *self.n_hidden, self.n_classes]
        self.linears = [
            LinearModule(i, o, dtype=self.dtype, seed=rng, init=init) for i, o in zip(sizes[:-1], sizes[1:])
        ]
        self.layers = []
        for lin in self.linears[:-1]:
            self.layers += [lin, ACTIVATION_MODULES[activation]()]
        self.layers += [self.linears[-1], HEADS[output].module()]
        self._start_threads_state()

    def _start_threads_state(self):
        make = functools.partial(fused.new_buffers, self)
        self._buffers = fused.BufferPool(make)
        self._training = threading.Lock()  # held by the one train_step running
        self._step_buffers = fused.OwnBuffers(make)  # train_step's own, used under that lock

    def __repr__(self):
        extra = "".join(f", {key}={value!r}" for key, value in self.network_settings().items()
                        if value != _SETTINGS_BEFORE_CHOICE[key])
        return f"MLP({self.n_inputs}, {self.n_hidden}, {self.n_classes}, dtype={self.dtype.name}{extra})"

    # -- parameters -------------------------------------------------------

    def named_parameters(self):
        """Yield (name, module, key) for every parameter, e.g. ("layers.0.weight", linear, "weight")."""
        for idx, layer in enumerate(self.layers):
            if isinstance(layer, LinearModule):
                yield f"layers.{idx}.weight", layer, "weight"
                yield f"layers.{idx}.bias", layer, "bias"

    def network_settings(self) -> dict[str, str]:
        """What the weights alone do not say about the network, for a checkpoint: its activation and output."""
        return {"activation": self.activation, "output": self.output}

    def check_network_settings(self, settings) -> None:
        """Raise ValueError unless ``settings`` (from :meth:`network_settings`) describe this network.

        A missing key means the value every network had before it could be chosen ("relu", "softmax").
        """
        for key, value in self.network_settings().items():
            recorded = settings.get(key, _SETTINGS_BEFORE_CHOICE[key])
            if recorded != value:
                raise ValueError(f"{key}: the checkpoint's network uses {recorded!r}, this one {value!r}")

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter, keyed by :meth:`named_parameters` names."""
        return {name: module.params[key].copy() for name, module, key in self.named_parameters()}

    def load_state_dict(self, state) -> None:
        """Copy parameters from ``state`` (same keys and shapes) into the live ``params`` arrays."""
        expected = {name: (module, key) for name, module, key in self.named_parameters()}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise KeyError(f"state: missing keys {missing}, unexpected keys {unexpected}")
        for name, (module, key) in expected.items():
            value = np.asarray(state[name])
            target = module.params[key]
            if value.shape != target.shape:
                raise ValueError(f"state[{name!r}]: expected shape {target.shape}, got {value.shape}")
            target[...] = value

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_buffers"], state["_training"], state["_step_buffers"]  # scratch space and a lock: made afresh
        return state

    def __setstate__(self, state):
        state = {key: value for key, value in state.items() if key != "last_batch_correct"}  # an older side channel
        self.__dict__.update({**_SETTINGS_BEFORE_CHOICE, **state})  # pickles from before the settings existed
        self._start_threads_state()

    # -- the course's contract ---------------------------------------------

    def forward(self, x):
        """x (B, D) -> class probabilities (B, C), keeping what ``backward`` needs."""
        out = as_float_2d("x", x, self.dtype, self.n_inputs)
        for layer in self.layers:
            out = layer.forward(out)
        return out

    def backward(self, dout):
        """dout (B, C) = dL/dprobs -> dL/dx (B, D); fills every LinearModule's ``grads``."""
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        return dout

    # -- fast paths -----------------------------------------------------------

    def _batch(self, x, y):
        """(x (B, D) or None, an ImageBatch or None, the head's targets) of one batch, checked against the model."""
        if not isinstance(x, ImageBatch):
            x = as_float_2d("x", x, self.dtype, self.n_inputs)
            return x, None, check_targets(self.output, y, x.shape[0], self.n_classes, self.dtype)
        if x.pixels.shape[1] != self.n_inputs:
            raise ValueError(f"x: expected images of {self.n_inputs} values each, got {x.pixels.shape[1]}")
        if x.dtype != self.dtype:
            raise ValueError(f"x: expected an ImageBatch converting to {self.dtype}, got {x.dtype}")
        return None, x, check_targets(self.output, y, len(x), self.n_classes, self.dtype)

    def train_step(self, x, y, optimizer, *, lr=None, sample_weight=None) -> StepResult:
        """One optimisation step on the batch (x, y); returns its loss and right answers before the update.

        Parameters
        ----------
        x : array (B, D), or fastmlp.images.ImageBatch
            Converted once to the model's dtype if needed; an ImageBatch (uint8
            rows) by the first layer itself (see :mod:`fastmlp.images`).
        y : array
            Targets of the output head (:func:`fastmlp.heads.check_targets` says which).
        optimizer : fastmlp.optim optimizer built on this model
            It updates each layer (:meth:`fastmlp.optim.Optimizer.update_layer`): plain SGD
            inside the backward GEMMs (``grads`` not written), the others from the ``grads`` they fill.
        lr : float or None
            This update's learning rate (e.g. a schedule's value); None: the
            optimizer's own ``lr``.
        sample_weight : array (B,) or None
            Per-row weights (finite, >= 0, a positive sum): the loss is
            sum_b w_b loss_b / sum_b w_b and row b's gradient is scaled by
            w_b / sum_b w_b instead of 1/B, scikit-learn's MLP convention (a row
            of weight 0 has no influence; weight 2 counts as the row twice).

        Returns
        -------
        StepResult
            ``(loss, correct)``. A NaN or infinite loss leaves the parameters and the optimizer as they were.
        """
        if not self._training.acquire(blocking=False):
            raise RuntimeError("train_step: this MLP is being trained by another thread at this moment; train a "
                               "model from one thread at a time (give each thread its own model)")
        try:
            x, images, targets = self._batch(x, y)
            weights = None if sample_weight is None else check_sample_weight(sample_weight, len(targets), self.dtype)
            bufs = self._step_buffers.get(len(targets))
            if images is not None:  # fused SGD can update the first layer from the pixels themselves
                x = fused.image_input(self, images, bufs, keep=optimizer.keeps_inputs())
            logits = fused.logits_into(self, x, bufs, images)
            # dL/dlogits overwrites the logits buffer: the logits are not needed again.
            loss, correct = HEADS[self.output].step(logits, logits, targets, weights=weights)
            if math.isfinite(loss):
                fused.backward_and_update(self, logits, x, images, bufs, optimizer, optimizer.begin_step(self, lr))
            return StepResult(float(loss), int(correct))
        finally:
            self._training.release()

    def evaluate(self, x, y, batch_size=1000):
        """Mean loss and accuracy of the model on (x, y), in chunks of ``batch_size``.

        x (N, D); y the output head's targets (see ``train_step``). Returns (loss,
        accuracy) as floats, accuracy NaN for the identity head (no classes).
        """
        x = as_float_2d("x", x, self.dtype, self.n_inputs)
        labels = check_targets(self.output, y, x.shape[0], self.n_classes, self.dtype)
        batch_size = check_positive_int("batch_size", batch_size)
        chunks = ((x[s : s + batch_size], labels[s : s + batch_size]) for s in range(0, x.shape[0], batch_size))
        return self.evaluate_batches(chunks)

    def evaluate_batches(self, batches):
        """Mean loss and accuracy (as :meth:`evaluate`) over an iterable of (x (b, D), y) batches.

        For data that is converted batch by batch (``fastmlp.data.DataSet.batches``):
        each x is used before the next is asked for. An x may also be an
        :class:`~fastmlp.images.ImageBatch` (``DataSet.image_batches``): the first
        layer then converts it inside its GEMM. Returns (loss, accuracy) as floats.
        """
        total_loss, total_correct, n = 0.0, 0, 0
        for xb, yb in batches:
            xb, images, targets = self._batch(xb, yb)
            with self._buffers.lent(len(targets)) as bufs:
                if images is not None:
                    xb = fused.image_input(self, images, bufs, keep=False)
                loss, correct = HEADS[self.output].loss(fused.logits_into(self, xb, bufs, images), targets)
            total_loss += loss * len(targets)
            total_correct += correct
            n += len(targets)
        if n == 0:
            raise ValueError("batches: expected at least one batch, got none")
        return total_loss / n, (total_correct / n if self.output != "identity" else float("nan"))

    def predict_proba(self, x, batch_size=1000):
        """The output head's values (N, C) for x (N, D), keeping nothing for backward: class probabilities
        (softmax), each output's probability (logistic), or the predicted targets (identity)."""
        x = as_float_2d("x", x, self.dtype, self.n_inputs)
        batch_size = check_positive_int("batch_size", batch_size)
        out = np.empty((x.shape[0], self.n_classes), dtype=self.dtype)
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size]
            with self._buffers.lent(xb.shape[0]) as bufs:
                logits = fused.logits_into(self, xb, bufs)
                HEADS[self.output].module.forward_kernel(out[start : start + xb.shape[0]], logits)
        return out

    def predict(self, x, batch_size=1000):
        """Predicted class indices (N,) int64 (softmax); 0/1 labels (N, C) int64 (logistic); targets (N, C) (identity)."""
        out = self.predict_proba(x, batch_size)
        if self.output == "softmax":
            return out.argmax(axis=1).astype(np.int64)
        return (out > 0.5).astype(np.int64) if self.output == "logistic" else out
