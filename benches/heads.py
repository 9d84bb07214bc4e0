"""The output heads' kernels timed at the estimators' sizes, against another build of fastmlp.

    python benches/heads.py                              # this tree alone
    python benches/heads.py --against /path/to/other/src --rounds 7

Each case is one call of a head kernel (the fused softmax + cross-entropy step
the MLP's train_step makes, its loss alone, softmax_forward, the logistic head,
the logistic activation) on a batch of 200 rows, one thread. Every round runs
each source tree in a fresh child process, alternating which goes first; a
child reports, per case, the median over repeats of the mean time of a burst of
calls. The table gives each tree's median over rounds and the ratio of the
medians (other / this: above 1, this tree is faster).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _native import native_env  # (imports nothing heavy)

SRC = Path(__file__).resolve().parents[1] / "src"
BATCH = 200


def cases():
    """(name, zero-argument call) of every case, the inputs built once."""
    import numpy as np

    from fastmlp import _kernels as K

    rng = np.random.default_rng(0)
    out = []
    for dtype, classes in ((np.float64, 10), (np.float32, 10), (np.float64, 100)):
        tag = f"{np.dtype(dtype).name} C={classes}"
        z = rng.standard_normal((BATCH, classes)).astype(dtype)
        labels = rng.integers(0, classes, BATCH)
        targets = rng.integers(0, 2, (BATCH, classes)).astype(dtype)
        dz = np.empty_like(z)
        out += [
            (f"softmax step {tag}", lambda z=z, dz=dz, y=labels: K.softmax_cross_entropy_forward_backward(dz, z, y)),
            (f"softmax loss {tag}", lambda z=z, y=labels: K.softmax_cross_entropy_forward(z, y)),
            (f"softmax_forward {tag}", lambda z=z, dz=dz: K.softmax_forward(dz, z)),
            (f"logistic step {tag}", lambda z=z, dz=dz, t=targets: K.logistic_cross_entropy_forward_backward(dz, z, t)),
            (f"logistic_forward {tag}", lambda z=z, dz=dz: K.logistic_forward(dz, z)),
        ]
    return out


def child(repeats: int, burst: int) -> None:
    """Print {case: median seconds per call} as JSON."""
    import time

    from fastmlp import _kernels as K

    K.set_num_threads(1)
    result = {}
    for name, call in cases():
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(burst):
                call()
            samples.append((time.perf_counter() - start) / burst)
        result[name] = statistics.median(samples)
    print(json.dumps(result))


def run(src: Path, repeats: int, burst: int) -> dict[str, float]:
    env = native_env()
    env.update(PYTHONPATH=str(src), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--child", "--repeats", str(repeats), "--burst", str(burst)]
    return json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, help="another fastmlp source tree (its src folder, extension built)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.repeats, args.burst)
    trees = {"this": SRC} | ({"other": args.against} if args.against else {})
    times: dict[str, list[dict[str, float]]] = {key: [] for key in trees}
    for round_ in range(args.rounds):
        order = list(trees) if round_ % 2 == 0 else list(trees)[::-1]
        for key in order:
            times[key].append(run(trees[key], args.repeats, args.burst))
    names = list(times["this"][0])
    print(f"{'case':34} " + " ".join(f"{key + ' us':>10}" for key in trees) + ("   ratio" if args.against else ""))
    for name in names:
        medians = {key: statistics.median(r[name] for r in times[key]) * 1e6 for key in trees}
        ratio = f"  {medians['other'] / medians['this']:6.2f}" if args.against else ""
        print(f"{name:34} " + " ".join(f"{medians[key]:10.2f}" for key in trees) + ratio)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()
