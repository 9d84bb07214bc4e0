"""Process-wide backend switches (cuDNN, TF32, deterministic algorithms) and device facts.

Why a module of its own: these settings are global to the process, must be made before the
first CUDA kernel runs and undone afterwards (tests train several runs in one process), and
what ``--resume`` can promise depends on them.

What ``--resume`` promises
--------------------------
- CPU: a resumed run continues bit for bit like the uninterrupted one (same thread count,
  same torch build).
- CUDA with ``--deterministic``: cuDNN picks deterministic algorithms, torch raises on any
  operation without a deterministic implementation, and cuBLAS gets a fixed workspace, so on
  the same GPU model, driver, torch build and world size a resumed run repeats the
  uninterrupted one bit for bit.
- CUDA without it (the default): ``cudnn.benchmark`` times the convolution algorithms and
  keeps the fastest, which may differ between processes; a resumed run is a correct
  continuation (same data order, weights, optimizer and RNG states) whose numbers drift
  from an uninterrupted run at float rounding level.

On CUDA float32 matrix products and convolutions use TF32 tensor cores (10-bit mantissa
products, float32 accumulation); that is deterministic too.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import torch

__all__ = ["CUBLAS_WORKSPACE", "backend_settings", "describe_device", "synchronize"]

#: cuBLAS workspace configuration that makes its kernels deterministic (CUDA >= 10.2).
CUBLAS_WORKSPACE = ":4096:8"


@contextlib.contextmanager
def backend_settings(device: torch.device, *, deterministic: bool) -> Iterator[dict[str, Any]]:
    """Set cuDNN/TF32/determinism for a run on ``device``; restore the previous values on exit.

    Yields the settings applied, for ``metrics.json``. ``deterministic`` also applies on the
    CPU (``torch.use_deterministic_algorithms``), where the usual kernels already are.
    ``CUBLAS_WORKSPACE_CONFIG`` is set (if unset) and left set: cuBLAS reads it once, when
    the process first uses it, so it cannot be undone.
    """
    previous = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.get_float32_matmul_precision())
    applied: dict[str, Any] = {"deterministic": bool(deterministic)}
    try:
        if deterministic:
            if device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
            torch.use_deterministic_algorithms(True)
        if device.type == "cuda":
            torch.backends.cudnn.deterministic = bool(deterministic)
            torch.backends.cudnn.benchmark = not deterministic  # timing-based choice varies per process
            torch.set_float32_matmul_precision("high")  # TF32 for Linear layers, as cuDNN does for convs
            applied.update(cudnn_benchmark=not deterministic, tf32=True)
        yield applied
    finally:
        benchmark, cudnn_deterministic, algorithms, warn_only, matmul = previous
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = cudnn_deterministic
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        torch.set_float32_matmul_precision(matmul)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously; a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_model_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return None


def describe_device(device: torch.device) -> dict[str, Any]:
    """The facts ``metrics.json`` records about the training device (JSON-ready)."""
    facts: dict[str, Any] = {"device": str(device), "torch_threads": torch.get_num_threads(),
                             "cpu": _cpu_model_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        facts.update(gpu=torch.cuda.get_device_name(device), gpu_capability=f"{major}.{minor}",
                     cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return facts
