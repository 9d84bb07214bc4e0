"""``fastmlp.MLPRegressor``: scikit-learn's ``MLPRegressor`` on fastmlp's kernels."""
from __future__ import annotations

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.metrics import r2_score
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from fastmlp.estimators.base import SPARSE_FORMATS, BaseMLP
from fastmlp.estimators.docs import ATTRIBUTES, PARAMETERS

__all__ = ["MLPRegressor"]


class MLPRegressor(RegressorMixin, BaseMLP):
    __doc__ = f"""Multi-layer perceptron regressor with scikit-learn's parameters, defaults and attributes.

    A drop-in for ``sklearn.neural_network.MLPRegressor`` (solvers ``'adam'``
    and ``'sgd'``): the same initialisation, batches, loss, penalty, schedules
    and stopping rules, the updates made by fastmlp's optimizers. ``y`` may hold
    several outputs (n_samples, n_outputs).

    Parameters
    ----------
    loss : {{'squared_error', 'poisson'}}, default 'squared_error'
        Half the mean squared error (identity output), or half the Poisson
        deviance (exponential output), as scikit-learn.{PARAMETERS}
    Attributes
    ----------{ATTRIBUTES}
    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.preprocessing import StandardScaler
    >>> from fastmlp import MLPRegressor
    >>> X, y = load_diabetes(return_X_y=True)
    >>> X = StandardScaler().fit_transform(X)
    >>> reg = MLPRegressor(learning_rate_init=1e-2, max_iter=500, random_state=0).fit(X[:350], y[:350])
    >>> reg.score(X[350:], y[350:]) > 0.3
    True
    """

    _parameter_constraints: dict = {
        **BaseMLP._parameter_constraints,
        "loss": [StrOptions({"squared_error", "poisson"})],
    }
    _score_function = staticmethod(r2_score)

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000, dtype=None, n_threads=None):
        self.loss = loss
        shared = dict(locals())
        for name in ("self", "loss", "__class__"):
            shared.pop(name, None)
        super().__init__(**shared)

    def _loss_name(self) -> str:
        return self.loss

    def _output_activation(self) -> str:
        return "exp" if self.loss == "poisson" else "identity"

    def _validate_input(self, X, y, incremental: bool, reset: bool):
        X, y = validate_data(self, X, y, accept_sparse=SPARSE_FORMATS, multi_output=True, y_numeric=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def _class_indices(self, y: np.ndarray):
        return None

    def _validation_targets(self, y: np.ndarray) -> np.ndarray:
        return y

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), continuing from the current weights and optimizer state.

        Parameters
        ----------
        X : array-like (n_samples, n_features)
        y : array-like (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like (n_samples,), default None

        Returns
        -------
        self
        """
        return self.partial_fit_common(X, y, sample_weight)

    def _predict(self, X, check_input: bool = True) -> np.ndarray:
        y_pred = self._forward(X, check_input)
        return y_pred.ravel() if y_pred.shape[1] == 1 else y_pred

    def predict(self, X) -> np.ndarray:
        """Predictions (n_samples,), or (n_samples, n_outputs) for several outputs."""
        check_is_fitted(self)
        return self._predict(X)
