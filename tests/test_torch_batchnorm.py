"""Tests of torch_models.batchnorm against autograd, finite differences and nn.BatchNorm1d."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from torch_models.batchnorm import (
    CustomBatchNormAutograd,
    CustomBatchNormManualFunction,
    CustomBatchNormManualModule,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")

CUSTOM_MODULES = [CustomBatchNormAutograd, CustomBatchNormManualModule]
DTYPES = [torch.float32, torch.float64]
# float32 differences come from a different summation order; float64 is near exact.
TOLERANCES = {
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float64: dict(rtol=1e-10, atol=1e-12),
}




def _shifted_batch(batch, n_neurons, dtype):
    """Features with different means and scales so the normalisation does real work."""
    scale = torch.linspace(0.5, 4.0, n_neurons, dtype=dtype)
    shift = torch.linspace(-3.0, 2.0, n_neurons, dtype=dtype)
    return torch.randn(batch, n_neurons, dtype=dtype) * scale + shift


def _make_pair(module_cls, n_neurons, dtype):
    """A custom module and an nn.BatchNorm1d with the same random gamma/beta."""
    custom = module_cls(n_neurons).to(dtype)
    reference = nn.BatchNorm1d(n_neurons).to(dtype)
    with torch.no_grad():
        gamma = 1.0 + 0.5 * torch.randn(n_neurons, dtype=dtype)
        beta = torch.randn(n_neurons, dtype=dtype)
        custom.gamma.copy_(gamma)
        custom.beta.copy_(beta)
        reference.weight.copy_(gamma)
        reference.bias.copy_(beta)
    return custom, reference


def _output_and_grads(module, x, dy, gamma, beta):
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    grads = torch.autograd.grad(out, (x, gamma, beta), dy)
    return out.detach(), grads


# --------------------------------------------------------------------------- Function


@pytest.mark.parametrize(
    "requires_grad",
    [(True, True, True), (True, False, False), (False, True, False), (False, False, True),
     (True, True, False), (False, True, True)],
    ids=lambda flags: "".join("xgb"[i] if flag else "-" for i, flag in enumerate(flags)),
)
def test_manual_function_gradcheck_float64(requires_grad):
    torch.manual_seed(0)
    x = _shifted_batch(6, 4, torch.float64)
    gamma = 1.0 + 0.5 * torch.randn(4, dtype=torch.float64)
    beta = torch.randn(4, dtype=torch.float64)
    inputs = tuple(t.requires_grad_(flag) for t, flag in zip((x, gamma, beta), requires_grad))
    assert torch.autograd.gradcheck(
        lambda x, gamma, beta: CustomBatchNormManualFunction.apply(x, gamma, beta, 1e-5),
        inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("needs", [(False, True, False, False), (False, False, True, False),
                                   (True, False, False, False), (False, True, True, False)])
def test_manual_backward_returns_only_requested_gradients(needs):
    torch.manual_seed(1)
    x = _shifted_batch(5, 3, torch.float64)
    gamma = torch.randn(3, dtype=torch.float64)
    var, mean = torch.var_mean(x, dim=0, correction=0)
    inv_std = torch.rsqrt(var + 1e-5)
    xhat = (x - mean) * inv_std
    ctx = SimpleNamespace(saved_tensors=(xhat, inv_std, gamma), needs_input_grad=needs)
    dy = torch.randn(5, 3, dtype=torch.float64)

    grads = CustomBatchNormManualFunction.backward(ctx, dy)

    assert len(grads) == 4
    assert grads[3] is None
    for grad, needed in zip(grads[:3], needs[:3]):
        assert (grad is not None) == needed
    if needs[1]:
        assert_close(grads[1], (dy * xhat).sum(0))
    if needs[2]:
        assert_close(grads[2], dy.sum(0))


def test_manual_function_saves_nothing_for_beta_only():
    torch.manual_seed(2)
    x = _shifted_batch(4, 3, torch.float64)
    gamma = torch.randn(3, dtype=torch.float64)
    beta = torch.randn(3, dtype=torch.float64, requires_grad=True)
    out = CustomBatchNormManualFunction.apply(x, gamma, beta, 1e-5)
    assert all(saved is None for saved in out.grad_fn.saved_tensors)
    (grad_beta,) = torch.autograd.grad(out.sum(), beta)
    assert_close(grad_beta, torch.full((3,), 4.0, dtype=torch.float64))


def test_manual_function_forward_normalises_with_biased_variance():
    torch.manual_seed(3)
    x = _shifted_batch(10, 5, torch.float64)
    out = CustomBatchNormManualFunction.apply(x, torch.ones(5, dtype=torch.float64),
                                              torch.zeros(5, dtype=torch.float64), 1e-12)
    assert_close(out.mean(0), torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0)
    assert_close(out.var(0, correction=0), torch.ones(5, dtype=torch.float64), atol=1e-9, rtol=0)


def test_manual_backward_matches_autograd_module_float32():
    torch.manual_seed(4)
    autograd_bn = CustomBatchNormAutograd(32)
    manual_bn = CustomBatchNormManualModule(32)
    with torch.no_grad():
        gamma = 1.0 + 0.5 * torch.randn(32)
        beta = torch.randn(32)
        for module in (autograd_bn, manual_bn):
            module.gamma.copy_(gamma)
            module.beta.copy_(beta)
    x = _shifted_batch(64, 32, torch.float32)
    dy = torch.randn(64, 32)

    out_auto, grads_auto = _output_and_grads(autograd_bn, x, dy, autograd_bn.gamma, autograd_bn.beta)
    out_manual, grads_manual = _output_and_grads(manual_bn, x, dy, manual_bn.gamma, manual_bn.beta)

    assert_close(out_manual, out_auto, **TOLERANCES[torch.float32])
    for name, grad_manual, grad_auto in zip(("input", "gamma", "beta"), grads_manual, grads_auto):
        assert_close(grad_manual, grad_auto, **TOLERANCES[torch.float32], msg=f"grad wrt {name}")


# ---------------------------------------------------------------- modules vs nn.BatchNorm1d


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("module_cls", CUSTOM_MODULES, ids=lambda cls: cls.__name__)
def test_module_matches_nn_batchnorm1d(module_cls, dtype):
    torch.manual_seed(5)
    n_neurons = 7
    tol = TOLERANCES[dtype]
    custom, reference = _make_pair(module_cls, n_neurons, dtype)

    # Several training steps with different batch sizes exercise the B/(B-1) correction.
    for step, batch in enumerate([16, 5, 2, 9]):
        x = _shifted_batch(batch, n_neurons, dtype)
        dy = torch.randn(batch, n_neurons, dtype=dtype)
        out_c, grads_c = _output_and_grads(custom, x, dy, custom.gamma, custom.beta)
        out_r, grads_r = _output_and_grads(reference, x, dy, reference.weight, reference.bias)
        assert_close(out_c, out_r, **tol, msg=f"train output, step {step}")
        for name, grad_c, grad_r in zip(("input", "gamma", "beta"), grads_c, grads_r):
            assert_close(grad_c, grad_r, **tol, msg=f"train grad wrt {name}, step {step}")
        assert_close(custom.running_mean, reference.running_mean, **tol)
        assert_close(custom.running_var, reference.running_var, **tol)
        assert int(custom.num_batches_tracked) == int(reference.num_batches_tracked) == step + 1

    custom.eval()
    reference.eval()
    stats_before = (custom.running_mean.clone(), custom.running_var.clone())
    for batch in (12, 1):  # eval mode accepts a single sample
        x = _shifted_batch(batch, n_neurons, dtype)
        dy = torch.randn(batch, n_neurons, dtype=dtype)
        out_c, grads_c = _output_and_grads(custom, x, dy, custom.gamma, custom.beta)
        out_r, grads_r = _output_and_grads(reference, x, dy, reference.weight, reference.bias)
        assert_close(out_c, out_r, **tol, msg="eval output")
        for name, grad_c, grad_r in zip(("input", "gamma", "beta"), grads_c, grads_r):
            assert_close(grad_c, grad_r, **tol, msg=f"eval grad wrt {name}")
    # Eval mode must not touch the running statistics.
    assert torch.equal(custom.running_mean, stats_before[0])
    assert torch.equal(custom.running_var, stats_before[1])
    assert int(custom.num_batches_tracked) == 4


@pytest.mark.parametrize("module_cls", CUSTOM_MODULES, ids=lambda cls: cls.__name__)
def test_module_parameters_and_buffers(module_cls):
    module = module_cls(6, eps=1e-3)
    assert module.eps == 1e-3
    assert {name for name, _ in module.named_parameters()} == {"gamma", "beta"}
    assert {name for name, _ in module.named_buffers()} == {
        "running_mean", "running_var", "num_batches_tracked"}
    assert torch.equal(module.gamma, torch.ones(6))
    assert torch.equal(module.beta, torch.zeros(6))
    assert torch.equal(module.running_var, torch.ones(6))
    assert module.num_batches_tracked.dtype == torch.long
    module.double()
    assert module.running_mean.dtype == torch.float64
    assert set(module.state_dict()) == {"gamma", "beta", "running_mean", "running_var",
                                        "num_batches_tracked"}


@pytest.mark.parametrize("module_cls", CUSTOM_MODULES, ids=lambda cls: cls.__name__)
def test_module_upcasts_half_precision_input(module_cls):
    torch.manual_seed(6)
    module = module_cls(5)
    x = _shifted_batch(8, 5, torch.float32).to(torch.bfloat16)
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert out.dtype == torch.float32
    expected = nn.functional.batch_norm(x.detach().float(), None, None, training=True)
    assert_close(out.detach(), expected, **TOLERANCES[torch.float32])
    out.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and module.gamma.grad.dtype == torch.float32


@pytest.mark.parametrize("module_cls", CUSTOM_MODULES, ids=lambda cls: cls.__name__)
def test_module_under_autocast_matches_nn_batchnorm1d_under_autocast(module_cls):
    # Linear -> BatchNorm -> Linear as in the MLP trainer with --batchnorm custom, all under bf16
    # autocast (the Linear layers then hand bf16 activations to the BatchNorm): outputs, input and
    # parameter gradients, running statistics and the eval-mode output agree within bf16 precision.
    torch.manual_seed(7)
    first, last = nn.Linear(12, 6), nn.Linear(6, 3)
    custom, reference = _make_pair(module_cls, 6, torch.float32)
    x = _shifted_batch(32, 12, torch.float32)
    dy = torch.randn(32, 3)
    results = []
    for norm, (gamma, beta) in ((custom, (custom.gamma, custom.beta)), (reference, (reference.weight, reference.bias))):
        inputs = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = last(norm(first(inputs)))
        grads = torch.autograd.grad(out, (inputs, gamma, beta, first.weight), dy)
        norm.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
            evaluated = last(norm(first(x)))
        results.append((out.float(), *(g.float() for g in grads), evaluated.float(), norm.running_mean.clone(),
                        norm.running_var.clone()))
    assert results[0][0].dtype == torch.float32  # bf16 Linear output, upcast for the loss as the trainer does
    bf16 = dict(rtol=3e-2, atol=3e-2)  # bf16 keeps 8 significant bits: about 4e-3 relative per rounding
    for name, mine, theirs in zip(("output", "dx", "dgamma", "dbeta", "dW", "eval output", "running mean",
                                   "running var"), *results):
        assert_close(mine, theirs, **bf16, msg=lambda m, name=name: f"{name}: {m}")


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("module_cls", CUSTOM_MODULES, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("shape", [(10,), (4, 5, 2), (4, 6), (4, 4)], ids=str)
def test_module_rejects_bad_shapes(module_cls, shape):
    module = module_cls(5)
    with pytest.raises(ValueError, match=r"\(batch, 5\)") as info:
        module(torch.randn(*shape))
    assert str(tuple(shape)) in str(info.value)


@pytest.mark.parametrize("shape", [(10,), (4, 5, 2), (4, 6)], ids=str)
def test_manual_function_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match=r"\(batch, 5\)"):
        CustomBatchNormManualFunction.apply(torch.randn(*shape), torch.ones(5), torch.zeros(5))
    with pytest.raises(ValueError, match="gamma"):
        CustomBatchNormManualFunction.apply(torch.randn(4, 5), torch.ones(5, 1), torch.zeros(5))
    with pytest.raises(ValueError, match="beta"):
        CustomBatchNormManualFunction.apply(torch.randn(4, 5), torch.ones(5), torch.zeros(4))


@pytest.mark.parametrize("module_cls", CUSTOM_MODULES, ids=lambda cls: cls.__name__)
def test_module_rejects_single_sample_in_training(module_cls):
    module = module_cls(3)
    with pytest.raises(ValueError, match="more than 1 sample"):
        module(torch.randn(1, 3))
    assert int(module.num_batches_tracked) == 0
    module.eval()
    assert module(torch.randn(1, 3)).shape == (1, 3)


@pytest.mark.parametrize("module_cls", CUSTOM_MODULES, ids=lambda cls: cls.__name__)
def test_module_rejects_non_float_input(module_cls):
    module = module_cls(3)
    with pytest.raises(TypeError, match="floating-point"):
        module(torch.ones(4, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        module([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])


@pytest.mark.parametrize("module_cls", CUSTOM_MODULES, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("kwargs", [dict(n_neurons=0), dict(n_neurons=2.5), dict(n_neurons=True),
                                    dict(n_neurons=3, eps=0.0), dict(n_neurons=3, eps=-1e-5),
                                    dict(n_neurons=3, momentum=0.0)], ids=str)
def test_module_rejects_bad_constructor_args(module_cls, kwargs):
    with pytest.raises(ValueError, match="|".join(kwargs)):
        module_cls(**kwargs)
