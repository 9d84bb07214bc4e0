"""fastmlp.data: reading, safety, source resolution, download, batching, resume, preprocessing."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import pickle
import stat
import struct
import threading
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from _cifar_synth import (
    make_synthetic_cifar,
    py2_pickle_dict,
    tar_member,
    truncate_file,
    write_cifar_archive,
    write_cifar_folder,
)
from fastmlp import data as D
from fastmlp.images import ImageBatch
from fastmlp.data import cache as C
from fastmlp.data import files as F
from fastmlp.data import sources as S
from fastmlp.data.order import EpochOrder

ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")


def assert_same_data(loaded: dict, expected: dict) -> None:
    for key in ARRAY_KEYS:
        assert loaded[key].dtype == expected[key].dtype, key
        np.testing.assert_array_equal(loaded[key], expected[key], err_msg=key)
    assert loaded["label_names"] == list(D.LABEL_NAMES)


def cache_leftovers(cache: Path) -> list[str]:
    """The decoded-array entries under cache/decoded (temporary folders too; none after a failed load)."""
    decoded = cache / "decoded"
    return sorted(p.name for p in decoded.iterdir() if p.name != "sources") if decoded.exists() else []


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything tries to open a URL."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected download attempt: {args}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# --------------------------------------------------------------------------- reading


def test_reads_synthetic_folder(synthetic_cifar_dir, no_network):
    loaded = D.load_cifar10(synthetic_cifar_dir)
    assert loaded["x_train"].shape == (1000, 3, 32, 32)
    assert loaded["x_test"].shape == (200, 3, 32, 32)
    assert_same_data(loaded, make_synthetic_cifar())
    # The batches folder itself is accepted as data_dir too.
    assert_same_data(D.load_cifar10(synthetic_cifar_dir / D.FOLDER_NAME), make_synthetic_cifar())


def test_batch_pickles_read_like_python2_originals(synthetic_cifar_dir):
    # The synthetic files must exercise the real format: str keys with latin1, bytes keys with bytes.
    path = synthetic_cifar_dir / D.FOLDER_NAME / "data_batch_1"
    with open(path, "rb") as f:
        assert "data" in pickle.load(f, encoding="latin1")
    with open(path, "rb") as f:
        assert b"data" in pickle.load(f, encoding="bytes")


def test_archive_is_decoded_once_into_the_cache(synthetic_cifar_archive, tmp_path, monkeypatch, no_network):
    cache = tmp_path / "cache"
    expected = make_synthetic_cifar()
    # The archive's md5 differs from the official one: only downloads are checked.
    assert hashlib.md5(synthetic_cifar_archive.read_bytes()).hexdigest() != D.CIFAR10_MD5
    with monkeypatch.context() as later:  # the signature recorded long after the archive was written
        now = C.time.time_ns
        later.setattr(C.time, "time_ns", lambda: now() + 10 * C._RACY_NS)
        assert_same_data(D.load_cifar10(synthetic_cifar_archive, cache_dir=cache), expected)
    (entry,) = cache_leftovers(cache)
    assert entry == C.content_hash([synthetic_cifar_archive], "cifar10")  # keyed by content; no temporary folder left
    assert (cache / "decoded" / entry / "x_train.npy").is_file()

    def no_tar(*args, **kwargs):
        raise AssertionError("the archive was decoded a second time")

    def no_hash(*args, **kwargs):
        raise AssertionError("an unchanged archive was hashed again")

    monkeypatch.setattr(S.tarfile, "open", no_tar)
    monkeypatch.setattr(C, "content_hash", no_hash)
    # Second load, through the folder that holds the archive: from the cache, without reading the archive.
    assert_same_data(D.load_cifar10(synthetic_cifar_archive.parent, cache_dir=cache), expected)
    assert cache_leftovers(cache) == [entry]


def test_a_signature_recorded_right_after_a_write_is_not_trusted(tmp_path, monkeypatch):
    # File stamps come from a coarse clock: a file rewritten within the same tick keeps them.
    # A signature taken that soon after the last stamp is checked by hashing at the next load.
    cache, archive = tmp_path / "cache", tmp_path / "src" / D.ARCHIVE_NAME
    write_cifar_archive(archive, write_cifar_folder(tmp_path / "a", make_synthetic_cifar(20, 20, seed=1)))
    hashed = []
    content_hash = C.content_hash
    monkeypatch.setattr(C, "content_hash", lambda files, salt="": hashed.append(1) or content_hash(files, salt))
    D.load_cifar10(archive, cache_dir=cache)
    D.load_cifar10(archive, cache_dir=cache)  # racy: hashed again, same entry
    assert len(hashed) == 2 and len(cache_leftovers(cache)) == 1
    now = C.time.time_ns
    monkeypatch.setattr(C.time, "time_ns", lambda: now() + 10 * C._RACY_NS)
    D.load_cifar10(archive, cache_dir=cache)  # still racy when recorded: hashed, recorded anew, late enough
    D.load_cifar10(archive, cache_dir=cache)  # trusted
    assert len(hashed) == 3


def test_copy_of_a_known_archive_reuses_its_entry(synthetic_cifar_archive, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    D.load_cifar10(synthetic_cifar_archive, cache_dir=cache)
    copy = tmp_path / "copy" / D.ARCHIVE_NAME
    copy.parent.mkdir()
    copy.write_bytes(synthetic_cifar_archive.read_bytes())
    monkeypatch.setattr(S.tarfile, "open", lambda *a, **k: pytest.fail("a known content was decoded again"))
    assert_same_data(D.load_cifar10(copy, cache_dir=cache), make_synthetic_cifar())
    assert len(cache_leftovers(cache)) == 1


def test_replaced_archive_is_decoded_again(tmp_path):
    cache, archive = tmp_path / "cache", tmp_path / "src" / D.ARCHIVE_NAME
    write_cifar_archive(archive, write_cifar_folder(tmp_path / "a", make_synthetic_cifar(20, 20, seed=1)))
    D.load_cifar10(archive, cache_dir=cache)
    newer = make_synthetic_cifar(20, 20, seed=2)
    write_cifar_archive(archive, write_cifar_folder(tmp_path / "b", newer))
    os.utime(archive, ns=(1, 1))  # a different mtime even on coarse clocks
    assert_same_data(D.load_cifar10(archive, cache_dir=cache), newer)
    assert len(cache_leftovers(cache)) == 1  # the stale entry was removed


def test_cached_arrays_are_private_and_outlive_their_entry(tmp_path):
    # From the cache the arrays are copy-on-write mappings: writable, writes stay in
    # this process, and they stay readable after the entry is pruned.
    cache, archive = tmp_path / "cache", tmp_path / "src" / D.ARCHIVE_NAME
    first = make_synthetic_cifar(20, 20, seed=1)
    write_cifar_archive(archive, write_cifar_folder(tmp_path / "a", first))
    D.load_cifar10(archive, cache_dir=cache)  # decodes and writes the entry
    mapped = D.load_cifar10(archive, cache_dir=cache)  # from the entry
    assert all(type(mapped[name]) is np.ndarray and mapped[name].flags.writeable for name in C.ARRAY_NAMES)
    assert isinstance(mapped["x_train"].base, np.memmap)  # mapped, not read into fresh memory
    mapped["x_train"][0] = 255 - mapped["x_train"][0]
    assert_same_data(D.load_cifar10(archive, cache_dir=cache), first)  # the entry's file is unchanged
    write_cifar_archive(archive, write_cifar_folder(tmp_path / "b", make_synthetic_cifar(20, 20, seed=2)))
    os.utime(archive, ns=(1, 1))
    D.load_cifar10(archive, cache_dir=cache)  # a new entry; the old one is removed
    assert len(cache_leftovers(cache)) == 1
    np.testing.assert_array_equal(mapped["x_train"][1:], first["x_train"][1:])
    np.testing.assert_array_equal(mapped["x_train"][0], 255 - first["x_train"][0])
    np.testing.assert_array_equal(mapped["y_test"], first["y_test"])


def test_cache_is_read_where_files_cannot_be_mapped(synthetic_cifar_archive, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    D.load_cifar10(synthetic_cifar_archive, cache_dir=cache)
    memmap = np.memmap

    def no_mmap(*args, **kwargs):
        raise OSError(19, "No such device")  # what mmap says on a file system without it

    monkeypatch.setattr(C.np, "memmap", no_mmap)
    monkeypatch.setattr(S.tarfile, "open", lambda *a, **k: pytest.fail("the cached entry was decoded again"))
    loaded = D.load_cifar10(synthetic_cifar_archive, cache_dir=cache)
    assert_same_data(loaded, make_synthetic_cifar())
    assert loaded["x_train"].base is None or not isinstance(loaded["x_train"].base, memmap)


def test_archive_rewritten_in_place_with_same_size_and_mtime_is_not_served_stale(small_folder, tmp_path):
    cache, archive = tmp_path / "cache", write_cifar_archive(tmp_path / D.ARCHIVE_NAME, small_folder)
    D.load_cifar10(archive, cache_dir=cache)
    before = archive.stat()
    raw = bytearray(archive.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(b ^ 0xFF for b in raw[middle : middle + 64])
    with open(archive, "r+b") as f:  # same inode, same size
        f.write(raw)
    os.utime(archive, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the old mtime
    with pytest.raises(D.DataError, match=D.ARCHIVE_NAME):
        D.load_cifar10(archive, cache_dir=cache)


def test_damaged_bytes_in_a_stored_block_are_caught_by_the_gzip_check(small_folder, tmp_path):
    # Random pixels do not compress: gzip stores them as they are, so damage there decodes without a
    # deflate error and only the stream's CRC, at its very end (past the tar's end marker), tells.
    plain = tmp_path / "plain.tar"
    write_cifar_archive(tmp_path / "packed.tar.gz", small_folder)
    with gzip.open(tmp_path / "packed.tar.gz") as f:
        plain.write_bytes(f.read())
    archive = tmp_path / D.ARCHIVE_NAME
    with open(archive, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=0, mtime=0) as z:
        z.write(plain.read_bytes())
    D.load_cifar10(archive, cache_dir=tmp_path / "cache-a")  # whole: reads fine
    raw = bytearray(archive.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 8] = bytes(b ^ 0x55 for b in raw[middle : middle + 8])
    archive.write_bytes(raw)
    with pytest.raises(D.DataError, match="CRC check failed"):
        D.load_cifar10(archive, cache_dir=tmp_path / "cache-b")


def test_corrupt_cache_entry_is_decoded_again(synthetic_cifar_archive, tmp_path):
    cache = tmp_path / "cache"
    D.load_cifar10(synthetic_cifar_archive, cache_dir=cache)
    (entry,) = cache_leftovers(cache)
    truncate_file(cache / "decoded" / entry / "x_train.npy", 0.5)
    assert_same_data(D.load_cifar10(synthetic_cifar_archive, cache_dir=cache), make_synthetic_cifar())


def _load_in_thread(archive: Path, cache: Path) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def load() -> None:
        try:
            result["data"] = D.load_cifar10(archive, cache_dir=cache)
        except BaseException as exc:  # reported by the test, not lost in the thread
            result["error"] = exc

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    return thread, result


@pytest.mark.parametrize("name", ["x_train.npy", "meta.json"])
def test_a_fifo_in_a_cache_entry_does_not_hang_the_load(synthetic_cifar_archive, tmp_path, name):
    cache = tmp_path / "cache"
    D.load_cifar10(synthetic_cifar_archive, cache_dir=cache)
    (entry,) = cache_leftovers(cache)
    fifo = cache / "decoded" / entry / name
    fifo.unlink()
    os.mkfifo(fifo)
    thread, result = _load_in_thread(synthetic_cifar_archive, cache)
    thread.join(120)  # generous: the machine may be busy; a hang lasts forever
    hung = thread.is_alive()
    if hung and fifo.exists() and stat.S_ISFIFO(os.stat(fifo).st_mode):  # give a blocked reader its EOF
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(60)
    assert not hung, f"loading with a FIFO as the cached {name} hung"
    assert "error" not in result, result.get("error")
    assert_same_data(result["data"], make_synthetic_cifar())


def test_flipped_bytes_in_a_cached_array_are_detected(synthetic_cifar_archive, tmp_path):
    cache = tmp_path / "cache"
    D.load_cifar10(synthetic_cifar_archive, cache_dir=cache)
    (entry,) = cache_leftovers(cache)
    path = cache / "decoded" / entry / "x_train.npy"
    raw = bytearray(path.read_bytes())
    raw[5000:5064] = bytes(255 - b for b in raw[5000:5064])  # inside the pixels, past the .npy header
    path.write_bytes(bytes(raw))
    assert_same_data(D.load_cifar10(synthetic_cifar_archive, cache_dir=cache), make_synthetic_cifar())


@pytest.mark.parametrize("names", [[{"x": 1}] * 5, [{"x": 1}] * 10, list("abcde"), "airplane", None, [1] * 10])
def test_planted_class_names_in_a_cache_entry_are_not_served(synthetic_cifar_archive, tmp_path, names):
    cache = tmp_path / "cache"
    D.load_cifar10(synthetic_cifar_archive, cache_dir=cache)
    (entry,) = cache_leftovers(cache)
    meta_path = cache / "decoded" / entry / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "label_names": names}))
    assert D.load_cifar10(synthetic_cifar_archive, cache_dir=cache)["label_names"] == list(D.LABEL_NAMES)


def test_hostile_cache_record_cannot_name_a_folder_outside(synthetic_cifar_archive, tmp_path):
    cache = tmp_path / "cache"
    D.load_cifar10(synthetic_cifar_archive, cache_dir=cache)
    victim = tmp_path / "victim"
    victim.mkdir()
    (record,) = (cache / "decoded" / "sources").glob("*.json")
    saved = json.loads(record.read_text())
    record.write_text(json.dumps({**saved, "sha256": "../../victim"}))
    assert_same_data(D.load_cifar10(synthetic_cifar_archive, cache_dir=cache), make_synthetic_cifar())
    assert victim.is_dir()


def test_a_data_folder_whose_name_is_not_utf8_works(tmp_path, no_network):
    root = Path(os.fsdecode(os.fsencode(tmp_path) + b"/data\xff"))  # '\udcff' in Python's str
    expected = make_synthetic_cifar(10, 10, seed=7)
    write_cifar_archive(root / D.ARCHIVE_NAME, write_cifar_folder(tmp_path / "src", expected))
    for _ in range(2):  # decoded, then from the cache
        assert_same_data(D.load_cifar10(root, cache_dir=root / "cache\udcfe"), expected)
    with pytest.raises(D.DataNotFoundError) as info:
        D.load_cifar10(root / "missing", download=False)
    assert "data\udcff" in str(info.value)


def test_training_from_a_data_folder_whose_name_is_not_utf8(tmp_path):
    import subprocess
    import sys

    root = os.fsencode(tmp_path) + b"/data\xff"
    write_cifar_folder(os.fsdecode(root), make_synthetic_cifar(10, 10, seed=7))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "fastmlp.train", "--data_dir", root, "--max_steps", "2",
                           "--eval_freq", "2", "--quiet", "--out_dir", os.fsencode(tmp_path) + b"/out\xfe"],
                          env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert (tmp_path / os.fsdecode(b"out\xfe") / "metrics.json").is_file()


def test_folder_wins_over_archive(tmp_path, no_network):
    folder_data = make_synthetic_cifar(10, 10, seed=3)
    write_cifar_folder(tmp_path, folder_data)
    write_cifar_archive(tmp_path / D.ARCHIVE_NAME, write_cifar_folder(tmp_path / "other", make_synthetic_cifar(10, 10, seed=4)))
    assert_same_data(D.load_cifar10(tmp_path, cache_dir=tmp_path / "cache"), folder_data)
    files = F.source_files("folder", tmp_path / D.FOLDER_NAME)
    assert cache_leftovers(tmp_path / "cache") == [C.content_hash(files, "cifar10")]  # the folder's entry, not the archive's


# --------------------------------------------------------------------------- corrupt and hostile input


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    return write_cifar_folder(tmp_path_factory.mktemp("small"), make_synthetic_cifar(10, 10, seed=5))


def test_truncated_archive(small_folder, tmp_path):
    archive = truncate_file(write_cifar_archive(tmp_path / D.ARCHIVE_NAME, small_folder), 0.6)
    with pytest.raises(D.DataError, match=D.ARCHIVE_NAME):
        D.load_cifar10(archive, cache_dir=tmp_path / "cache")
    assert cache_leftovers(tmp_path / "cache") == []


def test_garbage_archive(tmp_path):
    archive = tmp_path / D.ARCHIVE_NAME
    archive.write_bytes(b"this is not a gzip file" * 100)
    with pytest.raises(D.DataError, match="not a gzip/tar archive"):
        D.load_cifar10(tmp_path, cache_dir=tmp_path / "cache")
    assert cache_leftovers(tmp_path / "cache") == []


def test_a_zero_filled_archive_fails_at_its_first_bytes(tmp_path, monkeypatch):
    archive = tmp_path / D.ARCHIVE_NAME
    with open(archive, "wb") as f:
        f.truncate(200 * 2**20)  # sparse: 200 MiB of zeros that take no disk
    monkeypatch.setattr(S.tarfile, "open", lambda *a, **k: pytest.fail("tarfile probed a file of zeros"))
    with pytest.raises(D.DataError, match=r"is not a gzip/tar archive: it starts with '00 00 00 00"):
        D.load_cifar10(tmp_path, cache_dir=tmp_path / "cache")
    assert cache_leftovers(tmp_path / "cache") == []


@pytest.mark.parametrize("mode", ["w:", "w:bz2", "w:xz"])
def test_other_tar_formats_are_read(small_folder, tmp_path, mode):
    archive = tmp_path / D.ARCHIVE_NAME
    with tarfile.open(archive, mode, format=tarfile.PAX_FORMAT) as tar:
        tar.add(small_folder / D.FOLDER_NAME, arcname=D.FOLDER_NAME)
    assert_same_data(D.load_cifar10(archive, cache_dir=tmp_path / "cache"), make_synthetic_cifar(10, 10, seed=5))


def test_archive_with_truncated_batch_leaves_no_cache(small_folder, tmp_path):
    broken = write_cifar_folder(tmp_path / "broken", make_synthetic_cifar(10, 10, seed=5))
    truncate_file(broken / D.FOLDER_NAME / "data_batch_3", 0.5)
    archive = write_cifar_archive(tmp_path / D.ARCHIVE_NAME, broken)
    with pytest.raises(D.DataError, match=r"cifar-10-batches-py/data_batch_3.*truncated or corrupt"):
        D.load_cifar10(archive, cache_dir=tmp_path / "cache")
    assert cache_leftovers(tmp_path / "cache") == []


def test_archive_missing_a_batch(small_folder, tmp_path):
    archive = write_cifar_archive(tmp_path / D.ARCHIVE_NAME, small_folder, skip=["test_batch"])
    with pytest.raises(D.DataError, match="test_batch"):
        D.load_cifar10(archive, cache_dir=tmp_path / "cache")
    assert cache_leftovers(tmp_path / "cache") == []


def _declared_bomb(path: Path, name: str, size: int) -> Path:
    """A .tar.gz whose member ``name`` declares ``size`` bytes (as a decompression bomb's header does) and
    holds a few kilobytes of zeros: the header alone must stop the reader."""
    import gzip

    header = tarfile.TarInfo(name)
    header.size = size
    path.write_bytes(gzip.compress(header.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 65536))
    return path


@pytest.mark.parametrize("name, size, words", [
    ("cifar-10-batches-py/padding", 2**31, "decompressed bytes, far more than a data set archive holds"),
    ("cifar-10-batches-py/data_batch_1", 300 * 2**20, "more than a data file may be"),
], ids=["whole stream", "one batch file"])
def test_archive_size_limits_stop_a_bomb_at_its_header(tmp_path, name, size, words):
    archive = _declared_bomb(tmp_path / D.ARCHIVE_NAME, name, size)
    with pytest.raises(D.DataError, match=f"refusing to unpack: member {name!r}.*{words}"):
        D.load_cifar10(archive, cache_dir=tmp_path / "cache")
    assert cache_leftovers(tmp_path / "cache") == []


def test_a_batch_file_too_large_is_not_read(small_folder, tmp_path, monkeypatch):
    folder = write_cifar_folder(tmp_path / "big", make_synthetic_cifar(10, 10, seed=5))
    monkeypatch.setattr(S, "MAX_FILE_BYTES", 1000)  # the synthetic batches are ~30 KB
    with pytest.raises(D.DataError, match=r"data file '.*data_batch_1' holds \d+ bytes, more than the limit of 1000$"):
        D.load_cifar10(folder, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    "member",
    [
        tar_member("../evil", b"owned"),
        tar_member("cifar-10-batches-py/../../evil", b"owned"),
        tar_member("/tmp/fastmlp-test-evil-absolute", b"owned"),
        tar_member("cifar-10-batches-py/evil", kind=tarfile.SYMTYPE, linkname="../../evil"),
        tar_member("cifar-10-batches-py/passwd", kind=tarfile.SYMTYPE, linkname="/etc/passwd"),
        tar_member("cifar-10-batches-py/hard", kind=tarfile.LNKTYPE, linkname="/etc/passwd"),
        tar_member("cifar-10-batches-py/fifo", kind=tarfile.FIFOTYPE),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "symlink-abs", "hardlink", "fifo"],
)
def test_unsafe_archive_members_are_refused(small_folder, tmp_path, member):
    work = tmp_path / "a" / "b"
    archive = write_cifar_archive(work / D.ARCHIVE_NAME, small_folder, extra_members=[member])
    cache = work / "cache"
    with pytest.raises(D.DataError, match="refusing to unpack"):
        D.load_cifar10(archive, cache_dir=cache)
    assert cache_leftovers(cache) == []
    assert not any(p.name == "evil" for p in tmp_path.rglob("evil"))
    assert not Path("/tmp/fastmlp-test-evil-absolute").exists()


def _folder_with_batch(tmp_path: Path, content: bytes, name: str = "data_batch_2") -> Path:
    root = write_cifar_folder(tmp_path, make_synthetic_cifar(10, 10, seed=6))
    (root / D.FOLDER_NAME / name).write_bytes(content)
    return root


def _py3_pickle(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


LABELS10 = list(range(10))
BAD_BATCHES = {
    "truncated": (py2_pickle_dict({"data": np.zeros((10, 3072), np.uint8), "labels": LABELS10})[:500], "truncated or corrupt"),
    "empty-file": (b"", "truncated or corrupt"),
    "not-a-dict": (_py3_pickle([1, 2, 3]), "should hold a dict"),
    "no-labels": (py2_pickle_dict({"data": np.zeros((10, 3072), np.uint8)}), r"lacks the key\(s\) \['labels'\]"),
    "wrong-width": (py2_pickle_dict({"data": np.zeros((10, 3000), np.uint8), "labels": LABELS10}), r"shape \(n, 3072\)"),
    "wrong-dtype": (_py3_pickle({"data": np.zeros((10, 3072), np.float32), "labels": LABELS10}), "uint8"),
    "label-10": (py2_pickle_dict({"data": np.zeros((10, 3072), np.uint8), "labels": [10] * 10}), r"0\.\.9"),
    "label-negative": (_py3_pickle({"data": np.zeros((10, 3072), np.uint8), "labels": [-1] * 10}), r"0\.\.9"),
    "label-text": (_py3_pickle({"data": np.zeros((10, 3072), np.uint8), "labels": ["cat"] * 10}), "list of ints"),
    "length-mismatch": (py2_pickle_dict({"data": np.zeros((10, 3072), np.uint8), "labels": LABELS10[:9]}), "10 images but 9 labels"),
}


@pytest.mark.parametrize("case", sorted(BAD_BATCHES))
def test_invalid_batch_files_name_the_file(tmp_path, case):
    content, message = BAD_BATCHES[case]
    root = _folder_with_batch(tmp_path, content)
    with pytest.raises(D.DataError, match=message) as info:
        D.load_cifar10(root)
    assert "data_batch_2" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_py3_pickled_batch_is_accepted(tmp_path):
    # Batches re-saved by Python 3 (protocol 2, bytes via _codecs.encode) load too.
    images = np.arange(10 * 3072, dtype=np.int64).astype(np.uint8).reshape(10, 3072)
    root = _folder_with_batch(tmp_path, _py3_pickle({"data": images, "labels": LABELS10}))
    loaded = D.load_cifar10(root)
    np.testing.assert_array_equal(loaded["x_train"][10:20].reshape(10, -1), images)


class _Hostile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.remove, (self.path,)


def test_hostile_pickle_runs_no_code(tmp_path):
    marker = tmp_path / "marker"
    marker.write_text("still here")
    root = _folder_with_batch(tmp_path / "d", _py3_pickle({"data": _Hostile(str(marker)), "labels": LABELS10}))
    with pytest.raises(D.DataError, match="refusing to load global"):
        D.load_cifar10(root)
    assert marker.exists()


def _p2_ints(values) -> bytes:
    return b"".join(b"J" + struct.pack("<i", v) for v in values)


def _ndarray_call(shape, code: bytes = b"u1") -> bytes:
    """Pickle opcodes calling ``numpy.ndarray(shape, code)``: an array of the shape with no data in the file."""
    return b"cnumpy\nndarray\n((" + _p2_ints(shape) + b"tU" + bytes([len(code)]) + code + b"tR"


def _reconstruct_short(shape) -> bytes:
    """NumPy's own reduction of a uint8 array of ``shape``, whose data string holds 16 bytes."""
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n(" + _p2_ints(shape) + b"tU\x01b\x87R"
            b"(K\x01(" + _p2_ints(shape) + b"tcnumpy\ndtype\nU\x02u1K\x00K\x01\x87R"
            b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x10" + b"\0" * 16 + b"tb")


# A hundred-byte batch file must not become an array of tens of megabytes (the real bomb asks 586 MiB).
ARRAY_BOMBS = {
    "ndarray-call": (_ndarray_call((20000, 3072)), _ndarray_call((20000,)), "numpy.ndarray directly"),
    "reconstruct-shape": (_reconstruct_short((20000, 3072)), b"]", "holds 16 bytes"),
}


@pytest.mark.parametrize("case", sorted(ARRAY_BOMBS))
def test_a_pickled_array_bigger_than_its_bytes_is_refused(tmp_path, case):
    data, labels, message = ARRAY_BOMBS[case]
    bomb = b"\x80\x02}(U\x04data" + data + b"U\x06labels" + labels + b"u."
    assert len(bomb) < 300
    root = _folder_with_batch(tmp_path, bomb, name="data_batch_1")
    with pytest.raises(D.DataError, match=message) as info:
        D.load_cifar10(root, cache_dir=tmp_path / "cache")
    assert "data_batch_1" in str(info.value)
    assert cache_leftovers(tmp_path / "cache") == []


def test_incomplete_folder(tmp_path):
    root = write_cifar_folder(tmp_path, make_synthetic_cifar(10, 10))
    (root / D.FOLDER_NAME / "batches.meta").unlink()
    with pytest.raises(D.DataError, match="batches.meta"):
        D.load_cifar10(root)


def test_read_batch_returns_nchw(small_folder):
    x, y = D.read_batch(small_folder / D.FOLDER_NAME / "data_batch_1")
    expected = make_synthetic_cifar(10, 10, seed=5)
    assert x.shape == (10, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x, expected["x_train"][:10])


# --------------------------------------------------------------------------- where the data comes from


def test_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FASTMLP_CACHE", raising=False)
    monkeypatch.delenv("FASTMLP_DATA", raising=False)
    assert D.resolve_data_dir() == tmp_path / "home" / ".cache" / "fastmlp"
    monkeypatch.setenv("FASTMLP_CACHE", str(tmp_path / "cache"))
    assert D.resolve_data_dir() == tmp_path / "cache"
    monkeypatch.setenv("FASTMLP_DATA", str(tmp_path / "env"))
    assert D.resolve_data_dir() == tmp_path / "env"
    assert D.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert D.resolve_data_dir("~/x") == tmp_path / "home" / "x"
    with pytest.raises(TypeError, match="data_dir"):
        D.resolve_data_dir(42)


def test_loader_follows_resolution(monkeypatch, tmp_path, no_network):
    arg_data, env_data, cache_data = (make_synthetic_cifar(10, 10, seed=s) for s in (10, 11, 12))
    arg_dir = write_cifar_folder(tmp_path / "arg", arg_data)
    env_dir = write_cifar_folder(tmp_path / "env", env_data)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FASTMLP_CACHE", raising=False)
    write_cifar_folder(tmp_path / "home" / ".cache" / "fastmlp", cache_data)
    monkeypatch.delenv("FASTMLP_DATA", raising=False)
    assert_same_data(D.load_cifar10(), cache_data)
    monkeypatch.setenv("FASTMLP_DATA", str(env_dir))
    assert_same_data(D.load_cifar10(), env_data)
    assert_same_data(D.load_cifar10(arg_dir), arg_data)


# --------------------------------------------------------------------------- download


@pytest.fixture
def fake_server(small_folder, tmp_path, monkeypatch):
    """CIFAR10_URL/CIFAR10_MD5 pointing at a local file:// archive; returns the archive."""
    archive = write_cifar_archive(tmp_path / "server" / D.ARCHIVE_NAME, small_folder)
    monkeypatch.setattr(F, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(F, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    return archive


def test_download_when_nothing_is_there(fake_server, tmp_path):
    target = tmp_path / "fresh" / "data"
    loaded = D.load_cifar10(target, cache_dir=tmp_path / "cache")
    assert_same_data(loaded, make_synthetic_cifar(10, 10, seed=5))
    assert sorted(p.name for p in target.iterdir()) == [D.ARCHIVE_NAME]
    assert (target / D.ARCHIVE_NAME).read_bytes() == fake_server.read_bytes()


def test_download_md5_mismatch_keeps_nothing(fake_server, tmp_path, monkeypatch):
    monkeypatch.setattr(F, "CIFAR10_MD5", "0" * 32)
    target = tmp_path / "fresh"
    with pytest.raises(D.DataError, match="md5"):
        D.load_cifar10(target, cache_dir=tmp_path / "cache")
    assert list(target.iterdir()) == []  # neither the archive nor a temporary file
    assert cache_leftovers(tmp_path / "cache") == []


def _assert_helpful(message: str, where: Path) -> None:
    for part in (str(where), D.ARCHIVE_NAME, D.FOLDER_NAME, "FASTMLP_DATA"):
        assert part in message


def test_offline_fails_at_once_with_instructions(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(D.DataNotFoundError, match="name resolution") as info:
        D.load_cifar10(tmp_path / "nothing", cache_dir=tmp_path / "cache")
    assert isinstance(info.value, FileNotFoundError)
    _assert_helpful(str(info.value), tmp_path / "nothing")


def test_interrupted_download_keeps_nothing(tmp_path, monkeypatch):
    class Dropping(io.BytesIO):
        headers = {"Content-Length": "1000000"}

        def read(self, size=-1):
            raise ConnectionResetError("connection reset by peer")

        read1 = read

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Dropping())
    with pytest.raises(D.DataNotFoundError, match="interrupted"):
        D.load_cifar10(tmp_path / "d", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "d").iterdir()) == []


@pytest.fixture
def dripping_server():
    """A local HTTP server that announces 10 MB and sends one byte every 0.05 s; yields its URL."""
    import http.server

    stop = threading.Event()

    class Drip(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(10 * 2**20))
            self.end_headers()
            try:
                while not stop.wait(0.05):
                    self.wfile.write(b"x")
                    self.wfile.flush()
            except OSError:  # the client gave up
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{D.ARCHIVE_NAME}"
    stop.set()
    server.shutdown()
    server.server_close()


def test_a_dripping_download_stops_at_its_deadline(dripping_server, tmp_path):
    # Each byte comes well within the per-read timeout: only an overall deadline ends it.
    target = tmp_path / "d"
    thread_result: dict = {}

    def download() -> None:
        try:
            F.download_cifar10(target, url=dripping_server, md5="0" * 32, progress=False, timeout=10, deadline=1.0)
        except BaseException as exc:
            thread_result["error"] = exc

    thread = threading.Thread(target=download, daemon=True)
    thread.start()
    thread.join(120)  # generous for a busy machine; without a deadline it would drip for 6 days
    assert not thread.is_alive(), "the download ignored its deadline"
    error = thread_result.get("error")
    assert isinstance(error, D.DataNotFoundError) and "deadline of 1 s" in str(error), error
    assert list(target.iterdir()) == []  # no partial archive, no temporary file


def test_download_false_raises_file_not_found(tmp_path, no_network):
    with pytest.raises(FileNotFoundError) as info:
        D.load_cifar10(tmp_path / "nothing", download=False)
    _assert_helpful(str(info.value), tmp_path / "nothing")


# --------------------------------------------------------------------------- DataSet batching


def id_dataset(n: int, seed=0, **kwargs) -> D.DataSet:
    """Example i has image value i and label i, so batches reveal which examples they hold."""
    return D.DataSet(np.arange(n, dtype=np.float64).reshape(n, 1), np.arange(n), seed=seed, **kwargs)


def draw(ds: D.DataSet, sizes) -> np.ndarray:
    out = []
    for size in sizes:
        x, y = ds.next_batch(size)
        assert x.shape[0] == y.shape[0] == size
        np.testing.assert_array_equal(x[:, 0], y)  # images and labels stay paired
        out.append(y)
    return np.concatenate(out)


def test_every_example_once_per_epoch():
    n = 10
    ds = id_dataset(n)
    assert len(ds) == ds.num_examples == n
    served = draw(ds, [3] * 10)  # 30 examples: three epochs
    for epoch in range(3):
        assert sorted(served[epoch * n : (epoch + 1) * n]) == list(range(n))
    assert ds.epochs_completed == 3 and ds.index_in_epoch == 0
    draw(ds, [3])
    assert ds.epochs_completed == 3 and ds.index_in_epoch == 3


def test_batch_larger_than_remainder_spans_two_epochs():
    ds = id_dataset(10, seed=1)
    first, second = draw(ds, [4, 4]), draw(ds, [4])
    assert ds.epochs_completed == 1 and ds.index_in_epoch == 2
    # The 2 left over from epoch 0 come first, then 2 from the reshuffled epoch 1.
    assert sorted(np.concatenate([first, second[:2]])) == list(range(10))
    rest = draw(ds, [8])
    assert sorted(np.concatenate([second[2:], rest])) == list(range(10))


def test_batch_larger_than_the_data_set():
    ds = id_dataset(10)
    served = draw(ds, [25])
    assert ds.epochs_completed == 2 and ds.index_in_epoch == 5
    assert sorted(served[:10]) == sorted(served[10:20]) == list(range(10))


def test_shuffling_is_seeded():
    order = lambda seed: draw(id_dataset(50, seed=seed), [7] * 20)  # noqa: E731
    np.testing.assert_array_equal(order(3), order(3))
    assert not np.array_equal(order(3), order(4))
    assert not np.array_equal(order(3)[:50], np.arange(50))  # the first epoch is shuffled too


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "8"])
def test_bad_batch_size(bad):
    with pytest.raises(ValueError, match="batch_size"):
        id_dataset(10).next_batch(bad)


def test_dataset_checks_its_arguments():
    with pytest.raises(ValueError, match="same length"):
        D.DataSet(np.zeros((5, 3, 32, 32)), np.zeros(4, np.int64))
    with pytest.raises(TypeError, match="images"):
        D.DataSet([[1.0]], np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="augment"):
        D.DataSet(np.zeros((5, 3072)), np.zeros(5, np.int64), augment=True)


def test_as_arrays_and_flatten():
    images = np.random.default_rng(0).random((6, 3, 32, 32)).astype(np.float32)
    ds = D.DataSet(images, np.arange(6), seed=0, flatten=True)
    x, y = ds.next_batch(4)
    assert x.shape == (4, 3072) and x.dtype == np.float32
    np.testing.assert_array_equal(x, images[y].reshape(4, -1))
    x_all, y_all = ds.as_arrays()
    assert x_all.shape == (6, 3072)
    np.testing.assert_array_equal(y_all, np.arange(6))
    assert ds.as_arrays(flatten=False)[0].shape == (6, 3, 32, 32)


# --------------------------------------------------------------------------- resume


def _augmenting_dataset(seed):
    images = np.random.default_rng(1).random((23, 3, 32, 32))
    return D.DataSet(images, np.arange(23), seed=seed, augment=True)


@pytest.mark.parametrize("transport", ["memory", "npz", "json"])
def test_resume_is_exact(transport, tmp_path):
    sizes = [5, 9, 4, 11, 5, 7, 3, 10]
    original = _augmenting_dataset(seed=7)
    for size in sizes[:3]:
        original.next_batch(size)
    state = original.get_state()
    expected = [original.next_batch(size) for size in sizes[3:]]

    if transport == "npz":
        np.savez(tmp_path / "state.npz", **state)
        with np.load(tmp_path / "state.npz") as f:  # no pickle needed
            state = {k: f[k] for k in f.files}
    elif transport == "json":
        state = json.loads(json.dumps({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in state.items()}))
    resumed = _augmenting_dataset(seed=99)  # a different seed: the state must override it
    resumed.set_state(state)
    assert resumed.index_in_epoch == int(state["index_in_epoch"])
    for (x, y), size in zip(expected, sizes[3:]):
        x2, y2 = resumed.next_batch(size)
        np.testing.assert_array_equal(y2, y)
        np.testing.assert_array_equal(x2, x)  # augmentation replayed too
    assert resumed.get_state()["rng_state"] == original.get_state()["rng_state"]
    assert resumed.epochs_completed == original.epochs_completed


def test_state_is_a_copy_and_plain():
    ds = id_dataset(10)
    state = ds.get_state()
    assert set(state) == {"format", "num_examples", "permutation", "index_in_epoch", "epochs_completed", "rng_state"}
    assert all(isinstance(v, (np.ndarray, int, str)) for v in state.values())
    before = state["permutation"].copy()
    draw(ds, [10, 10])
    np.testing.assert_array_equal(state["permutation"], before)


def test_bad_state_is_refused():
    state = id_dataset(10).get_state()
    with pytest.raises(ValueError, match="10 examples"):
        id_dataset(11).set_state(state)
    with pytest.raises(ValueError, match="not a permutation"):
        id_dataset(10).set_state({**state, "permutation": np.zeros(10, np.int64)})
    with pytest.raises(ValueError, match="lacks"):
        id_dataset(10).set_state({k: v for k, v in state.items() if k != "rng_state"})
    with pytest.raises(ValueError, match="rng_state"):
        id_dataset(10).set_state({**state, "rng_state": "{}"})


def _uint8_augmenting_dataset(seed):
    pixels = np.random.default_rng(2).integers(0, 256, (23, 3, 32, 32), dtype=np.uint8)
    prep = D.Preprocessing.fit(pixels, "mean_image", np.float32)
    return D.DataSet(pixels, np.arange(23), seed=seed, augment=True, preprocessing=prep, class_names="abc")


def _same_batches(a: D.DataSet, b: D.DataSet, sizes=(9, 30, 4)) -> None:
    for size in sizes:
        (xa, ya), (xb, yb) = a.next_batch(size), b.next_batch(size)
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)  # the augmentation's draws too
    assert a.epochs_completed == b.epochs_completed and a.index_in_epoch == b.index_in_epoch


