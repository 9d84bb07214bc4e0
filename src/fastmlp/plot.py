"""Draw a run's loss and accuracy curves from its ``curves.csv``: ``python -m fastmlp.plot RUN [RUN ...]``.

Training writes the numbers (``curves.csv``) and draws the picture only when
asked (``--plot``): importing matplotlib and drawing costs 0.5-1 s, a tenth of
the course's default run. This command draws any finished or running run
afterwards, and overlays several runs in one figure to compare them.

Examples::

    python -m fastmlp.plot runs/20260101-120000             # -> runs/20260101-120000/curves.png
    python -m fastmlp.plot runs/a runs/b --out compare.png  # both runs in one figure
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Mapping, Sequence

from fastmlp.atomic import atomic_path

__all__ = ["draw_curves", "main", "read_curves"]

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastmlp.plot", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (or curves.csv files)")
    parser.add_argument("--out", type=Path, default=None,
                        help="PNG to write (default: <run>/curves.png for one run, curves.png for several)")
    args = parser.parse_args(argv)
    try:
        runs = {str(run): read_curves(run) for run in args.runs}
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: cannot read the curves: {exc}", file=sys.stderr)
        return 2
    out = args.out or ((args.runs[0] if args.runs[0].is_dir() else args.runs[0].parent) / "curves.png"
                       if len(args.runs) == 1 else Path("curves.png"))
    if draw_curves(runs, out) is None:
        print("error: drawing needs matplotlib: pip install 'fastmlp[plot]'", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
