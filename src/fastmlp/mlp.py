"""The multi-layer perceptron: the course's ``forward``/``backward`` contract plus a fused ``train_step``.

Shapes: B batch, D n_inputs, H_l hidden widths, C n_classes, L linear layers.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from fastmlp import _kernels as K
from fastmlp._validation import as_float_2d, as_labels, check_dtype, check_positive_int
from fastmlp.images import ImageBatch
from fastmlp.modules import ACTIVATION_MODULES, INITS, IdentityModule, LinearModule, SigmoidModule, SoftMaxModule

__all__ = ["MLP"]

# Idle buffer sets are kept for this many distinct batch sizes (training batch, eval chunk, last chunk...),
# and at most this many per size (one per thread that called at once, up to the bound).
_MAX_BATCH_SIZES = 4
_MAX_IDLE_PER_SIZE = 4


# What a network setting was before it could be chosen: older checkpoints lack it.
_SETTINGS_BEFORE_CHOICE = {"activation": "relu", "output": "softmax"}

# Each output head: its course-contract module, its fused (loss, n_correct, dZ) kernel and its loss-only twin.
_HEADS = {
    "softmax": (SoftMaxModule, K.softmax_cross_entropy_forward_backward, K.softmax_cross_entropy_forward),
    "logistic": (SigmoidModule, K.logistic_cross_entropy_forward_backward, K.logistic_cross_entropy_forward),
    "identity": (IdentityModule, K.squared_error_forward_backward, K.squared_error_forward),
}


class _Buffers:
    """Scratch space for one pass over a batch of B rows.

    ``acts[l]`` (B, H_l) layer outputs, ``grads[l]`` (B, H_l) their gradients (not
    the output layer's), ``scratch`` (1, n) the forward GEMMs' work space or None,
    ``images`` (B, D) a converted :class:`ImageBatch` (made on first use) or None.
    """

    __slots__ = ("acts", "grads", "scratch", "images")

    def __init__(self, acts, grads, scratch):
        self.acts, self.grads, self.scratch, self.images = acts, grads, scratch, None


class _BufferPool:
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

    @contextlib.contextmanager
    def lent(self, batch):
        with self.lock:
            sets = self.idle.get(batch)
            bufs = sets.pop() if sets else None
        if bufs is None:
            bufs = self.make(batch)
        try:
            yield bufs
        finally:
            self._give(batch, bufs)

    def _give(self, batch, bufs):
        with self.lock:
            sets = self.idle.pop(batch, [])
            if len(sets) < _MAX_IDLE_PER_SIZE:
                sets.append(bufs)
            self.idle[batch] = sets  # now the most recently used size
            if len(self.idle) > _MAX_BATCH_SIZES:
                self.idle.pop(next(iter(self.idle)))


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
        The output head and its loss, fused as one kernel in ``train_step``:
        ``softmax`` with the cross-entropy (targets: class indices (B,) or one-hot
        (B, C)); ``logistic``, a sigmoid per output with the binary cross-entropy
        summed over the outputs (multilabel targets (B, C) in [0, 1]; with C = 1,
        two classes as scikit-learn fits them); ``identity`` with scikit-learn's
        squared loss, half the mean over rows and outputs (targets (B, C), or (B,)
        when C = 1; its gradient is scikit-learn's, C times that loss's).

    Attributes
    ----------
    layers : list
        ``[LinearModule, ReLUModule, ..., LinearModule, SoftMaxModule]`` (the course's order; the
        activation's and the output head's modules in place of ``ReLUModule`` and ``SoftMaxModule``).
    linears : list of LinearModule
        The parameterised layers, input to output.

    Notes
    -----
    ``forward``/``backward`` follow the course (probabilities out, module by
    module). ``train_step`` is the fast path: forward with fused bias+activation, the
    output head's fused loss and gradient, backward with the activation's derivative folded
    into each dX GEMM, and the optimizer update; it allocates nothing after its first
    call for a given batch size.

    Threads: inference (``predict_proba``, ``predict``, ``evaluate``,
    ``evaluate_batches``, ``forward``) may be called on one model from many
    threads at once and gives each caller exactly its serial result: every call
    borrows scratch buffers no other call holds. ``train_step`` from a second
    thread while one runs on the same model raises ``RuntimeError`` (training
    several models, one per thread, is fine and gives bitwise the serial
    results). Inference concurrent with training sees weights mid-update.
    ``backward`` uses what the last ``forward`` kept: one thread per model.
    """

    def __init__(self, n_inputs, n_hidden, n_classes, *, dtype=np.float64, seed=None, init="normal",
                 activation="relu", output="softmax"):
        self.n_inputs = check_positive_int("n_inputs", n_inputs)
        self.n_classes = check_positive_int("n_classes", n_classes)
        if isinstance(n_hidden, (int, np.integer)) or n_hidden is None:
            raise TypeError(f"n_hidden: expected a sequence of layer widths (e.g. [100] or []), got {n_hidden!r}")
        self.n_hidden = [check_positive_int(f"n_hidden[{i}]", h) for i, h in enumerate(n_hidden)]
        self.dtype = check_dtype(dtype)
        if init not in INITS:
            raise ValueError(f"init: expected one of {INITS}, got {init!r}")
        self.init = init
        if activation not in ACTIVATION_MODULES:
            raise ValueError(f"activation: expected one of {tuple(ACTIVATION_MODULES)}, got {activation!r}")
        self.activation = activation
        if output not in _HEADS:
            raise ValueError(f"output: expected one of {tuple(_HEADS)}, got {output!r}")
        self.output = output
        rng = np.random.default_rng(seed)
        sizes = [self.n_inputs, *self.n_hidden, self.n_classes]
        self.linears = [
            LinearModule(i, o, dtype=self.dtype, seed=rng, init=init) for i, o in zip(sizes[:-1], sizes[1:])
        ]
        self.layers = []
        for lin in self.linears[:-1]:
            self.layers += [lin, ACTIVATION_MODULES[activation]()]
        self.layers += [self.linears[-1], _HEADS[output][0]()]
        self.last_batch_correct = None
        self._start_threads_state()

    def _start_threads_state(self):
        self._buffers = _BufferPool(self._new_buffers)
        self._training = threading.Lock()  # held by the one train_step running

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
        del state["_buffers"], state["_training"]  # scratch space and a lock: made afresh
        return state

    def __setstate__(self, state):
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

    def _new_buffers(self, batch):
        widths = [lin.out_features for lin in self.linears]
        acts = [np.empty((batch, w), dtype=self.dtype) for w in widths]
        grads = [np.empty((batch, w), dtype=self.dtype) for w in widths[:-1]]
        # Forward scratch: the transposed GEMM of small batches and the partial sums of a K-split.
        sizes = [self.n_inputs, *widths]
        need = max(K.forward_scratch_size(batch, i, o) for i, o in zip(sizes[:-1], sizes[1:]))
        scratch = np.empty((1, need), dtype=self.dtype) if need else None
        return _Buffers(acts, grads, scratch)

    def _logits_into(self, x, bufs, images=None):
        """Forward pass of x (B, D) into the activation buffers; returns the logits buffer (B, C).

        With ``images`` (an :class:`ImageBatch`), the first layer converts them into x first.
        """
        acts, scratch = bufs.acts, bufs.scratch
        last = len(self.linears) - 1
        hidden = K.ACTIVATIONS[self.activation]
        h = x
        for l, lin in enumerate(self.linears):
            w, b = lin.weight_and_bias()
            act = hidden if l < last else 0  # the output layer's logits: no activation
            if l == 0 and images is not None:
                K.linear_forward_images(acts[0], x, images.pixels, images.index, images.offset, images.scale, w, b,
                                        act, scratch)
            else:
                K.linear_forward(acts[l], h, w, b, act, scratch)
            h = acts[l]
        return h

    def _check_images(self, images):
        """The :class:`ImageBatch` ``images``, checked against the model."""
        if images.pixels.shape[1] != self.n_inputs:
            raise ValueError(f"x: expected images of {self.n_inputs} values each, got {images.pixels.shape[1]}")
        if images.dtype != self.dtype:
            raise ValueError(f"x: expected an ImageBatch converting to {self.dtype}, got {images.dtype}")
        return images

    def _image_input(self, images, bufs, keep=True) -> np.ndarray | None:
        """The buffer (B, D) of ``bufs`` that ``images`` (checked) are converted into.

        With ``keep=False`` (no backward pass follows) None where the first layer's
        GEMM converts into its own panels only (``K.forward_images_needs_x``).
        """
        if not keep and not K.forward_images_needs_x(len(images), self.dtype):
            return None
        if bufs.images is None:
            bufs.images = np.empty((len(images), self.n_inputs), dtype=self.dtype)
        return bufs.images

    def train_step(self, x, y, optimizer, sample_weight=None) -> float:
        """One optimisation step on the batch (x, y); returns its (weighted) mean loss before the update.

        Parameters
        ----------
        x : array (B, D), or fastmlp.images.ImageBatch
            Converted once to the model's dtype if needed. An ImageBatch (uint8
            rows and their offset/scale in the model's dtype) is converted by
            the first layer itself: through OpenBLAS with the same numbers as
            ``x.to_array()``; in float32 above 32 rows on AVX-512, by fastmlp's
            own GEMM, which with plain SGD also updates the first layer from the
            pixels (sums within float32 rounding of OpenBLAS's; see
            ``fastmlp._kernels.images_gemm``).
        y : array
            Targets of the output head (see the class docstring): for softmax int
            class indices (B,) or one-hot (B, C); for logistic (B, C) in [0, 1];
            for identity (B, C), or (B,) with one output.
        optimizer : fastmlp.optim.SGD or Adam built on this model
            Plain SGD is folded into the backward GEMMs (``grads`` are then not
            written); other optimizers get ``grads`` filled and ``step()`` called.
        sample_weight : array (B,) or None
            Per-row weights (finite, >= 0, a positive sum): the loss is
            sum_b w_b loss_b / sum_b w_b and row b's gradient is scaled by
            w_b / sum_b w_b instead of 1/B, scikit-learn's MLP convention (a row
            of weight 0 has no influence; weight 2 counts as the row twice).

        Modifies in place: every parameter, the optimizer state, and (for
        non-fused optimizers) every ``grads`` array. ``last_batch_correct``
        holds how many rows of the batch (of positive weight) were classified
        right (before the update; every output right for logistic, 0 for identity).
        """
        if getattr(optimizer, "model", None) is not self:
            raise ValueError("optimizer: it was built for a different model; pass an optimizer built on this MLP")
        if not self._training.acquire(blocking=False):
            raise RuntimeError("train_step: this MLP is being trained by another thread at this moment; train a "
                               "model from one thread at a time (give each thread its own model)")
        try:
            images = self._check_images(x) if isinstance(x, ImageBatch) else None
            x = None if images is not None else as_float_2d("x", x, self.dtype, self.n_inputs)
            batch = len(images) if images is not None else x.shape[0]
            targets = self._targets(y, batch)
            weights = None if sample_weight is None else self._sample_weight(sample_weight, batch)
            with self._buffers.lent(batch) as bufs:
                return self._train_step(x, images, targets, weights, optimizer, bufs)
        finally:
            self._training.release()

    def _targets(self, y, batch) -> np.ndarray:
        """``y`` checked for the output head: int64 labels (B,) for softmax, else (B, C) in the model's dtype."""
        if self.output == "softmax":
            return as_labels("y", y, batch, self.n_classes)
        arr = np.asarray(y)
        if arr.ndim == 1 and self.n_classes == 1:
            arr = arr.reshape(-1, 1)
        t = as_float_2d("y", arr, self.dtype, self.n_classes)
        if t.shape[0] != batch:
            raise ValueError(f"y: expected {batch} rows of targets (one per row of x), got {t.shape[0]}")
        if not np.isfinite(t).all():
            raise ValueError("y: expected finite target values, got NaN or inf")
        if self.output == "logistic" and not ((t >= 0) & (t <= 1)).all():
            raise ValueError(f"y: expected targets in [0, 1] for output='logistic', got values in "
                             f"[{t.min()}, {t.max()}]")
        return t

    def _sample_weight(self, sample_weight, batch) -> np.ndarray:
        """``sample_weight`` checked: (B,) in the model's dtype, finite, >= 0, with a positive sum."""
        w = np.asarray(sample_weight)
        if w.dtype.kind not in "biuf":
            raise TypeError(f"sample_weight: expected a real numeric array, got dtype {w.dtype}")
        if w.shape != (batch,):
            raise ValueError(f"sample_weight: expected shape ({batch},) (one weight per row of x), got {w.shape}")
        w = w.astype(self.dtype, copy=False)
        if not (np.isfinite(w).all() and (w >= 0).all()):
            raise ValueError("sample_weight: expected finite weights >= 0, got a negative, NaN or inf weight")
        if not w.sum() > 0:
            raise ValueError("sample_weight: expected a positive sum, got all zeros")
        return w

    def _train_step(self, x, images, targets, weights, optimizer, bufs) -> float:
        """:meth:`train_step` on checked inputs (x None for ``images``), in the buffer set ``bufs``."""
        fused = optimizer.fused
        if images is not None:  # fused SGD can update the first layer from the pixels themselves
            x = self._image_input(images, bufs, keep=not fused)
        logits = self._logits_into(x, bufs, images)
        # dL/dlogits overwrites the logits buffer: the logits are not needed again.
        loss, correct = _HEADS[self.output][1](logits, logits, targets, weights=weights)
        self.last_batch_correct = correct
        if not np.isfinite(loss):
            return float(loss)  # leave the parameters as they were; the caller decides

        acts, grads = bufs.acts, bufs.grads
        hidden = K.ACTIVATIONS[self.activation]
        dout = logits
        for l in range(len(self.linears) - 1, -1, -1):
            lin = self.linears[l]
            w, b = lin.weight_and_bias()
            x_in = acts[l - 1] if l > 0 else x
            dx = grads[l - 1] if l > 0 else None  # no gradient for the input itself
            if x_in is None:  # the first layer's converted batch was not kept
                K.linear_backward_sgd_images(w, b, dout, images.pixels, images.index, images.offset, images.scale,
                                             optimizer.lr, optimizer.weight_decay)
            elif fused:  # x_in of a hidden layer is the activation's output: dx gets its derivative
                K.linear_backward_sgd(w, b, dx, dout, x_in, optimizer.lr, optimizer.weight_decay, hidden if l else 0)
            else:
                dw, db = lin.grad_buffers()
                K.linear_backward(dw, db, dx, dout, x_in, w, hidden if l else 0)
            dout = dx
        if not fused:
            optimizer.step()
        return float(loss)

    def evaluate(self, x, y, batch_size=1000):
        """Mean loss and accuracy of the model on (x, y), in chunks of ``batch_size``.

        x (N, D); y the output head's targets (see ``train_step``). Returns (loss,
        accuracy) as floats, accuracy NaN for the identity head (no classes).
        """
        x = as_float_2d("x", x, self.dtype, self.n_inputs)
        labels = self._targets(y, x.shape[0])
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
            images = self._check_images(xb) if isinstance(xb, ImageBatch) else None
            xb = None if images is not None else as_float_2d("x", xb, self.dtype, self.n_inputs)
            rows = len(images) if images is not None else xb.shape[0]
            targets = self._targets(yb, rows)
            with self._buffers.lent(rows) as bufs:
                if images is not None:
                    xb = self._image_input(images, bufs, keep=False)
                loss, correct = _HEADS[self.output][2](self._logits_into(xb, bufs, images), targets)
            total_loss += loss * rows
            total_correct += correct
            n += rows
        if n == 0:
            raise ValueError("batches: expected at least one batch, got none")
        return total_loss / n, (total_correct / n if self.output != "identity" else float("nan"))

    def predict_proba(self, x, batch_size=1000):
        """The output head's values (N, C) for x (N, D), without keeping anything for backward.

        Class probabilities (softmax), each output's probability (logistic), or
        the predicted targets (identity).
        """
        x = as_float_2d("x", x, self.dtype, self.n_inputs)
        batch_size = check_positive_int("batch_size", batch_size)
        out = np.empty((x.shape[0], self.n_classes), dtype=self.dtype)
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size]
            with self._buffers.lent(xb.shape[0]) as bufs:
                _HEADS[self.output][0].forward_kernel(out[start : start + xb.shape[0]], self._logits_into(xb, bufs))
        return out

    def predict(self, x, batch_size=1000):
        """Predicted class indices (N,) int64 (softmax); 0/1 labels (N, C) int64 (logistic); targets (N, C) (identity)."""
        out = self.predict_proba(x, batch_size)
        if self.output == "softmax":
            return out.argmax(axis=1).astype(np.int64)
        return (out > 0.5).astype(np.int64) if self.output == "logistic" else out
