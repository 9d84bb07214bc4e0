"""The model file for every activation and output head: estimators saved, loaded and exported predict as fitted.

Each of MLPClassifier (multiclass, binary, multilabel) and MLPRegressor (one and
several outputs), with each hidden activation, is fitted on small scikit-learn data,
saved and loaded; the Predictor must give the estimator's predictions exactly, the
ONNX graph its probabilities or values within 1e-5.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import fastmlp

pytest.importorskip("sklearn")
pytest.importorskip("safetensors")
from sklearn.datasets import make_classification, make_multilabel_classification, make_regression  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402

# The fits stop at max_iter on purpose: a few epochs give weights worth comparing.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

ACTIVATIONS = ("relu", "tanh", "logistic", "identity")


def _data(kind):
    """(estimator class, X (60, 5), y) of a small problem of ``kind``."""
    if kind == "multilabel":
        X, y = make_multilabel_classification(n_samples=60, n_features=5, n_classes=4, random_state=0)
        return fastmlp.MLPClassifier, X, y
    if kind in ("regression", "multioutput"):
        X, y = make_regression(n_samples=60, n_features=5, n_targets=1 if kind == "regression" else 3,
                               noise=0.5, random_state=0)
        return fastmlp.MLPRegressor, X, y / 50
    X, y = make_classification(n_samples=60, n_features=5, n_informative=3, n_classes=3, random_state=0)
    labels = np.array(["ant", "bee", "cat"])[y] if kind == "multiclass" else np.where(y > 0, "yes", "no")
    return fastmlp.MLPClassifier, X, labels


KINDS = ("multiclass", "binary", "multilabel", "regression", "multioutput")
TARGET = {"multiclass": "multiclass", "binary": "binary", "multilabel": "multilabel", "regression": "regression",
          "multioutput": "regression"}


def _fitted(kind, activation, dtype="float32"):
    cls, X, y = _data(kind)
    estimator = cls(hidden_layer_sizes=(6, 4), activation=activation, max_iter=15, learning_rate_init=1e-2,
                    random_state=0, dtype=dtype).fit(X, y)
    return estimator, X


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_loaded_estimator_predicts_exactly_as_the_fitted_one(tmp_path, kind, activation):
    estimator, X = _fitted(kind, activation)
    loaded = fastmlp.load(fastmlp.save(estimator, tmp_path / "m.safetensors"))
    assert loaded.target == TARGET[kind] and loaded.model.activation == activation
    expected, got = estimator.predict(X), loaded.predict(X)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    if kind in ("regression", "multioutput"):
        assert not hasattr(loaded, "predict_proba") and loaded.classes_ is None
        with pytest.raises(AttributeError, match="regressor"):
            loaded.predict_proba(X)
    else:
        np.testing.assert_array_equal(loaded.predict_proba(X), estimator.predict_proba(X))
        np.testing.assert_array_equal(loaded.classes_, estimator.classes_)


def test_binary_probabilities_have_two_columns_and_predict_takes_the_second_class_above_one_half(tmp_path):
    estimator, X = _fitted("binary", "tanh")
    loaded = fastmlp.load(fastmlp.save(estimator, tmp_path / "b.safetensors"))
    proba = loaded.predict_proba(X)
    assert proba.shape == (len(X), 2) and loaded.n_outputs_ == 1
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=0, atol=1e-6)
    assert loaded.predict(X).tolist() == np.where(proba[:, 1] > 0.5, "yes", "no").tolist()


def test_a_fresh_process_reads_the_file_and_predicts_the_same(tmp_path):
    estimator, X = _fitted("multioutput", "tanh")
    path = fastmlp.save(estimator, tmp_path / "r.safetensors")
    np.save(tmp_path / "x.npy", X)
    script = ("import sys, json, numpy as np, fastmlp; p = fastmlp.load(sys.argv[1]); "
              "print(json.dumps(p.predict(np.load(sys.argv[2])).tolist()))")
    out = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "x.npy")], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    np.testing.assert_array_equal(np.array(json.loads(out), dtype=np.float32), estimator.predict(X))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_estimators_dtype_is_kept(tmp_path, dtype):
    estimator, X = _fitted("regression", "relu", dtype=dtype)
    loaded = fastmlp.load(fastmlp.save(estimator, tmp_path / "d.safetensors"))
    assert loaded.dtype == np.dtype(dtype) and loaded.predict(X).dtype == np.dtype(dtype)
    np.testing.assert_array_equal(loaded.predict(X), estimator.predict(X))


def test_a_plain_mlp_with_a_logistic_or_identity_head_round_trips(tmp_path):
    x = np.random.default_rng(0).normal(size=(8, 5))
    for output, classes, target in (("logistic", [0, 1], "binary"), ("identity", None, "regression")):
        model = fastmlp.MLP(5, [4], 1, seed=0, init="kaiming", activation="tanh", output=output)
        loaded = fastmlp.load(fastmlp.save(model, tmp_path / f"{output}.safetensors"))
        assert loaded.target == target and (loaded.classes_ is None or loaded.classes_.tolist() == classes)
        np.testing.assert_array_equal(loaded.outputs(x), model.predict_proba(x))


def test_scikit_learns_own_mlps_save_through_the_same_attributes(tmp_path):
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    _, X, y = _data("multilabel")
    clf = MLPClassifier(hidden_layer_sizes=(5,), activation="tanh", max_iter=20, random_state=0).fit(X, y)
    loaded = fastmlp.load(fastmlp.save(clf, tmp_path / "c.safetensors"))
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), rtol=0, atol=1e-6)
    _, X, y = _data("regression")
    reg = MLPRegressor(hidden_layer_sizes=(5,), activation="logistic", max_iter=20, random_state=0).fit(X, y)
    loaded = fastmlp.load(fastmlp.save(reg, tmp_path / "r.safetensors"))
    np.testing.assert_allclose(loaded.predict(X), reg.predict(X), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- feature names
def test_feature_names_are_stored_and_a_dataframes_columns_checked(tmp_path):
    pd = pytest.importorskip("pandas")
    estimator, X = _fitted("regression", "relu")
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    estimator.fit(frame, estimator.predict(X))
    loaded = fastmlp.load(fastmlp.save(estimator, tmp_path / "n.safetensors"))
    assert loaded.feature_names_in_.tolist() == ["f0", "f1", "f2", "f3", "f4"]
    np.testing.assert_array_equal(loaded.predict(frame), estimator.predict(frame))
    with pytest.raises(ValueError, match=r"x: expected the columns .*'f0'.*got .*'g0'"):
        loaded.predict(frame.rename(columns={"f0": "g0"}))
    with pytest.raises(ValueError, match="x: expected the columns"):
        loaded.predict(frame[frame.columns[::-1]])
    again = fastmlp.load(fastmlp.save(loaded, tmp_path / "again.safetensors"))
    assert again.feature_names_in_.tolist() == loaded.feature_names_in_.tolist()


# --------------------------------------------------------------------------- refused
@pytest.mark.parametrize("cls", [fastmlp.MLPClassifier, fastmlp.MLPRegressor])
def test_an_unfitted_estimator_is_refused_by_name(tmp_path, cls):
    with pytest.raises(NotFittedError, match=f"obj: this {cls.__name__} is not fitted yet"):
        fastmlp.save(cls(), tmp_path / "u.safetensors")
    assert not list(tmp_path.iterdir())


def test_wrong_labels_and_unknown_heads_are_refused(tmp_path):
    identity = fastmlp.MLP(5, [4], 2, seed=0, output="identity")
    with pytest.raises(ValueError, match="classes: a regressor"):
        fastmlp.save(identity, tmp_path / "i.safetensors", classes=["a", "b"])
    binary = fastmlp.MLP(5, [4], 1, seed=0, output="logistic")
    with pytest.raises(ValueError, match="expected a list of 2 labels"):
        fastmlp.save(binary, tmp_path / "b.safetensors", classes=["yes"])

    class Softplus:  # a head the file has no name for
        coefs_, intercepts_ = [np.ones((5, 2))], [np.zeros(2)]
        activation, out_activation_ = "relu", "softplus"

    with pytest.raises(ValueError, match="output activation 'softplus': expected"):
        fastmlp.save(Softplus(), tmp_path / "s.safetensors")
    assert not list(tmp_path.iterdir())


def _poisson(dtype="float32"):
    cls, X, y = _data("multioutput")
    return cls(loss="poisson", hidden_layer_sizes=(5,), activation="tanh", max_iter=10, random_state=0,
               dtype=dtype).fit(X, np.exp(y / 4)), X


def test_a_poisson_regressor_keeps_its_exponential_output(tmp_path):
    estimator, X = _poisson()
    loaded = fastmlp.load(fastmlp.save(estimator, tmp_path / "p.safetensors"))
    assert loaded.out_activation_ == "exp" and loaded.target == "regression"
    # the estimator's exponential head runs in NumPy, the Predictor's network in the core's kernels
    np.testing.assert_allclose(loaded.predict(X), estimator.predict(X), rtol=1e-6)
    again = fastmlp.load(fastmlp.save(loaded, tmp_path / "again.safetensors"))
    np.testing.assert_array_equal(again.predict(X), loaded.predict(X))


# --------------------------------------------------------------------------- ONNX
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_the_onnx_graph_gives_the_estimators_probabilities_or_values(tmp_path, kind, activation):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    estimator, X = _fitted(kind, activation)
    path = fastmlp.export_onnx(estimator, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    regressor = kind in ("regression", "multioutput")
    assert session.get_outputs()[0].name == ("values" if regressor else "probabilities")
    got = session.run(None, {"x": X.astype(np.float32)})[0]
    expected = estimator.predict(X).reshape(len(X), -1) if regressor else estimator.predict_proba(X)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["target"] == TARGET[kind]
    assert json.loads(props["classes"]) == (None if regressor else estimator.classes_.tolist())


def test_the_onnx_graph_of_a_poisson_regressor_ends_in_exp(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    estimator, X = _poisson()
    session = ort.InferenceSession(str(fastmlp.export_onnx(estimator, tmp_path / "p.onnx")),
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": X.astype(np.float32)})[0], estimator.predict(X), rtol=1e-5)
