"""``fastmlp.atomic``: a file is replaced whole or not at all."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fastmlp.atomic import atomic_path, atomic_savez, atomic_write_json, atomic_write_text


def test_writes_land_whole_with_the_usual_mode_and_no_temporaries(tmp_path):
    target = tmp_path / "sub" / "out.txt"  # the folder is created
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    atomic_write_json(tmp_path / "m.json", {"b": np.float32(0.5), "a": np.arange(2)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": [0, 1], "b": 0.5}
    atomic_savez(tmp_path / "c.npz", x=np.ones(3))
    with np.load(tmp_path / "c.npz") as npz:
        assert npz["x"].tolist() == [1.0, 1.0, 1.0]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["c.npz", "m.json", "out.txt"]


def test_an_error_while_writing_leaves_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with pytest.raises(TypeError, match="cannot write object to JSON"):
        atomic_write_json(target, {"x": object()})
    assert target.read_text() == "old"


def test_the_folder_is_flushed_after_the_rename(tmp_path, monkeypatch):
    """The rename is a change of the folder: it is on disk only once the folder is flushed after it."""
    import stat

    from fastmlp import atomic

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    atomic_write_text(tmp_path / "out.txt", "x")
    assert events == ["fsync file", "rename", "fsync folder"]


def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_json_is_strict_nan_and_infinities_become_null(tmp_path):
    obj = {"nan": float("nan"), "inf": np.float32("inf"), "list": [1.5, -float("inf")],
           "array": np.array([np.nan, 2.0]), "fine": np.float64(0.25), "n": np.int64(3), "flag": np.bool_(True)}
    atomic_write_json(tmp_path / "m.json", obj)
    assert _strict_json((tmp_path / "m.json").read_text()) == {
        "nan": None, "inf": None, "list": [1.5, None], "array": [None, 2.0], "fine": 0.25, "n": 3, "flag": True}


def test_metrics_json_of_a_run_log_is_strict(tmp_path):
    from fastmlp.runlog import RunLog

    log = RunLog(tmp_path, {"learning_rate": 0.1})
    log.record(0, test_loss=2.3, test_accuracy=0.1)
    log.finish(test_loss=float("nan"), wall_seconds=float("inf"))
    metrics = _strict_json((tmp_path / "metrics.json").read_text())
    assert metrics["test_loss"] is None and metrics["wall_seconds"] is None
    assert metrics["best_test_accuracy"] == 0.1
