"""The course's layer modules: finite-difference gradient checks, forward values, and input checking."""
from __future__ import annotations

import numpy as np
import pytest

from fastmlp import (
    CrossEntropyModule,
    LinearModule,
    ReLUModule,
    SoftmaxCrossEntropyModule,
    SoftMaxModule,
)
from fastmlp import reference as R

from _gradcheck import assert_gradient_close, numerical_gradient  # noqa: E402

DTYPES = (np.float32, np.float64)
TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-10)}


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ----------------------------------------------------------------------------- finite differences, float64


def test_linear_gradients_finite_difference(rng):
    lin = LinearModule(5, 3, seed=0, init="kaiming")
    lin.params["bias"][...] = rng.standard_normal(3)
    x = rng.standard_normal((4, 5))
    r = rng.standard_normal((4, 3))  # L = sum(out * r), so dL/dout = r

    def loss():
        return float(np.sum(lin.forward(x) * r))

    lin.forward(x)
    dx = lin.backward(r)
    dw, db = lin.grads["weight"].copy(), lin.grads["bias"].copy()
    assert_gradient_close(dx, numerical_gradient(loss, x))
    # Perturbing params in place also checks that forward reads them live.
    assert_gradient_close(dw, numerical_gradient(loss, lin.params["weight"]))
    assert_gradient_close(db, numerical_gradient(loss, lin.params["bias"]))


def test_relu_gradient_finite_difference(rng):
    relu = ReLUModule()
    x = rng.standard_normal((4, 6))
    x[np.abs(x) < 1e-2] = 0.5  # away from the kink at 0
    r = rng.standard_normal((4, 6))
    relu.forward(x)
    dx = relu.backward(r)
    assert_gradient_close(dx, numerical_gradient(lambda: float(np.sum(relu.forward(x) * r)), x))
    assert np.any(dx == 0) and np.any(dx != 0)  # both sides of the kink were exercised


def test_softmax_gradient_finite_difference(rng):
    sm = SoftMaxModule()
    x = rng.standard_normal((4, 5))
    r = rng.standard_normal((4, 5))
    sm.forward(x)
    dx = sm.backward(r)
    assert_gradient_close(dx, numerical_gradient(lambda: float(np.sum(sm.forward(x) * r)), x))


@pytest.mark.parametrize("targets", ["one_hot", "indices", "soft"])
def test_cross_entropy_gradient_finite_difference(rng, targets):
    ce = CrossEntropyModule()
    p = R.softmax_forward(rng.standard_normal((4, 5)))
    labels = rng.integers(0, 5, size=4)
    if targets == "one_hot":
        y = np.eye(5)[labels]
    elif targets == "indices":
        y = labels
    else:
        y = R.softmax_forward(rng.standard_normal((4, 5)))
    dp = ce.backward(p, y)
    assert_gradient_close(dp, numerical_gradient(lambda: ce.forward(p, y), p, h=1e-7))


@pytest.mark.parametrize("targets", ["one_hot", "indices"])
def test_softmax_cross_entropy_gradient_finite_difference(rng, targets):
    sce = SoftmaxCrossEntropyModule()
    z = 3 * rng.standard_normal((4, 5))
    labels = rng.integers(0, 5, size=4)
    y = np.eye(5)[labels] if targets == "one_hot" else labels
    sce.forward(z, y)
    dz = sce.backward()
    assert_gradient_close(dz, numerical_gradient(lambda: sce.forward(z, y), z))


# ----------------------------------------------------------------------------- values against the reference


@pytest.mark.parametrize("dtype", DTYPES)
def test_module_values_match_reference(rng, dtype):
    lin = LinearModule(7, 3, dtype=dtype, seed=1, init="xavier")
    lin.params["bias"][...] = rng.standard_normal(3)
    x = rng.standard_normal((5, 7)).astype(dtype)
    out = lin.forward(x)
    assert out.dtype == dtype
    w, b = lin.params["weight"].astype(np.float64), lin.params["bias"].astype(np.float64)
    np.testing.assert_allclose(out, R.linear_forward(x.astype(np.float64), w, b), **TOL[dtype])

    probs = SoftMaxModule().forward(out)
    assert probs.dtype == dtype
    np.testing.assert_allclose(probs, R.softmax_forward(out.astype(np.float64)), **TOL[dtype])

    labels = rng.integers(0, 3, size=5)
    loss = CrossEntropyModule().forward(probs, labels)
    np.testing.assert_allclose(loss, R.cross_entropy_forward(probs, np.eye(3, dtype=dtype)[labels]), **TOL[dtype])

    sce = SoftmaxCrossEntropyModule()
    fused_loss = sce.forward(out, labels)
    ref_loss, ref_dz = R.softmax_cross_entropy(out.astype(np.float64), labels)
    np.testing.assert_allclose(fused_loss, ref_loss, **TOL[dtype])
    np.testing.assert_allclose(sce.backward(), ref_dz, **TOL[dtype])
    assert sce.n_correct == int(np.sum(out.argmax(axis=1) == labels))
    # The fused loss and the course's softmax -> cross-entropy agree.
    np.testing.assert_allclose(fused_loss, loss, rtol=1e-4 if dtype == np.float32 else 1e-10)


