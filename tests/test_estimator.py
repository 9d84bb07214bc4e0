"""``fastmlp.MLPClassifier`` / ``MLPRegressor``: scikit-learn's parameters, numbers and estimator contract.

One ``random_state`` starts fastmlp's and scikit-learn's estimators from the same
weights and feeds them the same batches, so most parameters are tested by
training both for a few epochs and comparing the loss curves and the weights.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn import neural_network  # noqa: E402
from sklearn.datasets import load_diabetes, load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastmlp import MLPClassifier, MLPRegressor  # noqa: E402

# Most fits here stop at max_iter on purpose (scikit-learn's ConvergenceWarning).
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(X[:400]), y[:400]


@pytest.fixture(scope="module")
def diabetes():
    X, y = load_diabetes(return_X_y=True)
    return StandardScaler().fit_transform(X), (y - y.mean()) / y.std()


def _both(cls_name: str, X, y, sample_weight=None, **params):
    """(fastmlp's, scikit-learn's) estimator fitted on the same data with the same parameters."""
    fitted = []
    for module in (sys.modules["fastmlp"], neural_network):
        estimator = getattr(module, cls_name)(random_state=0, **params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fitted.append(estimator.fit(X, y, sample_weight=sample_weight))
    return fitted


def _assert_same_training(ours, theirs, rtol=1e-7):
    assert ours.n_iter_ == theirs.n_iter_ and ours.t_ == theirs.t_
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=rtol)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=rtol * 100, atol=rtol * 10)


# ------------------------------------------------------------------ scikit-learn's numbers
CLASSIFIER_SETTINGS = [
    dict(),  # adam, the fused core path
    dict(shuffle=False, batch_size=64),
    dict(batch_size=64),  # shuffled, the last batch shorter
    dict(solver="sgd"),  # nesterov momentum 0.9
    dict(solver="sgd", nesterovs_momentum=False, momentum=0.5),
    dict(solver="sgd", momentum=0.0, learning_rate_init=0.05),
    dict(solver="sgd", learning_rate="invscaling", power_t=0.25, learning_rate_init=0.05),
    dict(solver="sgd", learning_rate="adaptive", tol=10.0, n_iter_no_change=1),  # rate / 5 after every epoch
    dict(alpha=3.0),
    dict(activation="tanh", hidden_layer_sizes=(20, 10)),
    dict(activation="logistic", beta_1=0.5, beta_2=0.9, epsilon=1e-3),
    dict(activation="identity", hidden_layer_sizes=()),
    dict(early_stopping=True, validation_fraction=0.2, n_iter_no_change=2),
    dict(tol=10.0, n_iter_no_change=2),  # stops after 3 epochs
]


@pytest.mark.parametrize("params", CLASSIFIER_SETTINGS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_classifier_trains_as_scikit_learn(digits, params):
    X, y = digits
    ours, theirs = _both("MLPClassifier", X, y, **{"max_iter": 6, "hidden_layer_sizes": (32,), **params})
    _assert_same_training(ours, theirs)
    assert ours.best_loss_ == pytest.approx(theirs.best_loss_) if theirs.best_loss_ is not None else True
    if params.get("early_stopping"):
        np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_)
        assert ours.best_validation_score_ == theirs.best_validation_score_ and ours.best_loss_ is None
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-5, atol=1e-9)


def test_the_stopping_rules_stop_where_scikit_learns_do(digits):
    X, y = digits
    for params in (dict(tol=10.0, n_iter_no_change=2), dict(early_stopping=True, tol=1.0, n_iter_no_change=3)):
        ours, theirs = _both("MLPClassifier", X, y, max_iter=50, hidden_layer_sizes=(16,), **params)
        assert ours.n_iter_ == theirs.n_iter_ < 50


@pytest.mark.parametrize("kind", ["binary", "multilabel"])
def test_logistic_outputs_train_as_scikit_learn(digits, kind):
    X, y = digits
    target = y > 4 if kind == "binary" else np.stack([y > 4, y % 2 == 0, y == 3], axis=1).astype(int)
    ours, theirs = _both("MLPClassifier", X, target, max_iter=5, hidden_layer_sizes=(16,))
    assert ours.out_activation_ == theirs.out_activation_ == "logistic"
    _assert_same_training(ours, theirs)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    assert ours.predict_proba(X).shape == theirs.predict_proba(X).shape


@pytest.mark.parametrize("params", [dict(), dict(solver="sgd", learning_rate_init=0.01), dict(loss="poisson")],
                         ids=["adam", "sgd", "poisson"])
def test_regressor_trains_as_scikit_learn(diabetes, params):
    X, y = diabetes
    y = np.exp(y) if params.get("loss") == "poisson" else y
    ours, theirs = _both("MLPRegressor", X, y, max_iter=6, hidden_layer_sizes=(16,), **params)
    _assert_same_training(ours, theirs)
    np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-6)


def test_multi_output_regression(diabetes):
    X, y = diabetes
    Y = np.stack([y, -2 * y, X[:, 0]], axis=1)
    ours, theirs = _both("MLPRegressor", X, Y, max_iter=5)
    assert ours.n_outputs_ == 3 and ours.predict(X).shape == (len(X), 3)
    _assert_same_training(ours, theirs)


def test_sample_weights_train_as_scikit_learn(digits):
    X, y = digits
    weights = np.random.default_rng(0).uniform(0, 3, size=len(y))
    ours, theirs = _both("MLPClassifier", X, y, sample_weight=weights, max_iter=4, hidden_layer_sizes=(16,))
    _assert_same_training(ours, theirs)


def test_sparse_weighted_short_batches_train_as_scikit_learn(digits):
    """Shuffled sparse rows with sample weights, 7 batches an epoch, the last one short."""
    scipy_sparse = pytest.importorskip("scipy.sparse")
    X, y = digits
    X = scipy_sparse.csr_matrix(np.where(np.abs(X) > 1, X, 0))
    weights = np.random.default_rng(2).uniform(0.5, 2, size=len(y))
    ours, theirs = _both("MLPRegressor", X, y / 9.0, sample_weight=weights, max_iter=4, batch_size=60,
                         hidden_layer_sizes=(16,))
    _assert_same_training(ours, theirs)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("sparse_X", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_the_batches_are_scikit_learns(shuffle, sparse_X, weighted):
    """Epoch after epoch, the rows of each batch are those of sklearn.utils.shuffle and gen_batches."""
    from scipy import sparse
    from sklearn.utils import gen_batches, shuffle as sklearn_shuffle

    from fastmlp.estimators.batches import Batches

    rng = np.random.RandomState(1)
    X, targets = rng.normal(size=(23, 3)), np.arange(23) * 10
    weights = rng.uniform(size=23) if weighted else None
    batches = Batches.create(sparse.csr_matrix(X) if sparse_X else X, targets, weights, 7, shuffle)
    ours, theirs = np.random.RandomState(5), np.random.RandomState(5)
    order = np.arange(23)
    for _ in range(3):
        order = sklearn_shuffle(order, random_state=theirs) if shuffle else order
        got = list(batches.epoch(ours))
        expected = [order[rows] for rows in gen_batches(23, 7)]
        assert [len(x) for x, _, _ in got] == [len(rows) for rows in expected] == [7, 7, 7, 2]
        for (x, t, w), rows in zip(got, expected):
            assert isinstance(x, np.ndarray) and x.flags.c_contiguous
            np.testing.assert_array_equal(x, X[rows])
            np.testing.assert_array_equal(t, targets[rows])
            assert w is None if weights is None else np.array_equal(w, weights[rows])
    assert ours.randint(1 << 30) == theirs.randint(1 << 30)  # the same random numbers drawn


# ------------------------------------------------------------------ each parameter's meaning
def test_a_zero_sample_weight_removes_the_sample(digits):
    """One full batch per epoch: samples of weight 0 change nothing (fit without them: the same weights)."""
    X, y = digits[0][:150], digits[1][:150]
    weights = np.ones(len(y))
    weights[::3] = 0
    kept = weights > 0
    weighted = MLPRegressor(random_state=0, max_iter=5, shuffle=False).fit(X, y, sample_weight=weights)
    without = MLPRegressor(random_state=0, max_iter=5, shuffle=False).fit(X[kept], y[kept])
    for a, b in zip(weighted.coefs_, without.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    changed = MLPRegressor(random_state=0, max_iter=5, shuffle=False).fit(X, y + 5 * ~kept, sample_weight=weights)
    np.testing.assert_allclose(changed.predict(X), weighted.predict(X), rtol=1e-10, atol=1e-12)


def test_a_batch_of_zero_weights_is_refused_by_name():
    X = np.random.default_rng(0).normal(size=(40, 3))
    weights = np.r_[np.zeros(20), np.ones(20)]
    with pytest.raises(ValueError, match=r"sample_weight: a batch of 10 samples has weights summing to 0"):
        MLPRegressor(batch_size=10, shuffle=False).fit(X, X[:, 0], sample_weight=weights)


@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity"])
@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel", "regression"])
def test_the_fused_core_and_the_numpy_path_make_the_same_updates(digits, task, activation, monkeypatch):
    """MLP.train_step (every head, with sample weights) and the NumPy backprop do the same sums."""
    from fastmlp.estimators.network import Network

    X, y = digits
    target = {"multiclass": y, "binary": y > 4, "multilabel": np.stack([y > 4, y % 2 == 0], axis=1).astype(int),
              "regression": np.stack([y / 9.0, X[:, 20]], axis=1)}[task]
    weights = np.random.default_rng(1).uniform(0, 2, size=len(y))
    cls = MLPRegressor if task == "regression" else MLPClassifier
    params = dict(random_state=0, max_iter=3, alpha=1e-2, activation=activation, hidden_layer_sizes=(24, 12))
    core = cls(**params).fit(X, target, sample_weight=weights)
    monkeypatch.setattr(Network, "uses_core", lambda self, sample_weight: False)
    numpy_path = cls(**params).fit(X, target, sample_weight=weights)
    _assert_same_training(core, numpy_path, rtol=1e-9)


def test_alpha_penalises_the_weights(digits):
    X, y = digits
    norms = [sum(float(np.sum(c * c)) for c in MLPClassifier(alpha=alpha, max_iter=20, random_state=0)
                 .fit(X, y).coefs_) for alpha in (0.0, 1.0, 100.0)]
    assert norms[2] < norms[1] < norms[0] and norms[2] < 0.6 * norms[0]


def test_early_stopping_stops_and_keeps_the_best_weights(digits):
    X, y = digits
    clf = MLPClassifier(early_stopping=True, n_iter_no_change=2, max_iter=500, random_state=0).fit(X, y)
    assert clf.n_iter_ < 500 and len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        clf.partial_fit(X, y)


def test_warm_start_continues_from_the_fitted_weights(digits):
    X, y = digits
    cold = MLPClassifier(max_iter=3, random_state=0, warm_start=False)
    warm = MLPClassifier(max_iter=3, random_state=0, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for clf in (cold, warm):
            clf.fit(X, y)
            clf.fit(X, y)
    assert len(cold.loss_curve_) == 3 and len(warm.loss_curve_) == 6
    assert warm.loss_curve_[3] < warm.loss_curve_[0] and warm.t_ == 6 * len(X)
    with pytest.raises(ValueError, match="warm_start can only be used where `y` has the same classes"):
        warm.fit(X[y < 5], y[y < 5])


def test_max_iter_warns_and_partial_fit_runs_one_epoch(digits):
    X, y = digits
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(2\) reached"):
        MLPClassifier(max_iter=2, random_state=0).fit(X, y)
    clf = MLPClassifier(random_state=0)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        clf.partial_fit(X, y)
    for _ in range(3):
        clf.partial_fit(X[y < 6], y[y < 6], classes=np.arange(10))
    assert clf.n_iter_ == 1 and len(clf.loss_curve_) == 3 and clf.t_ == 3 * np.sum(y < 6)
    with pytest.raises(ValueError, match="classes not in"):
        MLPClassifier(random_state=0).fit(X[y < 6], y[y < 6]).partial_fit(X, y)


def test_verbose_prints_each_epoch_as_scikit_learn(digits, capsys):
    X, y = digits
    clf = MLPClassifier(max_iter=2, verbose=True, random_state=0).fit(X, y)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"Iteration {i + 1}, loss = {loss:.8f}" for i, loss in enumerate(clf.loss_curve_)]


def test_an_interrupted_fit_keeps_what_it_learnt(digits, monkeypatch):
    """Ctrl-C during fit: a warning and a usable model of the epochs done (scikit-learn's behaviour)."""
    from fastmlp.estimators.network import Network

    X, y = digits
    calls = {"n": 0}
    original = Network.train_batch

    def interrupt_at_the_fifth_batch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Network, "train_batch", interrupt_at_the_fifth_batch)
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        clf = MLPClassifier(max_iter=50, random_state=0).fit(X, y)
    assert clf.n_iter_ == 2 and clf.predict(X).shape == y.shape  # 2 batches an epoch