def test_a_pickled_data_set_goes_on_where_it_stopped():
    ds = _uint8_augmenting_dataset(seed=3)
    ds.next_batch(14)
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.class_names == ("a", "b", "c") and copy.preprocessing is not ds.preprocessing
    _same_batches(ds, copy)


class _PickledBefore95b1b62:
    """Pickles a DataSet as fastmlp 95b1b62 did: its order's four parts among the DataSet's own attributes."""

    def __init__(self, ds: D.DataSet):
        self.ds = ds

    def __reduce__(self):
        state = self.ds.get_state()
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = json.loads(state["rng_state"])
        attributes = {k: v for k, v in vars(self.ds).items() if k != "_order"}
        attributes.update(_rng=rng, _perm=state["permutation"], _index_in_epoch=state["index_in_epoch"],
                          _epochs_completed=state["epochs_completed"])
        return object.__new__, (D.DataSet,), attributes


def test_a_data_set_pickled_by_an_earlier_fastmlp_still_loads_and_goes_on():
    ds = _uint8_augmenting_dataset(seed=4)
    ds.next_batch(30)  # into the second epoch
    old = pickle.loads(pickle.dumps(_PickledBefore95b1b62(ds)))
    assert type(old) is D.DataSet and old.epochs_completed == 1 and old.index_in_epoch == 7
    _same_batches(ds, old)
    assert old.get_state()["rng_state"] == ds.get_state()["rng_state"]


