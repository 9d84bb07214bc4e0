"""The MLP's output heads (softmax, logistic, identity) and per-row sample weights.

Each head's fused loss kernel against its NumPy twin and against scikit-learn's
loss functions (the values its MLPClassifier / MLPRegressor report), its gradient
against float64 finite differences, and the MLP's train_step with each head.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastmlp
from fastmlp import _kernels as K
from fastmlp import reference as R
from fastmlp.heads import check_sample_weight
from _gradcheck import assert_gradient_close, numerical_gradient

DTYPES = (np.float32, np.float64)
TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}
HEADS = {
    "logistic": (K.logistic_cross_entropy_forward_backward, K.logistic_cross_entropy_forward, R.logistic_cross_entropy),
    "identity": (K.squared_error_forward_backward, K.squared_error_forward, R.squared_error),
}


def _targets(rng, head, shape, dtype):
    if head == "logistic":
        return rng.integers(0, 2, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (13, 5)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("weighted", [False, True])
def test_head_kernels_match_reference(head, dtype, shape, weighted):
    fused, forward, reference = HEADS[head]
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    z = (rng.standard_normal(shape) * 3).astype(dtype)
    t = _targets(rng, head, shape, dtype)
    w = rng.random(shape[0]).astype(dtype) + 0.1 if weighted else None
    dz = np.full(shape, np.nan, dtype)
    loss, correct = fused(dz, z, t, weights=w)
    want_loss, want_dz = reference(z.astype(np.float64), t.astype(np.float64), w)
    assert loss == pytest.approx(want_loss, rel=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(dz, want_dz, **TOL[dtype])
    assert forward(z, t, weights=w) == (loss, correct)
    if head == "logistic":
        assert correct == int(((z > 0) == (t > 0.5)).all(axis=1).sum())
    in_place = z.copy()
    assert fused(in_place, in_place, t, weights=w)[0] == loss  # dZ may be Z
    np.testing.assert_array_equal(in_place, dz)


@pytest.mark.parametrize("head", HEADS)
def test_head_values_are_scikit_learns(head):
    base = pytest.importorskip("sklearn.neural_network._base")
    rng = np.random.default_rng(1)
    z, t, w = rng.standard_normal((20, 3)), _targets(rng, head, (20, 3), np.float64), rng.random(20)
    loss, _ = HEADS[head][0](np.empty_like(z), z, t, weights=w)
    if head == "logistic":
        want = base.binary_log_loss(t, R.logistic_forward(z), sample_weight=w)
    else:
        want = base.squared_loss(t, z, sample_weight=w)
    assert loss == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("weighted", [False, True])
def test_head_gradient_finite_difference(head, weighted):
    fused, forward, _ = HEADS[head]
    rng = np.random.default_rng(2)
    z, t = rng.standard_normal((5, 4)), _targets(rng, head, (5, 4), np.float64)
    w = rng.random(5) if weighted else None
    dz = np.empty_like(z)
    fused(dz, z, t, weights=w)
    # The squared error's gradient is scikit-learn's: that of C times the loss it reports.
    factor = z.shape[1] if head == "identity" else 1
    assert_gradient_close(dz, numerical_gradient(lambda: factor * forward(z, t, weights=w)[0], z), head)


def test_logistic_head_is_finite_for_huge_logits():
    z = np.array([[800.0, -800.0]])
    dz = np.empty_like(z)
    loss, correct = K.logistic_cross_entropy_forward_backward(dz, z, np.array([[0.0, 1.0]]))
    assert loss == pytest.approx(1600.0) and correct == 0
    np.testing.assert_allclose(dz, [[1.0, -1.0]])


@pytest.mark.parametrize("fused", [K.softmax_cross_entropy_forward_backward, K.logistic_cross_entropy_forward_backward])
def test_weights_are_checked(fused):
    z = np.zeros((3, 2))
    y = np.zeros(3, np.int64) if fused is K.softmax_cross_entropy_forward_backward else np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"weights: expected shape \(3,\), got \(2,\)"):
        fused(np.empty_like(z), z, y, weights=np.ones(2))
    with pytest.raises(ValueError, match="weights: expected finite values >= 0, got -1.0 at position 1"):
        fused(np.empty_like(z), z, y, weights=np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="weights: expected finite values >= 0, got nan at position 0"):
        fused(np.empty_like(z), z, y, weights=np.array([np.nan, 1.0, 1.0]))
    with pytest.raises(ValueError, match="weights: expected a positive sum, got all zeros"):
        fused(np.empty_like(z), z, y, weights=np.zeros(3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_kernel_weights_match_reference(dtype):
    rng = np.random.default_rng(3)
    z, labels, w = rng.standard_normal((9, 4)).astype(dtype), rng.integers(0, 4, 9), rng.random(9).astype(dtype)
    w[2] = 0
    z[2] = np.nan  # a row of weight 0 counts for nothing, whatever it holds
    dz = np.empty_like(z)
    loss, correct = K.softmax_cross_entropy_forward_backward(dz, z, labels, weights=w)
    keep = w > 0
    want_loss, want_dz = R.softmax_cross_entropy(z[keep].astype(np.float64), labels[keep], w[keep])
    assert loss == pytest.approx(want_loss, rel=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(dz[keep], want_dz * w[keep].sum() / w.sum(), **TOL[dtype])
    assert (dz[2] == 0).all()
    assert K.softmax_cross_entropy_forward(z, labels, weights=w) == (loss, correct)


# ----------------------------------------------------------------------------- MLP(output=)


def _mlp_data(rng, output, B=6, D=5, C=3):
    x = rng.standard_normal((B, D))
    if output == "softmax":
        return x, rng.integers(0, C, B)
    return x, _targets(rng, output, (B, C), np.float64)


@pytest.mark.parametrize("output", ["softmax", "logistic", "identity"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_mlp_head_gradients_finite_difference(output, activation):
    rng = np.random.default_rng(4)
    x, y = _mlp_data(rng, output)
    kwargs = dict(seed=1, init="kaiming", activation=activation, output=output)
    model, twin = fastmlp.MLP(5, [4], 3, **kwargs), fastmlp.MLP(5, [4], 3, **kwargs)
    model.train_step(x, y, fastmlp.optim.Adam(model, 1e-3))  # leaves the pre-update gradients in grads
    factor = 3 if output == "identity" else 1  # scikit-learn's squared-error gradient (see the kernel)
    for lin, twin_lin in zip(model.linears, twin.linears):
        for key in ("weight", "bias"):
            numeric = numerical_gradient(lambda: factor * twin.evaluate(x, y)[0], twin_lin.params[key])
            assert_gradient_close(lin.grads[key], numeric, f"{output} {key}")


@pytest.mark.parametrize("output", ["logistic", "identity"])
def test_mlp_head_outputs_and_predictions(output):
    rng = np.random.default_rng(5)
    x, y = _mlp_data(rng, output, B=40, D=30, C=2)
    model = fastmlp.MLP(30, [16], 2, seed=0, init="xavier", output=output)
    assert type(model.layers[-1]).__name__ == {"logistic": "SigmoidModule", "identity": "IdentityModule"}[output]
    proba = model.predict_proba(x, batch_size=7)
    np.testing.assert_allclose(proba, model.forward(x), rtol=1e-12)
    loss, acc = model.evaluate(x, y, batch_size=9)
    if output == "logistic":
        assert ((proba > 0) & (proba < 1)).all()
        np.testing.assert_array_equal(model.predict(x), (proba > 0.5).astype(np.int64))
        assert acc == np.mean((model.predict(x) == y).all(axis=1))
    else:
        np.testing.assert_array_equal(model.predict(x), proba)
        assert np.isnan(acc)
        assert loss == pytest.approx(((proba - y) ** 2).mean() / 2, rel=1e-12)
    assert repr(model).endswith(f"output={output!r})")


def test_mlp_regression_learns_and_takes_1d_targets():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((200, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.1
    model = fastmlp.MLP(4, [], 1, seed=0, output="identity")
    opt = fastmlp.optim.SGD(model, 0.1)
    first = model.train_step(x, y, opt).loss
    for _ in range(200):
        last = model.train_step(x, y, opt).loss
    assert last < 1e-6 < first
    np.testing.assert_allclose(model.linears[0].params["weight"][0], [1.0, -2.0, 0.5, 3.0], atol=1e-3)


@pytest.mark.parametrize("output,y,match", [
    ("logistic", np.full((4, 2), 2.0), r"y: expected targets in \[0, 1\] for output='logistic'"),
    ("identity", np.full((4, 2), np.nan), "y: expected finite target values"),
    ("identity", np.zeros((3, 2)), "y: expected 4 rows of targets"),
    ("identity", np.zeros((4, 3)), r"y: expected shape \(batch, 2\), got \(4, 3\)"),
    ("logistic", np.zeros(4), r"y: expected a 2-D array of shape \(batch, 2\)"),
])
def test_mlp_head_targets_are_checked(output, y, match):
    model = fastmlp.MLP(3, [2], 2, output=output)
    with pytest.raises(ValueError, match=match):
        model.train_step(np.zeros((4, 3)), y, fastmlp.optim.SGD(model, 0.1))


def test_mlp_refuses_an_unknown_output_and_checkpoints_record_it():
    with pytest.raises(ValueError, match=r"output: expected one of \('softmax', 'logistic', 'identity'\), got 'tanh'"):
        fastmlp.MLP(3, [2], 2, output="tanh")
    model = fastmlp.MLP(3, [2], 2, output="logistic")
    assert model.network_settings() == {"activation": "relu", "output": "logistic"}
    with pytest.raises(ValueError, match="output: the checkpoint's network uses 'softmax', this one 'logistic'"):
        model.check_network_settings({})


# ----------------------------------------------------------------------------- sample weights


@pytest.mark.parametrize("output", ["softmax", "logistic", "identity"])
def test_weighted_train_step_gradients_finite_difference(output):
    rng = np.random.default_rng(10)
    x, y = _mlp_data(rng, output, B=7)
    w = rng.random(7) * 3
    w[1] = 0
    kwargs = dict(seed=2, init="kaiming", activation="logistic", output=output)
    model, twin = fastmlp.MLP(5, [4], 3, **kwargs), fastmlp.MLP(5, [4], 3, **kwargs)
    loss = model.train_step(x, y, fastmlp.optim.Adam(model, 1e-3), sample_weight=w).loss
    head_loss = {"softmax": R.softmax_cross_entropy, "logistic": R.logistic_cross_entropy, "identity": R.squared_error}

    def weighted_loss():  # the head's reference loss on the logits, times C for identity (its gradient's)
        hidden = R.logistic_forward(R.linear_forward(x, *(twin.linears[0].params[k] for k in ("weight", "bias"))))
        logits = R.linear_forward(hidden, *(twin.linears[1].params[k] for k in ("weight", "bias")))
        return head_loss[output](logits, y, w)[0] * (3 if output == "identity" else 1)

    assert loss == pytest.approx(weighted_loss() / (3 if output == "identity" else 1), rel=1e-12)
    for lin, twin_lin in zip(model.linears, twin.linears):
        for key in ("weight", "bias"):
            assert_gradient_close(lin.grads[key], numerical_gradient(weighted_loss, twin_lin.params[key]), key)


def _one_step(x, y, w, output="softmax", optimizer="sgd"):
    model = fastmlp.MLP(x.shape[1], [8], 3, seed=3, init="kaiming", output=output)
    opt = fastmlp.optim.SGD(model, 0.5) if optimizer == "sgd" else fastmlp.optim.Adam(model, 0.01)
    loss = model.train_step(x, y, opt, sample_weight=w).loss
    return loss, model.state_dict()


@pytest.mark.parametrize("output", ["softmax", "logistic", "identity"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_weight_zero_drops_a_row_and_weight_two_repeats_it(output, optimizer):
    rng = np.random.default_rng(11)
    x, y = _mlp_data(rng, output, B=12, D=6)
    w = np.ones(12)
    w[[2, 5]] = 0
    w[7] = 2
    keep = np.array([i for i in range(12) if w[i] > 0] + [7])  # row 7 twice, rows 2 and 5 gone
    weighted = _one_step(x, y, w, output, optimizer)
    repeated = _one_step(x[keep], y[keep], None, output, optimizer)
    assert weighted[0] == pytest.approx(repeated[0], rel=1e-12)
    for name, value in repeated[1].items():
        np.testing.assert_allclose(weighted[1][name], value, rtol=1e-11, atol=1e-13, err_msg=name)
    scaled = _one_step(x, y, w * 3.5, output, optimizer)  # only the weights' ratios matter
    for name, value in weighted[1].items():
        np.testing.assert_allclose(scaled[1][name], value, rtol=1e-11, atol=1e-13, err_msg=name)


def test_equal_weights_are_the_unweighted_step():
    rng = np.random.default_rng(12)
    x, y = _mlp_data(rng, "softmax", B=10)
    plain, weighted = _one_step(x, y, None), _one_step(x, y, np.full(10, 0.3, np.float32))
    assert plain[0] == pytest.approx(weighted[0], rel=1e-14)
    for name, value in plain[1].items():
        np.testing.assert_allclose(weighted[1][name], value, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("w,exc,match", [
    (np.ones(3), ValueError, r"sample_weight: expected shape \(4,\) \(one weight per row of x\), got \(3,\)"),
    (np.ones((4, 1)), ValueError, r"sample_weight: expected shape \(4,\)"),
    (np.array([1, -1, 1, 1]), ValueError, "sample_weight: expected finite weights >= 0"),
    (np.array([1, np.inf, 1, 1]), ValueError, "sample_weight: expected finite weights >= 0"),
    (np.zeros(4), ValueError, "sample_weight: expected a positive sum, got all zeros"),
    (np.array(["a"] * 4), TypeError, "sample_weight: expected a real numeric array"),
])
def test_bad_sample_weight_is_refused(w, exc, match):
    model = fastmlp.MLP(3, [2], 2)
    with pytest.raises(exc, match=match):
        model.train_step(np.zeros((4, 3)), np.zeros(4, np.int64), fastmlp.optim.SGD(model, 0.1), sample_weight=w)


@pytest.mark.parametrize("w,match", [
    (np.array([1.0, np.nan, 1.0]), "sample_weight: expected finite weights >= 0"),
    (np.array([-np.inf, np.inf, 1.0]), "sample_weight: expected finite weights >= 0"),
    (np.array([np.inf, 1.0, 1.0]), "sample_weight: expected finite weights >= 0"),
    (np.array([-0.0, 0.0, -1e-300]), "sample_weight: expected finite weights >= 0"),
    (np.array([-0.0, 0.0, 0.0]), "sample_weight: expected a positive sum, got all zeros"),
    (np.zeros(0), "sample_weight: expected a positive sum, got all zeros"),
])
def test_sample_weight_check_refuses_every_bad_batch(w, match):
    """check_sample_weight's two-reduction fast path refuses what the full check refuses, with its message."""
    with pytest.raises(ValueError, match=match):
        check_sample_weight(w, len(w), np.float64)


def test_sample_weight_check_keeps_finite_weights_whose_sum_overflows():
    with pytest.warns(RuntimeWarning, match="overflow"):  # NumPy's, from the sum, as before the fast path
        w = check_sample_weight(np.full(3, 1e308), 3, np.float64)
    np.testing.assert_array_equal(w, np.full(3, 1e308))
    w = check_sample_weight(np.array([0, 2, 1]), 3, np.float32)
    assert w.dtype == np.float32 and list(w) == [0, 2, 1]
