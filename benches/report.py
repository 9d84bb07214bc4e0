"""Time one float32 train step of fastmlp, the NumPy reference and PyTorch, and print the ratio table.

    python benches/report.py                  # all configs, 15 rounds
    python benches/report.py --rounds 31 --json out.json

The contenders of a config, and the sgemm roofline, are timed **interleaved**:
every round runs each of them once (a few steps each, best of those), so a
slow drift of the machine (shared hosts, clock changes) hits all of them alike.
A pause before each contender lets the previous library's BLAS/OpenMP worker
threads, which spin for a while after a call, go to sleep first.
A ratio is the median over rounds of the per-round ratio; the roofline time of
a step is its GEMM FLOPs divided by the sgemm 2048^3 rate of the same round
(the scipy-openblas32 OpenBLAS that fastmlp's kernels call, on its own threads).
The same steps are in
``bench_train_step.py`` for ``pytest --benchmark-only``.
"""
from __future__ import annotations

from _native import machine_line, reexec_native  # noqa: E402  (imports nothing heavy)

if __name__ == "__main__":
    reexec_native()

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _steps import CONFIGS, fastmlp_step, numpy_step, sgemm_call, step_flops, torch_step  # noqa: E402

# config -> (min speed-up vs NumPy, min speed-up vs PyTorch, max fastmlp / roofline)
TARGETS = {
    "3072-100-10 b1": (2.0, 2.0, None),
    "3072-100-10 b32": (1.3, 2.0, None),
    "3072-100-10 b200": (1.12, 1.3, 1.3),
    "3072-1024-512-256-128-10 b600": (1.05, 1.05, 1.10),
}


def time_once(fn, budget_s):
    """Best per-call time of ``fn`` over as many calls as fit in ``budget_s`` (at least 2)."""
    best, start, calls = float("inf"), time.perf_counter(), 0
    while calls < 2 or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        calls += 1
    return best


SETTLE_S = 0.15  # OpenBLAS workers spin ~0.1 s after a call before they sleep


def measure(config, hidden, batch, rounds, budget_s, with_torch):
    makers = {"fastmlp": fastmlp_step, "numpy": numpy_step}
    if with_torch:
        makers["torch"] = torch_step
    steps = {name: make(hidden, batch) for name, make in makers.items()}
    sgemm, sgemm_flops = sgemm_call()
    for fn in [*steps.values(), sgemm]:  # warm-up: first calls allocate and fault pages in
        fn()
        fn()
    times = {name: [] for name in [*steps, "sgemm"]}
    for _ in range(rounds):
        for name, fn in [*steps.items(), ("sgemm", sgemm)]:
            time.sleep(SETTLE_S)
            times[name].append(time_once(fn, budget_s))
    flops = step_flops(hidden, batch)
    med = {name: statistics.median(v) for name, v in times.items()}
    per_round = lambda f: statistics.median(f(i) for i in range(rounds))  # noqa: E731
    result = {
        "config": config,
        "flops": flops,
        "median_s": med,
        "sgemm_gflops": sgemm_flops / med["sgemm"] / 1e9,
        "vs_numpy": per_round(lambda i: times["numpy"][i] / times["fastmlp"][i]),
        "vs_roofline": per_round(lambda i: times["fastmlp"][i] / (flops * times["sgemm"][i] / sgemm_flops)),
    }
    if with_torch:
        result["vs_torch"] = per_round(lambda i: times["torch"][i] / times["fastmlp"][i])
    return result


def fmt(value, target, higher_is_better=True):
    if value is None:
        return "n/a"
    if target is None:
        return f"{value:.2f}x"
    ok = value >= target if higher_is_better else value <= target
    return f"{value:.2f}x ({'met' if ok else 'missed'}: {'>=' if higher_is_better else '<='} {target})"


def table(results):
    lines = [
        "| config | fastmlp | NumPy ref | PyTorch | fastmlp vs NumPy | fastmlp vs PyTorch | roofline | fastmlp / roofline |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        t_np, t_torch, t_roof = TARGETS.get(r["config"], (None, None, None))
        med = r["median_s"]
        roof = r["flops"] / (r["sgemm_gflops"] * 1e9)
        torch_ms = f"{med['torch'] * 1e3:.3f} ms" if "torch" in med else "n/a"
        lines.append(
            f"| {r['config']} | {med['fastmlp'] * 1e3:.3f} ms | {med['numpy'] * 1e3:.3f} ms | {torch_ms} "
            f"| {fmt(r['vs_numpy'], t_np)} | {fmt(r.get('vs_torch'), t_torch)} "
            f"| {roof * 1e3:.3f} ms | {fmt(r['vs_roofline'], t_roof, higher_is_better=False)} |"
        )
    rates = ", ".join(f"{r['sgemm_gflops']:.0f}" for r in results)
    lines.append("")
    lines.append(f"sgemm 2048^3 through scipy-openblas32, GFLOP/s (median of each config's rounds): {rates}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per config")
    parser.add_argument("--budget", type=float, default=0.1, help="seconds per contender per round")
    parser.add_argument("--configs", nargs="*", default=[c[0] for c in CONFIGS], help="subset of configs")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.budget <= 0:
        parser.error("--rounds must be >= 1 and --budget > 0")
    try:
        import torch  # noqa: F401

        with_torch = True
    except ImportError:
        with_torch = False
    unknown = set(args.configs) - {c[0] for c in CONFIGS}
    if unknown:
        parser.error(f"unknown config(s) {sorted(unknown)}; choose from {[c[0] for c in CONFIGS]}")
    results = [
        measure(name, hidden, batch, args.rounds, args.budget, with_torch)
        for name, hidden, batch in CONFIGS
        if name in args.configs
    ]
    print(f"machine: {machine_line()}; {args.rounds} interleaved rounds")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
