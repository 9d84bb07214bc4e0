"""One float32 training step: fastmlp vs the NumPy reference vs PyTorch CPU, plus the sgemm roofline.

Run ``pytest benches/bench_train_step.py --benchmark-only`` (or ``python benches/report.py``
for the ratio table). Each group is one (architecture, batch) point of the issue.
"""
import math

import pytest

from _steps import CONFIGS, fastmlp_step, numpy_step, sgemm_call, step_flops, torch_step

IMPLS = {"fastmlp": fastmlp_step, "numpy": numpy_step, "torch": torch_step}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("name,hidden,batch", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_train_step(benchmark, impl, name, hidden, batch):
    if impl == "torch":
        pytest.importorskip("torch")
    step = IMPLS[impl](hidden, batch)
    benchmark.group = name
    benchmark.extra_info.update(impl=impl, config=name, flops=step_flops(hidden, batch))
    loss = benchmark(step)
    assert math.isfinite(loss)


def test_sgemm_roofline(benchmark):
    call, flops = sgemm_call()
    benchmark.group = "roofline sgemm 2048^3"
    benchmark.extra_info.update(impl="sgemm", flops=flops)
    c = benchmark(call)
    assert math.isfinite(float(c[0, 0]))
