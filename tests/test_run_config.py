"""fastmlp's typed run configuration, :class:`fastmlp.run_config.MLPRunConfig`.

Checked once, when it is made, with the constraint table's messages named as the
library names the settings; frozen and hashable; and a bad value reads the same
(after its label) from the configuration, ``python -m fastmlp.train``, the search's
command line and the estimator.
"""
from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from fastmlp import cli
from fastmlp import train as fm_train
from fastmlp.run_config import MLPRunConfig


# --------------------------------------------------------------------------- the checks
@pytest.mark.parametrize("values, error, message", [
    ({"batch_size": -1}, ValueError, "batch_size: expected an integer > 0, got -1"),
    ({"batch_size": 2.5}, TypeError, "batch_size: expected an integer > 0, got 2.5"),
    ({"max_steps": "10"}, TypeError, "max_steps: expected an integer > 0, got '10'"),
    ({"learning_rate": float("nan")}, ValueError, "learning_rate: expected a finite number > 0.0, got nan"),
    ({"momentum": 1.0}, ValueError, "momentum: expected a finite number >= 0.0 and < 1.0, got 1.0"),
    ({"hidden_units": "10,abc"}, ValueError, "hidden_units: expected positive integers"),
    ({"hidden_units": [8, 2.5]}, TypeError, "hidden_units: expected positive integers"),
    ({"optimizer": "rmsprop"}, ValueError, "optimizer: expected one of ('sgd', 'momentum', 'adam'), got 'rmsprop'"),
    ({"nesterov": "yes"}, TypeError, "nesterov: expected a bool, got 'yes'"),
    ({"quiet": "no"}, TypeError, "quiet: expected a bool, got 'no'"),
    ({"dtype": "float16"}, TypeError, "dtype: expected float32 or float64, got 'float16'"),
    ({"threads": 0}, ValueError, "threads: expected an integer > 0, got 0"),
    ({"data_dir": 3}, TypeError, "data_dir: expected a path (str or os.PathLike) or None, got 3"),
    ({"learning_rate": 1e39}, ValueError, "learning_rate: expected a finite number > 0.0 that float32 can hold"),
])
def test_a_bad_value_is_refused_naming_the_setting_as_the_library_does(values, error, message):
    with pytest.raises(error) as exc:
        MLPRunConfig(**values)
    assert str(exc.value).startswith(message), str(exc.value)


def test_the_joint_checks():
    with pytest.raises(ValueError, match=r"^nesterov: needs optimizer 'momentum' and momentum > 0, got optimizer 'sg"):
        MLPRunConfig(nesterov=True)
    with pytest.raises(ValueError, match=r"^nesterov: needs optimizer 'momentum' and momentum > 0"):
        MLPRunConfig(optimizer="momentum", momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match=r"^batch_size 1000000000000: batches of that many rows"):
        MLPRunConfig(batch_size=10**12)
    with pytest.raises(ValueError, match=r"^hidden_units '100000000,100000000'"):
        MLPRunConfig(hidden_units=[10**8, 10**8])
    # float64 holds what float32 cannot
    assert MLPRunConfig(learning_rate=1e39, dtype="float64").learning_rate == 1e39
    assert MLPRunConfig(optimizer="momentum", nesterov=True).nesterov is True


def test_values_take_their_canonical_form_and_the_flags_their_names(tmp_path):
    config = MLPRunConfig(hidden_units="512, 256", dtype=np.float64, data_dir=tmp_path, threads=np.int64(2))
    assert config.hidden_units == (512, 256) and config.dtype == "float64"
    assert config.data_dir == str(tmp_path) and type(config.threads) is int
    assert MLPRunConfig(hidden_units="").hidden_units == ()
    flags = config.as_flags()
    assert flags["dnn_hidden_units"] == [512, 256] and "hidden_units" not in flags
    assert MLPRunConfig.create(flags, by_flag=True) == config  # what a checkpoint records reads back
    assert config.as_dict()["hidden_units"] == [512, 256]


def test_the_defaults_are_the_courses():
    config = MLPRunConfig()
    assert (config.hidden_units, config.learning_rate, config.max_steps, config.batch_size, config.eval_freq,
            config.optimizer, config.init) == ((100,), 2e-3, 1500, 200, 100, "sgd", "normal")
    assert MLPRunConfig.flag("hidden_units") == "dnn_hidden_units" and MLPRunConfig.flag("seed") == "seed"


