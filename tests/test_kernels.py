"""Every ``def`` hook of ``fastmlp._kernels`` against its NumPy twin in ``fastmlp.reference``.

Each hook is swept over float32/float64 and over the memory layouts the BLAS
wrapper claims to take as they are (C, Fortran, transposed views, row-strided
views with a padded leading dimension) or must copy first (column-strided and
negatively strided views), with odd sizes and batch 1. Hypothesis draws the
shapes and layouts; a deterministic dtype x layout grid (as scikit-learn's
``test_cython_blas`` does) guarantees every combination is run at least once.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmlp import _kernels as K
from fastmlp import reference as R

DTYPES = (np.float32, np.float64)
# float32 sums a dozen products of N(0, 1) numbers: ~1e-6 absolute error is expected.
TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-10)}

# Layouts of a 2-D operand (see make_operand).
LAYOUTS = ("C", "F", "T", "rows", "padded", "Tpadded", "cols", "neg")

SETTINGS = settings(max_examples=25, deadline=None)
dims = st.integers(1, 13)
seeds = st.integers(0, 2**32 - 1)
layouts = st.sampled_from(LAYOUTS)


def make_operand(rng, shape, dtype, layout):
    """A (r, c) array of N(0, 1) values of ``dtype`` laid out in memory as ``layout``.

    C / F: contiguous; T: transposed view of a C array (Fortran-like);
    rows: every other row of a taller C array (leading dimension 2c);
    padded: the first c columns of a wider C array (leading dimension c + 3);
    Tpadded: transposed view of a padded array (Fortran-like, leading dimension r + 3);
    cols: every other column (no unit stride: the kernel must copy);
    neg: rows reversed (negative stride: the kernel must copy).
    """
    r, c = shape
    if layout == "C":
        a = rng.standard_normal((r, c))
    elif layout == "F":
        a = np.asfortranarray(rng.standard_normal((r, c)))
    elif layout == "T":
        a = rng.standard_normal((c, r)).astype(dtype).T
    elif layout == "rows":
        a = rng.standard_normal((2 * r, c)).astype(dtype)[::2]
    elif layout == "padded":
        a = rng.standard_normal((r, c + 3)).astype(dtype)[:, :c]
    elif layout == "Tpadded":
        a = rng.standard_normal((c, r + 3)).astype(dtype)[:, :r].T
    elif layout == "cols":
        a = rng.standard_normal((r, 2 * c)).astype(dtype)[:, ::2]
    elif layout == "neg":
        a = rng.standard_normal((r, c)).astype(dtype)[::-1]
    else:  # pragma: no cover - test bug
        raise AssertionError(layout)
    a = a.astype(dtype, copy=False) if a.dtype != dtype else a
    assert a.shape == (r, c) and a.dtype == dtype
    if layout in ("cols", "neg") and r > 1 and c > 1:
        assert not a.flags.c_contiguous and not a.flags.f_contiguous
    return a


def make_vector(rng, n, dtype, strided):
    """A (n,) vector, contiguous or a stride-2 view."""
    if strided:
        return rng.standard_normal(2 * n).astype(dtype)[::2]
    return rng.standard_normal(n).astype(dtype)


def garbage(shape, dtype):
    """An output buffer full of NaN: the kernel must overwrite it, not accumulate into it."""
    return np.full(shape, np.nan, dtype=dtype)


def f64(a):
    return np.asarray(a, dtype=np.float64)


# ----------------------------------------------------------------------------- linear


def check_linear_forward(rng, dtype, B, I, O, lx, lw, bias, relu, scratch=False):
    x = make_operand(rng, (B, I), dtype, lx)
    w = make_operand(rng, (O, I), dtype, lw)
    b = None if bias is None else make_vector(rng, O, dtype, strided=bias == "strided")
    x_before, w_before = x.copy(), w.copy()
    y = garbage((B, O), dtype)
    if scratch:  # batches of 2..SMALL_BATCH rows then take the transposed-GEMM path
        K.linear_forward(y, x, w, b, relu, garbage((O + 2, B), dtype))
    else:
        K.linear_forward(y, x, w, b, relu)
    expected = R.linear_forward(f64(x), f64(w), 0.0 if b is None else f64(b))
    if relu:
        expected = R.relu_forward(expected)
    np.testing.assert_allclose(y, expected, **TOL[dtype])
    # Inputs are read only (a copy made for a strided operand must not leak back).
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(w, w_before)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(B=dims, I=dims, O=dims, lx=layouts, lw=layouts,
       bias=st.sampled_from([None, "contiguous", "strided"]), relu=st.booleans(), scratch=st.booleans(),
       seed=seeds)
def test_linear_forward_property(dtype, B, I, O, lx, lw, bias, relu, scratch, seed):
    check_linear_forward(np.random.default_rng(seed), dtype, B, I, O, lx, lw, bias, relu, scratch)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lx", LAYOUTS)
@pytest.mark.parametrize("lw", LAYOUTS)
def test_linear_forward_layout_grid(dtype, lx, lw):
    rng = np.random.default_rng(0)
    check_linear_forward(rng, dtype, 7, 13, 3, lx, lw, "contiguous", relu=True)
    check_linear_forward(rng, dtype, 7, 13, 3, lx, lw, "strided", relu=True, scratch=True)
    check_linear_forward(rng, dtype, 1, 3, 7, lx, lw, None, relu=False)  # batch 1
    check_linear_forward(rng, dtype, 1, 3, 7, lx, lw, None, relu=False, scratch=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", [2, K.SMALL_BATCH, K.SMALL_BATCH + 1, 70])
def test_linear_forward_scratch_either_side_of_small_batch(dtype, B):
    rng = np.random.default_rng(8)
    for relu in (False, True):
        check_linear_forward(rng, dtype, B, 33, 17, "C", "C", "contiguous", relu, scratch=False)
        check_linear_forward(rng, dtype, B, 33, 17, "F", "T", "strided", relu, scratch=True)


def test_linear_forward_scratch_too_small():
    with pytest.raises(ValueError, match="scratch: expected at least 12 elements, got 11"):
        K.linear_forward(np.empty((4, 3)), np.ones((4, 5)), np.ones((3, 5)), None, False, np.empty((1, 11)))


def check_linear_backward(rng, dtype, B, I, O, ldy, lx, lw, relu_input, want_dx, want_db):
    dy = make_operand(rng, (B, O), dtype, ldy)
    x = make_operand(rng, (B, I), dtype, lx)
    if relu_input:  # x is a ReLU's output: zero about half of it, in its own layout
        x[...] = np.maximum(x, 0)
    w = make_operand(rng, (O, I), dtype, lw)
    dw = garbage((O, I), dtype)
    # Finite garbage for db: NaN garbage is test_linear_backward_db_overwrites_nan's (a known bug).
    db = np.full((O,), 7.0, dtype=dtype) if want_db else None
    dx = garbage((B, I), dtype) if want_dx else None
    K.linear_backward(dw, db, dx, dy, x, w, relu_input)
    ref_dx, ref_dw, ref_db = R.linear_backward(f64(dy), f64(x), f64(w))
    if relu_input:
        ref_dx = ref_dx * (f64(x) > 0)
    np.testing.assert_allclose(dw, ref_dw, **TOL[dtype])
    if want_db:
        np.testing.assert_allclose(db, ref_db, **TOL[dtype])
    if want_dx:
        np.testing.assert_allclose(dx, ref_dx, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(B=dims, I=dims, O=dims, ldy=layouts, lx=layouts, lw=layouts, relu_input=st.booleans(),
       want_dx=st.booleans(), want_db=st.booleans(), seed=seeds)
def test_linear_backward_property(dtype, B, I, O, ldy, lx, lw, relu_input, want_dx, want_db, seed):
    check_linear_backward(np.random.default_rng(seed), dtype, B, I, O, ldy, lx, lw, relu_input, want_dx, want_db)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ldy", LAYOUTS)
@pytest.mark.parametrize("lx", LAYOUTS)
def test_linear_backward_layout_grid(dtype, ldy, lx):
    rng = np.random.default_rng(1)
    # W takes each layout too, paired with dY's (a full cube is needlessly slow).
    check_linear_backward(rng, dtype, 7, 13, 3, ldy, lx, ldy, True, True, True)
    check_linear_backward(rng, dtype, 1, 5, 7, ldy, lx, lx, False, True, True)  # batch 1


def test_linear_backward_strided_db():
    rng = np.random.default_rng(2)
    dy = rng.standard_normal((5, 3))
    x, w = rng.standard_normal((5, 4)), rng.standard_normal((3, 4))
    for dy_op in (dy, np.asfortranarray(dy)):  # both accumulation orders of the column sum
        db_base = np.full(6, 7.0)
        K.linear_backward(np.empty((3, 4)), db_base[::2], None, dy_op, x, w)
        np.testing.assert_allclose(db_base[::2], dy.sum(axis=0), rtol=1e-12)
        np.testing.assert_array_equal(db_base[1::2], 7.0)  # the gaps are untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ["C", "F"])  # dY's layout picks one of two column-sum loops
def test_linear_backward_db_overwrites_nan(dtype, order):
    dy = np.asarray(np.ones((4, 2), dtype=dtype), order=order)
    db = np.full(2, np.nan, dtype=dtype)
    K.linear_backward(np.empty((2, 3), dtype), db, None, dy, np.ones((4, 3), dtype), np.ones((2, 3), dtype))
    np.testing.assert_array_equal(db, [4.0, 4.0])


def check_linear_backward_sgd(rng, dtype, B, I, O, ldy, lx, relu_input, want_dx, lr, wd):
    dy = make_operand(rng, (B, O), dtype, ldy)
    x = make_operand(rng, (B, I), dtype, lx)
    if relu_input:
        x[...] = np.maximum(x, 0)
    w = rng.standard_normal((O, I)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    w_old, b_old = w.copy(), b.copy()
    dx = garbage((B, I), dtype) if want_dx else None
    K.linear_backward_sgd(w, b, dx, dy, x, lr, wd, relu_input)

    ref_dx, ref_dw, ref_db = R.linear_backward(f64(dy), f64(x), f64(w_old))  # dX from the OLD W
    ref_w = R.sgd_update(f64(w_old).ravel(), ref_dw.ravel(), lr=lr, weight_decay=wd).reshape(O, I)
    ref_b = R.sgd_update(f64(b_old), ref_db, lr=lr, weight_decay=0.0)  # no decay on biases
    np.testing.assert_allclose(w, ref_w, **TOL[dtype])
    np.testing.assert_allclose(b, ref_b, **TOL[dtype])
    if want_dx:
        if relu_input:
            ref_dx = ref_dx * (f64(x) > 0)
        np.testing.assert_allclose(dx, ref_dx, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(B=dims, I=dims, O=dims, ldy=layouts, lx=layouts, relu_input=st.booleans(), want_dx=st.booleans(),
       lr=st.sampled_from([0.0, 0.01, 0.5]), wd=st.sampled_from([0.0, 0.1]), seed=seeds)
def test_linear_backward_sgd_property(dtype, B, I, O, ldy, lx, relu_input, want_dx, lr, wd, seed):
    check_linear_backward_sgd(np.random.default_rng(seed), dtype, B, I, O, ldy, lx, relu_input, want_dx, lr, wd)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ldy", LAYOUTS)
@pytest.mark.parametrize("lx", LAYOUTS)
def test_linear_backward_sgd_layout_grid(dtype, ldy, lx):
    rng = np.random.default_rng(3)
    check_linear_backward_sgd(rng, dtype, 7, 13, 3, ldy, lx, True, True, 0.1, 0.01)
    check_linear_backward_sgd(rng, dtype, 1, 3, 7, ldy, lx, False, True, 0.5, 0.0)


def test_linear_backward_sgd_dx_uses_old_weight():
    # With a large lr the new W differs a lot from the old: dX must match the old one only.
    rng = np.random.default_rng(4)
    dy, x = rng.standard_normal((4, 3)), rng.standard_normal((4, 5))
    w = rng.standard_normal((3, 5))
    w_old = w.copy()
    dx = np.empty((4, 5))
    K.linear_backward_sgd(w, np.zeros(3), dx, dy, x, 10.0)
    np.testing.assert_allclose(dx, dy @ w_old, rtol=1e-12)
    assert not np.allclose(dx, dy @ w)


# ----------------------------------------------------------------------------- ReLU


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(B=dims, C=dims, layout=layouts, seed=seeds)
def test_relu_forward_backward_property(dtype, B, C, layout, seed):
    rng = np.random.default_rng(seed)
    x = make_operand(rng, (B, C), dtype, layout)
    x[0, 0] = 0  # exact zero: blocked in both directions
    y = garbage((B, C), dtype)
    K.relu_forward(y, x)
    np.testing.assert_array_equal(y, R.relu_forward(x))

    dy = make_operand(rng, (B, C), dtype, layout)
    dx = garbage((B, C), dtype)
    K.relu_backward(dx, dy, y)
    np.testing.assert_array_equal(dx, R.relu_backward(dy, y))
    assert dx[0, 0] == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_in_place_and_nan(dtype):
    x = np.array([[-1.0, 0.0, 2.0, np.nan]], dtype=dtype)
    expected = R.relu_forward(x)
    K.relu_forward(x, x)  # documented: Y may be X
    np.testing.assert_array_equal(x, expected)
    assert np.isnan(x[0, 3])  # NaN is not hidden as 0
    dy = np.array([[5.0, 6.0, 7.0, 8.0]], dtype=dtype)
    K.relu_backward(dy, dy, x)  # documented: dX may be dY
    np.testing.assert_array_equal(dy, [[0, 0, 7, 0]])


# ----------------------------------------------------------------------------- softmax


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(B=dims, C=dims, layout=layouts, scale=st.sampled_from([1.0, 30.0]), seed=seeds)
def test_softmax_forward_backward_property(dtype, B, C, layout, scale, seed):
    rng = np.random.default_rng(seed)
    z = make_operand(rng, (B, C), dtype, layout)
    z *= dtype(scale)
    p = garbage((B, C), dtype)
    K.softmax_forward(p, z)
    np.testing.assert_allclose(p, R.softmax_forward(f64(z)), **TOL[dtype])
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)

    dp = make_operand(rng, (B, C), dtype, layout)
    dz = garbage((B, C), dtype)
    K.softmax_backward(dz, dp, p)
    np.testing.assert_allclose(dz, R.softmax_backward(f64(dp), f64(p)), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_in_place(dtype):
    rng = np.random.default_rng(5)
    z = rng.standard_normal((3, 7)).astype(dtype)
    expected = R.softmax_forward(f64(z))
    K.softmax_forward(z, z)  # documented: P may be Z
    np.testing.assert_allclose(z, expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("big", [1e4, -1e4])
def test_softmax_huge_logits_finite(dtype, big):
    z = np.array([[big, 0.0, -big], [big, big, 1.0]], dtype=dtype)
    p = np.empty_like(z)
    K.softmax_forward(p, z)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p, R.softmax_forward(z.astype(np.float64)), **TOL[dtype])


# ----------------------------------------------------------------------------- cross-entropy on probabilities


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(B=dims, C=dims, layout=layouts, one_hot=st.booleans(), with_zero=st.booleans(), seed=seeds)
def test_cross_entropy_property(dtype, B, C, layout, one_hot, with_zero, seed):
    rng = np.random.default_rng(seed)
    p = make_operand(rng, (B, C), dtype, layout)
    p[...] = R.softmax_forward(f64(p))
    if with_zero:
        p[0, 0] = 0  # floored at the dtype's tiny: finite loss, finite gradient
    if one_hot:
        t = np.zeros((B, C), dtype=dtype)
        t[np.arange(B), rng.integers(0, C, size=B)] = 1
        if with_zero:  # the zero probability is the target's: the floor is what keeps it finite
            t[0] = np.arange(C) == 0
    else:
        t = R.softmax_forward(rng.standard_normal((B, C))).astype(dtype)  # soft targets
    floor = float(np.finfo(dtype).tiny)
    loss = K.cross_entropy_forward(p, t, floor)
    assert isinstance(loss, float) and np.isfinite(loss)
    np.testing.assert_allclose(loss, R.cross_entropy_forward(p, t), **TOL[dtype])
    dp = garbage((B, C), dtype)
    K.cross_entropy_backward(dp, p, t, floor)
    assert np.all(np.isfinite(dp))
    np.testing.assert_allclose(dp, R.cross_entropy_backward(p, t), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_nan_propagates(dtype):
    p = np.array([[np.nan, 0.5, 0.5]], dtype=dtype)
    t = np.array([[1.0, 0.0, 0.0]], dtype=dtype)
    floor = float(np.finfo(dtype).tiny)
    assert np.isnan(R.cross_entropy_forward(p, t))
    assert np.isnan(K.cross_entropy_forward(p, t, floor))
    dp = np.empty_like(p)
    K.cross_entropy_backward(dp, p, t, floor)
    assert np.isnan(dp[0, 0])


# ----------------------------------------------------------------------------- fused softmax + cross-entropy on logits


def check_softmax_xent(rng, dtype, B, C, layout, strided_labels, alias, grad_scale):
    z = make_operand(rng, (B, C), dtype, layout)
    if strided_labels:
        labels = rng.integers(0, C, size=2 * B).astype(np.int64)[::2]
    else:
        labels = rng.integers(0, C, size=B).astype(np.int64)
    ref_loss, ref_dz = R.softmax_cross_entropy(f64(z), labels)
    ref_correct = int(np.sum(f64(z).argmax(axis=1) == labels))
    z_before = z.copy()

    loss_only, correct_only = K.softmax_cross_entropy_forward(z, labels)
    np.testing.assert_array_equal(z, z_before)  # forward-only does not touch the logits
    np.testing.assert_allclose(loss_only, ref_loss, **TOL[dtype])
    assert correct_only == ref_correct

    if alias:
        z = np.ascontiguousarray(z)
        dz = z  # documented: dZ may be Z (the logits are consumed in place)
    else:
        dz = garbage((B, C), dtype)
    if grad_scale is None:
        loss, correct = K.softmax_cross_entropy_forward_backward(dz, z, labels)
        expected_dz = ref_dz
    else:
        loss, correct = K.softmax_cross_entropy_forward_backward(dz, z, labels, grad_scale)
        expected_dz = ref_dz * B * grad_scale
    np.testing.assert_allclose(loss, ref_loss, **TOL[dtype])
    assert correct == ref_correct
    np.testing.assert_allclose(dz, expected_dz, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(B=dims, C=dims, layout=layouts, strided_labels=st.booleans(), alias=st.booleans(),
       grad_scale=st.sampled_from([None, 1.0, 0.25]), seed=seeds)
def test_softmax_cross_entropy_property(dtype, B, C, layout, strided_labels, alias, grad_scale, seed):
    check_softmax_xent(np.random.default_rng(seed), dtype, B, C, layout, strided_labels, alias, grad_scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_softmax_cross_entropy_layout_grid(dtype, layout):
    rng = np.random.default_rng(6)
    check_softmax_xent(rng, dtype, 7, 3, layout, False, False, None)
    check_softmax_xent(rng, dtype, 1, 13, layout, True, True, None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("big", [1e4, -1e4])
def test_softmax_cross_entropy_huge_logits_finite(dtype, big):
    z = np.array([[big, 0.0, -big], [0.0, big, 0.0], [-big, -big, big]], dtype=dtype)
    labels = np.array([2, 1, 0], dtype=np.int64)
    ref_loss, ref_dz = R.softmax_cross_entropy(z.astype(np.float64), labels)
    loss, _ = K.softmax_cross_entropy_forward(z, labels)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    dz = np.empty_like(z)
    loss, correct = K.softmax_cross_entropy_forward_backward(dz, z, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(dz))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(dz, ref_dz, **TOL[dtype])
    assert correct == int(np.sum(z.argmax(axis=1) == labels))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("column", [0, 2])
def test_softmax_cross_entropy_non_finite_logits(dtype, bad, column):
    z = np.zeros((2, 3), dtype=dtype)
    z[1, column] = bad
    labels = np.array([0, 1], dtype=np.int64)
    loss, _ = K.softmax_cross_entropy_forward(z, labels)
    assert not np.isfinite(loss)
    dz = np.empty_like(z)
    loss, _ = K.softmax_cross_entropy_forward_backward(dz, z, labels)
    assert not np.isfinite(loss)
    if bad != bad:
        assert np.isnan(loss)
    np.testing.assert_allclose(dz[0], R.softmax_cross_entropy(z[:1].astype(np.float64), labels[:1])[1][0] / 2,
                               **TOL[dtype])  # the finite row keeps its gradient (scale 1/B, B = 2)


@pytest.mark.parametrize("fn", ["forward", "forward_backward"])
@pytest.mark.parametrize("bad_label", [-1, 3, 2**40])
def test_softmax_cross_entropy_bad_label(fn, bad_label):
    z = np.zeros((3, 3))
    labels = np.array([0, bad_label, 1], dtype=np.int64)
    with pytest.raises(ValueError, match=r"labels: expected class indices in \[0, 3\).*position 1"):
        if fn == "forward":
            K.softmax_cross_entropy_forward(z, labels)
        else:
            K.softmax_cross_entropy_forward_backward(np.empty_like(z), z, labels)


def test_softmax_cross_entropy_label_count_mismatch():
    with pytest.raises(ValueError, match=r"labels: expected shape \(3,\), got \(2,\)"):
        K.softmax_cross_entropy_forward(np.zeros((3, 4)), np.zeros(2, dtype=np.int64))


# ----------------------------------------------------------------------------- optimizer updates


def random_layer(rng, O, I, dtype):
    """A layer's (W (O, I), b (O,)) and float64 copies of them."""
    w, b = rng.standard_normal((O, I)).astype(dtype), rng.standard_normal(O).astype(dtype)
    return w, b, w.astype(np.float64), b.astype(np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(O=st.integers(1, 6), I=st.integers(1, 7), momentum=st.sampled_from([0.0, 0.5, 0.9]), nesterov=st.booleans(),
       wd=st.sampled_from([0.0, 0.01]), lr=st.sampled_from([0.001, 0.1]), seed=seeds)
def test_sgd_update_layer_property(dtype, O, I, momentum, nesterov, wd, lr, seed):
    rng = np.random.default_rng(seed)
    w, b, ref_w, ref_b = random_layer(rng, O, I, dtype)
    v = np.zeros(O * I + O, dtype=dtype) if momentum else None
    ref_v = np.zeros(O * I + O) if momentum else None
    nesterov = nesterov and momentum > 0
    for _ in range(4):
        dw, db = rng.standard_normal((O, I)).astype(dtype), rng.standard_normal(O).astype(dtype)
        K.sgd_update_layer(w, b, dw, db, v, lr, momentum, nesterov, wd)
        R.sgd_update_layer(ref_w, ref_b, f64(dw), f64(db), ref_v, lr=lr, momentum=momentum, nesterov=nesterov,
                           weight_decay=wd)
        np.testing.assert_allclose(w, ref_w, **TOL[dtype])
        np.testing.assert_allclose(b, ref_b, **TOL[dtype])
        if momentum:
            np.testing.assert_allclose(v, ref_v, **TOL[dtype])


def test_sgd_update_layer_decays_weights_only_fixed_case():
    # Zero gradients, no momentum: W shrinks by (1 - lr wd), b stays (worked by hand).
    w, b = np.array([[2.0, -4.0]]), np.array([3.0])
    K.sgd_update_layer(w, b, np.zeros((1, 2)), np.zeros(1), None, 0.5, 0.0, False, 0.1)
    np.testing.assert_array_equal(w, [[1.9, -3.8]])
    np.testing.assert_array_equal(b, [3.0])


def test_sgd_update_layer_nesterov_differs_from_heavy_ball():
    # Guards the test above against a kernel that ignores the nesterov flag.
    g = np.array([[1.0, -2.0]])
    results = []
    for nesterov in (False, True):
        w, b, v = np.zeros((1, 2)), np.zeros(1), np.ones(3)
        K.sgd_update_layer(w, b, g, np.ones(1), v, 0.1, 0.9, nesterov, 0.0)
        results.append(np.append(w, b))
    assert not np.allclose(results[0], results[1])


def test_sgd_update_layer_momentum_needs_buffer():
    with pytest.raises(ValueError, match="v: a momentum buffer is required"):
        K.sgd_update_layer(np.zeros((1, 3)), np.zeros(1), np.zeros((1, 3)), np.zeros(1), None, 0.1, 0.9)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(O=st.integers(1, 6), I=st.integers(1, 7), wd=st.sampled_from([0.0, 0.01]), lr=st.sampled_from([1e-3, 0.1]),
       betas=st.sampled_from([(0.9, 0.999), (0.5, 0.9)]), seed=seeds)
def test_adam_update_layer_property(dtype, O, I, wd, lr, betas, seed):
    rng = np.random.default_rng(seed)
    w, b, ref_w, ref_b = random_layer(rng, O, I, dtype)
    m, v = np.zeros(O * I + O, dtype=dtype), np.zeros(O * I + O, dtype=dtype)
    ref_m, ref_v = np.zeros(O * I + O), np.zeros(O * I + O)
    for step in range(1, 6):
        dw, db = rng.standard_normal((O, I)).astype(dtype), rng.standard_normal(O).astype(dtype)
        K.adam_update_layer(w, b, dw, db, m, v, lr, betas[0], betas[1], 1e-8, wd, step)
        R.adam_update_layer(ref_w, ref_b, f64(dw), f64(db), ref_m, ref_v, lr=lr, beta1=betas[0], beta2=betas[1],
                            eps=1e-8, weight_decay=wd, step=step)
        for got, want in ((w, ref_w), (b, ref_b), (m, ref_m), (v, ref_v)):
            np.testing.assert_allclose(got, want, **TOL[dtype])


def test_adam_update_layer_first_step_fixed_case():
    # Step 1 with bias correction moves every value by lr * sign(g) (eps aside), weight decay on W only.
    w, b = np.array([[1.0, -1.0]]), np.array([2.0])
    m, v = np.zeros(3), np.zeros(3)
    K.adam_update_layer(w, b, np.array([[0.5, -3.0]]), np.array([0.0]), m, v, 0.1, 0.9, 0.999, 1e-12, 1.0, 1)
    # g' = g + w: W's are 1.5 and -4.0 -> each moves by 0.1 against its sign; b's g' is 0 -> stays
    np.testing.assert_allclose(w, [[0.9, -0.9]], rtol=1e-9)
    np.testing.assert_array_equal(b, [2.0])
    np.testing.assert_allclose(m, [0.15, -0.4, 0.0], rtol=1e-12)


def test_adam_update_layer_step_must_be_positive():
    z = np.zeros((1, 2))
    with pytest.raises(ValueError, match="step: expected >= 1, got 0"):
        K.adam_update_layer(z.copy(), np.zeros(1), z, np.zeros(1), np.zeros(3), np.zeros(3), 1e-3, 0.9, 0.999,
                            1e-8, 0.0, 0)


# ----------------------------------------------------------------------------- shape checks at the hooks


def _bad_shape_calls():
    """(id, argument the message must name, call): one for every shape check, write loops' outputs first."""
    rng = np.random.default_rng(7)
    x, w, dy = rng.standard_normal((4, 3)), rng.standard_normal((2, 3)), rng.standard_normal((4, 2))
    u8, off = np.zeros((5, 3), np.uint8), np.zeros(3)
    return [
        ("forward-W", "W", lambda: K.linear_forward(np.empty((4, 2)), x, rng.standard_normal((2, 5)))),
        ("forward-Y", "Y", lambda: K.linear_forward(np.empty((4, 3)), x, w)),
        ("forward-b", "b", lambda: K.linear_forward(np.empty((4, 2)), x, w, np.zeros(5))),
        ("backward-X", "X", lambda: K.linear_backward(np.empty((2, 3)), None, None, dy, rng.standard_normal((5, 3)), w)),
        ("backward-dX", "dX", lambda: K.linear_backward(np.empty((2, 3)), None, np.empty((4, 2)), dy, x, w)),
        ("backward-dW", "dW", lambda: K.linear_backward(np.empty((3, 2)), None, None, dy, x, w)),
        ("backward-db", "db", lambda: K.linear_backward(np.empty((2, 3)), np.empty(3), None, dy, x, w)),
        ("sgd-W", "W", lambda: K.linear_backward_sgd(np.empty((3, 3)), np.zeros(2), None, dy, x, 0.1)),
        ("sgd-b", "b", lambda: K.linear_backward_sgd(w.copy(), np.zeros(3), None, dy, x, 0.1)),
        ("sgd-dX", "dX", lambda: K.linear_backward_sgd(w.copy(), np.zeros(2), np.empty((4, 2)), dy, x, 0.1)),
        ("sgd-X", "X", lambda: K.linear_backward_sgd(w.copy(), np.zeros(2), None, dy, np.ones((5, 3)), 0.1)),
        ("relu-Y", "Y", lambda: K.relu_forward(np.empty((4, 2)), x)),
        ("relu-dY", "dY", lambda: K.relu_backward(np.empty((4, 3)), np.empty((4, 2)), x)),
        ("relu-dX", "dX", lambda: K.relu_backward(np.empty((3, 3)), x.copy(), x)),
        ("softmax-P", "P", lambda: K.softmax_forward(np.empty((4, 2)), x)),
        ("softmax-dP", "dP", lambda: K.softmax_backward(np.empty((4, 3)), np.empty((4, 2)), x)),
        ("softmax-dZ", "dZ", lambda: K.softmax_backward(np.empty((4, 2)), x.copy(), x)),
        ("xent-T", "T", lambda: K.cross_entropy_forward(x, np.ones((4, 2)), 1e-300)),
        ("xent-backward-T", "T", lambda: K.cross_entropy_backward(np.empty((4, 3)), x, np.ones((3, 3)), 1e-300)),
        ("xent-backward-dP", "dP", lambda: K.cross_entropy_backward(np.empty((4, 2)), x, x.copy(), 1e-300)),
        ("fused-dZ", "dZ", lambda: K.softmax_cross_entropy_forward_backward(np.empty((4, 2)), x, np.zeros(4, dtype=np.int64))),
        ("sgd-update-dW", "dW", lambda: K.sgd_update_layer(w.copy(), np.zeros(2), np.zeros((3, 3)), np.zeros(2), None, 0.1)),
        ("sgd-update-b", "b", lambda: K.sgd_update_layer(w.copy(), np.zeros(3), w.copy(), np.zeros(2), None, 0.1)),
        ("sgd-update-db", "db", lambda: K.sgd_update_layer(w.copy(), np.zeros(2), w.copy(), np.zeros(1), None, 0.1)),
        ("sgd-update-v", "v", lambda: K.sgd_update_layer(w.copy(), np.zeros(2), w.copy(), np.zeros(2), np.zeros(6), 0.1, 0.9)),
        ("adam-dW", "dW", lambda: K.adam_update_layer(w.copy(), np.zeros(2), np.zeros((2, 2)), np.zeros(2), np.zeros(8),
                                                      np.zeros(8), 0.1, 0.9, 0.9, 1e-8, 0, 1)),
        ("adam-m", "m", lambda: K.adam_update_layer(w.copy(), np.zeros(2), w.copy(), np.zeros(2), np.zeros(6),
                                                    np.zeros(8), 0.1, 0.9, 0.9, 1e-8, 0, 1)),
        ("adam-v", "v", lambda: K.adam_update_layer(w.copy(), np.zeros(2), w.copy(), np.zeros(2), np.zeros(8),
                                                    np.zeros(9), 0.1, 0.9, 0.9, 1e-8, 0, 1)),
        ("convert-offset", "offset", lambda: K.convert_images(np.empty((2, 3)), u8, None, np.zeros(4))),
        ("convert-scale", "scale", lambda: K.convert_images(np.empty((2, 3)), u8, None, off, np.ones(2))),
        ("convert-src", "src", lambda: K.convert_images(np.empty((2, 4)), u8, None, np.zeros(4))),
        ("convert-index", "index", lambda: K.convert_images(np.empty((2, 3)), u8, np.zeros(3, np.int64), off)),
        ("convert-out", "out", lambda: K.convert_images(np.empty((6, 3)), u8, None, off)),
        ("pixel-sums-src", "src", lambda: K.pixel_sums(np.empty(4, np.uint64), u8)),
        ("images-offset", "offset", lambda: K.linear_forward_images(
            np.empty((2, 2)), np.empty((2, 3)), u8, None, np.zeros(4), None, np.ones((2, 3)))),
        ("images-src", "src", lambda: K.linear_forward_images(
            np.empty((2, 2)), np.empty((2, 4)), u8, None, np.zeros(4), None, np.ones((2, 4)))),
        ("images-index", "index", lambda: K.linear_forward_images(
            np.empty((2, 2)), np.empty((2, 3)), u8, np.zeros(3, np.int64), off, None, np.ones((2, 3)))),
        ("images-Y", "Y", lambda: K.linear_forward_images(
            np.empty((3, 2)), np.empty((2, 3)), u8, None, off, None, np.ones((2, 3)))),
        ("images-W", "W", lambda: K.linear_forward_images(
            np.empty((2, 2)), np.empty((2, 3)), u8, None, off, None, np.ones((2, 4)))),
        ("images-b", "b", lambda: K.linear_forward_images(
            np.empty((2, 2)), np.empty((2, 3)), u8, None, off, None, np.ones((2, 3)), np.zeros(3))),
    ]


_BAD_SHAPES = _bad_shape_calls()


@pytest.mark.parametrize("name,call", [(n, c) for _, n, c in _BAD_SHAPES], ids=[i for i, _, _ in _BAD_SHAPES])
def test_hooks_name_the_misshapen_argument(name, call):
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        call()


def test_convert_images_refuses_rows_outside_the_source():
    with pytest.raises(ValueError, match=r"index: expected row numbers in \[0, 5\), got 5 at position 1"):
        K.convert_images(np.empty((2, 3)), np.zeros((5, 3), np.uint8), np.array([0, 5]), np.zeros(3))
    with pytest.raises(ValueError, match=r"got -1 at position 0"):
        K.convert_images(np.empty((1, 3)), np.zeros((5, 3), np.uint8), np.array([-1]), np.zeros(3))


def test_linear_forward_images_refuses_rows_outside_the_source_before_writing():
    x, y = np.full((2, 3), 7.0), np.full((2, 2), 7.0)
    with pytest.raises(ValueError, match=r"index: expected row numbers in \[0, 5\), got 9 at position 1"):
        K.linear_forward_images(y, x, np.zeros((5, 3), np.uint8), np.array([0, 9]), np.zeros(3), None, np.ones((2, 3)))
    assert (x == 7).all() and (y == 7).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strided", [False, True])
def test_convert_images_against_numpy(dtype, strided):
    rng = np.random.default_rng(3)
    src = rng.integers(0, 256, (50, 2 * 70 if strided else 70), dtype=np.uint8)
    src = src[:, ::2] if strided else src  # non-unit stride along D: the kernel copies
    index = rng.integers(0, 50, 33)
    offset, scale = rng.random(70).astype(dtype) * 255, rng.random(70).astype(dtype) + 0.5
    out = np.full((33, 70), np.nan, dtype)
    K.convert_images(out, src, index, offset, scale)
    np.testing.assert_array_equal(out, (src[index].astype(dtype) - offset) / scale)  # same ops, same rounding
    np.testing.assert_array_equal(out, R.convert_images(src, index, offset, scale))
    K.convert_images(out[:20], src, None, offset)
    np.testing.assert_array_equal(out[:20], np.subtract(src[:20], offset, dtype=dtype))
    np.testing.assert_array_equal(out[:20], R.convert_images(src[:20], None, offset))


def test_pixel_sums_do_not_wrap_past_32_bits():
    # 2^24 + 3 rows of 255 sum to more than 2^32: the 32-bit counts must move to the totals in time.
    src = np.full((2**24 + 3, 2), 255, np.uint8)
    out = np.empty(2, np.uint64)
    K.pixel_sums(out, src)
    assert out.tolist() == [255 * (2**24 + 3)] * 2


def test_sizes_beyond_the_blas_interface_are_refused():
    # A view whose leading dimension exceeds a C int: BLAS would wrap it around. No memory is touched.
    big = np.lib.stride_tricks.as_strided(np.zeros(8), shape=(2, 3), strides=(8 * 2**31, 8), writeable=False)
    with pytest.raises(ValueError, match=r"X: shape \(2, 3\) with leading dimension 2147483648 exceeds what BLAS takes"):
        K.linear_forward(np.empty((2, 2)), big, np.ones((2, 3)))
    with pytest.raises(ValueError, match="dY: .*exceeds what BLAS takes"):
        K.linear_backward(np.empty((2, 3)), None, None, big[:, :2], np.ones((2, 3)), np.ones((2, 3)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_one_sgd_update_with_weight_decay_fixed_case(dtype):
    # Batch 1 takes the rank-1 (GER) path with beta = 1 - lr * wd scaling W first.
    w = np.array([[1.0, -2.0, 0.5], [0.25, 0.0, -1.0]], dtype=dtype)
    b = np.array([0.5, -0.5], dtype=dtype)
    dy = np.array([[0.2, -0.4]], dtype=dtype)
    x = np.array([[1.0, 2.0, -3.0]], dtype=dtype)
    K.linear_backward_sgd(w, b, None, dy, x, 0.1, 0.5)
    expected_w = 0.95 * np.array([[1.0, -2.0, 0.5], [0.25, 0.0, -1.0]]) - 0.1 * np.array(
        [[0.2, 0.4, -0.6], [-0.4, -0.8, 1.2]])
    np.testing.assert_allclose(w, expected_w, rtol=1e-6)
    np.testing.assert_allclose(b, [0.48, -0.46], rtol=1e-6)


@pytest.mark.parametrize("shape", [(0, 3), (3, 0)])
def test_hooks_refuse_empty(shape):
    x = np.empty(shape)
    with pytest.raises(ValueError, match="X: "):
        K.linear_forward(np.empty((shape[0], 2)), x, np.empty((2, shape[1])))
    with pytest.raises(ValueError, match="Z: expected a non-empty"):
        K.softmax_forward(np.empty(shape), x)
    with pytest.raises(ValueError, match="Z: expected a non-empty"):
        K.softmax_cross_entropy_forward(x, np.zeros(shape[0], dtype=np.int64))


def test_hooks_refuse_mixed_dtypes():
    # The fused-type dispatch must refuse, not reinterpret float64 memory as float32.
    with pytest.raises((TypeError, ValueError)):
        K.linear_forward(np.empty((2, 2), np.float32), np.ones((2, 3)), np.ones((2, 3), np.float32))
