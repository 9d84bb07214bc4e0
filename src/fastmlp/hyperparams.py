"""What each hyper-parameter may be: one table that every interface reads.

:data:`CONSTRAINTS` maps a hyper-parameter's name to its constraint, in the spirit of
scikit-learn's ``_parameter_constraints``. It is read by

- the run configurations (:class:`fastmlp.config.RunConfig`: each field names its
  entry), so that a run's settings are checked once, when its configuration is made;
- the command lines, through ``fastmlp.cli.flag_type`` (``fastmlp.train``'s flags, the
  search's ``--seed``, ``--threads``...), which turns a flag's text into a value first
  (:func:`from_text`), so that ``--batch_size -5`` is checked as the number -5;
- the search space (:mod:`fastmlp.search.space`: every ``--grid`` value and every
  end of a ``--space`` range);
- the torch trainers (``torch_models.train_mlp``, ``torch_models.train_convnet``):
  every flag named here, on the command line and in a Namespace handed to ``train()``
  (the torch MLP's ``--init`` is the entry ``torch_init``).

So a bad value gets one message everywhere, ``<name>: expected <what>, got <value>``,
where ``<name>`` is what the interface calls it: ``batch_size`` (the library),
``--batch_size`` (command line), ``--grid['batch_size']`` (search). (The scikit-learn estimators take
scikit-learn's parameters and check them with scikit-learn's own constraints.)

Errors
------
One exception type per kind of mistake, as in Python itself and in the core:

- ``TypeError``: the value is not of a type the parameter takes: a string, ``None``
  or a bool where a number is expected, a float where an integer is expected
  (``max_steps=2.5``, and ``2.0`` too), a dtype other than float32/float64.
- ``ValueError``: the type is right, the value is not allowed: out of range
  (``batch_size=0``, ``momentum=1.0``, a NaN learning rate), not among the choices
  (``optimizer="rmsprop"``), or a malformed list of layer widths (``"512,abc"``).
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from fastmlp._validation import check_fits_in_memory, check_network_size
from fastmlp.data import DATASET_NAMES, PREPROCESSINGS
from fastmlp.modules import INITS
from fastmlp.optim import OPTIMIZERS
from fastmlp.schedules import SCHEDULES

__all__ = [
    "BATCHNORMS",
    "CONSTRAINTS",
    "DEVICES",
    "NONNEGATIVE_INT",
    "POSITIVE_INT",
    "POSITIVE_NUMBER",
    "TORCH_INITS",
    "Boolean",
    "Constraint",
    "FloatDType",
    "HiddenUnits",
    "Interval",
    "NoneOr",
    "Options",
    "CAST_TO_DTYPE",
    "check",
    "check_all",
    "check_in_dtype",
    "check_sizes",
    "format_hidden_units",
    "from_text",
    "parse_hidden_units",
]

#: ``--device`` of the torch trainers (and of the search's torch trials).
DEVICES = ("auto", "cpu", "cuda")
#: ``--batchnorm`` of the torch MLP: none, ``torch.nn.BatchNorm1d`` or the course's own module.
BATCHNORMS = ("none", "torch", "custom")
#: ``--init`` of the torch MLP: fastmlp's initialisations, or PyTorch's own (``torch``).
TORCH_INITS = (*INITS, "torch")


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


class Constraint:
    """What one hyper-parameter may be.

    :meth:`check` returns the value in canonical form (``int``, ``float``, ``str``,
    ``list[int]``...) or raises ``TypeError``/``ValueError`` with the message
    ``expected <describe()>, got <value>``; :meth:`from_text` turns a command line's
    text into the value to check, :meth:`to_text` a value into that text.
    """

    #: The values a command line may list in its ``--help`` (None: too many to list).
    choices: tuple[str, ...] | None = None

    def describe(self) -> str:
        raise NotImplementedError

    def check(self, value: Any) -> Any:
        raise NotImplementedError

    def from_text(self, text: str) -> Any:
        return text

    def to_text(self, value: Any) -> Any:
        """``value`` as a command line writes it (and argparse shows it); the value itself by default."""
        return value

    def expected(self, value: Any) -> str:
        return f"expected {self.describe()}, got {value!r}"


@dataclass(frozen=True)
class Interval(Constraint):
    """An int or a finite float between ``low`` and ``high`` (``None``: unbounded).

    ``closed`` says which ends belong to the interval: ``"left"`` (``low <= x < high``),
    ``"right"``, ``"both"`` or ``"neither"``.
    """

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "left"

    def describe(self) -> str:
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>=' if self.closed in ('left', 'both') else '>'} {self.low}")
        if self.high is not None:
            bounds.append(f"{'<=' if self.closed in ('right', 'both') else '<'} {self.high}")
        what = "an integer" if self.kind is int else "a finite number"
        return " ".join([what, " and ".join(bounds)]) if bounds else what

    def check(self, value: Any) -> int | float:
        kind = numbers.Integral if self.kind is int else numbers.Real
        if _is_bool(value) or not isinstance(value, kind):
            raise TypeError(self.expected(value))
        number = self.kind(value)
        if not math.isfinite(number) or not self._inside(number):
            raise ValueError(self.expected(value))
        return number

    def _inside(self, number: float) -> bool:
        low_ok = self.low is None or (number >= self.low if self.closed in ("left", "both") else number > self.low)
        high_ok = self.high is None or (number <= self.high if self.closed in ("right", "both") else number < self.high)
        return low_ok and high_ok

    def from_text(self, text: str) -> Any:
        # "1.5" for an integer becomes 1.5, so the message says what is wrong with the number.
        for convert in ((int, float) if self.kind is int else (float,)):
            try:
                return convert(text)
            except ValueError:
                pass
        return text


@dataclass(frozen=True)
class Options(Constraint):
    """One string out of ``choices``."""

    choices: tuple[str, ...]

    def describe(self) -> str:
        return f"one of {self.choices}"

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError(self.expected(value))
        if value not in self.choices:
            raise ValueError(self.expected(value))
        return str(value)


@dataclass(frozen=True)
class NoneOr(Constraint):
    """``None`` (e.g. "the library's own choice") or a value of ``inner``."""

    inner: Constraint

    def describe(self) -> str:
        return f"None or {self.inner.describe()}"

    def check(self, value: Any) -> Any:
        return None if value is None else self.inner.check(value)

    def from_text(self, text: str) -> Any:
        return self.inner.from_text(text)


class Boolean(Constraint):
    """A bool (NumPy's too; an int is read as its truth value, as ``verbose=2`` means)."""

    def describe(self) -> str:
        return "a bool"

    def check(self, value: Any) -> bool:
        if not isinstance(value, (bool, np.bool_, numbers.Integral)):
            raise TypeError(self.expected(value))
        return bool(value)


class FloatDType(Constraint):
    """float32 or float64, as a NumPy dtype, a type (``np.float32``) or a name; checked to its name."""

    NAMES = ("float32", "float64")
    choices = NAMES

    def describe(self) -> str:
        return "float32 or float64"

    def check(self, value: Any) -> str:
        try:
            name = None if value is None else np.dtype(value).name  # np.dtype(None) would be float64
        except (TypeError, ValueError):
            name = None
        if name not in self.NAMES:
            raise TypeError(self.expected(value))
        return name


class HiddenUnits(Constraint):
    """Widths of the hidden layers: ``"512,256"`` (``""``: none), a sequence of ints, or one int."""

    def describe(self) -> str:
        return "positive integers separated by commas (e.g. '100' or '512,256', '' for none) or a list of them"

    def to_text(self, value: Any) -> str:
        return format_hidden_units(self.check(value))

    def check(self, value: Any) -> list[int]:
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",")] if value.strip() else []
            for part in parts:
                if not re.fullmatch(r"\d+", part) or int(part) < 1:
                    raise ValueError(f"{self.expected(value)}: {part!r} is not a positive integer")
            return [int(part) for part in parts]
        if isinstance(value, numbers.Integral) and not _is_bool(value):
            value = [value]  # one hidden layer
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise TypeError(self.expected(value))
        for part in value:
            if _is_bool(part) or not isinstance(part, numbers.Integral):
                raise TypeError(f"{self.expected(value)}: {part!r} is not an integer")
            if part < 1:
                raise ValueError(f"{self.expected(value)}: {part!r} is not a positive integer")
        return [int(part) for part in value]


