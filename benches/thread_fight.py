"""Thread-pool fights: a fastmlp training step alternating with a NumPy matmul in one process.

    python benches/thread_fight.py                # every setting, 7 rounds each
    python benches/thread_fight.py --rounds 15

NumPy and fastmlp each bring an OpenBLAS, and OpenBLAS's idle workers busy-wait
(about 0.1 s after a call) on a core the other library then waits for. The
figure of merit is ``time(step then matmul, alternating) / (time(step alone) +
time(matmul alone))``: 1.0 means no interference. Each setting runs in a fresh
process (an OpenBLAS reads its environment once, when it loads):

- ``default``: nothing set;
- ``OPENBLAS_THREAD_TIMEOUT=4``: OpenBLAS workers (NumPy's and fastmlp's) sleep
  at once after a call instead of busy-waiting;
- ``numpy 1 thread``: ``threadpoolctl.threadpool_limits(1, user_api="blas")``
  around the NumPy side only;
- ``fastmlp 1 thread``: ``fastmlp.set_num_threads(1)``.

Shapes: the course's first layer, 3072-100-10 at batch 200; the matmul is that
layer's forward, (200, 3072) @ (3072, 100). Medians of per-round ratios.
"""
from __future__ import annotations

from _native import child_kernels, native_env, reexec_native  # noqa: E402  (imports nothing heavy)

if __name__ == "__main__":
    reexec_native()

import argparse
import json
import os
import statistics
import subprocess
import sys

SETTINGS = {
    "default": {},
    "OPENBLAS_THREAD_TIMEOUT=4": {"OPENBLAS_THREAD_TIMEOUT": "4"},
    "numpy 1 thread": {"FIGHT_NUMPY_THREADS": "1"},
    "fastmlp 1 thread": {"FIGHT_FASTMLP_THREADS": "1"},
}

CHILD = r"""
import json, os, statistics, sys, time
import numpy as np
import fastmlp
from fastmlp import MLP, optim
from threadpoolctl import threadpool_limits

rounds, calls = int(sys.argv[1]), int(sys.argv[2])
if os.environ.get("FIGHT_FASTMLP_THREADS"):
    fastmlp.set_num_threads(int(os.environ["FIGHT_FASTMLP_THREADS"]))
numpy_threads = int(os.environ.get("FIGHT_NUMPY_THREADS", "0")) or None
rng = np.random.default_rng(0)
x, y = rng.standard_normal((200, 3072)).astype(np.float32), rng.integers(0, 10, 200)
model = MLP(3072, [100], 10, dtype=np.float32, seed=0, init="kaiming")
opt = optim.SGD(model, 1e-4)
w_t = model.linears[0].params["weight"].T.copy()
x2 = x.copy()

def step():
    model.train_step(x, y, opt)

def matmul():
    if numpy_threads:
        with threadpool_limits(numpy_threads, user_api="blas"):
            np.matmul(x2, w_t)
    else:
        np.matmul(x2, w_t)

def both():
    step()
    matmul()

def timed(fn):
    time.sleep(0.3)  # every OpenBLAS worker asleep before the first call
    for _ in range(10):
        fn()
    samples = []
    for _ in range(calls):
        t = time.perf_counter(); fn(); samples.append(time.perf_counter() - t)
    return statistics.median(samples)

out = []
for _ in range(rounds):
    out.append({"step": timed(step), "matmul": timed(matmul), "alternating": timed(both)})
print(json.dumps(out))
"""


def measure(env_extra: dict[str, str], rounds: int, calls: int) -> dict:
    env = {**native_env(), **env_extra}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(rounds), str(calls)], env=env, capture_output=True,
                          text=True, check=True)
    rows = json.loads(proc.stdout)
    ratio = statistics.median(r["alternating"] / (r["step"] + r["matmul"]) for r in rows)
    med = {k: statistics.median(r[k] for r in rows) for k in ("step", "matmul", "alternating")}
    return {"ratio": ratio, **med}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200, help="timed calls per measurement")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    results = {name: measure(extra, args.rounds, args.calls) for name, extra in SETTINGS.items()}
    print(f"kernels: {child_kernels('import numpy, fastmlp')}")
    print("| setting | step alone | matmul alone | alternating (step + matmul) | alternating / (sum alone) |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['step'] * 1e3:.3f} ms | {r['matmul'] * 1e3:.3f} ms | {r['alternating'] * 1e3:.3f} ms "
              f"| {r['ratio']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
