"""The device-facing pieces of the torch trainers, on the CPU: the --amp policy, the backend
switches, host-to-device batches and the deferred per-step statistics.

CUDA decisions are exercised with torch.cuda's queries replaced (no GPU needed); what only a
GPU can show runs in test_torch_gpu.py.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch_models import devices, precision  # noqa: E402
from torch_models.step_stats import StepStats  # noqa: E402
from torch_models.transfer import HostToDevice  # noqa: E402

X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 avx512f avx512bw {extra}
"""
ARM_CPUINFO = """processor\t: 0
Features\t: fp asimd {extra}
"""


@pytest.mark.parametrize("text, expected", [
    (X86_CPUINFO.format(extra="avx512_bf16 avx512_vnni"), ("avx512_bf16",)),
    (X86_CPUINFO.format(extra="amx_bf16 amx_tile avx512_bf16"), ("avx512_bf16", "amx_bf16")),
    (X86_CPUINFO.format(extra="avx512_vnni"), ()),  # AVX-512 without bf16: oneDNN would emulate it
    (ARM_CPUINFO.format(extra="sve bf16 i8mm"), ("bf16",)),
    (ARM_CPUINFO.format(extra="sve"), ()),
])
def test_cpu_bf16_features_reads_the_flags_line(tmp_path, text, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    assert precision.cpu_bf16_features(cpuinfo) == expected


def test_without_cpuinfo_torch_probes_answer(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert precision.cpu_bf16_features(tmp_path / "missing") == ("avx512_bf16",)


def test_cpu_policy(monkeypatch, recwarn):
    cpu = torch.device("cpu")
    off = precision.choose_precision(False, cpu)
    assert off.dtype is None and not off.enabled and not off.requested and not off.grad_scaler
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: ("amx_bf16",))
    native = precision.choose_precision(True, cpu)
    assert native.dtype is torch.bfloat16 and native.features == ("amx_bf16",) and not native.grad_scaler
    assert native.record() == {"amp": True, "amp_requested": True, "autocast_dtype": "bfloat16",
                               "grad_scaler": False, "precision_reason": native.reason,
                               "precision_features": ["amx_bf16"]}
    assert not recwarn.list
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: ())
    with pytest.warns(UserWarning, match="no native bf16"):
        fallback = precision.choose_precision(True, cpu)
    assert fallback.requested and fallback.dtype is None and fallback.record()["amp"] is False
    assert precision.choose_precision(True, cpu, warn=False) == fallback  # e.g. a rank other than 0
    assert not recwarn.list  # ... says nothing


@pytest.mark.parametrize("native, dtype, scaler", [(True, torch.bfloat16, False), (False, torch.float16, True)])
def test_cuda_policy_uses_native_bf16_else_float16_with_a_scaler(monkeypatch, recwarn, native, dtype, scaler):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0) if native else (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "A100" if native else "Tesla T4")
    monkeypatch.setattr(precision, "cuda_has_native_bf16", lambda device: native)
    chosen = precision.choose_precision(True, torch.device("cuda", 0))
    assert chosen.dtype is dtype and chosen.grad_scaler is scaler and chosen.device_type == "cuda"
    assert chosen.features[1] == ("compute capability 8.0" if native else "compute capability 7.5")
    warned = [str(w.message) for w in recwarn.list]
    assert warned == ([] if native else [chosen.reason]) and (native or "float16" in chosen.reason)


def test_autocast_and_scaler_follow_the_choice(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: ("avx512_bf16",))
    linear = torch.nn.Linear(4, 2)
    for amp, expected in ((True, torch.bfloat16), (False, torch.float32)):
        chosen = precision.choose_precision(amp, torch.device("cpu"))
        with chosen.autocast():
            assert linear(torch.ones(3, 4)).dtype == expected
        assert not chosen.make_grad_scaler().is_enabled()  # bf16 and fp32 need no loss scaling


def test_backend_settings_set_and_restore(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
              torch.are_deterministic_algorithms_enabled(), torch.get_float32_matmul_precision())
    cuda = torch.device("cuda", 0)  # only flags are set: no GPU is touched
    with devices.backend_settings(cuda, deterministic=True) as applied:
        assert applied == {"deterministic": True, "cudnn_benchmark": False, "tf32": True}
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == devices.CUBLAS_WORKSPACE
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
            torch.are_deterministic_algorithms_enabled(), torch.get_float32_matmul_precision()) == before
    with devices.backend_settings(cuda, deterministic=False) as applied:
        assert applied["cudnn_benchmark"] and torch.backends.cudnn.benchmark
        assert torch.get_float32_matmul_precision() == "high"  # TF32
    with devices.backend_settings(torch.device("cpu"), deterministic=True) as applied:
        assert applied == {"deterministic": True} and torch.are_deterministic_algorithms_enabled()
        assert torch.get_float32_matmul_precision() == before[3]  # no TF32 question on the CPU
    assert not torch.are_deterministic_algorithms_enabled()


def test_describe_device_on_the_cpu():
    facts = devices.describe_device(torch.device("cpu"))
    assert facts["device"] == "cpu" and facts["torch_threads"] == torch.get_num_threads()
    assert facts["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and "gpu" not in facts


def test_host_to_device_on_the_cpu_shares_memory():
    to_device = HostToDevice(torch.device("cpu"))
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = to_device(array)
    array[0, 0] = 42.0
    assert tensor[0, 0].item() == 42.0 and tensor.shape == (2, 3) and tensor.dtype == torch.float32
    strided = to_device(np.arange(10, dtype=np.int64)[::2])  # made contiguous
    assert strided.tolist() == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError, match="slots"):
        HostToDevice(torch.device("cpu"), slots=0)


def test_step_stats_hold_steps_until_read():
    stats = StepStats(torch.device("cpu"), capacity=3)
    for step, loss, correct in ((7, 2.5, 3), (8, float("nan"), 4)):
        stats.add(step, torch.tensor(loss), torch.tensor(correct))
    assert not stats.full
    stats.add(9, torch.tensor(1.25, requires_grad=True) * 1, torch.tensor(0))
    assert stats.full
    with pytest.raises(RuntimeError, match="full"):
        stats.add(10, torch.tensor(0.0), torch.tensor(0))
    rows = stats.read()
    assert [r[0] for r in rows] == [7, 8, 9] and rows[0][1:] == (2.5, 3.0) and np.isnan(rows[1][1])
    assert rows[2][1:] == (1.25, 0.0) and stats.read() == [] and not stats.full