#: Constraints that several entries (and the search's own flags) share.
POSITIVE_INT = Interval(int, 0, closed="neither")
NONNEGATIVE_INT = Interval(int, 0)
POSITIVE_NUMBER = Interval(float, 0.0, closed="neither")

#: Every hyper-parameter's constraint, by name. Interfaces that name a parameter
#: differently map their name to these: ``--dnn_hidden_units`` is
#: ``hidden_units``; the torch MLP's ``--init`` is
#: ``torch_init`` (it also offers PyTorch's own initialisation).
CONSTRAINTS: dict[str, Constraint] = {
    # the network
    "hidden_units": HiddenUnits(),
    "init": Options(INITS),
    "torch_init": Options(TORCH_INITS),
    "dtype": FloatDType(),
    "dropout": Interval(float, 0.0, 1.0),
    "batchnorm": Options(BATCHNORMS),
    # the optimisation
    "optimizer": Options(OPTIMIZERS),
    "learning_rate": POSITIVE_NUMBER,
    "momentum": Interval(float, 0.0, 1.0),
    "nesterov": Boolean(),
    "weight_decay": Interval(float, 0.0),
    "lr_schedule": Options(SCHEDULES),
    "warmup_steps": NONNEGATIVE_INT,
    "beta1": Interval(float, 0.0, 1.0),  # Adam's decay rates, read back from checkpoints
    "beta2": Interval(float, 0.0, 1.0),
    "eps": POSITIVE_NUMBER,
    "updates_done": NONNEGATIVE_INT,  # an optimizer's update count (Adam's t), read back from checkpoints
    "scheduled_learning_rate": Interval(float, 0.0),  # one step's rate, read back: a schedule may reach 0
    "label_smoothing": Interval(float, 0.0, 1.0),
    "batch_size": POSITIVE_INT,
    "max_steps": POSITIVE_INT,
    # the data
    "dataset": Options(DATASET_NAMES),
    "preprocessing": Options(PREPROCESSINGS),
    "augment": Boolean(),
    "validation_size": NONNEGATIVE_INT,
    # evaluation and the run
    "eval_freq": POSITIVE_INT,
    "eval_batch_size": POSITIVE_INT,
    "seed": NONNEGATIVE_INT,
    "threads": NoneOr(POSITIVE_INT),
    "device": Options(DEVICES),
}


