import os
import sys
from pathlib import Path

# The benchmark modules import their shared helpers (_steps.py, _native.py) by plain name.
sys.path.insert(0, str(Path(__file__).parent))

from _native import OVERRIDES, blas_kernels, native_env  # noqa: E402


def pytest_configure(config):
    """Under ``--benchmark-only``, restart pytest without the OpenBLAS overrides (see ``_native.py``).

    Only benchmark sessions restart: the test suite keeps the environment it is
    given. The restart happens before any benchmark module imports NumPy's or
    fastmlp's OpenBLAS in the new process.
    """
    if config.getoption("benchmark_only", default=False) and any(key in os.environ for key in OVERRIDES):
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "pytest", *sys.argv[1:]], native_env())


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record which BLAS kernels every library ran, beside pytest-benchmark's own machine facts."""
    machine_info["blas_kernels"] = blas_kernels()
    machine_info["openblas_overrides"] = {key: os.environ[key] for key in OVERRIDES if key in os.environ}
