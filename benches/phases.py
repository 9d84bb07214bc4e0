"""Where the time of one ``python -m fastmlp.train`` run goes, phase by phase.

    python benches/phases.py --data_dir ../shared/data --quiet --out_dir /tmp/phases-run

Runs the trainer's ``main`` in this process with the given flags, after wrapping
the trainer's phases (loading the data, the update, drawing a batch, evaluating,
checkpointing) in timers, and prints the seconds each phase took in all. The
update's time includes drawing its batch; "imports" is the time to import the
trainer. Wrapping adds a few microseconds per call.
"""
from __future__ import annotations

from _native import reexec_native  # noqa: E402  (imports nothing heavy)

if __name__ == "__main__":
    reexec_native()

import sys
import time

START = time.perf_counter()

import fastmlp.data.dataset as dataset  # noqa: E402
import fastmlp.train as train_cli  # noqa: E402
import fastmlp.training as training  # noqa: E402

IMPORTS = time.perf_counter() - START
PHASES = [
    (training, "load_data", "data"),
    (training.MLPHooks, "step", "updates (with their batches)"),
    (dataset.DataSet, "next_batch", "batches"),
    (training.MLPHooks, "evaluate", "evaluations"),
    (training.MLPHooks, "save_checkpoint", "checkpoints"),
]


def timed(function, key: str, totals: dict[str, float]):
    """``function`` wrapped so that its time adds to ``totals[key]``."""
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - start
    return wrapper


def main(argv: list[str]) -> int:
    totals: dict[str, float] = {}
    for owner, name, key in PHASES:
        setattr(owner, name, timed(getattr(owner, name), key, totals))
    start = time.perf_counter()
    code = train_cli.main(argv)
    print(f"imports {IMPORTS:.2f} s, main {time.perf_counter() - start:.2f} s", file=sys.stderr)
    for key, seconds in totals.items():
        print(f"  {key}: {seconds:.2f} s", file=sys.stderr)
    return code or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