def test_the_epoch_order_deals_each_row_once_per_epoch_and_resumes():
    order = EpochOrder.shuffled(7, seed=1)
    dealt = np.concatenate([order.take(3) for _ in range(7)])  # 21 rows: three epochs
    assert [sorted(dealt[i:i + 7]) for i in (0, 7, 14)] == [list(range(7))] * 3
    assert (order.epochs_completed, order.index_in_epoch) == (3, 0)
    again = EpochOrder.shuffled(7, seed=None)
    again.set_state(order.get_state())
    np.testing.assert_array_equal(again.take(10), order.take(10))


# --------------------------------------------------------------------------- preprocessing


def test_validation_split_is_disjoint_and_excluded_from_statistics(synthetic_cifar_dir):
    raw = make_synthetic_cifar()
    data = D.get_cifar10(synthetic_cifar_dir, one_hot=False, validation_size=100, seed=0, dtype=np.float64)
    train, validation, test = data["train"], data["validation"], data["test"]
    assert (len(train), len(validation), len(test)) == (900, 100, 200)
    np.testing.assert_array_equal(train.labels, raw["y_train"][:900])
    np.testing.assert_array_equal(validation.labels, raw["y_train"][900:])  # carved from the end
    mean_image = raw["x_train"][:900].mean(axis=0)  # statistics of the training part only
    np.testing.assert_allclose(train.images, raw["x_train"][:900] - mean_image, atol=1e-9)
    np.testing.assert_allclose(validation.images, raw["x_train"][900:] - mean_image, atol=1e-9)
    np.testing.assert_allclose(test.images, raw["x_test"] - mean_image, atol=1e-9)
    assert np.abs(raw["x_train"].mean(axis=0) - mean_image).max() > 0.5  # including validation would differ
    assert D.get_cifar10(synthetic_cifar_dir, seed=0)["validation"] is None


