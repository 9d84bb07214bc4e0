"""Bounded reads of regular files: the reading side of :mod:`fastmlp.atomic`.

A path from a command line, a data folder, a cache or a shared study storage may
name a FIFO (opening it for reading waits for a writer that never comes), a device
(``/dev/zero`` never ends) or a file far larger than what belongs there. Every
read of such a file goes through here: the file is opened without waiting
(``O_NONBLOCK``; ``O_NOFOLLOW`` too where a symbolic link has no business), the
*open descriptor* is checked to be a regular file (so nothing can be swapped in
between a check and the open), and its size is checked before anything is read.
"""
from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

__all__ = ["open_regular_file", "read_regular_file"]

#: What a non-regular file is, by ``stat`` test, for the messages.
_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def _open_descriptor(path: str | os.PathLike, what: str, follow_symlinks: bool) -> int:
    # O_NONBLOCK: opening a FIFO for reading must not wait for a writer (reads of a
    # regular file ignore the flag).
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        return os.open(path, flags)
    except OSError as exc:
        if not follow_symlinks and exc.errno == errno.ELOOP and os.path.islink(path):
            raise ValueError(f"{what} {os.fspath(path)!r} is a symbolic link, not a regular file") from None
        raise


def open_regular_file(path: str | os.PathLike, *, what: str = "file", follow_symlinks: bool = True) -> BinaryIO:
    """``path`` opened for reading in binary mode, if it is a regular file.

    Parameters
    ----------
    path : path
        The file to open.
    what : str
        How messages name the file before its path (``"--grid file"``, ``"data file"``).
    follow_symlinks : bool
        False refuses a symbolic link as the last part of ``path`` (``O_NOFOLLOW``).

    Returns
    -------
    binary file
        Positioned at the start; the caller closes it (``with``).

    Raises
    ------
    ValueError
        When ``path`` is a FIFO, a device or a socket (or a symbolic link with
        ``follow_symlinks=False``), naming ``what``, the path and what it is.
    OSError
        When it cannot be opened (a folder: ``IsADirectoryError``).
    """
    fd = _open_descriptor(path, what, follow_symlinks)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        if not stat.S_ISREG(mode):
            raise ValueError(f"{what} {os.fspath(path)!r} is {_kind(mode)}, not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: str | os.PathLike, *, limit: int, what: str = "file",
                      follow_symlinks: bool = True) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes.

    Parameters
    ----------
    path : path
        The file to read.
    limit : int
        Most bytes accepted; a larger file is refused before it is read.
    what, follow_symlinks
        As in :func:`open_regular_file`.

    Returns
    -------
    bytes
        At most ``limit`` of them.

    Raises
    ------
    ValueError
        What :func:`open_regular_file` refuses, and a file of more than ``limit``
        bytes, naming ``what``, the path, the limit and the size found.
    OSError
        When it cannot be opened or read.
    """
    with open_regular_file(path, what=what, follow_symlinks=follow_symlinks) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(limit + 1) if size <= limit else b""  # +1: a file growing meanwhile is caught too
    if size > limit or len(data) > limit:
        found = size if size > limit else f"over {limit}"
        raise ValueError(f"{what} {os.fspath(path)!r} holds {found} bytes, more than the limit of {limit}")
    return data
