"""fastmlp.reading: one bounded reader of regular files, and the three places that read through it.

A FIFO would block an ordinary read for ever, so every FIFO case runs in a child
process with a timeout: a hang fails the test instead of stopping the suite.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fastmlp.reading import open_regular_file, read_regular_file

HANG_TIMEOUT = 120  # generous: the machine may be busy; a hang lasts for ever


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _run_child(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; a child still blocked after HANG_TIMEOUT fails the test."""
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              timeout=HANG_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the read hung on a FIFO (killed after {HANG_TIMEOUT} s):\n{code}")


def test_a_small_regular_file_is_read_whole(tmp_path):
    path = tmp_path / "f.json"
    path.write_bytes(b"x" * 100)
    assert read_regular_file(path, limit=100) == b"x" * 100  # exactly the limit is fine
    with open_regular_file(path) as f:
        assert f.read() == b"x" * 100


def test_a_file_over_the_limit_is_refused_naming_path_limit_and_size(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b"x" * 101)
    before = _open_fds()
    with pytest.raises(ValueError) as info:
        read_regular_file(path, limit=100, what="--grid file")
    assert str(info.value) == f"--grid file {str(path)!r} holds 101 bytes, more than the limit of 100"
    assert _open_fds() == before  # the descriptor was closed


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_fifos_and_devices_are_refused_unread(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    before = _open_fds()
    for path, kind in ((fifo, "a FIFO"), ("/dev/null", "a character device")):
        with pytest.raises(ValueError, match=f"^cache file '{path}' is {kind}, not a regular file$"):
            read_regular_file(path, limit=10, what="cache file")
    with pytest.raises(IsADirectoryError):
        read_regular_file(tmp_path, limit=10)
    assert _open_fds() == before


def test_a_symbolic_link_is_followed_unless_told_not_to(tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"data")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert read_regular_file(link, limit=10) == b"data"
    with pytest.raises(ValueError, match=f"file '{link}' is a symbolic link, not a regular file"):
        read_regular_file(link, limit=10, follow_symlinks=False)


# --------------------------------------------------------------------------- the three callers


def test_a_fifo_as_a_data_batch_file_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "data_batch_1"
    os.mkfifo(fifo)
    done = _run_child(f"""
        from fastmlp import data
        try:
            data.read_batch({str(fifo)!r})
        except data.DataError as exc:
            print("refused:", exc)
    """)
    assert f"refused: data file {str(fifo)!r} is a FIFO, not a regular file" in done.stdout, done.stderr


def test_a_fifo_as_a_grid_or_space_file_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "grid.json"
    os.mkfifo(fifo)
    done = _run_child(f"""
        from fastmlp.search.space import parse_grid, parse_space
        for parse in (parse_grid, parse_space):
            try:
                parse({str(fifo)!r}, model="numpy")
            except ValueError as exc:
                print("refused:", exc)
    """)
    assert done.stdout.count("is a FIFO, not a regular file") == 2, done.stdout + done.stderr


_CACHE_CHILD = """
import sys
from pathlib import Path

import numpy as np

from fastmlp.data import cache

calls = []


def decode():
    calls.append(1)
    rng = np.random.default_rng(0)
    return {"x_train": rng.integers(0, 256, (10, 3, 32, 32), dtype=np.uint8), "y_train": np.arange(10),
            "x_test": rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8), "y_test": np.arange(4),
            "label_names": [f"class {i}" for i in range(10)]}


source, root = Path(sys.argv[1]), Path(sys.argv[2])
data = cache.cached_decode(source, [source], decode, root)
assert np.array_equal(data["x_test"], decode()["x_test"])
print("decoded:", len(calls) - 1)
"""


def _cached_decode_in_child(tmp_path: Path) -> str:
    """Run cached_decode of one small source in a child (HANG_TIMEOUT); what it printed: how often it decoded."""
    script, source = tmp_path / "cache_child.py", tmp_path / "source.bin"
    if not script.exists():
        script.write_text(_CACHE_CHILD)
        source.write_bytes(b"the source's bytes")
    try:
        done = subprocess.run([sys.executable, str(script), str(source), str(tmp_path / "cache")],
                              capture_output=True, text=True, timeout=HANG_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"cached_decode hung (killed after {HANG_TIMEOUT} s)")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _cache_file(tmp_path: Path, name: str) -> Path:
    decoded = tmp_path / "cache" / "decoded"
    if name == "record":
        (record,) = (decoded / "sources").iterdir()
        return record
    (entry,) = [p for p in decoded.iterdir() if p.is_dir() and p.name != "sources"]
    return entry / name


@pytest.mark.parametrize("name, decodes", [("record", 0), ("meta.json", 1), ("x_test.npy", 1)])
def test_a_fifo_in_the_cache_is_refused_without_hanging(tmp_path, name, decodes):
    assert _cached_decode_in_child(tmp_path) == "decoded: 1"
    fifo = _cache_file(tmp_path, name)
    fifo.unlink()
    os.mkfifo(fifo)
    # The record only points at the entry: without it the source is hashed again and the entry found.
    assert _cached_decode_in_child(tmp_path) == f"decoded: {decodes}"
    assert _cached_decode_in_child(tmp_path) == "decoded: 0"  # written again whole


def test_an_oversized_cache_meta_is_refused_and_decoded_again(tmp_path):
    assert _cached_decode_in_child(tmp_path) == "decoded: 1"
    meta = _cache_file(tmp_path, "meta.json")
    with open(meta, "a") as f:
        f.write(" " * (2 << 20))  # still the same JSON, but more than a meta.json has any need for
    json.loads(meta.read_text())
    assert _cached_decode_in_child(tmp_path) == "decoded: 1"
    assert meta.stat().st_size < 1 << 20


def test_a_symbolic_link_in_the_cache_is_not_followed(tmp_path):
    assert _cached_decode_in_child(tmp_path) == "decoded: 1"
    meta = _cache_file(tmp_path, "meta.json")
    moved = tmp_path / "elsewhere.json"
    meta.rename(moved)
    meta.symlink_to(moved)
    assert _cached_decode_in_child(tmp_path) == "decoded: 1"
    assert not meta.is_symlink()
