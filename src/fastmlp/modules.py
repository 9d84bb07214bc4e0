"""The course's layer API (``forward``/``backward``, ``params``/``grads`` dicts) over Cython kernels.

Shapes: B batch, I in_features, O out_features, C classes. Every module keeps
what its backward pass needs from the last ``forward`` call; ``backward``
before ``forward`` raises ``RuntimeError``. Inputs of another dtype are
converted once to the module's dtype (float32 or float64): a model's dtype is
never silently upcast.
"""
from __future__ import annotations

import numpy as np

from fastmlp import _kernels as K
from fastmlp._validation import as_float_2d, as_labels, check_dtype, check_param, check_positive_int

__all__ = [
    "CrossEntropyModule",
    "IdentityModule",
    "LinearModule",
    "ReLUModule",
    "SigmoidModule",
    "SoftMaxModule",
    "SoftmaxCrossEntropyModule",
    "TanhModule",
    "init_weight",
]

INITS = ("normal", "kaiming", "xavier")


def init_weight(rng: np.random.Generator, out_features: int, in_features: int, init: str, std: float = 1e-4):
    """A float64 weight (O, I): ``normal`` N(0, std^2) (the course's, std=1e-4),
    ``kaiming`` N(0, 2/I) (He, for ReLU), ``xavier`` N(0, 2/(I+O)) (Glorot)."""
    if init == "normal":
        scale = std
    elif init == "kaiming":
        scale = np.sqrt(2.0 / in_features)
    elif init == "xavier":
        scale = np.sqrt(2.0 / (in_features + out_features))
    else:
        raise ValueError(f"init: expected one of {INITS}, got {init!r}")
    return scale * rng.standard_normal((out_features, in_features))


def _need_forward(module, attr):
    value = getattr(module, attr, None)
    if value is None:
        raise RuntimeError(f"{type(module).__name__}.backward called before forward")
    return value


def _same_arrays(pair, checked):
    return checked is not None and pair[0] is checked[0] and pair[1] is checked[1]


class LinearModule:
    """y = x W^T + b.

    Parameters
    ----------
    in_features, out_features : int
    dtype : float32 or float64, default float64
    seed : int, numpy Generator or None
        Seeds the weight initialisation.
    init : {"normal", "kaiming", "xavier"}, default "normal"
        ``normal`` is the course's N(0, 0.0001^2); biases start at zero.

    Attributes
    ----------
    params : dict
        ``"weight"`` (O, I) and ``"bias"`` (O,). ``forward`` reads them live on
        every call, so in-place edits (or replacing them with arrays of the
        same shape and dtype) take effect.
    grads : dict
        Same keys and shapes; ``backward`` overwrites them in place.
    """

    def __init__(self, in_features, out_features, *, dtype=np.float64, seed=None, init="normal", std=1e-4):
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.dtype = check_dtype(dtype)
        rng = np.random.default_rng(seed)
        weight = init_weight(rng, self.out_features, self.in_features, init, std)
        self.params = {
            "weight": np.ascontiguousarray(weight, dtype=self.dtype),
            "bias": np.zeros(self.out_features, dtype=self.dtype),
        }
        self.grads = {key: np.zeros_like(value) for key, value in self.params.items()}
        self._x = None

    def __repr__(self):
        return f"LinearModule({self.in_features}, {self.out_features}, dtype={self.dtype.name})"

    # The (weight, bias) pairs of params and grads last checked: the same arrays are not checked again, so a
    # training step pays for the checks once per replaced array. (An array changed in place to another shape
    # or made read-only is then refused by the kernels themselves.)
    _checked_params = _checked_grads = None

    def weight_and_bias(self):
        """The live ``params`` arrays, checked (shape, dtype, C order, writeable): (W (O, I), b (O,))."""
        pair = (self.params.get("weight"), self.params.get("bias"))
        if not _same_arrays(pair, self._checked_params):
            self._checked_params = self._check_pair("params", pair)
        return self._checked_params

    def grad_buffers(self):
        """The live ``grads`` arrays, checked as :meth:`weight_and_bias` checks ``params``: (dW (O, I), db (O,))."""
        pair = (self.grads.get("weight"), self.grads.get("bias"))
        if not _same_arrays(pair, self._checked_grads):
            self._checked_grads = self._check_pair("grads", pair)
        return self._checked_grads

    def _check_pair(self, what, pair):
        name = f"{type(self).__name__}.{what}"
        return (check_param(name, "weight", pair[0], (self.out_features, self.in_features), self.dtype),
                check_param(name, "bias", pair[1], (self.out_features,), self.dtype))

    def forward(self, x):
        """x (B, I) -> out (B, O) = x W^T + b. Keeps x for ``backward``."""
        x = as_float_2d("x", x, self.dtype, self.in_features)
        w, b = self.weight_and_bias()
        out = np.empty((x.shape[0], self.out_features), dtype=self.dtype)
        K.linear_forward(out, x, w, b)
        self._x = x
        return out

    def backward(self, dout):
        """dout (B, O) -> dx (B, I) = dout W; fills ``grads`` (dW = dout^T x, db = sum_b dout)."""
        x = _need_forward(self, "_x")
        dout = as_float_2d("dout", dout, self.dtype, self.out_features)
        if dout.shape[0] != x.shape[0]:
            raise ValueError(f"dout: expected shape ({x.shape[0]}, {self.out_features}) to match the forward batch, got {dout.shape}")
        w, _ = self.weight_and_bias()
        dw, db = self.grad_buffers()
        dx = np.empty_like(x, dtype=self.dtype, order="C")
        K.linear_backward(dw, db, dx, dout, x, w)
        return dx


