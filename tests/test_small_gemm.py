"""fastmlp's own small-matrix GEMM (``src/fastmlp/_small_gemm.h``, AVX2 + FMA), which ``_blas_gemm`` runs
instead of OpenBLAS's for small products.

Most checks multiply small integers, so that every partial sum is exact in float32
and float64 and any summation order gives the very same numbers: the results are
compared bit for bit with NumPy's. The shapes cross every edge of the blocking: rows
around the 6- and 12-row tiles, columns around the vector (4 doubles, 8 floats) and
the two-vector panel, inner sizes around the 256-value block and the short in-place
panels, for every transpose of A and B. ``K.gemm`` calls one GEMM as the kernels'
chunks do (``own=True`` forces the kernel whatever the shape); the public layer
kernels are checked at the estimators' shapes, with one and two threads, the kernel
on and off.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import fastmlp
from fastmlp import _kernels as K



def _runs_here() -> bool:
    """Whether this CPU runs the kernel (it is off by default where OpenBLAS runs AVX-512 kernels)."""
    before = K.small_gemm(True)
    on = K.small_gemm()
    K.small_gemm(before)
    return on


pytestmark = pytest.mark.skipif(not _runs_here(), reason="this CPU does not run AVX2 and FMA: OpenBLAS does the work")

DTYPES = [np.float32, np.float64]
# (M, N, K) around each edge: tiles of 6 and 12 rows, panels of 8 / 16 columns, vectors of 4 / 8,
# the in-place panel's 32 inner values and the 256-value block; then the estimators' products.
EDGE_SHAPES = [(m, n, k) for m in (2, 5, 6, 7, 12, 13) for n in (2, 3, 4, 5, 8, 9, 13, 16, 17) for k in (2, 7, 13)]
EDGE_SHAPES += [(11, 24, 31), (13, 33, 32), (29, 17, 33), (7, 40, 255), (19, 9, 256), (25, 31, 257), (3, 65, 600),
                (200, 64, 64), (200, 10, 64), (200, 64, 10), (10, 64, 200), (64, 64, 200), (147, 64, 64),
                (64, 64, 147), (147, 10, 64)]


@pytest.fixture(autouse=True)
def switch():
    """The kernel on for each test, whatever OpenBLAS's kernels; ``switch(False)`` sets it off; the setting comes back."""
    before = K.small_gemm(True)
    yield K.small_gemm
    K.small_gemm(before)


@pytest.fixture
def threads():
    before = fastmlp.get_num_threads()
    yield fastmlp.set_num_threads
    fastmlp.set_num_threads(before)


def _ints(rng, shape, dtype, low=-4, high=5):
    return rng.integers(low, high, shape).astype(dtype)


def _as_op(a, trans):
    """``a`` with the same values, stored transposed (Fortran order) when ``trans``."""
    return np.asfortranarray(a) if trans else np.ascontiguousarray(a)


