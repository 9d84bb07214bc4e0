"""Run the train-step benchmarks and print the ratios the issue's targets are stated in.

    python benches/report.py                 # runs pytest-benchmark, then prints the table
    python benches/report.py --json FILE     # only formats an existing --benchmark-json file

Ratios come from one run: speed-ups are median(other) / median(fastmlp); the
roofline time of a step is its GEMM FLOPs divided by the sgemm rate measured in
the same run (SciPy's BLAS at 2048^3, the library fastmlp calls).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# config -> (min speed-up vs numpy, min speed-up vs torch, max fastmlp / roofline)
TARGETS = {
    "3072-100-10 b1": (2.0, 2.0, None),
    "3072-100-10 b32": (1.3, 2.0, None),
    "3072-100-10 b200": (1.12, 1.3, 1.3),
    "3072-1024-512-256-128-10 b600": (1.05, 1.05, 1.10),
}


def run_benchmarks(json_path: Path, extra: list[str]) -> None:
    cmd = [sys.executable, "-m", "pytest", str(HERE / "bench_train_step.py"), "--benchmark-only",
           f"--benchmark-json={json_path}", "-q", "-p", "no:cacheprovider", *extra]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=HERE.parent)


def fmt_ratio(value, target, higher_is_better=True):
    if value is None:
        return "n/a"
    if target is None:
        return f"{value:.2f}x"
    ok = value >= target if higher_is_better else value <= target
    return f"{value:.2f}x ({'ok' if ok else 'MISS'} {'>=' if higher_is_better else '<='}{target})"


def table(data: dict) -> str:
    medians, flops = {}, {}
    sgemm_rate = None
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        if info["impl"] == "sgemm":
            sgemm_rate = info["flops"] / bench["stats"]["median"]
            continue
        medians[(info["config"], info["impl"])] = bench["stats"]["median"]
        flops[info["config"]] = info["flops"]
    lines = [
        f"sgemm 2048^3 (SciPy BLAS): {sgemm_rate / 1e9:.1f} GFLOP/s" if sgemm_rate else "sgemm: not measured",
        "",
        "| config | fastmlp | NumPy ref | PyTorch | vs NumPy | vs PyTorch | roofline | fastmlp / roofline |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for config, (t_np, t_torch, t_roof) in TARGETS.items():
        fast = medians.get((config, "fastmlp"))
        if fast is None:
            continue
        ref, tor = medians.get((config, "numpy")), medians.get((config, "torch"))
        roof = flops[config] / sgemm_rate if sgemm_rate else None
        lines.append(
            f"| {config} | {fast * 1e3:.3f} ms | {ref * 1e3:.3f} ms | "
            + (f"{tor * 1e3:.3f} ms" if tor else "n/a")
            + f" | {fmt_ratio(ref / fast, t_np)} | {fmt_ratio(tor / fast if tor else None, t_torch)}"
            + f" | {roof * 1e3:.3f} ms | {fmt_ratio(fast / roof if roof else None, t_roof, higher_is_better=False)} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="format this pytest-benchmark JSON instead of running")
    parser.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    args = parser.parse_args(argv)
    if args.json is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench.json"
            run_benchmarks(path, args.pytest_args)
            data = json.loads(path.read_text())
    else:
        data = json.loads(args.json.read_text())
    machine = data.get("machine_info", {})
    print(f"\nmachine: {machine.get('cpu', {}).get('brand_raw', platform.processor())}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}")
    print(table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
