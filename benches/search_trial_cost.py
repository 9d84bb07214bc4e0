"""Time per trial of the reports' grid (PyTorch MLP, Adam) on this machine, before running it.

Times a few training steps of every (layout, batch size) of
``fastmlp.search.space.DEFAULT_GRID`` on random data with one torch thread (what
each of two search workers gets on a 2-core machine) and prints ms/step and the
seconds each grid point's step count would take, plus the total. Evaluations
and data loading are not included (a few percent of a trial).

Usage::

    python benches/search_trial_cost.py [--threads 1] [--steps 20]
"""
from __future__ import annotations

from _native import reexec_native  # noqa: E402  (imports nothing heavy)

if __name__ == "__main__":
    reexec_native()

import argparse
import time

import torch

from fastmlp.hyperparams import parse_hidden_units
from fastmlp.search.space import DEFAULT_GRID
from torch_models.mlp import MLP


def seconds_per_step(hidden, batch_size, steps, warmup=5):
    """Mean wall seconds of one Adam step of ``MLP(3072, hidden, 10)`` on a random batch."""
    model = MLP(3072, hidden, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-5)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn(batch_size, 3072)
    y = torch.randint(0, 10, (batch_size,))
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per grid point")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    total = 0.0
    print("| layout | batch | ms/step | " + " | ".join(f"{s} steps" for s in DEFAULT_GRID["max_steps"]) + " |")
    for layout in DEFAULT_GRID["hidden_units"]:
        for batch_size in DEFAULT_GRID["batch_size"]:
            per_step = seconds_per_step(parse_hidden_units(layout), batch_size, args.steps)
            trial_seconds = [per_step * steps for steps in DEFAULT_GRID["max_steps"]]
            total += sum(trial_seconds)
            print(f"| {layout} | {batch_size} | {per_step * 1e3:.1f} | "
                  + " | ".join(f"{s:.0f} s" for s in trial_seconds) + " |", flush=True)
    print(f"total: {total:.0f} s of {args.threads} thread(s) for the "
          f"{len(DEFAULT_GRID['hidden_units']) * len(DEFAULT_GRID['batch_size']) * len(DEFAULT_GRID['max_steps'])}"
          " grid points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
