"""Training runs shared by the torch trainer tests (test_torch_trainers.py on the CPU, test_torch_gpu.py)."""
from __future__ import annotations

import pytest


class Interrupted(Exception):
    """Raised from on_eval to simulate a run killed right after a checkpoint."""


def train_until(module, argv, data, stop_step):
    """``module.train`` on ``argv``, killed (as by a crash) right after the checkpoint of ``stop_step``."""
    def stop(step, metrics):
        if step == stop_step:
            raise Interrupted

    with pytest.raises(Interrupted):
        module.train(module.build_parser().parse_args(argv), data=data, on_eval=stop)


def run_cut_and_resume(module, flags, data, tmp_path, stop_step):
    """Train ``flags`` whole into tmp_path/whole, and again into tmp_path/cut stopped after the
    evaluation at ``stop_step`` and resumed from its checkpoint; return (whole, resumed) metrics."""
    parser = module.build_parser()
    whole = module.train(parser.parse_args(flags + ["--out_dir", str(tmp_path / "whole")]), data=data)
    train_until(module, flags + ["--out_dir", str(tmp_path / "cut")], data, stop_step)
    resumed = module.train(parser.parse_args(flags + ["--resume", str(tmp_path / "cut")]), data=data)
    assert resumed["out_dir"] == str(tmp_path / "cut")
    return whole, resumed
