"""Tests of ``fastmlp.search`` (Optuna search over the MLP trainers) on tiny synthetic CIFAR-10.

Budgets are a few steps of networks a few units wide: the tests check the search
machinery (grid coverage, shared storage, dead workers, resuming, outputs, errors),
not accuracies.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fastmlp

optuna = pytest.importorskip("optuna")

from fastmlp import search  # noqa: E402
from fastmlp.search import storage as search_storage  # noqa: E402
from fastmlp.search.settings import SearchSettings  # noqa: E402
from fastmlp.search.study import make_pruner  # noqa: E402
from fastmlp.search.workers import EVAL_SLEEP_ENV  # noqa: E402

from _postgres import postgres_server, postgres_url  # noqa: E402,F401  (fixtures)

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_GRID = {"hidden_units": [[8], [16]], "batch_size": [20, 40], "max_steps": [10], "learning_rate": [1e-3]}


def _flags(data_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    return ["--model", "numpy", "--data_dir", str(data_dir), "--out_dir", str(out_dir),
            "--validation_size", "200", "--eval_freq", "5", "--heartbeat_interval", "1",
            "--quiet", *extra]


def _load(out_dir: Path, name: str, storage: str | None = None):
    return optuna.load_study(study_name=name, storage=search.open_storage(storage, out_dir, heartbeat_interval=0))


def _storage_flags(request, kind: str, out: Path) -> list[str]:
    """``--storage`` for a test's storage kind: the default journal, an SQLite file, a fresh PostgreSQL database."""
    if kind == "sqlite":
        return ["--storage", f"sqlite:///{out / 'study.db'}"]
    if kind == "postgres":
        return ["--storage", request.getfixturevalue("postgres_url")]
    return []


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


# --------------------------------------------------------------------------- study
def test_median_pruner_gives_no_verdict_at_the_first_evaluation():
    args = SearchSettings(model="numpy", sampler="tpe", eval_freq=250)
    study = optuna.create_study(direction="maximize", pruner=make_pruner(args))
    for _ in range(5):  # five finished trials that were good at every evaluation
        trial = study.ask()
        for step in (250, 500):
            trial.report(0.9, step)
        study.tell(trial, 0.9)
    trial = study.ask()
    trial.report(0.1, 250)
    assert not trial.should_prune()  # first evaluation: no verdict
    trial.report(0.1, 500)
    assert trial.should_prune()  # second evaluation, far below the median


