"""Run outputs shared by every trainer (fastmlp.train, torch_models.train_*).

:class:`RunLog` writes ``metrics.json``, ``curves.csv`` and ``curves.png`` (always
atomically, through :mod:`fastmlp.atomic`); here too are the output folder's
default name, the ``--resume`` path lookup, the progress bar and the divergence
check every trainer applies to its losses.
"""
from __future__ import annotations

import csv
import io
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

from fastmlp.atomic import atomic_write_json, atomic_write_text, make_new_dir
from fastmlp.version import __version__

__all__ = [
    "CURVE_COLUMNS",
    "DivergenceError",
    "HiddenBar",
    "RunLog",
    "check_curve_rows",
    "check_finite",
    "default_out_dir",
    "progress_bar",
    "resolve_checkpoint",
]

# Columns of curves.csv; a value that was not measured at a step is left blank.
CURVE_COLUMNS = (
    "step",
    "train_loss",
    "train_accuracy",
    "validation_loss",
    "validation_accuracy",
    "test_loss",
    "test_accuracy",
    "learning_rate",
)


class DivergenceError(RuntimeError):
    """Training produced a NaN or infinite loss (or parameters).

    ``detail`` says what was found (default ``"loss is <loss>"``).
    """

    def __init__(self, step: int, loss: float, detail: str | None = None):
        super().__init__(
            f"training diverged at step {step}: {detail or f'loss is {loss!r}'}. The last good "
            "checkpoint (if any) was kept; try a smaller --learning_rate."
        )
        self.step = step
        self.loss = loss


def check_finite(loss: float, step: int, what: str = "loss") -> float:
    """Return ``loss`` as a float, or raise :class:`DivergenceError` naming ``step`` (and ``what``)."""
    loss = float(loss)
    if not math.isfinite(loss):
        raise DivergenceError(step, loss, None if what == "loss" else f"{what} is {loss!r}")
    return loss


def check_curve_rows(rows: Any) -> None:
    """Refuse curve rows (read back from a checkpoint) that :meth:`RunLog.record` could not have written.

    Each row is a dict of :data:`CURVE_COLUMNS` holding an int ``step`` >= 0 and finite
    numbers, steps increasing. Checked on ``--resume`` before training, so that a damaged
    row stops the run at once rather than after all of its steps.

    Raises
    ------
    ValueError
        Naming the first bad row and column.
    """
    if not isinstance(rows, list):
        raise ValueError(f"the curve rows are a {type(rows).__name__}, not a list")
    last = -1
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"curve row {i} is a {type(row).__name__}, not a dict")
        unknown = sorted(set(row) - set(CURVE_COLUMNS), key=str)
        if unknown:
            raise ValueError(f"curve row {i} has unknown column(s) {unknown}")
        step = row.get("step")
        if type(step) is not int or step <= last:
            raise ValueError(f"curve row {i}: 'step' is {step!r}, expected an int greater than the row before's")
        last = step
        for column, value in row.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"curve row {i}: {column!r} is {value!r}, expected a finite number")


def default_out_dir(root: str | os.PathLike = "runs", prefix: str = "") -> Path:
    """A new folder ``runs/<prefix><YYYYmmdd-HHMMSS>`` (``-1``, ``-2``... when taken), created here.

    The folder is claimed by creating it (:func:`fastmlp.atomic.make_new_dir`): two
    runs started in the same second get two folders.
    """
    return make_new_dir(Path(root) / f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}")


def resolve_checkpoint(path: str | os.PathLike, name: str) -> Path:
    """``path`` itself if it is a file, ``path/<name>`` if it is a run folder (for ``--resume``).

    Raises ``FileNotFoundError`` naming ``--resume`` when neither exists.
    """
    path = Path(path)
    candidate = path / name if path.is_dir() else path
    if not candidate.is_file():
        where = f"run folder {str(path)!r} holds no {name}" if path.is_dir() else f"{str(path)!r} does not exist"
        raise FileNotFoundError(f"--resume: cannot resume: {where} (give a {name} file or a run folder holding one)")
    return candidate


