"""What ``MLPClassifier`` and ``MLPRegressor`` share: scikit-learn's parameters, epochs and stopping rules.

The epoch loop follows scikit-learn's ``BaseMultilayerPerceptron._fit_stochastic``
step for step (shuffled index order drawn from the estimator's ``RandomState``,
batches of ``batch_size``, the loss accumulated per epoch, ``t_``, the ``tol`` /
``n_iter_no_change`` rule on the training loss or the validation score, the
``invscaling`` and ``adaptive`` schedules of the ``sgd`` solver, early stopping
on a held-out ``validation_fraction``), so one ``random_state`` gives the same
batches in both libraries; each batch's update is :class:`Network`'s, which
runs on fastmlp's kernels and optimizers.
"""
from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state, gen_batches, shuffle
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from fastmlp.estimators.network import Network
from fastmlp.training import blas_threads

__all__ = ["SPARSE_FORMATS", "BaseMLP"]

_FLOAT_DTYPES = (np.float64, np.float32)
SPARSE_FORMATS = ["csr", "csc"]
#: Rows of a sparse X made dense at a time by the predictions.
_SPARSE_CHUNK = 1024


def _dense(X):
    """A batch of rows as a C-contiguous ndarray (sparse rows made dense)."""
    return X.toarray() if sparse.issparse(X) else X