def test_softmax_cross_entropy_backward_returns_a_copy(rng):
    sce = SoftmaxCrossEntropyModule()
    sce.forward(rng.standard_normal((2, 3)), [0, 1])
    first = sce.backward()
    first[...] = 0
    assert np.any(sce.backward() != 0)


def test_linear_sees_in_place_and_replaced_params(rng):
    lin = LinearModule(3, 2, seed=0)
    x = rng.standard_normal((4, 3))
    lin.params["weight"][...] = 1.0
    np.testing.assert_allclose(lin.forward(x), np.repeat(x.sum(axis=1, keepdims=True), 2, axis=1))
    lin.params["bias"] = np.array([1.0, -1.0])  # replaced with a same-shape array: also live
    np.testing.assert_allclose(lin.forward(x)[:, 0] - lin.forward(x)[:, 1], 2.0)


@pytest.mark.parametrize("init", ["normal", "kaiming", "xavier"])
def test_linear_init_scale(init):
    lin = LinearModule(400, 300, seed=0, init=init)
    expected = {"normal": 1e-4, "kaiming": np.sqrt(2 / 400), "xavier": np.sqrt(2 / 700)}[init]
    np.testing.assert_allclose(lin.params["weight"].std(), expected, rtol=0.02)
    np.testing.assert_array_equal(lin.params["bias"], 0)
    np.testing.assert_array_equal(LinearModule(400, 300, seed=0, init=init).params["weight"], lin.params["weight"])


# ----------------------------------------------------------------------------- dtypes


def test_linear_keeps_its_dtype():
    lin = LinearModule(3, 2, dtype=np.float32, seed=0)
    out = lin.forward(np.ones((2, 3), dtype=np.float64))
    assert out.dtype == np.float32
    dx = lin.backward(np.ones((2, 2)))
    assert dx.dtype == np.float32 and lin.grads["weight"].dtype == np.float32
    assert lin.forward(np.ones((2, 3), dtype=np.int64)).dtype == np.float32  # ints are converted


@pytest.mark.parametrize("module", [ReLUModule, SoftMaxModule])
def test_activation_modules_follow_input_dtype(module):
    for dtype in DTYPES:
        m = module()
        assert m.forward(np.ones((2, 3), dtype=dtype)).dtype == dtype
        assert m.backward(np.ones((2, 3))).dtype == dtype
    assert module().forward(np.ones((2, 3), dtype=np.int32)).dtype == np.float64


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("module", [LinearModule(3, 2), ReLUModule(), SoftMaxModule()])
def test_backward_before_forward(module):
    with pytest.raises(RuntimeError, match="backward called before forward"):
        module.backward(np.ones((2, 2)))


def test_softmax_cross_entropy_backward_before_forward():
    with pytest.raises(RuntimeError, match="backward called before forward"):
        SoftmaxCrossEntropyModule().backward()


@pytest.mark.parametrize(
    "x, exc, match",
    [
        (np.ones(3), ValueError, r"x: expected a 2-D array of shape \(batch, 3\), got shape \(3,\)"),
        (np.ones((2, 3, 1)), ValueError, r"x: expected a 2-D array"),
        (np.ones((2, 4)), ValueError, r"x: expected shape \(batch, 3\), got \(2, 4\)"),
        (np.ones((0, 3)), ValueError, r"x: expected at least one row"),
        (np.ones((2, 3), dtype=complex), TypeError, r"x: expected a real numeric array, got dtype complex128"),
        (np.array([["a", "b", "c"]]), TypeError, r"x: expected a real numeric array"),
        (np.array([[object(), 1, 2]], dtype=object), TypeError, r"x: expected a real numeric array"),
    ],
)
def test_linear_forward_bad_x(x, exc, match):
    with pytest.raises(exc, match=match):
        LinearModule(3, 2).forward(x)


def test_linear_backward_bad_dout():
    lin = LinearModule(3, 2)
    lin.forward(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"dout: expected shape \(batch, 2\)"):
        lin.backward(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"dout: expected shape \(4, 2\) to match the forward batch"):
        lin.backward(np.ones((5, 2)))


@pytest.mark.parametrize("module", [ReLUModule, SoftMaxModule])
def test_activation_backward_bad_dout(module):
    m = module()
    m.forward(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"dout: expected shape \(4, 3\)"):
        m.backward(np.ones((5, 3)))


@pytest.mark.parametrize(
    "key, value",
    [
        ("weight", np.zeros((3, 2))),  # transposed shape
        ("weight", np.zeros((2, 3), dtype=np.float32)),  # wrong dtype
        ("weight", np.asfortranarray(np.zeros((2, 3)))),  # not C order
        ("weight", [[0.0] * 3] * 2),  # not an ndarray
        ("bias", np.zeros(3)),
    ],
)
def test_replaced_param_of_wrong_kind(key, value):
    lin = LinearModule(3, 2)
    lin.params[key] = value
    with pytest.raises(ValueError, match=rf"params\['{key}'\]: expected a C-contiguous float64 array of shape"):
        lin.forward(np.ones((4, 3)))


