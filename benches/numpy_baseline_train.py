"""The course's default MLP run as a plain NumPy script: the end-to-end baseline.

What a careful student writes with the course's ``cifar10_utils``: unpickle the
six batch files, ``astype(float32)``, subtract the mean training image, then train
a 3072-100-10 ReLU network (weights N(0, 1e-4^2), zero biases; softmax
cross-entropy; plain SGD, learning rate 2e-3, batches of 200, 1500 steps; a new
random order every epoch) and evaluate it on the whole test set every 100 steps
and after the last one (16 evaluations). The network is
:class:`fastmlp.reference.ReferenceMLP`, the project's one plain-NumPy model
(whole-array NumPy expressions, no Cython); the data loading is written here
and does not use ``fastmlp.data``, so the comparison covers the whole job.

Usage (a folder holding ``cifar-10-batches-py/``, or that folder itself)::

    python benches/numpy_baseline_train.py --data_dir /path/to/extracted
"""
from __future__ import annotations

from _native import reexec_native  # noqa: E402  (imports nothing heavy)

if __name__ == "__main__":
    reexec_native()

import argparse
import os
import pickle
import time

import numpy as np

from fastmlp.reference import ReferenceMLP

FOLDER_NAME = "cifar-10-batches-py"


def load_batch(path):
    """(images (n, 3072) uint8, labels (n,) int64) of one pickled batch file."""
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    return batch["data"], np.asarray(batch["labels"], dtype=np.int64)


def load_cifar10(data_dir):
    """Training and test images (n, 3072) float32 with the mean training image subtracted, and labels."""
    folder = os.path.join(data_dir, FOLDER_NAME) if os.path.isdir(os.path.join(data_dir, FOLDER_NAME)) else data_dir
    parts = [load_batch(os.path.join(folder, f"data_batch_{i}")) for i in range(1, 6)]
    # Concatenated as bytes and converted once: one float32 copy of the set, not two.
    x_train = np.concatenate([x for x, _ in parts]).astype(np.float32)
    y_train = np.concatenate([y for _, y in parts])
    x_test, y_test = load_batch(os.path.join(folder, "test_batch"))
    x_test = x_test.astype(np.float32)
    mean_image = x_train.mean(axis=0)
    x_train -= mean_image
    x_test -= mean_image
    return x_train, y_train, x_test, y_test


def evaluate(model, x, labels):
    """(mean cross-entropy, accuracy) of ``model`` on the whole of ``x`` (n, 3072)."""
    logits = model.logits(x)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-log_p[np.arange(len(labels)), labels].mean())
    return loss, float(np.mean(logits.argmax(axis=1) == labels))


def train(data_dir, hidden_units=(100,), learning_rate=2e-3, max_steps=1500, batch_size=200, eval_freq=100,
          seed=42, verbose=True):
    """Load, train and evaluate; return the final and best test accuracy and the number of evaluations."""
    x_train, y_train, x_test, y_test = load_cifar10(data_dir)
    rng = np.random.default_rng(seed)
    model = ReferenceMLP(x_train.shape[1], list(hidden_units), 10, dtype=np.float32, seed=seed)
    order, position, accuracies = rng.permutation(len(x_train)), 0, []
    for step in range(1, max_steps + 1):
        if position + batch_size > len(order):  # a new random order every epoch
            order, position = rng.permutation(len(x_train)), 0
        index = order[position : position + batch_size]
        position += batch_size
        model.train_step(x_train[index], y_train[index], learning_rate)
        if step == 1 or step % eval_freq == 0 or step == max_steps:
            record(accuracies, step, *evaluate(model, x_test, y_test), verbose)
    return summary(accuracies)


def record(accuracies: list, step: int, loss: float, accuracy: float, verbose: bool) -> None:
    """Keep an evaluation's accuracy and, if ``verbose``, print it."""
    accuracies.append(accuracy)
    if verbose:
        print(f"step {step:5d}  test loss {loss:.4f} acc {accuracy:.4f}")


def summary(accuracies: list) -> dict:
    """What a baseline run returns: final and best test accuracy, number of evaluations."""
    return {"test_accuracy": accuracies[-1], "best_test_accuracy": max(accuracies), "evaluations": len(accuracies)}


def run_cli(train_fn, description: str, argv=None) -> int:
    """The baseline scripts' command line: parse, run ``train_fn``, print its one-line summary."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_dir", required=True, help=f"folder holding {FOLDER_NAME}/ (or that folder)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = train_fn(args.data_dir, seed=args.seed, verbose=not args.quiet)
    print(f"final test accuracy {result['test_accuracy']:.4f} (best {result['best_test_accuracy']:.4f}), "
          f"{result['evaluations']} evaluations, {time.perf_counter() - start:.1f} s")
    return 0


def main(argv=None):
    return run_cli(train, __doc__.split("\n")[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