# --------------------------------------------------------------------------- a whole search
def test_grid_runs_each_point_once_selects_on_validation_and_writes_outputs(
        synthetic_cifar_dir, tmp_path, monkeypatch):
    import fastmlp.training

    calls = []
    real_train = fastmlp.training.train

    def spy(config, *, data=None, on_eval=None):
        calls.append(data)
        return real_train(config, data=data, on_eval=on_eval)

    monkeypatch.setattr(fastmlp.training, "train", spy)
    out = tmp_path / "grid"
    argv = _flags(synthetic_cifar_dir, out, "--grid", json.dumps(TINY_GRID), "--study_name", "g")
    assert search.main(argv) == 0

    study = _load(out, "g")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    points = {(t.params["hidden_units"], t.params["batch_size"]) for t in trials}
    assert points == {(h, b) for h in ("8", "16") for b in (20, 40)}
    # Trials are scored on validation: the trainer got the training and validation splits
    # only, never the test set, and nothing about a test set is stored in the study.
    assert len(calls) == 5  # four trials and the retrain
    trial_data, final_data = calls[:4], calls[4:]
    assert all(set(d) == {"train", "validation"} for d in trial_data)
    assert all(d["validation"].num_examples == 200 and d["train"].num_examples == 800 for d in trial_data)
    assert final_data == [None]  # the retrain loads the data itself, test set included
    for t in trials:
        assert not any("test" in key for key in t.user_attrs)
        assert t.intermediate_values  # the validation curve, what the pruners read
        assert t.value == pytest.approx(t.intermediate_values[max(t.intermediate_values)])
        trial_metrics = json.loads((Path(t.user_attrs["trial_dir"]) / "metrics.json").read_text())
        assert "validation_accuracy" in trial_metrics and not any("test" in k for k in trial_metrics)

    # Outputs: trials.csv, results.md, final.json, plots.
    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == [0, 1, 2, 3]
    assert {r["state"] for r in rows} == {"COMPLETE"}
    assert [float(r["value"]) for r in rows] == [t.value for t in trials]
    final = json.loads((out / "final.json").read_text())
    assert final["trial_number"] == study.best_trial.number
    assert 0.0 <= final["test_accuracy"] <= 1.0
    assert final["validation_accuracy"] == pytest.approx(study.best_value)  # the retrain reproduces the trial
    assert fastmlp.load(final["model_file"]).classes_[0] == "airplane"  # the retrained model, with CIFAR's names
    assert not list((out / "trials").rglob("model.safetensors"))  # the trials' own are not kept
    results = (out / "results.md").read_text()
    assert "Test accuracy" in results and f"{final['test_accuracy']:.4f}" in results
    assert results.count("| complete |") == 4
    for png in ("optimization_history.png", "param_importances.png", "intermediate_values.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trial_dirs = [Path(t.user_attrs["trial_dir"]).resolve() for t in trials]  # trials/<study>/trial_NNNN
    assert all(d.is_dir() and d.parent.parent == (out / "trials").resolve() for d in trial_dirs)
    assert not any((d / "checkpoint.npz").exists() for d in trial_dirs)  # per-trial checkpoints are removed

    # A grid that is done runs nothing more.
    assert search.main(argv) == 0
    assert len(_load(out, "g").get_trials()) == 4


def test_resume_counts_n_trials_over_all_runs(synthetic_cifar_dir, tmp_path):
    out = tmp_path / "resume"
    base = _flags(synthetic_cifar_dir, out, "--sampler", "random", "--max_steps_cap", "5", "--skip_final",
                  "--pruner", "none", "--study_name", "r")
    assert search.main(base + ["--n_trials", "2"]) == 0
    assert len(_load(out, "r").get_trials()) == 2
    assert search.main(base + ["--n_trials", "4"]) == 0
    trials = _load(out, "r").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    # The resumed run does not replay the first run's random draws.
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 4
    assert search.main(base + ["--n_trials", "4"]) == 0
    assert len(_load(out, "r").get_trials()) == 4


def test_resume_with_other_settings_is_refused(synthetic_cifar_dir, tmp_path, capsys):
    out = tmp_path / "mismatch"
    base = _flags(synthetic_cifar_dir, out, "--grid", json.dumps({**TINY_GRID, "hidden_units": [[8]],
                                                                  "batch_size": [20]}),
                  "--study_name", "m", "--skip_final")
    assert search.main(base) == 0
    assert search.main(base + ["--seed", "7"]) == 2
    assert "created with other settings" in capsys.readouterr().err


def test_space_is_part_of_the_study_settings(synthetic_cifar_dir, tmp_path, capsys):
    out = tmp_path / "space"
    space = {"n_layers": [1, 1], "units": [8, 16], "batch_size": [20, 40], "max_steps": [6, 10, 2]}
    base = _flags(synthetic_cifar_dir, out, "--sampler", "random", "--n_trials", "2", "--study_name", "s",
                  "--skip_final")
    assert search.main(base + ["--space", json.dumps(space)]) == 0
    trials = _load(out, "s").trials
    assert len(trials) == 2
    for trial in trials:
        assert 8 <= trial.params["units_l0"] <= 16 and 20 <= trial.params["batch_size"] <= 40
    assert search.main(base + ["--space", json.dumps({**space, "units": [8, 32]})]) == 2
    assert "created with other settings" in capsys.readouterr().err


def test_a_study_stored_before_a_setting_existed_still_resumes(synthetic_cifar_dir, tmp_path):
    out = tmp_path / "old"
    argv = _flags(synthetic_cifar_dir, out, "--grid", json.dumps({**TINY_GRID, "hidden_units": [[8]]}),
                  "--study_name", "o", "--skip_final", "--n_trials", "1")
    assert search.main(argv) == 0
    study = _load(out, "o")
    settings = dict(study.user_attrs[search.SETTINGS_ATTR])
    del settings["space"]  # as stored by a version without --space
    study.set_user_attr(search.SETTINGS_ATTR, settings)
    assert search.main(argv[:-2]) == 0  # the whole grid: resumes and runs the second point
    assert len(_load(out, "o").trials) == 2


def test_two_worker_processes_share_the_study_without_duplicates(synthetic_cifar_dir, tmp_path):
    out = tmp_path / "workers"
    argv = _flags(synthetic_cifar_dir, out, "--grid", json.dumps(TINY_GRID), "--study_name", "w",
                  "--n_workers", "2", "--skip_final")
    result = subprocess.run([sys.executable, "-m", "fastmlp.search", *argv], env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    trials = _load(out, "w").get_trials()
    # The two workers may decide together to start one trial too many: it fails unrun, marked
    # surplus, with its grid point given back (the rule the module docstring states).
    run = [t for t in trials if not t.user_attrs.get("surplus")]
    extra = [t for t in trials if t.user_attrs.get("surplus")]
    assert [t.state.name for t in run] == ["COMPLETE"] * 4
    assert sorted(t.system_attrs["grid_id"] for t in run) == [0, 1, 2, 3]
    assert len({(t.params["hidden_units"], t.params["batch_size"]) for t in run}) == 4
    assert all(t.state.name == "FAIL" and t.system_attrs.get("grid_id") is None for t in extra)
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert (out / "results.md").is_file() and (out / "trials.csv").is_file()


@pytest.mark.parametrize("kind", ["journal", "postgres"])
def test_a_killed_worker_trial_is_failed_and_run_again(synthetic_cifar_dir, tmp_path, request, kind):
    out = tmp_path / "killed"
    where = _storage_flags(request, kind, out)
    storage = where[1] if where else None
    grid = {**TINY_GRID, "batch_size": [20]}
    argv = _flags(synthetic_cifar_dir, out, "--grid", json.dumps(grid), "--study_name", "k",
                  "--grace_period", "2", "--skip_final", *where)
    # Each evaluation of the victim sleeps, so it is surely in the middle of a trial when killed.
    env = dict(_env(), **{EVAL_SLEEP_ENV: "60"})
    victim = subprocess.Popen([sys.executable, "-m", "fastmlp.search", *argv], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        running = _wait_for_running_trials(victim, out, "k", storage, 1)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    killed = running[0].number
    left = Path(running[0].user_attrs["trial_dir"]) / "checkpoint.npz"
    assert left.is_file()  # what the killed worker left behind

    # The next run waits out the grace period, fails the dead trial, runs it again, finishes the grid
    # (--timeout: a run that never noticed the dead trial would wait for it for ever).
    assert search.main(argv + ["--timeout", "60"]) == 0
    trials = _load(out, "k", storage).get_trials()
    by_state = {}
    for t in trials:
        by_state.setdefault(t.state.name, []).append(t)
    assert [t.number for t in by_state["FAIL"]] == [killed]
    assert len(by_state["COMPLETE"]) == 2 and "RUNNING" not in by_state and "WAITING" not in by_state
    assert {t.params["hidden_units"] for t in by_state["COMPLETE"]} == {"8", "16"}
    retried = [t for t in by_state["COMPLETE"] if t.system_attrs.get("failed_trial") == killed]
    assert len(retried) == 1 and retried[0].params == running[0].params
    # The dead trial's checkpoint is cleaned up, as every finished trial's is.
    assert not left.exists() and not list(out.rglob("checkpoint.npz"))


def _wait_for_running_trials(process: subprocess.Popen, out: Path, name: str, storage: str | None, n: int,
                             timeout: float = 300) -> list:
    """The trials of study ``name`` once ``n`` of them are training (checkpoint written); fails if ``process`` ends."""
    deadline = time.monotonic() + timeout
    running = []
    while time.monotonic() < deadline and len(running) < n and process.poll() is None:
        time.sleep(0.3)
        if storage is None and not (out / "study.journal").is_file():
            continue
        try:
            trials = _load(out, name, storage).get_trials()
        except KeyError:  # the study is not created yet
            continue
        # A journal trial's heartbeat is a system attribute (RDBStorage keeps its own table).
        running = [t for t in trials if t.state.name == "RUNNING" and t.params and "trial_dir" in t.user_attrs
                   and (storage is not None or search.HEARTBEAT_ATTR in t.system_attrs)
                   and (Path(t.user_attrs["trial_dir"]) / "checkpoint.npz").is_file()]
    if len(running) < n:
        message = process.stderr.read() if process.poll() is not None else "(still running)"
        pytest.fail(f"{n} trial(s) never started training: {message!r}")
    return running


def test_torch_model_search_and_final_retrain(synthetic_cifar_dir, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "torch"
    grid = {"hidden_units": [[16]], "batch_size": [40], "max_steps": [10], "learning_rate": [1e-3],
            "dropout": [0.0, 0.1]}
    argv = _flags(synthetic_cifar_dir, out, "--grid", json.dumps(grid), "--study_name", "t")
    argv[argv.index("numpy")] = "torch"
    assert search.main(argv + ["--trainer_flags=--init kaiming", "--device", "cpu", "--threads", "1"]) == 0
    trials = _load(out, "t").get_trials()
    assert sorted(t.params["dropout"] for t in trials) == [0.0, 0.1]
    final = json.loads((out / "final.json").read_text())
    assert 0.0 <= final["test_accuracy"] <= 1.0
    assert final["command"].startswith("python -m torch_models.train_mlp ")
    assert "--init kaiming" in final["command"]


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("extra, message", [
    (["--grid", "{}"], "--grid is empty"),
    (["--grid", "{bad json"], "malformed JSON"),
    (["--grid", '{"batch_size": []}'], "empty list"),
    (["--sampler", "tpe", "--grid", '{"batch_size": [2]}'], "only used by --sampler grid"),
    (["--storage", "postgresql://nobody@127.0.0.1:1/x"], "cannot open --storage"),
    (["--storage", "/dev/null/sub/study.journal"], "cannot open journal storage"),
    (["--out_dir", "/dev/null/sub"], "cannot create --out_dir"),
    (["--trainer_flags=--max_steps 3"], "may not set --max_steps"),
    (["--trainer_flags=--no_such_flag"], "unrecognized arguments"),
    (["--heartbeat_interval", "5", "--grace_period", "5"], "must exceed --heartbeat_interval"),
    (["--validation_size", "5000"], "cannot load CIFAR-10"),
    (["--space", '{"units": [8, 16]}'], "--space is used by --sampler evolution"),
    (["--sampler", "evolution", "--space", '{"units": [16, 8]}'], "low <= high"),
    (["--trainer_flags=--nesterov"], "not available with --trainer_flags --nesterov"),
    (["--sampler", "random", "--trainer_flags=--nesterov"], "['sgd', 'adam']"),
    (["--grid", "/dev/zero", "--dry_run"], "--grid file '/dev/zero' is a character device, not a regular file"),
    (["--grid", json.dumps({"batch_size": list(range(1, 400)), "max_steps": list(range(1, 400))}), "--dry_run"],
     "--grid has 477603 points"),
])
def test_bad_flags_give_one_line_and_exit_code_2(synthetic_cifar_dir, tmp_path, capsys, extra, message):
    argv = ["--model", "numpy", "--data_dir", str(synthetic_cifar_dir), "--out_dir", str(tmp_path / "o"),
            "--max_steps_cap", "2", "--skip_final", "--quiet", *extra]
    assert search.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra", [["--sampler", "annealing"], ["--pruner", "always"], ["--n_trials", "0"],
                                   ["--model", "jax"]])
def test_bad_choices_are_argparse_errors(extra, capsys):
    with pytest.raises(SystemExit) as exc:
        search.main(extra)
    assert exc.value.code == 2
    assert f"error: argument {extra[0]}" in capsys.readouterr().err


def test_missing_optuna_gives_the_install_hint(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)  # makes `import optuna` raise ImportError
    assert search.main(["--model", "numpy", "--out_dir", str(tmp_path)]) == 2
    assert "pip install 'fastmlp[search]'" in capsys.readouterr().err


def test_dry_run_trains_nothing(synthetic_cifar_dir, tmp_path, capsys):
    out = tmp_path / "dry"
    assert search.main(_flags(synthetic_cifar_dir, out, "--dry_run")) == 0
    printed = capsys.readouterr().out
    assert "grid of 18 points" in printed and "new" in printed
    assert not (out / "trials").exists() and not (out / "results.md").exists()


def test_heartbeat_journal_storage_marks_stale_trials(tmp_path):
    storage = search.open_storage(None, tmp_path, heartbeat_interval=1, grace_period=2, max_retry=1)
    assert isinstance(storage, search.HeartbeatJournalStorage)
    study = optuna.create_study(storage=storage, study_name="s")
    with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna's hint: heartbeats come from optimize()
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    storage.record_heartbeat(search_storage.trial_id(trial))
    assert storage._get_stale_trial_ids(study._study_id) == []
    storage.set_trial_system_attr(search_storage.trial_id(trial), search.HEARTBEAT_ATTR, time.time() - 10)
    # The start of the attempt counts too: still fresh right after it started.
    assert storage._get_stale_trial_ids(study._study_id) == []
    time.sleep(2.2)
    assert storage._get_stale_trial_ids(study._study_id) == [search_storage.trial_id(trial)]
    with search_storage.quiet_optuna_warnings():
        optuna.storages.fail_stale_trials(study)
    states = [t.state.name for t in study.get_trials()]
    assert states == ["FAIL", "WAITING"]  # failed, and queued again by the retry callback
    assert study.get_trials()[1].params == trial.params


# --------------------------------------------------------------------------- concurrency and faults
def _start_workers(data_dir: Path, out: Path, n: int, *extra: str) -> list[subprocess.Popen]:
    """``n`` separate ``python -m fastmlp.search`` workers started at once (each a distinct --worker_index)."""
    return [subprocess.Popen([sys.executable, "-m", "fastmlp.search",
                              *_flags(data_dir, out, "--skip_final", "--worker_index", str(i), *extra)],
                             env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for i in range(n)]


def _all_succeed(processes: list[subprocess.Popen]) -> None:
    errors = []
    for proc in processes:
        proc.wait(timeout=600)  # generous: each worker imports and loads on a busy machine
        err = proc.stderr.read()
        if proc.returncode != 0 or "error" in err.lower():
            errors.append(f"exit {proc.returncode}: {err.strip()[-500:]}")
    assert not errors, errors


@pytest.mark.parametrize("kind, n_workers, hidden", [("journal", 3, ["8"]), ("sqlite", 3, ["8"]),
                                                     ("postgres", 4, ["8", "16"])])
def test_workers_started_at_once_on_a_fresh_storage_all_join(synthetic_cifar_dir, tmp_path, request, kind,
                                                             n_workers, hidden):
    """Workers racing to create the storage (a database's tables, or the journal) and the study:
    none dies, and each grid point is run once (a trial started on a taken point is failed unrun)."""
    out = tmp_path / kind
    out.mkdir()
    where = _storage_flags(request, kind, out)
    grid = {**TINY_GRID, "hidden_units": hidden, "max_steps": [4]}
    _all_succeed(_start_workers(synthetic_cifar_dir, out, n_workers, "--grid", json.dumps(grid),
                                "--study_name", "c", *where))
    trials = _load(out, "c", where[1] if where else None).get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted((t.params["hidden_units"], t.params["batch_size"]) for t in complete) == sorted(
        (h, b) for h in hidden for b in (20, 40))
    assert all(t.user_attrs.get("surplus") and t.state.name == "FAIL" for t in trials if t not in complete)


def test_surplus_trials_are_failed_unrun(tmp_path):
    """The rule each trial applies when it starts: the earlier-numbered trials decide."""
    from fastmlp.search.study import surplus_reason

    study = optuna.create_study(direction="maximize")
    x = optuna.distributions.FloatDistribution(0, 1)
    first, second, third = (study.ask({"x": x}) for _ in range(3))  # three workers decided at once
    budget = SearchSettings(model="numpy", sampler="random", n_trials=2)
    assert surplus_reason(study, first.number, None, budget) is None
    assert surplus_reason(study, second.number, None, budget) is None
    assert "--n_trials 2" in surplus_reason(study, third.number, None, budget)
    study.tell(second, 0.5)  # a later trial that finished still counts
    assert "--n_trials 2" in surplus_reason(study, third.number, None, budget)
    study.tell(first, state=optuna.trial.TrialState.FAIL)  # a failed one does not
    assert surplus_reason(study, third.number, None, budget) is None
    grid = SearchSettings(model="numpy", sampler="grid")  # n_trials: the whole grid
    study = optuna.create_study(direction="maximize")
    trials = [study.ask({"x": x}) for _ in range(3)]
    for trial, point in zip(trials, (0, 1, 1)):  # trial 2 took trial 1's point (both started together)
        trial.storage.set_trial_system_attr(search_storage.trial_id(trial), "grid_id", point)
    assert surplus_reason(study, 1, 1, grid) is None
    assert surplus_reason(study, 2, 1, grid) == "grid point 1 is taken by trial 1"
    search_storage.release_grid_point(trials[2])  # what the surplus trial does before it fails
    assert search_storage.live_grid_point(trials[2]) is None
    assert search_storage.grid_point(study.trials[2]) is None and search_storage.grid_point(study.trials[1]) == 1


def test_a_trial_waits_for_the_grid_point_of_an_earlier_trial_before_deciding():
    """The race a loaded machine showed: trial 2 starts on point 1 while trial 1, created before it,
    has no point yet (its worker starved of CPU); trial 1 then takes point 1 as the GridSampler maps
    trial k to point k. Trial 2 waits for that point to be written, and is surplus."""
    import threading

    from fastmlp.search.study import settled_surplus_reason, surplus_reason, unplaced_earlier

    def place(trial, point):
        trial.storage.set_trial_system_attr(search_storage.trial_id(trial), "grid_id", point)

    grid = SearchSettings(model="numpy", sampler="grid")
    x = optuna.distributions.FloatDistribution(0, 1)
    study = optuna.create_study(direction="maximize")
    trials = [study.ask({"x": x}) for _ in range(3)]
    place(trials[0], 0)
    place(trials[2], 1)
    assert unplaced_earlier(study, 2) == [1] and unplaced_earlier(study, 1) == []
    assert surplus_reason(study, 2, 1, grid) is None  # what trial 2 concluded without waiting
    threading.Timer(0.3, place, (trials[1], 1)).start()
    start = time.monotonic()
    assert settled_surplus_reason(study, 2, 1, grid, timeout=30) == "grid point 1 is taken by trial 1"
    assert time.monotonic() - start >= 0.25
    assert settled_surplus_reason(study, 1, 1, grid, timeout=30) is None  # the earlier one runs, at once

    # A point given back counts as written; an enqueued trial gets none and is not waited for.
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"x": 0.5})
    queued, released, last = (study.ask({"x": x}) for _ in range(3))
    place(released, None)
    place(last, 0)
    assert unplaced_earlier(study, last.number) == []
    # An earlier worker that died before writing its point is waited for only ``timeout`` seconds.
    study = optuna.create_study(direction="maximize")
    dead, late = study.ask({"x": x}), study.ask({"x": x})
    place(late, 0)
    start = time.monotonic()
    assert settled_surplus_reason(study, late.number, 0, grid, timeout=0.2) is None
    assert 0.2 <= time.monotonic() - start < 5
    assert settled_surplus_reason(study, late.number, None, grid, timeout=30) is None  # no point, no wait


def test_n_trials_is_not_overshot_by_workers_deciding_together(synthetic_cifar_dir, tmp_path):
    """Three workers, --n_trials 2: exactly two trials finish; any third one started is failed unrun."""
    out = tmp_path / "budget"
    _all_succeed(_start_workers(synthetic_cifar_dir, out, 3, "--sampler", "random", "--n_trials", "2",
                                "--max_steps_cap", "4", "--pruner", "none", "--study_name", "b"))
    trials = _load(out, "b").get_trials()
    assert [t.state.name for t in trials].count("COMPLETE") == 2
    assert all(t.user_attrs.get("surplus") for t in trials if t.state.name != "COMPLETE")
    assert not any("surplus" in line for line in (out / "results.md").read_text().splitlines()
                   if line.startswith("| "))
    for trial in trials:
        assert not trial.user_attrs.get("surplus") or "trial_dir" not in trial.user_attrs  # nothing written


def test_two_studies_sharing_out_dir_keep_their_trial_folders(synthetic_cifar_dir, tmp_path):
    """Trial folders are per study name, and claimed exclusively: neither study overwrites the other's."""
    out = tmp_path / "shared"
    grid = json.dumps({**TINY_GRID, "hidden_units": [[8]], "batch_size": [20], "max_steps": [4]})
    for name, storage in (("a", []), ("b", []), ("a", ["--storage", str(tmp_path / "other.journal")])):
        assert search.main(_flags(synthetic_cifar_dir, out, "--grid", grid, "--study_name", name,
                                  "--skip_final", *storage)) == 0
    folders = sorted(p.relative_to(out).as_posix() for p in out.glob("trials/*/*"))
    assert folders == ["trials/a/trial_0000", "trials/a/trial_0000-1", "trials/b/trial_0000"]
    for storage, name in ((None, "a"), (None, "b"), (str(tmp_path / "other.journal"), "a")):
        trial = optuna.load_study(study_name=name, storage=search.open_storage(storage, out, heartbeat_interval=0)
                                  ).trials[0]
        info = json.loads((Path(trial.user_attrs["trial_dir"]) / "trial_info.json").read_text())
        assert info["study_name"] == name and (Path(trial.user_attrs["trial_dir"]) / "metrics.json").is_file()


# --------------------------------------------------------------------------- a storage that lies or is damaged
ONE_POINT = json.dumps({**TINY_GRID, "hidden_units": [[8]], "batch_size": [20], "max_steps": [4]})


def test_trial_folders_named_by_the_storage_outside_the_study_are_never_touched(synthetic_cifar_dir, tmp_path):
    """Whoever can write the storage plants finished trials whose trial_dir points at files elsewhere:
    straight outside, and through a symbolic link inside the study's trials folder. They survive a run."""
    out, outside = tmp_path / "planted", tmp_path / "elsewhere"
    victims = [outside / "a", outside / "b"]
    for folder in victims:
        folder.mkdir(parents=True)
        for name in ("checkpoint.npz", "checkpoint.pt"):
            (folder / name).write_bytes(b"precious")
    link = out / "trials" / "p" / "trial_0001"
    link.parent.mkdir(parents=True)
    link.symlink_to(victims[1], target_is_directory=True)
    study = optuna.create_study(storage=search.open_storage(None, out, heartbeat_interval=0), study_name="p",
                                direction="maximize")
    for folder in (victims[0], link):
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                                  user_attrs={"trial_dir": str(folder)}))
    assert search.main(_flags(synthetic_cifar_dir, out, "--grid", ONE_POINT, "--study_name", "p",
                              "--skip_final")) == 0
    assert [t.state.name for t in _load(out, "p").get_trials()] == ["FAIL", "FAIL", "COMPLETE"]
    for folder in victims:
        assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.npz", "checkpoint.pt"]
        assert (folder / "checkpoint.npz").read_bytes() == b"precious"


