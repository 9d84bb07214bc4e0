"""``python -m fastmlp.train`` end to end on the tiny synthetic CIFAR-10 (fixture ``synthetic_cifar_dir``).

Outputs exist and parse, accuracy beats chance, ``--resume`` reproduces an
uninterrupted run bit for bit, divergence exits 1 with a one-line message,
bad flags are argparse errors, ``--dry_run`` works, and the ``train()``
contract used by the hyper-parameter search holds.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from fastmlp import plot as fm_plot
from fastmlp import train as fm_train
from fastmlp.loop import DRY_RUN_STEPS
from fastmlp.run_config import MLPRunConfig

CHANCE = 0.1  # ten balanced classes


def run_main(argv, capsys=None):
    """main(argv) -> (exit status, stdout, stderr)."""
    status = fm_train.main([str(a) for a in argv])
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return status, out, err


def read_curves(out_dir):
    with open(out_dir / "curves.csv", newline="") as f:
        return list(csv.DictReader(f))


def checkpoint_arrays(out_dir):
    with np.load(out_dir / "checkpoint.npz", allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def assert_same_checkpoint(dir_a, dir_b):
    a, b = checkpoint_arrays(dir_a), checkpoint_arrays(dir_b)
    assert sorted(a) == sorted(b)
    different = [k for k in a if k != "meta" and not np.array_equal(a[k], b[k])]
    assert different == []
    meta_a, meta_b = json.loads(str(a["meta"])), json.loads(str(b["meta"]))
    assert meta_a["step"] == meta_b["step"]
    assert meta_a["data_state"] == meta_b["data_state"]
    assert meta_a["rows"] == meta_b["rows"]


# The numbers that must not depend on how the run was split.
RESULT_KEYS = ("test_accuracy", "test_loss", "best_test_accuracy", "steps",
               "validation_accuracy", "validation_loss", "best_validation_accuracy")


def assert_same_metrics(metrics_a, metrics_b):
    for key in RESULT_KEYS:
        assert (key in metrics_a) == (key in metrics_b), key
        if key in metrics_a:
            assert metrics_a[key] == metrics_b[key], key


# ------------------------------------------------------------------ end to end
def test_default_run_writes_all_outputs_and_learns(synthetic_cifar_dir, tmp_path, capsys):
    out = tmp_path / "run"
    status, stdout, _ = run_main(["--data_dir", synthetic_cifar_dir, "--max_steps", 300, "--out_dir", out], capsys)
    assert status == 0
    assert "test accuracy" in stdout

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 300
    assert metrics["flags"]["dnn_hidden_units"] == [100]
    assert metrics["flags"]["learning_rate"] == 2e-3 and metrics["flags"]["batch_size"] == 200
    assert isinstance(metrics["fastmlp_version"], str) and metrics["fastmlp_version"]
    assert metrics["wall_seconds"] > 0
    assert metrics["test_accuracy"] > CHANCE + 0.3, metrics["test_accuracy"]
    assert metrics["best_test_accuracy"] >= metrics["test_accuracy"]
    assert math.isfinite(metrics["test_loss"]) and metrics["test_loss"] < math.log(10)

    rows = read_curves(out)
    assert [int(r["step"]) for r in rows] == [0, 100, 200, 300]  # the untrained model, then every eval_freq
    assert rows[0]["train_loss"] == ""  # no batch before the first update
    assert float(rows[0]["test_loss"]) == pytest.approx(math.log(10), abs=0.01)  # tiny init: uniform output
    for row in rows[1:]:
        assert 0.0 <= float(row["train_accuracy"]) <= 1.0
        assert float(row["learning_rate"]) == 2e-3
    assert float(rows[-1]["test_accuracy"]) == metrics["test_accuracy"]

    arrays = checkpoint_arrays(out)
    assert {"model/layers.0.weight", "model/layers.0.bias", "model/layers.2.weight", "rng/keys", "meta",
            "data/permutation"} <= set(arrays)
    assert arrays["model/layers.0.weight"].shape == (100, 3072)
    assert arrays["model/layers.0.weight"].dtype == np.float32
    assert any(k.startswith("optim/") for k in arrays)
    meta = json.loads(str(arrays["meta"]))
    assert meta["step"] == 300 and meta["flags"]["max_steps"] == 300
    # Only finished files: atomic writes leave no temporaries behind; no picture unless --plot.
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "curves.csv", "metrics.json", "model.safetensors"]
    assert fm_plot.main([str(out)]) == 0  # the picture, drawn afterwards from curves.csv
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_logistic_regression_and_options(synthetic_cifar_dir, tmp_path, capsys):
    """Empty --dnn_hidden_units, Adam, kaiming, standardize, validation, cosine and float64 together."""
    out = tmp_path / "logreg"
    status, _, _ = run_main(
        ["--data_dir", synthetic_cifar_dir, "--dnn_hidden_units", "", "--optimizer", "adam", "--learning_rate", 1e-3,
         "--init", "kaiming", "--preprocessing", "standardize", "--validation_size", 200, "--lr_schedule", "cosine",
         "--warmup_steps", 10, "--dtype", "float64", "--max_steps", 150, "--eval_freq", 50, "--batch_size", 100,
         "--quiet", "--out_dir", out], capsys)
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["flags"]["dnn_hidden_units"] == []
    assert metrics["validation_accuracy"] > CHANCE + 0.3
    assert metrics["test_accuracy"] > CHANCE + 0.3
    rows = read_curves(out)
    assert all(r["validation_accuracy"] != "" for r in rows)
    lrs = [float(r["learning_rate"]) for r in rows[1:]]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 1e-3 * 0.01  # cosine decays to ~0
    weights = checkpoint_arrays(out)
    assert weights["model/layers.0.weight"].shape == (10, 3072)  # one linear layer
    assert weights["model/layers.0.weight"].dtype == np.float64


def test_module_entry_point_dry_run(synthetic_cifar_dir, tmp_path):
    """The real ``python -m fastmlp.train`` process: --dry_run does a few steps and writes the outputs."""
    out = tmp_path / "dry"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "fastmlp.train", "--dry_run", "--quiet", "--data_dir", str(synthetic_cifar_dir),
         "--out_dir", str(out), "--dnn_hidden_units", "64,32", "--threads", "1", "--plot"],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dry_run"] is True
    assert metrics["steps"] == DRY_RUN_STEPS < 1500
    assert (out / "checkpoint.npz").is_file() and (out / "curves.png").is_file()


def test_dry_run_rates_are_the_full_runs_first_ones(synthetic_cifar_dir, tmp_path):
    # The schedule keeps the full --max_steps as its horizon (every trainer's convention).
    from fastmlp.schedules import LearningRateSchedule

    out = tmp_path / "dry"
    assert fm_train.main(["--dry_run", "--quiet", "--data_dir", str(synthetic_cifar_dir), "--out_dir", str(out),
                          "--lr_schedule", "cosine", "--max_steps", "40", "--dnn_hidden_units", "8"]) == 0
    rates = [float(row["learning_rate"]) for row in read_curves(out)[1:]]
    full = LearningRateSchedule(2e-3, 40, "cosine")
    assert rates == pytest.approx([full(2), full(4)], rel=1e-12)
    assert rates[-1] > 1.5e-3  # a 4-step cosine would be near its end


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        fm_train.main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in [("--learning_rate", "0.002"), ("--max_steps", "1500"), ("--batch_size", "200"),
                          ("--eval_freq", "100"), ("--optimizer", "sgd"), ("--init", "normal")]:
        assert flag in text
        assert f"(default: {default})" in text


TRAINERS = ["fastmlp.train", "torch_models.train_mlp", "torch_models.train_convnet", "fastmlp.search.cli"]


@pytest.mark.parametrize("module", TRAINERS)
def test_help_says_each_default_once(module, monkeypatch):
    if module.startswith("torch_models"):
        pytest.importorskip("torch")
    monkeypatch.setenv("COLUMNS", "1000")  # each flag's help on one line
    text = importlib.import_module(module).build_parser().format_help()
    shown = [line for line in text.splitlines() if "default:" in line]
    assert len(shown) > 10
    assert [line for line in shown if line.count("default:") > 1] == []


@pytest.mark.parametrize("module", TRAINERS[:3])
def test_every_trainer_takes_no_x_for_its_switches(module):
    if module.startswith("torch_models"):
        pytest.importorskip("torch")
    parser = importlib.import_module(module).build_parser()
    assert vars(parser.parse_args(["--nesterov", "--augment"]))["nesterov"] is True
    args = parser.parse_args(["--nesterov", "--augment", "--no-nesterov", "--no-augment"])  # the last one wins
    assert args.nesterov is False and args.augment is False


# ------------------------------------------------------------------ resume
COMMON = ["--eval_freq", 40, "--batch_size", 50, "--quiet"]


def test_the_evaluation_lines_logged_by_the_loop_are_printed_on_stdout(synthetic_cifar_dir, tmp_path, capsys):
    status, out, err = run_main(["--data_dir", synthetic_cifar_dir, "--max_steps", 4, "--eval_freq", 2,
                                 "--dnn_hidden_units", 8, "--out_dir", tmp_path / "run"], capsys)
    assert status == 0
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert [int(line.split()[1]) for line in lines] == [0, 2, 4] and "test loss" in lines[0]
    assert "test loss" not in err  # the progress bar's stream


def test_no_augment_turns_off_the_checkpoints_augment_on_resume(synthetic_cifar_dir, tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["--data_dir", synthetic_cifar_dir, "--augment", "--dnn_hidden_units", 8, "--eval_freq", 5, "--quiet"]
    assert run_main([*flags, "--max_steps", 5, "--out_dir", run], capsys)[0] == 0
    with pytest.warns(UserWarning, match="--augment True -> False"):
        assert run_main(["--resume", run, "--max_steps", 10, "--no-augment", "--quiet"], capsys)[0] == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 10 and metrics["flags"]["augment"] is False


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])  # Adam: next test
def test_resume_matches_uninterrupted_run(synthetic_cifar_dir, tmp_path, capsys, optimizer):
    """2N steps in one go == N steps, then --resume to 2N (augmentation and validation exercise every RNG)."""
    flags = ["--data_dir", synthetic_cifar_dir, "--optimizer", optimizer, "--augment", "--validation_size", 100,
             "--learning_rate", 1e-3 if optimizer == "adam" else 5e-3, *COMMON]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert run_main([*flags, "--max_steps", 160, "--out_dir", whole], capsys)[0] == 0
    assert run_main([*flags, "--max_steps", 80, "--out_dir", split], capsys)[0] == 0
    # Only --resume and the new --max_steps: every other flag comes from the checkpoint.
    assert run_main(["--resume", split, "--max_steps", 160, "--quiet"], capsys)[0] == 0

    assert_same_checkpoint(whole, split)
    metrics_whole = json.loads((whole / "metrics.json").read_text())
    metrics_split = json.loads((split / "metrics.json").read_text())
    assert_same_metrics(metrics_whole, metrics_split)
    assert read_curves(whole) == read_curves(split)
    assert metrics_split["flags"]["augment"] is True and metrics_split["flags"]["optimizer"] == optimizer


def test_resume_reads_the_checkpoint_once_and_keeps_what_it_restores(synthetic_cifar_dir, tmp_path, capsys,
                                                                      monkeypatch):
    """One read merges the flags and continues the run; the optimizer keeps the checkpoint's settings that
    the command line does not change (here its momentum 0.5), and takes the ones it does (weight decay)."""
    from fastmlp import checkpoint, training

    run = tmp_path / "run"
    assert run_main(["--data_dir", synthetic_cifar_dir, "--optimizer", "momentum", "--momentum", 0.5,
                     "--max_steps", 10, "--eval_freq", 5, "--quiet", "--out_dir", run], capsys)[0] == 0
    reads = []
    monkeypatch.setattr(fm_train, "load_checkpoint",
                        lambda path: reads.append(path) or checkpoint.load_checkpoint(path))
    monkeypatch.setattr(training, "load_checkpoint", lambda path: pytest.fail("the checkpoint was read again"))
    with pytest.warns(UserWarning, match="--weight_decay 0.0 -> 0.01"):
        assert run_main(["--resume", run, "--max_steps", 20, "--weight_decay", 0.01, "--quiet"], capsys)[0] == 0
    assert reads == [str(run)]
    arrays = checkpoint_arrays(run)
    assert float(arrays["optim/momentum"]) == 0.5 and float(arrays["optim/weight_decay"]) == 0.01
    assert json.loads(str(arrays["meta"]))["step"] == 20


def test_a_checkpoint_of_the_previous_version_resumes_to_the_uninterrupted_result(synthetic_cifar_dir, tmp_path,
                                                                                 capsys):
    """Checkpoints record the settings by flag name, as they always did (the previous version's flags also
    held --overwrite, which is the command line's own now): such a checkpoint resumes bit for bit."""
    flags = ["--data_dir", synthetic_cifar_dir, "--optimizer", "momentum", "--nesterov", "--dnn_hidden_units",
             "16,8", "--learning_rate", 5e-3, *COMMON]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert run_main([*flags, "--max_steps", 80, "--out_dir", whole], capsys)[0] == 0
    assert run_main([*flags, "--max_steps", 40, "--out_dir", split], capsys)[0] == 0
    arrays = checkpoint_arrays(split)
    meta = json.loads(str(arrays["meta"]))
    assert "overwrite" not in meta["flags"] and meta["flags"]["dnn_hidden_units"] == [16, 8]
    meta["flags"]["overwrite"] = False  # as the previous version's vars(args) recorded them
    np.savez(split / "checkpoint.npz", **{**arrays, "meta": np.array(json.dumps(meta))})
    assert run_main(["--resume", split, "--max_steps", 80, "--quiet"], capsys)[0] == 0
    assert_same_checkpoint(whole, split)
    assert read_curves(whole) == read_curves(split)


def test_the_library_names_a_resumed_runs_settings_as_it_does(synthetic_cifar_dir, tmp_path, capsys):
    from fastmlp import training

    run = tmp_path / "run"
    assert run_main(["--data_dir", synthetic_cifar_dir, "--dnn_hidden_units", 8, "--max_steps", 5, "--eval_freq", 5,
                     "--quiet", "--out_dir", run], capsys)[0] == 0
    config = MLPRunConfig(data_dir=synthetic_cifar_dir, hidden_units=[8], max_steps=10, eval_freq=5, quiet=True,
                          resume=run)
    with pytest.raises(ValueError, match=r"it was trained with hidden_units \[8\], this run asks for \[4\]"):
        training.train(config.replace(hidden_units=[4]))
    with pytest.warns(UserWarning, match=r"\(seed 42 -> 1\)"):
        assert training.train(config.replace(seed=1))["steps"] == 10


def test_resume_after_interruption_with_schedule(synthetic_cifar_dir, tmp_path):
    """A run stopped mid-way (on_eval raises, as a kill would) and resumed from its checkpoint file."""

    class Interrupted(Exception):
        pass

    def interrupt(step, metrics):
        if step == 80:
            raise Interrupted

    parser = fm_train.build_parser()
    flags = ["--data_dir", str(synthetic_cifar_dir), "--optimizer", "adam", "--learning_rate", "1e-3",
             "--lr_schedule", "cosine", "--warmup_steps", "20", "--max_steps", "160", "--eval_freq", "40",
             "--batch_size", "50", "--quiet"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    metrics_whole = fm_train.train(parser.parse_args([*flags, "--out_dir", str(whole)]))
    with pytest.raises(Interrupted):
        fm_train.train(parser.parse_args([*flags, "--out_dir", str(split)]), on_eval=interrupt)
    assert not (split / "metrics.json").exists()
    assert json.loads(str(checkpoint_arrays(split)["meta"]))["step"] == 80

    metrics_split = fm_train.train(parser.parse_args([*flags, "--resume", str(split / "checkpoint.npz")]))
    assert metrics_split["out_dir"] == str(split)  # --resume writes into the checkpoint's folder
    assert_same_checkpoint(whole, split)
    assert_same_metrics(metrics_whole, metrics_split)
    assert read_curves(whole) == read_curves(split)


def test_resume_acts_on_a_changed_nesterov(synthetic_cifar_dir, tmp_path):
    """A checkpoint of plain momentum resumed with --nesterov trains with Nesterov from there on: resumed
    from step 0 (no momentum yet), it is exactly a Nesterov run from the start."""

    class Stop(Exception):
        pass

    def stop_at_0(step, metrics):
        raise Stop

    parser = fm_train.build_parser()
    flags = ["--data_dir", str(synthetic_cifar_dir), "--optimizer", "momentum", "--learning_rate", "5e-3",
             "--max_steps", "40", "--eval_freq", "20", "--batch_size", "50", "--quiet"]
    nesterov = fm_train.train(parser.parse_args([*flags, "--nesterov", "--out_dir", str(tmp_path / "nesterov")]))
    with pytest.raises(Stop):  # a plain-momentum run whose checkpoint is at step 0
        fm_train.train(parser.parse_args([*flags, "--out_dir", str(tmp_path / "plain")]), on_eval=stop_at_0)
    assert not json.loads(str(checkpoint_arrays(tmp_path / "plain")["meta"]))["flags"]["nesterov"]
    with pytest.warns(UserWarning, match="--nesterov False -> True"):
        resumed = fm_train.train(parser.parse_args([*flags, "--nesterov", "--resume", str(tmp_path / "plain")]))
    assert resumed["flags"]["nesterov"] is True
    assert_same_metrics(nesterov, resumed)
    arrays = checkpoint_arrays(tmp_path / "plain")
    assert arrays["optim/nesterov"].item() is True
    assert_same_checkpoint(tmp_path / "nesterov", tmp_path / "plain")


def test_resume_errors(synthetic_cifar_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        fm_train.main(["--resume", str(tmp_path / "nowhere")])
    assert exc.value.code == 2
    assert "cannot resume" in capsys.readouterr().err

    run = tmp_path / "run"
    assert run_main(["--data_dir", synthetic_cifar_dir, "--max_steps", 10, "--eval_freq", 5, "--quiet",
                     "--out_dir", run], capsys)[0] == 0
    status, _, err = run_main(["--resume", run, "--dnn_hidden_units", "50", "--quiet"], capsys)
    assert status == 2
    assert "cannot resume" in err and "--dnn_hidden_units" in err and "Traceback" not in err

    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(SystemExit):
        fm_train.main(["--resume", str(tmp_path / "junk.npz")])
    assert "not a readable .npz checkpoint" in capsys.readouterr().err


def test_checkpoints_of_the_integer_format_tag_still_resume(synthetic_cifar_dir, tmp_path, capsys):
    """Checkpoints written before the format tag became a string (``format: 1``) load; unknown ones are refused."""
    run = tmp_path / "run"
    assert run_main(["--data_dir", synthetic_cifar_dir, "--max_steps", 10, "--eval_freq", 5, "--quiet",
                     "--out_dir", run], capsys)[0] == 0
    arrays = checkpoint_arrays(run)
    meta = json.loads(str(arrays["meta"]))
    assert meta["format"] == "fastmlp.checkpoint/1"

    def rewrite(tag):
        np.savez(run / "checkpoint.npz", **{**arrays, "meta": np.array(json.dumps({**meta, "format": tag}))})

    rewrite(1)
    assert run_main(["--resume", run, "--max_steps", 15, "--quiet"], capsys)[0] == 0
    assert json.loads(str(checkpoint_arrays(run)["meta"]))["step"] == 15
    rewrite("fastmlp.checkpoint/9")
    with pytest.raises(SystemExit):
        fm_train.main(["--resume", str(run), "--max_steps", "20"])
    assert "checkpoint format 'fastmlp.checkpoint/9' is not one this version" in capsys.readouterr().err


# ------------------------------------------------------------------ divergence
def test_divergence_stops_with_message_and_keeps_checkpoint(synthetic_cifar_dir, tmp_path, capsys):
    out = tmp_path / "diverge"
    status, _, err = run_main(["--data_dir", synthetic_cifar_dir, "--learning_rate", 1e30, "--max_steps", 50,
                               "--eval_freq", 1, "--quiet", "--out_dir", out], capsys)
    assert status == 1
    assert "diverged at step" in err and "Traceback" not in err
    step = int(err.split("diverged at step")[1].split(":")[0])
    assert 1 <= step < 50
    # The last good checkpoint is the evaluation just before the diverging step.
    meta = json.loads(str(checkpoint_arrays(out)["meta"]))
    assert meta["step"] == step - 1
    assert all(np.isfinite(v).all() for k, v in checkpoint_arrays(out).items() if k.startswith("model/"))
    assert not (out / "metrics.json").exists()


def test_an_update_to_infinite_weights_is_never_checkpointed(synthetic_cifar_dir, tmp_path, capsys):
    """--learning_rate 1e38 (float32 holds it): the first update makes weights inf while its own batch loss,
    taken before the update, is finite. The evaluation after it must report divergence, not save them."""
    out = tmp_path / "inf"
    status, _, err = run_main(["--data_dir", synthetic_cifar_dir, "--learning_rate", "1e38", "--init", "kaiming",
                               "--max_steps", 5, "--eval_freq", 1, "--batch_size", 50, "--quiet",
                               "--out_dir", out], capsys)
    assert status == 1 and "Traceback" not in err
    assert err.startswith("error: training diverged at step 1: test_loss is nan")
    arrays = checkpoint_arrays(out)
    assert json.loads(str(arrays["meta"]))["step"] == 0  # the last good one
    assert all(np.isfinite(v).all() for k, v in arrays.items() if k.startswith("model/"))
    assert [int(r["step"]) for r in read_curves(out)] == [0]  # the diverged evaluation is not a curve point
    assert not (out / "metrics.json").exists()


def test_mlp_hooks_see_a_non_finite_parameter(synthetic_cifar_dir, tmp_path):
    """What loop.check_before_checkpoint asks the MLP's hooks before each checkpoint."""
    from fastmlp import loop, training
    from fastmlp.runlog import DivergenceError

    config = MLPRunConfig(hidden_units=[8], data_dir=synthetic_cifar_dir)
    data = training.load_data(config, 0)
    hooks = training.MLPHooks.build(config, data, loop.Plan(5, 1), model_seed=0,
                                    checkpoint_path=tmp_path / "checkpoint.npz")
    assert hooks.parameters_finite()
    _, module, key = list(hooks.model.named_parameters())[1]  # a bias: may not change the loss at all
    module.params[key][0] = np.inf
    assert not hooks.parameters_finite()
    with pytest.raises(DivergenceError, match="diverged at step 3: a parameter is NaN or infinite"):
        loop.check_before_checkpoint(hooks, 3, {"test_loss": 2.0})


# ------------------------------------------------------------------ bad flags
@pytest.mark.parametrize("argv,flag,words", [
    (["--dnn_hidden_units", "10,abc"], "--dnn_hidden_units", ["'abc' is not a positive integer"]),
    (["--dnn_hidden_units", "10,0"], "--dnn_hidden_units", ["'0' is not a positive integer"]),
    (["--batch_size", "-5"], "--batch_size", ["integer > 0", "got -5"]),
    (["--max_steps", "1.5"], "--max_steps", ["integer > 0", "got 1.5"]),
    (["--learning_rate", "nan"], "--learning_rate", ["finite number > 0"]),
    (["--learning_rate", "0"], "--learning_rate", ["finite number > 0"]),
    (["--momentum", "1.5"], "--momentum", ["< 1.0"]),
    (["--optimizer", "rmsprop"], "--optimizer", ["expected one of", "'rmsprop'"]),
    (["--dtype", "float16"], "--dtype", ["expected float32 or float64", "'float16'"]),
    (["--seed", "-1"], "--seed", [">= 0"]),
])
def test_bad_flags_are_usage_errors(argv, flag, words, capsys):
    with pytest.raises(SystemExit) as exc:
        fm_train.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err
    for word in words:
        assert word in err


@pytest.mark.parametrize("argv", [["--nesterov"], ["--nesterov", "--optimizer", "momentum", "--momentum", "0"]])
def test_nesterov_without_momentum_is_a_usage_error(argv, tmp_path, capsys):
    status, _, err = run_main([*argv, "--data_dir", tmp_path / "no-data", "--out_dir", tmp_path / "run"], capsys)
    assert status == 2
    assert err.startswith("error: --nesterov: needs --optimizer 'momentum' and --momentum > 0, got --optimizer")
    assert not (tmp_path / "run").exists()


def test_train_checks_a_hand_made_namespace():
    with pytest.raises(ValueError, match="--batch_size: expected an integer > 0, got -1"):
        fm_train.train(argparse.Namespace(batch_size=-1))
    with pytest.raises(TypeError, match="--dnn_hidden_units"):  # 2.5 is no width: a wrong type
        fm_train.train(argparse.Namespace(dnn_hidden_units=[100, 2.5]))
    with pytest.raises(TypeError, match="--nesterov: expected a bool"):
        fm_train.train(argparse.Namespace(nesterov="yes"))
    with pytest.raises(ValueError, match=r"unknown flag\(s\) \['learning_rat'\]"):
        fm_train.train(argparse.Namespace(learning_rat=0.1))


# ------------------------------------------------------------------ train() contract
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_on_uint8_batches_equals_training_on_converted_ones(synthetic_cifar_dir, tmp_path, optimizer, openblas_images):
    # The trainer hands uint8 rows to the model (the first layer converts them); the same run
    # on the same images converted beforehand gives the same curves and weights, bit for bit.
    from fastmlp.checkpoint import load_checkpoint
    from fastmlp.data import DataSet, get_cifar10

    data = get_cifar10(synthetic_cifar_dir, one_hot=False, flatten=True, seed=0)
    train_u8, test = data["train"], data["test"]
    train_floats = DataSet(train_u8.images, train_u8.labels, flatten=True)
    train_floats.set_state(train_u8.get_state())
    assert train_u8.serves_image_batches and not train_floats.serves_image_batches
    served = []
    image_batch = train_u8.next_image_batch
    train_u8.next_image_batch = lambda size: served.append(size) or image_batch(size)
    args = dict(max_steps=12, eval_freq=5, batch_size=64, dnn_hidden_units=[20], quiet=True,
                optimizer=optimizer, learning_rate=1e-3)
    runs = {}
    for name, train_set in (("u8", train_u8), ("floats", train_floats)):
        metrics = fm_train.train(argparse.Namespace(**{**args, "out_dir": str(tmp_path / name)}),
                                 data={"train": train_set, "test": test})
        runs[name] = (metrics, read_curves(tmp_path / name), load_checkpoint(tmp_path / name / "checkpoint.npz"))
    assert served == [64] * 12  # the uint8 run did take the model's own conversion
    (m_u8, curves_u8, ckpt_u8), (m_floats, curves_floats, ckpt_floats) = runs["u8"], runs["floats"]
    assert m_u8["test_loss"] == m_floats["test_loss"] and m_u8["test_accuracy"] == m_floats["test_accuracy"]
    assert [row["train_loss"] for row in curves_u8] == [row["train_loss"] for row in curves_floats]
    for name, value in ckpt_floats["model"].items():
        np.testing.assert_array_equal(ckpt_u8["model"][name], value)


def test_train_contract_preloaded_data_and_on_eval(synthetic_cifar_dir, tmp_path):
    from fastmlp.data import get_cifar10

    data = get_cifar10(synthetic_cifar_dir, one_hot=False, flatten=True, validation_size=100, seed=0)
    state_before = data["train"].get_state()
    seen = []
    args = argparse.Namespace(max_steps=60, eval_freq=30, batch_size=50, quiet=True, out_dir=str(tmp_path / "a"),
                              learning_rate=1e-2, init="kaiming", optimizer="momentum")
    metrics = fm_train.train(args, data=data, on_eval=lambda step, m: seen.append((step, m)))

    assert [step for step, _ in seen] == [0, 30, 60]
    last = seen[-1][1]
    assert {"step", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "validation_loss",
            "validation_accuracy", "learning_rate"} <= set(last)
    assert metrics["test_accuracy"] == last["test_accuracy"]
    assert metrics["validation_accuracy"] == last["validation_accuracy"]
    assert metrics == json.loads((tmp_path / "a" / "metrics.json").read_text())
    # The caller's DataSet is handed back as it came: a second trial sees the same batches.
    state_after = data["train"].get_state()
    assert np.array_equal(state_before["permutation"], state_after["permutation"])
    assert state_before["rng_state"] == state_after["rng_state"]
    again = fm_train.train(argparse.Namespace(**{**vars(args), "out_dir": str(tmp_path / "b")}), data=data)
    assert again["test_accuracy"] == metrics["test_accuracy"]

    # The splits evaluated are the ones handed over: validation only (as a search's trials do).
    seen.clear()
    trial = fm_train.train(argparse.Namespace(**{**vars(args), "out_dir": str(tmp_path / "c")}),
                           data={"train": data["train"], "validation": data["validation"]},
                           on_eval=lambda step, m: seen.append(m))
    assert trial["validation_accuracy"] == metrics["validation_accuracy"]
    assert not any(key.startswith(("test_", "best_test")) for key in trial)
    assert all("test_accuracy" not in m for m in seen)
    assert {row["test_accuracy"] for row in read_curves(tmp_path / "c")} == {""}
    with pytest.raises(ValueError, match="no split to evaluate"):
        fm_train.train(argparse.Namespace(**{**vars(args), "out_dir": str(tmp_path / "d")}),
                       data={"train": data["train"]})

    # Pre-loaded data of the wrong dtype is refused with a clear message.
    with pytest.raises(ValueError, match="float32.*float64"):
        fm_train.train(argparse.Namespace(**{**vars(args), "dtype": "float64"}), data=data)


def test_package_main_points_to_the_commands(capsys):
    from fastmlp.__main__ import main as package_main

    assert package_main([]) == 0
    out = capsys.readouterr().out
    assert "python -m fastmlp.train" in out and "--help" in out
    assert package_main(["train"]) == 2
    assert "takes no arguments" in capsys.readouterr().err


def test_resume_with_changed_hyperparameters_uses_the_new_flags(synthetic_cifar_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_main(["--data_dir", synthetic_cifar_dir, "--optimizer", "momentum", "--max_steps", 10,
                     "--eval_freq", 5, "--quiet", "--out_dir", run], capsys)[0] == 0
    with pytest.warns(UserWarning, match=r"--weight_decay 0.0 -> 0.01.*differ from an uninterrupted run"):
        status, _, _ = run_main(["--resume", run, "--max_steps", 20, "--weight_decay", 0.01, "--momentum", 0.5,
                                 "--quiet"], capsys)
    assert status == 0
    arrays = checkpoint_arrays(run)
    # Saved optimizer hyper-parameters are this run's, not the checkpoint's.
    assert float(arrays["optim/weight_decay"]) == 0.01 and float(arrays["optim/momentum"]) == 0.5
    assert json.loads(str(arrays["meta"]))["flags"]["weight_decay"] == 0.01


def test_ctrl_c_says_how_to_resume(monkeypatch, tmp_path, capsys):
    def interrupted(args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fm_train, "train", interrupted)
    status, _, err = run_main(["--out_dir", tmp_path / "x"], capsys)
    assert status == 130
    assert f"--resume {tmp_path / 'x'}" in err


# ------------------------------------------------------------------ the real data
@pytest.mark.cifar
def test_a_short_course_run_on_real_cifar10_beats_chance(real_cifar_dir, tmp_path, capsys):
    """300 steps of the course's MLP on the real CIFAR-10 (a few seconds): well above chance (0.1).

    Measured: 0.4247. Not a benchmark: it proves the real-data path end to end (archive, decoding,
    preprocessing, training, evaluation on the 10000 test images).
    """
    out = tmp_path / "real"
    status, _, err = run_main(["--data_dir", real_cifar_dir, "--max_steps", 300, "--eval_freq", 300, "--quiet",
                               "--out_dir", out], capsys)
    assert status == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 300
    assert metrics["test_accuracy"] >= 0.30, metrics["test_accuracy"]
