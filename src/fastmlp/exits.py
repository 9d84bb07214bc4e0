"""How a run ends, as every command line reports it: the exit statuses and the stop signals' exception.

A library module, so that the search's processes and the trainers' command lines
share one table (:data:`EXIT_STATUSES`, the README's) without a library module
importing a command line.
"""
from __future__ import annotations

import signal

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_DIVERGED",
    "EXIT_INTERRUPTED",
    "EXIT_IO_ERROR",
    "EXIT_SIGHUP",
    "EXIT_SIGTERM",
    "EXIT_STATUSES",
    "Stopped",
    "interrupted_status",
]

EXIT_DIVERGED = 1
EXIT_BAD_INPUT = 2
EXIT_IO_ERROR = 74  # EX_IOERR of sysexits.h: the disk, not the flags, is at fault
EXIT_SIGHUP = 129  # 128 + SIGHUP, as shells report a hung-up terminal
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
EXIT_SIGTERM = 143  # 128 + SIGTERM, as shells report a kill

#: Every trainer's and the search's exit statuses, as the README's table gives them.
EXIT_STATUSES = {
    0: "done",
    EXIT_DIVERGED: "training diverged (the last good checkpoint is kept)",
    EXIT_BAD_INPUT: "bad input: a flag, a checkpoint, the data, a folder holding another run",
    EXIT_IO_ERROR: "I/O error: a file or folder could not be read or written (the OS's reason is printed)",
    EXIT_SIGHUP: "ended by SIGHUP (the command that resumes is printed)",
    EXIT_INTERRUPTED: "ended by Ctrl-C, SIGINT (the command that resumes is printed)",
    EXIT_SIGTERM: "ended by SIGTERM (the command that resumes is printed)",
}


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``signum``) arrived: the run ends as on Ctrl-C.

    A KeyboardInterrupt, so that whatever cleans up after Ctrl-C (the atomic writes'
    temporary files, the torch process group) cleans up after these too.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupted_status(exc: KeyboardInterrupt) -> int:
    """The exit status of a run (or search) that ``exc`` stopped: a :class:`Stopped`'s signal, else Ctrl-C."""
    signum = getattr(exc, "signum", signal.SIGINT)
    return {signal.SIGTERM: EXIT_SIGTERM, signal.SIGHUP: EXIT_SIGHUP}.get(signum, EXIT_INTERRUPTED)