def test_a_cut_last_journal_line_is_set_aside_and_the_study_goes_on(synthetic_cifar_dir, tmp_path, capsys):
    out = tmp_path / "cut"
    grid = json.dumps({**TINY_GRID, "hidden_units": [[8]], "max_steps": [4]})
    argv = _flags(synthetic_cifar_dir, out, "--grid", grid, "--study_name", "j", "--skip_final")
    assert search.main(argv + ["--n_trials", "1"]) == 0
    journal = out / "study.journal"
    whole = journal.stat().st_size
    cut = b'{"op_code":9,"worker_id":"w","trial_id":0,"system_attr":{"fastmlp:heart'  # a crash mid-append
    with open(journal, "ab") as f:
        f.write(cut)
    capsys.readouterr()
    assert search.main(argv) == 0  # the rest of the grid
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert len(warned) == 1 and warned[0].startswith("python -m fastmlp.search: warning: journal storage ")
    assert f"cut line at byte offset {whole} " in warned[0]
    assert (out / f"study.journal.cut-{whole}").read_bytes() == cut
    assert journal.read_bytes()[whole - 1:whole + 1] == b"\n{"  # went on where the cut line began
    assert [t.state.name for t in _load(out, "j").get_trials()] == ["COMPLETE", "COMPLETE"]
    assert search.main(argv) == 0  # and stays readable


