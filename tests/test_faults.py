"""Fault injection for ``python -m fastmlp.train``: hostile, truncated and foreign checkpoints, and kill -9.

Every bad ``--resume`` file must end the same way: exit status 2, one ``error:`` message
naming the file, no traceback, and nothing of the file executed (``.npz`` members are
never unpickled: a payload that would create a marker file is tried in each place a
checkpoint holds arrays). A run killed with SIGKILL at random moments and resumed each
time must end with exactly the metrics and weights of an uninterrupted run.
"""
from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fastmlp import train as fm_train

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dnn_hidden_units", "8", "--batch_size", "50", "--eval_freq", "2", "--quiet"]


class Hostile:
    """Unpickling this creates the file ``marker``: proof that a pickle inside a checkpoint was run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _status(argv, capsys) -> tuple[int, str]:
    """``fastmlp.train.main(argv)`` -> (exit status, stderr); argparse's own errors exit through SystemExit."""
    try:
        status = fm_train.main([str(a) for a in argv])
    except SystemExit as exc:
        status = exc.code
    return status, capsys.readouterr().err


@pytest.fixture(scope="module")
def good_checkpoint(synthetic_cifar_dir, tmp_path_factory) -> dict:
    """The arrays of a real checkpoint (step 4 of a tiny run): the material the bad files are made of."""
    out = tmp_path_factory.mktemp("good") / "run"
    assert fm_train.main(["--data_dir", str(synthetic_cifar_dir), "--max_steps", "4", *TINY,
                          "--out_dir", str(out)]) == 0
    with np.load(out / "checkpoint.npz", allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _savez(path: Path, arrays: dict) -> Path:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def _meta(arrays: dict) -> dict:
    return json.loads(str(arrays["meta"]))


def _with_meta(arrays: dict, **changes) -> dict:
    meta = {k: v for k, v in {**_meta(arrays), **changes}.items() if v is not None}
    return {**arrays, "meta": np.array(json.dumps(meta))}


def _huge_header_member() -> bytes:
    """A .npy whose header declares 2**40 float64 values but that holds 8 bytes."""
    buf = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": (2**40,)}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + b"\0" * 8


def _bad_file(kind: str, good: dict, tmp: Path) -> Path:
    """Write the bad checkpoint ``kind`` into ``tmp`` and return its path."""
    path = tmp / "checkpoint.npz"
    whole = _savez(tmp / "whole.npz", good).read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "truncated":
        path.write_bytes(whole[: len(whole) // 2])
    elif kind == "last byte cut":
        path.write_bytes(whole[:-1])
    elif kind == "flipped bytes":  # in the middle of the first layer's weights: a CRC error
        corrupt = bytearray(whole)
        at = whole.index(b"model/layers.0.weight.npy") + 4096
        corrupt[at:at + 8] = bytes(b ^ 0xFF for b in corrupt[at:at + 8])
        path.write_bytes(bytes(corrupt))
    elif kind == "another program's npz":
        _savez(path, {"x": np.ones(3), "y": np.arange(4)})
    elif kind == "meta not JSON":
        _savez(path, {**good, "meta": np.array("hello")})
    elif kind == "meta a JSON list":
        _savez(path, {**good, "meta": np.array("[1, 2]")})
    elif kind == "no RNG state":  # KeyError before
        _savez(path, _with_meta(good, numpy_rng=None))
    elif kind == "step a string":
        _savez(path, _with_meta(good, step="4"))
    elif kind == "rows not rows":
        _savez(path, _with_meta(good, rows=[1, 2]))
    elif kind == "missing data array":  # the JSON names an array the file lacks
        _savez(path, {k: v for k, v in good.items() if k != "data/permutation"})
    elif kind == "RNG keys of another type":
        _savez(path, {**good, "rng/keys": good["rng/keys"].astype(np.float64)})
    elif kind == "another network's weights":  # same flags, other layer names: a restore error
        renamed = {k.replace("layers.0", "layers.9"): v for k, v in good.items()}
        _savez(path, renamed)
    elif kind == "compressed":
        with open(path, "wb") as f:
            np.savez_compressed(f, **good)
    elif kind == "header declares a huge array":
        with zipfile.ZipFile(path, "w") as archive:
            for name, value in good.items():
                buf = io.BytesIO()
                np.save(buf, value)
                archive.writestr(f"{name}.npy", buf.getvalue())
            archive.writestr("model/extra.npy", _huge_header_member())
    else:
        raise AssertionError(kind)
    return path


BAD_FILES = {
    # kind: words of the message
    "empty": "not a readable .npz checkpoint",
    "random bytes": "not a readable .npz checkpoint",
    "truncated": "not a readable .npz checkpoint",
    "last byte cut": "not a readable .npz checkpoint",
    "flipped bytes": "not a readable .npz checkpoint",
    "another program's npz": "no 'meta' entry",
    "meta not JSON": "'meta' is not JSON",
    "meta a JSON list": "'meta' is not a JSON object",
    "no RNG state": "no NumPy RNG state",
    "step a string": "'step' is '4'",
    "rows not rows": "'rows' is not a list of curve rows",
    "missing data array": "data/permutation",
    "RNG keys of another type": "no MT19937 keys",
    "another network's weights": "its state does not fit this run",
    "compressed": "is compressed",
    "header declares a huge array": "declares 8796093022336 bytes, it has 136",
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_bad_checkpoint_is_one_clear_error(kind, good_checkpoint, synthetic_cifar_dir, tmp_path, capsys):
    path = _bad_file(kind, good_checkpoint, tmp_path)
    status, err = _status(["--resume", path, "--max_steps", 8, "--data_dir", synthetic_cifar_dir], capsys)
    assert status == 2, err
    assert "Traceback" not in err
    assert "error: " in err and str(path) in err and BAD_FILES[kind] in err, err
    assert not (tmp_path / "metrics.json").exists()


HOSTILE_PLACES = ["meta", "model/layers.0.weight", "optim/lr", "data/permutation", "rng/keys"]


def test_the_hostile_payload_is_live(tmp_path):
    """Control: the payload does create its marker when a pickle is loaded, so the next test can fail."""
    marker = tmp_path / "marker"
    path = _savez(tmp_path / "h.npz", {"meta": np.array([Hostile(marker)], dtype=object)})
    assert not marker.exists()
    with np.load(path, allow_pickle=True) as npz:
        npz["meta"]
    assert marker.exists()


@pytest.mark.parametrize("place", HOSTILE_PLACES)
def test_a_pickle_inside_a_checkpoint_is_never_run(place, good_checkpoint, synthetic_cifar_dir, tmp_path,
                                                    capsys):
    marker = tmp_path / "marker"
    path = _savez(tmp_path / "checkpoint.npz", {**good_checkpoint,
                                                  place: np.array([Hostile(marker)], dtype=object)})
    status, err = _status(["--resume", path, "--max_steps", 8, "--data_dir", synthetic_cifar_dir], capsys)
    assert status == 2 and "Traceback" not in err
    assert "holds Python objects" in err and str(path) in err, err
    assert not marker.exists()


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def test_the_command_line_refuses_a_hostile_checkpoint_without_a_traceback(good_checkpoint, tmp_path):
    """The real ``python -m fastmlp.train --resume`` process, on a folder whose checkpoint carries a pickle."""
    marker = tmp_path / "marker"
    _savez(tmp_path / "checkpoint.npz", {**good_checkpoint, "meta": np.array([Hostile(marker)], dtype=object)})
    proc = subprocess.run([sys.executable, "-m", "fastmlp.train", "--resume", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "error: " in proc.stderr and "holds Python objects" in proc.stderr
    assert not marker.exists()


# --------------------------------------------------------------------------- kill -9, then --resume
RESULT_KEYS = ("test_accuracy", "test_loss", "best_test_accuracy", "validation_accuracy", "validation_loss",
               "best_validation_accuracy", "steps")


def _train_process(argv: list[str], module: str = "fastmlp.train") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *argv], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_after_progress(proc: subprocess.Popen, checkpoint: Path, delay: float) -> bool:
    """Wait until ``proc`` writes a new checkpoint, then ``delay`` s more, then SIGKILL it; False if it ended first."""
    before = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if checkpoint.exists() and checkpoint.stat().st_mtime_ns != before:
            break
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return True


def _whole_and_killed_runs(tmp_path: Path, flags: list[str], *, module: str, checkpoint_name: str, kills: int,
                           seed: int, max_delay: float) -> tuple[Path, Path, list[int]]:
    """Run ``flags`` once uninterrupted, and once killed ``kills`` times at seeded random moments (each
    ``uniform(0, max_delay)`` s after a fresh checkpoint), resumed with ``--resume`` after each kill.

    Returns the two output folders and the steps of the checkpoints the kills left.
    """
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = _train_process([*flags, "--out_dir", str(whole)], module)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    rng, steps = random.Random(seed), []
    argv = [*flags, "--out_dir", str(killed)]
    for _ in range(kills):
        if not _kill_after_progress(_train_process(argv, module), killed / checkpoint_name,
                                    rng.uniform(0.0, max_delay)):
            break
        steps.append(_checkpoint_step(killed / checkpoint_name))
        argv = ["--resume", str(killed), "--threads", "1", "--quiet"]
    assert steps, "no kill landed before the run ended"
    proc = _train_process(argv, module)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    return whole, killed, steps


def _checkpoint_step(path: Path) -> int:
    if path.suffix == ".npz":
        return json.loads(str(np.load(path)["meta"]))["step"]
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def _same_results(whole: Path, killed: Path, steps: list[int]) -> None:
    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert {k: a.get(k) for k in RESULT_KEYS} == {k: b.get(k) for k in RESULT_KEYS}, f"killed at steps {steps}"
    assert (whole / "curves.csv").read_text() == (killed / "curves.csv").read_text()


def test_kill_9_at_random_moments_then_resume_ends_as_an_uninterrupted_run(synthetic_cifar_dir, tmp_path):
    """SIGKILL three times at random moments of training (seeded, so a failure can be replayed), --resume
    after each: the final metrics, curves and checkpoint equal those of a run never interrupted."""
    flags = ["--data_dir", str(synthetic_cifar_dir), "--dnn_hidden_units", "64", "--optimizer", "momentum",
             "--augment", "--validation_size", "100", "--max_steps", "600", "--eval_freq", "20",
             "--batch_size", "50", "--threads", "1", "--quiet"]
    whole, killed, steps = _whole_and_killed_runs(tmp_path, flags, module="fastmlp.train",
                                                  checkpoint_name="checkpoint.npz", kills=3, seed=11, max_delay=0.4)
    _same_results(whole, killed, steps)
    with np.load(whole / "checkpoint.npz") as x, np.load(killed / "checkpoint.npz") as y:
        assert sorted(x.files) == sorted(y.files)
        # rng/keys: NumPy's global generator, which no fastmlp code draws from; each process seeds it
        # afresh, so only a resumed process carries its first process's state.
        assert [k for k in x.files if k not in ("meta", "rng/keys") and not np.array_equal(x[k], y[k])] == []


def test_kill_9_of_a_torch_trainer_then_resume_ends_as_an_uninterrupted_run(synthetic_cifar_dir, tmp_path):
    """The same for ``torch_models.train_mlp`` on the CPU, whose --resume also promises an exact continuation:
    SIGKILL twice at seeded random moments after a fresh checkpoint.pt, --resume after each."""
    pytest.importorskip("torch")
    flags = ["--data_dir", str(synthetic_cifar_dir), "--dnn_hidden_units", "64", "--optimizer", "momentum",
             "--dropout", "0.1", "--validation_size", "100", "--max_steps", "400", "--eval_freq", "20",
             "--batch_size", "50", "--device", "cpu", "--threads", "1", "--quiet"]
    whole, killed, steps = _whole_and_killed_runs(tmp_path, flags, module="torch_models.train_mlp",
                                                  checkpoint_name="checkpoint.pt", kills=2, seed=5, max_delay=0.3)
    _same_results(whole, killed, steps)
