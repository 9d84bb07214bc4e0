"""Which autocast dtype ``--amp`` applies on a device, decided once per run and recorded.

Why a module of its own: whether a processor runs bfloat16 natively is a property of the
hardware, and torch answers a different question (it counts emulation as support), so the
policy lives in one place that the trainers, the checkpoint and ``metrics.json`` all read.

The policy
----------
- CPU: bfloat16 autocast where the CPU has bf16 instructions (x86 ``avx512_bf16`` or
  ``amx_bf16``, Arm ``bf16``); elsewhere oneDNN would emulate bf16, which is slower than
  float32, so the run stays in float32 and says so once.
- CUDA: bfloat16 where the GPU computes it natively (compute capability 8.0 and up);
  otherwise float16 with a gradient scaler (tensor cores have float16 since compute
  capability 7.0; the scaler keeps small gradients from flushing to zero).
- ``--amp`` off: float32 everywhere.

The weights, optimizer state and checkpoints stay float32 in every case: autocast only
changes the dtype of the operations it covers.
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

__all__ = [
    "CPU_BF16_FLAGS",
    "Precision",
    "choose_precision",
    "cpu_bf16_features",
    "cuda_has_native_bf16",
]

#: CPU feature flags (as /proc/cpuinfo names them) that mean bf16 arithmetic in hardware.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
_CPUINFO = Path("/proc/cpuinfo")


def cpu_bf16_features(cpuinfo: Path = _CPUINFO) -> tuple[str, ...]:
    """The native-bf16 flags of this CPU among :data:`CPU_BF16_FLAGS` (empty: none).

    Reads the ``flags`` (x86) or ``Features`` (Arm) line of ``cpuinfo``; where that file
    does not exist (macOS, Windows) torch's own x86 probes answer.
    """
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        probes = (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx_bf16", "_is_amx_tile_supported"))
        return tuple(flag for flag, probe in probes if getattr(torch.cpu, probe, lambda: False)())
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return tuple(flag for flag in CPU_BF16_FLAGS if flag in flags)


def cuda_has_native_bf16(device: torch.device) -> bool:
    """True when ``device``'s GPU computes bfloat16 in hardware (not by emulation)."""
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


@dataclasses.dataclass(frozen=True)
class Precision:
    """The arithmetic a run trains and evaluates with.

    Attributes
    ----------
    requested : bool
        Whether ``--amp`` was given.
    device_type : str
        ``"cpu"`` or ``"cuda"``.
    dtype : torch.dtype or None
        The autocast dtype, None for plain float32.
    grad_scaler : bool
        Whether losses are scaled (float16 autocast needs it, bfloat16 does not).
    reason : str
        One sentence on why this dtype was chosen (printed and recorded).
    features : tuple of str
        The hardware facts behind the choice: CPU bf16 flags, or the GPU's name and
        compute capability.
    """

    requested: bool
    device_type: str
    dtype: torch.dtype | None
    grad_scaler: bool
    reason: str
    features: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        """True when autocast is active (``--amp`` requested and applied)."""
        return self.dtype is not None

    @property
    def dtype_name(self) -> str | None:
        """``"bfloat16"``, ``"float16"`` or None (float32)."""
        return str(self.dtype).removeprefix("torch.") if self.dtype is not None else None

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """``torch.autocast`` with this dtype; a no-op for float32."""
        with torch.autocast(self.device_type, dtype=self.dtype or torch.bfloat16, enabled=self.enabled):
            yield

    def make_grad_scaler(self) -> torch.amp.GradScaler:
        """A ``GradScaler`` that scales only when :attr:`grad_scaler` (else every call is a pass-through)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.grad_scaler)

    def record(self) -> dict[str, Any]:
        """What the checkpoint and ``metrics.json`` store about it (JSON-ready)."""
        return {"amp": self.enabled, "amp_requested": self.requested, "autocast_dtype": self.dtype_name,
                "grad_scaler": self.grad_scaler, "precision_reason": self.reason,
                "precision_features": list(self.features)}


def choose_precision(amp: bool, device: torch.device, *, warn: bool = True) -> Precision:
    """Apply the module's policy to ``--amp`` on ``device``.

    Parameters
    ----------
    amp : bool
        ``--amp``.
    device : torch.device
        The training device (``cpu`` or ``cuda[:i]``).
    warn : bool
        Emit a ``UserWarning`` when ``--amp`` cannot have bfloat16 (under torchrun only
        rank 0 should, so the message appears once).

    Returns
    -------
    Precision
    """
    if not amp:
        return Precision(False, device.type, None, False, "--amp not given: float32")
    if device.type == "cpu":
        features = cpu_bf16_features()
        if features:
            return Precision(True, "cpu", torch.bfloat16, False,
                             f"the CPU has native bf16 ({', '.join(features)}): bfloat16 autocast", features)
        chosen = Precision(True, "cpu", None, False,
                           "--amp ignored: this CPU has no native bf16 instructions (no avx512_bf16, amx_bf16 "
                           "or bf16 flag), and emulated bf16 is slower than float32; training in float32")
    elif device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        features = (torch.cuda.get_device_name(device), f"compute capability {major}.{minor}")
        if cuda_has_native_bf16(device):
            return Precision(True, "cuda", torch.bfloat16, False,
                             "the GPU computes bf16 natively: bfloat16 autocast", features)
        chosen = Precision(True, "cuda", torch.float16, True,
                           f"the GPU ({features[0]}, {features[1]}) has no native bf16: float16 autocast "
                           "with a gradient scaler instead", features)
    else:
        raise ValueError(f"--amp: device must be cpu or cuda, got {device}")
    if warn:
        warnings.warn(chosen.reason, stacklevel=2)
    return chosen
