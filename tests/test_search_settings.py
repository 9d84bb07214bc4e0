"""``fastmlp.search.settings.SearchSettings``: the search's settings, typed, checked once, made once.

One bad value reads the same from the settings, the Python API (``run_search``) and
the command line; the defaults that depend on other settings are filled in on
construction; the settings are frozen (a worker's are a ``replace``d copy); only the
command line knows ``argparse``.
"""
from __future__ import annotations

import ast
import dataclasses
import os
import pickle
from pathlib import Path

import pytest

from fastmlp import search
from fastmlp.search.cli import build_parser, search_settings
from fastmlp.search.errors import SearchError
from fastmlp.search.settings import SearchSettings

SEARCH_SRC = Path(__file__).resolve().parents[1] / "src" / "fastmlp" / "search"
# Modules that may name argparse: the command line, and (until the trainers take typed
# configurations) the adapter's trainer side, which builds the trainer's Namespace.
MAY_USE_ARGPARSE = {"cli.py", "__main__.py"}


def _cli_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        search.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("name, value, text", [
    ("seed", -1, "-1"), ("n_workers", 0, "0"), ("eval_freq", 0, "0"), ("max_steps_cap", 0, "0"),
    ("sampler", "annealing", "annealing"), ("device", "tpu", "tpu"), ("grace_period", 0, "0"),
])
def test_a_bad_value_reads_the_same_from_the_settings_the_api_and_the_command_line(name, value, text, capsys):
    with pytest.raises(ValueError) as direct:
        SearchSettings(**{name: value})
    bare = str(direct.value).removeprefix(f"{name}: ")
    assert bare.startswith("expected ") and str(direct.value).startswith(f"{name}: ")
    with pytest.raises(SearchError) as api:
        search.run_search({name: value})
    assert str(api.value) == f"--{name}: {bare}"
    assert _cli_error([f"--{name}", text], capsys).endswith(f"argument --{name}: {bare}")


def test_a_value_of_the_wrong_type_is_a_type_error_naming_the_flag():
    with pytest.raises(TypeError, match=r"^--n_trials: expected an integer > 0, got 2.5$"):
        search.run_search({"n_trials": 2.5})
    with pytest.raises(TypeError, match=r"^trainer_flags: expected a string, got \['--augment'\]$"):
        SearchSettings(trainer_flags=["--augment"])


@pytest.mark.parametrize("values, message", [
    ({"sampler": "tpe", "grid": "{}"}, "--grid is only used by --sampler grid (got --sampler tpe)"),
    ({"space": '{"units": [8, 16]}'}, "--space is used by --sampler evolution, tpe and random"),
    ({"model": "numpy", "device": "cuda"}, "--device cuda needs --model torch"),
    ({"heartbeat_interval": 10, "grace_period": 10}, "--grace_period (10 s) must exceed --heartbeat_interval (10 s)"),
    ({"study_name": "  "}, "--study_name must not be empty"),
    ({"grid": '{"batch_size": [0]}'}, "--grid['batch_size']: expected an integer > 0, got 0"),
    ({"colour": "red"}, "unknown flag(s) ['colour']"),
    ({"grid_values": {}}, "unknown flag(s) ['grid_values']"),  # derived, never given
])
def test_bad_combinations_are_search_errors(values, message):
    with pytest.raises(SearchError) as exc:
        search_settings(values)
    assert message in str(exc.value)


def test_derived_defaults_are_filled_in_on_construction():
    grid = SearchSettings(model="numpy")
    assert (grid.study_name, grid.out_dir, grid.n_trials, grid.pruner) == (
        "numpy-grid", str(Path("runs") / "search" / "numpy-grid"), None, "none")
    assert grid.grace_period == 4 * grid.heartbeat_interval
    assert len(grid.grid_values["hidden_units"]) == 3 and grid.space_values is None
    assert grid.searched is grid.grid_values
    tpe = SearchSettings(sampler="tpe", study_name="t", out_dir=Path("x"), heartbeat_interval=0)
    assert (tpe.study_name, tpe.out_dir, tpe.n_trials, tpe.pruner, tpe.grace_period) == ("t", "x", 20, "median", None)
    assert tpe.grid_values is None and tpe.searched["optimizer"] == ["sgd", "momentum", "adam"]


def test_settings_are_frozen_and_replace_checks_again():
    settings = SearchSettings(sampler="random", space='{"units": [8, 16]}')
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.worker_index = 3
    worker = settings.replace(worker_index=3)
    assert (worker.worker_index, settings.worker_index) == (3, 0)
    assert worker.space_values == settings.space_values and worker.space_values["units"] == [8, 16]
    with pytest.raises(ValueError, match="^worker_index: expected an integer >= 0, got -1$"):
        settings.replace(worker_index=-1)
    assert pickle.loads(pickle.dumps(worker)) == worker  # what a spawned worker process receives


def test_the_command_line_is_generated_from_the_settings():
    parser = build_parser()
    given = {action.dest for action in parser._actions} - {"help"}
    assert given == set(SearchSettings.given_names())
    args = parser.parse_args(["--model", "numpy", "--n_trials", "3", "--quiet"])
    settings = search_settings(vars(args))
    assert settings == SearchSettings(model="numpy", n_trials=3, quiet=True) == search_settings(args)
    assert search_settings(settings) is settings
    with pytest.raises(SystemExit):  # a switch of this invocation only: no --no- form
        parser.parse_args(["--no-quiet"])


def test_the_adapter_takes_the_search_settings_for_a_trial_and_for_the_final_retrain(tmp_path):
    from fastmlp.run_config import MLPRunConfig
    from fastmlp.search.adapter import TrainerAdapter
    from fastmlp.search.cli import trainer_settings

    settings = SearchSettings(model="numpy", n_workers=2, seed=7, validation_size=300, eval_freq=50)
    adapter = TrainerAdapter("numpy", trainer_settings("numpy", "--augment"))
    config = {"hidden_units": [8, 4], "learning_rate": 0.01, "batch_size": 20, "max_steps": 30,
              "optimizer": "adam", "weight_decay": 0.0, "dropout": 0.0}
    trial = adapter.run_config(adapter.run_flags(config, settings, out_dir=tmp_path))
    assert isinstance(trial, MLPRunConfig) and trial.init == "kaiming"  # the search's default init
    assert (trial.hidden_units, trial.max_steps, trial.eval_freq, trial.seed) == ((8, 4), 30, 30, 7)
    assert trial.quiet is True and trial.threads == max(1, (os.cpu_count() or 1) // 2)
    assert trial.augment is True and trial.validation_size == 300 and trial.out_dir == str(tmp_path)
    final = adapter.run_flags(config, settings.replace(quiet=False, threads=3), out_dir=tmp_path, final=True)
    assert final["quiet"] is False and final["threads"] == 3


def test_no_search_module_but_the_command_line_uses_argparse():
    offenders = []
    for path in sorted(SEARCH_SRC.glob("*.py")):
        if path.name in MAY_USE_ARGPARSE:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            imported = (node.module if isinstance(node, ast.ImportFrom) else None,
                        *(alias.name for alias in getattr(node, "names", ())))
            if isinstance(node, (ast.Import, ast.ImportFrom)) and "argparse" in imported:
                offenders.append(f"{path.name}:{node.lineno} imports argparse")
            if isinstance(node, (ast.Name, ast.Attribute)) and "Namespace" in (getattr(node, "id", None),
                                                                               getattr(node, "attr", None)):
                offenders.append(f"{path.name}:{node.lineno} names Namespace")
    assert offenders == []
