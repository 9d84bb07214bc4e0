"""What ``fastmlp.search`` searches: the grid of the reports and the evolutionary space.

A *configuration* is a plain dict holding a value of every searched hyper-parameter::

    {"hidden_units": [1024, 512, 256, 128], "learning_rate": 2e-05, "batch_size": 600,
     "max_steps": 5000, "optimizer": "adam", "weight_decay": 0.0, "dropout": 0.0}

:func:`suggest_config` draws one from an Optuna trial (the grid, or the space searched by
the evolution / TPE / random samplers); applied to ``optuna.trial.FixedTrial(params)`` it
rebuilds the configuration of a finished trial from its stored parameters, so the search
and the final retrain decode parameters in one place.

Every value of a ``--grid`` and both ends of every ``--space`` range are checked
against the trainers' constraint table (:mod:`fastmlp.hyperparams`), so a bad value
gets the message it gets on a trainer's command line. This module needs no Optuna
import of its own: it only calls ``trial.suggest_*``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from fastmlp.hyperparams import (
    CAST_TO_DTYPE,
    Constraint,
    Interval,
    check,
    check_in_dtype,
    format_hidden_units,
    parse_hidden_units,
)
from fastmlp.optim import OPTIMIZERS  # names both trainers understand ("momentum": SGD, momentum 0.9)
from fastmlp.reading import read_regular_file

__all__ = [
    "DEFAULT_GRID",
    "EVOLUTION_SPACE",
    "MAX_GRID_POINTS",
    "MAX_LAYERS",
    "MAX_SPEC_BYTES",
    "grid_size",
    "parse_grid",
    "parse_space",
    "suggest_config",
]

#: The grid of the reports' Table 1 (PyTorch MLP, Adam, learning rate 2e-5): 3 layouts x
#: 3 batch sizes x 2 step counts = 18 configurations. Hidden layouts are stored as
#: comma-separated strings because Optuna's GridSampler only persists scalar values.
DEFAULT_GRID: dict[str, list] = {
    "hidden_units": ["256,256,256", "512,256,128,64", "1024,512,256,128"],
    "batch_size": [200, 600, 1000],
    "max_steps": [2000, 5000],
    "learning_rate": [2e-5],
    "optimizer": ["adam"],
    "weight_decay": [0.0],
    "dropout": [0.0],
}

#: Most hidden layers the evolutionary space builds.
MAX_LAYERS = 4
#: Most points a ``--grid`` may have: Optuna's GridSampler holds every point in memory,
#: in every worker, and a grid this large could never be run anyway.
MAX_GRID_POINTS = 100_000
#: Largest ``--grid`` / ``--space`` file read (far more than any grid of MAX_GRID_POINTS needs).
MAX_SPEC_BYTES = 1 << 20

#: Ranges of the space searched by the evolution, TPE and random samplers. The genome
#: always holds MAX_LAYERS widths ("units_l0".."units_l3") and ``n_layers`` says how many
#: are expressed: a fixed set of genes lets NSGA-II cross over and mutate every width,
#: where a conditional space would leave the deeper widths to its random fallback.
EVOLUTION_SPACE: dict[str, Any] = {
    "n_layers": (1, MAX_LAYERS),
    "units": (64, 2048),          # log scale
    "learning_rate": (1e-5, 1e-2),  # log scale
    "batch_size": (32, 2048),     # log scale
    "max_steps": (500, 5000, 500),  # low, high, step
    "optimizer": OPTIMIZERS,
    "weight_decay": (1e-7, 1e-2),  # log scale
    "dropout": (0.0, 0.5),        # torch model only
}

# What the ends of a --space range may be, where they are not a trainer's
# hyper-parameter of the same name (fastmlp.hyperparams.CONSTRAINTS).
_RANGE_ENDS: dict[str, Constraint | str] = {
    "n_layers": Interval(int, 1, MAX_LAYERS, closed="both"),
    "units": Interval(int, 0, closed="neither"),  # one layer's width
}
# Ranges searched on a log scale: their ends must be > 0.
_LOG_SCALE = ("units", "learning_rate", "batch_size", "weight_decay")


def _dropout_for(model: str, where: str, value: float) -> None:
    if value and model != "torch":
        raise ValueError(f"{where}: dropout is only available with --model torch "
                         f"(the NumPy MLP has no dropout), got {value!r}")


def _canonical_grid_value(key: str, value, *, model: str):
    """Check one grid value (the trainers' table) and return it in the scalar form stored in the study."""
    where = f"--grid[{key!r}]"
    value = check(key, value, label=where)
    if key in CAST_TO_DTYPE:  # a trial trains in float32 unless --trainer_flags says otherwise
        value = check_in_dtype(key, value, "float32", label=where)
    if key == "hidden_units":
        return format_hidden_units(value)
    if key == "dropout":
        _dropout_for(model, where, value)
    return value


def parse_grid(spec: str | Mapping | None, *, model: str) -> dict[str, list]:
    """Build the grid to search from ``--grid`` (JSON text, a JSON file, or a dict).

    The axes named in ``spec`` replace those of :data:`DEFAULT_GRID`; the other axes keep
    the reports' values, so ``{"batch_size": [200, 600], "max_steps": [2000]}`` searches the
    three layouts of the reports at two batch sizes and 2000 steps (6 configurations).

    Parameters
    ----------
    spec : str, mapping or None
        ``None``: the reports' grid. A string starting with ``{`` or ``[`` is parsed as JSON; any
        other string is the path of a JSON file holding such an object.
    model : {"numpy", "torch"}
        Dropout is only allowed (non-zero) for the torch model.

    Returns
    -------
    dict
        ``{axis: [values...]}`` for every key of :data:`DEFAULT_GRID`, in canonical form
        (hidden layouts as ``"1024,512"`` strings, duplicates removed, order kept).

    Raises
    ------
    TypeError, ValueError
        ValueError for malformed JSON, a missing file, a file that is not a regular file
        of at most :data:`MAX_SPEC_BYTES`, an empty grid or axis, an unknown key, more
        than :data:`MAX_GRID_POINTS` points; a value of the wrong type (TypeError) or out
        of range (ValueError) gets the trainers' message (:mod:`fastmlp.hyperparams`),
        naming the offending entry.
    """
    grid = {key: list(values) for key, values in DEFAULT_GRID.items()}
    spec = _user_spec(spec, "--grid", DEFAULT_GRID, holds="lists of values", example='{"batch_size": [200, 600]}')
    for key, values in spec.items():
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"--grid[{key!r}] must be a list of values, got {values!r}")
        if not values:
            raise ValueError(f"--grid[{key!r}] is an empty list: the grid would have no point")
        # A dict keeps the first of equal values in order, in linear time (a file may list many).
        grid[key] = list(dict.fromkeys(_canonical_grid_value(key, value, model=model) for value in values))
    if grid_size(grid) > MAX_GRID_POINTS:
        raise ValueError(f"--grid has {grid_size(grid)} points (the product of its axis lengths "
                         f"{[len(v) for v in grid.values()]}); expected at most {MAX_GRID_POINTS}")
    return grid


