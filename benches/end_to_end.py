"""The whole default course run, as whole processes: ``python -m fastmlp.train`` vs the plain NumPy script.

    python benches/end_to_end.py --data_dir ../shared/data            # 5 interleaved rounds
    python benches/end_to_end.py --data_dir ../shared/data --rounds 9 --json e2e.json

Each round runs both commands once, in alternating order, with a settle pause
before each, and measures each process's wall time (fork to exit) and peak
resident memory (``wait4``'s ``ru_maxrss``). Reported: medians, and the median
over rounds of the per-round ratio (baseline wall / fastmlp wall).

Both read the same extracted ``cifar-10-batches-py/`` folder (the archive is
unpacked once, untimed, into a temporary folder). fastmlp runs with its
decoded-array cache warm (as on a user's second run; the first run of a new
source, which decodes and caches it, is timed once and reported separately),
writes all its outputs (metrics, curves, 16 checkpoints) and evaluates the
whole test set 16 times, as the script does. The "physical limit" line is the
run's GEMM work at the sgemm rate measured in the same run plus one read of the
pickles.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

BENCHES = Path(__file__).resolve().parent
# GEMM FLOPs of the default run: 1500 steps x (forward + dW of 3072x100, forward + dW + dX of 100x10) at
# batch 200, plus 16 forward passes over the 10,000 test images.
STEP_FLOPS = 2 * 200 * (2 * 3072 * 100 + 3 * 100 * 10)
EVAL_FLOPS = 2 * 10000 * (3072 * 100 + 100 * 10)
RUN_FLOPS = 1500 * STEP_FLOPS + 16 * EVAL_FLOPS


def run_process(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout) of one whole process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{out}")
    return wall, usage.ru_maxrss / 1024, out


def extract(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def sgemm_gflops() -> float:
    """sgemm rate (GFLOP/s) of 2048^3 through the OpenBLAS fastmlp links, on OpenBLAS's own threads."""
    code = ("import sys, time; sys.path.insert(0, %r); from _steps import sgemm_call\n"
            "call, flops = sgemm_call(); call(); best = 1e9\n"
            "for _ in range(5):\n"
            "    t = time.perf_counter(); call(); best = min(best, time.perf_counter() - t)\n"
            "print(flops / best / 1e9)") % str(BENCHES)
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=Path(os.environ.get("FASTMLP_DATA", "../shared/data")),
                        help="folder holding cifar-10-python.tar.gz or cifar-10-batches-py/")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of pause before each run")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fastmlp-e2e-") as tmp:
        tmp = Path(tmp)
        source = args.data_dir
        if (source / "cifar-10-python.tar.gz").is_file() and not (source / "cifar-10-batches-py").is_dir():
            source = extract(source / "cifar-10-python.tar.gz", tmp / "data")
        env = {**os.environ, "FASTMLP_CACHE": str(tmp / "cache")}
        commands = {
            "fastmlp": [sys.executable, "-m", "fastmlp.train", "--data_dir", str(source), "--quiet",
                        "--out_dir", str(tmp / "run")],
            "numpy": [sys.executable, str(BENCHES / "numpy_baseline_train.py"), "--data_dir", str(source), "--quiet"],
        }
        cold, cold_rss, _ = run_process(commands["fastmlp"], env)  # first run: decodes and caches
        run_process(commands["numpy"], env)  # warm the page cache of the pickles alike
        results = {name: {"wall": [], "rss": []} for name in commands}
        for r in range(args.rounds):
            for name in (list(commands) if r % 2 == 0 else list(commands)[::-1]):
                time.sleep(args.settle)
                wall, rss, out = run_process(commands[name], env)
                results[name]["wall"].append(wall)
                results[name]["rss"].append(rss)
            accuracy = json.loads((tmp / "run" / "metrics.json").read_text())["test_accuracy"]
            print(f"round {r + 1}: fastmlp {results['fastmlp']['wall'][-1]:.2f} s, "
                  f"numpy {results['numpy']['wall'][-1]:.2f} s (fastmlp test accuracy {accuracy:.4f})", flush=True)
        gflops = sgemm_gflops()
    med = {name: statistics.median(v["wall"]) for name, v in results.items()}
    rss = {name: max(v["rss"]) for name, v in results.items()}
    ratio = statistics.median(n / f for n, f in zip(results["numpy"]["wall"], results["fastmlp"]["wall"]))
    floor = RUN_FLOPS / (gflops * 1e9)
    print(f"\n| whole run, course defaults | median wall | peak RSS |\n| --- | --- | --- |")
    print(f"| `python -m fastmlp.train` (decoded cache warm) | {med['fastmlp']:.2f} s | {rss['fastmlp']:.0f} MB |")
    print(f"| plain NumPy script (`benches/numpy_baseline_train.py`) | {med['numpy']:.2f} s | {rss['numpy']:.0f} MB |")
    print(f"\nfastmlp vs NumPy: {ratio:.2f}x faster (median of {args.rounds} per-round ratios); "
          f"peak RSS {rss['fastmlp'] / rss['numpy']:.2f}x the script's")
    print(f"fastmlp's first run of this source (decodes and caches it): {cold:.2f} s, {cold_rss:.0f} MB")
    print(f"GEMM work {RUN_FLOPS / 1e9:.0f} GFLOP at {gflops:.0f} GFLOP/s (sgemm 2048^3, this run) = {floor:.2f} s")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "cold": [cold, cold_rss], "sgemm_gflops": gflops,
                                         "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
