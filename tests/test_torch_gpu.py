"""The torch trainers on a CUDA GPU: skipped without one, run wherever a GPU is present.

What a GPU changes: the autocast dtype (bf16 where native, else float16 with a scaler),
cuDNN algorithm choice (``--deterministic`` or ``cudnn.benchmark``), the CUDA generator on
``--resume``, pinned host-to-device copies and the deferred loss reads.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from _trainer_runs import run_cut_and_resume, train_until  # noqa: E402
from torch_models import checkpoint as tcheckpoint  # noqa: E402
from torch_models import precision, rng, train_convnet, train_mlp  # noqa: E402
from torch_models.step_stats import StepStats  # noqa: E402
from torch_models.transfer import HostToDevice  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
REPO_ROOT = Path(__file__).resolve().parents[1]
GPU = ["--device", "cuda"]


def test_convnet_amp_records_the_dtype_the_gpu_runs(tmp_path, small_cifar_dir):
    out = tmp_path / "run"
    code = train_convnet.main([*GPU, "--data_dir", str(small_cifar_dir), "--batch_size", "8", "--max_steps", "4",
                               "--eval_freq", "2", "--augment", "--amp", "--quiet", "--out_dir", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    native = precision.cuda_has_native_bf16(torch.device("cuda", 0))
    assert metrics["autocast_dtype"] == ("bfloat16" if native else "float16")
    assert metrics["grad_scaler"] is (not native) and metrics["amp"] is True
    assert metrics["device"] == "cuda:0" and metrics["gpu"] == torch.cuda.get_device_name(0)
    assert metrics["channels_last"] is True and metrics["cudnn_benchmark"] is True and metrics["tf32"] is True
    assert np.isfinite(metrics["test_loss"])
    checkpoint = tcheckpoint.load_checkpoint(out)
    assert checkpoint["precision"]["autocast_dtype"] == metrics["autocast_dtype"]
    assert checkpoint["rng"]["per_rank"][0]["cuda"] is not None


def test_convnet_deterministic_resume_is_exact_on_the_gpu(tmp_path, small_cifar_dir):
    # Augmentation on the GPU (CUDA generator), cosine schedule, BatchNorm buffers, bf16/fp16 autocast.
    flags = [*GPU, "--deterministic", "--data_dir", str(small_cifar_dir), "--batch_size", "8", "--max_steps", "6",
             "--eval_freq", "2", "--augment", "--amp", "--lr_schedule", "cosine", "--learning_rate", "1e-3",
             "--quiet"]
    whole, resumed = run_cut_and_resume(train_convnet, flags, None, tmp_path, stop_step=2)
    assert resumed["test_loss"] == whole["test_loss"] and resumed["deterministic"] is True
    a, b = tcheckpoint.load_checkpoint(tmp_path / "whole"), tcheckpoint.load_checkpoint(tmp_path / "cut")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert not torch.are_deterministic_algorithms_enabled()  # undone after each run


def test_cpu_checkpoint_resumed_on_the_gpu_reseeds_the_cuda_generator(tmp_path, small_cifar_dir):
    flags = ["--data_dir", str(small_cifar_dir), "--batch_size", "8", "--max_steps", "4", "--eval_freq", "2",
             "--augment", "--quiet"]
    train_until(train_convnet, ["--device", "cpu", *flags, "--out_dir", str(tmp_path)], None, stop_step=2)
    with pytest.warns(UserWarning, match="written on the CPU, this run trains on CUDA"):
        metrics = train_convnet.train(train_convnet.build_parser().parse_args([*GPU, *flags, "--resume",
                                                                               str(tmp_path)]))
    assert metrics["steps"] == 4
    assert torch.cuda.initial_seed() == rng.resume_seed(42, 0, 2)  # not the step-0 stream of --seed


def test_host_to_device_reuses_pinned_buffers_safely_and_step_stats_read_late():
    device = torch.device("cuda", 0)
    to_device = HostToDevice(device, slots=2)
    arrays = [np.full((64, 3, 32, 32), i, dtype=np.float32) for i in range(5)]
    tensors = [to_device(a) for a in arrays]  # buffers 0, 1, 0, 1, 0: refilled only after their copy
    assert all(t.device == device and t.is_contiguous() for t in tensors)
    assert [t.mean().item() for t in tensors] == [0.0, 1.0, 2.0, 3.0, 4.0]
    stats = StepStats(device, capacity=4)
    for step in range(1, 5):
        stats.add(step, torch.tensor(step / 2, device=device), torch.tensor(step, device=device))
    assert stats.full and stats.read() == [(1, 0.5, 1.0), (2, 1.0, 2.0), (3, 1.5, 3.0), (4, 2.0, 4.0)]


def test_mlp_nan_loss_on_the_gpu_names_its_step_and_keeps_the_checkpoint(tmp_path, synthetic_cifar_dir):
    # On CUDA the losses are read every hooks.CUDA_READ_EVERY steps: the divergence is found
    # late but still named by its step, and the last checkpoint precedes it.
    flags = [*GPU, "--data_dir", str(synthetic_cifar_dir), "--learning_rate", "1e12", "--max_steps", "50",
             "--eval_freq", "40", "--quiet", "--out_dir", str(tmp_path)]
    from fastmlp.runlog import DivergenceError

    with pytest.raises(DivergenceError) as info:
        train_mlp.train(train_mlp.build_parser().parse_args(flags))
    assert 1 <= info.value.step < 40 and tcheckpoint.load_checkpoint(tmp_path)["step"] == 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_torchrun_two_gpus(tmp_path, synthetic_cifar_dir):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
         "torch_models.train_mlp", *GPU, "--data_dir", str(synthetic_cifar_dir), "--max_steps", "10",
         "--eval_freq", "5", "--batch_size", "100", "--out_dir", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and len(tcheckpoint.load_checkpoint(out)["rng"]["per_rank"]) == 2


@pytest.mark.slow
def test_convnet_compile_on_the_gpu(tmp_path, small_cifar_dir):
    out = tmp_path / "compiled"
    code = train_convnet.main([*GPU, "--data_dir", str(small_cifar_dir), "--batch_size", "8", "--max_steps", "4",
                               "--eval_freq", "2", "--eval_batch_size", "6", "--amp", "--compile", "--quiet",
                               "--out_dir", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["compile_seconds"] > 0 and metrics["timed_steps"] == 3 and np.isfinite(metrics["test_loss"])