def _user_spec(spec, flag: str, known: Mapping, *, holds: str, example: str) -> Mapping:
    """The mapping of a ``--grid`` / ``--space`` value, checked to be non-empty with known keys.

    ``spec`` is a mapping, JSON text (starting with ``{`` or ``[``), the path of a JSON
    file, or None (the flag not given: ``{}``); ``holds`` says what the values are
    ("lists of values"), ``example`` is shown when the mapping is empty.
    """
    if spec is None:
        return {}
    if isinstance(spec, str):
        text = spec.strip()
        if not text.startswith(("{", "[")):
            text = _read_spec_file(text, flag)
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{flag}: malformed JSON ({exc.msg} at line {exc.lineno} "
                             f"column {exc.colno})") from None
        except RecursionError:
            raise ValueError(f"{flag}: JSON nested too deep (a grid or space is an object of "
                             "lists)") from None
    if not isinstance(spec, Mapping):
        raise ValueError(f"{flag} must be a JSON object mapping parameter names to {holds}, "
                         f"got {type(spec).__name__}")
    if not spec:
        raise ValueError(f"{flag} is empty: give at least one, e.g. '{example}' (keys: {list(known)})")
    for key in spec:
        if key not in known:
            raise ValueError(f"{flag}: unknown parameter {key!r}; expected some of {list(known)}")
    return spec


def _read_spec_file(path: str, flag: str) -> str:
    """The text of the JSON file a ``--grid`` / ``--space`` names (a regular file of at most :data:`MAX_SPEC_BYTES`)."""
    try:
        data = read_regular_file(Path(path).expanduser(), limit=MAX_SPEC_BYTES, what=f"{flag} file")
        return data.decode("utf-8")
    except OSError as exc:
        raise ValueError(f"{flag}: {path!r} is neither a JSON object nor a readable "
                         f"JSON file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{flag} file {path!r} is not UTF-8 text (byte {exc.start})") from None


def _space_range(key: str, value, *, with_step: bool = False) -> list:
    """Check one ``--space`` range ``[low, high]`` (``[low, high, step]`` when ``with_step``)."""
    where = f"--space[{key!r}]"
    form = "[low, high] or [low, high, step]" if with_step else "[low, high]"
    if not isinstance(value, (list, tuple)) or len(value) not in ((2, 3) if with_step else (2,)):
        raise ValueError(f"{where} must be {form}, got {value!r}")
    entry = _RANGE_ENDS.get(key, key)
    ends = [check(entry, end, label=where) for end in value]
    if entry in CAST_TO_DTYPE:
        ends = [check_in_dtype(entry, end, "float32", label=where) for end in ends]
    low, high = ends[0], ends[1]
    if low > high:
        raise ValueError(f"{where} needs low <= high, got {value!r}")
    if key in _LOG_SCALE and low <= 0:
        raise ValueError(f"{where} is searched on a log scale: low must be > 0, got {value!r}")
    if with_step:
        step = ends[2] if len(ends) == 3 else EVOLUTION_SPACE[key][2]
        if (high - low) % step:
            raise ValueError(f"{where}: the step must divide high - low, got {value!r}")
        return [low, high, step]
    return [low, high]