#: Entries whose value the kernels use in the model's floating-point type (``--dtype``):
#: a value must keep its constraint once cast (:func:`check_in_dtype`).
CAST_TO_DTYPE = ("learning_rate", "momentum", "weight_decay", "dropout")


def check_in_dtype(name: str, value: float, dtype: Any, *, label: str | None = None) -> float:
    """``value`` (already checked by :func:`check`) if it still meets ``CONSTRAINTS[name]`` as ``dtype``.

    The float32 kernels cast the learning rate and the other numbers of
    :data:`CAST_TO_DTYPE`: ``1e39`` becomes inf (every parameter would turn NaN at the
    first update) and a positive ``1e-50`` becomes 0, which its constraint forbids.

    Raises
    ------
    ValueError
        ``"<label>: expected <what> that float32 can hold (|x| <= 3.403e+38), got 1e+39 (inf as float32)"``.
    """
    dtype = np.dtype(dtype)
    rule = CONSTRAINTS[name]
    with np.errstate(over="ignore", under="ignore"):
        cast = float(dtype.type(value))
    try:
        rule.check(cast)
    except (TypeError, ValueError):
        prefix = label if label is not None else name
        raise ValueError(f"{prefix}: expected {rule.describe()} that {dtype.name} can hold "
                         f"(|x| <= {np.finfo(dtype).max:.4g}, and not so small that it becomes 0), "
                         f"got {value!r} ({cast!r} as {dtype.name})") from None
    return value


def check(name: str | Constraint, value: Any, *, label: str | None = None) -> Any:
    """``value`` checked against ``CONSTRAINTS[name]`` (or the constraint ``name``), in canonical form.

    Parameters
    ----------
    name : str or Constraint
        A key of :data:`CONSTRAINTS`, or a constraint of the caller's own (an option
        that is no hyper-parameter).
    value
        The value to check.
    label : str, optional
        What the caller calls the parameter, prefixed to the message (default: the
        table's name; ``""`` for the bare message, as argparse prefixes its own).

    Raises
    ------
    TypeError, ValueError
        See the module docstring: ``"<label>: expected <what>, got <value>"``.
    """
    rule = CONSTRAINTS[name] if isinstance(name, str) else name
    try:
        return rule.check(value)
    except (TypeError, ValueError) as exc:
        prefix = label if label is not None else (name if isinstance(name, str) else "")
        raise type(exc)(f"{prefix}: {exc}" if prefix else str(exc)) from None


