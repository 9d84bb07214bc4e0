"""Decoded data sets kept on disk, keyed by the data set and the content of the files they came from.

Decoding the archive (gunzip, unpickle, check) takes about a second. The decoded
``.npy`` files are mapped back copy-on-write rather than read: their pages come
straight from the OS's file cache, where reading the arrays into fresh memory is
slow on a virtual machine whose every new page the kernel must first zero
(docs/notes/benchmarks-diary-2026-12-02.md). Layout under the cache folder::

    decoded/<sha256 of the data set's name and the source's bytes>/x_train.npy, y_train.npy, x_test.npy,
        y_test.npy, meta.json (format, data set, class names, CRC-32 of each array)
    decoded/sources/<sha256 of the data set and the source's absolute path>.json   {"signature": ..., "sha256": ...}

A source whose files still have the recorded signature (device, inode, size,
modification and change times of each file) reuses the recorded content hash
without being read; any other source (a new path, a replaced or touched file) is
hashed again, so a changed archive is never served stale arrays, and a copy of a
known archive reuses its entry. The change time cannot be set by a user, so a
file rewritten in place with its old size and mtime is caught too, with one
caveat that git knows as "racily clean" files: file systems stamp times from a
coarse clock (a scheduler tick; two seconds on FAT), so a file changed again
within that tick keeps its stamps. A signature is therefore trusted only when
it was recorded at least _RACY_NS after the files' latest stamp; a younger one
(an archive used right after it was written) is hashed again at the next load,
which then records a signature old enough to trust.

Entries are written into a temporary folder whose files and the folder itself
are flushed to disk, then renamed into place (and the parent flushed): a reader
sees a whole entry or none. A folder that fails its checks is treated as absent
and decoded again. When the cache cannot be written (a read-only home, a full
disk), the arrays are returned without caching.

What a load checks before serving an entry: every file is a regular file of
its own, not a link (:mod:`fastmlp.reading`: a FIFO or device in its place is
refused on the descriptor opened without waiting, so it cannot hang the load;
the JSON files are read only up to 1 MiB), the arrays' dtypes and shapes agree
with each other and with the data set, the labels lie in range, the class names are a list of str of
the right count, and each array's CRC-32 matches the one recorded when the
entry was written (flipped or overwritten bytes). An entry that fails any check
is decoded again. Not checked: a hostile writer of the cache folder can forge
an entry with matching CRCs (a CRC detects accidents, not attacks); keep the
cache folder private.

A mapped entry is never written through (copy-on-write: a caller that writes into
the arrays changes its private copy), and fastmlp never rewrites an entry's files
in place: a replaced or pruned entry is unlinked, which leaves existing mappings
intact. Truncating an entry's file by hand while a run uses it would end that run
with SIGBUS, as with any memory-mapped file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import logging
import time
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from fastmlp.atomic import fsync_dir
from fastmlp.data.sources import check_arrays
from fastmlp.reading import open_regular_file, read_regular_file

__all__ = ["ARRAY_NAMES", "cached_decode", "content_hash", "fsync_dir"]

ARRAY_NAMES = ("x_train", "y_train", "x_test", "y_test")
_log = logging.getLogger(__name__)
_FORMAT = "fastmlp.decoded/2"
#: Largest source record or meta.json read (they hold a few hundred bytes; CIFAR-100's names a few KiB).
_JSON_LIMIT = 1 << 20


def _is_digest(value: Any) -> bool:
    """A sha256 hex string: the only thing a record may name as an entry folder."""
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


# How far a signature's recording must lie after the files' latest time stamp for it to be trusted.
_RACY_NS = 2_000_000_000


def _signature(files: list[Path]) -> list[list[int]]:
    out = []
    for path in files:
        st = path.stat()
        out.append([st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
    return out


def _trusted(signature: list[list[int]], recorded_ns: Any) -> bool:
    """Whether a matching signature proves the files unchanged: recorded well after their last stamp."""
    if isinstance(recorded_ns, bool) or not isinstance(recorded_ns, int):
        return False
    return all(max(entry[3], entry[4]) + _RACY_NS <= recorded_ns for entry in signature)


def content_hash(files: list[Path], salt: str = "") -> str:
    """sha256 over ``salt`` (the data set's name), then each file's name, size and bytes, in the given order."""
    digest = hashlib.sha256(os.fsencode(salt))
    for path in files:
        digest.update(f"{path.name}:{path.stat().st_size}:".encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def _record_path(root: Path, source: Path, dataset: str) -> Path:
    # fsencode: a path that is not valid UTF-8 (surrogate-escaped bytes) keys its record too
    key = hashlib.sha256(os.fsencode(dataset) + b"\0" + os.fsencode(source.resolve())).hexdigest()[:24]
    return root / "sources" / f"{key}.json"


def _read_json(path: Path) -> Any:
    """The JSON of a record or an entry's meta.json: a regular file (not a link) of at most _JSON_LIMIT bytes."""
    return json.loads(read_regular_file(path, limit=_JSON_LIMIT, what="cache file", follow_symlinks=False))


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = _read_json(path)
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested too deep
        return None
    return record if isinstance(record, dict) else None


def _crc32(array: np.ndarray) -> int:
    """CRC-32 of an array's bytes (C order), to detect an entry damaged after it was written."""
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def _map(path: Path) -> np.ndarray:
    """The array of a ``.npy`` file, mapped copy-on-write, as a plain ndarray (not an np.memmap).

    A file system that cannot map files (mmap's OSError) gets the file read instead;
    a damaged file, or something other than a regular file (not a link), raises ValueError.
    """
    with open_regular_file(path, what="cache file", follow_symlinks=False) as f:
        try:
            return _map_open_npy(f)
        except OSError:
            f.seek(0)
            return np.load(f, allow_pickle=False)


def _map_open_npy(f: BinaryIO) -> np.ndarray:
    # np.load maps only a file it opens itself, by name, which could be another file by
    # then: the header is read here and the checked descriptor itself is mapped.
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(f)
    if dtype.hasobject:
        raise ValueError("a cached array holds Python objects")
    return np.asarray(np.memmap(f, dtype=dtype, mode="c", shape=shape, order="F" if fortran_order else "C",
                                offset=f.tell()))


def _read_entry(entry: Path, dataset: str, check: Callable[[dict[str, Any]], Any]) -> dict[str, Any] | None:
    """The arrays of a complete, well-formed, undamaged entry of ``dataset``; None for anything else."""
    try:
        meta = _read_json(entry / "meta.json")
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT or meta.get("dataset") != dataset:
            return None
        crcs = meta.get("crc32")
        data = {name: _map(entry / f"{name}.npy") for name in ARRAY_NAMES}
        if not isinstance(crcs, dict) or any(crcs.get(name) != _crc32(data[name]) for name in ARRAY_NAMES):
            return None
        data["label_names"] = meta.get("label_names")
        check(data)
    except (OSError, ValueError, EOFError, RecursionError):  # DataError is a ValueError
        return None
    return data


def _write_entry(root: Path, digest: str, data: dict[str, Any], dataset: str,
                 check: Callable[[dict[str, Any]], Any]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{digest[:16]}-", dir=root))
    try:
        for name in ARRAY_NAMES:
            with open(tmp / f"{name}.npy", "wb") as f:
                np.save(f, np.ascontiguousarray(data[name]))
                f.flush()
                os.fsync(f.fileno())
        meta = {"format": _FORMAT, "sha256": digest, "dataset": dataset, "label_names": list(data["label_names"]),
                "crc32": {name: _crc32(data[name]) for name in ARRAY_NAMES}}
        with open(tmp / "meta.json", "w", encoding="utf-8") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        target = root / digest
        try:
            os.rename(tmp, target)
        except OSError:
            if _read_entry(target, dataset, check) is not None:  # another process wrote the same entry first
                shutil.rmtree(tmp, ignore_errors=True)
            else:  # a damaged entry: replace it
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _prune(root: Path, digest: str) -> None:
    """Remove the entry ``digest`` if no source record names it any more."""
    for record_path in (root / "sources").glob("*.json"):
        record = _read_record(record_path)
        if record is not None and record.get("sha256") == digest:
            return
    shutil.rmtree(root / digest, ignore_errors=True)


def cached_decode(source: Path, files: list[Path], decode: Callable[[], dict[str, Any]],
                  cache_dir: Path, *, dataset: str = "cifar10",
                  check: Callable[[dict[str, Any]], Any] = check_arrays) -> dict[str, Any]:
    """The decoded arrays of ``source`` (whose bytes are ``files``), from the cache or from ``decode()``.

    Parameters
    ----------
    source : Path
        The archive, file or folder, as given (its absolute path keys its record).
    files : list of Path
        The files whose bytes the arrays come from (the archive, or the folder's
        batch files in a fixed order).
    decode : callable
        Returns ``{"x_train", "y_train", "x_test", "y_test", "label_names"}``; called
        on a cache miss only. Its errors propagate and nothing is cached.
    cache_dir : Path
        The cache folder; entries go to ``cache_dir/decoded/``.
    dataset : str
        The data set's name: part of the keys, so two readers of the same bytes never share an entry.
    check : callable
        ``check(data)`` raises :class:`~fastmlp.data.sources.DataError` when arrays do not fit the
        data set (shapes, dtypes, labels, class names); run on what ``decode`` returns and on every
        entry read back (a failing entry is decoded again).

    Returns
    -------
    dict
        Arrays private to the caller (``x_*`` (n, ...) uint8 or float, ``y_*`` int64 (n,); from the
        cache they are copy-on-write mappings of its files) and ``label_names``.
    """
    root = cache_dir / "decoded"
    record_path = _record_path(root, source, dataset)
    signature, recorded_ns = _signature(files), time.time_ns()
    record = _read_record(record_path)
    if (record is not None and record.get("signature") == signature and _is_digest(record.get("sha256"))
            and _trusted(signature, record.get("recorded_ns"))):
        data = _read_entry(root / record["sha256"], dataset, check)
        if data is not None:
            return data
    digest = content_hash(files, dataset)
    data = _read_entry(root / digest, dataset, check)
    if data is None:
        data = decode()
        check(data)
        try:
            _write_entry(root, digest, data, dataset, check)
        except OSError as exc:
            # Nothing the caller must change (a read-only or full disk): a log record, not a warning.
            _log.warning(f"could not cache the decoded {dataset} arrays in {root} ({exc}); "
                         "they will be decoded again next time")
            return data
    try:
        _write_json(record_path, {"source": str(source.resolve()), "signature": signature, "sha256": digest,
                                  "recorded_ns": recorded_ns})
    except OSError:
        return data
    if record is not None and _is_digest(record.get("sha256")) and record["sha256"] != digest:
        _prune(root, record["sha256"])
    return data