def parse_space(spec: str | Mapping | None, *, model: str) -> dict[str, Any]:
    """Build the space searched by the evolution / TPE / random samplers from ``--space``.

    The keys named in ``spec`` replace the ranges of :data:`EVOLUTION_SPACE`; the others
    keep theirs. ``{"units": [128, 1024], "batch_size": [64, 512]}`` narrows the widths and
    batch sizes, e.g. to keep every trial within a CPU budget.

    Parameters
    ----------
    spec : str, mapping or None
        ``None``: :data:`EVOLUTION_SPACE`. A string starting with ``{`` is parsed as JSON;
        any other string is the path of a JSON file holding such an object. Ranges are
        ``[low, high]`` (``n_layers``, ``units``, ``batch_size``: ints; ``learning_rate``,
        ``weight_decay``: numbers > 0, searched on a log scale; ``dropout``: numbers in
        [0, 1)), ``max_steps`` is ``[low, high]`` or ``[low, high, step]`` and
        ``optimizer`` a non-empty list of optimizer names.
    model : {"numpy", "torch"}
        ``dropout`` may only be given for the torch model.

    Returns
    -------
    dict
        Every key of :data:`EVOLUTION_SPACE`, ranges as lists (the JSON form a study stores).

    Raises
    ------
    TypeError, ValueError
        ValueError for malformed JSON, a missing file, an unknown key, a range of the
        wrong form or with low > high; an end of the wrong type (TypeError) or out of
        range (ValueError) gets the trainers' message, naming the offending entry.
    """
    space = {key: list(value) for key, value in EVOLUTION_SPACE.items()}
    spec = _user_spec(spec, "--space", EVOLUTION_SPACE, holds="ranges", example='{"units": [128, 1024]}')
    for key, value in spec.items():
        if key == "optimizer":
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"--space['optimizer'] must be a non-empty list of {list(OPTIMIZERS)}, "
                                 f"got {value!r}")
            space[key] = list(dict.fromkeys(check("optimizer", v, label="--space['optimizer']") for v in value))
            continue
        if key == "dropout" and model != "torch":
            raise ValueError("--space['dropout']: dropout is only available with --model torch "
                             "(the NumPy MLP has no dropout)")
        space[key] = _space_range(key, value, with_step=(key == "max_steps"))
    return space


def grid_size(grid: Mapping[str, list]) -> int:
    """Number of configurations in ``grid`` (product of the axis lengths)."""
    return math.prod(len(values) for values in grid.values())


def suggest_config(trial, *, model: str, grid: Mapping[str, list] | None = None,
                   space: Mapping[str, Any] | None = None,
                   max_steps_cap: int | None = None) -> dict[str, Any]:
    """Draw a configuration from ``trial`` (an ``optuna.Trial`` or ``optuna.trial.FixedTrial``).

    Parameters
    ----------
    trial
        Anything with Optuna's ``suggest_int``/``suggest_float``/``suggest_categorical``.
    model : {"numpy", "torch"}
        ``dropout`` is searched for the torch model only (0.0 otherwise).
    grid : mapping, optional
        The grid from :func:`parse_grid` (every axis suggested as a categorical, as
        Optuna's GridSampler requires); ``None`` for the evolutionary space.
    space : mapping, optional
        The space from :func:`parse_space` when ``grid`` is None (default
        :data:`EVOLUTION_SPACE`).
    max_steps_cap : int, optional
        Train at most this many steps (quick runs); the suggested ``max_steps`` is what the
        study stores, the returned ``max_steps`` is the number actually trained.

    Returns
    -------
    dict
        The configuration: ``hidden_units`` (list of int), ``learning_rate``, ``batch_size``,
        ``max_steps``, ``optimizer``, ``weight_decay``, ``dropout``.
    """
    if grid is not None:
        config = {key: trial.suggest_categorical(key, list(grid[key])) for key in DEFAULT_GRID}
        config["hidden_units"] = parse_hidden_units(config["hidden_units"])
    else:
        space = EVOLUTION_SPACE if space is None else space
        n_layers = trial.suggest_int("n_layers", *space["n_layers"])
        widths = [trial.suggest_int(f"units_l{i}", *space["units"], log=True)
                  for i in range(MAX_LAYERS)]
        config = {
            "hidden_units": widths[:n_layers],
            "learning_rate": trial.suggest_float("learning_rate", *space["learning_rate"], log=True),
            "batch_size": trial.suggest_int("batch_size", *space["batch_size"], log=True),
            "max_steps": trial.suggest_int("max_steps", space["max_steps"][0],
                                           space["max_steps"][1], step=space["max_steps"][2]),
            "optimizer": trial.suggest_categorical("optimizer", list(space["optimizer"])),
            "weight_decay": trial.suggest_float("weight_decay", *space["weight_decay"], log=True),
            "dropout": (trial.suggest_float("dropout", *space["dropout"])
                        if model == "torch" else 0.0),
        }
    if max_steps_cap is not None:
        config["max_steps"] = min(int(config["max_steps"]), int(max_steps_cap))
    return config