def test_mean_image_centering(synthetic_cifar_dir):
    data = D.get_cifar10(synthetic_cifar_dir, seed=0)
    train = data["train"]
    assert train.images.dtype == np.float32 and train.images.shape == (1000, 3, 32, 32)
    assert np.abs(train.images.mean(axis=0, dtype=np.float64)).max() < 1e-3  # ~zero mean per pixel
    assert np.abs(train.images).max() > 50  # still on the 0..255 scale
    assert train.labels.shape == (1000, 10) and train.labels.dtype == np.float32
    np.testing.assert_array_equal(train.labels.argmax(1), make_synthetic_cifar()["y_train"])
    assert np.all(train.labels.sum(1) == 1)


def test_standardize(synthetic_cifar_dir):
    data = D.get_cifar10(synthetic_cifar_dir, preprocessing="standardize", dtype=np.float64, seed=0)
    images = data["train"].images
    np.testing.assert_allclose(images.mean(axis=(0, 2, 3)), 0.0, atol=1e-9)
    np.testing.assert_allclose(images.std(axis=(0, 2, 3)), 1.0, atol=1e-9)
    raw = make_synthetic_cifar()["x_train"] / 255.0
    mean, std = raw.mean(axis=(0, 2, 3)), raw.std(axis=(0, 2, 3))
    expected_test = (make_synthetic_cifar()["x_test"] / 255.0 - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(data["test"].images, expected_test, atol=1e-9)


def test_get_cifar10_options(synthetic_cifar_dir):
    data = D.get_cifar10(synthetic_cifar_dir, one_hot=False, flatten=True, dtype=np.float64, augment=True, seed=1)
    x, y = data["train"].next_batch(8)
    assert x.shape == (8, 3072) and x.dtype == np.float64 and y.dtype == np.int64
    assert data["train"].augment and not data["test"].augment
    x_test, _ = data["test"].as_arrays()
    assert x_test.shape == (200, 3072)
    again = D.get_cifar10(synthetic_cifar_dir, one_hot=False, flatten=True, dtype=np.float64, augment=True, seed=1)
    np.testing.assert_array_equal(again["train"].next_batch(8)[0], x)  # seeded end to end


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"preprocessing": "zca"}, ValueError, "preprocessing"),
        ({"validation_size": 1000}, ValueError, "validation_size"),
        ({"validation_size": -1}, ValueError, "validation_size"),
        ({"validation_size": 0.5}, TypeError, "validation_size"),
        ({"dtype": np.int32}, ValueError, "dtype"),
    ],
)
def test_get_cifar10_rejects_bad_arguments(synthetic_cifar_dir, kwargs, error, match):
    with pytest.raises(error, match=match):
        D.get_cifar10(synthetic_cifar_dir, **kwargs)