def test_a_file_that_is_not_a_journal_is_not_repaired(synthetic_cifar_dir, tmp_path, capsys):
    """Only what starts as Optuna's lines do is taken for a cut line: another file is left as it is."""
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"my notes, no newline")
    argv = _flags(synthetic_cifar_dir, tmp_path / "o", "--storage", str(notes), "--skip_final")
    assert search.main(argv) == 2
    assert "that do not start an Optuna journal line" in capsys.readouterr().err
    assert notes.read_bytes() == b"my notes, no newline"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "o"]  # no side file


@pytest.mark.parametrize("line, problem", [
    ('{"op_code": 99, "worker_id": "w"}', "unknown op_code 99"),
    ('{"op_code": 9, "worker_id": "w", "trial_id": 0, "system_attr": {"x": ' + "[" * 100_000 + "]" * 100_000
     + "}}", "nested too deep"),
    ('{"op_code": 9, "worker_id": "w", "trial_id": 0, "system_attr": {"x": ' + "[" * 100 + "]" * 100 + "}}",
     "nested more than"),
    ('{"op_code": 8, "worker_id": "w", "trial_id": 0}', "without ['user_attr']"),
    ('{"op_code": 8, "worker_id": "w", "trial_id": 0, "user_attr": {}}', "one attribute"),
    ("[1, 2]", "not an object"),
])
def test_a_malformed_journal_line_gives_one_error_line(tmp_path, capsys, line, problem):
    out = tmp_path / "bad"
    optuna.create_study(storage=search.open_storage(None, out, heartbeat_interval=0), study_name="b")
    journal = out / "study.journal"
    offset = journal.stat().st_size
    with open(journal, "a") as f:
        f.write(line + "\n")
    assert search.main(["--model", "numpy", "--out_dir", str(out), "--study_name", "b", "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert f"line 2 (byte offset {offset}) is malformed: " in err and problem in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- signals
def _worker_processes(pid: int) -> list[int]:
    """The worker processes that ``pid`` started (read from /proc: children running multiprocessing's spawn_main)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:  # ended meanwhile
            continue
        if parent == pid and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return found


def _alive(pids: list[int], wait: float = 0.0) -> list[int]:
    """Those of ``pids`` still running after at most ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.2)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads the process tree from /proc")
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGKILL, -9)])
def test_a_signal_to_the_search_stops_its_workers(synthetic_cifar_dir, tmp_path, signum, status):
    """SIGTERM, SIGHUP: the parent forwards the signal and waits for its workers. SIGKILL: the workers,
    told by the kernel (Linux), stop by themselves. Either way no worker trains on under init, and their
    trials are marked interrupted (the next run queues them again)."""
    out = tmp_path / "signalled"
    argv = _flags(synthetic_cifar_dir, out, "--grid", json.dumps(TINY_GRID), "--study_name", "s", "--n_workers",
                  "2", "--skip_final")
    parent = subprocess.Popen([sys.executable, "-m", "fastmlp.search", *argv],
                              env=dict(_env(), **{EVAL_SLEEP_ENV: "60"}), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_running_trials(parent, out, "s", None, 2)
        workers = _worker_processes(parent.pid)
        assert len(workers) == 2
        parent.send_signal(signum)
        assert parent.wait(timeout=120) == status
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    # (Checked before reading stderr: workers left running would hold the pipe open.)
    assert not _alive(workers, wait=120 if signum == signal.SIGKILL else 0)  # else the parent waited for them
    err = parent.stderr.read()
    assert "Traceback" not in err
    if signum != signal.SIGKILL:
        assert f"interrupted by {signal.Signals(signum).name}" in err
    trials = _load(out, "s").get_trials()
    assert [(t.state.name, t.user_attrs.get("interrupted")) for t in trials] == [("FAIL", True)] * 2
