"""``fastmlp.Predictor``: a loaded model file's network, preprocessing and labels, predicting raw inputs.

:func:`fastmlp.load` gives one; it predicts what the saved estimator predicted
(classes, one of two classes, a set of labels, or values, by its output head: see
:attr:`Predictor.target`). This module imports no optional package.
"""
from __future__ import annotations

import numpy as np

__all__ = ["TARGETS", "Predictor"]

#: What a Predictor predicts (its ``target``), by output head.
TARGETS = ("multiclass", "binary", "multilabel", "regression")


class Predictor:
    """A network with its input preprocessing and labels: predicts raw inputs as the saved estimator did.

    Parameters
    ----------
    model : fastmlp.MLP
        The network, D inputs and K outputs; its ``output`` head says what it predicts
        (see :attr:`target`).
    classes : ndarray (C,), or None
        The labels: one per output (softmax, multilabel), the two classes of one
        logistic output (binary), None for a regressor (identity output).
    offset, scale : ndarray (D,) of the model's dtype, or None
        The preprocessing x = (raw - offset) / scale (no division when ``scale`` is
        None; no preprocessing at all when ``offset`` is None).
    preprocessing : str or None
        The name of the preprocessing (``mean_image``, ``standardize``), for display.
    input_shape : tuple of int or None
        The shape of one example as the training data stored it, e.g. (3, 32, 32).
    info : dict, optional
        The file's metadata (versions, source), as read.
    feature_names : ndarray (D,) of str, optional
        The column names the estimator was fitted with: a DataFrame's columns are checked against them.
    out_activation : str, optional
        ``"exp"`` for a regressor with an exponential output (scikit-learn's Poisson
        loss; ``model`` then has the identity head); default: ``model``'s head.

    Attributes
    ----------
    classes_ : ndarray (C,) or None
    feature_names_in_ : ndarray (D,) of str or None
    n_features_in_ : int
        D.
    n_outputs_ : int
        K.
    out_activation_ : str
        The output head: ``softmax``, ``logistic``, ``identity`` or ``exp``.
    """

    def __init__(self, model, classes, *, offset=None, scale=None, preprocessing=None, input_shape=None,
                 info=None, feature_names=None, out_activation=None):
        self.model = model
        self.classes_ = classes
        self.offset, self.scale = offset, scale
        self.preprocessing = preprocessing
        self.input_shape = input_shape
        self.info = info if info is not None else {}
        self.feature_names_in_ = feature_names
        self.out_activation = out_activation

    @property
    def n_features_in_(self) -> int:
        return self.model.n_inputs

    @property
    def n_outputs_(self) -> int:
        return self.model.n_classes

    @property
    def dtype(self) -> np.dtype:
        return self.model.dtype

    @property
    def out_activation_(self) -> str:
        return self.model.output if self.out_activation is None else self.out_activation

    @property
    def target(self) -> str:
        """What :meth:`predict` gives, one of :data:`TARGETS`: a class, one of two, a set of labels, values."""
        head = self.out_activation_
        if head == "logistic":
            return "binary" if self.n_outputs_ == 1 else "multilabel"
        return "multiclass" if head == "softmax" else "regression"

    def __repr__(self) -> str:
        labels = "" if self.classes_ is None else f", classes={len(self.classes_)}"
        return (f"Predictor({self.model!r}, target={self.target!r}{labels}, "
                f"preprocessing={self.preprocessing!r}, input_shape={self.input_shape})")

    def rows(self, x) -> np.ndarray:
        """Raw inputs as rows (N, D): ``x`` (N, D), (N, *input_shape), or HWC images for a CHW input_shape.

        A DataFrame's columns must be the ``feature_names_in_`` when the file has them.

        Raises
        ------
        TypeError
            For non-numeric ``x``.
        ValueError
            For any other shape, naming the shapes accepted, or other columns.
        """
        self._check_columns(x)
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"x: expected a real numeric array (e.g. uint8 pixels), got dtype {arr.dtype}")
        accepted = self.accepted_shapes()
        per_example = arr.shape[1:]
        if arr.ndim < 2 or per_example not in accepted or arr.shape[0] == 0:
            shown = " or ".join(f"(N, {', '.join(map(str, s))})" for s in accepted)
            raise ValueError(f"x: expected a non-empty array of shape {shown}, got shape {arr.shape}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError("x: expected finite values, got NaN or infinity")
        if accepted.index(per_example) == 2:  # channels last: into the stored channels-first order
            arr = arr.transpose(0, 3, 1, 2)
        return arr.reshape(arr.shape[0], -1)

    def _check_columns(self, x) -> None:
        """ValueError when ``x`` has columns (a DataFrame) other than the stored feature names, as scikit-learn."""
        columns = getattr(x, "columns", None)
        if columns is None or self.feature_names_in_ is None:
            return
        names = [str(c) for c in columns]
        if names != list(self.feature_names_in_):
            raise ValueError(f"x: expected the columns the model was fitted with, "
                             f"{list(self.feature_names_in_)!r:.300}, got {names!r:.300}")

    def accepted_shapes(self) -> list[tuple]:
        """The shapes of one example :meth:`rows` takes: (D,), ``input_shape``, and (H, W, C) for (C, H, W)."""
        shapes = [(self.n_features_in_,)]
        if self.input_shape is not None and len(self.input_shape) > 1:
            shapes.append(tuple(self.input_shape))
            if len(self.input_shape) == 3:
                c, h, w = self.input_shape
                shapes.append((h, w, c))
        return shapes

    def transform(self, x) -> np.ndarray:
        """The model inputs (N, D) of the model's dtype for raw inputs ``x`` (see :meth:`rows`)."""
        rows = self.rows(x)
        # NumPy's cast-subtract-divide is the arithmetic of the run's own conversion (fastmlp.data).
        out = rows.astype(self.dtype)
        if self.offset is not None:
            out -= self.offset
            if self.scale is not None:
                out /= self.scale
        return out

    def outputs(self, x, batch_size: int = 1000) -> np.ndarray:
        """The output head's values (N, K) of the model's dtype for raw inputs ``x``."""
        out = self.model.predict_proba(self.transform(x), batch_size)
        if self.out_activation_ == "exp":  # the core has no exponential head: applied after its identity
            np.exp(out, out=out)
        return out

    def _classifier_only(self, name: str) -> None:
        if self.target == "regression":  # as scikit-learn's regressors, which have no such method
            raise AttributeError(f"{name}: this model is a regressor (output {self.out_activation_!r}): it "
                                 "predicts values, use predict")

    @property
    def predict_proba(self):
        """Class probabilities (N, C) of the model's dtype for raw inputs ``x``, columns in ``classes_`` order.

        ``predict_proba(x, batch_size=1000)``: for a binary model the two columns
        (1 - p, p) of its one logistic output, as scikit-learn's; for a multilabel one
        each label's probability. A regressor has no ``predict_proba`` (AttributeError).
        """
        self._classifier_only("predict_proba")
        return self._probabilities

    def _probabilities(self, x, batch_size: int = 1000) -> np.ndarray:
        out = self.outputs(x, batch_size)
        return np.vstack([1 - out[:, 0], out[:, 0]]).T if self.target == "binary" else out

    @property
    def decision_function(self):
        """The logits (N, K) of raw inputs ``x``: what the output head turns into :meth:`predict_proba`.

        ``decision_function(x, batch_size=1000)``; a regressor has none (AttributeError).
        """
        self._classifier_only("decision_function")
        return self._logits

    def _logits(self, x, batch_size: int = 1000) -> np.ndarray:
        rows = self.transform(x)
        out = np.empty((rows.shape[0], self.n_outputs_), dtype=self.dtype)
        for start in range(0, rows.shape[0], batch_size):
            h = rows[start : start + batch_size]
            for layer in self.model.layers[:-1]:  # every layer but the output head
                h = layer.forward(h)
            out[start : start + h.shape[0]] = h
        return out

    def predict(self, x, batch_size: int = 1000) -> np.ndarray:
        """What the estimator's ``predict`` gives for raw inputs ``x``, by :attr:`target`.

        multiclass: labels (N,) from ``classes_``, taken from the logits as the training
        run counts its accuracy (probabilities near 1/C can round to equal values where
        the logits still differ); binary: labels (N,), the second class where p > 0.5;
        multilabel: an indicator matrix (N, C) of ints; regression: values (N,) for one
        output, else (N, K), in the model's dtype.
        """
        target = self.target
        if target == "multiclass":
            return self.classes_[self._logits(x, batch_size).argmax(axis=1)]
        out = self.outputs(x, batch_size)
        if target == "regression":
            return out.ravel() if out.shape[1] == 1 else out
        chosen = (out > 0.5).astype(int)  # scikit-learn's LabelBinarizer threshold for logistic outputs
        return self.classes_[chosen[:, 0]] if target == "binary" else chosen
