"""Time one ConvNet training step on the CPU in four configurations and print the ratio table.

    python benches/convnet_step.py                              # batches 32 and 128, 7 rounds
    python benches/convnet_step.py --batch_sizes 32 128 256 --rounds 9 --json out.json

The step is the trainer's own (``torch_models.hooks.forward_backward`` with the course's
Adam, lr 1e-4) on a fixed random batch, in four configurations: float32 NCHW (the default),
float32 channels-last, bfloat16 autocast NCHW, and bfloat16 autocast channels-last (what
``--device cpu --amp`` runs on a CPU with native bf16). Each contender has its own copy of
the same initial model. They are timed **interleaved**: every round runs each contender
once (one warm-up step, then the best of ``--steps`` steps), pausing before each so that
the previous contender's worker threads have gone to sleep. A speed-up is the median over
rounds of the per-round ratio of the float32 default's time to the contender's.

Target (issue #12): bf16 channels-last >= 1.6x the float32 default at batch 32 and 128.
"""
from __future__ import annotations

from _native import machine_line, reexec_native  # noqa: E402  (imports nothing heavy)

if __name__ == "__main__":
    reexec_native()

import argparse
import json
import statistics
import time

import torch

from torch_models.convnet import ConvNet
from torch_models.precision import Precision, cpu_bf16_features
from torch_models.hooks import forward_backward

TARGET = 1.6
CONTENDERS = {  # name -> (autocast dtype, channels-last)
    "fp32 NCHW": (None, False),
    "fp32 channels-last": (None, True),
    "bf16 NCHW": (torch.bfloat16, False),
    "bf16 channels-last": (torch.bfloat16, True),
}
BASELINE, AMP = "fp32 NCHW", "bf16 channels-last"


def make_step(dtype: torch.dtype | None, channels_last: bool, batch_size: int):
    """A function running one training step (forward, backward, Adam) of a fresh ConvNet."""
    torch.manual_seed(0)
    model = ConvNet(3, 10)
    images = torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 10, (batch_size,), generator=torch.Generator().manual_seed(2))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    precision = Precision(dtype is not None, "cpu", dtype, False, "benchmark")
    scaler = precision.make_grad_scaler()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward_backward(model, images, labels, precision=precision, scaler=scaler)
        optimizer.step()

    return step


def best_step_seconds(step, steps: int) -> float:
    """One warm-up call, then the fastest of ``steps`` timed calls."""
    step()
    best = float("inf")
    for _ in range(steps):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


def measure(batch_size: int, rounds: int, steps: int, settle_s: float) -> dict:
    """Per-contender median seconds and median per-round speed-up over :data:`BASELINE`."""
    stepper = {name: make_step(dtype, cl, batch_size) for name, (dtype, cl) in CONTENDERS.items()}
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for _ in range(rounds):
        for name, step in stepper.items():
            time.sleep(settle_s)
            times[name].append(best_step_seconds(step, steps))
    return {
        "batch_size": batch_size,
        "median_s": {name: statistics.median(t) for name, t in times.items()},
        "speedup": {name: statistics.median(times[BASELINE][i] / t[i] for i in range(rounds))
                    for name, t in times.items()},
        "rounds": times,
    }


def format_table(results: list[dict]) -> str:
    header = ("| batch | " + " | ".join(f"{name} ms (x)" for name in CONTENDERS)
              + f" | {AMP} img/s | target >= {TARGET}x |")
    lines = [header, "|" + " --- |" * (len(CONTENDERS) + 3)]
    for r in results:
        cells = [f"{r['median_s'][n] * 1e3:.0f} ({r['speedup'][n]:.2f}x)" for n in CONTENDERS]
        amp = r["speedup"][AMP]
        lines.append(f"| {r['batch_size']} | " + " | ".join(cells)
                     + f" | {r['batch_size'] / r['median_s'][AMP]:.0f} | {'met' if amp >= TARGET else 'missed'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[32, 128], help="batch sizes to time")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per contender and round (best kept)")
    parser.add_argument("--settle", type=float, default=0.3, help="pause before each contender, seconds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    if min(args.batch_sizes) < 2 or args.rounds < 1 or args.steps < 1 or args.settle < 0:
        parser.error("--batch_sizes >= 2 (BatchNorm), --rounds >= 1, --steps >= 1 and --settle >= 0")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    features = cpu_bf16_features()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{machine_line()}, native bf16: {', '.join(features) or 'none (the bf16 rows are emulated)'}", flush=True)
    results = []
    for batch_size in args.batch_sizes:
        results.append(measure(batch_size, args.rounds, args.steps, args.settle))
        print(f"batch {batch_size}: done", flush=True)
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "bf16_features": features,
                       "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
