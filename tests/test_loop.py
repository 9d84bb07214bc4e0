"""The training loop (``fastmlp.loop``) on hooks that only record what they are asked.

The loop's contract with any trainer: which hooks it calls, in which order, with what;
what it records and writes; how it resumes. ``tests/test_train_cli.py`` runs it on the
real MLP end to end.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from fastmlp import loop
from fastmlp.runlog import DivergenceError, RunLog


class RecordingHooks:
    """Loss 1/step, accuracy 0.5 on one "validation" split; every call is logged."""

    def __init__(self, diverge_at: int | None = None):
        self.calls: list[tuple] = []
        self.diverge_at = diverge_at

    def step(self, step: int) -> float:
        self.calls.append(("step", step))
        if step == self.diverge_at:
            raise DivergenceError(step, float("nan"))
        return 1.0 / step

    def batch_metrics(self) -> dict:
        self.calls.append(("batch_metrics",))
        return {"train_accuracy": 0.25, "learning_rate": 0.1}

    def evaluate(self) -> dict:
        self.calls.append(("evaluate",))
        return {"validation_loss": 2.0, "validation_accuracy": 0.5}

    def save_checkpoint(self, step: int, record) -> None:
        self.calls.append(("save", step, [row["step"] for row in record["rows"]], sorted(record)))


def _progress(tmp_path: Path, **kwargs) -> loop.Progress:
    return loop.Progress(RunLog(tmp_path, {"max_steps": 5}), show=False, **kwargs)


def test_a_fresh_run_evaluates_at_0_every_eval_freq_and_at_the_end(tmp_path):
    hooks, progress, reports = RecordingHooks(), _progress(tmp_path), []
    loop.run(hooks, loop.Plan(max_steps=5, eval_freq=2), progress, on_eval=lambda step, r: reports.append(r))
    evaluated = [step for step, *_ in (c[1:] for c in hooks.calls if c[0] == "save")]
    assert evaluated == [0, 2, 4, 5]
    assert [c[1] for c in hooks.calls if c[0] == "step"] == [1, 2, 3, 4, 5]
    # The checkpoint of an evaluation holds the curves up to it, the flags and the time.
    assert hooks.calls[1] == ("save", 0, [0], ["flags", "rows", "wall_seconds"])
    assert progress.step == 5 and [r["step"] for r in reports] == [0, 2, 4, 5]
    assert reports[0] == {"step": 0, "validation_loss": 2.0, "validation_accuracy": 0.5}
    assert reports[1] == {"step": 2, "train_loss": 0.5, "train_accuracy": 0.25, "learning_rate": 0.1,
                          "validation_loss": 2.0, "validation_accuracy": 0.5}
    metrics = loop.finish(progress, out_dir=str(tmp_path))
    assert metrics["steps"] == 5 and metrics["validation_accuracy"] == 0.5
    assert metrics["best_validation_accuracy"] == 0.5 and "test_accuracy" not in metrics
    assert json.loads((tmp_path / "metrics.json").read_text())["out_dir"] == str(tmp_path)


def test_resume_continues_after_the_checkpoint_without_the_step_0_evaluation(tmp_path):
    progress = _progress(tmp_path)
    rows = [{"step": 0, "validation_accuracy": 0.1}, {"step": 2, "validation_accuracy": 0.2},
            {"step": 4, "validation_accuracy": 0.9}]  # step 4: past the checkpoint, to be redone
    loop.resume(progress, step=2, rows=rows, wall_seconds=7.0, max_steps=5)
    assert progress.step == 2 and [r["step"] for r in progress.log.rows] == [0, 2]
    assert progress.wall_seconds() >= 7.0
    hooks = RecordingHooks()
    loop.run(hooks, loop.Plan(max_steps=5, eval_freq=2), progress)
    assert [c[1] for c in hooks.calls if c[0] == "step"] == [3, 4, 5]
    assert [c[1] for c in hooks.calls if c[0] == "save"] == [4, 5]
    with pytest.raises(ValueError, match="checkpoint is at step 6, past --max_steps 5"):
        loop.resume(_progress(tmp_path / "b"), step=6, rows=[], wall_seconds=0.0, max_steps=5)


def test_an_error_stops_the_run_and_keeps_the_last_checkpoint(tmp_path):
    hooks = RecordingHooks(diverge_at=3)
    with pytest.raises(DivergenceError):
        loop.run(hooks, loop.Plan(max_steps=5, eval_freq=2), _progress(tmp_path))
    assert [c[1] for c in hooks.calls if c[0] == "save"] == [0, 2]

    def stop(step, report):
        if step == 2:
            raise KeyboardInterrupt

    hooks = RecordingHooks()
    with pytest.raises(KeyboardInterrupt):
        loop.run(hooks, loop.Plan(max_steps=5, eval_freq=2), _progress(tmp_path / "b"), on_eval=stop)
    assert hooks.calls[-1][:2] == ("save", 2)


def test_plan_of_a_dry_run():
    assert loop.Plan.from_flags(1500, 100) == loop.Plan(1500, 100, None)
    dry = loop.Plan.from_flags(1500, 100, dry_run=True)
    assert (dry.max_steps, dry.eval_freq, dry.eval_limit) == (loop.DRY_RUN_STEPS, loop.DRY_RUN_EVAL_FREQ,
                                                              loop.DRY_RUN_EVAL_EXAMPLES)
    assert [s for s in range(1, 8) if loop.Plan(7, 3).evaluates_at(s)] == [3, 6, 7]


def test_train_steps_numbers_updates_and_calls_after_each(tmp_path):
    from fastmlp.runlog import progress_bar

    seen = []
    bar = progress_bar(4, initial=10, disable=True)
    loop.train_steps(lambda n: float(n), 10, 14, bar, after_step=lambda n, loss: seen.append((n, loss)))
    assert seen == [(11, 11.0), (12, 12.0), (13, 13.0), (14, 14.0)]


def test_a_hidden_progress_bar_takes_tqdms_calls_without_importing_it():
    # --quiet runs pay nothing for the bar: tqdm.auto (and asyncio with it) is never imported.
    code = ("import sys; from fastmlp.runlog import progress_bar; bar = progress_bar(3, disable=True); "
            "bar.update(1); bar.set_postfix(loss='1.0', refresh=False); bar.close(); "
            "print('tqdm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True)
    assert out.stdout.split() == ["False"]


def test_a_shown_progress_bar_is_tqdm():
    from tqdm import tqdm

    from fastmlp.runlog import progress_bar

    bar = progress_bar(2, initial=1)
    try:
        assert isinstance(bar, tqdm) and (bar.n, bar.total) == (1, 2)
    finally:
        bar.close()


def test_check_resumable_refuses_architecture_and_warns_about_trajectory():
    saved = {"dnn_hidden_units": [100], "learning_rate": 0.1, "max_steps": 100, "lr_schedule": "constant"}
    with pytest.raises(ValueError, match=r"cannot resume from 'ck': it was trained with --dnn_hidden_units \[100\]"):
        loop.check_resumable(saved, {**saved, "dnn_hidden_units": [50]}, "ck",
                             architecture=("dnn_hidden_units",), trajectory=())
    with pytest.warns(UserWarning, match=r"--learning_rate 0.1 -> 0.2"):
        loop.check_resumable(saved, {**saved, "learning_rate": 0.2}, "ck", architecture=(),
                             trajectory=("learning_rate",))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loop.check_resumable(saved, {**saved, "max_steps": 200}, "ck", architecture=(), trajectory=())
        loop.check_resumable(saved, {**saved, "learning_rate": 0.2}, "ck", architecture=(),
                             trajectory=("learning_rate",), warn=False)  # ranks other than 0
    # Under a decaying schedule --max_steps is its horizon: a change alters the result.
    with pytest.warns(UserWarning, match="--max_steps 100 -> 200"):
        loop.check_resumable({**saved, "lr_schedule": "cosine"}, {**saved, "lr_schedule": "cosine",
                                                                  "max_steps": 200},
                             "ck", architecture=(), trajectory=())
    # a library names the settings as it does
    with pytest.raises(ValueError, match=r"it was trained with hidden_units \[100\], this run asks for \[50\]"):
        loop.check_resumable({"hidden_units": [100]}, {"hidden_units": [50]}, "ck", architecture=("hidden_units",),
                             trajectory=(), label=str)


def test_choose_out_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert loop.choose_out_dir("given", tmp_path / "run" / "checkpoint.npz", dry_run=True) == Path("given")
    assert loop.choose_out_dir(None, tmp_path / "run" / "checkpoint.npz", dry_run=False) == tmp_path / "run"
    assert loop.choose_out_dir(None, None, dry_run=True).name.startswith("dryrun-")
    assert loop.choose_out_dir(None, None, dry_run=False).parent == Path("runs")


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    """The default folder is claimed by creating it: a second run in the same second gets ``-1``."""
    import threading
    import time

    from fastmlp.runlog import default_out_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt: "20250101-120000")  # every call in one second
    first, second = default_out_dir(), default_out_dir()
    assert first.is_dir() and second.is_dir()
    assert (first.name, second.name) == ("20250101-120000", "20250101-120000-1")
    # Many at the very same moment (threads released together): all distinct.
    barrier, chosen = threading.Barrier(8), []

    def choose():
        barrier.wait()
        chosen.append(default_out_dir(prefix="dryrun-"))

    threads = [threading.Thread(target=choose) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(chosen)) == 8 and all(path.is_dir() for path in chosen)


class DivergingHooks(RecordingHooks):
    """From update ``bad_from`` on, the evaluation loss is NaN, or (``params=True``) only the parameters are."""

    def __init__(self, bad_from: int, params: bool):
        super().__init__()
        self.bad_from, self.params, self.updates = bad_from, params, 0

    def step(self, step: int) -> float:
        self.updates = step
        return super().step(step)

    def evaluate(self) -> dict:
        metrics = super().evaluate()
        if not self.params and self.updates >= self.bad_from:
            metrics["validation_loss"] = float("nan")
        return metrics

    def parameters_finite(self) -> bool:
        return not (self.params and self.updates >= self.bad_from)


@pytest.mark.parametrize("params", [False, True], ids=["evaluation loss", "parameters"])
def test_a_diverged_update_is_reported_and_not_checkpointed(tmp_path, params):
    """The batch loss (before the update) is fine; what the update did shows at the next evaluation."""
    hooks, progress = DivergingHooks(bad_from=3, params=params), _progress(tmp_path)
    with pytest.raises(DivergenceError, match="validation_loss is nan" if not params else "a parameter is NaN"):
        loop.run(hooks, loop.Plan(max_steps=6, eval_freq=2), progress)
    assert [c[1] for c in hooks.calls if c[0] == "save"] == [0, 2]  # the last good checkpoint stays
    assert [row["step"] for row in progress.log.rows] == [0, 2]


def test_a_run_resumed_from_the_step_0_checkpoint_does_not_evaluate_step_0_again(tmp_path):
    """A run killed between its first and second evaluation resumes from step 0: one row per step."""
    progress = _progress(tmp_path)
    loop.resume(progress, step=0, rows=[{"step": 0, "validation_accuracy": 0.1}], wall_seconds=1.0, max_steps=4)
    hooks = RecordingHooks()
    loop.run(hooks, loop.Plan(max_steps=4, eval_freq=2), progress)
    assert [c[1] for c in hooks.calls if c[0] == "save"] == [2, 4]
    assert [row["step"] for row in progress.log.rows] == [0, 2, 4]


def test_evaluation_splits_are_the_present_ones_and_none_is_an_error():
    from types import SimpleNamespace

    full, empty = SimpleNamespace(num_examples=5), SimpleNamespace(num_examples=0)
    data = {"train": full, "validation": None, "test": full}
    assert loop.evaluation_splits(data) == {"test": full}
    both = {"train": full, "validation": empty, "test": full}
    assert list(loop.evaluation_splits(both)) == ["validation", "test"]  # validation first, empty or not
    assert list(loop.evaluation_splits(both, skip_empty=True)) == ["test"]
    with pytest.raises(ValueError, match="no split to evaluate"):
        loop.evaluation_splits({"train": full, "test": None})
    with pytest.raises(ValueError, match="no split to evaluate"):
        loop.evaluation_splits({"train": full, "test": empty}, skip_empty=True)


@pytest.mark.parametrize("signum, raised", [(signal.SIGTERM, "Stopped"), (signal.SIGHUP, "Stopped"),
                                            (signal.SIGINT, "KeyboardInterrupt")])
def test_a_stop_signal_during_an_update_lets_the_update_finish(signum, raised):
    from fastmlp import cli

    done = []

    def step(n):
        if n == 2:
            os.kill(os.getpid(), signum)  # the handler runs here, in the middle of the update
        done.append(n)  # the rest of the update
        return 0.0

    class Bar:
        def update(self, k):
            pass

        def set_postfix(self, **kw):
            pass

    with cli.signals_stop_the_run(), pytest.raises(KeyboardInterrupt) as info:
        loop.train_steps(step, 0, 5, Bar())
    assert type(info.value).__name__ == raised
    assert done == [1, 2]  # update 2 finished, update 3 never started


@pytest.mark.parametrize("signum, raised", [(signal.SIGTERM, "Stopped"), (signal.SIGINT, "KeyboardInterrupt")])
def test_a_stop_signal_during_the_checkpoint_write_lets_the_write_finish(signum, raised, tmp_path):
    # Raised inside the write (numpy.savez's zip file), the stop became "Can't close the
    # ZIP file while there is an open writing handle": a bad-input exit, not the signal's.
    from fastmlp import cli

    class SignalledWhileSaving(RecordingHooks):
        def save_checkpoint(self, step, record):
            os.kill(os.getpid(), signum)  # the handler runs here, in the middle of the write
            super().save_checkpoint(step, record)  # the rest of the write

    hooks = SignalledWhileSaving()
    with cli.signals_stop_the_run(), pytest.raises(KeyboardInterrupt) as info:
        loop.evaluate_and_checkpoint(hooks, _progress(tmp_path), 0, {})
    assert type(info.value).__name__ == raised
    assert [call[0] for call in hooks.calls] == ["evaluate", "save"]  # the write finished


def test_a_stop_signal_outside_an_update_stops_at_once():
    from fastmlp import cli, exits

    with cli.signals_stop_the_run(), pytest.raises(exits.Stopped):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
