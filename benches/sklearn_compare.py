"""fastmlp's MLPClassifier / MLPRegressor against scikit-learn's, fitted at matched settings.

    python benches/sklearn_compare.py                       # digits and diabetes, 1 and 2 threads
    python benches/sklearn_compare.py --rounds 3 --epochs 2 --json out.json

Both libraries get the same estimator parameters (architecture, solver, rate,
epochs: ``tol=0`` and ``n_iter_no_change`` above the epochs, so neither stops
early) and the same standardized training split. Each round of a library runs
in a fresh child process without the OpenBLAS overrides (``_native.py``: each
library's OpenBLAS picks its own kernels, as a user's would) and its thread pools
limited with threadpoolctl; after an untimed warm-up fit on a few rows, the child
times ``--fits`` fits of the whole split and reports their median wall time (one
fit is a tenth of a second: a single one swings with the machine), the test
score (accuracy, or R^2) and every BLAS it loaded with the kernel OpenBLAS
chose (threadpoolctl's ``architecture``), which the table names per library.
Rounds interleave the two contenders, alternating which goes first, with a
settle pause before each; the speed-up is the median over rounds of
scikit-learn's time over fastmlp's in the same round. Each child also times a
1024^3 dgemm on its threads: the fit's GEMM FLOPs at that rate are the physical
limit the table prints beside the times.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _native import blas_kernels, kernels_line, native_env  # (imports nothing heavy)

SRC = Path(__file__).resolve().parents[1] / "src"
DATA = ("digits", "diabetes")
LIBRARIES = ("fastmlp", "sklearn")
#: Issue 20's "equal accuracy": test scores at most this far apart.
SCORE_MARGIN = 0.01


def load(name: str):
    """(X_train, X_test, y_train, y_test), standardized on the training part (y too for regression)."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y = (datasets.load_digits if name == "digits" else datasets.load_diabetes)(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
    scaler = StandardScaler().fit(X_train)
    if name != "digits":
        mean, std = y_train.mean(), y_train.std()
        y_train, y_test = (y_train - mean) / std, (y_test - mean) / std
    return scaler.transform(X_train), scaler.transform(X_test), y_train, y_test


def fit_gemm_flops(units: list[int], n_samples: int, epochs: int) -> int:
    """The GEMM FLOPs of a fit: every epoch, each sample's forward product, its weight-gradient product, and its
    input-gradient product at every layer but the first (``units`` = [inputs, hidden..., outputs])."""
    products = [n_in * n_out for n_in, n_out in zip(units[:-1], units[1:])]
    return 2 * n_samples * epochs * (2 * sum(products) + sum(products[1:]))


def dgemm_rate() -> float:
    """float64 GEMM FLOP/s of this process's NumPy (1024^3, best of 3) on the threads it is allowed."""
    import numpy as np

    a = np.ones((1024, 1024))
    c = np.empty_like(a)
    np.dot(a, a, out=c)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        np.dot(a, a, out=c)
        best = min(best, time.perf_counter() - start)
    return 2 * 1024 ** 3 / best


def child(args: argparse.Namespace) -> None:
    """Fit one estimator (in this process) and print its time, score and BLAS kernels as JSON."""
    from threadpoolctl import threadpool_limits

    if args.library == "fastmlp":
        import fastmlp as module
    else:
        from sklearn import neural_network as module
    name = "MLPClassifier" if args.data == "digits" else "MLPRegressor"
    X_train, X_test, y_train, y_test = load(args.data)
    estimator = getattr(module, name)(hidden_layer_sizes=tuple(args.hidden), solver=args.solver,
                                      learning_rate_init=args.lr, max_iter=args.epochs, tol=0.0,
                                      n_iter_no_change=args.epochs + 1, random_state=0)
    with threadpool_limits(limits=args.threads):
        estimator.fit(X_train[:64], y_train[:64])  # first calls load and warm the kernels, outside the timing
        times = []
        for _ in range(args.fits):  # a fit refits from scratch: each one times the same work
            start = time.perf_counter()
            estimator.fit(X_train, y_train)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        kernels = blas_kernels()
        flops = fit_gemm_flops([X_train.shape[1], *args.hidden, len(estimator.intercepts_[-1])], X_train.shape[0],
                               estimator.n_iter_)
        limit = flops / dgemm_rate()  # the fit's GEMMs at this run's dgemm rate: no float64 fit can be faster
    print(json.dumps({"seconds": seconds, "score": float(estimator.score(X_test, y_test)),
                      "epochs": int(estimator.n_iter_), "kernels": kernels, "limit_seconds": limit}))