class _ElementwiseModule:
    """A parameter-free module y = f(x) over (B, D) arrays whose backward needs only its output.

    Subclasses name the kernel pair: ``forward_kernel(out, x)`` and
    ``backward_kernel(dx, dout, out)``. Float32 and float64 inputs keep their
    dtype; other numeric inputs are computed in float64.
    """

    forward_kernel = None
    backward_kernel = None

    def __init__(self):
        self._out = None

    def forward(self, x):
        x = np.asarray(x)
        dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
        x = as_float_2d("x", x, dtype)
        out = np.empty(x.shape, dtype=dtype)
        type(self).forward_kernel(out, x)
        self._out = out
        return out

    def backward(self, dout):
        out = _need_forward(self, "_out")
        dout = as_float_2d("dout", dout, out.dtype, out.shape[1])
        if dout.shape != out.shape:
            raise ValueError(f"dout: expected shape {out.shape} (the forward output's), got {dout.shape}")
        dx = np.empty_like(out)
        type(self).backward_kernel(dx, dout, out)
        return dx


class ReLUModule(_ElementwiseModule):
    """out = max(x, 0) on x (B, D); backward: dx = dout * (out > 0)."""

    forward_kernel = K.relu_forward
    backward_kernel = K.relu_backward


class TanhModule(_ElementwiseModule):
    """out = tanh(x) on x (B, D); backward: dx = dout * (1 - out^2)."""

    forward_kernel, backward_kernel = K.tanh_forward, K.tanh_backward


class SigmoidModule(_ElementwiseModule):
    """out = 1 / (1 + exp(-x)) on x (B, D) (the logistic; no overflow); backward: dx = dout * out (1 - out)."""

    forward_kernel, backward_kernel = K.logistic_forward, K.logistic_backward


class IdentityModule(_ElementwiseModule):
    """out = x on x (B, D) (a copy); backward: dx = dout. A linear model's "activation"."""

    forward_kernel, backward_kernel = K.identity_forward, K.identity_backward


# The module of each hidden activation an MLP takes (fastmlp._kernels.ACTIVATIONS names the same four).
ACTIVATION_MODULES = {"relu": ReLUModule, "tanh": TanhModule, "logistic": SigmoidModule, "identity": IdentityModule}


class SoftMaxModule(_ElementwiseModule):
    """Row-wise softmax of logits x (B, C), the row max subtracted first (exact, and no overflow).

    backward: dx = p * (dout - sum_c dout p), dout = dL/dprobs (B, C).
    """

    forward_kernel = K.softmax_forward
    backward_kernel = K.softmax_backward


def _probs_and_targets(x, y):
    x = np.asarray(x)
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
    x = as_float_2d("x", x, dtype)
    y = np.asarray(y)
    if y.ndim == 1:  # class indices: expand to one-hot
        labels = as_labels("y", y, x.shape[0], x.shape[1])
        if labels.size and (labels.min() < 0 or labels.max() >= x.shape[1]):
            raise ValueError(f"y: expected class indices in [0, {x.shape[1]}), got values in [{labels.min()}, {labels.max()}]")
        t = np.zeros_like(x)
        t[np.arange(x.shape[0]), labels] = 1
    else:
        t = as_float_2d("y", y, dtype, x.shape[1])
        if t.shape[0] != x.shape[0]:
            raise ValueError(f"y: expected shape {x.shape} to match x, got {t.shape}")
    return x, t


class CrossEntropyModule:
    """L = -(1/B) sum_{b,c} y log x on probabilities x (the course's contract).

    ``y`` is one-hot (B, C) (soft targets work too) or class indices (B,).
    Probabilities are floored at the dtype's smallest normal number, so a zero
    probability gives a large finite loss rather than inf.
    """

    def forward(self, x, y):
        """x (B, C) probabilities, y targets -> mean loss (float)."""
        x, t = _probs_and_targets(x, y)
        return K.cross_entropy_forward(x, t, float(np.finfo(x.dtype).tiny))

    def backward(self, x, y):
        """dL/dx (B, C) = -y / (B x)."""
        x, t = _probs_and_targets(x, y)
        dx = np.empty_like(x, order="C")
        K.cross_entropy_backward(dx, x, t, float(np.finfo(x.dtype).tiny))
        return dx


class SoftmaxCrossEntropyModule:
    """The fused, numerically stable loss on logits: mean(logsumexp(z) - z_y).

    ``forward(z, y)`` takes logits z (B, C) and labels as int class indices (B,)
    or one-hot (B, C); ``backward()`` returns dL/dz = (softmax(z) - onehot) / B,
    computed in the same pass as the loss. ``n_correct`` holds how many rows of
    the last batch had their largest logit at the label.
    """

    def __init__(self):
        self._dz = None
        self.n_correct = None

    def forward(self, z, y):
        z = np.asarray(z)
        dtype = z.dtype if z.dtype in (np.float32, np.float64) else np.float64
        z = as_float_2d("z", z, dtype)
        labels = as_labels("y", y, z.shape[0], z.shape[1])
        dz = np.empty(z.shape, dtype=dtype)
        loss, self.n_correct = K.softmax_cross_entropy_forward_backward(dz, z, labels)
        self._dz = dz
        return loss

    def backward(self):
        return _need_forward(self, "_dz").copy()
