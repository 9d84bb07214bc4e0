"""Run folders and command lines under faults (issue 19 rows 5, 8, 9, 11, 14, 15, 16).

Every trainer's command line (``fastmlp.train``, ``torch_models.train_mlp``,
``torch_models.train_convnet``) goes through ``fastmlp.cli.run_main``: these tests
drive ``fastmlp.train`` in-process where they can, and real processes where the
fault is one (a signal, a file-size limit), with the torch MLP for the shared parts.
Each fault must end with its exit status (README's table), one ``error:`` line or
the resume command, no traceback, and the last good checkpoint intact.
"""
from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastmlp import train as fm_train

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dnn_hidden_units", "8", "--batch_size", "50", "--eval_freq", "2", "--quiet", "--threads", "1"]


def _status(argv, capsys) -> tuple[int, str]:
    """``fastmlp.train.main(argv)`` -> (exit status, stderr); argparse's own errors exit through SystemExit."""
    try:
        status = fm_train.main([a if isinstance(a, str) else str(a) for a in argv])
    except SystemExit as exc:
        status = exc.code
    return status, capsys.readouterr().err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:") or ": error:" in line]


def _env(**extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture()
def finished_run(synthetic_cifar_dir, tmp_path, capsys) -> Path:
    """A finished 4-step run's folder."""
    out = tmp_path / "run"
    status, err = _status(["--data_dir", synthetic_cifar_dir, "--max_steps", 4, *TINY, "--out_dir", out], capsys)
    assert status == 0, err
    return out


# --------------------------------------------------------------------------- row 5: one run per folder
def test_a_new_run_into_a_finished_runs_folder_is_refused_unless_overwrite(finished_run, synthetic_cifar_dir,
                                                                           capsys):
    before = {name: (finished_run / name).read_bytes() for name in ("checkpoint.npz", "metrics.json")}
    argv = ["--data_dir", synthetic_cifar_dir, "--max_steps", 2, *TINY, "--seed", 7, "--out_dir", finished_run]
    status, err = _status(argv, capsys)
    assert status == 2 and "Traceback" not in err
    assert len(_error_lines(err)) == 1 and "already holds a run" in err and "--overwrite" in err, err
    assert {name: (finished_run / name).read_bytes() for name in before} == before
    status, err = _status([*argv, "--overwrite"], capsys)
    assert status == 0, err
    assert json.loads((finished_run / "metrics.json").read_text())["flags"]["seed"] == 7


def test_a_second_run_into_a_folder_another_run_holds_is_refused(synthetic_cifar_dir, tmp_path, capsys):
    """The folder is held (as a running training holds it: an exclusive flock on the folder)."""
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "busy"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        status, err = _status(["--data_dir", synthetic_cifar_dir, "--max_steps", 2, *TINY, "--out_dir", out], capsys)
    finally:
        os.close(fd)
    assert status == 2 and "another run is writing into this folder" in err, err
    assert list(out.iterdir()) == []


def test_two_processes_into_one_folder_leave_one_runs_files(synthetic_cifar_dir, tmp_path):
    """A real training holds its folder for the whole run; a second one started meanwhile is refused."""
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "fastmlp.train", "--data_dir", str(synthetic_cifar_dir),
                              *TINY, "--max_steps", "100000", "--out_dir", str(out)], env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(out / "checkpoint.npz", first)
        second = subprocess.run([sys.executable, "-m", "fastmlp.train", "--data_dir", str(synthetic_cifar_dir),
                                 *TINY, "--max_steps", "2", "--seed", "3", "--out_dir", str(out), "--overwrite"],
                                env=_env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and "another run is writing into this folder" in second.stderr, second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    assert not (out / "metrics.json").exists()  # the second run wrote nothing


# --------------------------------------------------------------------------- row 8: I/O errors
@pytest.mark.parametrize("where", ["an existing file", "below a file", "a 300-character name"])
def test_an_out_dir_that_cannot_be_made_is_one_io_error_line(where, synthetic_cifar_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = {"an existing file": tmp_path / "file", "below a file": tmp_path / "file" / "run",
           "a 300-character name": tmp_path / ("r" * 300)}[where]
    reason = {"an existing file": os.strerror(errno.EEXIST), "below a file": os.strerror(errno.ENOTDIR),
              "a 300-character name": os.strerror(errno.ENAMETOOLONG)}[where]
    status, err = _status(["--data_dir", synthetic_cifar_dir, "--max_steps", 2, *TINY, "--out_dir", out], capsys)
    assert status == 74 and "Traceback" not in err, err
    assert _error_lines(err) == [f"error: {str(out)!r}: {reason}"]


def test_a_full_disk_is_an_io_error_that_keeps_the_last_good_checkpoint(synthetic_cifar_dir, tmp_path, capsys,
                                                                        monkeypatch):
    """ENOSPC while the second checkpoint is written (half of it on disk): exit 74, the first one stays whole."""
    import fastmlp.atomic

    real_savez, calls = np.savez, []

    def savez_onto_a_full_disk(file, **arrays):
        calls.append(1)
        if len(calls) < 2:
            return real_savez(file, **arrays)
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), file.name)

    monkeypatch.setattr(fastmlp.atomic.np, "savez", savez_onto_a_full_disk)
    out = tmp_path / "run"
    status, err = _status(["--data_dir", synthetic_cifar_dir, "--max_steps", 4, *TINY, "--out_dir", out], capsys)
    monkeypatch.undo()
    assert status == 74 and "Traceback" not in err, err
    [line] = _error_lines(err)
    assert str(out) in line and os.strerror(errno.ENOSPC) in line, line
    assert _temporaries(out) == []
    with np.load(out / "checkpoint.npz") as npz:  # step 0's checkpoint, whole
        assert json.loads(str(npz["meta"]))["step"] == 0
    status, err = _status(["--resume", out], capsys)
    assert status == 0, err


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal's kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_a_file_size_limit_is_an_io_error_line(synthetic_cifar_dir, tmp_path, capsys):
    """``ulimit -f``: the checkpoint (~100 kB) cannot be written: EFBIG, exit 74, nothing half-written."""
    status, err = _status(["--data_dir", synthetic_cifar_dir, "--max_steps", 2, *TINY, "--out_dir",
                           tmp_path / "warm"], capsys)  # the decoded-array cache is written now, not under the limit
    assert status == 0, err
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "fastmlp.train", "--data_dir", str(synthetic_cifar_dir), *TINY,
                           "--max_steps", "2", "--out_dir", str(out)], env=_env(), capture_output=True, text=True,
                          timeout=300, preexec_fn=_limit_file_size)
    assert proc.returncode == 74 and "Traceback" not in proc.stderr, proc.stderr
    [line] = _error_lines(proc.stderr)
    assert str(out) in line and os.strerror(errno.EFBIG) in line, line
    assert _temporaries(out) == [] and not (out / "checkpoint.npz").exists()


