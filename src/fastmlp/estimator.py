"""``fastmlp.MLPClassifier``: a scikit-learn-style estimator over the fastmlp core.

It follows scikit-learn's estimator conventions (``__init__`` stores its
arguments unchanged, ``get_params``/``set_params``, fitted attributes ending
in ``_``, ``classes_``, ``n_features_in_``) without importing scikit-learn, so
it works in a ``Pipeline``, ``GridSearchCV`` or ``clone`` when scikit-learn is
installed and on its own when it is not. Only when scikit-learn has already
been imported are its ``NotFittedError`` and ``DataConversionWarning`` raised
(as subclasses of this module's own), so code catching those works too.

Training is ``fastmlp.train``'s, without its command line: the hyper-parameters
are checked against the same table (:mod:`fastmlp.hyperparams`, so a bad value
gets the same message), the model, optimizer and update come from
:mod:`fastmlp.training`, the updates are made by the training loop's stepping
part (:func:`fastmlp.loop.train_steps`), and ``fastmlp.data.DataSet`` draws the
course's shuffled mini-batches.

Example
-------
>>> import numpy as np
>>> from fastmlp import MLPClassifier
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(300, 5)); y = np.where(X[:, 0] > 0, "pos", "neg")
>>> clf = MLPClassifier(hidden_layer_sizes=(20,), optimizer="adam", learning_rate=1e-2,
...                     init="kaiming", max_steps=200, random_state=0).fit(X, y)
>>> clf.score(X, y) > 0.9
True
"""
from __future__ import annotations

import functools
import inspect
import numbers
import sys
import warnings
from typing import Any, Callable

import numpy as np

from fastmlp import runlog
from fastmlp.hyperparams import Boolean, check, check_all
from fastmlp.loop import train_steps
from fastmlp.schedules import LearningRateSchedule
from fastmlp.training import build_model_and_optimizer, derive_seeds, training_step

__all__ = ["DataConversionWarning", "MLPClassifier", "NotFittedError"]


class NotFittedError(ValueError, AttributeError):
    """A method that needs a fitted estimator was called before ``fit``."""


class DataConversionWarning(UserWarning):
    """Input data was converted (e.g. a column-vector ``y`` was flattened)."""


@functools.cache
def _with_sklearn_base(ours: type, module: str, name: str) -> type:
    """``ours``, or a subclass of both ``ours`` and scikit-learn's class of that name.

    scikit-learn is consulted only if something already imported it: nobody can
    be catching its exception classes otherwise, and importing it is slow.
    """
    if "sklearn" not in sys.modules:
        return ours
    try:
        theirs = getattr(__import__(module, fromlist=[name]), name)
    except (ImportError, AttributeError):
        return ours
    return type(ours.__name__, (ours, theirs), {"__module__": __name__, "__doc__": ours.__doc__})


def _not_fitted(estimator: Any, method: str) -> Exception:
    cls = _with_sklearn_base(NotFittedError, "sklearn.exceptions", "NotFittedError")
    return cls(
        f"This {type(estimator).__name__} instance is not fitted yet: call 'fit' (or 'partial_fit') "
        f"with appropriate arguments before '{method}'."
    )


# Constructor argument -> its entry in the constraint table (fastmlp.hyperparams).
_TABLE_NAMES = {
    "hidden_layer_sizes": "hidden_units", "learning_rate": "learning_rate", "batch_size": "batch_size",
    "max_steps": "max_steps", "optimizer": "optimizer", "momentum": "momentum",
    "weight_decay": "weight_decay", "init": "init", "dtype": "dtype",
}


def _resolve_seed(random_state: Any) -> int:
    """An int seed from ``random_state`` (None: fresh entropy; int; RandomState or Generator: one draw)."""
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1)[0])
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(np.iinfo(np.int64).max))
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, (bool, np.bool_)):
        return check("seed", random_state, label="random_state")
    raise TypeError(f"random_state: expected None, an int >= 0 or a NumPy random generator, got {random_state!r}")


