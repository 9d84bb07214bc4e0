"""The course's default MLP run as a plain PyTorch script: the second end-to-end baseline.

The same job as ``numpy_baseline_train.py`` (and the same data loading, imported
from it), written the way a careful PyTorch user writes it: tensors made once
from the NumPy arrays, ``nn.Sequential(Linear, ReLU, Linear)`` with the course's
N(0, 1e-4^2) weights and zero biases, ``nn.CrossEntropyLoss``, ``torch.optim.SGD``
at 2e-3, batches of 200 drawn by index from a new random order every epoch,
1500 steps, and the whole test set evaluated under ``torch.inference_mode`` every
100 steps and after the last one (16 evaluations). float32, on the CPU, PyTorch's
own thread count.

Usage (a folder holding ``cifar-10-batches-py/``, or that folder itself)::

    python benches/torch_baseline_train.py --data_dir /path/to/extracted
"""
from __future__ import annotations

from _native import reexec_native  # noqa: E402  (imports nothing heavy)

if __name__ == "__main__":
    reexec_native()

import torch
from numpy_baseline_train import load_cifar10, record, run_cli, summary
from torch import nn


def make_model(n_inputs: int, hidden_units: tuple[int, ...], n_classes: int) -> nn.Sequential:
    """A ReLU MLP with the course's initialisation: weights N(0, 1e-4^2), biases 0."""
    sizes = [n_inputs, *hidden_units, n_classes]
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        linear = nn.Linear(fan_in, fan_out)
        nn.init.normal_(linear.weight, std=1e-4)
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers[:-1])


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on the whole of ``x`` (n, 3072)."""
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(dim=1) == labels).float().mean().item()


def train(data_dir, hidden_units=(100,), learning_rate=2e-3, max_steps=1500, batch_size=200, eval_freq=100,
          seed=42, verbose=True):
    """Load, train and evaluate; return the final and best test accuracy and the number of evaluations."""
    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in load_cifar10(data_dir))
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = make_model(x_train.shape[1], tuple(hidden_units), 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    order, position, accuracies = torch.randperm(len(x_train), generator=generator), 0, []
    for step in range(1, max_steps + 1):
        if position + batch_size > len(order):  # a new random order every epoch
            order, position = torch.randperm(len(x_train), generator=generator), 0
        index = order[position : position + batch_size]
        position += batch_size
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x_train[index]), y_train[index]).backward()
        optimizer.step()
        if step == 1 or step % eval_freq == 0 or step == max_steps:
            record(accuracies, step, *evaluate(model, x_test, y_test), verbose)
    return summary(accuracies)


def main(argv=None):
    return run_cli(train, __doc__.split("\n")[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
