"""The benchmark suites' shared helpers (benches/_steps.py) compute what they time.

``pytest`` skips the benchmarks themselves (``--benchmark-skip``), so a helper that
returns nothing would only show under ``pytest --benchmark-only``; these run in
every test session.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
import _steps  # noqa: E402


def test_sgemm_call_returns_the_product_it_times():
    call, flops = _steps.sgemm_call(64)
    c = call()
    assert flops == 2 * 64**3 and c.shape == (64, 64) and c.dtype == np.float32
    # Entries of a product of two standard normal 64 x 64 matrices have variance 64.
    assert np.isfinite(c).all() and 32 < float(np.mean(c.astype(np.float64) ** 2)) < 128
    assert call() is c


def test_native_env_drops_only_the_openblas_overrides():
    import _native

    env = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512", "OPENBLAS_NUM_THREADS": "1", "PATH": "/bin"}
    assert _native.native_env(env) == {"OPENBLAS_NUM_THREADS": "1", "PATH": "/bin"}


def test_a_benchmark_script_restarts_itself_without_the_overrides(tmp_path):
    import os
    import subprocess

    script = tmp_path / "probe.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / 'benches')!r})\n"
        "from _native import reexec_native\n"
        "reexec_native()\n"
        "print(os.environ.get('OPENBLAS_CORETYPE'), os.environ.get('OPENBLAS_L2_SIZE'), sys.argv[1:])\n"
    )
    env = {**os.environ, "OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512"}
    out = subprocess.run([sys.executable, str(script), "--rounds", "3"], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == "None None ['--rounds', '3']"
