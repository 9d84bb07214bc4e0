"""The whole default course run, as whole processes: ``python -m fastmlp.train`` vs plain NumPy and PyTorch scripts.

    python benches/end_to_end.py --data_dir ../shared/data            # 5 interleaved rounds
    python benches/end_to_end.py --data_dir ../shared/data --rounds 9 --json e2e.json

Each round runs every command once, in alternating order, with a settle pause
before each, and measures each process's wall time (fork to exit) and peak
resident memory (``wait4``'s ``ru_maxrss``). Reported: medians, and the median
over rounds of the per-round ratio (contender wall / fastmlp wall). Every
process runs without the OpenBLAS overrides (``_native.py``), and the table
names the kernels they loaded.

All read the same extracted ``cifar-10-batches-py/`` folder (the archive is
unpacked once, untimed, into a temporary folder). fastmlp runs with its
decoded-array cache warm (as on a user's second run; the first run of a new
source, which decodes and caches it, is timed once and reported separately),
writes all its outputs (metrics, curves, 16 checkpoints) and evaluates the
whole test set 16 times, as the scripts do. The physical limit is what no
implementation of the run avoids: a process that imports fastmlp and reads the
data from the warm cache (best of 3), plus the run's GEMM work at the sgemm
2048^3 rate measured in the same run.
"""
from __future__ import annotations

from _native import child_kernels, machine_line, native_env, reexec_native  # noqa: E402  (imports nothing heavy)

if __name__ == "__main__":
    reexec_native()

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


def sgemm_gflops(env: dict[str, str]) -> float:
    """sgemm rate (GFLOP/s) of 2048^3 through the OpenBLAS fastmlp links, on OpenBLAS's own threads."""
    code = ("import sys, time; sys.path.insert(0, %r); from _steps import sgemm_call\n"
            "call, flops = sgemm_call(); call(); best = 1e9\n"
            "for _ in range(5):\n"
            "    t = time.perf_counter(); call(); best = min(best, time.perf_counter() - t)\n"
            "print(flops / best / 1e9)") % str(BENCHES)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(done.stdout)


STARTUP_CODE = ("import sys, fastmlp.train\nfrom fastmlp.data import get_cifar10\n"
                "get_cifar10(sys.argv[1], one_hot=False, flatten=True)")


def contenders(source: Path, run_dir: Path, with_torch: bool) -> dict[str, list[str]]:
    """The whole-run commands, by name: fastmlp first (the ratios' denominator)."""
    commands = {
        "fastmlp": [sys.executable, "-m", "fastmlp.train", "--data_dir", str(source), "--quiet",
                    "--out_dir", str(run_dir), "--overwrite"],
        "numpy": [sys.executable, str(BENCHES / "numpy_baseline_train.py"), "--data_dir", str(source), "--quiet"],
    }
    if with_torch:
        commands["torch"] = [sys.executable, str(BENCHES / "torch_baseline_train.py"), "--data_dir", str(source),
                             "--quiet"]
    return commands


def print_table(results: dict, cold: tuple[float, float], startup: float, gflops: float, rounds: int) -> None:
    med = {name: statistics.median(v["wall"]) for name, v in results.items()}
    rss = {name: max(v["rss"]) for name, v in results.items()}
    floor = startup + RUN_FLOPS / (gflops * 1e9)
    print("\n| whole run, course defaults | median wall | peak RSS | vs fastmlp (median of per-round ratios) |")
    print("| --- | --- | --- | --- |")
    for name, label in LABELS.items():
        if name in results:
            ratio = statistics.median(o / f for o, f in zip(results[name]["wall"], results["fastmlp"]["wall"]))
            print(f"| {label} | {med[name]:.2f} s | {rss[name]:.0f} MB | {ratio:.2f}x |")
    print(f"| physical limit: start + data read ({startup:.2f} s) + {RUN_FLOPS / 1e9:.0f} GFLOP at "
          f"{gflops:.0f} GFLOP/s (sgemm 2048^3, this run) | {floor:.2f} s | | fastmlp at "
          f"{med['fastmlp'] / floor:.2f}x of it |")
    print(f"\n{rounds} interleaved rounds; fastmlp's first run of this source (decodes and caches it): "
          f"{cold[0]:.2f} s, {cold[1]:.0f} MB")


LABELS = {
    "fastmlp": "`python -m fastmlp.train` (decoded cache warm)",
    "numpy": "plain NumPy script (`benches/numpy_baseline_train.py`)",
    "torch": "plain PyTorch script (`benches/torch_baseline_train.py`)",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=Path(os.environ.get("FASTMLP_DATA", "../shared/data")),
                        help="folder holding cifar-10-python.tar.gz or cifar-10-batches-py/")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of pause before each run")
    parser.add_argument("--no_torch", action="store_true", help="leave the PyTorch script out")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fastmlp-e2e-") as tmp:
        tmp = Path(tmp)
        source = args.data_dir
        if (source / "cifar-10-python.tar.gz").is_file() and not (source / "cifar-10-batches-py").is_dir():
            source = extract(source / "cifar-10-python.tar.gz", tmp / "data")
        env = {**native_env(), "FASTMLP_CACHE": str(tmp / "cache")}
        commands = contenders(source, tmp / "run", with_torch=not args.no_torch)
        print(f"machine: {machine_line()}")
        print(f"kernels in the children: fastmlp and NumPy: {child_kernels('import fastmlp', env)}", flush=True)
        cold = run_process(commands["fastmlp"], env)[:2]  # first run: decodes and caches
        for name in list(commands)[1:]:
            run_process(commands[name], env)  # warm the page cache and the imports alike
        startup = min(run_process([sys.executable, "-c", STARTUP_CODE, str(source)], env)[0] for _ in range(3))
        results = {name: {"wall": [], "rss": []} for name in commands}
        for r in range(args.rounds):
            for name in (list(commands) if r % 2 == 0 else list(commands)[::-1]):
                time.sleep(args.settle)
                wall, rss, _ = run_process(commands[name], env)
                results[name]["wall"].append(wall)
                results[name]["rss"].append(rss)
            accuracy = json.loads((tmp / "run" / "metrics.json").read_text())["test_accuracy"]
            walls = ", ".join(f"{name} {v['wall'][-1]:.2f} s" for name, v in results.items())
            print(f"round {r + 1}: {walls} (fastmlp test accuracy {accuracy:.4f})", flush=True)
        gflops = sgemm_gflops(env)
    print_table(results, cold, startup, gflops, args.rounds)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "cold": cold, "startup": startup,
                                         "sgemm_gflops": gflops}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