def _exact(alpha, a, b, beta, c):
    """alpha a @ b + beta c in float64 (exact for these integers), as the dtype of c."""
    product = alpha * (a.astype(np.float64) @ b.astype(np.float64))
    return (product + beta * c.astype(np.float64) if beta != 0 else product).astype(c.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", list(itertools.product([False, True], repeat=2)))
def test_every_edge_and_transpose_is_exact(ta, tb, dtype, switch):
    switch(True)
    rng = np.random.default_rng(int(ta) * 2 + int(tb))
    for m, n, k in EDGE_SHAPES:
        a, b = _ints(rng, (m, k), dtype), _ints(rng, (k, n), dtype)
        for alpha, beta in [(1.0, 0.0), (-2.0, 1.0), (0.5, 3.0), (0.25, -1.0)]:
            c0 = _ints(rng, (m, n), dtype)
            c = np.full((m, n), np.nan, dtype) if beta == 0 else c0.copy()  # beta 0: NaN garbage must not leak
            K.gemm(c, _as_op(a, ta), _as_op(b, tb), alpha, beta, own=True)
            np.testing.assert_array_equal(c, _exact(alpha, a, b, beta, c0), err_msg=f"{(m, n, k)} {alpha} {beta}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", list(itertools.product([False, True], repeat=2)))
def test_strided_operands_read_and_write_only_their_own_elements(ta, tb, dtype, switch):
    switch(True)
    rng = np.random.default_rng(5)
    for m, n, k in [(13, 17, 9), (7, 9, 40), (200, 10, 64), (10, 64, 200)]:
        a = _as_op(_ints(rng, (m + 3, k + 5), dtype), ta)[1:m + 1, 2:k + 2]  # leading dimension above the width
        b = _as_op(_ints(rng, (k + 4, n + 6), dtype), tb)[3:k + 3, :n]
        wide = _ints(rng, (m, n + 7), dtype)
        before = wide.copy()
        K.gemm(wide[:, 2:n + 2], a, b, -1.0, 2.0, own=True)
        np.testing.assert_array_equal(wide[:, 2:n + 2], _exact(-1.0, a, b, 2.0, before[:, 2:n + 2]))
        np.testing.assert_array_equal(wide[:, :2], before[:, :2])  # the columns around C's are left alone
        np.testing.assert_array_equal(wide[:, n + 2:], before[:, n + 2:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", list(itertools.product([False, True], repeat=2)))
def test_nan_and_inf_propagate_as_in_numpy(ta, tb, dtype):
    rng = np.random.default_rng(6)
    for m, n, k in [(13, 17, 9), (200, 10, 64), (10, 64, 200)]:
        a, b = _ints(rng, (m, k), dtype, -1, 2), _ints(rng, (k, n), dtype, -1, 2)  # zeros too: inf * 0 is NaN
        a[m // 2, k // 3] = np.nan
        b[k - 1, n - 1] = np.inf
        b[0, n // 2] = -np.inf
        results = []
        for own in (True, False):
            c = np.full((m, n), np.nan, dtype)
            K.gemm(c, _as_op(a, ta), _as_op(b, tb), own=own)
            results.append(c)
        with np.errstate(invalid="ignore"):  # inf * 0 is NaN on purpose
            expected = (a.astype(np.float64) @ b.astype(np.float64)).astype(dtype)
        assert np.isnan(expected).any() and np.isinf(expected).any()
        np.testing.assert_array_equal(results[0], expected)
        np.testing.assert_array_equal(results[0], results[1])  # OpenBLAS agrees


@pytest.mark.parametrize("dtype", DTYPES)
def test_alpha_zero_scales_c_and_ignores_the_product_as_blas_does(dtype):
    rng = np.random.default_rng(7)
    a, b, c0 = _ints(rng, (13, 9), dtype), _ints(rng, (9, 11), dtype), _ints(rng, (13, 11), dtype)
    a[3, 4] = np.nan
    for own in (True, False):
        c = c0.copy()
        K.gemm(c, a, b, 0.0, 2.0, own=own)
        np.testing.assert_array_equal(c, 2 * c0)
        c = np.full_like(c0, np.nan)
        K.gemm(c, a, b, 0.0, 0.0, own=own)
        np.testing.assert_array_equal(c, np.zeros_like(c0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_floats_are_as_close_to_float64_as_openblas(dtype):
    # Errors relative to the sum of the terms' magnitudes: the rounding of a sum, whatever its order.
    rng = np.random.default_rng(8)
    bound = 4 * np.finfo(dtype).eps
    for m, n, k in [(200, 64, 64), (200, 10, 64), (64, 64, 200), (37, 300, 700), (3, 5, 1000)]:
        a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
        c0 = rng.standard_normal((m, n)).astype(dtype)
        a64, b64, c64 = (v.astype(np.float64) for v in (a, b, c0))
        exact = 0.7 * (a64 @ b64) + 0.3 * c64
        magnitude = 0.7 * (np.abs(a64) @ np.abs(b64)) + 0.3 * np.abs(c64)
        for own in (True, False):
            c = c0.copy()
            K.gemm(c, a, b, 0.7, 0.3, own=own)
            err = np.abs(c - exact) / magnitude
            assert err.max() < bound, f"{(m, n, k)} own={own}: largest relative error {err.max():.3g}"


def _relu(y):
    """_loops.h's ReLU: y where y > 0 or NaN, else +0."""
    return np.where((y > 0) | np.isnan(y), y, 0).astype(y.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", list(itertools.product([False, True], repeat=2)))
def test_bias_and_relu_fused_into_the_stores_are_exact(ta, tb, dtype):
    rng = np.random.default_rng(10 + 2 * int(ta) + int(tb))
    # 300, 600: the bias after the last block only; a single row, column or inner value: GEMV/GER, then the pass
    for m, n, k in EDGE_SHAPES[::3] + [(13, 17, 300), (7, 9, 600), (1, 17, 9), (13, 1, 9), (13, 17, 1)]:
        a, b, bias = _ints(rng, (m, k), dtype), _ints(rng, (k, n), dtype), _ints(rng, (n,), dtype)
        for alpha, beta, act in [(1.0, 0.0, 1), (1.0, 0.0, 0), (-0.5, 2.0, 1)]:
            c0 = _ints(rng, (m, n), dtype)
            c = np.full((m, n), np.nan, dtype) if beta == 0 else c0.copy()
            K.gemm(c, _as_op(a, ta), _as_op(b, tb), alpha, beta, own=True, bias=bias, act=act)
            expected = _exact(alpha, a, b, beta, c0) + bias
            np.testing.assert_array_equal(c, _relu(expected) if act else expected, err_msg=f"{(m, n, k)} {act}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_relu_keeps_nan_and_zeroes_minus_inf(dtype):
    rng = np.random.default_rng(11)
    a, b, bias = _ints(rng, (13, 9), dtype), _ints(rng, (9, 17), dtype), _ints(rng, (17,), dtype)
    a[2, :] = np.nan
    a[5, :] = 0
    bias[3] = -np.inf
    c = np.empty((13, 17), dtype)
    K.gemm(c, a, b, own=True, bias=bias, act=1)
    assert np.isnan(c[2]).all()
    np.testing.assert_array_equal(c[5], np.maximum(bias, 0))
    np.testing.assert_array_equal(c[:, 3], np.where(np.isnan(c[:, 3]), np.nan, 0))
    np.testing.assert_array_equal(c, _relu((a.astype(np.float64) @ b + bias).astype(dtype)))


def test_bias_and_act_are_refused_without_the_own_kernel():
    c, a, b = np.empty((3, 4)), np.ones((3, 5)), np.ones((5, 4))
    with pytest.raises(ValueError, match=r"bias, act: fused only by fastmlp's own GEMM, expected own=True"):
        K.gemm(c, a, b, bias=np.ones(4))
    with pytest.raises(ValueError, match=r"act: expected 0 \(identity\) or 1 \(ReLU\), got 2"):
        K.gemm(c, a, b, own=True, act=2)
    with pytest.raises(ValueError, match=r"bias: expected shape \(4,\), got \(3,\)"):
        K.gemm(c, a, b, own=True, bias=np.ones(3))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias_layout", ["unit", "strided", "reversed", "none"])
@pytest.mark.parametrize("shape", [(200, 64, 64), (147, 64, 10), (400, 64, 64), (2, 13, 7)],
                         ids=lambda s: "x".join(map(str, s)))
def test_forward_is_the_gemm_then_bias_then_activation_bit_for_bit(shape, bias_layout, dtype, threads):
    # Fused (unit-stride bias, identity or ReLU) or not (a strided bias, tanh), the same numbers as the
    # product alone followed by the bias and activation.
    B, I, O = shape
    rng = np.random.default_rng(B + I)
    x, w = rng.standard_normal((B, I)).astype(dtype), rng.standard_normal((O, I)).astype(dtype)
    wide = rng.standard_normal(2 * O).astype(dtype)
    b = {"unit": wide[:O], "strided": wide[::2], "reversed": wide[::-1][:O], "none": None}[bias_layout]
    product = np.empty((B, O), dtype)
    K.gemm(product, x, w.T, own=K.small_gemm_takes(B, O, I))
    biased = product + b if b is not None else product
    for act, expected in [(0, biased), (1, _relu(biased)), (K.ACTIVATIONS["tanh"], np.tanh(biased))]:
        for n in (1, 2):
            threads(n)
            y = np.full((B, O), np.nan, dtype)
            K.linear_forward(y, x, w, b, act)
            if act == K.ACTIVATIONS["tanh"]:  # the elementwise pass's tanh may round differently from NumPy's
                np.testing.assert_allclose(y, expected, rtol=1e-6 if dtype == np.float32 else 1e-14, atol=1e-7)
            else:
                np.testing.assert_array_equal(y, expected, err_msg=f"act {act}, threads {n}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("shape", [(200, 64, 10), (147, 64, 10), (400, 64, 64), (1, 5, 3), (13, 1, 7)],
                         ids=lambda s: "x".join(map(str, s)))
def test_backward_dx_is_the_gemm_then_the_relu_mask_bit_for_bit(shape, layout, dtype, threads):
    # Fused into the GEMM's stores (X with unit stride along its rows) or a pass of its own (X Fortran-ordered):
    # dX = (dY @ W) where X > 0, else +0 (NaN in X masks to 0), as _loops.h's fm_act_grad.
    B, I, O = shape
    rng = np.random.default_rng(B * O + I)
    dy, w = rng.standard_normal((B, O)).astype(dtype), rng.standard_normal((O, I)).astype(dtype)
    x = np.maximum(rng.standard_normal((B, I)), 0).astype(dtype)
    x.flat[::7] = np.nan
    x = np.asfortranarray(x) if layout == "F" else x
    product = np.empty((B, I), dtype)
    K.gemm(product, dy, w, own=K.small_gemm_takes(B, I, O))
    expected = np.where(x > 0, product, 0).astype(dtype)
    for n in (1, 2):
        threads(n)
        dx, dx_sgd = np.full((B, I), np.nan, dtype), np.full((B, I), np.nan, dtype)
        K.linear_backward(np.empty((O, I), dtype), None, dx, dy, x, w, True)
        K.linear_backward_sgd(w.copy(), np.zeros(O, dtype), dx_sgd, dy, x, 0.0, act_input=True)
        np.testing.assert_array_equal(dx, expected, err_msg=f"threads {n}")
        np.testing.assert_array_equal(dx_sgd, expected, err_msg=f"threads {n}")


def _layer_results(x, w, b, dy, lr):
    """linear_forward (+ReLU), linear_backward, linear_backward_sgd of one layer; every output starts as NaN."""
    dtype = x.dtype
    B, O = dy.shape
    y = np.full((B, O), np.nan, dtype)
    K.linear_forward(y, x, w, b, True, np.full((1, max(1, K.forward_scratch_size(B, x.shape[1], O))), np.nan, dtype))
    xr = np.maximum(x, 0)
    dw, db, dx = np.full(w.shape, np.nan, dtype), np.full(O, np.nan, dtype), np.full(x.shape, np.nan, dtype)
    K.linear_backward(dw, db, dx, dy, xr, w, True)
    w2, b2, dx2 = w.copy(), b.copy(), np.full(x.shape, np.nan, dtype)
    K.linear_backward_sgd(w2, b2, dx2, dy, xr, lr, act_input=True)
    return y, dw, db, dx, w2, b2, dx2


# (B, I, O): the estimators' layers (digits: 64 -> 64 -> 10; the last batch of 1797 rows), batches around the
# transposed forward's 32 rows, and a product the pool cuts in two with two threads.
LAYER_SHAPES = [(200, 64, 64), (200, 64, 10), (197, 64, 64), (197, 64, 10), (33, 13, 7), (17, 64, 10),
                (400, 64, 64)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LAYER_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_layer_kernels_are_exact_with_one_and_two_threads_on_and_off(shape, dtype, switch, threads):
    B, I, O = shape
    rng = np.random.default_rng(B + I + O)
    x, w, b, dy = (_ints(rng, s, dtype) for s in ((B, I), (O, I), (O,), (B, O)))
    lr = 0.5
    xr = np.maximum(x, 0).astype(np.float64)
    exact_dw = dy.T.astype(np.float64) @ xr
    expected = (np.maximum(x.astype(np.float64) @ w.T + b, 0), exact_dw, dy.sum(axis=0),
                (dy.astype(np.float64) @ w) * (xr > 0), w - lr * exact_dw, b - lr * dy.sum(axis=0),
                (dy.astype(np.float64) @ w) * (xr > 0))
    for on, n in itertools.product((True, False), (1, 2)):
        switch(on)
        threads(n)
        for got, want in zip(_layer_results(x, w, b, dy, lr), expected):
            np.testing.assert_array_equal(got, want.astype(dtype), err_msg=f"kernel on: {on}, threads: {n}")


@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("shape", [(200, 64, 64), (400, 64, 64), (147, 64, 10)], ids=lambda s: "x".join(map(str, s)))
def test_random_layers_do_not_depend_on_the_thread_count(shape, layout, switch, threads):
    switch(True)
    B, I, O = shape
    rng = np.random.default_rng(B * I + O)
    x, w, dy = (rng.standard_normal(s) for s in ((B, I), (O, I), (B, O)))
    if layout == "F":
        x, w = np.asfortranarray(x), np.asfortranarray(w)
    b = rng.standard_normal(O)
    runs = []
    for n in (1, 2, 3):
        threads(n)
        runs.append(_layer_results(x, w, b, dy, 0.01))
    for run in runs[1:]:
        for got, first in zip(run, runs[0]):
            np.testing.assert_array_equal(got, first)
    y = runs[0][0]
    np.testing.assert_allclose(y, np.maximum(x @ w.T + b, 0), rtol=1e-12, atol=1e-12)


def test_the_rule_takes_the_estimators_products_and_leaves_large_ones_to_openblas(switch):
    for m, n, k in [(200, 64, 64), (200, 10, 64), (200, 64, 10), (10, 64, 200), (64, 64, 200), (64, 10, 200),
                    (1797, 64, 64)]:
        assert K.small_gemm_takes(m, n, k), (m, n, k)
    for m, n, k in [(200, 100, 64), (200, 256, 256), (200, 64, 3072)]:
        assert not K.small_gemm_takes(m, n, k), (m, n, k)
    switch(False)
    assert not K.small_gemm_takes(200, 64, 64)


def test_switch_returns_the_previous_setting(switch):
    assert switch(False) is True
    assert switch() is False
    assert switch(True) is False
    assert switch() is True


def test_the_estimators_products_take_the_kernel_only_while_it_is_on(switch):
    # alpha and beta round differently from OpenBLAS here (it scales C first): the result tells which kernel ran.
    rng = np.random.default_rng(9)
    a, b, c0 = rng.standard_normal((200, 64)), rng.standard_normal((64, 64)), rng.standard_normal((200, 64))
    results = {}
    for own in (True, False, None):
        results[own] = c0.copy()
        K.gemm(results[own], a, b, 0.7, 0.3, own=own)
    assert not np.array_equal(results[True], results[False])
    np.testing.assert_array_equal(results[None], results[True])
    switch(False)
    c = c0.copy()
    K.gemm(c, a, b, 0.7, 0.3)
    np.testing.assert_array_equal(c, results[False])


@pytest.mark.parametrize("core, expected", [("Haswell", True), ("Sandybridge", False)])
def test_it_is_on_by_default_only_where_openblas_runs_its_avx2_kernels(core, expected):
    """On an OpenBLAS with AVX-512 kernels (twice as wide) the small products stay with OpenBLAS.

    ``OPENBLAS_CORETYPE`` picks OpenBLAS's kernels in a fresh process (Sandybridge's, AVX without
    FMA, stand in here for any family that is not an AVX2 one: this CPU cannot run AVX-512).
    """
    import os
    import subprocess
    import sys

    code = ("from fastmlp import _kernels as K; import sys; "
            "sys.stdout.write(f'{K.blas_library()[1]}|{K.small_gemm()}')")
    env = {**os.environ, "OPENBLAS_CORETYPE": core}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          check=True)
    config, on = done.stdout.rsplit("|", 1)
    assert core.lower() in config.lower(), config
    assert on == str(expected), (config, on)
