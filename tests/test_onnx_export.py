"""fastmlp.export_onnx: the graph from raw rows to probabilities, run by onnxruntime, equals fastmlp."""
from __future__ import annotations

import json

import numpy as np
import pytest

import fastmlp

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _pixels(n=7, d=12, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, d)).astype(np.uint8)


@pytest.fixture
def model_file(tmp_path):
    model = fastmlp.MLP(12, [9, 6], 4, dtype=np.float32, seed=0, init="kaiming")
    rng = np.random.default_rng(1)
    return fastmlp.save(model, tmp_path / "m.safetensors", offset=rng.uniform(50, 200, 12),
                        scale=rng.uniform(20, 80, 12), preprocessing="standardize", classes=list("wxyz"),
                        input_shape=(3, 2, 2))


def test_the_graph_takes_uint8_pixels_and_gives_fastmlps_probabilities(tmp_path, model_file):
    path = fastmlp.export_onnx(model_file, tmp_path / "m.onnx")
    session = _session(path)
    assert session.get_inputs()[0].type == "tensor(uint8)"
    x = _pixels()
    got = session.run(["probabilities"], {"x": x})[0]
    np.testing.assert_allclose(got, fastmlp.load(model_file).predict_proba(x), rtol=0, atol=1e-5)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["classes"]) == list("wxyz") and json.loads(props["input_shape"]) == [3, 2, 2]


def test_float_rows_are_accepted_as_input(tmp_path, model_file):
    path = fastmlp.export_onnx(model_file, tmp_path / "f.onnx", input_type="float32")
    x = _pixels().astype(np.float32)
    got = _session(path).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, fastmlp.load(model_file).predict_proba(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_plain_mlp_exports_in_its_dtype(tmp_path, dtype):
    model = fastmlp.MLP(12, [5], 3, dtype=dtype, seed=2, init="kaiming")
    session = _session(fastmlp.export_onnx(model, tmp_path / "plain.onnx"))
    x = np.random.default_rng(3).normal(size=(5, 12)).astype(dtype)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], model.predict_proba(x), rtol=0,
                               atol=1e-12 if dtype == np.float64 else 1e-6)


def test_logistic_regression_and_a_fitted_estimator_export(tmp_path):
    X = np.random.default_rng(4).normal(size=(50, 6))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    sklearn_exceptions = pytest.importorskip("sklearn.exceptions")
    clf = fastmlp.MLPClassifier(hidden_layer_sizes=(), max_iter=5, random_state=0, dtype="float32")
    with pytest.warns(sklearn_exceptions.ConvergenceWarning):  # five epochs on purpose
        clf.fit(X, y)
    session = _session(fastmlp.export_onnx(clf, tmp_path / "clf.onnx"))
    got = session.run(None, {"x": X.astype(np.float32)})[0]
    assert got.shape == (50, 2)  # one logistic output, as scikit-learn's two columns (1 - p, p)
    np.testing.assert_allclose(got, clf.predict_proba(X), rtol=0, atol=1e-6)


def test_bad_arguments_are_refused(tmp_path, model_file):
    with pytest.raises(ValueError, match="input_type: expected one of"):
        fastmlp.export_onnx(model_file, tmp_path / "x.onnx", input_type="int8")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="garbage.safetensors"):
        fastmlp.export_onnx(garbage, tmp_path / "y.onnx")
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()