def test_synthetic_classes_are_learnable(synthetic_cifar_dir):
    # 200 SGD steps of softmax regression must clearly beat chance (0.1) on the test split.
    data = D.get_cifar10(synthetic_cifar_dir, preprocessing="standardize", flatten=True, seed=0)
    weights = np.zeros((3072, 10), np.float32)
    for _ in range(200):
        x, y = data["train"].next_batch(50)
        logits = x @ weights
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        weights -= 1e-3 * x.T @ (p - y) / len(x)
    x_test, y_test = data["test"].as_arrays()
    accuracy = np.mean((x_test @ weights).argmax(1) == y_test.argmax(1))
    assert accuracy > 0.5, accuracy


# --------------------------------------------------------------------------- augmentation


def test_augment_keeps_shape_dtype_and_is_seeded():
    images = np.random.default_rng(0).random((16, 3, 32, 32)).astype(np.float32)
    out = D.augment_batch(images, np.random.default_rng(5))
    assert out.shape == images.shape and out.dtype == images.dtype
    np.testing.assert_array_equal(out, D.augment_batch(images, np.random.default_rng(5)))
    assert not np.array_equal(out, D.augment_batch(images, np.random.default_rng(6)))
    assert not np.shares_memory(out, images)


def test_flip_really_flips():
    images = np.random.default_rng(1).random((64, 3, 32, 32))
    out = D.augment_batch(images, np.random.default_rng(2), pad=0, flip=True)
    mirrored = np.array([np.array_equal(o, x[:, :, ::-1]) for o, x in zip(out, images)])
    unchanged = np.array([np.array_equal(o, x) for o, x in zip(out, images)])
    assert np.all(mirrored ^ unchanged)  # each image is either mirrored left-right or untouched
    assert 10 < mirrored.sum() < 54  # about half are mirrored
    assert not np.array_equal(images[0], images[0][:, :, ::-1])  # the check above is not vacuous


