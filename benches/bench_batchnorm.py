"""Forward+backward timing of the custom BatchNorms against nn.BatchNorm1d.

Run with ``pytest benches/bench_batchnorm.py --benchmark-only`` (pyproject's
addopts skip benchmarks otherwise). One benchmark group per device and shape;
CPU runs use one thread so numbers are comparable on a shared machine. CUDA
cases skip when no GPU is available.
"""
import pytest
import torch
from torch import nn

from torch_models.batchnorm import (
    CustomBatchNormAutograd,
    CustomBatchNormManualFunction,
    CustomBatchNormManualModule,
)

SHAPES = [(200, 1024), (600, 512)]
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="CUDA not available")),
]


class _FunctionOnly(nn.Module):
    """The bare autograd Function, without the module's checks and running statistics."""

    def __init__(self, n_neurons):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_neurons))
        self.bias = nn.Parameter(torch.zeros(n_neurons))

    def forward(self, x):
        return CustomBatchNormManualFunction.apply(x, self.weight, self.bias, 1e-5)


def _affine_params(module):
    if isinstance(module, (nn.BatchNorm1d, _FunctionOnly)):
        return module.weight, module.bias
    return module.gamma, module.beta


IMPLEMENTATIONS = {
    "nn.BatchNorm1d": nn.BatchNorm1d,
    "CustomBatchNormAutograd": CustomBatchNormAutograd,
    "CustomBatchNormManualModule": CustomBatchNormManualModule,
    "CustomBatchNormManualFunction": _FunctionOnly,
}


@pytest.fixture
def single_cpu_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: f"{shape[0]}x{shape[1]}")
@pytest.mark.parametrize("name", list(IMPLEMENTATIONS))
def test_batchnorm_forward_backward(benchmark, single_cpu_thread, name, shape, device):
    batch, n_neurons = shape
    generator = torch.Generator().manual_seed(0)
    module = IMPLEMENTATIONS[name](n_neurons).to(device).train()
    gamma, beta = _affine_params(module)
    x = (torch.randn(batch, n_neurons, generator=generator) * 2 + 1).to(device).requires_grad_(True)
    grad_out = torch.randn(batch, n_neurons, generator=generator).to(device)
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        out = module(x)
        grads = torch.autograd.grad(out, (x, gamma, beta), grad_out)
        synchronize()
        return out, grads

    step()  # one-time kernel/dispatch set-up would otherwise skew pytest-benchmark's calibration
    benchmark.group = f"{device} batch {batch} x {n_neurons}"
    benchmark.extra_info.update(device=device, batch=batch, n_neurons=n_neurons,
                                threads=torch.get_num_threads())
    out, grads = benchmark(step)
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(grad).all() for grad in grads)
