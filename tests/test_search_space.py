"""``fastmlp.search.space``: the grid, the evolutionary space, configurations from trials.

Grid values and space ranges are checked against the trainers' constraint table
(:mod:`fastmlp.hyperparams`), so their messages are the trainers'.
"""
from __future__ import annotations

import json

import pytest

optuna = pytest.importorskip("optuna")

from fastmlp.search.space import (  # noqa: E402
    DEFAULT_GRID,
    EVOLUTION_SPACE,
    MAX_GRID_POINTS,
    MAX_SPEC_BYTES,
    grid_size,
    parse_grid,
    parse_space,
    suggest_config,
)


def test_default_grid_is_the_reports_table_1():
    grid = parse_grid(None, model="torch")
    assert grid_size(grid) == 18
    assert grid["hidden_units"] == ["256,256,256", "512,256,128,64", "1024,512,256,128"]
    assert grid["batch_size"] == [200, 600, 1000] and grid["max_steps"] == [2000, 5000]
    assert grid["learning_rate"] == [2e-5] and grid["optimizer"] == ["adam"]


def test_user_grid_replaces_the_axes_it_names(tmp_path):
    grid = parse_grid('{"batch_size": [200, 600], "max_steps": [2000], "hidden_units": [[64, 32], "16"]}',
                      model="numpy")
    assert grid["batch_size"] == [200, 600] and grid["max_steps"] == [2000]
    assert grid["hidden_units"] == ["64,32", "16"]
    assert grid["learning_rate"] == DEFAULT_GRID["learning_rate"]  # kept from the reports' grid
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"batch_size": [7]}))
    assert parse_grid(str(path), model="numpy")["batch_size"] == [7]


@pytest.mark.parametrize("spec, message", [
    ("{}", "empty"),
    ("{bad", "malformed JSON"),
    ('{"batch_size": []}', "empty list"),
    ('{"batch_size": [0]}', r"--grid\['batch_size'\]: expected an integer > 0, got 0"),
    ('{"hidden_units": [[0]]}', "0 is not a positive integer"),
    ('{"optimizer": ["lbfgs"]}', "expected one of"),
    ('{"colour": [1]}', "unknown parameter"),
    ('{"dropout": [0.5]}', "only available with --model torch"),
    ("[1, 2]", "must be a JSON object"),
    ("no_such_grid.json", "nor a readable JSON file"),
])
def test_bad_grids_are_rejected_with_the_reason(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_grid(spec, model="numpy")


def test_grid_and_space_files_are_read_only_when_regular_and_small(tmp_path):
    """A device, a FIFO (which would block the read for ever), a folder, a file over the cap: refused unread."""
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.json"
    big.write_text('{"batch_size": [' + "20, " * (MAX_SPEC_BYTES // 4) + "20]}")
    for path, message in ((fifo, "is a FIFO, not a regular file"),
                          ("/dev/zero", "is a character device, not a regular file"),
                          (big, f"holds \\d+ bytes, more than the limit of {MAX_SPEC_BYTES}"), (tmp_path, "Is a directory")):
        with pytest.raises(ValueError, match=message):
            parse_grid(str(path), model="numpy")
        with pytest.raises(ValueError, match=message):
            parse_space(str(path), model="numpy")
    deep = tmp_path / "deep.json"
    deep.write_text('{"batch_size": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match="nested too deep"):
        parse_grid(str(deep), model="numpy")


def test_a_grid_of_more_points_than_the_cap_is_refused():
    axis = list(range(1, 1001))
    with pytest.raises(ValueError, match=f"--grid has {3 * 1000 * 1000} points .* at most {MAX_GRID_POINTS}"):
        parse_grid({"batch_size": axis, "max_steps": axis}, model="numpy")
    # One long axis is fine (and deduplicated in linear time).
    assert len(parse_grid({"batch_size": [*axis, *axis] * 15}, model="numpy")["batch_size"]) == 1000


def test_evolution_space_round_trips_through_fixed_trial():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=3))
    trial = study.ask()
    config = suggest_config(trial, model="torch")
    assert 1 <= len(config["hidden_units"]) <= EVOLUTION_SPACE["n_layers"][1]
    assert 0.0 <= config["dropout"] <= 0.5
    again = suggest_config(optuna.trial.FixedTrial(trial.params), model="torch", max_steps_cap=7)
    assert again == {**config, "max_steps": min(config["max_steps"], 7)}
    assert suggest_config(optuna.trial.FixedTrial(trial.params), model="numpy")["dropout"] == 0.0


def test_space_replaces_the_ranges_it_names(tmp_path):
    assert parse_space(None, model="torch") == {k: list(v) for k, v in EVOLUTION_SPACE.items()}
    space = parse_space('{"units": [128, 1024], "max_steps": [2000, 5000], "optimizer": ["adam", "adam"]}',
                        model="numpy")
    assert space["units"] == [128, 1024]
    assert space["max_steps"] == [2000, 5000, EVOLUTION_SPACE["max_steps"][2]]  # default step kept
    assert space["optimizer"] == ["adam"]
    assert space["batch_size"] == list(EVOLUTION_SPACE["batch_size"])
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"learning_rate": [1e-3, 1e-1], "dropout": [0.1, 0.2]}))
    space = parse_space(str(path), model="torch")
    assert space["learning_rate"] == [1e-3, 1e-1] and space["dropout"] == [0.1, 0.2]


