"""``--n_workers N``: N worker processes on this machine, started, waited for, stopped with their parent.

The processes are spawned (a fresh interpreter each: torch and BLAS threads do not
survive a fork), each given its :class:`~fastmlp.search.settings.SearchSettings` with
its own ``--worker_index``, and run :func:`fastmlp.search.workers.run_worker`. A signal
to the parent (Ctrl-C, SIGTERM, SIGHUP) is forwarded to them and they are waited for
(:func:`stop_workers`); a worker whose parent dies ends too.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time

from fastmlp.search import signals
from fastmlp.search.adapter import TrainerAdapter, threads_per_worker
from fastmlp.search.errors import SearchError, WorkerError
from fastmlp.search.reports import warnings_as_lines
from fastmlp.search.settings import SearchSettings
from fastmlp.search.workers import run_worker

__all__ = ["STOP_TIMEOUT", "run_workers", "stop_workers", "worker_process"]

#: Seconds the parent waits for its workers to stop after forwarding them a signal, before SIGKILL.
STOP_TIMEOUT = 60.0


def worker_process(settings: SearchSettings, adapter: TrainerAdapter) -> None:
    """Entry point of a worker process started by ``--n_workers`` (spawned: a fresh interpreter).

    ``settings`` are the parent's with this worker's ``worker_index``, ``adapter`` the parent's.
    SIGINT, SIGTERM and SIGHUP stop it as Ctrl-C does (its trial is marked interrupted);
    it exits with 128 + the signal's number. It ends with its parent (SIGTERM) if the
    parent dies without stopping it.
    """
    signals.end_with_parent(multiprocessing.parent_process().pid)
    with signals.signals_as_interrupts(signals.STOP_SIGNALS, once=True), \
            warnings_as_lines(f"fastmlp.search worker {settings.worker_index}"):
        try:
            run_worker(settings, adapter)
        except KeyboardInterrupt as exc:
            sys.exit(signals.exit_status(exc))
        except SearchError as exc:
            print(f"fastmlp.search worker {settings.worker_index}: error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)


@contextlib.contextmanager
def _blas_threads_in_environment(threads: int | None):
    """BLAS reads its thread count when it loads, so it must be in the children's environment."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    try:
        for name in names:
            if saved[name] is None and threads is not None:
                os.environ[name] = str(threads)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_workers(settings: SearchSettings, adapter: TrainerAdapter) -> None:
    """Start ``--n_workers`` worker processes and wait for them.

    On Ctrl-C, SIGTERM or SIGHUP (a ``KeyboardInterrupt``, :mod:`fastmlp.search.signals`)
    the signal is forwarded to every worker, they are waited for
    (:func:`stop_workers`), and the interrupt propagates.

    Raises
    ------
    WorkerError
        If a worker exited with an error (its message is on stderr).
    """
    context = multiprocessing.get_context("spawn")  # no fork: torch and BLAS threads do not survive it
    processes = []
    try:
        with _blas_threads_in_environment(threads_per_worker(settings)):
            for index in range(settings.n_workers):
                worker = settings.replace(worker_index=settings.worker_index + index)
                process = context.Process(target=worker_process, args=(worker, adapter),
                                          name=f"fastmlp-search-worker-{index}")
                process.start()
                processes.append(process)
        for process in processes:
            process.join()
    except KeyboardInterrupt as exc:
        stop_workers(processes, signals.signal_of(exc))
        raise
    failed = [(p.name, p.exitcode) for p in processes if p.exitcode != 0]
    if failed:
        raise WorkerError("worker process(es) failed: " + ", ".join(f"{n} exit code {c}" for n, c in failed)
                          + " (see their messages above)")


def stop_workers(processes: list, signum: int, *, timeout: float = STOP_TIMEOUT) -> None:
    """Send ``signum`` to the live ``processes`` and wait for them; SIGKILL those alive after ``timeout`` s.

    Further stop signals to this process are ignored meanwhile, so that none leaves a
    worker running without its parent.
    """
    with signals.ignoring():
        for process in processes:
            if process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)
        deadline = time.monotonic() + timeout
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                process.kill()  # its trial stays RUNNING until the heartbeat rules fail and requeue it
                process.join()
