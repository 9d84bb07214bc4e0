"""The search's two errors: the user's input (exit status 2) and a failed worker process (1)."""
from __future__ import annotations

__all__ = ["SearchError", "WorkerError"]


class SearchError(ValueError):
    """A bad flag or an unusable storage / data folder; the message is one line for the user."""


class WorkerError(RuntimeError):
    """A worker process started by ``--n_workers`` exited with an error."""
