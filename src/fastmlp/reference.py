"""Plain-NumPy reference of every fastmlp kernel: the tests' oracle and the benchmark baseline.

Each function mirrors a hook of ``fastmlp._kernels`` with the same maths, written
for clarity (whole-array NumPy expressions, new arrays returned). Shapes:
B batch, I in_features, O out_features, C classes.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "ReferenceMLP",
    "adam_update",
    "adam_update_layer",
    "convert_images",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "identity_backward",
    "identity_forward",
    "linear_backward",
    "linear_backward_sgd_images",
    "linear_forward",
    "linear_forward_images",
    "logistic_backward",
    "logistic_cross_entropy",
    "logistic_forward",
    "pixel_sums",
    "relu_backward",
    "relu_forward",
    "sgd_update",
    "sgd_update_layer",
    "softmax_backward",
    "softmax_cross_entropy",
    "softmax_forward",
    "squared_error",
    "tanh_backward",
    "tanh_forward",
]


def linear_forward(x, weight, bias):
    """y (B, O) = x (B, I) @ weight (O, I)^T + bias (O,)."""
    return x @ weight.T + bias


def convert_images(pixels, index, offset, scale=None):
    """x (B, D) = (pixels[index] - offset) / scale in offset's dtype; pixels (N, D) uint8, index None: all rows."""
    rows = pixels if index is None else pixels[index]
    x = np.subtract(rows, offset, dtype=offset.dtype)
    return x if scale is None else x / scale


def pixel_sums(pixels):
    """totals (D,) uint64 = pixels (N, D) uint8 summed over its rows, exactly."""
    return pixels.sum(axis=0, dtype=np.uint64)


def linear_forward_images(pixels, index, offset, scale, weight, bias):
    """Return (x, y): x converted as :func:`convert_images`, y = :func:`linear_forward` (x, weight, bias)."""
    x = convert_images(pixels, index, offset, scale)
    return x, linear_forward(x, weight, bias)


def linear_backward(dout, x, weight):
    """Return (dx (B, I), dweight (O, I), dbias (O,)) for dout (B, O)."""
    return dout @ weight, dout.T @ x, dout.sum(axis=0)


def linear_backward_sgd_images(weight, bias, dout, pixels, index, offset, scale, lr, weight_decay=0.0):
    """Return (weight, bias) after SGD on a first layer fed images: w (1 - lr wd) - lr dout^T x, b - lr sum dout.

    x converted as :func:`convert_images`; the arrays given are not modified.
    """
    x = convert_images(pixels, index, offset, scale)
    return (1 - lr * weight_decay) * weight - lr * (dout.T @ x), bias - lr * dout.sum(axis=0)


def relu_forward(x):
    """max(x, 0)."""
    return np.maximum(x, 0)


def relu_backward(dout, out):
    """dout * (out > 0), ``out`` being the ReLU's output."""
    return dout * (out > 0)


def tanh_forward(x):
    """tanh(x)."""
    return np.tanh(x)


def tanh_backward(dout, out):
    """dout * (1 - out^2), ``out`` being tanh's output."""
    return dout * (1 - out * out)


def logistic_forward(x):
    """1 / (1 + exp(-x)), computed from exp(-|x|) so that it never overflows."""
    e = np.exp(-np.abs(x))
    return np.where(x > 0, 1 / (1 + e), e / (1 + e))


def logistic_backward(dout, out):
    """dout * out (1 - out), ``out`` being the logistic's output."""
    return dout * (out * (1 - out))


def identity_forward(x):
    """x (a copy)."""
    return np.array(x, copy=True)


def identity_backward(dout, out):
    """dout (a copy); ``out`` is only there to mirror the other pairs."""
    return np.array(dout, copy=True)


def softmax_forward(z):
    """Row-wise softmax of z (B, C) with the row max subtracted first."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def softmax_backward(dp, p):
    """dz = p * (dp - sum_c dp p): the softmax Jacobian applied to each row."""
    return p * (dp - (dp * p).sum(axis=1, keepdims=True))


def _floor(dtype):
    return np.finfo(dtype).tiny


def cross_entropy_forward(p, t):
    """Mean over the batch of -sum_c t log p (p floored at the dtype's tiny)."""
    return float(-(t * np.log(np.maximum(p, _floor(p.dtype)))).sum() / p.shape[0])


def cross_entropy_backward(p, t):
    """dL/dp = -t / (B p)."""
    return -t / np.maximum(p, _floor(p.dtype)) / p.shape[0]


def _row_weights(weights, b, dtype):
    """Per-row weights (B, 1) divided by their sum: 1/B each when ``weights`` is None."""
    w = np.ones(b, dtype=dtype) if weights is None else np.asarray(weights, dtype=dtype)
    return (w / w.sum())[:, None]


def softmax_cross_entropy(z, labels, weights=None):
    """Fused softmax + cross-entropy on logits z (B, C) and int labels (B,), rows weighted by ``weights`` (B,).

    Returns (weighted mean loss, dz (B, C) = (softmax(z) - onehot) w_b / sum w): 1/B each without weights.
    """
    b = z.shape[0]
    rows = np.arange(b)
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)  # once: the loss and the gradient share it
    norm = e.sum(axis=1, keepdims=True)
    r = _row_weights(weights, b, z.dtype)
    loss = float(((np.log(norm[:, 0]) - shifted[rows, labels]) * r[:, 0]).sum())
    dz = e / norm
    dz[rows, labels] -= 1
    return loss, dz * r


