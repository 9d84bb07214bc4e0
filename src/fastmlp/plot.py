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
import sys
from pathlib import Path

# The drawing is library code (the training draws with it too); this module is its command line.
from fastmlp.cli import HelpFormatter
from fastmlp.curves import draw_curves, read_curves

__all__ = ["draw_curves", "main", "read_curves"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastmlp.plot", description=__doc__.split("\n")[0],
                                     formatter_class=HelpFormatter)
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
