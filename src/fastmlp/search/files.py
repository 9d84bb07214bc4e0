"""Bounded reads of the files a search is pointed at: a ``--grid`` / ``--space`` file, a trial's record.

A path given on the command line or found in a shared storage may name a device
(``/dev/zero``), a FIFO or a huge file; :func:`read_regular_file` reads a regular file
of bounded size and refuses anything else before reading it, so no read hangs or
fills the memory.
"""
from __future__ import annotations

import os
import stat

__all__ = ["read_regular_file"]


def read_regular_file(path: str | os.PathLike, *, limit: int, what: str) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes.

    Parameters
    ----------
    path : path
        The file to read (a symbolic link is followed).
    limit : int
        Most bytes accepted.
    what : str
        How the message names the file (``"--grid file"``).

    Returns
    -------
    bytes

    Raises
    ------
    ValueError
        When ``path`` is not a regular file (a device, a FIFO, a socket) or holds more
        than ``limit`` bytes, naming ``what``, the path and what it is.
    OSError
        When it cannot be opened or read (a folder: ``IsADirectoryError``).
    """
    # O_NONBLOCK: opening a FIFO for reading must not wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # (a folder fails to open as a file)
            raise ValueError(f"{what} {os.fspath(path)!r} is a device, FIFO or socket, not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{what} {os.fspath(path)!r} holds more than {limit} bytes; "
                         f"expected at most {limit}")
    return data
