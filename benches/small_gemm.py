"""fastmlp's own small-matrix GEMM (``_small_gemm.h``, AVX2 + FMA) against OpenBLAS's, one thread.

    python benches/small_gemm.py                 # 15 interleaved rounds
    python benches/small_gemm.py --rounds 31 --dtype float64

Each row is one GEMM of the scikit-learn estimators' fits (``benches/sklearn_compare.py``:
batches of 200 rows and the last batch, 64 hidden units; digits: 64 inputs and 10
classes, diabetes: 10 inputs and 1 output, whose 1-wide products are GEMVs), then
larger ones where OpenBLAS takes over. ``op`` names the product as the layer kernels
run it: ``X W^T`` a forward, ``dY^T X`` a weight gradient, ``dY W`` an input gradient;
``M x N x K`` is C (M, N) = op(A) (M, K) op(B) (K, N). Both kernels are called through
``K.gemm`` on the same operands (``own=True`` / ``own=False``), one after the other in
every round after a settle pause; the table gives the median per-round times, their
GFLOP/s, the median of the per-round ratios (OpenBLAS / own: above 1 means fastmlp's
kernel is faster) and whether the layer kernels pick fastmlp's kernel for that shape.
The process runs OpenBLAS's native kernels (``_native.py``), named in the caption.
"""
from __future__ import annotations

from _native import machine_line, reexec_native  # noqa: E402  (imports nothing heavy)
from _rounds import rounds_parser, timed  # noqa: E402

if __name__ == "__main__":
    reexec_native()

import statistics
import time

import numpy as np

import fastmlp
from fastmlp import _kernels as K

# (name, op, M, N, K, A stored transposed, B stored transposed): what the layer kernels pass to one GEMM.
SHAPES = [
    ("digits layer 1", "X W^T", 200, 64, 64, False, True),
    ("digits layer 2", "X W^T", 200, 10, 64, False, True),
    ("digits layer 2", "dY^T X", 10, 64, 200, True, False),
    ("digits layer 2", "dY W", 200, 64, 10, False, False),
    ("digits layer 1", "dY^T X", 64, 64, 200, True, False),
    ("digits last batch", "X W^T", 147, 64, 64, False, True),
    ("digits last batch", "dY^T X", 64, 64, 147, True, False),
    ("diabetes layer 1", "X W^T", 200, 64, 10, False, True),
    ("diabetes layer 1", "dY^T X", 64, 10, 200, True, False),
    ("digits predict", "X W^T", 1797, 64, 64, False, True),
    ("100 hidden", "X W^T", 200, 100, 64, False, True),
    ("256 hidden", "X W^T", 200, 256, 256, False, True),
    ("256 hidden", "dY^T X", 256, 256, 200, True, False),
    ("CIFAR first layer", "X W^T", 200, 100, 3072, False, True),
]


def _operands(rng, dtype, m, n, k, ta, tb):
    """C (m, n) and op(A) (m, k), op(B) (k, n) views over buffers stored as the layer kernels hold them."""
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return np.empty((m, n), dtype), a.T if ta else a, b.T if tb else b


def main(argv=None):
    parser = rounds_parser(__doc__, rounds=15, settle=0.02)
    parser.add_argument("--seconds", type=float, default=0.02, help="time per kernel per round (calls are sized to it)")
    parser.add_argument("--dtype", choices=["float64", "float32", "both"], default="both")
    args = parser.parse_args(argv)
    K.small_gemm(True)  # the comparison itself, also where OpenBLAS's AVX-512 kernels keep it off by default
    if not K.small_gemm():
        raise SystemExit("this CPU does not run AVX2 and FMA: fastmlp's own GEMM is off, nothing to compare")
    fastmlp.set_num_threads(1)
    print(f"machine: {machine_line()}", flush=True)
    print(f"{args.rounds} rounds, 1 thread\n")
    print("| dtype | GEMM | op | M x N x K | OpenBLAS | own | OpenBLAS GFLOP/s | own GFLOP/s | OpenBLAS / own | picked |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    dtypes = ["float64", "float32"] if args.dtype == "both" else [args.dtype]
    for dtype in dtypes:
        for name, op, m, n, k, ta, tb in SHAPES:
            c, a, b = _operands(rng, dtype, m, n, k, ta, tb)
            fns = {own: (lambda own=own: K.gemm(c, a, b, own=own)) for own in (True, False)}
            calls = max(1, int(args.seconds / max(timed(fns[False], 3), 1e-7)))
            times = {True: [], False: []}
            for _ in range(args.rounds):
                for own, fn in fns.items():
                    fn()
                    time.sleep(args.settle)
                    times[own].append(timed(fn, calls))
            ratio = statistics.median(b / o for o, b in zip(times[True], times[False]))
            own_t, blas_t = statistics.median(times[True]), statistics.median(times[False])
            flops = 2 * m * n * k
            print(f"| {dtype} | {name} | {op} | {m} x {n} x {k} | {1e6 * blas_t:.1f} us | {1e6 * own_t:.1f} us | "
                  f"{flops / blas_t / 1e9:.1f} | {flops / own_t / 1e9:.1f} | {ratio:.2f}x | "
                  f"{'yes' if K.small_gemm_takes(m, n, k) else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