@pytest.mark.parametrize("spec, message", [
    ("{}", "empty"),
    ("{bad", "malformed JSON"),
    ('{"colour": [1, 2]}', "unknown parameter"),
    ('{"units": [128]}', r"\[low, high\]"),
    ('{"units": [1024, 128]}', "low <= high"),
    ('{"units": [0, 128]}', "expected an integer > 0, got 0"),
    ('{"n_layers": [1, 9]}', "<= 4"),
    ('{"learning_rate": [0, 0.1]}', "expected a finite number > 0.0, got 0"),
    ('{"weight_decay": [0, 0.1]}', "log scale"),
    ('{"max_steps": [100, 250, 100]}', "divide high - low"),
    ('{"optimizer": []}', "non-empty list"),
    ('{"optimizer": ["lbfgs"]}', "expected one of"),
    ('{"dropout": [0.1, 0.2]}', "only available with --model torch"),
    ("[1, 2]", "must be a JSON object"),
    ("no_such_space.json", "nor a readable JSON file"),
])
def test_bad_spaces_are_rejected_with_the_reason(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_space(spec, model="numpy")


def test_a_value_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match=r"--space\['batch_size'\]: expected an integer > 0, got 32.5"):
        parse_space('{"batch_size": [32.5, 64]}', model="numpy")
    with pytest.raises(TypeError, match=r"--grid\['max_steps'\]: expected an integer > 0, got '10'"):
        parse_grid('{"max_steps": ["10"]}', model="numpy")


def test_torch_dropout_range_must_stay_below_one():
    with pytest.raises(ValueError, match="< 1.0"):
        parse_space('{"dropout": [0.0, 1.0]}', model="torch")


def test_suggest_config_draws_inside_a_narrowed_space():
    space = parse_space({"n_layers": [2, 2], "units": [30, 40], "batch_size": [50, 60],
                         "max_steps": [100, 300, 100], "optimizer": ["momentum"],
                         "learning_rate": [1e-3, 2e-3], "weight_decay": [1e-5, 1e-4]}, model="numpy")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        config = suggest_config(trial, model="numpy", space=space)
        assert len(config["hidden_units"]) == 2 and all(30 <= u <= 40 for u in config["hidden_units"])
        assert 50 <= config["batch_size"] <= 60 and config["max_steps"] in (100, 200, 300)
        assert config["optimizer"] == "momentum"
        assert 1e-3 <= config["learning_rate"] <= 2e-3 and 1e-5 <= config["weight_decay"] <= 1e-4
        assert suggest_config(optuna.trial.FixedTrial(trial.params), model="numpy", space=space) == config
        study.tell(trial, 0.0)