def test_crop_is_a_shifted_window_with_zero_padding():
    images = np.random.default_rng(3).random((20, 3, 32, 32)) + 1.0  # no zeros in the images
    out = D.augment_batch(images, np.random.default_rng(4), pad=4, flip=False)
    padded = np.pad(images, ((0, 0), (0, 0), (4, 4), (4, 4)))
    found = []
    for o, p in zip(out, padded):
        offsets = [(dy, dx) for dy in range(9) for dx in range(9) if np.array_equal(o, p[:, dy : dy + 32, dx : dx + 32])]
        assert len(offsets) == 1  # exactly one window of the padded image
        found += offsets
    rows, cols = zip(*found)
    assert len(set(rows)) > 3 and len(set(cols)) > 3  # both axes are shifted, independently


def test_dataset_augmentation_changes_batches_reproducibly():
    plain = D.DataSet(np.random.default_rng(0).random((30, 3, 32, 32)), np.arange(30), seed=3)
    augmented = D.DataSet(plain.images, plain.labels, seed=3, augment=True)
    again = D.DataSet(plain.images, plain.labels, seed=3, augment=True)
    (x1, y1), (x2, y2), (x3, y3) = plain.next_batch(10), augmented.next_batch(10), again.next_batch(10)
    np.testing.assert_array_equal(y1, y2)  # same shuffling stream for the order
    assert not np.array_equal(x1, x2)
    np.testing.assert_array_equal(x2, x3)