def check_all(values: Mapping[str, Any], names: Mapping[str, str] | None = None, *,
              label: Callable[[str], str] = str) -> dict[str, Any]:
    """A copy of ``values`` with every value the table knows checked, in canonical form.

    Parameters
    ----------
    values : mapping
        An interface's settings by its own keys (flags, constructor arguments).
        Keys with no table entry are copied as they are.
    names : mapping, optional
        The table's name for a key where the two differ (``dnn_hidden_units`` ->
        ``hidden_units``).
    label : callable
        What a message calls a key (``lambda flag: f"--{flag}"`` on a command line).

    When ``values`` holds a ``dtype``, the entries of :data:`CAST_TO_DTYPE` are then
    checked in that dtype too (:func:`check_in_dtype`).

    Raises
    ------
    TypeError, ValueError
        For the first bad value, named by ``label``.
    """
    names = names or {}
    out = dict(values)
    for key, value in values.items():
        entry = names.get(key, key)
        if entry in CONSTRAINTS:
            out[key] = check(entry, value, label=label(key))
    if "dtype" in out:
        for key, value in out.items():
            entry = names.get(key, key)
            if entry in CAST_TO_DTYPE:
                out[key] = check_in_dtype(entry, value, out["dtype"], label=label(key))
    return out


def check_sizes(values: Mapping[str, Any], names: Mapping[str, str] | None = None, *,
                label: Callable[[str], str] = str, n_inputs: int = 3072, n_classes: int = 10) -> None:
    """Refuse checked sizes (layer widths, the batch size) whose arrays this machine cannot hold.

    Checked before anything is loaded or allocated, so that ``--batch_size 10**12``
    gets a message naming it rather than a MemoryError from deep inside.

    Parameters
    ----------
    values : mapping
        Checked settings (:func:`check_all`), by the interface's own keys; the entries
        ``hidden_units`` and ``batch_size`` are read when present, with ``dtype``
        (default float32) for the bytes per value. (An evaluation's chunks are at most
        a split long, so ``eval_batch_size`` needs no bound.)
    names, label
        As for :func:`check_all`.
    n_inputs, n_classes : int
        The network's input width and classes (default: CIFAR-10's 32x32x3 images, 10 classes).

    Raises
    ------
    ValueError
        ``"--batch_size 1000000000000: ... need 44,703.5 GiB, more than the 16.0 GiB ..."``.
    """
    keys = {(names or {}).get(key, key): key for key in values}
    itemsize = np.dtype(values.get("dtype") or "float32").itemsize
    widths = list(values[keys["hidden_units"]]) if "hidden_units" in keys else []
    if "hidden_units" in keys:
        check_network_size(n_inputs, widths, n_classes, itemsize,
                           label=f"{label(keys['hidden_units'])} {format_hidden_units(widths)!r}")
    row = n_inputs + 2 * sum(widths) + 2 * n_classes  # a batch row: the input, each layer's output and gradient
    if "batch_size" in keys:
        rows = values[keys["batch_size"]]
        check_fits_in_memory(rows * row * itemsize, f"{label(keys['batch_size'])} {rows}: batches of that many rows")


def from_text(constraint: str | Constraint) -> Callable[[str], Any]:
    """A reader of a command line's text for ``constraint``: the text made a value, then checked.

    ``constraint`` is a name of :data:`CONSTRAINTS` or a :class:`Constraint` (a command
    line's own flags). The text becomes a value first (:meth:`Constraint.from_text`),
    so ``"-5"`` is checked as the number -5.

    Raises
    ------
    TypeError, ValueError
        The table's message with no label (the command line names the flag).
    """
    rule = CONSTRAINTS[constraint] if isinstance(constraint, str) else constraint

    def read(text: str) -> Any:
        return rule.check(rule.from_text(text))

    read.__name__ = constraint if isinstance(constraint, str) else type(constraint).__name__
    return read


def parse_hidden_units(value: str | list | tuple | int) -> list[int]:
    """Hidden layer widths from ``"512,256"`` (``""`` -> ``[]``: logistic regression), a list or an int.

    Raises
    ------
    TypeError, ValueError
        As :class:`HiddenUnits` says (``TypeError`` for a float or a string inside a
        list, ``ValueError`` for ``"10,abc"`` or a width < 1).
    """
    return CONSTRAINTS["hidden_units"].check(value)


def format_hidden_units(units) -> str:
    """``[1024, 512]`` -> ``"1024,512"`` (the flag's form, and what a study stores); ``[]`` -> ``""``."""
    return ",".join(str(int(u)) for u in units)