def test_an_unreadable_data_folder_is_one_io_error_line(synthetic_cifar_dir, tmp_path, capsys, monkeypatch):
    """Every read below the data folder is refused (as for another user's 0700 folder: tests may run as root)."""
    import builtins
    import io

    data = shutil.copytree(synthetic_cifar_dir, tmp_path / "data")
    real_open, real_io_open = builtins.open, io.open

    def refusing(opener):
        def open_(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and str(data) in os.fsdecode(file):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(file))
            return opener(file, *args, **kwargs)
        return open_

    monkeypatch.setattr(builtins, "open", refusing(real_open))
    monkeypatch.setattr(io, "open", refusing(real_io_open))
    status, err = _status(["--data_dir", data, "--max_steps", 2, *TINY, "--out_dir", tmp_path / "run"], capsys)
    monkeypatch.undo()
    assert status == 74 and "Traceback" not in err, err
    [line] = _error_lines(err)
    assert str(data) in line and os.strerror(errno.EACCES) in line, line


# --------------------------------------------------------------------------- row 9: SIGTERM, SIGHUP
def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 240
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"no {path.name} after 240 s"
        time.sleep(0.05)


SIGNALS = {"SIGTERM": (signal.SIGTERM, 143), "SIGHUP": (signal.SIGHUP, 129), "SIGINT": (signal.SIGINT, 130)}


@pytest.mark.parametrize("module, checkpoint", [("fastmlp.train", "checkpoint.npz"),
                                                ("torch_models.train_mlp", "checkpoint.pt")])
