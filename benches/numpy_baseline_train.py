"""The course's default MLP run written in plain NumPy: the baseline for the benchmarks.

A 3072-100-10 ReLU network with a softmax cross-entropy loss, weights drawn
from N(0, 1e-4^2) and zero biases, trained with plain SGD (learning rate 2e-3,
batches of 200, 1500 steps) in float32 and evaluated on the whole test set
every 100 steps and after the last one. This is what a careful student would
write: vectorised NumPy, no Cython, no preallocated buffers. Only the data
loading comes from ``fastmlp.data.get_cifar10`` so that both sides of the
end-to-end benchmark read and preprocess the images identically.

Usage::

    python benches/numpy_baseline_train.py --data_dir ../shared/data
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from fastmlp.data import get_cifar10


def init_params(layer_sizes, rng, dtype=np.float32):
    """Weights ~ N(0, 1e-4^2) of shape (n_out, n_in) and zero biases (n_out,), one pair per layer."""
    params = []
    for n_in, n_out in zip(layer_sizes[:-1], layer_sizes[1:]):
        weight = rng.normal(0.0, 1e-4, size=(n_out, n_in)).astype(dtype)
        bias = np.zeros(n_out, dtype=dtype)
        params.append([weight, bias])
    return params


def forward(params, x):
    """Class probabilities (batch, n_classes) of ``x`` (batch, n_inputs), and each layer's input for backward."""
    layer_inputs = []
    h = x
    for i, (weight, bias) in enumerate(params):
        layer_inputs.append(h)
        h = h @ weight.T + bias
        if i < len(params) - 1:
            h = np.maximum(h, 0)
    # Softmax with the max subtracted so exp cannot overflow.
    h = h - h.max(axis=1, keepdims=True)
    probs = np.exp(h)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs, layer_inputs


def cross_entropy(probs, labels):
    """Mean cross-entropy of ``probs`` (batch, n_classes) against int ``labels`` (batch,)."""
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(picked, 1e-12))))


def backward(params, probs, layer_inputs, labels):
    """Gradients [(dW, db), ...] of the mean cross-entropy, in the order of ``params``."""
    batch = len(labels)
    dout = probs.copy()
    dout[np.arange(batch), labels] -= 1
    dout /= batch
    grads = [None] * len(params)
    for i in reversed(range(len(params))):
        weight, _ = params[i]
        x = layer_inputs[i]
        grads[i] = (dout.T @ x, dout.sum(axis=0))
        if i > 0:
            dout = dout @ weight
            dout *= x > 0  # ReLU: x is the previous layer's (positive-or-zero) output
    return grads


def evaluate(params, x, labels):
    """(mean loss, accuracy) of the network on the whole of ``x`` (n, n_inputs)."""
    probs, _ = forward(params, x)
    accuracy = float(np.mean(probs.argmax(axis=1) == labels))
    return cross_entropy(probs, labels), accuracy


def train(data_dir=None, hidden_units=(100,), learning_rate=2e-3, max_steps=1500, batch_size=200,
          eval_freq=100, seed=42, dtype=np.float32, data=None, verbose=True):
    """Train the MLP; return a dict with the final and best test accuracy and loss and the curves.

    ``data`` may be a pre-loaded ``get_cifar10(one_hot=False, flatten=True)`` dict.
    """
    if data is None:
        data = get_cifar10(data_dir, one_hot=False, flatten=True, dtype=dtype, seed=seed)
    train_set, test_set = data["train"], data["test"]
    x_test, y_test = test_set.as_arrays(flatten=True)
    rng = np.random.default_rng(seed)
    n_classes = 10
    params = init_params([x_test.shape[1], *hidden_units, n_classes], rng, dtype)

    curves = []
    for step in range(max_steps):
        x, y = train_set.next_batch(batch_size)
        probs, layer_inputs = forward(params, x)
        train_loss = cross_entropy(probs, y)
        grads = backward(params, probs, layer_inputs, y)
        for (weight, bias), (d_weight, d_bias) in zip(params, grads):
            weight -= learning_rate * d_weight
            bias -= learning_rate * d_bias

        if step % eval_freq == 0 or step == max_steps - 1:
            train_accuracy = float(np.mean(probs.argmax(axis=1) == y))
            test_loss, test_accuracy = evaluate(params, x_test, y_test)
            curves.append((step + 1, train_loss, train_accuracy, test_loss, test_accuracy))
            if verbose:
                print(f"step {step + 1:5d}  train loss {train_loss:.4f} acc {train_accuracy:.3f}  "
                      f"test loss {test_loss:.4f} acc {test_accuracy:.4f}")

    return {
        "test_accuracy": curves[-1][4],
        "test_loss": curves[-1][3],
        "best_test_accuracy": max(row[4] for row in curves),
        "evaluations": len(curves),
        "curves": curves,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dnn_hidden_units", default="100", help="comma-separated hidden layer sizes")
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--max_steps", type=int, default=1500)
    parser.add_argument("--batch_size", type=int, default=200)
    parser.add_argument("--eval_freq", type=int, default=100)
    parser.add_argument("--data_dir", default=None, help="folder with the CIFAR-10 archive (default: $FASTMLP_DATA)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    hidden = [int(h) for h in args.dnn_hidden_units.split(",") if h.strip()]
    start = time.perf_counter()
    result = train(args.data_dir, hidden, args.learning_rate, args.max_steps, args.batch_size,
                   args.eval_freq, args.seed)
    print(f"final test accuracy {result['test_accuracy']:.4f} (best {result['best_test_accuracy']:.4f}), "
          f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
