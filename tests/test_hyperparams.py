"""The constraint table (``fastmlp.hyperparams``) and the one message each bad value gets.

A bad hyper-parameter must read the same whether it came through ``python -m
fastmlp.train`` or the search (``--grid`` values, the search's own flags):
``<name>: expected <what>, got <value>``, with ``TypeError`` for a value of the wrong
type and ``ValueError`` for one out of range. (The estimators take scikit-learn's
parameters and its messages: ``tests/test_estimator.py``.)
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from fastmlp import train as fm_train
from fastmlp.hyperparams import (
    CONSTRAINTS,
    Boolean,
    FloatDType,
    HiddenUnits,
    Interval,
    NoneOr,
    Options,
    check,
    check_all,
    format_hidden_units,
    from_text,
    parse_hidden_units,
)


# --------------------------------------------------------------------------- the constraints
def test_interval_bounds_and_wording():
    assert Interval(int, 0, closed="neither").describe() == "an integer > 0"
    assert Interval(float, 0.0, 1.0).describe() == "a finite number >= 0.0 and < 1.0"
    assert Interval(int, 1, 4, closed="both").describe() == "an integer >= 1 and <= 4"
    unit = Interval(float, 0.0, 1.0, closed="right")
    assert unit.check(1) == 1.0 and isinstance(unit.check(np.float32(0.5)), float)
    with pytest.raises(ValueError, match=r"expected a finite number > 0.0 and <= 1.0, got 0"):
        unit.check(0)
    positive = CONSTRAINTS["batch_size"]
    assert positive.check(np.int64(3)) == 3 and type(positive.check(np.int64(3))) is int
    for wrong_type in (2.5, 2.0, "3", None, True, np.bool_(True)):
        with pytest.raises(TypeError, match="expected an integer > 0"):
            positive.check(wrong_type)
    for out_of_range in (0, -4):
        with pytest.raises(ValueError, match="expected an integer > 0"):
            positive.check(out_of_range)
    for bad_number in (math.nan, math.inf, -1.0):
        with pytest.raises(ValueError, match="finite number > 0.0"):
            CONSTRAINTS["learning_rate"].check(bad_number)


def test_text_becomes_a_number_before_the_check():
    assert Interval(int).from_text("-5") == -5
    assert Interval(int).from_text("1.5") == 1.5  # then refused as "not an integer", not as text
    assert Interval(int).from_text("abc") == "abc"
    assert Interval(float).from_text("1e-3") == 1e-3
    assert from_text("batch_size")("200") == 200
    assert from_text("dtype")("float64") == "float64"
    assert from_text("hidden_units")("512, 256") == [512, 256]
    assert from_text("threads")("2") == 2 and NoneOr(Interval(int)).check(None) is None
    with pytest.raises(ValueError, match=r"^expected an integer > 0, got -5$"):  # the command line names the flag
        from_text("batch_size")("-5")


def test_options_dtype_boolean():
    optimizer = CONSTRAINTS["optimizer"]
    assert isinstance(optimizer, Options) and optimizer.check("adam") == "adam"
    with pytest.raises(ValueError, match=r"expected one of \('sgd', 'momentum', 'adam'\), got 'rmsprop'"):
        optimizer.check("rmsprop")
    with pytest.raises(TypeError, match="expected one of"):
        optimizer.check(None)
    dtype = FloatDType()
    assert [dtype.check(d) for d in (np.float32, "float64", np.dtype("f4"), float)] == [
        "float32", "float64", "float32", "float64"]
    for bad in (np.float16, "float16", np.int32, None, "no such dtype"):
        with pytest.raises(TypeError, match="expected float32 or float64"):
            dtype.check(bad)
    assert Boolean().check(np.bool_(True)) is True and Boolean().check(0) is False
    with pytest.raises(TypeError, match="expected a bool"):
        Boolean().check("yes")


def test_hidden_units_forms():
    assert parse_hidden_units("") == []
    assert parse_hidden_units(" 512, 256 ") == [512, 256]
    assert parse_hidden_units((64,)) == [64]
    assert parse_hidden_units(np.array([8, 4])) == [8, 4]
    assert parse_hidden_units(16) == [16]  # one layer
    assert format_hidden_units(parse_hidden_units("1024,512")) == "1024,512"
    for bad in ("10,", "abc", "-3", "1e3", [0], 0):
        with pytest.raises(ValueError, match="is not a positive integer"):
            parse_hidden_units(bad)
    for bad in ([True], [2.5], ["8"], 2.5, None, {"a": 1}):
        with pytest.raises(TypeError):
            parse_hidden_units(bad)
    assert isinstance(CONSTRAINTS["hidden_units"], HiddenUnits)


def test_check_names_the_parameter_as_the_caller_calls_it():
    with pytest.raises(ValueError, match=r"^batch_size: expected an integer > 0, got 0$"):
        check("batch_size", 0)
    with pytest.raises(ValueError, match=r"^--batch_size: expected"):
        check("batch_size", 0, label="--batch_size")
    with pytest.raises(ValueError, match=r"^expected an integer > 0, got 0$"):
        check("batch_size", 0, label="")
    with pytest.raises(TypeError, match=r"^verbose: expected a bool"):
        check(Boolean(), "yes", label="verbose")


# --------------------------------------------------------------------------- one message everywhere
def _cli_message(main, flag: str, text: str, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main([f"--{flag}", text])
    assert exc.value.code == 2
    found = re.search(rf"argument --{flag}: (.*)$", capsys.readouterr().err.strip())
    assert found, f"no argparse message for --{flag}"
    return found.group(1)


def _grid_message(key: str, value, error: type) -> str:
    pytest.importorskip("optuna")  # the search package's extra
    from fastmlp.search.space import parse_grid

    with pytest.raises(error) as exc:
        parse_grid({key: [value]}, model="numpy")
    prefix = f"--grid[{key!r}]: "
    assert str(exc.value).startswith(prefix), str(exc.value)
    return str(exc.value)[len(prefix):]


# (train flag, search grid axis or None, value, error)
SAME_MESSAGE = [
    ("learning_rate", "learning_rate", -1.0, ValueError),
    ("learning_rate", "learning_rate", math.nan, ValueError),
    ("batch_size", "batch_size", 0, ValueError),
    ("batch_size", "batch_size", 2.5, TypeError),
    ("max_steps", "max_steps", -3, ValueError),
    ("weight_decay", "weight_decay", -0.1, ValueError),
    ("momentum", None, 1.0, ValueError),
    ("optimizer", "optimizer", "rmsprop", ValueError),
    ("init", None, "zeros", ValueError),
    ("dtype", None, "float16", TypeError),
    ("dnn_hidden_units", "hidden_units", "10,abc", ValueError),
    ("dnn_hidden_units", "hidden_units", "64,0", ValueError),
]


@pytest.mark.parametrize("flag, axis, value, error", SAME_MESSAGE)
def test_a_bad_value_reads_the_same_on_the_command_line_and_in_the_search(flag, axis, value, error, capsys):
    cli = _cli_message(fm_train.main, flag, str(value), capsys)
    assert cli.startswith("expected ") and cli.endswith((repr(value), "is not a positive integer")), cli
    if axis is not None:
        assert _grid_message(axis, value, error) == cli


def test_the_searchs_flags_read_the_trainers_messages(capsys):
    pytest.importorskip("optuna")
    from fastmlp import search

    for flag, text in (("seed", "-1"), ("eval_freq", "0"), ("threads", "1.5")):
        assert _cli_message(search.main, flag, text, capsys) == _cli_message(fm_train.main, flag, text, capsys)


# --------------------------------------------------------------------------- the torch trainers
# fastmlp.train's flags that the torch trainers share: a bad value reads the same on all three
# command lines, and in the torch trainers' train() given a Namespace built by hand.
SHARED_WITH_TORCH = [
    ("learning_rate", "-1"), ("learning_rate", "nan"), ("batch_size", "0"), ("batch_size", "2.5"), ("max_steps", "-3"),
    ("eval_freq", "0"), ("eval_batch_size", "0"), ("validation_size", "-1"), ("seed", "-1"), ("threads", "0"),
    ("weight_decay", "-0.1"), ("momentum", "1.0"), ("optimizer", "rmsprop"), ("lr_schedule", "linear"),
    ("warmup_steps", "-1"), ("preprocessing", "zca"),
]
# The torch trainers' own flags (not fastmlp.train's): (flag, table entry, text, trainers).
TORCH_ONLY = [
    ("device", "device", "tpu", ("mlp", "convnet")), ("dropout", "dropout", "1.0", ("mlp",)),
    ("init", "torch_init", "zeros", ("mlp",)), ("batchnorm", "batchnorm", "layer", ("mlp",)),
    ("dnn_hidden_units", "hidden_units", "64,0", ("mlp",)), ("label_smoothing", "label_smoothing", "-0.1", ("convnet",)),
]


def _torch_trainers():
    pytest.importorskip("torch")
    from torch_models import train_convnet, train_mlp

    return {"mlp": train_mlp, "convnet": train_convnet}


def _train_message(module, flag: str, value) -> str:
    """What ``module.train`` says of ``flag=value`` in a hand-built Namespace (it fails before any data is read)."""
    import argparse

    with pytest.raises((TypeError, ValueError)) as exc:
        module.train(argparse.Namespace(**{flag: value}))
    prefix = f"--{flag}: "
    assert str(exc.value).startswith(prefix), str(exc.value)
    return str(exc.value)[len(prefix):]


@pytest.mark.parametrize("flag, text", SHARED_WITH_TORCH)
def test_the_torch_trainers_read_fastmlp_trains_messages(flag, text, capsys):
    trainers = _torch_trainers()
    expected = _cli_message(fm_train.main, flag, text, capsys)
    value = CONSTRAINTS[flag].from_text(text)
    for module in trainers.values():
        assert _cli_message(module.main, flag, text, capsys) == expected
        assert _train_message(module, flag, value) == expected


@pytest.mark.parametrize("flag, entry, text, which", TORCH_ONLY)
def test_the_torch_trainers_own_flags_read_the_tables_message(flag, entry, text, which, capsys):
    trainers = _torch_trainers()
    value = CONSTRAINTS[entry].from_text(text)
    with pytest.raises((TypeError, ValueError)) as exc:
        check(entry, value, label="")
    for name in which:
        assert _cli_message(trainers[name].main, flag, text, capsys) == str(exc.value)
        assert _train_message(trainers[name], flag, value) == str(exc.value)


# --------------------------------------------------------------------------- the model's dtype
def test_check_all_checks_what_the_table_knows_by_the_callers_names():
    given = {"dnn_hidden_units": "20,10", "learning_rate": 5, "dtype": "float32", "note": object()}
    out = check_all(given, {"dnn_hidden_units": "hidden_units"}, label=lambda key: f"--{key}")
    assert out["dnn_hidden_units"] == [20, 10] and out["learning_rate"] == 5.0 and out["note"] is given["note"]
    assert given["dnn_hidden_units"] == "20,10"  # a copy: the caller's mapping is left alone
    with pytest.raises(ValueError, match=r"^--batch_size: expected"):
        check_all({"batch_size": 0}, label=lambda key: f"--{key}")
    with pytest.raises(ValueError, match=r"^lr: expected .* that float32 can hold"):  # cast in the given dtype
        check_all({"lr": 1e39, "dtype": "float32"}, {"lr": "learning_rate"})
    assert check_all({"lr": 1e39, "dtype": "float64"}, {"lr": "learning_rate"})["lr"] == 1e39
    assert check_all({"lr": 1e39}, {"lr": "learning_rate"})["lr"] == 1e39  # no dtype: no cast


def test_values_the_model_dtype_cannot_hold_are_refused():
    from fastmlp.hyperparams import check_in_dtype

    assert check_in_dtype("learning_rate", 1e38, "float32") == 1e38  # fits: 3.4e38 is float32's largest
    assert check_in_dtype("learning_rate", 1e39, "float64") == 1e39
    with pytest.raises(ValueError, match=r"^--learning_rate: expected a finite number > 0.0 that float32 can "
                                         r"hold .* got 1e\+39 \(inf as float32\)$"):
        check_in_dtype("learning_rate", 1e39, np.float32, label="--learning_rate")
    with pytest.raises(ValueError, match=r"got 1e-50 \(0.0 as float32\)"):  # > 0 no more
        check_in_dtype("learning_rate", 1e-50, "float32")
    with pytest.raises(ValueError, match=r"^weight_decay: .* got 1e\+40 \(inf as float32\)"):
        check_in_dtype("weight_decay", 1e40, "float32")


def test_learning_rate_overflowing_float32_is_refused_everywhere(tmp_path, monkeypatch, capsys):
    """--learning_rate 1e39 with float32 would be inf in the kernels: exit 2 before anything is trained."""
    monkeypatch.chdir(tmp_path)  # where the default output folder would go
    status = fm_train.main(["--learning_rate", "1e39", "--data_dir", str(tmp_path / "no-data")])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert err.strip().startswith("error: --learning_rate: expected a finite number > 0.0 that float32 can hold")
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())  # no empty run folder
    # float64 holds it: the flag passes (and the run then fails on the missing data, not on the flag)
    assert fm_train.main(["--learning_rate", "1e39", "--dtype", "float64", "--out_dir", str(tmp_path / "o"),
                          "--data_dir", str(tmp_path / "no-data")]) == 2
    assert "can hold" not in capsys.readouterr().err
    message = err.strip()[len("error: --learning_rate: "):]
    assert _grid_message("learning_rate", 1e39, ValueError) == message  # refused before any trial runs