def test_a_refused_refit_leaves_the_fitted_model(digits):
    X, y = digits
    clf = MLPClassifier(max_iter=2, random_state=0).fit(X, y)
    before = clf.predict_proba(X)
    with pytest.raises(ValueError, match="NaN"):
        clf.fit(np.full_like(X, np.nan), y)
    np.testing.assert_array_equal(clf.predict_proba(X), before)


def test_a_huge_max_iter_builds_nothing_of_its_length(digits):
    clf = MLPClassifier(max_iter=2**62, tol=10.0, n_iter_no_change=1, random_state=0).fit(*digits)
    # epoch 1 sets best_loss_; epochs 2 and 3 fail to beat it by tol, and 2 > n_iter_no_change stops
    assert clf.n_iter_ == 3


# ------------------------------------------------------------------ dtype, attributes, input checks
@pytest.mark.parametrize("input_dtype, dtype, expected", [
    (np.float64, None, np.float64), (np.float32, None, np.float32), (np.int64, None, np.float64),
    (np.float64, "float32", np.float32), (np.float32, np.float64, np.float64),
])
def test_the_dtype_follows_the_input_unless_given(digits, input_dtype, dtype, expected):
    X, y = digits
    clf = MLPClassifier(max_iter=2, dtype=dtype, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit((X * 4).astype(input_dtype), y)
    assert all(c.dtype == expected for c in clf.coefs_ + clf.intercepts_)
    assert clf.predict_proba(X).dtype == expected


def test_fitted_attributes(digits):
    X, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(20, 7), max_iter=3, random_state=0)
    with pytest.warns(ConvergenceWarning):
        clf.fit(X, y)
    assert [c.shape for c in clf.coefs_] == [(64, 20), (20, 7), (7, 10)]
    assert [b.shape for b in clf.intercepts_] == [(20,), (7,), (10,)]
    assert (clf.n_layers_, clf.n_outputs_, clf.out_activation_, clf.n_features_in_) == (4, 10, "softmax", 64)
    assert clf.loss_ == clf.loss_curve_[-1] and clf.best_loss_ == min(clf.loss_curve_)
    assert clf.validation_scores_ is None and clf.best_validation_score_ is None
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(clf.predict_proba(X)))
    # coefs_ are the live weights: writing into them changes the predictions
    clf.coefs_[-1][...] = 0
    clf.intercepts_[-1][...] = np.arange(10)
    assert np.all(clf.predict(X) == 9)


