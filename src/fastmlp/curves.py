"""A run's curves: read ``curves.csv`` and draw loss and accuracy against step.

Why a module of its own: the training writes the picture on request (``--plot``,
through :class:`fastmlp.runlog.RunLog`) and ``python -m fastmlp.plot`` draws any run
afterwards; both draw the same way, and the library must not import a command line.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Mapping, Sequence

from fastmlp.atomic import atomic_path

__all__ = ["draw_curves", "read_curves"]

SPLITS = (("train", "-", "train (batch)"), ("validation", "--", "validation (whole set)"),
          ("test", "-o", "test (whole set)"))


def read_curves(path: str | Path) -> list[dict[str, float]]:
    """The rows of a ``curves.csv`` (or of ``<run>/curves.csv``), blank cells left out."""
    path = Path(path)
    if path.is_dir():
        path = path / "curves.csv"
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def draw_curves(runs: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path) -> Path | None:
    """Draw loss and accuracy against step for every run in ``runs`` (label -> rows) into the PNG ``path``.

    Returns the path, or ``None`` when matplotlib (the ``plot`` extra) is not installed.
    The file is written atomically.
    """
    try:
        # Figure + the Agg canvas directly: importing pyplot costs more than drawing.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for run, rows in runs.items():
            prefix = f"{run}: " if len(runs) > 1 else ""
            for split, style, label in SPLITS:
                points = [(r["step"], r[f"{split}_{metric}"]) for r in rows if f"{split}_{metric}" in r]
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, style, label=prefix + label, markersize=3, alpha=0.6 if split == "train" else 1.0)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.set_title(metric.capitalize())
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path
