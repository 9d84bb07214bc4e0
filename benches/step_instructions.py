"""Instructions per ``MLP.train_step``, by shared object, counted by valgrind's callgrind.

    python benches/step_instructions.py                           # digits size, Adam, float64
    python benches/step_instructions.py --optimizer sgd --src /path/to/other/checkout/src

Instruction counts, unlike times, barely move with the machine's load, so they can
compare two versions of the per-step path on a busy machine (they do not say how
long a step takes: BLAS runs at several instructions per cycle, Python at fewer).
Each count runs the step loop twice, ``--short`` and ``--short + --steps`` steps, in a
fresh single-threaded process under callgrind, and divides the difference by
``--steps``, so start-up and imports cancel out (the children run without the
overrides ``_native`` removes; under valgrind OpenBLAS picks at most its AVX2 kernels). ``libpython`` is the interpreter,
``_kernels`` fastmlp's Cython wrappers and loops, ``libscipy_openblas`` the GEMMs.

Shapes: the issue's digits size, 64 inputs, ``--hidden`` units, 10 classes, a batch of 200.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from _native import native_env

# What the measured process runs: argv = [steps, optimizer, hidden].
_STEPS = """
import sys
import numpy as np
import fastmlp
from fastmlp import MLP, optim
fastmlp.set_num_threads(1)
steps, name, hidden = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(0)
x, y = rng.standard_normal((200, 64)), rng.integers(0, 10, 200)
model = MLP(64, [hidden], 10, dtype=np.float64, seed=0, init="xavier")
opt = optim.make_optimizer(name, model, 1e-3)
for _ in range(steps):
    model.train_step(x, y, opt)
"""
_LINE = re.compile(r"\s*([\d,]+) \([^)]*\)\s+.*?(?:\s+\[(.*)\])?$")


def count(steps: int, args, workdir: Path) -> Counter:
    """Instructions of one run of ``steps`` steps, by shared object (its file name)."""
    out = workdir / f"callgrind.{steps}"
    env = {**native_env(), "PYTHONPATH": str(args.src), "OPENBLAS_NUM_THREADS": "1"}
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", _STEPS,
                    str(steps), args.optimizer, str(args.hidden)], env=env, check=True, capture_output=True)
    report = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", "--auto=no", str(out)],
                            capture_output=True, text=True, check=True).stdout
    by_object = Counter()
    for line in report.splitlines():
        match = _LINE.match(line)
        if match and not line.endswith("PROGRAM TOTALS"):
            # callgrind names no object for some code (libm's inlined variants): "?"
            by_object[(match.group(2) or "?").rsplit("/", 1)[-1]] += int(match.group(1).replace(",", ""))
    return by_object


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizer", default="adam", help="a fastmlp.optim name (default: adam)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden units (default: 64)")
    parser.add_argument("--steps", type=int, default=200, help="steps counted (default: 200)")
    parser.add_argument("--short", type=int, default=20, help="steps of the run subtracted (default: 20)")
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src",
                        help="the fastmlp source tree to count (default: this checkout's)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        short, long = count(args.short, args, Path(tmp)), count(args.short + args.steps, args, Path(tmp))
    per_step = {name: (long[name] - short.get(name, 0)) / args.steps for name in long}
    print(f"instructions per train_step, {args.optimizer}, 64-{args.hidden}-10, batch 200, float64, {args.src}")
    for name, value in sorted(per_step.items(), key=lambda item: -item[1]):
        if abs(value) >= 1000:
            print(f"{value:12,.0f}  {name}")
    print(f"{sum(per_step.values()):12,.0f}  total")


if __name__ == "__main__":
    main()