class MLPClassifier:
    """Multi-layer perceptron classifier (ReLU hidden layers, softmax output, cross-entropy loss).

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default (100,)
        Width of each hidden layer; ``()`` gives multinomial logistic
        regression. An int means one layer; a string like ``"512,256"`` works too.
    learning_rate : float, default 2e-3
        Step size of the optimizer.
    batch_size : int, default 200
        Examples per update (clipped to the number of training samples).
    max_steps : int, default 1500
        Number of updates ``fit`` makes (not epochs).
    optimizer : {"sgd", "momentum", "adam"}, default "sgd"
        Plain SGD (the course), SGD with ``momentum``, or Adam.
    momentum : float, default 0.9
        Momentum of ``optimizer="momentum"``.
    weight_decay : float, default 0.0
        L2 penalty on the weights (not the biases).
    init : {"normal", "kaiming", "xavier"}, default "normal"
        Weight initialisation; ``"normal"`` is the course's N(0, 1e-4^2), which
        learns slowly: ``"kaiming"`` with ``"adam"`` or ``"momentum"`` is the
        practical choice.
    dtype : np.float32 or np.float64, default np.float32
        Precision of the parameters and of the computations.
    random_state : int, numpy Generator/RandomState or None, default None
        Seeds the weights and the batch order (``None``: not reproducible).
    verbose : bool, default False
        Show a progress bar with the running loss while fitting.

    Attributes
    ----------
    classes_ : ndarray (n_classes,)
        The class labels (any sortable labels: ints, strings...).
    n_features_in_ : int
        Number of features seen by ``fit``.
    model_ : fastmlp.MLP
        The trained network (it outputs class indices into ``classes_``).
    loss_curve_ : list of float
        Training loss of every update (each batch's mean loss before its update).
    n_steps_ : int
        Updates made so far (``fit`` resets it; ``partial_fit`` adds to it).
    """

    def __init__(self, hidden_layer_sizes=(100,), learning_rate=2e-3, batch_size=200, max_steps=1500,
                 optimizer="sgd", momentum=0.9, weight_decay=0.0, init="normal", dtype=np.float32,
                 random_state=None, verbose=False):
        # scikit-learn convention: store the arguments unchanged, check them in fit.
        self.hidden_layer_sizes = hidden_layer_sizes
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_steps = max_steps
        self.optimizer = optimizer
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.init = init
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose

    # ---------------------------------------------------------- parameters
    @classmethod
    def _get_param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return sorted(p.name for p in signature.parameters.values() if p.name != "self")

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments as a dict (``deep`` is accepted for scikit-learn; no nested estimators)."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params: Any) -> "MLPClassifier":
        """Set constructor arguments (checked at the next ``fit``); returns ``self``.

        Raises
        ------
        ValueError
            For a name that is not a constructor argument.
        """
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"Invalid parameter {name!r} for estimator {type(self).__name__}. Valid parameters are: {valid!r}."
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = []
        for name in self._get_param_names():
            value = getattr(self, name)
            try:
                same = value is defaults[name] or bool(value == defaults[name])
            except Exception:  # e.g. an array compared with a tuple
                same = False
            if not same:
                shown = f"np.{value.__name__}" if isinstance(value, type) else repr(value)
                changed.append(f"{name}={shown}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def _checked_params(self) -> dict[str, Any]:
        """The hyper-parameters checked against the table, by constructor name, plus ``seed``.

        Raises
        ------
        TypeError, ValueError
            Naming the first bad one (see :mod:`fastmlp.hyperparams`).
        """
        params = check_all({name: getattr(self, name) for name in _TABLE_NAMES}, _TABLE_NAMES)
        params["verbose"] = check(Boolean(), self.verbose, label="verbose")
        params["seed"] = _resolve_seed(self.random_state)
        return params

    # ---------------------------------------------------------- input checks
    def _check_X(self, X: Any, dtype: np.dtype, *, reset: bool) -> np.ndarray:
        """X as a C-contiguous (n_samples, n_features) array of ``dtype`` (a copy only if needed)."""
        if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
            raise TypeError("X: sparse input is not supported; pass a dense array (e.g. X.toarray())")
        try:
            arr = np.asarray(X)
        except ValueError as exc:  # ragged nested lists
            raise ValueError(f"X: expected a 2-d array-like of numbers, got {type(X).__name__} that NumPy "
                             f"cannot turn into an array ({exc})") from None
        if arr.dtype.kind == "c":
            raise ValueError(f"Complex data not supported: X has dtype {arr.dtype}")
        if arr.ndim != 2:
            hint = (" Reshape your data either using X.reshape(-1, 1) if it has a single feature or "
                    "X.reshape(1, -1) if it contains a single sample.") if arr.ndim == 1 else ""
            raise ValueError(f"X: expected a 2-d array of shape (n_samples, n_features), got a "
                             f"{arr.ndim}-d array of shape {arr.shape}.{hint}")
        if arr.shape[0] < 1:
            raise ValueError(f"X: found array with 0 sample(s) (shape={arr.shape}) while a minimum of 1 is required.")
        if arr.shape[1] < 1:
            raise ValueError(f"X: found array with 0 feature(s) (shape={arr.shape}) while a minimum of 1 is required.")
        try:
            arr = np.ascontiguousarray(arr, dtype=dtype)
        except TypeError as exc:  # e.g. a dict among the values
            raise TypeError(f"X: cannot convert the values to {dtype}: {exc}") from None
        except ValueError as exc:  # e.g. a non-numeric string
            raise ValueError(f"X: cannot convert the values to {dtype}: {exc}") from None
        if not arr.flags.writeable:
            # The core's Cython kernels cannot take read-only buffers (e.g. np.memmap mode "r").
            arr = arr.copy()
        if not np.isfinite(arr).all():
            what = "NaN" if np.isnan(arr).any() else f"infinity or a value too large for dtype('{dtype}')"
            raise ValueError(f"Input X contains {what}.")
        if reset:
            self.n_features_in_ = arr.shape[1]
        elif arr.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {arr.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input.")
        return arr

    def _check_y(self, y: Any, n_samples: int) -> np.ndarray:
        """y as a 1-d array of labels of length ``n_samples``."""
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None.")
        if hasattr(y, "toarray"):
            raise TypeError("y: sparse input is not supported; pass a 1-d array of labels")
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            warnings.warn(
                _with_sklearn_base(DataConversionWarning, "sklearn.exceptions", "DataConversionWarning")(
                    "A column-vector y was passed when a 1d array was expected. Please change the shape of y "
                    "to (n_samples,), for example using ravel()."),
                stacklevel=3,
            )
            y = y.ravel()
        if y.ndim != 1:
            raise ValueError(f"y: expected a 1-d array of labels of shape ({n_samples},), got shape {y.shape}")
        if y.shape[0] != n_samples:
            raise ValueError(f"X and y have different numbers of samples: X has {n_samples}, y has {y.shape[0]}")
        if y.dtype.kind == "c":
            raise ValueError(f"Complex data not supported: y has dtype {y.dtype}")
        if y.dtype.kind == "f":
            if not np.isfinite(y).all():
                what = "NaN" if np.isnan(y).any() else "infinity or a value too large for dtype('float64')"
                raise ValueError(f"Input y contains {what}.")
            if np.any(y != np.round(y)):
                raise ValueError("Unknown label type: continuous. y holds non-integer floats; a classifier needs "
                                 "class labels (ints, strings, or integer-valued floats).")
        return y

    def _encode(self, y: np.ndarray) -> np.ndarray:
        """Class indices (n,) int64 into ``classes_``; ValueError for labels not among them."""
        try:
            index = np.searchsorted(self.classes_, y)
        except TypeError as exc:
            raise TypeError(f"y: labels of type {y.dtype} cannot be compared with classes_ "
                            f"({self.classes_.dtype}): {exc}") from None
        index = np.minimum(index, len(self.classes_) - 1)
        unknown = self.classes_[index] != y
        if np.any(unknown):
            raise ValueError(f"y contains labels not in classes_ {self.classes_.tolist()}: "
                             f"{np.unique(y[unknown]).tolist()[:10]}")
        return index.astype(np.int64)

    @staticmethod
    def _unique_classes(labels: np.ndarray, what: str) -> np.ndarray:
        try:
            classes = np.unique(labels)
        except TypeError as exc:  # e.g. a mix of strings and numbers
            raise TypeError(f"{what}: labels must be mutually comparable (all numbers or all strings): {exc}") from None
        if len(classes) < 2:
            raise ValueError(f"{what}: a classifier needs at least 2 classes, got only one class: {classes.tolist()}")
        return classes

    # ---------------------------------------------------------- training
    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def _initialize(self, n_features: int, classes: np.ndarray, params: dict[str, Any]) -> None:
        model_seed, data_seed = derive_seeds(params["seed"])
        self.classes_ = classes
        # What build_model_and_optimizer needs to rebuild the network when unpickling.
        self._network_config = {
            "n_inputs": n_features, "hidden_units": params["hidden_layer_sizes"], "n_classes": len(classes),
            "dtype": params["dtype"], "init": params["init"], "optimizer": params["optimizer"],
            "learning_rate": params["learning_rate"], "momentum": params["momentum"],
            "weight_decay": params["weight_decay"],
        }
        self.model_, self._optimizer = build_model_and_optimizer(**self._network_config, seed=model_seed)
        self._batch_rng = np.random.default_rng(data_seed)  # seeds each call's batch order
        self.loss_curve_ = []
        self.n_steps_ = 0

    def _run(self, X: np.ndarray, y_index: np.ndarray, n_updates: int, batch_size: Callable[[int], int],
             learning_rate: float) -> None:
        """``n_updates`` updates, update ``i`` (0-based) on a batch of ``batch_size(i)`` shuffled examples.

        The sizes are asked one update at a time: nothing of length ``n_updates`` is built.
        """
        from fastmlp.data import DataSet

        batches = DataSet(X, y_index, seed=int(self._batch_rng.integers(np.iinfo(np.int64).max)))
        schedule = LearningRateSchedule(learning_rate, max(n_updates, 1))
        first = self.n_steps_

        def step(number: int) -> float:
            x, y = batches.next_batch(batch_size(number - first - 1))
            loss = training_step(self.model_, self._optimizer, x, y, number, schedule)
            self.n_steps_ = number
            self.loss_curve_.append(loss)
            return loss

        bar = runlog.progress_bar(n_updates, disable=not self.verbose, desc="fit")
        try:
            train_steps(step, first, first + n_updates, bar)
        except runlog.DivergenceError as exc:
            raise FloatingPointError(
                f"{type(self).__name__}: training diverged at update {exc.step} (loss {exc.loss!r}); "
                "try a smaller learning_rate"
            ) from None
        finally:
            bar.close()

    def fit(self, X, y) -> "MLPClassifier":
        """Train a fresh network for ``max_steps`` updates on (X, y).

        Parameters
        ----------
        X : array-like (n_samples, n_features)
            Numbers; converted to ``dtype``.
        y : array-like (n_samples,)
            Class labels (at least two distinct ones).

        Returns
        -------
        self
        """
        params = self._checked_params()
        X = self._check_X(X, np.dtype(params["dtype"]), reset=True)
        y = self._check_y(y, X.shape[0])
        classes = self._unique_classes(y, "y")
        self._initialize(X.shape[1], classes, params)
        batch = min(params["batch_size"], X.shape[0])
        self._run(X, self._encode(y), params["max_steps"], lambda i: batch, params["learning_rate"])
        return self

    def partial_fit(self, X, y, classes=None) -> "MLPClassifier":
        """One pass (epoch) of updates over (X, y), continuing from the current state.

        Parameters
        ----------
        X : array-like (n_samples, n_features)
        y : array-like (n_samples,)
            Labels, all among ``classes``.
        classes : array-like, optional
            Every label that any call will use; required on the first call
            (when the estimator is not fitted yet), checked against
            ``classes_`` afterwards.

        Returns
        -------
        self

        Notes
        -----
        The pass uses ``ceil(n_samples / batch_size)`` updates, the last one on
        the remaining examples. Hyper-parameters other than ``learning_rate``
        are fixed by the first call.
        """
        params = self._checked_params()
        first = not self.__sklearn_is_fitted__()
        if first and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit "
                             "(every label that will ever appear, e.g. np.unique(y_all)).")
        X = self._check_X(X, np.dtype(params["dtype"]) if first else self.model_.dtype, reset=first)
        y = self._check_y(y, X.shape[0])
        if classes is not None:
            classes = np.asarray(classes)
            if classes.ndim != 1:
                raise ValueError(f"classes: expected a 1-d array of labels, got shape {classes.shape}")
            classes = self._unique_classes(classes, "classes")
            if not first and not np.array_equal(classes, self.classes_):
                raise ValueError(f"classes={classes.tolist()} differs from classes_={self.classes_.tolist()} "
                                 "set by the first call to partial_fit")
        if first:
            self._initialize(X.shape[1], classes, params)
        y_index = self._encode(y)
        n, size = X.shape[0], params["batch_size"]
        self._run(X, y_index, -(-n // size), lambda i: min(size, n - i * size), params["learning_rate"])
        return self

    # ---------------------------------------------------------- prediction
    def _checked_input(self, X, method: str) -> np.ndarray:
        if not self.__sklearn_is_fitted__():
            raise _not_fitted(self, method)
        return self._check_X(X, self.model_.dtype, reset=False)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (n_samples, n_classes), columns in the order of ``classes_``."""
        X = self._checked_input(X, "predict_proba")  # before touching model_: NotFittedError first
        return self.model_.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        """Predicted labels (n_samples,), values from ``classes_``."""
        X = self._checked_input(X, "predict")
        return self.classes_[self.model_.predict(X)]

    def score(self, X, y) -> float:
        """Mean accuracy of ``predict(X)`` against the labels ``y`` (n_samples,)."""
        predicted = self.predict(X)
        y = self._check_y(y, predicted.shape[0])
        return float(np.mean(predicted == y))

    # ---------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        # The network travels as plain arrays (state dicts) and is rebuilt on
        # unpickling: the pickle does not depend on the core's internals, and
        # the rebuilt parameters are writable even when the pickle was loaded
        # from a read-only memory map (joblib does that).
        state = self.__dict__.copy()
        model = state.pop("model_", None)
        optimizer = state.pop("_optimizer", None)
        if model is not None:
            state["_network_state"] = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        network = state.pop("_network_state", None)
        self.__dict__.update(state)
        if network is not None:
            self.model_, self._optimizer = build_model_and_optimizer(**self._network_config, seed=0)
            self.model_.load_state_dict(network["model"])
            self._optimizer.load_state_dict(network["optimizer"])

    # ---------------------------------------------------------- scikit-learn integration
    _estimator_type = "classifier"  # scikit-learn < 1.6 reads this

    def __sklearn_tags__(self):
        """Estimator tags for scikit-learn >= 1.6 (only scikit-learn calls this, so it may import it)."""
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags

        return Tags(
            estimator_type="classifier",
            target_tags=TargetTags(required=True),
            classifier_tags=ClassifierTags(multi_class=True, multi_label=False),
            input_tags=InputTags(two_d_array=True, sparse=False, allow_nan=False),
        )