def test_reordered_dataframe_columns_are_refused(digits):
    pd = pytest.importorskip("pandas")
    X, y = digits
    frame = pd.DataFrame(X, columns=[f"px{i}" for i in range(64)])
    clf = MLPClassifier(max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(frame, y)
    assert list(clf.feature_names_in_) == list(frame.columns)
    with pytest.raises(ValueError, match="Feature names must be in the same order"):
        clf.predict(frame[frame.columns[::-1]])


def test_lbfgs_is_refused_with_the_solvers_offered(digits):
    with pytest.raises(ValueError, match=r"solver='lbfgs' is not offered.*'adam'.*'sgd'"):
        MLPClassifier(solver="lbfgs").fit(*digits)


@pytest.mark.parametrize("params, match", [
    (dict(hidden_layer_sizes=(10, 0)), "hidden_layer_sizes must be > 0"),
    (dict(learning_rate="cosine"), "'learning_rate' parameter .* must be a str among"),
    (dict(dtype="float16"), "'dtype' parameter"),
    (dict(n_threads=0), "n_threads: expected an integer > 0, got 0"),  # fastmlp's table, as MLPRunConfig says it
    (dict(max_steps=10), "unexpected keyword argument 'max_steps'"),
])
def test_bad_parameters_are_named(digits, params, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MLPClassifier(**params).fit(*digits)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's overflow on the way
def test_divergence_is_an_error_not_garbage(digits):
    X, y = digits
    with pytest.raises(ValueError, match="non-finite"):
        MLPRegressor(solver="sgd", learning_rate_init=1e6, max_iter=20, random_state=0).fit(X * 1e3, y * 1e3)


def test_sparse_input_trains_as_dense(digits):
    scipy_sparse = pytest.importorskip("scipy.sparse")
    X, y = digits
    X = np.where(np.abs(X) > 1, X, 0)
    dense = MLPClassifier(max_iter=3, random_state=0).fit(X, y)
    sparse = MLPClassifier(max_iter=3, random_state=0).fit(scipy_sparse.csr_matrix(X), y)
    _assert_same_training(sparse, dense, rtol=1e-9)
    np.testing.assert_allclose(sparse.predict_proba(scipy_sparse.csc_matrix(X)), dense.predict_proba(X))


# ------------------------------------------------------------------ pickling, threads, scikit-learn's tools
def test_pickle_round_trip_and_continue(digits):
    X, y = digits
    clf = MLPClassifier(solver="sgd", max_iter=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    copy = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(copy.predict_proba(X), clf.predict_proba(X))
    # the optimizer's momentum travels too: both continue identically
    clf.partial_fit(X, y)
    copy.partial_fit(X, y)
    np.testing.assert_array_equal(copy.predict_proba(X), clf.predict_proba(X))
    assert pickle.loads(pickle.dumps(MLPRegressor(max_iter=7))).max_iter == 7


def test_n_threads_changes_the_threads_not_the_result(digits):
    X, y = digits
    one = MLPClassifier(max_iter=2, n_threads=1, random_state=0)
    default = MLPClassifier(max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        np.testing.assert_allclose(one.fit(X, y).predict_proba(X), default.fit(X, y).predict_proba(X), rtol=1e-6)


def test_clone_pipeline_gridsearch(digits):
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    X, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=1e-2, max_iter=50, random_state=0)
    assert clone(clf).get_params() == clf.get_params()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        assert make_pipeline(StandardScaler(), clf).fit(X[:300], y[:300]).score(X[300:], y[300:]) > 0.8
        search = GridSearchCV(clf, {"learning_rate_init": [1e-2, 1e-7]}, cv=2).fit(X, y)
    assert search.best_params_["learning_rate_init"] == 1e-2


def _fresh_interpreter(code: str) -> str:
    """What ``code`` prints when run by a new Python process (which must succeed)."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_import_fastmlp_and_its_training_cli_do_not_import_scikit_learn():
    assert _fresh_interpreter("import sys, fastmlp, fastmlp.train\nfastmlp.MLP\nassert 'sklearn' not in sys.modules\n"
                              "fastmlp.MLPRegressor\nassert 'sklearn' in sys.modules\nprint('ok')") == "ok"


def test_without_scikit_learn_the_message_names_the_extra():
    printed = _fresh_interpreter("import sys\nsys.modules['sklearn'] = None  # as if not installed\nimport fastmlp\n"
                                 "try:\n    fastmlp.MLPClassifier\nexcept ImportError as exc:\n    print(exc)\n")
    assert "pip install 'fastmlp[sklearn]'" in printed


@parametrize_with_checks([MLPClassifier(max_iter=100), MLPRegressor(max_iter=100)])
def test_sklearn_estimator_checks(estimator, check):
    """Every check of scikit-learn's, none expected to fail (scikit-learn's own MLPs are checked at max_iter=100)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)
