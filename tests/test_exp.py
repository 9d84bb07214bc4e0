"""The kernels' vectorised exp (``_exp.h``) and the heads that use it.

The exp against a higher-precision reference (x86-64's 80-bit long double, or
mpmath) over dense sweeps and random values of the whole range, its special
values against libm's, and the softmax + cross-entropy head, softmax_forward,
the logistic head and the logistic activation against their NumPy twins in
``reference.py`` at the sizes where the blocks of rows meet and part, with
weights, in place, with non-finite logits and with exps that underflow.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fastmlp import _kernels as K
from fastmlp import reference as R

DTYPES = (np.float32, np.float64)
TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}
# C values per block of rows in the heads (_kernels.pyx's HEAD_BLOCK_ROWS / HEAD_BLOCK_VALUES): 64 rows
# of up to 64 columns, fewer rows when C is wider, one row when C > 4096.
CLASSES = (1, 2, 3, 5, 10, 17, 100, 5000)
BATCHES = (1, 63, 64, 65, 200)


def _exp(x):
    out = np.empty_like(x)
    K.exp_into(out, x)
    return out


def _ulps(got, exact, dtype):
    """|got - exact| in units of the last place of exact rounded to dtype (the subnormal spacing below normals)."""
    rounded = exact.astype(dtype)
    spacing = np.spacing(np.abs(rounded)).astype(exact.dtype)
    return np.abs(got.astype(exact.dtype) - exact) / spacing


def _sweep(dtype, lo, hi, n, seed):
    rng = np.random.default_rng(seed)
    return np.concatenate([np.linspace(lo, hi, n), rng.uniform(lo, hi, n // 2), rng.uniform(-1, 1, n // 4)]).astype(dtype)


@pytest.mark.skipif(np.finfo(np.longdouble).nmant < 60, reason="needs an extended-precision long double")
def test_exp_f64_within_one_ulp_dense():
    """Within 1 ulp of the correctly rounded exp (1.5 ulp of the exact value) over 3.5 million points,
    subnormal results included: measured max 0.994 ulp of the exact value (0.958 for the build without FMA)."""
    x = np.concatenate([_sweep(np.float64, -746, 710, 2_000_000, 0), _sweep(np.float64, -746, -700, 400_000, 1)])
    exact = np.exp(x.astype(np.longdouble))
    got = _exp(x)
    finite = exact < np.finfo(np.float64).max
    assert np.all(np.isposinf(got[~finite]))
    assert _ulps(got[finite], exact[finite], np.float64).max() < 1.5


def test_exp_f64_within_one_ulp_of_mpmath():
    """Against mpmath at 120 bits on random values: measured max 1 ulp from the correctly rounded result."""
    mpmath = pytest.importorskip("mpmath")
    x = np.random.default_rng(2).uniform(-745, 709, 4000)
    with mpmath.workprec(120):
        exact = np.array([float(mpmath.exp(mpmath.mpf(float(v)))) for v in x])
    assert _ulps(_exp(x), exact, np.float64).max() <= 1.0


def test_exp_f32_within_one_ulp_dense():
    """Against exp in float64 (exact to far below a float32 ulp), within 1 ulp of the correctly rounded exp:
    measured max 0.976 ulp of the exact value (0.945 for the build without FMA)."""
    x = _sweep(np.float32, -104, 89, 4_000_000, 3)
    exact = np.exp(x.astype(np.float64))
    got = _exp(x)
    finite = exact < np.finfo(np.float32).max
    assert np.all(np.isposinf(got[~finite]))
    assert _ulps(got[finite], exact[finite], np.float32).max() < 1.5


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_special_values_are_libms(dtype):
    """NaN, infinities, overflow, underflow below half the smallest subnormal and exp(+-0) == 1 exactly as libm;
    results at the edges of the finite and subnormal ranges within 1 ulp (the subnormal spacing there)."""
    info = np.finfo(dtype)
    log_max, log_sub = np.log(float(info.max)), np.log(float(info.smallest_subnormal))
    above = 1 + 4 * float(info.eps)
    exact = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, info.tiny, -info.tiny, 1e30, -1e30, info.max,
                      -info.max, log_max * above, log_sub - 1, (log_sub - np.log(2)) * above], dtype=dtype)
    log_tiny = np.log(float(info.tiny))
    edges = np.array([np.nextafter(dtype(log_max), dtype(0)), log_sub, log_sub + 0.3, log_tiny - 0.5, log_tiny],
                     dtype=dtype)
    with np.errstate(over="ignore", under="ignore"):
        want_exact, want_edges = (np.exp(x.astype(np.float64)).astype(dtype) for x in (exact, edges))
    got = _exp(exact)
    np.testing.assert_array_equal(got, want_exact)  # NaN where NaN
    assert got[4] == 1 and got[5] == 1 and np.isposinf(got[12]) and got[14] == 0
    got = _exp(edges)
    assert np.all(np.isfinite(got)) and np.all(got > 0)
    assert np.all(np.abs(got - want_edges) <= np.spacing(want_edges))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 3, 7, 8, 9, 33])
def test_exp_in_place_and_every_length(dtype, n):
    x = np.linspace(-20, 20, n).astype(dtype)
    want = _exp(x)
    np.testing.assert_allclose(want, np.exp(x), rtol=3 * np.finfo(dtype).eps)
    K.exp_into(x, x)
    np.testing.assert_array_equal(x, want)


def test_exp_into_checks_its_length():
    with pytest.raises(ValueError, match=r"out: expected shape \(3,\), got \(2,\)"):
        K.exp_into(np.empty(2), np.zeros(3))


def _logits(dtype, B, C, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, C)) * 4).astype(dtype), rng.integers(0, C, B).astype(np.int64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", CLASSES)
@pytest.mark.parametrize("B", BATCHES)
def test_softmax_cross_entropy_matches_reference(dtype, B, C):
    if B * C > 100_000:
        B = 3
    z, labels = _logits(dtype, B, C, B * 1000 + C)
    w = np.random.default_rng(C).random(B).astype(dtype)
    w[::3] = 0  # weight-0 rows: no loss, zero gradient
    if not w.any():
        w[0] = 1
    for weights in (None, w):
        want_loss, want_dz = R.softmax_cross_entropy(z.astype(np.float64), labels, weights)
        dz = np.full_like(z, np.nan)
        loss, correct = K.softmax_cross_entropy_forward_backward(dz, z, labels, weights=weights)
        assert loss == pytest.approx(want_loss, rel=1e-5 if dtype == np.float32 else 1e-12)
        np.testing.assert_allclose(dz, want_dz, **TOL[dtype])
        kept = np.ones(B, bool) if weights is None else weights > 0
        assert correct == int((z.argmax(axis=1) == labels)[kept].sum())
        assert K.softmax_cross_entropy_forward(z, labels, weights=weights) == (loss, correct)
        alias = z.copy()
        assert K.softmax_cross_entropy_forward_backward(alias, alias, labels, weights=weights) == (loss, correct)
        np.testing.assert_array_equal(alias, dz)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_underflowing_and_non_finite_rows(dtype):
    z = np.array([[0, -800, -760, 3, -740],         # exps below the smallest subnormal
                  [np.nan, 0, 1, 2, 3],
                  [1, 2, np.inf, 0, 0],
                  [-np.inf, 0, 5, -np.inf, 1],     # exp(-inf) = 0
                  [-300, -1000, 200, -90, 0]], dtype=dtype)
    labels = np.array([1, 0, 2, 2, 2], dtype=np.int64)
    dz = np.empty_like(z)
    loss, _ = K.softmax_cross_entropy_forward_backward(dz, z, labels)
    assert np.isnan(loss)
    assert np.all(np.isnan(dz[1:3]))
    finite = [0, 3, 4]
    want_loss, want_dz = R.softmax_cross_entropy(z[finite].astype(np.float64), labels[finite])
    np.testing.assert_allclose(dz[finite] * 5 / 3, want_dz, **TOL[dtype])
    part, _ = K.softmax_cross_entropy_forward(z[finite], labels[finite])
    assert part == pytest.approx(want_loss, rel=1e-6)
    assert np.isposinf(K.softmax_cross_entropy_forward(z[[0, 2]], labels[[0, 2]])[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", CLASSES)
def test_softmax_forward_matches_reference(dtype, C):
    z, _ = _logits(dtype, 65, C, C)
    z[3, 0] = -900  # its exp underflows
    want = R.softmax_forward(z.astype(np.float64))
    p = np.full_like(z, np.nan)
    K.softmax_forward(p, z)
    np.testing.assert_allclose(p, want, **TOL[dtype])
    K.softmax_forward(z, z)  # P may be Z
    np.testing.assert_array_equal(z, p)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", CLASSES)
def test_logistic_head_and_activation_match_reference(dtype, C):
    B = 3 if C > 1000 else 130
    rng = np.random.default_rng(C)
    z = (rng.standard_normal((B, C)) * 30).astype(dtype)  # saturating logits both ways
    z[0, 0] = np.nan
    t = rng.integers(0, 2, (B, C)).astype(dtype)
    ok = np.ones(B, dtype)
    ok[0] = 0  # the NaN row has weight 0: it must not reach the loss
    want_loss, want_dz = R.logistic_cross_entropy(z[1:].astype(np.float64), t[1:].astype(np.float64))
    dz = np.full_like(z, np.nan)
    loss, _ = K.logistic_cross_entropy_forward_backward(dz, z, t, weights=ok)
    assert loss == pytest.approx(want_loss, rel=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(dz[1:], want_dz, **TOL[dtype])
    assert K.logistic_cross_entropy_forward(z, t, weights=ok)[0] == loss
    y = np.empty_like(z)
    K.logistic_forward(y, z)
    assert np.isnan(y[0, 0])
    np.testing.assert_allclose(y, R.logistic_forward(z.astype(np.float64)), **TOL[dtype])


def test_heads_agree_across_threads():
    """Hooks run concurrently from Python threads (they release the GIL) give the serial results, bit for bit."""
    cases = [_logits(np.float64 if i % 2 else np.float32, 200, 10, i) for i in range(8)]

    def run(case):
        z, labels = case
        dz = np.empty_like(z)
        loss = K.softmax_cross_entropy_forward_backward(dz, z, labels)
        return loss, K.softmax_cross_entropy_forward(z, labels), dz

    serial = [run(c) for c in cases]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(20):
            for got, want in zip(pool.map(run, cases), serial):
                assert got[:2] == want[:2]
                np.testing.assert_array_equal(got[2], want[2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_logistic_activation_is_the_same_on_one_and_two_threads(dtype):
    """Large enough for the activation's parallel row chunks: each chunk's vector exp gives the serial values."""
    x = (np.random.default_rng(5).standard_normal((300, 300)) * 20).astype(dtype)
    before = K.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            K.set_num_threads(n)
            y = np.empty_like(x)
            K.logistic_forward(y, x)
            outs.append(y)
    finally:
        K.set_num_threads(before)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0], R.logistic_forward(x.astype(np.float64)), **TOL[dtype])


def _tanh(x):
    out = np.empty_like(x)
    K.tanh_forward(out, x)
    return out


@pytest.mark.skipif(np.finfo(np.longdouble).nmant < 60, reason="needs an extended-precision long double")
@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_within_three_ulp(dtype):
    """The activation's tanh (_exp.h: t / (t + 2), t = expm1(2 |x|)) against long double over dense sweeps and
    tiny arguments: measured max 2.50 ulp of the exact value in float64, 2.30 in float32 (libm's tanh, which
    it replaces, is within 1)."""
    tiny = np.geomspace(float(np.finfo(dtype).tiny), 1, 100_000)
    x = np.concatenate([_sweep(np.float64, -25, 25, 1_000_000, 6), tiny, -tiny]).astype(dtype)
    x = x.reshape(-1, 100)
    exact = np.tanh(x.astype(np.longdouble))
    assert _ulps(_tanh(x), exact, dtype).max() < 3.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_special_values(dtype):
    info = np.finfo(dtype)
    x = np.array([[np.nan, np.inf, -np.inf, 0.0, -0.0, info.smallest_subnormal, -info.smallest_subnormal, 20.0,
                   -20.0, info.max, -info.max]], dtype=dtype)
    got = _tanh(x)
    np.testing.assert_array_equal(got, np.tanh(x))  # NaN stays NaN, +-1 beyond the saturation, tiny x itself
    assert np.signbit(got[0, 4]) and not np.signbit(got[0, 3])