class HiddenBar:
    """What :func:`progress_bar` returns when disabled: tqdm's calls, doing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, *, initial: int = 0, disable: bool = False, desc: str = "train"):
    """A tqdm bar over optimisation steps; a :class:`HiddenBar` for ``disable=True`` (--quiet, non-zero ranks).

    Importing tqdm.auto imports asyncio, a noticeable part of a short run's start, so a
    run that shows no bar does not import it.
    """
    if disable:
        return HiddenBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)


class RunLog:
    """The curves and final metrics of one training run, kept in ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Folder for ``curves.csv``, ``curves.png`` and ``metrics.json`` (created).
    flags : mapping
        The run's configuration; stored under ``"flags"`` in ``metrics.json``.
    enabled : bool
        ``False`` on non-zero distributed ranks: nothing is written.
    plot : bool
        ``finish`` also draws ``curves.png`` (matplotlib: 0.5-1 s, so only on request;
        ``python -m fastmlp.plot`` draws any run later).

    ``record`` appends a row (and rewrites ``curves.csv`` atomically: the file
    is small); ``finish`` writes ``metrics.json`` (and the plot). On ``--resume``
    the checkpoint's rows are put back with :meth:`restore`.
    """

    def __init__(self, out_dir: str | os.PathLike, flags: Mapping[str, Any], *, enabled: bool = True,
                 plot: bool = False):
        self.out_dir = Path(out_dir)
        self.draws_plot = bool(plot)
        self.flags = dict(flags)
        self.enabled = enabled
        self.rows: list[dict[str, float]] = []
        if enabled:
            self.out_dir.mkdir(parents=True, exist_ok=True)

    @property
    def curves_path(self) -> Path:
        return self.out_dir / "curves.csv"

    def restore(self, rows: list[dict], up_to_step: int | None = None) -> None:
        """Replace the rows (e.g. from a checkpoint on ``--resume``) and rewrite ``curves.csv``.

        Rows after ``up_to_step`` are dropped: they belong to the part of the run
        that is about to be redone. Raises ValueError for rows :func:`check_curve_rows` refuses.
        """
        check_curve_rows(rows)
        self.rows = [dict(row) for row in rows if up_to_step is None or row["step"] <= up_to_step]
        if self.enabled:
            self._write_csv()

    def record(self, step: int, **values: float) -> None:
        """Append the values measured at ``step`` (names from :data:`CURVE_COLUMNS`)."""
        unknown = set(values) - set(CURVE_COLUMNS)
        if unknown:
            raise ValueError(f"unknown curve column(s) {sorted(unknown)}; expected names from {CURVE_COLUMNS}")
        row = {"step": int(step)}
        row.update({k: float(v) for k, v in values.items() if v is not None})
        self.rows.append(row)
        if self.enabled:
            self._write_csv()

    def _write_csv(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CURVE_COLUMNS, restval="", lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
        atomic_write_text(self.curves_path, buf.getvalue())

    def best(self, column: str) -> float | None:
        """Largest value recorded in ``column`` (``None`` if never recorded)."""
        values = [row[column] for row in self.rows if column in row]
        return max(values) if values else None

    def finish(self, **metrics: Any) -> dict[str, Any]:
        """Write ``metrics.json`` (flags, version, ``metrics``), and ``curves.png`` if asked; return the dict."""
        out = {"flags": self.flags, "fastmlp_version": __version__}
        for column in ("test_accuracy", "validation_accuracy"):
            best = self.best(column)
            if best is not None:
                out[f"best_{column}"] = best
        out.update(metrics)
        if self.enabled:
            atomic_write_json(self.out_dir / "metrics.json", out)
            if self.draws_plot:
                self.plot()
        return out

    def plot(self) -> Path | None:
        """Draw the curves to ``curves.png`` (:func:`fastmlp.curves.draw_curves`); None without matplotlib."""
        from fastmlp.curves import draw_curves

        return draw_curves({"": self.rows}, self.out_dir / "curves.png")
