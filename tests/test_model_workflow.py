"""After training (issue 21's measure): the run's model file alone predicts, on the command line, and as ONNX.

A short run on synthetic CIFAR-10; then, in another folder with neither the data nor
FASTMLP_DATA, a fresh process loads ``model.safetensors`` and predicts the raw test
images with exactly the run's recorded test accuracy; ``python -m fastmlp.predict`` on
PNGs of those images gives the same classes; the ONNX export's probabilities are
within 1e-5 of fastmlp's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from _cifar_synth import make_synthetic_cifar
from fastmlp.run_config import MLPRunConfig
from fastmlp.training import train

Image = pytest.importorskip("PIL.Image")
ort = pytest.importorskip("onnxruntime")

N_PNG = 12
PREDICT_SCRIPT = """
import json, sys
import numpy as np
import fastmlp
model = fastmlp.load(sys.argv[1])
images = np.load("test_images.npy")
labels = np.asarray(json.load(open("test_labels.json")))
print(json.dumps({"accuracy": float(np.mean(model.predict(images) == labels)),
                  "data_loaded": "fastmlp.data" in sys.modules}))
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_cifar_dir):
    """A finished short run (its metrics) and the synthetic test images it was evaluated on (channels-last)."""
    out = tmp_path_factory.mktemp("workflow") / "run"
    # Kaiming's init: the course's tiny one leaves the outputs near uniform after 200 steps.
    metrics = train(MLPRunConfig(data_dir=synthetic_cifar_dir, max_steps=200, eval_freq=100, init="kaiming",
                                 out_dir=out, quiet=True, preprocessing="standardize"))
    data = make_synthetic_cifar()  # the arrays synthetic_cifar_dir holds
    names = np.asarray(data["label_names"])
    return metrics, out, data["x_test"].transpose(0, 2, 3, 1), names[data["y_test"]]


@pytest.fixture
def elsewhere(tmp_path):
    """A folder and an environment with no CIFAR-10 in reach."""
    env = {key: value for key, value in os.environ.items() if key != "FASTMLP_DATA"}
    return tmp_path, env


def test_the_model_file_alone_predicts_with_the_recorded_test_accuracy(run, elsewhere):
    metrics, out, images, labels = run
    folder, env = elsewhere
    np.save(folder / "test_images.npy", images)
    (folder / "test_labels.json").write_text(json.dumps(labels.tolist()))
    done = subprocess.run([sys.executable, "-c", PREDICT_SCRIPT, str(out / "model.safetensors")], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert metrics["test_accuracy"] > 0.5  # a model that learnt something, so that the comparison means something
    assert result["accuracy"] == metrics["test_accuracy"]
    assert not result["data_loaded"]


def test_the_predict_command_on_pngs_gives_the_same_classes(run, elsewhere):
    _, out, images, _ = run
    folder, env = elsewhere
    paths = []
    for i, image in enumerate(images[:N_PNG]):
        paths.append(folder / f"test{i}.png")
        Image.fromarray(image).save(paths[-1])
    done = subprocess.run([sys.executable, "-m", "fastmlp.predict", str(out / "model.safetensors"), *map(str, paths)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    import fastmlp

    expected = fastmlp.load(out).predict(images[:N_PNG])
    assert [line.split(": ")[1].split()[0] for line in done.stdout.splitlines()] == expected.tolist()


def test_the_onnx_export_gives_the_same_probabilities(run, tmp_path):
    import fastmlp

    _, out, images, _ = run
    path = fastmlp.export_onnx(out / "model.safetensors", tmp_path / "model.onnx")
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # the stored (CHW) order
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (proba,) = session.run(["probabilities"], {"x": rows})
    np.testing.assert_allclose(proba, fastmlp.load(out).predict_proba(images), rtol=0, atol=1e-5)
