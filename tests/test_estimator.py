"""``fastmlp.MLPClassifier``: the scikit-learn estimator API, with and without scikit-learn."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

from fastmlp import MLPClassifier
from fastmlp.estimator import NotFittedError

# A configuration that learns small problems in a few hundred updates (the
# course defaults -- N(0, 1e-4^2) init, SGD at 2e-3 -- are much slower).
FAST = dict(hidden_layer_sizes=(32,), optimizer="adam", learning_rate=1e-2, init="kaiming", max_steps=200)


def make_blobs(n=600, n_features=10, n_classes=3, seed=0):
    """Gaussian clusters around random centres: (X (n, n_features) float64, y (n,) int in 0..n_classes-1)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(n_classes, n_features))
    y = rng.integers(0, n_classes, size=n)
    X = centres[y] + rng.normal(size=(n, n_features))
    return X, y


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs()
    return X[:400], y[:400], X[400:], y[400:]


# ------------------------------------------------------------------ fit / predict / score
def test_fit_predict_score(blobs):
    X, y, X_test, y_test = blobs
    clf = MLPClassifier(**FAST, random_state=0)
    assert clf.fit(X, y) is clf
    assert clf.score(X_test, y_test) > 0.8  # chance is 1/3
    assert clf.n_features_in_ == 10
    assert clf.classes_.tolist() == [0, 1, 2]
    proba = clf.predict_proba(X_test)
    assert proba.shape == (200, 3) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(clf.predict(X_test), clf.classes_[proba.argmax(axis=1)])
    assert len(clf.loss_curve_) == clf.n_steps_ == 200
    assert np.mean(clf.loss_curve_[-20:]) < 0.5 * np.mean(clf.loss_curve_[:20])
    # A second fit starts afresh (same random_state: same result).
    before = clf.predict_proba(X_test)
    clf.fit(X, y)
    assert clf.n_steps_ == 200
    np.testing.assert_array_equal(clf.predict_proba(X_test), before)


def test_random_state_controls_the_result(blobs):
    X, y, X_test, _ = blobs
    a = MLPClassifier(**FAST, random_state=1).fit(X, y).predict_proba(X_test)
    b = MLPClassifier(**FAST, random_state=1).fit(X, y).predict_proba(X_test)
    c = MLPClassifier(**FAST, random_state=2).fit(X, y).predict_proba(X_test)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_string_labels_and_lists(blobs):
    X, y, X_test, y_test = blobs
    names = np.array(["cat", "dog", "bird"])
    clf = MLPClassifier(**FAST, random_state=0).fit(X.tolist(), list(names[y]))
    assert clf.classes_.tolist() == ["bird", "cat", "dog"]  # sorted, like np.unique
    predicted = clf.predict(X_test)
    assert set(predicted) <= {"bird", "cat", "dog"}
    assert clf.score(X_test, names[y_test]) > 0.8


def test_logistic_regression_float64(blobs):
    X, y, X_test, y_test = blobs
    clf = MLPClassifier(**{**FAST, "hidden_layer_sizes": ()}, dtype=np.float64, random_state=0).fit(X, y)
    assert clf.model_.n_hidden == []
    assert clf.predict_proba(X_test).dtype == np.float64
    assert clf.score(X_test, y_test) > 0.8


def test_partial_fit(blobs):
    X, y, X_test, y_test = blobs
    clf = MLPClassifier(**{**FAST, "batch_size": 64}, random_state=0)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        clf.partial_fit(X, y)
    clf.partial_fit(X[:100], y[:100], classes=[0, 1, 2])
    assert clf.n_steps_ == 2  # ceil(100 / 64): one pass
    first_score = clf.score(X_test, y_test)
    for _ in range(10):
        clf.partial_fit(X, y)
    assert clf.n_steps_ == 2 + 10 * 7
    assert clf.score(X_test, y_test) > max(0.8, first_score)
    # A chunk may miss classes; it may not bring new ones.
    clf.partial_fit(X[y == 0], y[y == 0])
    with pytest.raises(ValueError, match=r"labels not in classes_.*\[7\]"):
        clf.partial_fit(X[:5], [0, 1, 7, 2, 0])
    with pytest.raises(ValueError, match="differs from classes_"):
        clf.partial_fit(X, y, classes=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="X has 4 features, but MLPClassifier is expecting 10"):
        clf.partial_fit(X[:, :4], y)


