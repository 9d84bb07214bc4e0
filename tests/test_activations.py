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


# ----------------------------------------------------------------------------- MLP(activation=)


def _batch(rng, B=6, D=5, C=3):
    return rng.standard_normal((B, D)), rng.integers(0, C, B)


@pytest.mark.parametrize("name", NAMES)
def test_mlp_train_step_gradients_finite_difference(name):
    # Adam leaves the gradients of the pre-update parameters in ``grads``: check them.
    rng = np.random.default_rng(7)
    x, y = _batch(rng)
    model = fastmlp.MLP(5, [4, 3], 3, seed=1, init="kaiming", activation=name)
    twin = fastmlp.MLP(5, [4, 3], 3, seed=1, init="kaiming", activation=name)
    model.train_step(x, y, fastmlp.optim.Adam(model, 1e-3))
    for lin, twin_lin in zip(model.linears, twin.linears):
        for key in ("weight", "bias"):
            numeric = numerical_gradient(lambda: twin.evaluate(x, y)[0], twin_lin.params[key])
            assert_gradient_close(lin.grads[key], numeric, f"{name} {key}")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp_fused_paths_match_the_course_modules(name, dtype):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((300, 1024)).astype(dtype)  # large enough for the pool's chunks
    model = fastmlp.MLP(1024, [129, 64], 10, dtype=dtype, seed=2, init="kaiming", activation=name)
    assert [type(m).__name__ for m in model.layers[1:-1:2]] == [MODULES[name]] * 2
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(model.predict_proba(x, batch_size=128), model.forward(x), **tol)


@pytest.mark.parametrize("name", NAMES)
def test_mlp_training_matches_torch(name):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((40, 30)), rng.integers(0, 4, 40)
    model = fastmlp.MLP(30, [20, 10], 4, seed=3, init="xavier", activation=name)
    fn = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "logistic": torch.nn.Sigmoid, "identity": torch.nn.Identity}
    layers = []
    for lin in model.linears:
        t = torch.nn.Linear(lin.in_features, lin.out_features).double()
        with torch.no_grad():
            t.weight.copy_(torch.tensor(lin.params["weight"]))
            t.bias.copy_(torch.tensor(lin.params["bias"]))
        layers += [t, fn[name]()]
    net = torch.nn.Sequential(*layers[:-1])
    opt = fastmlp.optim.SGD(model, 0.5)
    topt = torch.optim.SGD(net.parameters(), 0.5)
    for _ in range(3):
        loss = model.train_step(x, y, opt).loss
        topt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(net(torch.tensor(x)), torch.tensor(y))
        tloss.backward()
        topt.step()
        assert loss == pytest.approx(tloss.item(), rel=1e-12)
    for lin, t in zip(model.linears, layers[::2]):
        np.testing.assert_allclose(lin.params["weight"], t.weight.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(lin.params["bias"], t.bias.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_mlp_refuses_an_unknown_activation():
    with pytest.raises(ValueError, match=r"activation: expected one of \('relu', 'tanh', 'logistic', 'identity'\), got 'gelu'"):
        fastmlp.MLP(3, [2], 2, activation="gelu")


def test_checkpoints_record_the_activation(tmp_path):
    import pickle

    from fastmlp.checkpoint import load_checkpoint, save_checkpoint

    model = fastmlp.MLP(3, [2], 2, seed=0, activation="tanh")
    save_checkpoint(tmp_path / "c.npz", model=model, optimizer=fastmlp.optim.SGD(model, 0.1), step=0,
                    data_state={}, meta={})
    settings = load_checkpoint(tmp_path / "c.npz")["meta"]["network"]
    assert settings == {"activation": "tanh", "output": "softmax"}
    model.check_network_settings(settings)
    with pytest.raises(ValueError, match="activation: the checkpoint's network uses 'tanh', this one 'relu'"):
        fastmlp.MLP(3, [2], 2).check_network_settings(settings)
    fastmlp.MLP(3, [2], 2).check_network_settings({})  # an older checkpoint: its network was ReLU
    with pytest.raises(ValueError, match="uses 'relu', this one 'tanh'"):
        model.check_network_settings({})
    again = pickle.loads(pickle.dumps(model))
    assert again.activation == "tanh" and repr(again).endswith("activation='tanh')")
    state = again.__getstate__()
    del state["activation"]  # a pickle from before the setting existed
    old = fastmlp.MLP.__new__(fastmlp.MLP)
    old.__setstate__(state)
    assert old.activation == "relu"
