"""Atomic file writes: a reader sees the old file or the new one, never half of one.

A file is written beside its target under a temporary name, flushed to disk, then
renamed over the target (``os.replace`` is atomic on POSIX and Windows). On an
error the temporary file is removed and the target is left as it was. Every
file a trainer or a search writes goes through here, as do the data downloads.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["atomic_path", "atomic_savez", "atomic_write_json", "atomic_write_text"]


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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, np.dtype, type)):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON with sorted keys to ``path`` atomically (NumPy values allowed)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_savez(path: str | os.PathLike, **arrays: Any) -> None:
    """``np.savez`` to ``path`` atomically (``path`` should end in ``.npz``)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object stops np.savez appending '.npz'
            np.savez(f, **arrays)
