"""What ``MLPClassifier`` and ``MLPRegressor`` share: scikit-learn's parameters, epochs and stopping rules.

The epoch loop follows scikit-learn's ``BaseMultilayerPerceptron._fit_stochastic``
step for step (shuffled index order drawn from the estimator's ``RandomState``,
batches of ``batch_size``, the loss accumulated per epoch, ``t_``, the ``tol`` /
``n_iter_no_change`` rule on the training loss or the validation score, the
``invscaling`` and ``adaptive`` schedules of the ``sgd`` solver, early stopping
on a held-out ``validation_fraction``), so one ``random_state`` gives the same
batches in both libraries. Its parts live beside it: the checks of parameters
and data in :mod:`~fastmlp.estimators.inputs`, the epoch's batches in
:mod:`~fastmlp.estimators.batches`, the ``sgd`` schedules in
:mod:`~fastmlp.estimators.rates`, and each batch's update in
:class:`~fastmlp.estimators.network.Network`, which runs on fastmlp's kernels
and optimizers.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from fastmlp.estimators.batches import Batches
from fastmlp.estimators.inputs import (PARAMETER_CONSTRAINTS, as_network_input, batch_size_for, checked_sample_weight,
                                       hidden_sizes, refuse_lbfgs, validation_split)
from fastmlp.estimators.network import Network
from fastmlp.estimators.rates import RateSchedule
from fastmlp.hyperparams import check
from fastmlp.training import blas_threads

__all__ = ["SPARSE_FORMATS", "BaseMLP"]

_FLOAT_DTYPES = (np.float64, np.float32)
SPARSE_FORMATS = ["csr", "csc"]
#: Rows of a sparse X made dense at a time by the predictions.
_SPARSE_CHUNK = 1024


class BaseMLP(BaseEstimator):
    """Parameters, ``fit``/``partial_fit`` and fitted attributes of both estimators (not used directly)."""

    _parameter_constraints: dict = dict(PARAMETER_CONSTRAINTS)

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
        check("threads", self.n_threads, label="n_threads")  # the same message as MLPRunConfig(threads=...)
        refuse_lbfgs(self.solver)
        hidden = hidden_sizes(self.hidden_layer_sizes)
        first_pass = not hasattr(self, "_network") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        X = self._network_input(X, fresh=first_pass)
        sample_weight = checked_sample_weight(sample_weight, X)
        y = np.asarray(y, dtype=X.dtype).reshape(X.shape[0], -1)
        self.n_outputs_ = y.shape[1]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(y, [X.shape[1], *hidden, self.n_outputs_], X.dtype)
        with blas_threads(self.n_threads):
            self._fit_stochastic(X, y, sample_weight, incremental)
        return self

    def _network_input(self, X, fresh: bool = False):
        """X in the network's dtype, or for a ``fresh`` network the ``dtype`` parameter's (None: X's own)."""
        if not fresh:
            return as_network_input(X, self._network.dtype)
        return as_network_input(X, X.dtype if self.dtype is None else np.dtype(self.dtype))

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
        stratify = y if is_classifier(self) and self.n_outputs_ == 1 else None
        train, (X_val, y_val, weights_val) = validation_split(
            X, y, sample_weight, fraction=self.validation_fraction, random_state=self._random_state, stratify=stratify)
        return train, (X_val, self._validation_targets(y_val), weights_val)

    def _fit_stochastic(self, X, y, sample_weight, incremental: bool) -> None:
        self._new_optimizer(incremental)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        (X, y, sample_weight), validation = self._split(X, y, sample_weight)
        fused = self._network.uses_core(sample_weight)
        labels = self._class_indices(y)
        # a fused softmax head reads class indices; the other heads and NumPy backprop read the target rows
        targets = labels if fused and labels is not None else y
        batches = Batches.create(X, targets, sample_weight, batch_size_for(self.batch_size, X.shape[0]), self.shuffle)
        self.n_iter_ = 0
        try:
            self._epochs(batches, fused, validation, incremental)
        except KeyboardInterrupt:  # as scikit-learn: keep what was learnt so far
            warnings.warn("Training interrupted by user.")
        if self.early_stopping:
            self._network.load(self._best_state)

    def _epochs(self, batches: Batches, fused: bool, validation, incremental: bool) -> None:
        """Up to ``max_iter`` epochs (one for ``partial_fit``), stopping by scikit-learn's rules."""
        schedule = RateSchedule(self.solver, self.learning_rate, self.learning_rate_init, self.power_t)
        for _ in range(self.max_iter):
            self.loss_ = self._epoch(batches, fused)
            self.n_iter_ += 1
            self.t_ += batches.n_samples
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
            self._update_no_improvement_count(validation)
            schedule.iteration_ends(self._network, self.t_)
            if self._no_improvement_count > self.n_iter_no_change:
                if schedule.trigger_stopping(self._network, self._no_improvement_message(), self.verbose):
                    break
                self._no_improvement_count = 0
            if incremental:
                break
            if self.n_iter_ == self.max_iter:
                warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                              "optimization hasn't converged yet.", ConvergenceWarning)

    def _epoch(self, batches: Batches, fused: bool) -> float:
        """One pass over the data; returns the epoch's mean loss (scikit-learn's ``loss_``)."""
        accumulated = 0.0
        train_batch, alpha = self._network.train_batch, self.alpha
        for x, targets, weights in batches.epoch(self._random_state):
            loss = train_batch(x, targets, weights, alpha, fused=fused)
            if not math.isfinite(loss):
                raise ValueError(f"Solver produced non-finite parameter weights (loss {loss} at iteration "
                                 f"{self.n_iter_ + 1}). The input data may contain large values and need to be "
                                 f"preprocessed, or learning_rate_init={self.learning_rate_init} is too large.")
            accumulated += loss * x.shape[0]
        return accumulated / batches.n_samples

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

    def _no_improvement_message(self) -> str:
        what = "Validation score" if self.early_stopping else "Training loss"
        return f"{what} did not improve more than tol={self.tol:f} for {self.n_iter_no_change} consecutive epochs."

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
        X = self._network_input(X)
        with blas_threads(self.n_threads):
            if not sparse.issparse(X):
                return self._network.forward(X)
            starts = range(0, X.shape[0], _SPARSE_CHUNK)
            return np.concatenate([self._network.forward(X[i:i + _SPARSE_CHUNK].toarray()) for i in starts])

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
