"""``fastmlp.MLPClassifier``: scikit-learn's ``MLPClassifier`` on fastmlp's kernels."""
from __future__ import annotations

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.metrics import accuracy_score
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.multiclass import type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from fastmlp.estimators.base import SPARSE_FORMATS, BaseMLP
from fastmlp.estimators.docs import ATTRIBUTES, PARAMETERS

__all__ = ["MLPClassifier"]


class MLPClassifier(ClassifierMixin, BaseMLP):
    __doc__ = f"""Multi-layer perceptron classifier with scikit-learn's parameters, defaults and attributes.

    A drop-in for ``sklearn.neural_network.MLPClassifier`` (solvers ``'adam'``
    and ``'sgd'``): the same initialisation, batches, loss, penalty, schedules
    and stopping rules, the updates made by fastmlp's kernels and optimizers.
    The output is a softmax over the classes (cross-entropy loss), or one
    logistic unit per output for two classes and for multilabel ``y`` (an
    indicator matrix; binary cross-entropy).

    Parameters
    ----------{PARAMETERS}
    Attributes
    ----------
    classes_ : ndarray (n_classes,), or list of them for multilabel y
        The class labels.{ATTRIBUTES}
    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from fastmlp import MLPClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = MLPClassifier(random_state=0).fit(X[:1500], y[:1500])
    >>> clf.score(X[1500:], y[1500:]) > 0.9
    True
    """

    _score_function = staticmethod(accuracy_score)

    def _loss_name(self) -> str:
        return "log_loss"

    def _output_activation(self) -> str:
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _validate_input(self, X, y, incremental: bool, reset: bool):
        X, y = validate_data(self, X, y, accept_sparse=SPARSE_FORMATS, multi_output=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer().fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same classes as in the "
                                     f"previous call to fit. Previously got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                                 f"'y' has {classes}.")
        return X, self._label_binarizer.transform(y)

    def _class_indices(self, y: np.ndarray):
        """Class indices (n,) of one-hot rows for the core's fused softmax loss (None for logistic outputs)."""
        return y.argmax(axis=1) if self.out_activation_ == "softmax" else None

    def _validation_targets(self, y: np.ndarray) -> np.ndarray:
        return self._label_binarizer.inverse_transform(y)

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y), continuing from the current weights and optimizer state.

        Parameters
        ----------
        X : array-like (n_samples, n_features)
        y : array-like (n_samples,) or indicator matrix (n_samples, n_classes)
        sample_weight : array-like (n_samples,), default None
        classes : array-like (n_classes,), default None
            Every class any call will see; required on the first call.

        Returns
        -------
        self
        """
        if not hasattr(self, "classes_"):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y if type_of_target(y).startswith("multilabel") else classes)
            self.classes_ = self._label_binarizer.classes_
        elif classes is not None and not np.array_equal(self.classes_, unique_labels(classes)):
            raise ValueError(f"`classes={classes}` is not the same as on last call to partial_fit, was: "
                             f"{self.classes_}")
        return self.partial_fit_common(X, y, sample_weight)

    def _predict(self, X, check_input: bool = True):
        y_pred = self._forward(X, check_input)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    def predict(self, X):
        """Predicted labels (n_samples,), or an indicator matrix (n_samples, n_classes) for multilabel."""
        check_is_fitted(self)
        return self._predict(X)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (n_samples, n_classes), columns in the order of ``classes_``."""
        check_is_fitted(self)
        y_pred = self._forward(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        if y_pred.ndim == 1:
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def predict_log_proba(self, X) -> np.ndarray:
        """``log(predict_proba(X))`` (n_samples, n_classes)."""
        y_prob = self.predict_proba(X)
        return np.log(y_prob, out=y_prob)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags
