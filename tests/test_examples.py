"""The scripts in examples/ run and say what they should (tiny sizes)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script, *args, cwd):
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], capture_output=True,
                          text=True, timeout=600, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_estimator_learns_the_digits_and_its_model_file_predicts_the_same(tmp_path):
    pytest.importorskip("sklearn")
    out = _run("estimator_digits.py", "--max_iter", 20, "--out", tmp_path / "digits.safetensors", cwd=tmp_path)
    assert float(re.search(r"test accuracy (\S+)", out).group(1)) > 0.85, out
    assert "predicts the same labels: True" in out
    assert (tmp_path / "digits.safetensors").is_file()


def test_train_save_predict_then_export_to_onnx(tmp_path, synthetic_cifar_dir):
    pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    out = _run("train_save_predict.py", "--data_dir", synthetic_cifar_dir, "--max_steps", 200, "--out_dir", run,
               cwd=tmp_path)
    recorded, loaded = re.search(r"run's test accuracy (\S+); the loaded model's (\S+)", out).groups()
    assert recorded == loaded and float(loaded) > 0.3, out
    out = _run("export_onnx.py", run / "model.safetensors", cwd=tmp_path)
    assert float(re.search(r"largest difference (\S+)", out).group(1)) < 1e-5, out
    assert (run / "model.onnx").is_file() and re.search(r"first input's class: \w+", out)
