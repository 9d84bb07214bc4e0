"""The activation pairs (ReLU, tanh, logistic, identity): kernels, their fused forms, modules and MLPs.

Every pair is checked against its NumPy twin in ``fastmlp.reference`` over
float32/float64, odd shapes, batch 1 and the memory layouts of test_kernels.py;
the modules' backward passes against float64 finite differences and against
PyTorch's autograd; the fused forms (bias + activation in the forward GEMM's
epilogue, the derivative folded into the dX GEMM) against the separate kernels,
also at sizes that run on the thread pool.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastmlp
from fastmlp import _kernels as K
from fastmlp import reference as R
from _gradcheck import assert_gradient_close, numerical_gradient
from test_kernels import LAYOUTS, garbage, make_operand

DTYPES = (np.float32, np.float64)
TOL = {np.float32: dict(rtol=2e-6, atol=2e-7), np.float64: dict(rtol=1e-14, atol=1e-15)}
NAMES = ("relu", "tanh", "logistic", "identity")
MODULES = {"relu": "ReLUModule", "tanh": "TanhModule", "logistic": "SigmoidModule", "identity": "IdentityModule"}


def pair(name):
    """(kernel forward, kernel backward, reference forward, reference backward) of an activation."""
    return (getattr(K, f"{name}_forward"), getattr(K, f"{name}_backward"),
            getattr(R, f"{name}_forward"), getattr(R, f"{name}_backward"))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (13, 3), (5, 1), (300, 257)], ids=lambda s: "x".join(map(str, s)))
def test_pair_matches_reference(name, dtype, layout, shape):
    fwd, bwd, rfwd, rbwd = pair(name)
    rng = np.random.default_rng(sum(shape))
    x = make_operand(rng, shape, dtype, layout) * dtype(3)
    x[0, 0] = 0
    y = garbage(shape, dtype)
    fwd(y, x)
    np.testing.assert_allclose(y, rfwd(x), **TOL[dtype])
    dy = make_operand(rng, shape, dtype, layout)
    dx = garbage(shape, dtype)
    bwd(dx, dy, y)
    np.testing.assert_allclose(dx, rbwd(dy, y), **TOL[dtype])
    # The generic hooks with the code of ACTIVATIONS give the very same numbers.
    y2, dx2 = garbage(shape, dtype), garbage(shape, dtype)
    K.activation_forward(y2, x, K.ACTIVATIONS[name])
    K.activation_backward(dx2, dy, y, K.ACTIVATIONS[name])
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(dx2, dx)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pair_in_place_extremes_and_nan(name, dtype):
    fwd, bwd, rfwd, rbwd = pair(name)
    big = np.finfo(dtype).max
    x = np.array([[-big, -100.0, -1.0, 0.0, 1e-30, 2.0, 100.0, big, np.nan]], dtype=dtype)
    expected = rfwd(x)
    fwd(x, x)  # documented: Y may be X
    np.testing.assert_allclose(x, expected, **TOL[dtype])
    assert np.isnan(x[0, -1]) and np.isfinite(x[0, :-2]).all()
    dy = np.linspace(-2, 2, x.shape[1]).astype(dtype)[None, :]
    expected = rbwd(dy, x)
    bwd(dy, dy, x)  # documented: dX may be dY
    np.testing.assert_allclose(dy, expected, **TOL[dtype])


def test_logistic_keeps_the_small_side_precise():
    y = np.empty((1, 2))
    K.logistic_forward(y, np.array([[-700.0, -40.0]]))
    np.testing.assert_allclose(y[0], np.exp([-700.0, -40.0]) / (1 + np.exp([-700.0, -40.0])), rtol=1e-15)


@pytest.mark.parametrize("name", NAMES)
def test_pairs_refuse_mismatched_shapes(name):
    fwd, bwd, _, _ = pair(name)
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"Y: expected shape \(4, 3\), got \(4, 2\)"):
        fwd(np.empty((4, 2)), x)
    with pytest.raises(ValueError, match=r"dY: expected shape \(4, 3\)"):
        bwd(np.empty((4, 3)), np.empty((4, 2)), x)
    with pytest.raises(ValueError, match=r"dX: expected shape \(4, 3\)"):
        bwd(np.empty((3, 3)), x.copy(), x)


def test_activation_hooks_refuse_an_unknown_code():
    with pytest.raises(ValueError, match="act: expected an activation code in"):
        K.activation_forward(np.empty((2, 2)), np.zeros((2, 2)), 7)
    with pytest.raises(ValueError, match="act_input: expected an activation code in"):
        K.linear_backward(np.empty((2, 2)), None, np.empty((2, 2)), np.zeros((2, 2)), np.zeros((2, 2)),
                          np.zeros((2, 2)), -1)


# ----------------------------------------------------------------------------- fused forms


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 5, 3), (7, 13, 3), (17, 300, 40), (300, 1024, 129)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_layer_equals_separate_kernels(name, dtype, shape, threads):
    fwd, bwd, rfwd, rbwd = pair(name)
    B, I, O = shape
    act = K.ACTIVATIONS[name]
    rng = np.random.default_rng(B + I)
    x = rng.standard_normal((B, I)).astype(dtype)
    w = (rng.standard_normal((O, I)) / np.sqrt(I)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    with fastmlp.threads(threads):
        y = garbage((B, O), dtype)
        scratch = np.full((1, max(1, K.forward_scratch_size(B, I, O))), np.nan, dtype)
        K.linear_forward(y, x, w, b, act, scratch)
        z = garbage((B, O), dtype)
        K.linear_forward(z, x, w, b, 0, scratch)
        separate = garbage((B, O), dtype)
        fwd(separate, z)
        np.testing.assert_array_equal(y, separate)  # the same pre-activation and the same loop
        tol = dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(y, rfwd(x.astype(np.float64) @ w.T.astype(np.float64) + b), **tol)
        # Backward of the layer above: dX of its GEMM times act'(.) through y, in one call.
        dz = rng.standard_normal((B, 11)).astype(dtype)
        w2 = rng.standard_normal((11, O)).astype(dtype)
        dw, dx = garbage((11, O), dtype), garbage((B, O), dtype)
        K.linear_backward(dw, None, dx, dz, y, w2, act)
        np.testing.assert_allclose(dx, rbwd(dz.astype(np.float64) @ w2, y), **tol)
        w3, b3, dx3 = w2.copy(), np.zeros(11, dtype), garbage((B, O), dtype)
        K.linear_backward_sgd(w3, b3, dx3, dz, y, 0.1, 0.0, act)
        np.testing.assert_array_equal(dx3, dx)
        # A Fortran-ordered output read through a strided mask takes the scalar loop (no FMA contraction).
        dxf = garbage((B, O), dtype)
        K.linear_backward(dw, None, dxf, dz, np.asfortranarray(y), w2, act)
        np.testing.assert_allclose(dxf, dx, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-6)


# ----------------------------------------------------------------------------- modules


@pytest.mark.parametrize("name", NAMES)
def test_module_gradient_finite_difference(name):
    module = getattr(fastmlp, MODULES[name])()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 6)) * 2
    x[np.abs(x) < 1e-3] = 0.5  # keep clear of the ReLU's kink
    r = rng.standard_normal((4, 6))
    module.forward(x)
    dx = module.backward(r)
    assert_gradient_close(dx, numerical_gradient(lambda: float(np.sum(module.forward(x) * r)), x), name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_module_matches_torch_autograd(name, dtype):
    torch = pytest.importorskip("torch")
    fn = {"relu": torch.relu, "tanh": torch.tanh, "logistic": torch.sigmoid, "identity": lambda t: t * 1}[name]
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((9, 31)) * 4).astype(dtype)[:, ::2]  # non-contiguous input
    dout = rng.standard_normal(x.shape).astype(dtype)
    module = getattr(fastmlp, MODULES[name])()
    out = module.forward(x)
    dx = module.backward(dout)
    xt = torch.tensor(np.ascontiguousarray(x), requires_grad=True)
    yt = fn(xt)
    yt.backward(torch.tensor(dout))
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-15)
    assert out.dtype == dtype and dx.dtype == dtype
    np.testing.assert_allclose(out, yt.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **tol)


def test_modules_are_exported():
    for name in MODULES.values():
        assert name in fastmlp.__all__ and getattr(fastmlp, name).__module__ == "fastmlp.modules"