class BaseMLP(BaseEstimator):
    """Parameters, ``fit``/``partial_fit`` and fitted attributes of both estimators (not used directly)."""

    _parameter_constraints: dict = {
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
        "n_threads": [None, Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, max_fun=15000, dtype=None, n_threads=None):
        # scikit-learn's convention: store the arguments unchanged, check them in fit.
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dtype = dtype
        self.n_threads = n_threads

    # ---------------------------------------------------------------- fitted attributes
    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "_network")

    @property
    def coefs_(self) -> list[np.ndarray]:
        """Weights of each layer, ``(n_in, n_out)``: views of the core's ``(out, in)`` weights, transposed."""
        check_is_fitted(self)
        return self._network.coefs

    @property
    def intercepts_(self) -> list[np.ndarray]:
        """Bias vector ``(n_out,)`` of each layer (the core's live biases)."""
        check_is_fitted(self)
        return self._network.intercepts

    # ---------------------------------------------------------------- checks
    def _hidden_sizes(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if np.any(np.array(sizes) <= 0):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        return [int(size) for size in sizes]

    def _check_solver(self) -> None:
        if self.solver == "lbfgs":
            raise ValueError("solver='lbfgs' is not offered by fastmlp's estimators: use solver='adam' (the "
                             "default) or solver='sgd'.")

    def _float_X(self, X, fresh: bool = False):
        """X in the network's dtype, or for a ``fresh`` network the ``dtype`` parameter's (None: X's own).

        Sparse X stays sparse (CSR: rows are what the batches take) and is made dense batch by batch.
        """
        if not fresh:
            dtype = self._network.dtype
        else:
            dtype = X.dtype if self.dtype is None else np.dtype(self.dtype)
        if sparse.issparse(X):
            return X.astype(dtype).tocsr()
        X = np.ascontiguousarray(X, dtype=dtype)
        # the core's kernels write nothing into X, but their typed buffers refuse read-only memory
        return X if X.flags.writeable else X.copy()

    # ---------------------------------------------------------------- fitting
    def fit(self, X, y, sample_weight=None):
        """Fit the network to X (n_samples, n_features) and y (n_samples,) or (n_samples, n_outputs).

        Parameters
        ----------
        X : array-like (n_samples, n_features)
        y : array-like (n_samples,) or (n_samples, n_outputs)
            Class labels (an indicator matrix for multilabel) or real targets.
        sample_weight : array-like (n_samples,), default None
            Each sample's weight in the loss and the gradient.

        Returns
        -------
        self
        """
        self._validate_params()
        return self._fit(X, y, sample_weight, incremental=False)

    def _fit(self, X, y, sample_weight, incremental: bool):
        self._check_solver()
        hidden = self._hidden_sizes()
        first_pass = not hasattr(self, "_network") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        X = self._float_X(X, fresh=first_pass)
        if sample_weight is not None:
            from sklearn.utils.validation import _check_sample_weight

            sample_weight = _check_sample_weight(sample_weight, X, dtype=X.dtype)
            if np.all(sample_weight == 1):  # the same sums as no weights, and the fused path
                sample_weight = None
        y = np.asarray(y, dtype=X.dtype).reshape(X.shape[0], -1)
        self.n_outputs_ = y.shape[1]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(y, [X.shape[1], *hidden, self.n_outputs_], X.dtype)
        with blas_threads(self.n_threads):
            self._fit_stochastic(X, y, sample_weight, incremental)
        return self

    def _initialize(self, y: np.ndarray, units: list[int], dtype) -> None:
        self.n_iter_ = 0
        self.t_ = 0
        self.n_layers_ = len(units)
        self.out_activation_ = self._output_activation()
        self._network = Network.create(units, self.activation, self.out_activation_, self._loss_name(), dtype,
                                       self._random_state)
        self._best_state = self._network.state()
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_, self.best_validation_score_, self.best_loss_ = [], -np.inf, None
        else:
            self.validation_scores_, self.best_validation_score_, self.best_loss_ = None, None, np.inf

    def _new_optimizer(self, incremental: bool) -> None:
        if incremental and self._network.optimizer is not None:
            return
        self._network.new_optimizer(self.solver, self.learning_rate_init, momentum=self.momentum,
                                    nesterov=self.nesterovs_momentum, beta_1=self.beta_1, beta_2=self.beta_2,
                                    epsilon=self.epsilon)

    def _split(self, X, y, sample_weight):
        """(train, validation) parts: each (X, y, sample_weight); validation None without early stopping."""
        if not self.early_stopping:
            return (X, y, sample_weight), None
        from sklearn.model_selection import train_test_split

        stratify = y if is_classifier(self) and self.n_outputs_ == 1 else None
        arrays = (X, y) if sample_weight is None else (X, y, sample_weight)
        parts = train_test_split(*arrays, random_state=self._random_state, test_size=self.validation_fraction,
                                 stratify=stratify)
        train, val = list(parts[0::2]), list(parts[1::2])
        if sample_weight is None:
            train.append(None)
            val.append(None)
        if val[0].shape[0] < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of "
                             "your dataset.")
        val[1] = self._validation_targets(val[1])
        return tuple(a if a is None or sparse.issparse(a) else np.ascontiguousarray(a) for a in train), tuple(val)

    def _batch_size(self, n_samples: int) -> int:
        if self.batch_size == "auto":
            return min(200, n_samples)
        if self.batch_size > n_samples:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped")
        return int(np.clip(self.batch_size, 1, n_samples))

    def _fit_stochastic(self, X, y, sample_weight, incremental: bool) -> None:
        self._new_optimizer(incremental)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        (X, y, sample_weight), validation = self._split(X, y, sample_weight)
        labels = self._class_indices(y)
        self.n_iter_ = 0
        try:
            self._epochs(X, y, labels, sample_weight, validation, incremental)
        except KeyboardInterrupt:  # as scikit-learn: keep what was learnt so far
            warnings.warn("Training interrupted by user.")
        if self.early_stopping:
            self._network.load(self._best_state)

    def _epochs(self, X, y, labels, sample_weight, validation, incremental: bool) -> None:
        """Up to ``max_iter`` epochs (one for ``partial_fit``), stopping by scikit-learn's rules."""
        n_samples = X.shape[0]
        batch_size = self._batch_size(n_samples)
        order = np.arange(n_samples, dtype=int)
        for _ in range(self.max_iter):
            if self.shuffle:
                order = shuffle(order, random_state=self._random_state)
            self.loss_ = self._epoch(X, y, labels, sample_weight, order, batch_size)
            self.n_iter_ += 1
            self.t_ += n_samples
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
            self._update_no_improvement_count(validation)
            self._iteration_ends()
            if self._no_improvement_count > self.n_iter_no_change and self._stop():
                break
            if incremental:
                break
            if self.n_iter_ == self.max_iter:
                warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                              "optimization hasn't converged yet.", ConvergenceWarning)

    def _epoch(self, X, y, labels, sample_weight, order, batch_size) -> float:
        """One pass over the data in ``order``; returns the epoch's mean loss (scikit-learn's ``loss_``)."""
        n_samples = X.shape[0]
        fused = self._network.uses_core(sample_weight)
        # a fused softmax head reads class indices; the other heads and NumPy backprop read the target rows
        targets = labels if fused and labels is not None else y
        # shuffled dense rows are gathered into one reused buffer (no allocation per batch)
        gathered = np.empty((batch_size, X.shape[1]), X.dtype) if self.shuffle and not sparse.issparse(X) else None
        accumulated = 0.0
        for batch in gen_batches(n_samples, batch_size):
            rows = order[batch] if self.shuffle else batch
            weights = None if sample_weight is None else sample_weight[rows]
            if gathered is not None:
                x = np.take(X, rows, axis=0, out=gathered[:len(rows)])
            else:
                x = _dense(X[rows])
            loss = self._network.train_batch(x, targets[rows], weights, self.alpha, fused=fused)
            if not np.isfinite(loss):
                raise ValueError(f"Solver produced non-finite parameter weights (loss {loss} at iteration "
                                 f"{self.n_iter_ + 1}). The input data may contain large values and need to be "
                                 f"preprocessed, or learning_rate_init={self.learning_rate_init} is too large.")
            accumulated += loss * (batch.stop - batch.start)
        return accumulated / n_samples

    def _update_no_improvement_count(self, validation) -> None:
        if validation is not None:
            score = self._score(*validation)
            self.validation_scores_.append(score)
            if self.verbose:
                print("Validation score: %f" % score)
            improved = not score < self.best_validation_score_ + self.tol
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_state = self._network.state()
        else:
            improved = not self.loss_curve_[-1] > self.best_loss_ - self.tol
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]
        self._no_improvement_count = 0 if improved else self._no_improvement_count + 1

    def _iteration_ends(self) -> None:
        """scikit-learn's ``invscaling``: the rate after each epoch is ``init / (t_ + 1) ** power_t``."""
        if self.solver == "sgd" and self.learning_rate == "invscaling":
            self._network.learning_rate = float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t

    def _stop(self) -> bool:
        """No improvement for ``n_iter_no_change`` epochs: stop, or (``adaptive``) divide the rate by 5."""
        what = "Validation score" if self.early_stopping else "Training loss"
        message = f"{what} did not improve more than tol={self.tol:f} for {self.n_iter_no_change} consecutive epochs."
        adaptive = self.solver == "sgd" and self.learning_rate == "adaptive"
        if adaptive and self._network.learning_rate > 1e-6:
            self._network.learning_rate = self._network.learning_rate / 5.0
            self._no_improvement_count = 0
            if self.verbose:
                print(f"{message} Setting learning rate to {self._network.learning_rate:f}")
            return False
        if self.verbose:
            print(f"{message}{' Learning rate too small.' if adaptive else ''} Stopping.")
        return True

    def partial_fit_common(self, X, y, sample_weight):
        """One epoch over (X, y) from the current state (the estimators' ``partial_fit``)."""
        self._validate_params()
        return self._fit(X, y, sample_weight, incremental=True)

    # ---------------------------------------------------------------- prediction
    def _forward(self, X, check_input: bool = True) -> np.ndarray:
        """Output activations (n_samples, n_outputs) of the network."""
        check_is_fitted(self)
        if check_input:
            X = validate_data(self, X, accept_sparse=SPARSE_FORMATS, dtype=_FLOAT_DTYPES, reset=False)
        X = self._float_X(X)
        with blas_threads(self.n_threads):
            if not sparse.issparse(X):
                return self._network.forward(X)
            chunks = gen_batches(X.shape[0], _SPARSE_CHUNK)
            return np.concatenate([self._network.forward(_dense(X[rows])) for rows in chunks])

    def _score(self, X, y, sample_weight=None) -> float:
        """scikit-learn's score of the current weights, without input checks (for early stopping)."""
        y_pred = self._predict(X, check_input=False)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return self._score_function(y, y_pred, sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags
