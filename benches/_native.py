"""Run every benchmark contender on the BLAS kernels a user's machine would pick.

These machines export ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE``, which hold
every OpenBLAS in a process (NumPy's, fastmlp's ``scipy-openblas32``, PyTorch's
when it uses one) on older, slower kernels. A user's machine sets neither, so a
benchmark that kept them would compare libraries running a handicapped BLAS.
An OpenBLAS reads them once, when it is loaded: a benchmark script calls
:func:`reexec_native` before it imports NumPy, and starts its child processes
with :func:`native_env`. Tests leave the environment as it is.

This module imports nothing heavy, so that it can run before NumPy loads.
"""
from __future__ import annotations

import os
import platform
import sys

#: The variables that pin OpenBLAS's kernel choice and cache-size guess.
OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def native_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default: this process's) without :data:`OVERRIDES`."""
    source = os.environ if env is None else env
    return {key: value for key, value in source.items() if key not in OVERRIDES}


def reexec_native(argv: list[str] | None = None) -> None:
    """Restart this process without :data:`OVERRIDES` if any is set; a no-op otherwise.

    Call before the first import of NumPy, PyTorch or fastmlp: the restarted
    process loads its BLAS libraries afresh, with the kernels OpenBLAS picks for
    this CPU. ``argv`` (default: ``sys.argv``) is the command to restart with,
    after the interpreter.
    """
    if not any(key in os.environ for key in OVERRIDES):
        return
    args = list(sys.argv if argv is None else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *args], native_env())


def blas_kernels() -> list[dict[str, object]]:
    """One entry per BLAS loaded in this process: its library file, version, kernel and threads."""
    from threadpoolctl import threadpool_info

    return [
        {
            "library": os.path.basename(str(info.get("filepath", "?"))),
            "api": info.get("internal_api"),
            "version": info.get("version"),
            "architecture": info.get("architecture"),
            "threads": info.get("num_threads"),
        }
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    ]


def kernels_line(kernels: list[dict[str, object]]) -> str:
    """:func:`blas_kernels`' entries in one line: each library, its version, API and kernel ('' for none)."""
    return "; ".join(f"{k['library']} {k['version']} ({k['api']}) {k['architecture']}" for k in kernels)


def machine_line() -> str:
    """The CPU, core count, Python and the BLAS kernels loaded in this process, for a table's caption."""
    cpu = _cpu_model() or platform.processor() or platform.machine()
    kernels = kernels_line(blas_kernels())
    overrides = [key for key in OVERRIDES if key in os.environ]
    env = f"overrides still set: {', '.join(overrides)}" if overrides else "native kernels (no OpenBLAS overrides)"
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}; BLAS: {kernels or 'none loaded'}; {env}"


def child_kernels(imports: str, env: dict[str, str] | None = None) -> str:
    """The BLAS kernels a child process running with ``env`` gets after ``imports`` (Python statements)."""
    import subprocess

    code = (f"{imports}\nfrom threadpoolctl import threadpool_info\n"
            "print('; '.join(f\"{i.get('internal_api')} {i.get('architecture')}\" for i in threadpool_info()"
            " if i.get('user_api') == 'blas'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=native_env() if env is None else env)
    return done.stdout.strip() if done.returncode == 0 else f"unknown ({done.stderr.strip().splitlines()[-1:]})"


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None
