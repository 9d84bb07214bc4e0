"""The estimators' checks and conversions of their parameters and training data, done once per fit.

scikit-learn's ``validate_data`` has checked X and y before these run; what is
here is what fastmlp's core adds (its dtype and memory layout) and the parts of
scikit-learn's ``_fit`` / ``_fit_stochastic`` that only read parameters.
"""
from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
from scipy import sparse
from sklearn.utils._param_validation import Interval, Options, StrOptions

__all__ = ["PARAMETER_CONSTRAINTS", "as_network_input", "batch_size_for", "checked_sample_weight", "hidden_sizes",
           "refuse_lbfgs", "validation_split"]

#: scikit-learn's ``_parameter_constraints`` of its MLPs and fastmlp's own ``dtype`` and ``n_threads``, which
#: ``BaseEstimator._validate_params`` checks in ``fit`` (``'lbfgs'`` passes here: :func:`refuse_lbfgs` refuses it).
PARAMETER_CONSTRAINTS: dict = {
    "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
    "activation": [StrOptions({"identity", "logistic", "tanh", "relu"})],
    "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
    "alpha": [Interval(Real, 0, None, closed="left")],
    "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
    "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
    "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
    "power_t": [Interval(Real, 0, None, closed="left")],
    "max_iter": [Interval(Integral, 1, None, closed="left")],
    "shuffle": ["boolean"],
    "random_state": ["random_state"],
    "tol": [Interval(Real, 0, None, closed="left")],
    "verbose": ["verbose"],
    "warm_start": ["boolean"],
    "momentum": [Interval(Real, 0, 1, closed="left")],
    "nesterovs_momentum": ["boolean"],
    "early_stopping": ["boolean"],
    "validation_fraction": [Interval(Real, 0, 1, closed="left")],
    "beta_1": [Interval(Real, 0, 1, closed="left")],
    "beta_2": [Interval(Real, 0, 1, closed="left")],
    "epsilon": [Interval(Real, 0, None, closed="neither")],
    "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), Options(Real, {np.inf})],
    "max_fun": [Interval(Integral, 1, None, closed="left")],
    "dtype": [None, StrOptions({"float32", "float64"}), Options(type, {np.float32, np.float64})],
    # fastmlp's own setting, checked by fastmlp's table as on every other interface (BaseMLP._fit)
    "n_threads": "no_validation",
}


def hidden_sizes(hidden_layer_sizes) -> list[int]:
    """``hidden_layer_sizes`` (an int or an iterable of ints) as a list of positive ints."""
    sizes = list(hidden_layer_sizes) if hasattr(hidden_layer_sizes, "__iter__") else [hidden_layer_sizes]
    if np.any(np.array(sizes) <= 0):
        raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
    return [int(size) for size in sizes]


def refuse_lbfgs(solver: str) -> None:
    """scikit-learn's third solver has no place in a batch loop: say which two are offered."""
    if solver == "lbfgs":
        raise ValueError("solver='lbfgs' is not offered by fastmlp's estimators: use solver='adam' (the "
                         "default) or solver='sgd'.")


def as_network_input(X, dtype):
    """X (n, D) in ``dtype``: a writable C-contiguous ndarray, or a CSR matrix for a sparse X.

    Sparse X stays sparse (CSR: rows are what the batches take) and is made dense batch by batch.
    """
    if sparse.issparse(X):
        return X.astype(dtype).tocsr()
    X = np.ascontiguousarray(X, dtype=dtype)
    # the core's kernels write nothing into X, but their typed buffers refuse read-only memory
    return X if X.flags.writeable else X.copy()


def checked_sample_weight(sample_weight, X):
    """scikit-learn's check of ``sample_weight`` (n,) in X's dtype; None when every weight is 1."""
    if sample_weight is None:
        return None
    from sklearn.utils.validation import _check_sample_weight

    sample_weight = _check_sample_weight(sample_weight, X, dtype=X.dtype)
    # all ones: the same sums as no weights, and the core's fused path
    return None if np.all(sample_weight == 1) else sample_weight


def batch_size_for(batch_size, n_samples: int) -> int:
    """The rows per update: ``'auto'`` is ``min(200, n_samples)``; larger than ``n_samples`` is clipped."""
    if batch_size == "auto":
        return min(200, n_samples)
    if batch_size > n_samples:
        warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped")
    return int(np.clip(batch_size, 1, n_samples))


def validation_split(X, y, sample_weight, *, fraction: float, random_state, stratify):
    """scikit-learn's early-stopping split: ((X, y, sample_weight) to train on, the same held out).

    Parameters
    ----------
    X : ndarray (n, D) or CSR matrix
    y : ndarray (n, K)
    sample_weight : ndarray (n,) or None
    fraction : float
        ``validation_fraction``.
    random_state : numpy.random.RandomState
        The estimator's, advanced as scikit-learn's ``train_test_split`` advances it.
    stratify : ndarray (n, K) or None
    """
    from sklearn.model_selection import train_test_split

    arrays = (X, y) if sample_weight is None else (X, y, sample_weight)
    parts = train_test_split(*arrays, random_state=random_state, test_size=fraction, stratify=stratify)
    train, held_out = list(parts[0::2]), list(parts[1::2])
    if sample_weight is None:
        train.append(None)
        held_out.append(None)
    if held_out[0].shape[0] < 2:
        raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of "
                         "your dataset.")
    contiguous = tuple(a if a is None or sparse.issparse(a) else np.ascontiguousarray(a) for a in train)
    return contiguous, tuple(held_out)