# ------------------------------------------------------------------ params, pickling
def test_get_set_params_round_trip():
    spec_defaults = dict(hidden_layer_sizes=(100,), learning_rate=2e-3, batch_size=200, max_steps=1500,
                         optimizer="sgd", dtype=np.float32, random_state=None, verbose=False)
    params = MLPClassifier().get_params()
    assert {k: params[k] for k in spec_defaults} == spec_defaults
    assert set(params) == set(spec_defaults) | {"momentum", "weight_decay", "init"}

    sizes = [64, 32]  # stored as given, not copied or converted
    clf = MLPClassifier(hidden_layer_sizes=sizes)
    assert clf.get_params()["hidden_layer_sizes"] is sizes
    other = MLPClassifier(**{**params, "learning_rate": 0.5, "optimizer": "adam", "random_state": 3})
    assert clf.set_params(**other.get_params()) is clf
    assert clf.get_params() == other.get_params()
    with pytest.raises(ValueError, match="Invalid parameter 'learning_rat'"):
        clf.set_params(learning_rat=1.0)
    assert "learning_rate=0.5" in repr(clf) and "batch_size" not in repr(clf)


def test_pickle_round_trip_and_continue(blobs):
    X, y, X_test, _ = blobs
    clf = MLPClassifier(**{**FAST, "optimizer": "momentum"}, random_state=0).fit(X, y)
    copy = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(copy.predict_proba(X_test), clf.predict_proba(X_test))
    np.testing.assert_array_equal(copy.predict(X_test), clf.predict(X_test))
    assert copy.get_params() == clf.get_params() and copy.loss_curve_ == clf.loss_curve_
    # The optimizer state and batch order travel too: both continue identically.
    clf.partial_fit(X, y)
    copy.partial_fit(X, y)
    np.testing.assert_array_equal(copy.predict_proba(X_test), clf.predict_proba(X_test))
    # An unfitted estimator pickles as well.
    assert pickle.loads(pickle.dumps(MLPClassifier(max_steps=7))).max_steps == 7


# ------------------------------------------------------------------ errors
def test_not_fitted():
    clf = MLPClassifier()
    for method in (clf.predict, clf.predict_proba):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            method(np.zeros((2, 3)))
    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)


@pytest.mark.parametrize("X,y,error,match", [
    (np.zeros(10), np.arange(10) % 2, ValueError, "Reshape your data"),
    (np.full((4, 2), np.nan), [0, 1, 0, 1], ValueError, "Input X contains NaN"),
    (np.full((4, 2), np.inf), [0, 1, 0, 1], ValueError, "Input X contains infinity"),
    (np.zeros((0, 3)), [], ValueError, r"0 sample\(s\)"),
    (np.zeros((4, 0)), [0, 1, 0, 1], ValueError, r"0 feature\(s\)"),
    (np.zeros((4, 2)) + 1j, [0, 1, 0, 1], ValueError, "Complex data not supported"),
    ([["a", "b"], ["c", "d"]], [0, 1], ValueError, "X: cannot convert"),
    (np.zeros((4, 2)), [0, 1, 0], ValueError, "X has 4, y has 3"),
    (np.zeros((4, 2)), [1, 1, 1, 1], ValueError, "only one class"),
    (np.zeros((4, 2)), [0.5, 1.5, 0.5, 1.5], ValueError, "Unknown label type"),
    (np.zeros((4, 2)), [0, np.nan, 1, 0], ValueError, "Input y contains NaN"),
    (np.zeros((4, 2)), None, ValueError, "requires y to be passed"),
    (np.zeros((4, 2)), np.zeros((4, 2)), ValueError, r"1-d array of labels.*got shape \(4, 2\)"),
])
def test_bad_inputs(X, y, error, match):
    with pytest.raises(error, match=match):
        MLPClassifier(max_steps=2).fit(X, y)


def test_sparse_X_is_refused():
    scipy_sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="sparse"):
        MLPClassifier(max_steps=2).fit(scipy_sparse.csr_matrix(np.eye(4)), [0, 1, 0, 1])


def test_column_vector_y_warns_and_works(blobs):
    X, y, X_test, _ = blobs
    with pytest.warns(UserWarning, match="A column-vector y was passed"):
        clf = MLPClassifier(**FAST, random_state=0).fit(X, y[:, None])
    np.testing.assert_array_equal(clf.predict(X_test), MLPClassifier(**FAST, random_state=0).fit(X, y).predict(X_test))