@pytest.mark.parametrize("name", list(SIGNALS))
def test_a_signal_ends_a_run_as_ctrl_c_does(name, module, checkpoint, synthetic_cifar_dir, tmp_path):
    if module.startswith("torch"):
        pytest.importorskip("torch")
    signum, status = SIGNALS[name]
    out = tmp_path / "run"
    extra = ["--device", "cpu"] if module.startswith("torch") else []
    proc = subprocess.Popen([sys.executable, "-m", module, "--data_dir", str(synthetic_cifar_dir), *TINY, *extra,
                             "--max_steps", "100000", "--out_dir", str(out)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(out / checkpoint, proc)
    time.sleep(0.3)
    proc.send_signal(signum)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == status, err
    assert "Traceback" not in err and f"--resume {out}" in err, err
    assert _temporaries(out) == []


def test_the_next_run_in_a_folder_removes_a_killed_runs_temporaries(finished_run, capsys):
    stale = finished_run / ".checkpoint.npz.k1ll3d.tmp"
    stale.write_bytes(b"\0" * 1000)
    status, err = _status(["--resume", finished_run, "--max_steps", 6], capsys)
    assert status == 0, err
    assert _temporaries(finished_run) == []


# --------------------------------------------------------------------------- row 11: a data folder that is gone
def test_resume_never_recreates_the_checkpoints_missing_data_folder(synthetic_cifar_dir, tmp_path, capsys,
                                                                    monkeypatch):
    import urllib.request

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(urllib.request, "urlopen", no_download)
    data = shutil.copytree(synthetic_cifar_dir, tmp_path / "data")
    out = tmp_path / "run"
    status, err = _status(["--data_dir", data, "--max_steps", 2, *TINY, "--out_dir", out], capsys)
    assert status == 0, err
    shutil.rmtree(data)
    status, err = _status(["--resume", out, "--max_steps", 4], capsys)
    assert status == 2 and "--data_dir" in err and str(data) in err, err
    assert not data.exists()
    status, err = _status(["--resume", out, "--max_steps", 4, "--data_dir", synthetic_cifar_dir], capsys)
    assert status == 0, err


# --------------------------------------------------------------------------- row 14: crafted checkpoints
def _rewrite(path: Path, change) -> None:
    """Rewrite the checkpoint at ``path`` with ``change(arrays, meta)`` applied."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays["meta"]))
    text = change(arrays, meta)
    arrays["meta"] = np.array(text if isinstance(text, str) else json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


CRAFTED = {
    "meta nested 100,000 deep": (lambda a, m: json.dumps(m)[:-1] + ', "x": ' + _nested(100_000) + "}", "nests"),
    "data_state nested 600 deep": (lambda a, m: json.dumps(m).replace('"data_state": {', '"data_state": {"x": '
                                                                      + _nested(600) + ", ", 1), "nests"),
    "Adam beta1 5": (lambda a, m: a.update({"optim/beta1": np.array(5.0)}), "optim/beta1"),
    "Adam eps NaN": (lambda a, m: a.update({"optim/eps": np.array(float("nan"))}), "optim/eps"),
    "NaN weights": (lambda a, m: a["model/layers.0.weight"].__setitem__((0, 0), np.nan), "NaN"),
    "a string in a curve row": (lambda a, m: m["rows"][-1].update(train_loss="oops"), "train_loss"),
}


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_a_crafted_checkpoint_is_refused_as_corrupt_before_training(kind, synthetic_cifar_dir, tmp_path, capsys):
    out = tmp_path / "run"
    status, err = _status(["--data_dir", synthetic_cifar_dir, "--max_steps", 2, *TINY, "--optimizer", "adam",
                           "--out_dir", out], capsys)
    assert status == 0, err
    (out / "metrics.json").unlink()
    change, words = CRAFTED[kind]
    _rewrite(out / "checkpoint.npz", change)
    crafted = (out / "checkpoint.npz").read_bytes()
    status, err = _status(["--resume", out, "--max_steps", 4], capsys)
    assert status == 2 and "Traceback" not in err and "RecursionError" not in err, err
    assert "corrupt checkpoint" in err and words in err and "--learning_rate" not in err, err
    assert (out / "checkpoint.npz").read_bytes() == crafted and not (out / "metrics.json").exists()


def _nan_weight(state):
    next(iter(state["model"].values())).view(-1)[0] = float("nan")


TORCH_CRAFTED = {
    "NaN weights": (_nan_weight, "NaN"),
    "momentum 5": (lambda state: state["optimizer"]["param_groups"][0].update(momentum=5.0), "'momentum'"),
    "a string in a curve row": (lambda state: state["curves"][-1].update(train_loss="oops"), "train_loss"),
    "nested 100 deep": (lambda state: state["flags"].update(x=json.loads(_nested(100))), "nest"),
}


@pytest.mark.parametrize("kind", list(TORCH_CRAFTED))
def test_a_crafted_torch_checkpoint_is_refused_as_corrupt(kind, synthetic_cifar_dir, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from torch_models import train_mlp

    out = tmp_path / "run"
    argv = ["--device", "cpu", "--data_dir", str(synthetic_cifar_dir), "--dnn_hidden_units", "8", "--max_steps",
            "2", "--eval_freq", "1", "--optimizer", "momentum", "--quiet", "--threads", "1"]
    assert train_mlp.main([*argv, "--out_dir", str(out)]) == 0
    (out / "metrics.json").unlink()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    change, words = TORCH_CRAFTED[kind]
    change(state)
    torch.save(state, out / "checkpoint.pt")
    with pytest.raises(SystemExit) as exited:
        train_mlp.main(["--resume", str(out), "--max_steps", "4"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err and "RecursionError" not in err, err
    assert "corrupt checkpoint" in err and words in err, err
    assert not (out / "metrics.json").exists()


# --------------------------------------------------------------------------- row 15: sizes no machine holds
@pytest.mark.parametrize("flag, value", [("--batch_size", 10**12), ("--dnn_hidden_units", 10**9)])
def test_a_size_no_machine_holds_is_refused_naming_it(flag, value, synthetic_cifar_dir, tmp_path, capsys):
    argv = ["--data_dir", synthetic_cifar_dir, "--max_steps", 2, *TINY, flag, value, "--out_dir", tmp_path / "run"]
    status, err = _status(argv, capsys)
    assert status == 2 and "Traceback" not in err and "MemoryError" not in err, err
    [line] = _error_lines(err)
    assert flag in line and str(value) in line and "memory" in line, line
    assert not (tmp_path / "run").exists()


def test_the_estimator_refuses_a_layer_no_machine_holds():
    from fastmlp import MLPClassifier

    x, y = np.zeros((4, 3)), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="1000000000.*memory"):
        MLPClassifier(hidden_layer_sizes=(10**9,)).fit(x, y)


def test_a_torch_trainer_refuses_a_size_no_machine_holds(synthetic_cifar_dir, tmp_path):
    pytest.importorskip("torch")
    proc = subprocess.run([sys.executable, "-m", "torch_models.train_mlp", "--data_dir", str(synthetic_cifar_dir),
                           "--dnn_hidden_units", str(10**9), "--max_steps", "2", "--device", "cpu", "--quiet",
                           "--out_dir", str(tmp_path / "run")], env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "--dnn_hidden_units '1000000000'" in proc.stderr and "memory" in proc.stderr


# --------------------------------------------------------------------------- row 16: non-UTF-8 paths
def test_an_out_dir_with_a_non_utf8_name_trains_and_resumes(synthetic_cifar_dir, tmp_path):
    out = os.fsdecode(os.fsencode(tmp_path) + b"/run-\xff")
    argv = [sys.executable, "-m", "fastmlp.train", "--data_dir", str(synthetic_cifar_dir), *TINY[:-3],
            "--max_steps", "2", "--out_dir", out]
    env = _env(PYTHONIOENCODING="utf-8")  # strict: an unescaped surrogate could not be printed
    first = subprocess.run(argv, env=env, capture_output=True, timeout=300)
    assert first.returncode == 0, first.stderr.decode(errors="replace")
    assert b"\\xff" in first.stdout  # the summary names the folder, its odd byte escaped
    assert os.path.exists(os.path.join(out, "checkpoint.npz"))
    again = subprocess.run([sys.executable, "-m", "fastmlp.train", "--resume", out, "--max_steps", "4", "--quiet"],
                           env=env, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr.decode(errors="replace")
    assert json.loads(Path(out, "metrics.json").read_text())["steps"] == 4


def test_a_run_ended_by_an_interrupt_leaves_no_temporary_file(tmp_path):
    """A signal can land after an atomic write made its temporary file but before its cleanup took
    charge of it; letting the folder go removes such a file, whatever ended the run."""
    from fastmlp.rundir import claimed_run_dir

    with pytest.raises(KeyboardInterrupt), claimed_run_dir(tmp_path / "run") as folder:
        (folder / ".checkpoint.pt.a1b2c3.tmp").write_bytes(b"\0" * 100)
        raise KeyboardInterrupt
    assert _temporaries(tmp_path / "run") == []
