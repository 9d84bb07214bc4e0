"""What the interleaved-rounds benchmarks (images_gemm.py, small_gemm.py) share: their timer and options."""
from __future__ import annotations

import argparse
import time


def timed(fn, calls):
    """Seconds per call of ``fn``, over ``calls`` calls in a row."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def rounds_parser(doc: str, rounds: int, settle: float) -> argparse.ArgumentParser:
    """A parser described by ``doc``'s first line with ``--rounds`` and ``--settle`` (seconds) and these defaults."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds")
    parser.add_argument("--settle", type=float, default=settle, help="seconds of pause before each timing")
    return parser
