"""The journal file of a study: every line checked when read, a cut last line set aside before appending.

Optuna's :class:`~optuna.storages.journal.JournalFileBackend` keeps a study as one JSON
operation per line. Two kinds of damage are handled here
(:func:`checked_journal_backend_class` builds the backend that does it):

- **a cut last line** (a crash or a full disk in the middle of an append). Readers
  already skip a last line without its newline, as a write still under way; but the
  next append would be written onto it, and the merged line would make the whole file
  unreadable. So before appending, under the journal's lock (no other writer is then
  under way), the bytes after the last newline are moved to a side file
  ``<journal>.cut-<offset>`` and the journal is truncated there, with a warning naming
  the byte offset.
- **a malformed line** (an unknown ``op_code``, a missing field, JSON nested thousands
  deep, not JSON at all): :class:`~fastmlp.search.errors.SearchError` naming the line,
  its byte offset when known, and what is wrong, instead of the ``AssertionError``,
  ``KeyError`` or ``RecursionError`` that Optuna's replay would raise.

Like :mod:`fastmlp.search.storage`, this module uses Optuna internals: the backend's
``_file_path``, ``_lock`` and ``_log_number_offset`` attributes, and the operation codes
of ``optuna.storages.journal._storage.JournalOperation``.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import warnings
from typing import Any, Iterator

from fastmlp.search.errors import SearchError

__all__ = ["MAX_JOURNAL_DEPTH", "check_journal_entry", "checked_journal_backend_class", "set_aside_cut_tail"]

#: Deepest nesting accepted in a journal line. Optuna's own lines are a few levels deep
#: (an attribute holding a dict of lists); deeper values would overflow the recursion of
#: the copies Optuna makes of them.
MAX_JOURNAL_DEPTH = 32

# Fields every operation must carry (Optuna's replay reads them without a check), by
# operation name; "worker_id" is in every line.
_REQUIRED = {
    "CREATE_STUDY": ("study_name", "directions"),
    "DELETE_STUDY": ("study_id",),
    "SET_STUDY_USER_ATTR": ("study_id", "user_attr"),
    "SET_STUDY_SYSTEM_ATTR": ("study_id", "system_attr"),
    "CREATE_TRIAL": ("study_id", "datetime_start"),
    "SET_TRIAL_PARAM": ("trial_id", "param_name", "param_value_internal", "distribution"),
    "SET_TRIAL_STATE_VALUES": ("trial_id", "state", "values"),
    "SET_TRIAL_INTERMEDIATE_VALUE": ("trial_id", "step", "intermediate_value"),
    "SET_TRIAL_USER_ATTR": ("trial_id", "user_attr"),
    "SET_TRIAL_SYSTEM_ATTR": ("trial_id", "system_attr"),
    "DISCARD_TRIALS": (),
}
_CHUNK = 1 << 16
# How every line Optuna writes starts: a cut line starts so too (or with a part of it).
_LINE_START = b'{"op_code":'


def _too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` (parsed JSON) nests lists and dicts more than ``limit`` deep (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_journal_entry(entry: Any, operations: dict[int, str]) -> str | None:
    """What is wrong with one parsed journal line, or None when Optuna can replay it.

    Parameters
    ----------
    entry : any
        The line's JSON value.
    operations : dict
        ``{op_code: operation name}`` of the Optuna version in use.
    """
    if not isinstance(entry, dict):
        return f"a JSON {type(entry).__name__}, not an object"
    op = entry.get("op_code")
    if not _is_int(op) or op not in operations:
        return f"unknown op_code {op!r} (expected one of {sorted(operations)})"
    if _too_deep(entry, MAX_JOURNAL_DEPTH):
        return f"nested more than {MAX_JOURNAL_DEPTH} levels deep"
    missing = [key for key in ("worker_id", *_REQUIRED.get(operations[op], ())) if key not in entry]
    if missing:
        return f"op_code {op} ({operations[op]}) without {missing}"
    for key in ("study_id", "trial_id"):
        if key in entry and not _is_int(entry[key]):
            return f"{key} {entry[key]!r} is not an integer"
    for key in ("user_attr", "system_attr"):
        if key in entry and not (isinstance(entry[key], dict) and len(entry[key]) == 1):
            return f"{key} must be an object of one attribute, got {entry[key]!r}"
    return None


def _last_line_start(f, size: int) -> int:
    """The offset just after the last newline of the open file ``f`` of ``size`` bytes (0: none)."""
    end = size
    while end > 0:
        start = max(0, end - _CHUNK)
        f.seek(start)
        found = f.read(end - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def _side_file(path: str, offset: int):
    """A new file ``<path>.cut-<offset>`` (``-1``, ``-2``... when taken), open for binary writing."""
    for attempt in range(1000):
        name = f"{path}.cut-{offset}" + (f"-{attempt}" if attempt else "")
        try:
            return name, open(name, "xb")
        except FileExistsError:
            continue
    raise FileExistsError(f"{path}.cut-{offset}: 1000 side files of that name exist")


def set_aside_cut_tail(path: str) -> int | None:
    """Move the bytes after the last newline of ``path`` to a side file and truncate it there.

    Call it holding the journal's lock. Warns (``RuntimeWarning``) naming the byte offset
    and the side file.

    Returns
    -------
    int or None
        The offset the journal was truncated at; None when it ended with a newline (or
        was empty) and nothing was done.

    Raises
    ------
    SearchError
        When those bytes do not start as Optuna's lines do (the file is not a journal):
        nothing is changed.
    """
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return None
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return None
        offset = _last_line_start(f, size)
        f.seek(offset)
        head = f.read(len(_LINE_START))
        if not _LINE_START.startswith(head):
            raise SearchError(f"journal storage {path!r} ends in {size - offset} bytes without a newline "
                              f"(from byte offset {offset}) that do not start an Optuna journal line; "
                              "not an Optuna journal? Nothing was changed")
        side, out = _side_file(path, offset)
        with out:
            f.seek(offset)
            shutil.copyfileobj(f, out)
            out.flush()
            os.fsync(out.fileno())
        f.truncate(offset)
        f.flush()
        os.fsync(f.fileno())
    warnings.warn(f"journal storage {path!r} ended in a cut line at byte offset {offset} ({size - offset} "
                  f"bytes without a newline: a write cut by a crash or a full disk); those bytes are set "
                  f"aside in {side!r} and the journal goes on from offset {offset}", RuntimeWarning, stacklevel=2)
    return offset


@functools.lru_cache(maxsize=None)
def checked_journal_backend_class():
    """:class:`optuna.storages.journal.JournalFileBackend` that checks what it reads and repairs a cut end.

    Built on first use because Optuna is optional.
    """
    from optuna.storages.journal import JournalFileBackend
    from optuna.storages.journal._storage import JournalOperation

    operations = {int(op): op.name for op in JournalOperation}

    class CheckedJournalFileBackend(JournalFileBackend):
        """A journal file whose lines are checked when read and whose cut last line is set aside before appending.

        Parameters
        ----------
        file_path : str
            The journal file (created when missing).
        """

        def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
            number = log_number_from
            logs = super().read_logs(log_number_from)
            while True:
                try:
                    entry = next(logs)
                except StopIteration:
                    return
                except (ValueError, RecursionError) as exc:  # not JSON, or JSON too deep to parse
                    reason = "JSON nested too deep to parse" if isinstance(exc, RecursionError) else (
                        f"not a JSON line ({exc})")
                    raise self._malformed(number, reason) from None
                problem = check_journal_entry(entry, operations)
                if problem is not None:
                    raise self._malformed(number, problem)
                number += 1
                yield entry

        def _malformed(self, number: int, reason: str) -> SearchError:
            offset = self._log_number_offset.get(number)
            where = f"line {number + 1}" + (f" (byte offset {offset})" if offset is not None else "")
            return SearchError(f"journal storage {self._file_path!r}: {where} is malformed: {reason}; "
                               "the file was damaged or written by something other than Optuna")

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            self._lock.acquire()
            try:
                set_aside_cut_tail(self._file_path)
                text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
                with open(self._file_path, "ab") as f:
                    f.write(text.encode("utf-8"))
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                self._lock.release()

    return CheckedJournalFileBackend
