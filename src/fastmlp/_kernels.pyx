# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Hot kernels of fastmlp: Cython over BLAS (scipy.linalg.cython_blas).

Kernels come in forward/backward pairs, outputs first then inputs. Every
``cdef`` kernel is ``nogil`` and trusts its arguments; the ``def`` hooks below
check shapes once (raising ``ValueError``) and are what ``fastmlp.modules``,
``fastmlp.mlp``, ``fastmlp.optim`` and the tests call. ``fastmlp.reference``
holds a plain-NumPy twin of each hook.

Shape legend
------------
B   batch size (rows)
I   input features of a linear layer
O   output features of a linear layer
C   number of classes
N   number of elements of a flat parameter buffer

Layout: every 2-D operand of a GEMM may be C-ordered, Fortran-ordered or a
strided view with unit stride along one axis (BLAS takes it as is, through its
transpose flag and leading dimension). Outputs are C-contiguous buffers.
"""
from libc.string cimport memset
from libc.math cimport exp, expf, log, logf, sqrt, sqrtf, INFINITY
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv, sger, dger
cimport numpy as cnp

import numpy as np

cnp.import_array()

ctypedef fused floating:
    float
    double


# ---------------------------------------------------------------------------
# scalar helpers
# ---------------------------------------------------------------------------

cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating _log(floating x) noexcept nogil:
    if floating is float:
        return logf(x)
    else:
        return log(x)


cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


# ---------------------------------------------------------------------------
# BLAS, row-major
# ---------------------------------------------------------------------------

cdef inline void _gemv(bint trans, int m, int n, floating alpha, floating* A, int lda,
                       floating* x, int incx, floating beta, floating* y, int incy) noexcept nogil:
    """y = alpha op(A) x + beta y, A column-major (m, n) (BLAS's own convention)."""
    cdef char t = b'T' if trans else b'N'
    if floating is float:
        sgemv(&t, &m, &n, &alpha, A, &lda, x, &incx, &beta, y, &incy)
    else:
        dgemv(&t, &m, &n, &alpha, A, &lda, x, &incx, &beta, y, &incy)


cdef inline void _gemm(bint ta, bint tb, int M, int N, int K, floating alpha,
                       floating* A, int lda, floating* Bm, int ldb,
                       floating beta, floating* Cm, int ldc) noexcept nogil:
    """C (M, N) = alpha op(A) (M, K) @ op(B) (K, N) + beta C, all row-major.

    BLAS is column-major, and a row-major matrix is its transpose in column
    order, so we ask BLAS for C^T = op(B)^T op(A)^T: swap operands, keep flags.
    A single row, column or rank-1 product (batch 1) goes to GEMV/GER instead:
    GEMM would pack the whole weight matrix to use it once.
    """
    cdef char transa = b'T' if tb else b'N'
    cdef char transb = b'T' if ta else b'N'
    cdef int i, j, inca, incb, one = 1
    if M == 1:
        # c (N,) = op(B)^T a: op(B) row-major (K, N) is column-major (N, K) unless tb.
        inca = lda if ta else 1
        _gemv(tb, (K if tb else N), (N if tb else K), alpha, Bm, ldb, A, inca, beta, Cm, 1)
        return
    if N == 1:
        # c (M,) = op(A) b
        incb = 1 if tb else ldb
        _gemv(not ta, (K if not ta else M), (M if not ta else K), alpha, A, lda, Bm, incb, beta, Cm, ldc)
        return
    if K == 1:
        # C += alpha a b^T (GER adds, so apply beta first); C^T column-major (N, M).
        if beta == 0:  # not 0 * C: C may hold NaN garbage
            for i in range(M):
                memset(&Cm[i * ldc], 0, N * sizeof(floating))
        elif beta != 1:
            for i in range(M):
                for j in range(N):
                    Cm[i * ldc + j] *= beta
        inca = 1 if ta else lda
        incb = ldb if tb else 1
        if floating is float:
            sger(&N, &M, &alpha, Bm, &incb, A, &inca, Cm, &ldc)
        else:
            dger(&N, &M, &alpha, Bm, &incb, A, &inca, Cm, &ldc)
        return
    if floating is float:
        sgemm(&transa, &transb, &N, &M, &K, &alpha, Bm, &ldb, A, &lda, &beta, Cm, &ldc)
    else:
        dgemm(&transa, &transb, &N, &M, &K, &alpha, Bm, &ldb, A, &lda, &beta, Cm, &ldc)


cdef inline bint _layout(const floating[:, :] a, bint* trans, int* ld) noexcept nogil:
    """Describe ``a`` (r, c) as op(buffer) of a row-major buffer with leading dimension ld.

    C-like (unit stride along columns): trans=False, ld = row stride.
    Fortran-like (unit stride along rows): the buffer is a^T stored row-major,
    so trans=True and ld = column stride. Anything else: return False (the
    caller copies).
    """
    cdef Py_ssize_t r = a.shape[0], c = a.shape[1]
    cdef Py_ssize_t it = sizeof(floating)
    cdef Py_ssize_t s0 = a.strides[0], s1 = a.strides[1]
    if (c == 1 or s1 == it) and (r == 1 or (s0 > 0 and s0 % it == 0 and s0 // it >= c)):
        trans[0] = False
        ld[0] = <int>(s0 // it if r > 1 else (c if c > 1 else 1))
        return True
    if (r == 1 or s0 == it) and (c == 1 or (s1 > 0 and s1 % it == 0 and s1 // it >= r)):
        trans[0] = True
        ld[0] = <int>(s1 // it if c > 1 else (r if r > 1 else 1))
        return True
    return False


cdef inline floating* _ptr(const floating[:, :] a) noexcept nogil:
    # BLAS prototypes take non-const pointers; inputs are only read through them.
    return <floating*>&a[0, 0]


# ---------------------------------------------------------------------------
# Linear (+ fused bias, ReLU, SGD)
# ---------------------------------------------------------------------------

cdef void _bias_act(floating[:, ::1] Y, const floating[:] b, bint has_bias, bint relu) noexcept nogil:
    """Y (B, O) <- act(Y + b); one pass over Y after the GEMM."""
    cdef Py_ssize_t i, j, B = Y.shape[0], O = Y.shape[1]
    cdef floating v
    for i in range(B):
        for j in range(O):
            v = Y[i, j]
            if has_bias:
                v = v + b[j]
            if relu and not (v > 0):  # NaN stays visible: max(NaN, 0) would hide it
                v = 0 if v == v else v
            Y[i, j] = v


cdef void _colsum_axpy(floating[:] db, const floating[:, :] dY, floating alpha, floating beta) noexcept nogil:
    """db (O,) <- beta db + alpha * sum_b dY[b, :]."""
    cdef Py_ssize_t i, j, B = dY.shape[0], O = dY.shape[1]
    cdef floating acc
    # beta == 0 assigns rather than scales: db may hold NaN from an earlier batch.
    if dY.strides[1] == sizeof(floating):
        # Row-wise accumulation walks dY in memory order.
        for j in range(O):
            db[j] = beta * db[j] if beta != 0 else 0
        for i in range(B):
            for j in range(O):
                db[j] = db[j] + alpha * dY[i, j]
    else:
        for j in range(O):
            acc = 0
            for i in range(B):
                acc = acc + dY[i, j]
            db[j] = (beta * db[j] if beta != 0 else 0) + alpha * acc


cdef void _relu_mask(floating[:, ::1] dX, const floating[:, :] X) noexcept nogil:
    """dX (B, I) <- dX * (X > 0)."""
    cdef Py_ssize_t i, j
    for i in range(dX.shape[0]):
        for j in range(dX.shape[1]):
            if not (X[i, j] > 0):
                dX[i, j] = 0


cdef int _check2(str name, Py_ssize_t r, Py_ssize_t c, Py_ssize_t er, Py_ssize_t ec) except -1:
    if r != er or c != ec:
        raise ValueError(f"{name}: expected shape ({er}, {ec}), got ({r}, {c})")
    return 0


cdef int _check1(str name, Py_ssize_t n, Py_ssize_t en) except -1:
    if n != en:
        raise ValueError(f"{name}: expected shape ({en},), got ({n},)")
    return 0


cdef int _check_nonempty(str name, Py_ssize_t r, Py_ssize_t c) except -1:
    if r < 1 or c < 1:
        raise ValueError(f"{name}: expected a non-empty 2-D array, got shape ({r}, {c})")
    return 0


cdef const floating[:, :] _operand(str name, const floating[:, :] a, bint* trans, int* ld):
    """Return ``a`` itself, or a C-ordered copy when no BLAS layout fits; set trans/ld."""
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name}: empty array of shape ({a.shape[0]}, {a.shape[1]})")
    if not _layout(a, trans, ld):
        a = np.ascontiguousarray(a)
        _layout(a, trans, ld)
    return a


cdef void _bias_act_from_t(floating[:, ::1] Y, const floating[:, ::1] T, const floating[:] b, bint has_bias,
                           bint relu) noexcept nogil:
    """Y (B, O) <- act(T^T + b), T (O, B): the bias/ReLU pass doubles as the transpose."""
    cdef Py_ssize_t i, j, B = Y.shape[0], O = Y.shape[1]
    cdef floating v
    for i in range(B):
        for j in range(O):
            v = T[j, i]
            if has_bias:
                v = v + b[j]
            if relu and not (v > 0):
                v = 0 if v == v else v
            Y[i, j] = v


# Below this batch size OpenBLAS computes X W^T faster as W X^T (the small
# dimension on the M side); the result is transposed back during the bias pass.
SMALL_BATCH = 32


def linear_forward(floating[:, ::1] Y, const floating[:, :] X, const floating[:, :] W, const floating[:] b=None,
                   bint relu=False, floating[:, ::1] scratch=None):
    """Y (B, O) = act(X (B, I) @ W (O, I)^T + b (O,)), act = ReLU if ``relu`` else identity.

    ``Y`` is overwritten. One GEMM, then one fused bias(+ReLU) pass over Y.
    ``scratch`` (at least O * B elements, C-contiguous) lets batches of 2 to
    SMALL_BATCH rows use the faster transposed GEMM; its contents are clobbered.
    """
    cdef Py_ssize_t B = X.shape[0], I = X.shape[1], O = W.shape[0]
    cdef bint tx, tw, use_t
    cdef int ldx, ldw
    cdef floating[:, ::1] T
    _check2("W", W.shape[0], W.shape[1], O, I)
    _check2("Y", Y.shape[0], Y.shape[1], B, O)
    if b is not None:
        _check1("b", b.shape[0], O)
    X = _operand("X", X, &tx, &ldx)
    W = _operand("W", W, &tw, &ldw)
    use_t = scratch is not None and 1 < B <= SMALL_BATCH and O > 1
    if use_t:
        if scratch.shape[0] * scratch.shape[1] < O * B:
            raise ValueError(f"scratch: expected at least {O * B} elements, got {scratch.shape[0] * scratch.shape[1]}")
        T = np.asarray(scratch).reshape(-1)[: O * B].reshape(O, B)
        with nogil:
            # T (O, B) = W X^T
            _gemm(tw, not tx, <int>O, <int>B, <int>I, <floating>1, _ptr(W), ldw, _ptr(X), ldx,
                  <floating>0, &T[0, 0], <int>B)
            _bias_act_from_t(Y, T, b, b is not None, relu)
        return
    with nogil:
        # op(A) = X, op(B) = W^T: flip W's own flag.
        _gemm(tx, not tw, <int>B, <int>O, <int>I, <floating>1, _ptr(X), ldx, _ptr(W), ldw,
              <floating>0, &Y[0, 0], <int>O)
        if b is not None or relu:
            _bias_act(Y, b, b is not None, relu)


def linear_backward(floating[:, ::1] dW, floating[:] db, floating[:, ::1] dX,
                    const floating[:, :] dY, const floating[:, :] X, const floating[:, :] W, bint relu_input=False):
    """dW = dY^T @ X; db = sum_b dY; dX = dY @ W.

    dW (O, I), db (O,), dX (B, I) are overwritten; db and dX may be None to
    skip them (the first layer needs no dX). With ``relu_input`` the input X is
    the output of a ReLU and dX is masked by (X > 0) in the same call, i.e. dX
    becomes the gradient with respect to the ReLU's input.
    """
    cdef Py_ssize_t B = dY.shape[0], O = dY.shape[1], I = X.shape[1]
    cdef bint tdy, tx, tw
    cdef int lddy, ldx, ldw
    _check2("X", X.shape[0], X.shape[1], B, I)
    _check2("W", W.shape[0], W.shape[1], O, I)
    if dX is not None:
        _check2("dX", dX.shape[0], dX.shape[1], B, I)
    _check2("dW", dW.shape[0], dW.shape[1], O, I)
    if db is not None:
        _check1("db", db.shape[0], O)
    dY = _operand("dY", dY, &tdy, &lddy)
    X = _operand("X", X, &tx, &ldx)
    W = _operand("W", W, &tw, &ldw)
    with nogil:
        if dX is not None:
            _gemm(tdy, tw, <int>B, <int>I, <int>O, <floating>1, _ptr(dY), lddy, _ptr(W), ldw,
                  <floating>0, &dX[0, 0], <int>I)
            if relu_input:
                _relu_mask(dX, X)
        _gemm(not tdy, tx, <int>O, <int>I, <int>B, <floating>1, _ptr(dY), lddy, _ptr(X), ldx,
              <floating>0, &dW[0, 0], <int>I)
        if db is not None:
            _colsum_axpy(db, dY, <floating>1, <floating>0)


def linear_backward_sgd(floating[:, ::1] W, floating[:] b, floating[:, ::1] dX,
                        const floating[:, :] dY, const floating[:, :] X, double lr, double weight_decay=0.0,
                        bint relu_input=False):
    """dX = dY @ W (old W); then W <- (1 - lr wd) W - lr dY^T X; b <- b - lr sum_b dY.

    Plain SGD folded into the weight-gradient GEMM (beta = 1 - lr wd), so no
    dW buffer is written or read. ``W`` (O, I) and ``b`` (O,) are updated in
    place; dX (B, I) is overwritten (None to skip); ``relu_input`` as in
    :func:`linear_backward`. Weight decay applies to W, not to b.
    """
    cdef Py_ssize_t B = dY.shape[0], O = dY.shape[1], I = X.shape[1]
    cdef bint tdy, tx
    cdef int lddy, ldx
    _check2("X", X.shape[0], X.shape[1], B, I)
    _check2("W", W.shape[0], W.shape[1], O, I)
    _check1("b", b.shape[0], O)
    if dX is not None:
        _check2("dX", dX.shape[0], dX.shape[1], B, I)
    dY = _operand("dY", dY, &tdy, &lddy)
    X = _operand("X", X, &tx, &ldx)
    cdef floating alpha = <floating>(-lr)
    cdef floating beta = <floating>(1.0 - lr * weight_decay)
    with nogil:
        if dX is not None:  # must read W before the update below
            _gemm(tdy, False, <int>B, <int>I, <int>O, <floating>1, _ptr(dY), lddy, &W[0, 0], <int>I,
                  <floating>0, &dX[0, 0], <int>I)
            if relu_input:
                _relu_mask(dX, X)
        _gemm(not tdy, tx, <int>O, <int>I, <int>B, alpha, _ptr(dY), lddy, _ptr(X), ldx,
              beta, &W[0, 0], <int>I)
        _colsum_axpy(b, dY, alpha, <floating>1)


# ---------------------------------------------------------------------------
# ReLU
# ---------------------------------------------------------------------------

def relu_forward(floating[:, ::1] Y, const floating[:, :] X):
    """Y (B, O) = max(X, 0); Y may be X (in place). NaN propagates."""
    cdef Py_ssize_t i, j
    cdef floating v
    _check2("Y", Y.shape[0], Y.shape[1], X.shape[0], X.shape[1])
    with nogil:
        for i in range(X.shape[0]):
            for j in range(X.shape[1]):
                v = X[i, j]
                Y[i, j] = v if (v > 0 or v != v) else 0


def relu_backward(floating[:, ::1] dX, const floating[:, :] dY, const floating[:, :] Y):
    """dX (B, O) = dY * (Y > 0), Y the ReLU's output; dX may be dY (in place)."""
    cdef Py_ssize_t i, j
    _check2("dY", dY.shape[0], dY.shape[1], Y.shape[0], Y.shape[1])
    _check2("dX", dX.shape[0], dX.shape[1], Y.shape[0], Y.shape[1])
    with nogil:
        for i in range(Y.shape[0]):
            for j in range(Y.shape[1]):
                dX[i, j] = dY[i, j] if Y[i, j] > 0 else 0


# ---------------------------------------------------------------------------
# softmax, cross-entropy, and the fused pair
# ---------------------------------------------------------------------------

def softmax_forward(floating[:, ::1] P, const floating[:, :] Z):
    """P (B, C) = exp(Z - max_c Z) / sum_c exp(Z - max_c Z), row-wise; P may be Z."""
    cdef Py_ssize_t i, j, B = Z.shape[0], C = Z.shape[1]
    cdef floating m, s, inv
    _check_nonempty("Z", B, C)
    _check2("P", P.shape[0], P.shape[1], B, C)
    with nogil:
        for i in range(B):
            m = -INFINITY
            for j in range(C):
                if Z[i, j] > m:
                    m = Z[i, j]
            s = 0
            for j in range(C):
                P[i, j] = _exp(Z[i, j] - m)
                s = s + P[i, j]
            inv = 1 / s
            for j in range(C):
                P[i, j] = P[i, j] * inv


def softmax_backward(floating[:, ::1] dZ, const floating[:, :] dP, const floating[:, :] P):
    """dZ (B, C) = P * (dP - sum_c dP * P): the softmax Jacobian (diag(p) - p p^T) applied row-wise."""
    cdef Py_ssize_t i, j, B = P.shape[0], C = P.shape[1]
    cdef floating dot
    _check_nonempty("P", B, C)
    _check2("dP", dP.shape[0], dP.shape[1], B, C)
    _check2("dZ", dZ.shape[0], dZ.shape[1], B, C)
    with nogil:
        for i in range(B):
            dot = 0
            for j in range(C):
                dot = dot + dP[i, j] * P[i, j]
            for j in range(C):
                dZ[i, j] = P[i, j] * (dP[i, j] - dot)


def cross_entropy_forward(const floating[:, :] P, const floating[:, :] T, double floor):
    """loss = -(1/B) sum_{b,c} T log(max(P, floor)); P, T (B, C). Returns a Python float."""
    cdef Py_ssize_t i, j, B = P.shape[0], C = P.shape[1]
    cdef double acc = 0
    cdef floating p, fl = <floating>floor
    _check_nonempty("P", B, C)
    _check2("T", T.shape[0], T.shape[1], B, C)
    with nogil:
        for i in range(B):
            for j in range(C):
                if T[i, j] != 0:
                    p = P[i, j] if (P[i, j] > fl or P[i, j] != P[i, j]) else fl  # NaN stays NaN
                    acc -= T[i, j] * _log(p)
    return acc / B


def cross_entropy_backward(floating[:, ::1] dP, const floating[:, :] P, const floating[:, :] T, double floor):
    """dP (B, C) = -T / (B max(P, floor)): the gradient of the mean cross-entropy."""
    cdef Py_ssize_t i, j, B = P.shape[0], C = P.shape[1]
    cdef floating p, fl = <floating>floor, invb
    _check_nonempty("P", B, C)
    invb = <floating>(1.0 / B)
    _check2("T", T.shape[0], T.shape[1], B, C)
    _check2("dP", dP.shape[0], dP.shape[1], B, C)
    with nogil:
        for i in range(B):
            for j in range(C):
                p = P[i, j] if (P[i, j] > fl or P[i, j] != P[i, j]) else fl  # NaN stays NaN
                dP[i, j] = -T[i, j] * invb / p


cdef Py_ssize_t _softmax_xent(floating[:, ::1] dZ, bint has_dz, const floating[:, :] Z,
                              const cnp.int64_t[:] labels, floating scale,
                              double* total, Py_ssize_t* correct) noexcept nogil:
    """Row loop shared by the two hooks below; returns the first bad label's row, or -1."""
    cdef Py_ssize_t i, j, arg, B = Z.shape[0], C = Z.shape[1]
    cdef cnp.int64_t y
    cdef floating m, s, zy, e, inv
    for i in range(B):  # all labels first: dZ may alias Z, which must survive an error
        if labels[i] < 0 or labels[i] >= C:
            return i
    for i in range(B):
        y = labels[i]
        m = Z[i, 0]
        arg = 0
        for j in range(1, C):
            if Z[i, j] > m:
                m = Z[i, j]
                arg = j
        if m != m or m == INFINITY:  # NaN or +inf logits: let the loss say so
            total[0] += m if m != m else INFINITY
            if has_dz:
                for j in range(C):
                    dZ[i, j] = m - m
            continue
        zy = Z[i, y]  # read before dZ (which may alias Z) is written
        s = 0
        for j in range(C):
            e = _exp(Z[i, j] - m)
            if has_dz:
                dZ[i, j] = e
            s = s + e
        total[0] += <double>(_log(s) + m - zy)
        correct[0] += (arg == y)
        if has_dz:
            inv = scale / s
            for j in range(C):
                dZ[i, j] = dZ[i, j] * inv
            dZ[i, y] = dZ[i, y] - scale
    return -1


cdef int _bad_label(const cnp.int64_t[:] labels, Py_ssize_t row, Py_ssize_t C) except -1:
    raise ValueError(f"labels: expected class indices in [0, {C}), got {labels[row]} at position {row}")


def softmax_cross_entropy_forward_backward(floating[:, ::1] dZ, const floating[:, :] Z,
                                           const cnp.int64_t[:] labels, double grad_scale=-1.0):
    """loss = (1/B) sum_b [logsumexp(Z_b) - Z_b,y_b];  dZ = (softmax(Z) - onehot(y)) * grad_scale.

    Z (B, C) logits, labels (B,) int64 in [0, C), grad_scale defaulting to 1/B.
    dZ (B, C) is overwritten and may be Z itself (the logits are consumed in
    place). One pass per row; log-sum-exp with the row max, so huge logits
    cannot overflow. Returns (loss, n_correct), n_correct counting rows whose
    argmax is the label. Raises ValueError on a label outside [0, C).
    """
    cdef Py_ssize_t B = Z.shape[0], C = Z.shape[1], bad
    cdef double total = 0
    cdef Py_ssize_t correct = 0
    _check_nonempty("Z", B, C)
    _check1("labels", labels.shape[0], B)
    _check2("dZ", dZ.shape[0], dZ.shape[1], B, C)
    cdef floating scale = <floating>(1.0 / B if grad_scale < 0 else grad_scale)
    with nogil:
        bad = _softmax_xent(dZ, True, Z, labels, scale, &total, &correct)
    if bad >= 0:
        _bad_label(labels, bad, C)
    return total / B, correct


def softmax_cross_entropy_forward(const floating[:, :] Z, const cnp.int64_t[:] labels):
    """(loss, n_correct) of :func:`softmax_cross_entropy_forward_backward`, without the gradient."""
    cdef Py_ssize_t B = Z.shape[0], C = Z.shape[1], bad
    cdef double total = 0
    cdef Py_ssize_t correct = 0
    cdef floating[:, ::1] no_dz = None
    _check_nonempty("Z", B, C)
    _check1("labels", labels.shape[0], B)
    with nogil:
        bad = _softmax_xent(no_dz, False, Z, labels, 0, &total, &correct)
    if bad >= 0:
        _bad_label(labels, bad, C)
    return total / B, correct


# ---------------------------------------------------------------------------
# optimizer updates (flat parameter buffers, in place)
# ---------------------------------------------------------------------------

def sgd_update(floating[::1] w, const floating[::1] g, floating[::1] v,
               double lr, double momentum=0.0, bint nesterov=False, double weight_decay=0.0):
    """SGD step on w (N,) in place (PyTorch's convention, dampening 0).

    g' = g + wd w;  v <- mu v + g';  w <- w - lr (g' + mu v if nesterov else v).
    With v None (momentum 0): w <- w - lr g'. ``v`` (N,) is updated in place.
    """
    cdef Py_ssize_t k, N = w.shape[0]
    cdef floating gk, vk
    cdef floating flr = <floating>lr, mu = <floating>momentum, wd = <floating>weight_decay
    _check1("g", g.shape[0], N)
    if v is not None:
        _check1("v", v.shape[0], N)
    elif momentum != 0.0:
        raise ValueError("v: a momentum buffer is required when momentum != 0")
    with nogil:
        if v is None:
            for k in range(N):
                w[k] = w[k] - flr * (g[k] + wd * w[k])
        else:
            for k in range(N):
                gk = g[k] + wd * w[k]
                vk = mu * v[k] + gk
                v[k] = vk
                w[k] = w[k] - flr * ((gk + mu * vk) if nesterov else vk)


def adam_update(floating[::1] w, const floating[::1] g, floating[::1] m, floating[::1] v,
                double lr, double beta1, double beta2, double eps, double weight_decay, long step):
    """Adam step on w (N,) in place, with bias correction (step >= 1 counts this update).

    g' = g + wd w;  m <- b1 m + (1-b1) g';  v <- b2 v + (1-b2) g'^2;
    w <- w - lr/(1-b1^t) * m / (sqrt(v/(1-b2^t)) + eps).  m, v (N,) updated in place.
    """
    cdef Py_ssize_t k, N = w.shape[0]
    cdef floating gk, mk, vk
    if step < 1:
        raise ValueError(f"step: expected >= 1, got {step}")
    _check1("g", g.shape[0], N)
    _check1("m", m.shape[0], N)
    _check1("v", v.shape[0], N)
    cdef floating b1 = <floating>beta1, b2 = <floating>beta2, feps = <floating>eps
    cdef floating wd = <floating>weight_decay
    cdef floating step_size = <floating>(lr / (1.0 - beta1 ** step))
    cdef floating inv_sqrt_bc2 = <floating>(1.0 / sqrt(1.0 - beta2 ** step))
    with nogil:
        for k in range(N):
            gk = g[k] + wd * w[k]
            mk = b1 * m[k] + (1 - b1) * gk
            vk = b2 * v[k] + (1 - b2) * gk * gk
            m[k] = mk
            v[k] = vk
            w[k] = w[k] - step_size * mk / (_sqrt(vk) * inv_sqrt_bc2 + feps)