def run_child(library: str, data: str, threads: int, args: argparse.Namespace) -> dict:
    env = native_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    command = [sys.executable, __file__, "--child", library, "--data", data, "--threads", str(threads),
               "--epochs", str(args.epochs), "--fits", str(args.fits), "--solver", args.solver, "--lr", str(args.lr),
               "--hidden", *map(str, args.hidden)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{library} on {data} ({threads} threads) failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(data: str, threads: int, args: argparse.Namespace) -> dict:
    """Interleaved rounds of both libraries on one data set and thread count."""
    rounds = {library: [] for library in LIBRARIES}
    for number in range(args.rounds):
        order = LIBRARIES if number % 2 == 0 else LIBRARIES[::-1]
        for library in order:
            time.sleep(args.settle)  # the other library's BLAS workers go idle first
            rounds[library].append(run_child(library, data, threads, args))
    ratios = [s["seconds"] / f["seconds"] for f, s in zip(rounds["fastmlp"], rounds["sklearn"])]
    return {
        "data": data, "threads": threads, "speedup": statistics.median(ratios), "ratios": ratios,
        **{f"{lib}_seconds": statistics.median(r["seconds"] for r in rounds[lib]) for lib in LIBRARIES},
        **{f"{lib}_score": rounds[lib][0]["score"] for lib in LIBRARIES},
        **{f"{lib}_kernels": rounds[lib][0]["kernels"] for lib in LIBRARIES},
        "limit_seconds": statistics.median(r["limit_seconds"] for lib in LIBRARIES for r in rounds[lib]),
    }


def table(results: list[dict]) -> str:
    lines = ["| data | threads | fastmlp s | sklearn s | speed-up (median of rounds) | GEMM limit s | fastmlp score "
             "| sklearn score | scores within 0.01 |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        close = "yes" if abs(r["fastmlp_score"] - r["sklearn_score"]) <= SCORE_MARGIN else "no"
        lines.append(f"| {r['data']} | {r['threads']} | {r['fastmlp_seconds']:.4f} | {r['sklearn_seconds']:.4f} | "
                     f"{r['speedup']:.2f}x | {r['limit_seconds']:.4f} | {r['fastmlp_score']:.4f} | "
                     f"{r['sklearn_score']:.4f} | {close} |")
    lines.append("\nGEMM limit: the fit's GEMM FLOPs (forward, weight and input gradients, every epoch) at the "
                 "dgemm rate (1024^3) measured in the same children: no float64 fit of this network can be faster.")
    for library in LIBRARIES:
        kernels = kernels_line(results[0][f"{library}_kernels"]) or "none"
        lines.append(f"\n{library}'s BLAS kernels (threadpoolctl): {kernels}")
    return "\n".join(lines)


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per case (default 7)")
    parser.add_argument("--epochs", type=int, default=50, help="epochs of every fit (default 50)")
    parser.add_argument("--fits", type=int, default=3, help="timed fits per child, their median its time (default 3)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64], help="hidden layer widths (default 64)")
    parser.add_argument("--solver", choices=("adam", "sgd"), default="adam")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning_rate_init (default 1e-3)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    parser.add_argument("--data", nargs="+", choices=DATA, default=list(DATA))
    parser.add_argument("--settle", type=float, default=1.0, help="pause before each fit, seconds (default 1)")
    parser.add_argument("--timeout", type=float, default=600.0, help="limit of one child, seconds")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=LIBRARIES, dest="library", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.library:
        args.data, args.threads = args.data[0], args.threads[0]
        child(args)
        return 0
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}; {args.rounds} interleaved rounds of {args.epochs} epochs")
    results = [compare(data, threads, args) for data in args.data for threads in args.threads]
    print(f"machine: {machine}\n{table(results)}")
    if args.json:  # the table's numbers with every round's ratio and the machine
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