# --------------------------------------------------------------------------- the real archive


@pytest.mark.cifar
def test_real_cifar10(real_cifar_dir):
    data = D.load_cifar10(real_cifar_dir, download=False)
    assert data["x_train"].shape == (50000, 3, 32, 32) and data["x_train"].dtype == np.uint8
    assert data["x_test"].shape == (10000, 3, 32, 32) and data["x_test"].dtype == np.uint8
    assert data["y_train"].dtype == data["y_test"].dtype == np.int64
    assert data["y_train"].min() == 0 and data["y_train"].max() == 9
    np.testing.assert_array_equal(np.bincount(data["y_train"], minlength=10), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(data["y_test"], minlength=10), [1000] * 10)
    assert data["label_names"] == list(D.LABEL_NAMES)
    channel_mean = data["x_train"].mean(axis=(0, 2, 3), dtype=np.float64) / 255.0
    np.testing.assert_allclose(channel_mean, [0.4913, 0.4821, 0.4465], atol=5e-4)  # data README, 3 decimals


# --------------------------------------------------------------------------- uint8 storage, per-batch conversion


def _whole_set_in_numpy(raw_u8: np.ndarray, train_u8: np.ndarray, kind: str, dtype) -> np.ndarray:
    """The former pipeline: convert the whole set at once with NumPy (what a course script does)."""
    if kind == "mean_image":
        mean_image = train_u8.mean(axis=0, dtype=np.float64).astype(dtype)
        return np.subtract(raw_u8, mean_image, dtype=dtype)
    mean = train_u8.mean(axis=(0, 2, 3), dtype=np.float64)
    std = np.sqrt(np.maximum((train_u8.astype(np.float64) ** 2).mean(axis=(0, 2, 3)) - mean**2, 0))
    x = np.subtract(raw_u8, mean.astype(dtype)[:, None, None], dtype=dtype)
    x /= np.maximum(std, 1e-12).astype(dtype)[:, None, None]
    return x