def logistic_cross_entropy(z, t, weights=None):
    """Sigmoid + binary cross-entropy on logits z (B, C) and targets t (B, C) in [0, 1], summed over outputs.

    Returns (weighted mean over rows of sum_c [softplus(z) - t z], dz = (sigmoid(z) - t) w_b / sum w).
    """
    r = _row_weights(weights, z.shape[0], z.dtype)
    softplus = np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))
    return float(((softplus - t * z).sum(axis=1) * r[:, 0]).sum()), (logistic_forward(z) - t) * r


def squared_error(z, t, weights=None):
    """scikit-learn's squared loss on outputs z (B, C) and targets t (B, C), and its gradient.

    Returns (sum_b w_b ||z_b - t_b||^2 / (2 C sum w), dz = (z - t) w_b / sum w): the
    gradient of C times the loss, as scikit-learn's MLPRegressor computes it.
    """
    r = _row_weights(weights, z.shape[0], z.dtype)
    return float((((z - t) ** 2).sum(axis=1) * r[:, 0]).sum() / (2 * z.shape[1])), (z - t) * r


def sgd_update(w, g, v=None, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """One SGD step (PyTorch's convention); updates w and v in place, returns w."""
    g = g + weight_decay * w
    if v is not None:
        v *= momentum
        v += g
        g = g + momentum * v if nesterov else v
    w -= lr * g
    return w


def adam_update(w, g, m, v, *, lr, beta1, beta2, eps, weight_decay, step):
    """One Adam step with bias correction; updates w, m, v in place, returns w."""
    g = g + weight_decay * w
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    m_hat = m / (1 - beta1**step)
    v_hat = v / (1 - beta2**step)
    w -= lr * m_hat / (np.sqrt(v_hat) + eps)
    return w



def _layer_parts(weight, bias, *blocks):
    """Each (O*I + O,) state block of a layer split into its weight's (O, I) and its bias's (O,) views."""
    n = weight.size
    return [(block[:n].reshape(weight.shape), block[n:]) if block is not None else (None, None) for block in blocks]


def sgd_update_layer(weight, bias, dweight, dbias, v=None, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """:func:`sgd_update` on a layer: weight (O, I) with ``weight_decay``, bias (O,) without; v (O*I + O,) or None."""
    (vw, vb), = _layer_parts(weight, bias, v)
    sgd_update(weight, dweight, vw, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    sgd_update(bias, dbias, vb, lr=lr, momentum=momentum, nesterov=nesterov)
    return weight, bias


def adam_update_layer(weight, bias, dweight, dbias, m, v, *, lr, beta1, beta2, eps, weight_decay, step):
    """:func:`adam_update` on a layer: weight (O, I) with ``weight_decay``, bias (O,) without; m, v (O*I + O,)."""
    (mw, mb), (vw, vb) = _layer_parts(weight, bias, m, v)
    hyper = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, step=step)
    adam_update(weight, dweight, mw, vw, weight_decay=weight_decay, **hyper)
    adam_update(bias, dbias, mb, vb, weight_decay=0.0, **hyper)
    return weight, bias

class ReferenceMLP:
    """A straightforward NumPy MLP (Linear+ReLU hidden layers, softmax cross-entropy, SGD).

    This is the benchmark baseline: what a careful student writes with NumPy,
    with no fusion and new arrays on every step. ``weights[l]`` (O, I) and
    ``biases[l]`` (O,) may be set from a ``fastmlp.MLP`` to compare the two.
    """

    def __init__(self, n_inputs, n_hidden, n_classes, *, dtype=np.float64, seed=None, std=1e-4):
        rng = np.random.default_rng(seed)
        sizes = [n_inputs, *n_hidden, n_classes]
        self.weights = [(std * rng.standard_normal((o, i))).astype(dtype) for i, o in zip(sizes[:-1], sizes[1:])]
        self.biases = [np.zeros(o, dtype=dtype) for o in sizes[1:]]

    def logits(self, x):
        """Forward pass to the logits (B, C); keeps the activations for ``backward``."""
        self._acts = [x]
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = linear_forward(x, w, b)
            if l < len(self.weights) - 1:
                x = relu_forward(x)
            self._acts.append(x)
        return x

    def gradients(self, dz):
        """Backpropagate dz (B, C); return a list of (dW, db) per layer."""
        grads = []
        for l in reversed(range(len(self.weights))):
            x_in = self._acts[l]
            if l == 0:  # nothing needs the gradient of the input itself: skip that GEMM
                grads.append((dz.T @ x_in, dz.sum(axis=0)))
                break
            dx, dw, db = linear_backward(dz, x_in, self.weights[l])
            grads.append((dw, db))
            dz = relu_backward(dx, x_in)
        return grads[::-1]

    def train_step(self, x, labels, lr, weight_decay=0.0):
        """Forward, loss, backward and a plain SGD update; returns the loss before the update."""
        loss, dz = softmax_cross_entropy(self.logits(x), labels)
        for (dw, db), w, b in zip(self.gradients(dz), self.weights, self.biases):
            if weight_decay:
                dw += weight_decay * w
            w -= lr * dw
            b -= lr * db
        return loss

    def predict_proba(self, x):
        return softmax_forward(self.logits(x))
