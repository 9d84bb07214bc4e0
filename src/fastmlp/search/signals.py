"""SIGTERM and SIGHUP end a search the way Ctrl-C does, in the parent and in every worker.

:func:`signals_as_interrupts` turns the signals into :class:`fastmlp.exits.Stopped`
(the trainers' own, a ``KeyboardInterrupt``), so every path that handles Ctrl-C handles them too: the running
trial is marked interrupted (and queued again by the next run), the workers are told
and waited for, and the exit status says which signal it was (:func:`exit_status`:
the trainers' table, 130 SIGINT, 143 SIGTERM, 129 SIGHUP).

A worker process may get one signal twice (from the terminal or a ``kill`` of the
whole process group, and again from its parent, which forwards what it gets):
``once=True`` interrupts it at the first and ignores the rest, so a repeat cannot cut
short the marking of its trial.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from typing import Callable, Iterable, Iterator

from fastmlp.exits import EXIT_SIGTERM, Stopped, interrupted_status

__all__ = ["HANDLED_SIGNALS", "STOP_SIGNALS", "end_with_parent", "exit_status", "ignoring",
           "signal_name", "signal_of", "signals_as_interrupts"]

#: The signals turned into :class:`fastmlp.exits.Stopped` (SIGINT already raises KeyboardInterrupt).
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
#: Every signal that stops a search the way Ctrl-C does.
STOP_SIGNALS = (signal.SIGINT, *HANDLED_SIGNALS)
# prctl's option: the signal the kernel sends a process when the thread that started it ends.
_PR_SET_PDEATHSIG = 1


def signal_of(exc: KeyboardInterrupt) -> int:
    """The signal behind ``exc``: its ``signum`` for :class:`fastmlp.exits.Stopped`, else SIGINT (Ctrl-C)."""
    return int(getattr(exc, "signum", signal.SIGINT))


def exit_status(exc: KeyboardInterrupt) -> int:
    """The exit status for the signal behind ``exc`` (:func:`fastmlp.exits.interrupted_status`)."""
    return interrupted_status(exc)


def signal_name(exc: KeyboardInterrupt) -> str:
    """``"SIGTERM"``, ``"SIGHUP"`` or ``"SIGINT"``."""
    return signal.Signals(signal_of(exc)).name


@contextlib.contextmanager
def _handled(signals: Iterable[int], handler) -> Iterator[None]:
    """Within the block, ``signals`` go to ``handler``; only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in signals}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _interrupting(once: bool) -> Callable[[int, object], None]:
    received = []

    def handler(signum: int, frame) -> None:
        if once and received:
            return
        received.append(signum)
        raise KeyboardInterrupt() if signum == signal.SIGINT else Stopped(signum)

    return handler


def signals_as_interrupts(signals: Iterable[int] = HANDLED_SIGNALS, *, once: bool = False):
    """A context manager: within it, each of ``signals`` raises :class:`fastmlp.exits.Stopped` (SIGINT: KeyboardInterrupt).

    ``once=True``: only the first signal raises; later ones are ignored.
    """
    return _handled(signals, _interrupting(once))


def ignoring(signals: Iterable[int] = STOP_SIGNALS):
    """A context manager: within it, ``signals`` are ignored (a process waiting for its workers to stop)."""
    return _handled(signals, signal.SIG_IGN)


def end_with_parent(parent_pid: int) -> None:
    """Have the kernel send this process SIGTERM when its parent ends (Linux; elsewhere nothing).

    So that the workers of a parent killed without a chance to stop them (SIGKILL) stop
    too, instead of going on under init. Exits at once if the parent is already gone.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent ended before the request was in place
        sys.exit(EXIT_SIGTERM)