@pytest.mark.parametrize("params,error,match", [
    (dict(learning_rate=-1.0), ValueError, "learning_rate: expected a finite number > 0"),
    (dict(batch_size=0), ValueError, "batch_size: expected an integer > 0"),
    (dict(max_steps=2.5), TypeError, "max_steps: expected an integer > 0"),
    (dict(hidden_layer_sizes=(10, "a")), TypeError, "hidden_layer_sizes"),
    (dict(hidden_layer_sizes=(10, 0)), ValueError, "hidden_layer_sizes"),
    (dict(optimizer="rmsprop"), ValueError, "optimizer: expected one of"),
    (dict(init="zeros"), ValueError, "init: expected one of"),
    (dict(momentum=1.0), ValueError, "momentum"),
    (dict(dtype=np.int32), TypeError, "dtype: expected float32 or float64"),
    (dict(random_state=-3), ValueError, "random_state"),
    (dict(random_state="seven"), TypeError, "random_state"),
    (dict(verbose="yes"), TypeError, "verbose: expected a bool"),
])
def test_bad_hyperparameters_fail_at_fit(params, error, match):
    """TypeError for a value of the wrong type, ValueError for one out of range (fastmlp.hyperparams)."""
    clf = MLPClassifier(**params)  # sklearn convention: __init__ and set_params never check
    with pytest.raises(error, match=match):
        clf.fit(np.eye(4), [0, 1, 0, 1])


def test_divergence_is_reported():
    X, y = make_blobs(n=100)
    with pytest.raises(FloatingPointError, match="diverged at update"):
        MLPClassifier(learning_rate=1e30, max_steps=50, random_state=0).fit(X * 1e3, y)


def test_works_without_scikit_learn_imported():
    """The estimator never imports scikit-learn itself (a fresh interpreter checks sys.modules)."""
    code = (
        "import sys, numpy as np\n"
        "from fastmlp import MLPClassifier\n"
        "from fastmlp.estimator import NotFittedError\n"
        "X = np.random.default_rng(0).normal(size=(50, 3)); y = (X[:, 0] > 0).astype(int)\n"
        "clf = MLPClassifier(max_steps=20, random_state=0).fit(X, y); clf.predict(X)\n"
        "try:\n    MLPClassifier().predict(X)\nexcept NotFittedError as e:\n    assert type(e) is NotFittedError\n"
        "assert 'sklearn' not in sys.modules, 'sklearn was imported'\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


# ------------------------------------------------------------------ with scikit-learn
def test_clone_pipeline_gridsearch(blobs):
    pytest.importorskip("sklearn")
    from sklearn.base import clone, is_classifier
    from sklearn.exceptions import NotFittedError as SkNotFittedError
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y, X_test, y_test = blobs
    clf = MLPClassifier(**FAST, random_state=0)
    assert is_classifier(clf)
    twin = clone(clf)
    assert twin is not clf and twin.get_params() == clf.get_params()
    with pytest.raises(SkNotFittedError):  # sklearn's own exception class is honoured once sklearn is loaded
        twin.predict(X_test)

    pipe = make_pipeline(StandardScaler(), MLPClassifier(**FAST, random_state=0)).fit(X, y)
    assert pipe.score(X_test, y_test) > 0.8

    search = GridSearchCV(MLPClassifier(**FAST, random_state=0),
                          {"hidden_layer_sizes": [(8,), (32,)], "learning_rate": [1e-2, 1e-6]}, cv=3)
    search.fit(X, y)
    assert search.best_params_["learning_rate"] == 1e-2  # 1e-6 barely moves from the random start
    assert search.score(X_test, y_test) > 0.8


def _sklearn_checks():
    """scikit-learn's own estimator checks (an empty list when scikit-learn is missing)."""
    try:
        from sklearn.utils.estimator_checks import parametrize_with_checks
    except ImportError:
        return None
    with warnings.catch_warnings():
        # "does not inherit from BaseEstimator": on purpose, fastmlp does not depend on sklearn.
        warnings.simplefilter("ignore", UserWarning)
        # Every check passes; none is listed as an expected failure. (Without pandas the
        # pandas-based checks skip themselves.)
        return parametrize_with_checks([MLPClassifier(**FAST, random_state=0)])


_checks = _sklearn_checks()
if _checks is not None:
    @_checks
    def test_sklearn_estimator_checks(estimator, check):
        check(estimator)
else:  # pragma: no cover - scikit-learn not installed
    def test_sklearn_estimator_checks():
        pytest.skip("scikit-learn is not installed")


def test_a_huge_max_steps_builds_nothing_of_its_length():
    """max_steps=2**62 used to allocate a list of 2**62 batch sizes (MemoryError) before the first update;
    now updates start at once (and this run diverges at its second update, which ends it)."""
    X, y = make_blobs(n=100)
    clf = MLPClassifier(learning_rate=1e30, max_steps=2**62, random_state=0)
    with pytest.raises(FloatingPointError, match="diverged at update 2"):
        clf.fit(X * 1e3, y)
    assert clf.n_steps_ == 1