def test_a_configuration_is_frozen_and_hashable():
    config = MLPRunConfig(batch_size=64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batch_size = 32
    assert hash(config) == hash(MLPRunConfig(batch_size=64)) and config == MLPRunConfig(batch_size=64)
    assert len({config, MLPRunConfig(batch_size=64), MLPRunConfig()}) == 2
    changed = config.replace(batch_size=32)
    assert changed.batch_size == 32 and config.batch_size == 64
    with pytest.raises(ValueError, match="^batch_size: expected an integer > 0, got 0$"):  # checked again
        config.replace(batch_size=0)


def test_unknown_names_are_refused_listing_the_known_ones():
    with pytest.raises(TypeError):
        MLPRunConfig(dnn_hidden_units="10")  # the flag's name is the command line's only
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['learning_rat'\]; expected some of"):
        MLPRunConfig.create({"learning_rat": 0.1})


def test_by_flag_the_messages_name_the_flag():
    with pytest.raises(ValueError, match=r"^--dnn_hidden_units: expected positive integers"):
        MLPRunConfig.create({"dnn_hidden_units": "0"}, by_flag=True)
    with pytest.raises(ValueError, match=r"^--nesterov: needs --optimizer 'momentum' and --momentum > 0"):
        cli.config_from_args(MLPRunConfig, fm_train.build_parser().parse_args(["--nesterov"]))


def test_the_command_line_is_generated_from_the_configuration():
    parser = fm_train.build_parser()
    args = parser.parse_args([])
    config = cli.config_from_args(MLPRunConfig, args)
    assert config == MLPRunConfig()  # the same defaults
    assert set(vars(args)) == {*MLPRunConfig.names(), "overwrite"}  # stored by the settings' names
    given = parser.parse_args(["--dnn_hidden_units", "64,32", "--no-quiet", "--dry_run", "--threads", "2"])
    assert cli.config_from_args(MLPRunConfig, given) == MLPRunConfig(hidden_units=(64, 32), dry_run=True, threads=2)
    given.dnn_hidden_units = "8"  # set by flag name afterwards (as the search's adapter does): the flag wins
    assert cli.config_from_args(MLPRunConfig, given).hidden_units == (8,)
    assert MLPRunConfig.settings_of({"dnn_hidden_units": [4], "seed": 1, "overwrite": True}) == {
        "hidden_units": [4], "seed": 1}


def test_the_library_speaks_no_argparse():
    for module in ("config", "run_config", "training", "hyperparams", "loop", "checkpoint", "runlog"):
        tree = ast.parse((Path(fm_train.__file__).parent / f"{module}.py").read_text(encoding="utf-8"))
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        assert "argparse" not in imported and "Namespace" not in names, module


# --------------------------------------------------------------------------- one message everywhere
def _body(message: str, label: str) -> str:
    assert message.startswith(f"{label}: "), message
    return message[len(label) + 2:]


def _argparse_body(main, argv, flag, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1, errors  # one error line (after argparse's usage)
    found = re.search(rf"error: argument --{flag}: (.*)$", errors[0])
    assert found, errors
    return found.group(1)


@pytest.mark.parametrize("name, value, text", [("threads", 0, "0"), ("seed", -1, "-1")])
def test_one_bad_value_reads_the_same_from_the_configuration_and_the_command_lines(name, value, text, capsys):
    with pytest.raises(ValueError) as exc:
        MLPRunConfig(**{name: value})
    expected = _body(str(exc.value), name)
    assert _argparse_body(fm_train.main, [f"--{name}", text], name, capsys) == expected
    with pytest.raises(ValueError) as exc:  # the Python API over flags
        fm_train.train({name: value})
    assert _body(str(exc.value), f"--{name}") == expected
    pytest.importorskip("optuna")  # the search package's extra
    from fastmlp import search

    assert _argparse_body(search.main, [f"--{name}", text], name, capsys) == expected


def test_the_estimator_says_the_same_of_a_bad_thread_count():
    import fastmlp

    with pytest.raises(ValueError) as exc:
        MLPRunConfig(threads=0)
    expected = _body(str(exc.value), "threads")
    x, y = np.random.default_rng(0).random((20, 4)), np.arange(20) % 2
    with pytest.raises(ValueError) as exc:
        fastmlp.MLPClassifier(n_threads=0).fit(x, y)
    assert _body(str(exc.value), "n_threads") == expected