def test_read_only_param_refused():
    lin = LinearModule(3, 2)
    lin.params["weight"].flags.writeable = False
    with pytest.raises(ValueError, match=r"params\['weight'\]: the array is read-only"):
        lin.forward(np.ones((1, 3)))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(in_features=0, out_features=2), ValueError, "in_features: expected a positive integer"),
        (dict(in_features=3, out_features=2.5), TypeError, "out_features: expected a positive integer"),
        (dict(in_features=3, out_features=2, dtype=np.int32), TypeError, "dtype: expected float32 or float64"),
        (dict(in_features=3, out_features=2, init="he"), ValueError, "init: expected one of"),
    ],
)
def test_linear_bad_constructor_args(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LinearModule(**kwargs)


@pytest.mark.parametrize(
    "y, exc, match",
    [
        (np.array([0, 3]), ValueError, r"y: expected class indices in \[0, 3\)"),
        (np.array([-1, 0]), ValueError, r"y: expected class indices in \[0, 3\)"),
        (np.array([0, 1, 2]), ValueError, r"y: expected 2 labels \(one per row of x\), got 3"),
        (np.array([0.5, 1.0]), TypeError, r"y: expected integer class indices"),
        (np.ones((2, 4)), ValueError, r"y: expected shape \(batch, 3\)"),
        (np.ones((3, 3)), ValueError, r"y: expected shape \(2, 3\) to match x"),
    ],
)
def test_cross_entropy_bad_targets(y, exc, match):
    p = np.full((2, 3), 1 / 3)
    with pytest.raises(exc, match=match):
        CrossEntropyModule().forward(p, y)
    with pytest.raises(exc, match=match):
        CrossEntropyModule().backward(p, y)


@pytest.mark.parametrize(
    "y, match",
    [
        (np.array([0, 3]), r"labels: expected class indices in \[0, 3\), got 3 at position 1"),
        (np.array([-1, 0]), r"labels: expected class indices in \[0, 3\), got -1 at position 0"),
        (np.array([0]), r"y: expected 2 labels"),
        (np.array([[1, 1, 0], [0, 0, 1]]), r"y: 2-D targets must be one-hot"),
        (np.array([[0.5, 0.5, 0], [0, 0, 1]]), r"y: 2-D targets must be one-hot"),
        (np.ones((2, 4)), r"y: expected one-hot shape \(2, 3\)"),
        (np.zeros((2, 1, 3)), r"y: expected class indices of shape \(2,\)"),
    ],
)
def test_softmax_cross_entropy_bad_targets(y, match):
    with pytest.raises(ValueError, match=match):
        SoftmaxCrossEntropyModule().forward(np.zeros((2, 3)), y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("big", [1e4, -1e4])
def test_huge_logits_give_finite_loss_and_gradient(dtype, big):
    z = np.array([[big, 0.0, -big], [0.0, big, 0.0]], dtype=dtype)
    y = np.array([2, 0])
    sce = SoftmaxCrossEntropyModule()
    loss = sce.forward(z, y)
    assert np.isfinite(loss) and np.all(np.isfinite(sce.backward()))
    np.testing.assert_allclose(loss, R.softmax_cross_entropy(z.astype(np.float64), y)[0], rtol=1e-6)
    # The course path: softmax then cross-entropy on (possibly zero) probabilities.
    sm, ce = SoftMaxModule(), CrossEntropyModule()
    probs = sm.forward(z)
    loss = ce.forward(probs, y)
    assert np.isfinite(loss)
    dz = sm.backward(ce.backward(probs, y))
    assert np.all(np.isfinite(dz))


def test_nan_logits_give_nan_fused_loss():
    z = np.array([[np.nan, 0.0, 1.0], [0.0, 1.0, 2.0]])
    assert np.isnan(SoftmaxCrossEntropyModule().forward(z, [0, 1]))


def test_nan_probabilities_give_nan_course_loss():
    probs = SoftMaxModule().forward(np.array([[np.nan, 0.0, 1.0], [0.0, 1.0, 2.0]]))
    assert np.isnan(CrossEntropyModule().forward(probs, [0, 1]))


def test_bias_gradient_recovers_after_a_nan_batch():
    lin = LinearModule(3, 2, seed=0)
    lin.forward(np.ones((1, 3)))
    lin.backward(np.array([[np.nan, 1.0]]))
    lin.forward(np.ones((1, 3)))
    lin.backward(np.array([[1.0, 1.0]]))
    np.testing.assert_array_equal(lin.grads["bias"], [1.0, 1.0])


def test_read_only_input_is_accepted():
    x = np.ones((2, 3))
    x.flags.writeable = False
    out = LinearModule(3, 2, seed=0).forward(x)
    assert out.shape == (2, 2)
