"""A run folder belongs to one run: claimed for the run, refused when it holds another one.

Why: two trainings started into one ``--out_dir``, or a new run started into a
finished run's folder, used to mix their files (one run's ``metrics.json`` beside
the other's checkpoint and curves) and lose a checkpoint without a word.

:func:`claimed_run_dir` holds an exclusive ``flock`` on the folder itself (an open
descriptor of the directory, so nothing is left in it) for as long as the run
writes there: a second run into the same folder is refused at once. A folder that
already holds a run's files is refused too, unless the run continues it
(``--resume``) or replaces it (``--overwrite``, which deletes those files first).
Temporary files that a killed run's interrupted atomic writes left
(``.<name>.<random>.tmp``, see :mod:`fastmlp.atomic`) are removed once the folder
is claimed, and again when the run lets it go, however it ends: no other run can be
writing them then.

``flock`` is POSIX; where ``fcntl`` is missing the folder is not locked (the
refusal of a folder holding a run still applies).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["RUN_FILES", "claimed_run_dir", "remove_stale_temporaries"]

#: Files that mark a folder as holding a run (any trainer's checkpoint, its curves or metrics).
RUN_FILES = ("checkpoint.npz", "checkpoint.pt", "metrics.json", "curves.csv", "curves.png")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes of a run's files in ``folder``; return them.

    Only names :func:`fastmlp.atomic.atomic_path` makes for :data:`RUN_FILES` (a dot,
    the file's name, a random part, ``.tmp``) are touched.
    """
    removed = []
    for path in (stale for name in RUN_FILES for stale in Path(folder).glob(f".{name}.*.tmp")):
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            if path.is_file():
                path.unlink()
                removed.append(path)
    return removed


def _lock(folder: Path) -> int | None:
    """An open descriptor of ``folder`` holding its exclusive lock (None where locks do not exist).

    Raises
    ------
    ValueError
        When another process holds the folder.
    """
    if fcntl is None:
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(f"--out_dir {str(folder)!r}: another run is writing into this folder; wait for it "
                         "to end, or choose another --out_dir") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_free(folder: Path, *, overwrite: bool) -> None:
    """Refuse a folder holding a run's files; with ``overwrite``, delete them instead."""
    found = [name for name in RUN_FILES if (folder / name).is_file()]
    if not found:
        return
    if not overwrite:
        raise ValueError(f"--out_dir {str(folder)!r} already holds a run ({', '.join(found)}): continue it with "
                         f"--resume {str(folder)!r}, replace it with --overwrite, or choose another --out_dir")
    for name in found:
        (folder / name).unlink()


@contextlib.contextmanager
def claimed_run_dir(out_dir: str | os.PathLike, *, resuming: bool = False,
                    overwrite: bool = False) -> Iterator[Path]:
    """Create ``out_dir`` if needed and hold it for the block; yield it as a Path.

    Parameters
    ----------
    out_dir : path
        The run's output folder.
    resuming : bool
        The run continues the one in the folder (``--resume``): its files are expected.
    overwrite : bool
        The run replaces the one in the folder: its files are deleted.

    Raises
    ------
    ValueError
        The folder is held by another run, or holds a run and neither ``resuming`` nor
        ``overwrite`` is set.
    OSError
        When the folder cannot be created or opened (a file in the way, a name too
        long, no permission): the OS's error, naming the path.
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fd = _lock(folder)
    try:
        if not resuming:
            _check_free(folder, overwrite=overwrite)
        remove_stale_temporaries(folder)
        yield folder
    finally:
        # Again on the way out, still holding the lock: a signal that landed between an atomic
        # write's creating its temporary file and its cleanup taking charge of it left one.
        remove_stale_temporaries(folder)
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock
