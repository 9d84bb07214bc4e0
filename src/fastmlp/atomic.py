"""Atomic file writes: a reader sees the old file or the new one, never half of one.

A file is written beside its target under a temporary name, flushed to disk, then
renamed over the target (``os.replace`` is atomic on POSIX and Windows), and the
folder is flushed too, so that the rename itself survives a power cut. On an
error (or an interruption: Ctrl-C, SIGTERM) the temporary file is removed and the
target is left as it was; an OSError that names no file (a full disk) is raised
again naming the target. Every
file a trainer or a search writes goes through here, as do the data downloads.

JSON is written strictly (:func:`json_text`): NaN and infinities, which JSON does
not have, become ``null``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["atomic_path", "atomic_savez", "atomic_write_json", "atomic_write_text", "fsync_dir", "json_text",
           "make_new_dir"]


def make_new_dir(base: str | os.PathLike) -> Path:
    """Create and return a folder no one else has: ``base``, else ``base-1``, ``base-2``...

    Each name is claimed by an exclusive ``mkdir`` (it fails when the folder exists),
    so two processes choosing at the same moment never get the same folder. The
    parent folders are created as needed.
    """
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = base, 0
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}-{n}")


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk; a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    The caller writes the whole file to the yielded path (any writer that takes a
    file name: ``torch.save``, ``np.savez``, ``Figure.savefig``...). The parent
    folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:  # make the bytes durable before the rename
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
        fsync_dir(path.parent)  # the rename is an entry of the folder: make it durable too
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            # a failed write() names no file: name the one being written (ENOSPC, EFBIG...)
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (Path, np.dtype, type)):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def _finite_or_none(obj: Any) -> Any:
    """``obj`` with NumPy values made Python ones and every NaN/infinite float made ``None``."""
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    elif isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite_or_none(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(value) for value in obj]
    return obj


def json_text(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that writes only JSON: NaN and +-inf become ``null`` (NumPy values, paths allowed).

    ``kwargs`` go to ``json.dumps`` (``indent``, ``sort_keys``...); ``allow_nan`` is
    always False, so nothing outside the JSON grammar can slip through.
    """
    return json.dumps(_finite_or_none(obj), allow_nan=False, default=_json_default, **kwargs)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON with sorted keys to ``path`` atomically (:func:`json_text`)."""
    atomic_write_text(path, json_text(obj, indent=2, sort_keys=True) + "\n")


def atomic_savez(path: str | os.PathLike, **arrays: Any) -> None:
    """``np.savez`` to ``path`` atomically (``path`` should end in ``.npz``)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object stops np.savez appending '.npz'
            np.savez(f, **arrays)
