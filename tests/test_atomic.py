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