@pytest.mark.parametrize("kind", D.PREPROCESSINGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_uint8_pipeline_is_bit_identical_to_converting_the_whole_set(synthetic_cifar_dir, kind, dtype):
    raw = make_synthetic_cifar()
    data = D.get_cifar10(synthetic_cifar_dir, one_hot=False, validation_size=100, preprocessing=kind,
                         dtype=dtype, seed=4)
    train, test = data["train"], data["test"]
    assert train.raw_images.dtype == np.uint8 and train.dtype == dtype
    expected_train = _whole_set_in_numpy(raw["x_train"][:900], raw["x_train"][:900], kind, dtype)
    expected_test = _whole_set_in_numpy(raw["x_test"], raw["x_train"][:900], kind, dtype)
    order = EpochOrder.shuffled(train.num_examples, None)  # the same order, dealt again, to know each batch's rows
    order.set_state(train.get_state())
    for size in (7, 200, 900, 1):
        index = order.take(size)
        x, y = train.next_batch(size)
        np.testing.assert_array_equal(x, expected_train[index])  # bit-identical, not just close
        np.testing.assert_array_equal(y, raw["y_train"][index])
    buffer = np.full((33, 3072), np.nan, dtype)
    index = order.take(33)
    x, _ = train.next_batch(33, out=buffer)
    assert np.shares_memory(x, buffer)
    np.testing.assert_array_equal(x, expected_train[index])
    seen = np.concatenate([xb.copy() for xb, _ in test.batches(64, flatten=True)])
    np.testing.assert_array_equal(seen, expected_test.reshape(len(expected_test), -1))
    np.testing.assert_array_equal(test.as_arrays()[0], expected_test)
    np.testing.assert_array_equal(data["validation"].images, _whole_set_in_numpy(
        raw["x_train"][900:], raw["x_train"][:900], kind, dtype))


def test_augmented_uint8_batches_match_augmenting_the_converted_batch(synthetic_cifar_dir):
    data = D.get_cifar10(synthetic_cifar_dir, one_hot=False, seed=1, augment=True)
    train = data["train"]
    twin = D.DataSet(train.images, train.labels, seed=None, augment=True)  # float storage, same inputs
    twin.set_state(train.get_state())
    for size in (5, 64):
        (x, y), (x2, y2) = train.next_batch(size), twin.next_batch(size)
        np.testing.assert_array_equal(y, y2)
        np.testing.assert_array_equal(x, x2)


def test_reseeded_shares_storage_and_preprocessing(synthetic_cifar_dir):
    train = D.get_cifar10(synthetic_cifar_dir, one_hot=False, seed=1)["train"]
    other = train.reseeded(5, augment=True, flatten=True)
    assert other.raw_images is train.raw_images and other.preprocessing is train.preprocessing
    assert other.augment and other.flatten and other.next_batch(3)[0].shape == (3, 3072)
    assert train.index_in_epoch == 0  # the original's order is untouched


def test_next_batch_out_is_checked(synthetic_cifar_dir):
    train = D.get_cifar10(synthetic_cifar_dir, one_hot=False, seed=1)["train"]
    with pytest.raises(ValueError, match=r"out: expected a C-contiguous float32 array of shape \(4, 3072\)"):
        train.next_batch(4, out=np.empty((4, 3072), np.float64))
    with pytest.raises(ValueError, match="out: expected"):
        train.next_batch(4, out=np.empty((3072, 4), np.float32).T)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_next_image_batch_serves_what_next_batch_would(synthetic_cifar_dir, dtype):
    # Same rows, labels and order (across epoch boundaries), mixed freely with next_batch.
    a = D.get_cifar10(synthetic_cifar_dir, one_hot=False, seed=3, flatten=True, dtype=dtype)["train"]
    b = a.reseeded(None)
    b.set_state(a.get_state())
    assert a.serves_image_batches
    for size in (7, 400, 3, 400, 400):  # 1,000 training images: the last batches span epochs
        images, y_images = a.next_image_batch(size)
        x, y = b.next_batch(size)
        assert isinstance(images, ImageBatch) and images.shape == x.shape and images.dtype == dtype
        np.testing.assert_array_equal(images.to_array(), x)
        np.testing.assert_array_equal(y_images, y)
        a.next_batch(2), b.next_batch(2)
    assert a.epochs_completed == b.epochs_completed >= 1 and a.index_in_epoch == b.index_in_epoch


def test_next_image_batch_refuses_what_it_cannot_serve(synthetic_cifar_dir):
    train = D.get_cifar10(synthetic_cifar_dir, one_hot=False, seed=1)["train"]
    with pytest.raises(ValueError, match="cannot serve uint8 batches .it augments"):
        train.reseeded(1, augment=True).next_image_batch(4)
    floats = D.DataSet(np.zeros((5, 3), np.float32), np.zeros(5, np.int64))
    assert not floats.serves_image_batches
    with pytest.raises(ValueError, match="holds model inputs, not uint8 pixels"):
        floats.next_image_batch(2)


@pytest.mark.parametrize("size,limit", [(70, None), (1000, None), (64, 150), (3000, 10)])
def test_image_batches_are_the_evaluation_batches_unconverted(synthetic_cifar_dir, size, limit):
    test = D.get_cifar10(synthetic_cifar_dir, one_hot=True, seed=0)["test"]
    augmenting = test.reseeded(0, augment=True)  # evaluation batches never augment
    count = 0
    # batches() reuses one buffer: compare each pair before asking for the next
    for (images, y_images), (x, y) in zip(augmenting.image_batches(size, limit=limit),
                                          test.batches(size, flatten=True, limit=limit), strict=True):
        assert isinstance(images, ImageBatch) and images.shape == x.shape
        np.testing.assert_array_equal(images.to_array(), x)
        np.testing.assert_array_equal(y_images, y)
        count += 1
    assert count == -(-min(limit or 10**9, test.num_examples) // size)


def test_image_batches_refuse_floats_and_bad_sizes(synthetic_cifar_dir):
    floats = D.DataSet(np.zeros((5, 3), np.float32), np.zeros(5, np.int64))
    with pytest.raises(ValueError, match="holds model inputs, not uint8 pixels; use batches"):
        next(floats.image_batches(2))
    test = D.get_cifar10(synthetic_cifar_dir, one_hot=False, seed=0)["test"]
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            next(test.image_batches(bad))


def test_preprocessing_wants_uint8_images():
    prep = D.Preprocessing.fit(np.zeros((2, 3, 32, 32), np.uint8), "mean_image", np.float32)
    with pytest.raises(ValueError, match="expected uint8 images of 3072 values each"):
        D.DataSet(np.zeros((2, 3, 32, 32), np.float32), np.zeros(2, np.int64), preprocessing=prep)


def test_state_naming_an_unknown_bit_generator_is_refused():
    state = id_dataset(10).get_state()
    hostile = json.dumps({**json.loads(state["rng_state"]), "bit_generator": "seed"})  # np.random.seed() exists
    with pytest.raises(ValueError, match="names the bit generator 'seed'"):
        id_dataset(10).set_state({**state, "rng_state": hostile})


def test_missing_real_data_fails_when_it_is_required(tmp_path):
    """FASTMLP_REQUIRE_DATA=1 (set by .ci/run) turns real_cifar_dir's skip into a failure."""
    import subprocess
    import sys

    probe = tmp_path / "test_probe.py"
    probe.write_text("def test_probe(real_cifar_dir):\n    pass\n")
    conftest = Path(__file__).with_name("conftest.py")
    (tmp_path / "conftest.py").write_text(conftest.read_text())
    (tmp_path / "_cifar_synth.py").write_text(conftest.with_name("_cifar_synth.py").read_text())
    # The tests' conftest copied beside the probe: the "repository root" it derives is then tmp_path's
    # parent, whose ../shared/data does not exist, and FASTMLP_DATA names an empty folder.
    env = {**os.environ, "FASTMLP_DATA": str(tmp_path / "empty"), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    results = {}
    for require in ("0", "1"):
        env["FASTMLP_REQUIRE_DATA"] = require
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(probe)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        results[require] = (proc.returncode, proc.stdout)
    assert results["0"][0] == 0 and "1 skipped" in results["0"][1], results["0"][1]
    assert results["1"][0] == 1 and "1 error" in results["1"][1] and "FASTMLP_REQUIRE_DATA=1" in results["1"][1]


def test_a_program_silences_the_librarys_warnings_through_logging(tmp_path, caplog):
    """A cache that cannot be written is logged (a warning of logger ``fastmlp.data.cache``), which
    a program using fastmlp silences or redirects with the standard logging calls."""
    source = tmp_path / "source.bin"
    source.write_bytes(b"the source's bytes")
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    arrays = {"x_train": np.zeros((2, 4), np.uint8), "y_train": np.zeros(2, np.int64),
              "x_test": np.zeros((1, 4), np.uint8), "y_test": np.zeros(1, np.int64), "label_names": ["a"]}

    def decode():
        return dict(arrays)

    with caplog.at_level(logging.INFO, logger="fastmlp"):
        assert C.cached_decode(source, [source], decode, blocked, check=lambda data: None)["x_test"].shape == (1, 4)
    [record] = caplog.records
    assert record.name == "fastmlp.data.cache" and record.levelno == logging.WARNING
    assert record.getMessage().startswith("could not cache the decoded cifar10 arrays in")
    caplog.clear()
    library = logging.getLogger("fastmlp")
    level = library.level
    library.setLevel(logging.ERROR)
    try:
        C.cached_decode(source, [source], decode, blocked, check=lambda data: None)
    finally:
        library.setLevel(level)
    assert caplog.records == []
