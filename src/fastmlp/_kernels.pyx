# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Hot kernels of fastmlp: Cython over OpenBLAS (the ``scipy-openblas32`` package) and a small thread pool.

Kernels come in forward/backward pairs, outputs first then inputs. Every
``cdef`` kernel is ``nogil`` and trusts its arguments; the ``def`` hooks below
check shapes and sizes once (raising ``ValueError``) and are what
``fastmlp.modules``, ``fastmlp.mlp``, ``fastmlp.optim``, ``fastmlp.data`` and the
tests call. ``fastmlp.reference`` holds a plain-NumPy twin of each hook.

Shape legend
------------
B   batch size (rows)
I   input features of a linear layer
O   output features of a linear layer
C   number of classes
D   values per image (3072 for CIFAR-10)
N   number of elements of a flat parameter buffer

Layout: every 2-D operand of a GEMM may be C-ordered, Fortran-ordered or a
strided view with unit stride along one axis (BLAS takes it as is, through its
transpose flag and leading dimension). Outputs are C-contiguous buffers.

Threads: a GEMM is cut into chunks, each an independent single-threaded BLAS
call, and the chunks run on fastmlp's own pool (``_pool.h``): along the batch
or the output features (the larger, one chunk per thread; the other operand is
then packed once per chunk), or, for the skinny forward GEMMs of small layers,
along the inner dimension into two halves whose partial sums the bias pass adds
(always two, so those sums do not depend on the thread count). Single-threaded
GEMMs at these shapes run at ~85 % of a core's sgemm rate against ~70 % for
OpenBLAS's own two-thread split. Results are deterministic for a given number of
threads; another number of threads moves the chunk edges, and OpenBLAS may
round a smaller block differently in the last bits. The number of threads is
OpenBLAS's own setting (``scipy_openblas_set_num_threads``, which threadpoolctl
sees and limits); while kernels run, OpenBLAS is told to use one thread per
call, so its own pool never wakes, and the setting is kept aside for them: what
other threads run, and a fork, never change the count a kernel uses.

One GEMM is fastmlp's own: a first layer fed uint8 images, in float32, on a CPU
with AVX-512 (``_images_gemm.h``; :func:`images_gemm` tells and switches). Its
forward and its fused SGD update convert the pixels straight into their packed
panels, so neither the training step nor an evaluation writes its converted
batch; its sums differ from OpenBLAS's in the last bits.

Small products (at most 64 columns and 512 inner values: the estimators' layers)
run fastmlp's own AVX2 + FMA GEMM instead of OpenBLAS's, where the CPU has them
(``_small_gemm.h``; :func:`small_gemm` switches, :func:`small_gemm_takes` tells
the shape rule). The choice is made once per product from its whole shape, and
its sums run over k in one fixed order, so its results do not depend on the
thread count either. There :func:`linear_forward` adds the bias and applies the
ReLU (or nothing) as the kernel stores Y, instead of in a pass of its own over Y.
"""
from libc.limits cimport INT_MAX
from libc.math cimport log, log1p, log1pf, logf, sqrt, sqrtf, INFINITY
from libc.string cimport memset
cimport numpy as cnp

import numpy as np

cnp.import_array()

cdef extern from "cblas.h" nogil:
    ctypedef enum CBLAS_ORDER:
        CblasRowMajor
    ctypedef enum CBLAS_TRANSPOSE:
        CblasNoTrans
        CblasTrans
    void scipy_cblas_sgemm(CBLAS_ORDER, CBLAS_TRANSPOSE, CBLAS_TRANSPOSE, int, int, int, float,
                           const float*, int, const float*, int, float, float*, int)
    void scipy_cblas_dgemm(CBLAS_ORDER, CBLAS_TRANSPOSE, CBLAS_TRANSPOSE, int, int, int, double,
                           const double*, int, const double*, int, double, double*, int)
    void scipy_cblas_sgemv(CBLAS_ORDER, CBLAS_TRANSPOSE, int, int, float, const float*, int,
                           const float*, int, float, float*, int)
    void scipy_cblas_dgemv(CBLAS_ORDER, CBLAS_TRANSPOSE, int, int, double, const double*, int,
                           const double*, int, double, double*, int)
    void scipy_cblas_sger(CBLAS_ORDER, int, int, float, const float*, int, const float*, int, float*, int)
    void scipy_cblas_dger(CBLAS_ORDER, int, int, double, const double*, int, const double*, int, double*, int)
    void scipy_openblas_set_num_threads(int)
    int scipy_openblas_get_num_threads()
    char* scipy_openblas_get_config()
    char* scipy_openblas_get_corename()

cdef extern from "_loops.h" nogil:
    void fm_convert_f32(float* out, const cnp.uint8_t* src, const float* offset, const float* scale, Py_ssize_t n)
    void fm_convert_f64(double* out, const cnp.uint8_t* src, const double* offset, const double* scale,
                        Py_ssize_t n)
    void fm_add_u8_u32(cnp.uint32_t* acc, const cnp.uint8_t* src, Py_ssize_t n)
    void fm_act_grad_f32(float* c, const float* y, int act, Py_ssize_t n)
    void fm_act_grad_f64(double* c, const double* y, int act, Py_ssize_t n)
    void fm_add_f32(float* y, const float* x, Py_ssize_t n)
    void fm_add_f64(double* y, const double* x, Py_ssize_t n)
    void fm_bias_act_f32(float* y, const float* b, int act, Py_ssize_t n)
    void fm_bias_act_f64(double* y, const double* b, int act, Py_ssize_t n)
    void fm_sgd_f32(float* w, const float* g, float* v, Py_ssize_t n, float lr, float mu, int nesterov, float wd)
    void fm_sgd_f64(double* w, const double* g, double* v, Py_ssize_t n, double lr, double mu, int nesterov,
                    double wd)
    void fm_adam_f32(float* w, const float* g, float* m, float* v, Py_ssize_t n, float step, float inv_bc2,
                     float b1, float b2, float eps, float wd)
    void fm_adam_f64(double* w, const double* g, double* m, double* v, Py_ssize_t n, double step, double inv_bc2,
                     double b1, double b2, double eps, double wd)
    int FM_ACT_IDENTITY, FM_ACT_RELU, FM_ACT_TANH, FM_ACT_LOGISTIC
    void fm_exp_f32(float* out, const float* x, Py_ssize_t n)
    void fm_exp_f64(double* out, const double* x, Py_ssize_t n)

cdef extern from "_images_gemm.h" nogil:
    int fm_images_gemm_available()
    void fm_images_gemm_f32(float* Y, Py_ssize_t ldy, float* X, Py_ssize_t ldx, const cnp.uint8_t* src,
                            Py_ssize_t src_stride, const cnp.int64_t* index, const float* offset, const float* scale,
                            const float* W, Py_ssize_t ldw, Py_ssize_t N, Py_ssize_t r0, Py_ssize_t r1,
                            Py_ssize_t k0, Py_ssize_t k1)
    void fm_images_wgrad_f32(float* W, Py_ssize_t ldw, Py_ssize_t O, float beta, float alpha, const float* dY,
                             Py_ssize_t lddy, Py_ssize_t B, const cnp.uint8_t* src, Py_ssize_t src_stride,
                             const cnp.int64_t* index, const float* offset, const float* scale, Py_ssize_t i0,
                             Py_ssize_t i1)

cdef extern from "_small_gemm.h" nogil:
    int fm_small_gemm_available()
    void fm_small_gemm_f64(int ta, int tb, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, double alpha, const double* A,
                           Py_ssize_t lda, const double* B, Py_ssize_t ldb, double beta, double* C, Py_ssize_t ldc,
                           const double* bias, int relu)
    void fm_small_gemm_f32(int ta, int tb, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, float alpha, const float* A,
                           Py_ssize_t lda, const float* B, Py_ssize_t ldb, float beta, float* C, Py_ssize_t ldc,
                           const float* bias, int relu)

cdef extern from "_pool.h" nogil:
    ctypedef void (*fm_task)(void* ctx, int chunk) noexcept nogil
    int fm_parallel_for(int n_chunks, int n_threads, fm_task fn, void* ctx)
    int fm_threads_begin()
    void fm_threads_end()
    int fm_threads_get()
    void fm_threads_set(int n)
    int FM_MAX_THREADS

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    pthread_t pthread_self()

cdef extern from "<dlfcn.h>" nogil:
    ctypedef struct Dl_info:
        const char* dli_fname
    int dladdr(const void* addr, Dl_info* info)

ctypedef fused floating:
    float
    double

cdef enum:
    # GEMMs below this many multiply-adds run as one BLAS call: tens of microseconds on one
    # core, the scale at which waking a worker stops paying for itself.
    PARALLEL_MIN_MACS = 1 << 20
    # Elementwise passes below this many elements run on the calling thread.
    PARALLEL_MIN_ELEMENTS = 1 << 16
    # Chunk edges along M or N fall on multiples of this (a register tile of the micro-kernels).
    TILE = 16
    # A K-split cuts the inner dimension into this many parts, whatever the thread count
    # (more parts cost ~10 % at 1000 rows and gained nothing measurable at 200).
    K_PARTS = 2
    # GEMMs with N and K at most these run fastmlp's own kernel where small_gemm() is on (_small_gemm_fits).
    SMALL_GEMM_N = 64
    SMALL_GEMM_K = 512
    # Rows summed into 32-bit counters before they move to the 64-bit totals (255 * 2^24 < 2^32).
    SUM_ROWS = 1 << 24
    # The output heads take the exps of a block of rows in one vector pass: at most this many
    # rows, and this many values unless one row has more (the block stays in the L1/L2 cache).
    HEAD_BLOCK_ROWS = 64
    HEAD_BLOCK_VALUES = 4096


# ---------------------------------------------------------------------------
# scalar helpers
# ---------------------------------------------------------------------------

cdef inline void _exp_run(floating* out, const floating* x, Py_ssize_t n) noexcept nogil:
    """out[j] = exp(x[j]) for j < n, vectorised (_exp.h: within 1 ulp); out may be x."""
    if floating is float:
        fm_exp_f32(out, x, n)
    else:
        fm_exp_f64(out, x, n)


cdef inline floating _log(floating x) noexcept nogil:
    if floating is float:
        return logf(x)
    else:
        return log(x)


cdef inline floating _log1p(floating x) noexcept nogil:
    if floating is float:
        return log1pf(x)
    else:
        return log1p(x)


cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline void _act_grad_run(floating* c, const floating* y, int act, Py_ssize_t n) noexcept nogil:
    if floating is float:
        fm_act_grad_f32(c, y, act, n)
    else:
        fm_act_grad_f64(c, y, act, n)


cdef inline floating _act_grad_one(floating c, floating y, int act) noexcept nogil:
    """c * act'(.) written through the activation's output y (one element of :func:`_act_grad_run`)."""
    if act == FM_ACT_RELU:
        return c if y > 0 else 0
    if act == FM_ACT_TANH:
        return c * (1 - y * y)
    if act == FM_ACT_LOGISTIC:
        return c * (y * (1 - y))
    return c


cdef inline void _add_run(floating* y, const floating* x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        fm_add_f32(y, x, n)
    else:
        fm_add_f64(y, x, n)


cdef inline void _bias_act_run(floating* y, const floating* b, int act, Py_ssize_t n) noexcept nogil:
    if floating is float:
        fm_bias_act_f32(y, b, act, n)
    else:
        fm_bias_act_f64(y, b, act, n)


# The activations of the fused layers and of the elementwise pairs, by name (codes of _loops.h).
ACTIVATIONS = {"identity": FM_ACT_IDENTITY, "relu": FM_ACT_RELU, "tanh": FM_ACT_TANH, "logistic": FM_ACT_LOGISTIC}


cdef int _check_act(str name, int act) except -1:
    if act < FM_ACT_IDENTITY or act > FM_ACT_LOGISTIC:
        raise ValueError(f"{name}: expected an activation code in {sorted(ACTIVATIONS.values())} "
                         f"(fastmlp._kernels.ACTIVATIONS), got {act}")
    return 0


cdef inline Py_ssize_t _span(Py_ssize_t n, int part, int parts) noexcept nogil:
    """Start of ``part`` of ``parts`` nearly equal pieces of 0..n, on a TILE boundary (n at the end)."""
    if part >= parts:
        return n
    return (n * part // parts) // TILE * TILE


# ---------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------

cdef inline int _begin_threads() noexcept nogil:
    """fastmlp's thread count (OpenBLAS's setting); OpenBLAS itself goes single-threaded until _end_threads.

    The count is the setting even while kernels on other threads hold OpenBLAS at
    one thread (``_pool.h``), so chunk edges never depend on what other threads do.
    """
    cdef int n = fm_threads_begin()
    return n if n < FM_MAX_THREADS else FM_MAX_THREADS


cdef inline void _end_threads() noexcept nogil:
    fm_threads_end()


def get_num_threads():
    """Threads fastmlp's kernels use: OpenBLAS's setting, which threadpoolctl also reads and limits."""
    return fm_threads_get()


def set_num_threads(int n):
    """Use ``n`` threads (>= 1) in every later kernel call; sets OpenBLAS's own count."""
    if n < 1:
        raise ValueError(f"n: expected a positive number of threads, got {n}")
    fm_threads_set(n)


cdef void _probe_chunk(void* ctx, int chunk) noexcept nogil:
    cdef unsigned long* owners = <unsigned long*>ctx
    cdef double x = 0
    cdef int i
    for i in range(200000):  # long enough (~0.1 ms) for a sleeping worker to wake and claim chunks
        x = x * 0.5 + 1.0
    owners[chunk] = <unsigned long>pthread_self() + <unsigned long>(x == -1.0)


def pool_probe(int n_chunks, int n_threads):
    """Run ``n_chunks`` busy chunks on the pool; return (threads offered chunks, thread ids that ran each chunk).

    A test hook: it shows that chunks really run on several threads and that each runs once.
    """
    if n_chunks < 1 or n_threads < 1:
        raise ValueError(f"n_chunks, n_threads: expected positive ints, got {n_chunks}, {n_threads}")
    owners = np.zeros(n_chunks, dtype=np.uint64)
    cdef unsigned long[::1] view = owners.view(np.uint64)
    cdef int used
    with nogil:
        used = fm_parallel_for(n_chunks, n_threads, _probe_chunk, &view[0])
    return used, owners.tolist()


def blas_library():
    """Path of the shared library that holds the ``sgemm`` these kernels call, and its build string."""
    cdef Dl_info info
    path = None
    if dladdr(<const void*>scipy_cblas_sgemm, &info) and info.dli_fname != NULL:
        path = info.dli_fname.decode()
    return path, scipy_openblas_get_config().decode()


# ---------------------------------------------------------------------------
# BLAS, row-major, one call on the calling thread
# ---------------------------------------------------------------------------

cdef inline CBLAS_TRANSPOSE _t(bint trans) noexcept nogil:
    return CblasTrans if trans else CblasNoTrans


# OpenBLAS kernel families that run AVX2 + FMA, the ones fastmlp's own small GEMM was measured against.
# Where OpenBLAS picked another family (AVX-512 kernels, about twice as wide), it keeps every GEMM.
AVX2_OPENBLAS_CORES = ("haswell", "zen")


cdef bint _small_gemm_default():
    core = scipy_openblas_get_corename().decode().lower()
    return fm_small_gemm_available() and core in AVX2_OPENBLAS_CORES


# Whether _blas_gemm sends the shapes of _small_gemm_fits to fastmlp's own GEMM (_small_gemm.h): this
# CPU runs AVX2 and FMA, OpenBLAS runs AVX2 kernels too, and small_gemm() can switch it off (or on).
cdef bint _small_gemm_on = _small_gemm_default()


def small_gemm(enabled=None):
    """Whether small GEMMs run fastmlp's own AVX2 kernel (True) or OpenBLAS.

    On by default where the CPU runs AVX2 and FMA and OpenBLAS runs its AVX2
    kernels (:data:`AVX2_OPENBLAS_CORES`); where OpenBLAS picked AVX-512 ones it
    keeps the small GEMMs too. With ``enabled`` given, switch it (it can only be
    on where the CPU runs AVX2 and FMA) and return the previous setting. For
    tests and benchmarks.
    """
    global _small_gemm_on
    previous = _small_gemm_on
    if enabled is not None:
        _small_gemm_on = bool(enabled) and fm_small_gemm_available()
    return previous


cdef inline bint _small_gemm_fits(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K) noexcept nogil:
    """Whether fastmlp's own GEMM takes C (M, N) = op(A) (M, K) op(B) (K, N): where it measured faster.

    benches/small_gemm.py: it wins where N and K are small, whatever M, in both
    dtypes; OpenBLAS's larger blocking takes over above.
    """
    return _small_gemm_on and N <= SMALL_GEMM_N and K <= SMALL_GEMM_K


def small_gemm_takes(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K):
    """Whether a GEMM C (M, N) = op(A) (M, K) op(B) (K, N) runs fastmlp's own kernel now (either dtype).

    The shape rule of the kernels (those GEMMs that are not a GEMV or rank-1 update),
    with the :func:`small_gemm` switch; for tests and benchmarks.
    """
    return bool(_small_gemm_fits(M, N, K))


def gemm(floating[:, :] C, const floating[:, :] A, const floating[:, :] B, double alpha=1.0, double beta=0.0,
         own=None, const floating[::1] bias=None, int act=0):
    """C (M, N) = alpha A (M, K) @ B (K, N) + beta C: one GEMM on the calling thread, as every kernel's chunk runs it.

    A test and benchmark hook for the GEMM that :func:`small_gemm` switches: A
    and B may have either layout or a leading dimension above their width (a
    copy is taken otherwise), C must have unit stride along its columns.
    ``own`` None takes the kernels' choice, True fastmlp's own GEMM whatever the
    shape (where the CPU runs it), False OpenBLAS's; a single row, column or
    inner value goes to GEMV/GER either way. With own=True, ``bias`` (N,)
    and ``act`` (identity 0 or ReLU 1) are applied as the tiles are stored, as
    :func:`linear_forward` fuses them: C = act(alpha A @ B + beta C + bias).
    """
    cdef bint ta = False, tb = False, use
    cdef Py_ssize_t lda = 0, ldb = 0, ldc
    _check2("A", A.shape[0], A.shape[1], C.shape[0], A.shape[1])
    _check2("B", B.shape[0], B.shape[1], A.shape[1], C.shape[1])
    _check_nonempty("C", C.shape[0], C.shape[1])
    if C.shape[1] > 1 and C.strides[1] != sizeof(floating) or C.strides[0] % sizeof(floating) != 0:
        raise ValueError(f"C: expected unit stride along the columns, got strides {C.strides[0]}, {C.strides[1]}")
    ldc = C.strides[0] // sizeof(floating) if C.shape[0] > 1 else C.shape[1]
    if ldc < C.shape[1]:
        raise ValueError(f"C: expected a row stride of at least {C.shape[1]} elements, got {ldc}")
    A = _operand("A", A, &ta, &lda)
    B = _operand("B", B, &tb, &ldb)
    _check_blas_size("C", C.shape[0], C.shape[1], ldc)
    if own and not fm_small_gemm_available():
        raise ValueError("own: expected None or False on a CPU without AVX2 and FMA, got True")
    if (bias is not None or act != FM_ACT_IDENTITY) and not own:
        raise ValueError(f"bias, act: fused only by fastmlp's own GEMM, expected own=True, got own={own}")
    if act != FM_ACT_IDENTITY and act != FM_ACT_RELU:
        raise ValueError(f"act: expected {FM_ACT_IDENTITY} (identity) or {FM_ACT_RELU} (ReLU), got {act}")
    if bias is not None:
        _check1("bias", bias.shape[0], C.shape[1])
    use = _small_gemm_fits(C.shape[0], C.shape[1], A.shape[1]) if own is None else bool(own)
    with nogil:
        _blas_gemm(floating is double, ta, tb, C.shape[0], C.shape[1], A.shape[1], alpha, _ptr(A), lda, _ptr(B), ldb,
                   beta, <char*>&C[0, 0], ldc, use, <const char*>&bias[0] if bias is not None else NULL,
                   act == FM_ACT_RELU)


cdef inline void _own_gemm(bint is_double, bint ta, bint tb, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, double alpha,
                           const char* A, Py_ssize_t lda, const char* Bm, Py_ssize_t ldb, double beta, char* Cm,
                           Py_ssize_t ldc, const char* bias, bint relu) noexcept nogil:
    """_blas_gemm's product on fastmlp's own kernel (_small_gemm.h), bias and ReLU fused into its stores."""
    if is_double:
        fm_small_gemm_f64(ta, tb, M, N, K, alpha, <const double*>A, lda, <const double*>Bm, ldb, beta, <double*>Cm,
                          ldc, <const double*>bias, relu)
    else:
        fm_small_gemm_f32(ta, tb, M, N, K, <float>alpha, <const float*>A, lda, <const float*>Bm, ldb, <float>beta,
                          <float*>Cm, ldc, <const float*>bias, relu)


cdef void _blas_gemm(bint is_double, bint ta, bint tb, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, double alpha,
                     const char* A, Py_ssize_t lda, const char* Bm, Py_ssize_t ldb, double beta,
                     char* Cm, Py_ssize_t ldc, bint own, const char* bias, bint relu) noexcept nogil:
    """C (M, N) = alpha op(A) (M, K) @ op(B) (K, N) + beta C, all row-major, element pointers as char*.

    A single row, column or rank-1 product (batch 1) goes to GEMV/GER instead:
    GEMM would pack the whole weight matrix to use it once. Otherwise ``own``
    (:func:`_small_gemm_fits` of the whole product, so that every chunk of it
    takes the same kernel) runs fastmlp's own GEMM rather than OpenBLAS's; only
    that one takes a forward's ``bias`` (N,) (or NULL) and ``relu``, applied as
    it stores C (after a GEMV or GER, in a pass of their own: the products are
    the ones an unfused call computes).
    """
    cdef Py_ssize_t i, j, item = 8 if is_double else 4
    cdef int inca, incb
    if M == 0 or N == 0:
        return
    if (bias != NULL or relu) and (M == 1 or N == 1 or K == 1):
        # GEMV/GER as without the fusion (the same sums), then the bias and ReLU as the forward's own pass
        _blas_gemm(is_double, ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, Cm, ldc, own, NULL, False)
        for i in range(M):
            if is_double:
                fm_bias_act_f64(<double*>(Cm + i * ldc * item), <const double*>bias, FM_ACT_RELU if relu else 0, N)
            else:
                fm_bias_act_f32(<float*>(Cm + i * ldc * item), <const float*>bias, FM_ACT_RELU if relu else 0, N)
        return
    if own and (bias != NULL or relu):
        _own_gemm(is_double, ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, Cm, ldc, bias, relu)
        return
    if M == 1 and K > 1:
        # c (N,) = alpha op(B)^T a + beta c; row-major op(B) (K, N) is stored (N, K) when tb.
        inca = <int>(lda if ta else 1)
        if is_double:
            scipy_cblas_dgemv(CblasRowMajor, _t(not tb), <int>(N if tb else K), <int>(K if tb else N), alpha,
                              <const double*>Bm, <int>ldb, <const double*>A, inca, beta, <double*>Cm, 1)
        else:
            scipy_cblas_sgemv(CblasRowMajor, _t(not tb), <int>(N if tb else K), <int>(K if tb else N), <float>alpha,
                              <const float*>Bm, <int>ldb, <const float*>A, inca, <float>beta, <float*>Cm, 1)
        return
    if N == 1 and K > 1:
        # c (M,) = alpha op(A) b + beta c; c is a column of C (stride ldc).
        incb = <int>(1 if tb else ldb)
        if is_double:
            scipy_cblas_dgemv(CblasRowMajor, _t(ta), <int>(K if ta else M), <int>(M if ta else K), alpha,
                              <const double*>A, <int>lda, <const double*>Bm, incb, beta, <double*>Cm, <int>ldc)
        else:
            scipy_cblas_sgemv(CblasRowMajor, _t(ta), <int>(K if ta else M), <int>(M if ta else K), <float>alpha,
                              <const float*>A, <int>lda, <const float*>Bm, incb, <float>beta, <float*>Cm, <int>ldc)
        return
    if K == 1:
        # C <- beta C + alpha a b^T (GER only adds, so beta comes first; 0 * C would keep NaN garbage).
        for i in range(M):
            if beta == 0:
                memset(Cm + i * ldc * item, 0, N * item)
            elif beta != 1:
                for j in range(N):
                    if is_double:
                        (<double*>Cm)[i * ldc + j] *= beta
                    else:
                        (<float*>Cm)[i * ldc + j] *= <float>beta
        inca = <int>(1 if ta else lda)
        incb = <int>(ldb if tb else 1)
        if is_double:
            scipy_cblas_dger(CblasRowMajor, <int>M, <int>N, alpha, <const double*>A, inca, <const double*>Bm, incb,
                             <double*>Cm, <int>ldc)
        else:
            scipy_cblas_sger(CblasRowMajor, <int>M, <int>N, <float>alpha, <const float*>A, inca, <const float*>Bm,
                             incb, <float*>Cm, <int>ldc)
        return
    if own:
        _own_gemm(is_double, ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, Cm, ldc, NULL, False)
        return
    if is_double:
        scipy_cblas_dgemm(CblasRowMajor, _t(ta), _t(tb), <int>M, <int>N, <int>K, alpha, <const double*>A, <int>lda,
                          <const double*>Bm, <int>ldb, beta, <double*>Cm, <int>ldc)
    else:
        scipy_cblas_sgemm(CblasRowMajor, _t(ta), _t(tb), <int>M, <int>N, <int>K, <float>alpha, <const float*>A,
                          <int>lda, <const float*>Bm, <int>ldb, <float>beta, <float*>Cm, <int>ldc)


# ---------------------------------------------------------------------------
# parallel GEMM: a plan, and one chunk of it per pool task
# ---------------------------------------------------------------------------

cdef enum Split:
    SPLIT_NONE = 0
    SPLIT_M = 1
    SPLIT_N = 2
    SPLIT_K = 3


ctypedef struct Convert:
    char* out                   # (n, D) row-major
    const cnp.uint8_t* src      # rows of D pixels, ``src_stride`` bytes apart
    const cnp.int64_t* index    # which source row makes each output row, or NULL for rows 0..n-1
    Py_ssize_t src_stride
    const char* offset          # (D,)
    const char* scale           # (D,) divisors, or NULL
    Py_ssize_t n, D
    bint is_double
    int chunks


ctypedef struct PixelSums:
    cnp.uint64_t* out           # (D,) totals
    cnp.uint32_t* acc           # (D,) running counts
    const cnp.uint8_t* src      # (n, D) rows, ``src_stride`` bytes apart
    Py_ssize_t src_stride
    Py_ssize_t n, D
    int chunks


ctypedef struct Gemm:
    bint is_double
    bint ta, tb
    Py_ssize_t M, N, K
    const char* A
    Py_ssize_t lda
    const char* Bm
    Py_ssize_t ldb
    char* Cm
    Py_ssize_t ldc
    double alpha, beta
    Split split
    int parts           # pieces along the split dimension
    char* partial       # SPLIT_K: parts - 1 row-major (M, N) buffers for parts 1.. (part 0 writes C)
    const char* mask    # optional post-op: C[i, j] *= act'(.) through mask[i, j], an activation's output
    Py_ssize_t ms0, ms1  # element strides of mask
    int act             # that activation (FM_ACT_ code)
    Convert* pre        # optional pre-op: each chunk first converts the part of A (images) it reads
    bint own            # every chunk runs fastmlp's own GEMM (_small_gemm_fits of the whole product)
    const char* bias    # with own: a forward's bias (N,), unit stride, added as C is stored (NULL: none)
    bint relu           # with own: the ReLU applied as C is stored


cdef Split _plan(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, bint allow_k) noexcept nogil:
    """How to cut C (M, N) = A (M, K) B (K, N), from the shapes alone.

    Cutting M packs B once per chunk, cutting N packs A once per chunk, cutting K
    packs nothing twice but costs a partial (M, N) sum: pick the cheapest. (The
    number of M or N chunks is the thread count; a K-split always has K_PARTS.)
    """
    if M * N * K < PARALLEL_MIN_MACS or M == 1 or N == 1 or K == 1:
        return SPLIT_NONE
    if allow_k and K >= 2 * TILE and 3 * M * N < K * (M if M < N else N):
        return SPLIT_K
    return SPLIT_M if M >= N else SPLIT_N


cdef void _mask_rows(Gemm* g, floating* C, const floating* mask, Py_ssize_t r0, Py_ssize_t r1,
                     Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    cdef Py_ssize_t i, j
    for i in range(r0, r1):
        if g.ms1 == 1:  # rows of the mask are contiguous: the vectorised loop
            _act_grad_run(C + i * g.ldc + c0, mask + i * g.ms0 + c0, g.act, c1 - c0)
        else:
            for j in range(c0, c1):
                C[i * g.ldc + j] = _act_grad_one(C[i * g.ldc + j], mask[i * g.ms0 + j * g.ms1], g.act)


cdef void _convert_rows(Convert* c, floating* out, const floating* offset, const floating* scale,
                        Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    cdef Py_ssize_t i
    cdef const cnp.uint8_t* row
    cdef const floating* sc = scale + c0 if scale != NULL else NULL
    for i in range(r0, r1):
        row = c.src + (c.index[i] if c.index != NULL else i) * c.src_stride + c0
        if floating is float:
            fm_convert_f32(out + i * c.D + c0, row, offset + c0, sc, c1 - c0)
        else:
            fm_convert_f64(out + i * c.D + c0, row, offset + c0, sc, c1 - c0)


cdef void _convert_block(Convert* c, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """out[r0:r1, c0:c1] = (src[index[r0:r1], c0:c1] - offset[c0:c1]) / scale[c0:c1]."""
    if c.is_double:
        _convert_rows(c, <double*>c.out, <const double*>c.offset, <const double*>c.scale, r0, r1, c0, c1)
    else:
        _convert_rows(c, <float*>c.out, <const float*>c.offset, <const float*>c.scale, r0, r1, c0, c1)


cdef void _convert_chunk(void* ctx, int chunk) noexcept nogil:
    cdef Convert* c = <Convert*>ctx
    _convert_block(c, c.n * chunk // c.chunks, c.n * (chunk + 1) // c.chunks, 0, c.D)


cdef void _run_convert(Convert* c, int threads) noexcept nogil:
    c.chunks = threads if c.n * c.D >= PARALLEL_MIN_ELEMENTS and c.n >= threads else 1
    fm_parallel_for(c.chunks, threads, _convert_chunk, c)


cdef void _gemm_mask(Gemm* g, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """C[r0:r1, c0:c1] *= act'(.) through mask, an activation's derivative folded into the dX GEMM."""
    if g.is_double:
        _mask_rows(g, <double*>g.Cm, <const double*>g.mask, r0, r1, c0, c1)
    else:
        _mask_rows(g, <float*>g.Cm, <const float*>g.mask, r0, r1, c0, c1)


cdef void _gemm_chunk(void* ctx, int chunk) noexcept nogil:
    """Pool task: chunk ``chunk`` of the planned GEMM, then its part of the mask post-op."""
    cdef Gemm* g = <Gemm*>ctx
    cdef Py_ssize_t item = 8 if g.is_double else 4
    cdef Py_ssize_t lo, hi
    cdef const char* A = g.A
    cdef const char* Bm = g.Bm
    cdef char* Cm = g.Cm
    cdef Py_ssize_t ldc = g.ldc
    cdef double beta = g.beta
    if g.split == SPLIT_M:
        lo, hi = _span(g.M, chunk, g.parts), _span(g.M, chunk + 1, g.parts)
        if g.pre != NULL:
            _convert_block(g.pre, lo, hi, 0, g.pre.D)
        A = A + (lo if g.ta else lo * g.lda) * item
        _blas_gemm(g.is_double, g.ta, g.tb, hi - lo, g.N, g.K, g.alpha, A, g.lda, Bm, g.ldb, beta,
                   Cm + lo * ldc * item, ldc, g.own, g.bias, g.relu)
        if g.mask != NULL:
            _gemm_mask(g, lo, hi, 0, g.N)
    elif g.split == SPLIT_N:
        lo, hi = _span(g.N, chunk, g.parts), _span(g.N, chunk + 1, g.parts)
        Bm = Bm + (lo * g.ldb if g.tb else lo) * item
        _blas_gemm(g.is_double, g.ta, g.tb, g.M, hi - lo, g.K, g.alpha, A, g.lda, Bm, g.ldb, beta,
                   Cm + lo * item, ldc, g.own, g.bias + lo * item if g.bias != NULL else NULL, g.relu)
        if g.mask != NULL:
            _gemm_mask(g, 0, g.M, lo, hi)
    elif g.split == SPLIT_K:
        lo, hi = _span(g.K, chunk, g.parts), _span(g.K, chunk + 1, g.parts)
        if g.pre != NULL:
            _convert_block(g.pre, 0, g.pre.n, lo, hi)
        A = A + (lo * g.lda if g.ta else lo) * item
        Bm = Bm + (lo if g.tb else lo * g.ldb) * item
        if chunk > 0:  # parts 1.. go to their own buffer; the caller adds them up
            Cm, ldc, beta = g.partial + (chunk - 1) * g.M * g.N * item, g.N, 0.0
        _blas_gemm(g.is_double, g.ta, g.tb, g.M, g.N, hi - lo, g.alpha, A, g.lda, Bm, g.ldb, beta, Cm, ldc, g.own,
                   NULL, False)
    else:
        if g.pre != NULL:
            _convert_block(g.pre, 0, g.pre.n, 0, g.pre.D)
        _blas_gemm(g.is_double, g.ta, g.tb, g.M, g.N, g.K, g.alpha, A, g.lda, Bm, g.ldb, beta, Cm, ldc, g.own,
                   g.bias, g.relu)
        if g.mask != NULL:
            _gemm_mask(g, 0, g.M, 0, g.N)


cdef void _run_gemm(Gemm* g, int threads) noexcept nogil:
    """Run a planned GEMM: its chunks on the pool (one call when the plan is SPLIT_NONE)."""
    cdef int chunks = 1
    if g.split == SPLIT_K:
        g.parts = K_PARTS
        chunks = K_PARTS
    elif g.split == SPLIT_M or g.split == SPLIT_N:
        g.parts = threads
        chunks = threads
    fm_parallel_for(chunks, threads, _gemm_chunk, g)


cdef inline void _gemm_init(Gemm* g, bint is_double, bint ta, bint tb, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                            double alpha, const void* A, Py_ssize_t lda, const void* Bm, Py_ssize_t ldb, double beta,
                            void* Cm, Py_ssize_t ldc) noexcept nogil:
    g.is_double, g.ta, g.tb, g.M, g.N, g.K = is_double, ta, tb, M, N, K
    g.alpha, g.beta = alpha, beta
    g.A, g.lda, g.Bm, g.ldb, g.Cm, g.ldc = <const char*>A, lda, <const char*>Bm, ldb, <char*>Cm, ldc
    g.split, g.parts, g.partial, g.mask, g.ms0, g.ms1, g.act, g.pre = SPLIT_NONE, 1, NULL, NULL, 0, 0, 0, NULL
    g.own = _small_gemm_fits(M, N, K)
    g.bias, g.relu = NULL, False


# ---------------------------------------------------------------------------
# operands
# ---------------------------------------------------------------------------

cdef inline bint _layout(const floating[:, :] a, bint* trans, Py_ssize_t* ld) noexcept nogil:
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
        ld[0] = s0 // it if r > 1 else (c if c > 1 else 1)
        return True
    if (r == 1 or s0 == it) and (c == 1 or (s1 > 0 and s1 % it == 0 and s1 // it >= r)):
        trans[0] = True
        ld[0] = s1 // it if c > 1 else (r if r > 1 else 1)
        return True
    return False


cdef int _check_blas_size(str name, Py_ssize_t r, Py_ssize_t c, Py_ssize_t ld) except -1:
    # OpenBLAS's interface takes 32-bit ints: a larger size would wrap around silently.
    if r > INT_MAX or c > INT_MAX or ld > INT_MAX:
        raise ValueError(f"{name}: shape ({r}, {c}) with leading dimension {ld} exceeds what BLAS takes "
                         f"(each at most {INT_MAX}); split the array into smaller batches")
    return 0


cdef const floating[:, :] _operand(str name, const floating[:, :] a, bint* trans, Py_ssize_t* ld):
    """Return ``a`` itself, or a C-ordered copy when no BLAS layout fits; set trans/ld."""
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name}: empty array of shape ({a.shape[0]}, {a.shape[1]})")
    if not _layout(a, trans, ld):
        a = np.ascontiguousarray(a)
        _layout(a, trans, ld)
    _check_blas_size(name, a.shape[0], a.shape[1], ld[0])
    return a


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


cdef int _check_output(str name, floating[:, ::1] Y) except -1:
    _check_blas_size(name, Y.shape[0], Y.shape[1], Y.shape[1])
    return 0


cdef inline const char* _ptr(const floating[:, :] a) noexcept nogil:
    return <const char*>&a[0, 0]


# ---------------------------------------------------------------------------
# Linear (+ fused bias, ReLU, SGD)
# ---------------------------------------------------------------------------

ctypedef struct Epilogue:
    bint is_double
    char* Y            # (B, O) row-major, ld O
    const char* S      # first summand: Y itself, or T (O, B) when transposed
    bint transposed
    const char* P      # parts - 1 more summands shaped like S, contiguous, or NULL
    int n_partial
    const char* b      # bias (O,) with element stride b_stride, or NULL
    Py_ssize_t b_stride
    int act             # FM_ACT_ code
    Py_ssize_t B, O
    int chunks


cdef void _epilogue_rows(Epilogue* e, floating* Y, const floating* S, const floating* P, const floating* b,
                         Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """Y[r0:r1] <- act(S + P_1 + ... + b), S read as (B, O) or, transposed, as (O, B).

    The terms are added in a fixed order, whatever the thread count; each row
    stays in L1 while the (vectorised) runs go over it.
    """
    cdef Py_ssize_t i, j, p, B = e.B, O = e.O, plane = e.B * e.O
    cdef floating* y
    cdef bint unit_bias = b != NULL and e.b_stride == 1
    for i in range(r0, r1):
        y = Y + i * O
        if e.transposed:
            for j in range(O):
                y[j] = S[j * B + i]
            for p in range(e.n_partial):
                for j in range(O):
                    y[j] = y[j] + P[p * plane + j * B + i]
        else:
            if S != Y:
                for j in range(O):
                    y[j] = S[i * O + j]
            for p in range(e.n_partial):
                _add_run(y, P + p * plane + i * O, O)
        if b != NULL and not unit_bias:
            for j in range(O):
                y[j] = y[j] + b[j * e.b_stride]
        _bias_act_run(y, b if unit_bias else NULL, e.act, O)


cdef void _epilogue_chunk(void* ctx, int chunk) noexcept nogil:
    cdef Epilogue* e = <Epilogue*>ctx
    cdef Py_ssize_t r0 = e.B * chunk // e.chunks, r1 = e.B * (chunk + 1) // e.chunks
    if e.is_double:
        _epilogue_rows(e, <double*>e.Y, <const double*>e.S, <const double*>e.P, <const double*>e.b, r0, r1)
    else:
        _epilogue_rows(e, <float*>e.Y, <const float*>e.S, <const float*>e.P, <const float*>e.b, r0, r1)


cdef void _run_epilogue(Epilogue* e, int threads) noexcept nogil:
    e.chunks = threads if e.B * e.O * (1 + e.n_partial) >= PARALLEL_MIN_ELEMENTS else 1
    if e.chunks > e.B:
        e.chunks = <int>e.B
    fm_parallel_for(e.chunks, threads, _epilogue_chunk, e)


# Below this batch size OpenBLAS computes X W^T faster as W X^T (the small
# dimension on the N side); the result is transposed back during the bias pass.
cdef enum:
    SMALL_BATCH_ROWS = 32
SMALL_BATCH = SMALL_BATCH_ROWS


cdef inline bint _transposed_forward(Py_ssize_t B, Py_ssize_t O) noexcept nogil:
    return 1 < B <= SMALL_BATCH_ROWS and O > 1


ctypedef struct ImagesGemm:
    Convert* c          # the batch: src, index, offset, scale; c.out is X (B, I), or NULL when not kept
    const float* W      # (O, I), rows ldw apart
    Py_ssize_t ldw, O
    float* Y            # (B, O) row-major
    float* partial      # SPLIT_K: the second half's (B, O) sums
    Split split
    int parts


# Whether linear_forward_images uses the hand-written GEMM of _images_gemm.h
# (float32 only): this CPU runs AVX-512, and images_gemm() can switch it off.
cdef bint _images_gemm_on = fm_images_gemm_available()


def images_gemm(enabled=None):
    """Whether float32 :func:`linear_forward_images` runs fastmlp's own AVX-512 GEMM (True) or OpenBLAS.

    With ``enabled`` given, switch it (it can only be on where the CPU runs
    AVX-512) and return the previous setting. For tests and benchmarks.
    """
    global _images_gemm_on
    previous = _images_gemm_on
    if enabled is not None:
        _images_gemm_on = bool(enabled) and fm_images_gemm_available()
    return previous


cdef inline bint _images_gemm_fits(Py_ssize_t B, bint tw) noexcept nogil:
    """The hand-written images GEMM takes batches above SMALL_BATCH rows and W (O, I) with unit stride along I."""
    return _images_gemm_on and B > SMALL_BATCH_ROWS and not tw


def forward_images_needs_x(Py_ssize_t B, dtype):
    """Whether :func:`linear_forward_images` of B rows in ``dtype`` multiplies a converted X (OpenBLAS's path).

    When False (float32, the images GEMM on, W with unit stride along I), X=None
    costs nothing; when True, X=None makes it convert into a temporary array.
    """
    return not (np.dtype(dtype) == np.float32 and _images_gemm_fits(B, False))


cdef void _images_gemm_chunk(void* ctx, int chunk) noexcept nogil:
    """Pool task: a row range (SPLIT_M) or one inner half (SPLIT_K, into ``partial`` for the second) of Y."""
    cdef ImagesGemm* g = <ImagesGemm*>ctx
    cdef Convert* c = g.c
    cdef Py_ssize_t r0 = 0, r1 = c.n, k0 = 0, k1 = c.D
    cdef float* Y = g.Y
    if g.split == SPLIT_M:
        r0, r1 = _span(c.n, chunk, g.parts), _span(c.n, chunk + 1, g.parts)
    elif g.split == SPLIT_K:
        k0, k1 = _span(c.D, chunk, g.parts), _span(c.D, chunk + 1, g.parts)
        if chunk > 0:
            Y = g.partial + (chunk - 1) * c.n * g.O
    if r0 < r1:
        fm_images_gemm_f32(Y, g.O, <float*>c.out, c.D, c.src, c.src_stride, c.index, <const float*>c.offset,
                           <const float*>c.scale, g.W, g.ldw, g.O, r0, r1, k0, k1)


cdef void _run_images_gemm(ImagesGemm* ig, Gemm* g, Convert* c, int threads) noexcept nogil:
    """Y = convert(images) W^T on the pool, cut as ``g`` planned it (an N-cut becomes a row cut)."""
    ig.c, ig.W, ig.ldw, ig.O = c, <const float*>g.Bm, g.ldb, g.N
    ig.Y, ig.partial = <float*>g.Cm, <float*>g.partial
    ig.split = SPLIT_M if g.split == SPLIT_N else g.split
    ig.parts = K_PARTS if ig.split == SPLIT_K else (threads if ig.split == SPLIT_M else 1)
    fm_parallel_for(ig.parts, threads, _images_gemm_chunk, ig)


cdef Py_ssize_t _forward_work(Py_ssize_t B, Py_ssize_t I, Py_ssize_t O, bint t) noexcept nogil:
    """Scratch elements of a forward pass: T (O, B) when transposed, plus the partial sums of a K-split."""
    cdef Split split = _plan(O, B, I, True) if t else _plan(B, O, I, True)
    return ((1 if t else 0) + (K_PARTS - 1 if split == SPLIT_K else 0)) * B * O


def forward_scratch_size(Py_ssize_t B, Py_ssize_t I, Py_ssize_t O):
    """Elements of ``scratch`` that ``linear_forward`` needs for X (B, I) and W (O, I); 0 when none."""
    return _forward_work(B, I, O, _transposed_forward(B, O))


def linear_forward(floating[:, ::1] Y, const floating[:, :] X, const floating[:, :] W, const floating[:] b=None,
                   int act=0, floating[:, ::1] scratch=None):
    """Y (B, O) = act(X (B, I) @ W (O, I)^T + b (O,)), ``act`` a code of :data:`ACTIVATIONS`.

    ``act`` 0 is the identity and 1 the ReLU, so a bool works as "ReLU or not".

    ``Y`` is overwritten. One GEMM (in parallel chunks), then one fused
    bias(+ReLU) pass over Y that also adds the partial sums of a K-split.
    ``scratch`` (C-contiguous, at least :func:`forward_scratch_size` elements,
    contents clobbered) lets batches of 2 to SMALL_BATCH rows use the faster
    transposed GEMM (W X^T) and holds partial sums; without it a K-split
    allocates its buffer and small batches take the plain GEMM.
    """
    _linear_forward(Y, X, W, b, act, scratch, NULL)


cdef int _linear_forward(floating[:, ::1] Y, const floating[:, :] X, const floating[:, :] W, const floating[:] b,
                         int act, floating[:, ::1] scratch, Convert* pre) except -1:
    """:func:`linear_forward`; with ``pre``, X is first filled by that conversion (X being its ``out``).

    The conversion runs inside the GEMM's chunks when their cut allows it (each
    chunk converts the rows or columns of X it multiplies, on the same core, just
    before), else as a parallel pass of its own before the GEMM. When
    :func:`_images_gemm_fits`, the hand-written images GEMM does both instead. X
    may be None with ``pre`` (its ``out`` NULL: the converted rows are not kept);
    OpenBLAS's path then converts into a temporary array.
    """
    cdef Py_ssize_t B = X.shape[0] if X is not None else Y.shape[0]
    cdef Py_ssize_t I = X.shape[1] if X is not None else W.shape[1], O = W.shape[0]
    cdef bint tx = False, tw, t, hand, fuse
    cdef Py_ssize_t ldx = 0, ldw, need
    cdef Gemm g
    cdef ImagesGemm ig
    cdef Epilogue e
    cdef int threads
    cdef floating[::1] work = None
    cdef floating[:, ::1] temporary
    _check2("W", W.shape[0], W.shape[1], O, I)
    _check2("Y", Y.shape[0], Y.shape[1], B, O)
    _check_output("Y", Y)
    _check_act("act", act)
    if b is not None:
        _check1("b", b.shape[0], O)
    if X is not None:
        X = _operand("X", X, &tx, &ldx)
    W = _operand("W", W, &tw, &ldw)
    hand = floating is float and pre != NULL and _images_gemm_fits(B, tw)
    if X is None and not hand:  # OpenBLAS multiplies floats: convert into a temporary
        temporary = np.empty((B, I), dtype=np.asarray(Y).dtype)
        pre.out = <char*>&temporary[0, 0]
        X, ldx = temporary, I  # C-ordered: tx stays False
    if scratch is not None:
        need = forward_scratch_size(B, I, O)
        if scratch.shape[0] * scratch.shape[1] < need:
            raise ValueError(f"scratch: expected at least {need} elements, got {scratch.shape[0] * scratch.shape[1]}")
    t = _transposed_forward(B, O) and scratch is not None
    need = _forward_work(B, I, O, t)
    if need > 0:
        work = np.asarray(scratch).reshape(-1) if scratch is not None else np.empty(need, np.asarray(Y).dtype)
    e.b = <const char*>&b[0] if b is not None else NULL
    e.b_stride = b.strides[0] // sizeof(floating) if b is not None else 0
    with nogil:
        threads = _begin_threads()
        if t:  # T (O, B) = W X^T
            _gemm_init(&g, floating is double, tw, not tx, O, B, I, 1.0, _ptr(W), ldw, _ptr(X), ldx, 0.0,
                       &work[0], B)
            g.split = _plan(O, B, I, True)
        else:  # Y (B, O) = X W^T: flip W's own flag
            _gemm_init(&g, floating is double, tx, not tw, B, O, I, 1.0, _ptr(X) if X is not None else NULL, ldx,
                       _ptr(W), ldw, 0.0, &Y[0, 0], O)
            g.split = _plan(B, O, I, True)
        if g.split == SPLIT_K:
            g.partial = <char*>&work[B * O] if t else <char*>&work[0]
        # fastmlp's own GEMM adds the bias and applies the ReLU as it stores Y: no pass of their own
        fuse = (g.own and not t and not hand and g.split != SPLIT_K and (e.b == NULL or e.b_stride == 1)
                and (act == FM_ACT_IDENTITY or act == FM_ACT_RELU))
        if fuse:
            g.bias, g.relu = e.b, act == FM_ACT_RELU
        if hand:
            _run_images_gemm(&ig, &g, pre, threads)
        else:
            if pre != NULL:
                if t or g.split == SPLIT_N:  # every chunk reads all of X: convert it first
                    _run_convert(pre, threads)
                else:
                    g.pre = pre
            _run_gemm(&g, threads)
        e.is_double, e.Y, e.transposed, e.act, e.B, e.O = floating is double, <char*>&Y[0, 0], t, act, B, O
        e.S = <const char*>&work[0] if t else <const char*>&Y[0, 0]
        e.n_partial = K_PARTS - 1 if g.split == SPLIT_K else 0
        e.P = g.partial
        if not fuse and (t or e.n_partial or e.b != NULL or act != FM_ACT_IDENTITY):
            _run_epilogue(&e, threads)
        _end_threads()
    return 0


cdef void _colsum_axpy(floating[:] db, const floating[:, :] dY, floating alpha, floating beta) noexcept nogil:
    """db (O,) <- beta db + alpha * sum_b dY[b, :]."""
    cdef Py_ssize_t i, j, B = dY.shape[0], O = dY.shape[1]
    cdef floating acc
    # beta == 0 assigns rather than scales: db may hold NaN from an earlier batch.
    if dY.strides[1] == sizeof(floating):
        # Row-wise accumulation walks dY in memory order.
        for j in range(O):
            db[j] = beta * db[j] if beta != 0 else 0
        if alpha == 1 and db.strides[0] == sizeof(floating):  # a gradient: the vectorised add, same sums
            for i in range(B):
                _add_run(&db[0], &dY[i, 0], O)
            return
        for i in range(B):
            for j in range(O):
                db[j] = db[j] + alpha * dY[i, j]
    else:
        for j in range(O):
            acc = 0
            for i in range(B):
                acc = acc + dY[i, j]
            db[j] = (beta * db[j] if beta != 0 else 0) + alpha * acc


cdef inline void _dx_gemm(Gemm* g, bint is_double, Py_ssize_t B, Py_ssize_t I, Py_ssize_t O, bint tdy,
                          const char* dY, Py_ssize_t lddy, bint tw, const char* W, Py_ssize_t ldw, char* dX,
                          int act_input, bint tx, const char* X, Py_ssize_t ldx) noexcept nogil:
    """Plan dX (B, I) = dY (B, O) @ W (O, I), times act'(.) through X when X is ``act_input``'s output."""
    _gemm_init(g, is_double, tdy, tw, B, I, O, 1.0, dY, lddy, W, ldw, 0.0, dX, I)
    g.split = _plan(B, I, O, False)
    if act_input != FM_ACT_IDENTITY:
        g.mask, g.act = X, act_input
        g.ms0 = 1 if tx else ldx
        g.ms1 = ldx if tx else 1


def linear_backward(floating[:, ::1] dW, floating[:] db, floating[:, ::1] dX,
                    const floating[:, :] dY, const floating[:, :] X, const floating[:, :] W, int act_input=0):
    """dW = dY^T @ X; db = sum_b dY; dX = dY @ W.

    dW (O, I), db (O,), dX (B, I) are overwritten; db and dX may be None to
    skip them (the first layer needs no dX). With ``act_input`` (a code of
    :data:`ACTIVATIONS`; True is the ReLU) the input X is that activation's
    output and dX is multiplied by its derivative, read through X, in the same
    call (the ReLU's mask X > 0, tanh's 1 - X^2, the logistic's X (1 - X)): dX
    becomes the gradient with respect to the activation's input.
    """
    cdef Py_ssize_t B = dY.shape[0], O = dY.shape[1], I = X.shape[1]
    cdef bint tdy, tx, tw
    cdef Py_ssize_t lddy, ldx, ldw
    cdef Gemm g
    cdef int threads
    _check2("X", X.shape[0], X.shape[1], B, I)
    _check2("W", W.shape[0], W.shape[1], O, I)
    _check_act("act_input", act_input)
    if dX is not None:
        _check2("dX", dX.shape[0], dX.shape[1], B, I)
        _check_output("dX", dX)
    _check2("dW", dW.shape[0], dW.shape[1], O, I)
    _check_output("dW", dW)
    if db is not None:
        _check1("db", db.shape[0], O)
    dY = _operand("dY", dY, &tdy, &lddy)
    X = _operand("X", X, &tx, &ldx)
    W = _operand("W", W, &tw, &ldw)
    with nogil:
        threads = _begin_threads()
        if dX is not None:
            _dx_gemm(&g, floating is double, B, I, O, tdy, _ptr(dY), lddy, tw, _ptr(W), ldw, <char*>&dX[0, 0],
                     act_input, tx, _ptr(X), ldx)
            _run_gemm(&g, threads)
        _gemm_init(&g, floating is double, not tdy, tx, O, I, B, 1.0, _ptr(dY), lddy, _ptr(X), ldx, 0.0,
                   &dW[0, 0], I)
        g.split = _plan(O, I, B, False)
        _run_gemm(&g, threads)
        _end_threads()
        if db is not None:
            _colsum_axpy(db, dY, <floating>1, <floating>0)


def linear_backward_sgd(floating[:, ::1] W, floating[:] b, floating[:, ::1] dX,
                        const floating[:, :] dY, const floating[:, :] X, double lr, double weight_decay=0.0,
                        int act_input=0):
    """dX = dY @ W (old W); then W <- (1 - lr wd) W - lr dY^T X; b <- b - lr sum_b dY.

    Plain SGD folded into the weight-gradient GEMM (beta = 1 - lr wd), so no
    dW buffer is written or read. ``W`` (O, I) and ``b`` (O,) are updated in
    place; dX (B, I) is overwritten (None to skip); ``act_input`` as in
    :func:`linear_backward`. Weight decay applies to W, not to b.
    """
    cdef Py_ssize_t B = dY.shape[0], O = dY.shape[1], I = X.shape[1]
    cdef bint tdy, tx
    cdef Py_ssize_t lddy, ldx
    cdef Gemm g
    cdef int threads
    _check2("X", X.shape[0], X.shape[1], B, I)
    _check2("W", W.shape[0], W.shape[1], O, I)
    _check_output("W", W)
    _check_act("act_input", act_input)
    _check1("b", b.shape[0], O)
    if dX is not None:
        _check2("dX", dX.shape[0], dX.shape[1], B, I)
        _check_output("dX", dX)
    dY = _operand("dY", dY, &tdy, &lddy)
    X = _operand("X", X, &tx, &ldx)
    cdef floating alpha = <floating>(-lr)
    cdef floating beta = <floating>(1.0 - lr * weight_decay)
    with nogil:
        threads = _begin_threads()
        if dX is not None:  # must read W before the update below
            _dx_gemm(&g, floating is double, B, I, O, tdy, _ptr(dY), lddy, False, <const char*>&W[0, 0], I,
                     <char*>&dX[0, 0], act_input, tx, _ptr(X), ldx)
            _run_gemm(&g, threads)
        _gemm_init(&g, floating is double, not tdy, tx, O, I, B, alpha, _ptr(dY), lddy, _ptr(X), ldx, beta,
                   &W[0, 0], I)
        g.split = _plan(O, I, B, False)
        _run_gemm(&g, threads)
        _end_threads()
        _colsum_axpy(b, dY, alpha, <floating>1)


# ---------------------------------------------------------------------------
# images: stored uint8 pixels -> model inputs
# ---------------------------------------------------------------------------

cdef tuple _convert_setup(Convert* c, floating[:, ::1] out, Py_ssize_t n, Py_ssize_t D, const cnp.uint8_t[:, :] src,
                          const cnp.int64_t[:] index, const floating[::1] offset, const floating[::1] scale,
                          str rows_name):
    """Check the arguments of a conversion of n rows of D values into ``out`` and describe it in ``c``.

    ``out`` is (n, D), or None for a conversion that only feeds the images GEMMs'
    panels; ``rows_name`` names the argument that gives n. Returns the (src,
    index) the description points into (contiguous copies when needed): the
    caller keeps them alive while ``c`` is used.
    """
    cdef Py_ssize_t i, bad = -1
    _check1("offset", offset.shape[0], D)
    if scale is not None:
        _check1("scale", scale.shape[0], D)
    if src.shape[1] != D:
        raise ValueError(f"src: expected shape (N, {D}), got ({src.shape[0]}, {src.shape[1]})")
    if D > 1 and src.strides[1] != 1:
        src = np.ascontiguousarray(src)
    if index is None:
        if n > src.shape[0]:
            raise ValueError(f"{rows_name}: expected at most {src.shape[0]} rows (src has that many), got {n}")
    else:
        _check1("index", index.shape[0], n)
        for i in range(n):
            if index[i] < 0 or index[i] >= src.shape[0]:
                bad = i
                break
        if bad >= 0:
            raise ValueError(f"index: expected row numbers in [0, {src.shape[0]}), got {index[bad]} at position {bad}")
        if n and index.strides[0] != sizeof(cnp.int64_t):
            index = np.ascontiguousarray(index)
    c.n, c.D, c.is_double, c.chunks = n, D, floating is double, 1
    if n and D:
        c.out = <char*>&out[0, 0] if out is not None else NULL
        c.src, c.src_stride = &src[0, 0], src.strides[0]
        c.index = &index[0] if index is not None else NULL
        c.offset = <const char*>&offset[0]
        c.scale = <const char*>&scale[0] if scale is not None else NULL
    return src, index


def convert_images(floating[:, ::1] out, const cnp.uint8_t[:, :] src, const cnp.int64_t[:] index,
                   const floating[::1] offset, const floating[::1] scale=None):
    """out (n, D) = (src[index] - offset) / scale, row by row: gather, cast and centre in one pass.

    src (N, D) uint8 pixels (rows with unit stride along D); index (n,) int64 row
    numbers in [0, N), or None for rows 0..n-1 (then n <= N); offset (D,) and
    scale (D,) of out's dtype, scale None for no division. The arithmetic is
    float(pixel) - offset, then / scale, in out's dtype: exactly what NumPy's
    ``np.subtract(src, offset, dtype=...)`` then ``/= scale`` computes.
    """
    cdef Convert c
    cdef int threads
    keep = _convert_setup(&c, out, out.shape[0], out.shape[1], src, index, offset, scale, "out")
    if c.n == 0 or c.D == 0:
        return
    with nogil:
        threads = _begin_threads()
        _run_convert(&c, threads)
        _end_threads()


cdef void _pixel_sums_chunk(void* ctx, int chunk) noexcept nogil:
    """Columns [c0, c1) of the totals: every row added into 32-bit counts, moved to the totals every SUM_ROWS rows."""
    cdef PixelSums* s = <PixelSums*>ctx
    cdef Py_ssize_t c0 = _span(s.D, chunk, s.chunks), c1 = _span(s.D, chunk + 1, s.chunks)
    cdef Py_ssize_t i, j, r0 = 0
    for j in range(c0, c1):
        s.out[j] = 0
    while r0 < s.n:
        for j in range(c0, c1):
            s.acc[j] = 0
        for i in range(r0, min(s.n, r0 + SUM_ROWS)):
            fm_add_u8_u32(s.acc + c0, s.src + i * s.src_stride + c0, c1 - c0)
        for j in range(c0, c1):
            s.out[j] += s.acc[j]
        r0 += SUM_ROWS


def pixel_sums(cnp.uint64_t[::1] out, const cnp.uint8_t[:, :] src):
    """out (D,) = src (n, D).sum(axis=0): exact column sums of uint8 pixels (a mean image's numerator).

    One pass over the bytes, the columns cut across the threads; ``out`` is overwritten.
    """
    cdef PixelSums s
    cdef int threads
    if src.shape[1] != out.shape[0]:
        raise ValueError(f"src: expected shape (n, {out.shape[0]}) to match out, got ({src.shape[0]}, {src.shape[1]})")
    if src.shape[1] > 1 and src.strides[1] != 1:
        src = np.ascontiguousarray(src)
    acc = np.empty(out.shape[0], dtype=np.uint32)
    cdef cnp.uint32_t[::1] acc_view = acc
    if out.shape[0] == 0:
        return
    if src.shape[0] == 0:
        out[:] = 0
        return
    s.out, s.acc, s.src, s.src_stride = &out[0], &acc_view[0], &src[0, 0], src.strides[0]
    s.n, s.D = src.shape[0], src.shape[1]
    with nogil:
        threads = _begin_threads()
        s.chunks = threads if s.n * s.D >= PARALLEL_MIN_ELEMENTS and s.D >= threads * TILE else 1
        fm_parallel_for(s.chunks, threads, _pixel_sums_chunk, &s)
        _end_threads()


def linear_forward_images(floating[:, ::1] Y, floating[:, ::1] X, const cnp.uint8_t[:, :] src,
                          const cnp.int64_t[:] index, const floating[::1] offset, const floating[::1] scale,
                          const floating[:, :] W, const floating[:] b=None, int act=0,
                          floating[:, ::1] scratch=None):
    """X (B, D) = (src[index] - offset) / scale;  Y (B, O) = act(X @ W (O, D)^T + b): a first layer fed uint8 images.

    The same X as :func:`convert_images` (arguments as there; scale may be None)
    and the Y of :func:`linear_forward` on it, in one call. X is overwritten and
    keeps the converted batch (a backward pass needs it); None to not keep it
    (an evaluation). Y as in :func:`linear_forward`.

    How: in float32, for batches above SMALL_BATCH rows, on a CPU with AVX-512
    (see :func:`images_gemm`), fastmlp's own GEMM (``_images_gemm.h``) converts
    the pixels straight into its packed panels (Y then differs from OpenBLAS's
    in the last bits, as another BLAS would); otherwise each OpenBLAS GEMM chunk
    converts the part of X it multiplies just before, on the same core (the
    very numbers of convert_images followed by linear_forward).
    """
    cdef Convert c
    cdef Py_ssize_t B = X.shape[0] if X is not None else Y.shape[0]
    cdef Py_ssize_t D = X.shape[1] if X is not None else W.shape[1]
    cdef str name = "X" if X is not None else "Y"
    cdef const floating[:, :] X_in
    keep = _convert_setup(&c, X, B, D, src, index, offset, scale, name)
    if c.n == 0 or c.D == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D array, got shape ({B}, {D})")
    X_in = X
    _linear_forward(Y, X_in, W, b, act, scratch, &c)


ctypedef struct ImagesWgrad:
    Convert* c          # the batch (B = c.n rows of I = c.D values); c.out unused
    float* W            # (O, I), rows ldw apart, updated in place
    Py_ssize_t ldw, O
    const float* dY     # (B, O), rows lddy apart
    Py_ssize_t lddy
    float alpha, beta
    int parts


cdef void _images_wgrad_chunk(void* ctx, int chunk) noexcept nogil:
    """Pool task: the columns [i0, i1) of W that chunk ``chunk`` of ``parts`` owns."""
    cdef ImagesWgrad* u = <ImagesWgrad*>ctx
    cdef Convert* c = u.c
    cdef Py_ssize_t i0 = _span(c.D, chunk, u.parts), i1 = _span(c.D, chunk + 1, u.parts)
    if i0 < i1:
        fm_images_wgrad_f32(u.W, u.ldw, u.O, u.beta, u.alpha, u.dY, u.lddy, c.n, c.src, c.src_stride, c.index,
                            <const float*>c.offset, <const float*>c.scale, i0, i1)


def linear_backward_sgd_images(floating[:, ::1] W, floating[:] b, const floating[:, :] dY,
                               const cnp.uint8_t[:, :] src, const cnp.int64_t[:] index,
                               const floating[::1] offset, const floating[::1] scale, double lr,
                               double weight_decay=0.0):
    """W <- (1 - lr wd) W - lr dY^T x;  b <- b - lr sum_b dY, for x = (src[index] - offset) / scale.

    :func:`linear_backward_sgd` of a first layer fed uint8 images (no dX), without
    its converted input: W (O, D), b (O,) updated in place; dY (B, O); the
    images as in :func:`linear_forward_images`. Where that call runs fastmlp's
    own GEMM (:func:`forward_images_needs_x` False) this one does too,
    converting the pixels straight into its panels; elsewhere it converts the
    batch into a temporary array and calls linear_backward_sgd.
    """
    cdef Py_ssize_t B = dY.shape[0], O = dY.shape[1], D = src.shape[1]
    cdef Convert c
    cdef ImagesWgrad u
    cdef bint tdy
    cdef Py_ssize_t lddy
    cdef int threads
    cdef floating[:, ::1] no_rows = None  # the converted batch is not kept
    cdef floating[:, ::1] X
    _check2("W", W.shape[0], W.shape[1], O, D)
    _check_output("W", W)
    _check1("b", b.shape[0], O)
    keep = _convert_setup(&c, no_rows, B, D, src, index, offset, scale, "dY")
    if B == 0 or D == 0:
        raise ValueError(f"dY, W: expected a non-empty batch and input width, got {B} rows of {D} values")
    dY = _operand("dY", dY, &tdy, &lddy)
    if floating is float:
        if _images_gemm_fits(B, False) and not tdy:
            u.c, u.W, u.ldw, u.O = &c, &W[0, 0], W.shape[1], O
            u.dY, u.lddy = &dY[0, 0], lddy
            u.alpha, u.beta = <float>(-lr), <float>(1.0 - lr * weight_decay)
            with nogil:
                threads = _begin_threads()
                u.parts = threads if B * O * D >= PARALLEL_MIN_MACS and D >= threads * TILE else 1
                fm_parallel_for(u.parts, threads, _images_wgrad_chunk, &u)
                _end_threads()
                _colsum_axpy(b, dY, <floating>(-lr), <floating>1)
            return
    X = np.empty((B, D), dtype=np.asarray(W).dtype)  # OpenBLAS multiplies floats: convert into a temporary
    c.out = <char*>&X[0, 0]
    with nogil:
        threads = _begin_threads()
        _run_convert(&c, threads)
        _end_threads()
    linear_backward_sgd(W, b, None, dY, X, lr, weight_decay)


# ---------------------------------------------------------------------------
# activations: ReLU, tanh, logistic, identity (forward/backward pairs)
# ---------------------------------------------------------------------------

ctypedef struct Elementwise:
    bint is_double
    char* out           # (B, N) C-contiguous
    const char* a       # (B, N) rows with unit stride, ``lda`` elements apart: X (forward) or dY (backward)
    Py_ssize_t lda
    const char* y       # backward: the activation's output (B, N), rows ``ldy`` apart; NULL forward
    Py_ssize_t ldy
    Py_ssize_t B, N
    int act, chunks


cdef void _elementwise_rows(Elementwise* e, floating* out, const floating* a, const floating* y,
                            Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """out[r0:r1] = act(a) (forward) or a * act'(.) through y (backward), row by row, out possibly a."""
    cdef Py_ssize_t i, j
    cdef floating* o
    cdef const floating* src
    for i in range(r0, r1):
        o, src = out + i * e.N, a + i * e.lda
        if o != src:
            for j in range(e.N):
                o[j] = src[j]
        if y == NULL:
            _bias_act_run(o, <const floating*>NULL, e.act, e.N)
        else:
            _act_grad_run(o, y + i * e.ldy, e.act, e.N)


cdef void _elementwise_chunk(void* ctx, int chunk) noexcept nogil:
    cdef Elementwise* e = <Elementwise*>ctx
    cdef Py_ssize_t r0 = e.B * chunk // e.chunks, r1 = e.B * (chunk + 1) // e.chunks
    if e.is_double:
        _elementwise_rows(e, <double*>e.out, <const double*>e.a, <const double*>e.y, r0, r1)
    else:
        _elementwise_rows(e, <float*>e.out, <const float*>e.a, <const float*>e.y, r0, r1)


cdef const floating[:, :] _rows_unit(const floating[:, :] a):
    """``a`` itself when its rows have unit stride and do not overlap, else a C-ordered copy."""
    if a.shape[1] > 1 and a.strides[1] != sizeof(floating) or a.shape[0] > 1 and a.strides[0] < a.shape[1] * sizeof(floating):
        return np.ascontiguousarray(a)
    return a


cdef int _activation(floating[:, ::1] out, const floating[:, :] a, const floating[:, :] y, int act) except -1:
    """out = act(a) when y is None, else out = a * act'(.) through y; parallel row chunks (checked shapes)."""
    cdef Elementwise e
    cdef int threads
    cdef Py_ssize_t item = sizeof(floating)
    if out.shape[0] == 0 or out.shape[1] == 0:
        return 0
    a = _rows_unit(a)
    e.is_double, e.act, e.B, e.N = floating is double, act, out.shape[0], out.shape[1]
    e.out, e.a, e.lda = <char*>&out[0, 0], _ptr(a), a.strides[0] // item
    e.y, e.ldy = NULL, 0
    if y is not None:
        y = _rows_unit(y)
        e.y, e.ldy = _ptr(y), y.strides[0] // item
    with nogil:
        threads = _begin_threads()
        e.chunks = threads if e.B * e.N >= PARALLEL_MIN_ELEMENTS else 1
        if e.chunks > e.B:
            e.chunks = <int>e.B
        fm_parallel_for(e.chunks, threads, _elementwise_chunk, &e)
        _end_threads()
    return 0


cdef int _activation_forward(floating[:, ::1] Y, const floating[:, :] X, int act) except -1:
    cdef const floating[:, :] forward = None  # no output to read a derivative through
    _check2("Y", Y.shape[0], Y.shape[1], X.shape[0], X.shape[1])
    _activation(Y, X, forward, act)
    return 0


cdef int _activation_backward(floating[:, ::1] dX, const floating[:, :] dY, const floating[:, :] Y,
                              int act) except -1:
    _check2("dY", dY.shape[0], dY.shape[1], Y.shape[0], Y.shape[1])
    _check2("dX", dX.shape[0], dX.shape[1], Y.shape[0], Y.shape[1])
    _activation(dX, dY, Y, act)
    return 0


def activation_forward(floating[:, ::1] Y, const floating[:, :] X, int act):
    """Y (B, O) = act(X), ``act`` a code of :data:`ACTIVATIONS`; Y may be X (in place). NaN propagates."""
    _check_act("act", act)
    _activation_forward(Y, X, act)


def activation_backward(floating[:, ::1] dX, const floating[:, :] dY, const floating[:, :] Y, int act):
    """dX (B, O) = dY * act'(.), read through Y = act(X) the forward's output; dX may be dY (in place)."""
    _check_act("act", act)
    _activation_backward(dX, dY, Y, act)


def relu_forward(floating[:, ::1] Y, const floating[:, :] X):
    """Y (B, O) = max(X, 0); Y may be X (in place). NaN propagates."""
    _activation_forward(Y, X, FM_ACT_RELU)


def relu_backward(floating[:, ::1] dX, const floating[:, :] dY, const floating[:, :] Y):
    """dX (B, O) = dY * (Y > 0), Y the ReLU's output; dX may be dY (in place)."""
    _activation_backward(dX, dY, Y, FM_ACT_RELU)


def tanh_forward(floating[:, ::1] Y, const floating[:, :] X):
    """Y (B, O) = tanh(X); Y may be X (in place). NaN propagates."""
    _activation_forward(Y, X, FM_ACT_TANH)


def tanh_backward(floating[:, ::1] dX, const floating[:, :] dY, const floating[:, :] Y):
    """dX (B, O) = dY * (1 - Y^2), Y = tanh(X) the forward's output; dX may be dY (in place)."""
    _activation_backward(dX, dY, Y, FM_ACT_TANH)


def logistic_forward(floating[:, ::1] Y, const floating[:, :] X):
    """Y (B, O) = 1 / (1 + exp(-X)), from exp(-|X|) (no overflow); Y may be X (in place). NaN propagates."""
    _activation_forward(Y, X, FM_ACT_LOGISTIC)


def logistic_backward(floating[:, ::1] dX, const floating[:, :] dY, const floating[:, :] Y):
    """dX (B, O) = dY * Y (1 - Y), Y the logistic's output; dX may be dY (in place)."""
    _activation_backward(dX, dY, Y, FM_ACT_LOGISTIC)


def identity_forward(floating[:, ::1] Y, const floating[:, :] X):
    """Y (B, O) = X (a copy; nothing when Y is X)."""
    _activation_forward(Y, X, FM_ACT_IDENTITY)


def identity_backward(floating[:, ::1] dX, const floating[:, :] dY, const floating[:, :] Y):
    """dX (B, O) = dY (a copy; Y, the forward's output, only fixes the shape); dX may be dY."""
    _activation_backward(dX, dY, Y, FM_ACT_IDENTITY)


# ---------------------------------------------------------------------------
# softmax, cross-entropy, and the fused pair
# ---------------------------------------------------------------------------

def exp_into(floating[::1] out, const floating[::1] x):
    """out (n,) = exp(x (n,)) by the heads' vectorised exp (within 1 ulp; NaN, +-inf, overflow and underflow
    as libm's); out may be x. The kernels' own entry, for tests."""
    _check1("out", out.shape[0], x.shape[0])
    if x.shape[0] > 0:
        with nogil:
            _exp_run(&out[0], &x[0], x.shape[0])


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
            for j in range(C):
                P[i, j] = Z[i, j] - m
        _exp_run(&P[0, 0], &P[0, 0], B * C)  # P is C-contiguous: one vector pass over all rows
        for i in range(B):
            s = 0
            for j in range(C):
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


cdef double _weight_sum(const floating[:] weights, Py_ssize_t B) except? -1.0:
    """The sum of per-row weights (B,), checked (finite, >= 0, a positive sum); B when weights is None."""
    cdef Py_ssize_t i
    cdef double total = 0
    if weights is None:
        return B
    _check1("weights", weights.shape[0], B)
    for i in range(B):
        if not (weights[i] >= 0 and weights[i] < INFINITY):
            raise ValueError(f"weights: expected finite values >= 0, got {weights[i]} at position {i}")
        total += weights[i]
    if not total > 0:
        raise ValueError("weights: expected a positive sum, got all zeros")
    return total


cdef inline Py_ssize_t _block_rows(Py_ssize_t C) noexcept nogil:
    """Rows of C values per block of a head's vector exp (at least 1, at most HEAD_BLOCK_ROWS)."""
    cdef Py_ssize_t rows = HEAD_BLOCK_VALUES // C
    return 1 if rows < 1 else (HEAD_BLOCK_ROWS if rows > HEAD_BLOCK_ROWS else rows)


cdef floating[::1] _head_scratch(const floating[:, :] Z):
    """Scratch (_block_rows(C) * C,) of Z's dtype, for a head hook whose exps cannot go to its dZ."""
    return np.empty(_block_rows(Z.shape[1]) * Z.shape[1], dtype=np.float32 if floating is float else np.float64)


cdef inline floating _shift_row(floating* out, const floating* z, Py_ssize_t C, Py_ssize_t* arg) noexcept nogil:
    """out[j] = z[j] - max_j z[j] for j < C (out may be z); returns the max and sets arg to its first column.

    A row whose max is NaN or +inf gets zeros (the caller reports it without its exps).
    """
    cdef Py_ssize_t j, first = 0
    cdef floating m = z[0]
    for j in range(1, C):
        if z[j] > m:
            m = z[j]
            first = j
    arg[0] = first
    if m != m or m == INFINITY:
        memset(out, 0, C * sizeof(floating))
    else:
        for j in range(C):
            out[j] = z[j] - m
    return m


cdef Py_ssize_t _softmax_xent(floating[:, ::1] dZ, bint has_dz, const floating[:, :] Z,
                              const cnp.int64_t[:] labels, const floating* weights, floating scale,
                              floating* scratch, double* total, Py_ssize_t* correct) noexcept nogil:
    """Row loop shared by the two hooks below (Z's rows of unit stride: _rows_unit); returns the first bad label's row, or -1.

    Row b's loss counts ``weights[b]`` times into ``total`` and its gradient is
    scaled by ``scale * weights[b]`` (weights NULL: 1 each); a row of weight 0
    adds nothing and gets a zero gradient, whatever its logits. Rows go in
    blocks: each row's max, argmax and Z[b, y] first, its shifted logits written
    to dZ (or, without dZ, to ``scratch``, _block_rows(C) * C values), then one
    vector exp over the block, then each row's sum, loss and gradient in order.
    """
    cdef Py_ssize_t i, j, r0 = 0, r1, k, B = Z.shape[0], C = Z.shape[1], rows = _block_rows(C)
    cdef Py_ssize_t arg[HEAD_BLOCK_ROWS]
    cdef floating m[HEAD_BLOCK_ROWS]
    cdef floating zy[HEAD_BLOCK_ROWS]
    cdef floating s, inv, wi = 1
    cdef floating* work
    cdef floating* row
    cdef const floating* z = <const floating*>_ptr(Z)
    cdef Py_ssize_t ldz = Z.strides[0] // sizeof(floating)
    for i in range(B):  # all labels first: dZ may alias Z, which must survive an error
        if labels[i] < 0 or labels[i] >= C:
            return i
    while r0 < B:
        r1 = min(r0 + rows, B)
        work = &dZ[r0, 0] if has_dz else scratch
        for i in range(r0, r1):
            k = i - r0
            if weights != NULL and weights[i] == 0:
                memset(work + k * C, 0, C * sizeof(floating))
                continue
            zy[k] = z[i * ldz + labels[i]]  # read before dZ (which may alias Z) is written
            m[k] = _shift_row(work + k * C, z + i * ldz, C, &arg[k])
        _exp_run(work, work, (r1 - r0) * C)
        for i in range(r0, r1):
            k = i - r0
            row = work + k * C
            if weights != NULL:
                wi = weights[i]
                if wi == 0:
                    if has_dz:
                        memset(row, 0, C * sizeof(floating))
                    continue
            if m[k] != m[k] or m[k] == INFINITY:  # NaN or +inf logits: let the loss say so
                total[0] += m[k] if m[k] != m[k] else INFINITY
                if has_dz:
                    for j in range(C):
                        row[j] = m[k] - m[k]
                continue
            s = 0
            for j in range(C):
                s = s + row[j]
            total[0] += wi * <double>(_log(s) + m[k] - zy[k])
            correct[0] += (arg[k] == labels[i])
            if has_dz:
                inv = scale * wi / s
                for j in range(C):
                    row[j] = row[j] * inv
                row[labels[i]] = row[labels[i]] - scale * wi
        r0 = r1
    return -1


cdef int _bad_label(const cnp.int64_t[:] labels, Py_ssize_t row, Py_ssize_t C) except -1:
    raise ValueError(f"labels: expected class indices in [0, {C}), got {labels[row]} at position {row}")


cdef inline const floating* _weights_ptr(const floating[:] weights) noexcept nogil:
    if weights is None:
        return NULL
    return &weights[0]


def softmax_cross_entropy_forward_backward(floating[:, ::1] dZ, const floating[:, :] Z,
                                           const cnp.int64_t[:] labels, double grad_scale=-1.0,
                                           const floating[:] weights=None):
    """loss = sum_b w_b [logsumexp(Z_b) - Z_b,y_b] / sum_b w_b;  dZ_b = (softmax(Z_b) - onehot(y_b)) w_b * grad_scale.

    Z (B, C) logits, labels (B,) int64 in [0, C), weights (B,) per-row weights
    (finite, >= 0, positive sum; None: all 1), grad_scale defaulting to
    1/sum_b w_b (the weighted mean's gradient; 1/B without weights).
    dZ (B, C) is overwritten and may be Z itself (the logits are consumed in
    place). Log-sum-exp with the row max, so huge logits cannot overflow; the
    exps of a block of rows in one vector pass (within 1 ulp), each row's sum
    then taken in column order. Returns (loss, n_correct), n_correct counting rows whose
    argmax is the label (rows of weight 0 are skipped: no loss, zero gradient,
    not counted). Raises ValueError on a label outside [0, C) or bad weights.
    """
    cdef Py_ssize_t B = Z.shape[0], C = Z.shape[1], bad
    cdef double total = 0
    cdef Py_ssize_t correct = 0
    _check_nonempty("Z", B, C)
    _check1("labels", labels.shape[0], B)
    _check2("dZ", dZ.shape[0], dZ.shape[1], B, C)
    cdef double wsum = _weight_sum(weights, B)
    cdef floating scale = <floating>(1.0 / wsum if grad_scale < 0 else grad_scale)
    Z = _rows_unit(Z)  # Z itself when dZ may alias it (dZ is C-contiguous)
    with nogil:
        bad = _softmax_xent(dZ, True, Z, labels, _weights_ptr(weights), scale, NULL, &total, &correct)
    if bad >= 0:
        _bad_label(labels, bad, C)
    return total / wsum, correct


def softmax_cross_entropy_forward(const floating[:, :] Z, const cnp.int64_t[:] labels,
                                  const floating[:] weights=None):
    """(loss, n_correct) of :func:`softmax_cross_entropy_forward_backward`, without the gradient."""
    cdef Py_ssize_t B = Z.shape[0], C = Z.shape[1], bad
    cdef double total = 0
    cdef Py_ssize_t correct = 0
    cdef floating[:, ::1] no_dz = None
    cdef floating[::1] scratch
    _check_nonempty("Z", B, C)
    _check1("labels", labels.shape[0], B)
    cdef double wsum = _weight_sum(weights, B)
    scratch = _head_scratch(Z)
    Z = _rows_unit(Z)
    with nogil:
        bad = _softmax_xent(no_dz, False, Z, labels, _weights_ptr(weights), 0, &scratch[0], &total, &correct)
    if bad >= 0:
        _bad_label(labels, bad, C)
    return total / wsum, correct


# ---------------------------------------------------------------------------
# the other output heads: logistic + binary cross-entropy, identity + squared error
# ---------------------------------------------------------------------------

cdef enum Head:
    HEAD_LOGISTIC = 0
    HEAD_SQUARED = 1


cdef void _head_rows(Head head, floating[:, ::1] dZ, bint has_dz, const floating[:, :] Z, const floating[:, :] T,
                     const floating* weights, floating scale, floating* scratch, double* total,
                     Py_ssize_t* correct) noexcept nogil:
    """Row loop of the two heads: each row's loss (weighted as in _softmax_xent) and, with has_dz, its gradient.

    Logistic: sum_c softplus(z) - t z (= the binary cross-entropy of sigmoid(z)),
    gradient sigmoid(z) - t; a row is correct when every (z > 0) is (t > 0.5).
    Its exp(-|z|) are taken first for a block of rows, into ``scratch``
    (_block_rows(C) * C values), in one vector pass. Squared: sum_c (z - t)^2 / 2,
    gradient z - t. Each element of Z is read before dZ (which may alias it) is written.
    """
    cdef Py_ssize_t i, j, r0 = 0, r1, B = Z.shape[0], C = Z.shape[1], rows = _block_rows(C)
    while r0 < B:
        r1 = min(r0 + rows, B)
        if head == HEAD_LOGISTIC:
            for i in range(r0, r1):
                for j in range(C):
                    scratch[(i - r0) * C + j] = -Z[i, j] if Z[i, j] > 0 else Z[i, j]
            _exp_run(scratch, scratch, (r1 - r0) * C)
        _head_block(head, dZ, has_dz, Z, T, weights, scale, scratch, r0, r1, total, correct)
        r0 = r1


cdef void _head_block(Head head, floating[:, ::1] dZ, bint has_dz, const floating[:, :] Z, const floating[:, :] T,
                      const floating* weights, floating scale, const floating* exps, Py_ssize_t r0, Py_ssize_t r1,
                      double* total, Py_ssize_t* correct) noexcept nogil:
    """Rows r0 to r1 of :func:`_head_rows`, the logistic's exp(-|Z[i, j]|) at exps[(i - r0) * C + j]."""
    cdef Py_ssize_t i, j, C = Z.shape[1]
    cdef floating z, t, e, p, g, wi = 1
    cdef floating row
    cdef bint right
    for i in range(r0, r1):
        if weights != NULL:
            wi = weights[i]
        row = 0
        right = True
        for j in range(C):
            z, t = Z[i, j], T[i, j]
            if head == HEAD_LOGISTIC:
                e = exps[(i - r0) * C + j]
                p = 1 / (1 + e) if z > 0 else e / (1 + e)
                row = row + (z if z > 0 else 0) - t * z + _log1p(e)
                g = p - t
                right = right and ((z > 0) == (t > 0.5))
            else:
                g = z - t
                row = row + g * g / 2
            if has_dz:
                dZ[i, j] = g * scale * wi
        if wi != 0:
            total[0] += wi * <double>row
            correct[0] += right


cdef tuple _head(Head head, floating[:, ::1] dZ, bint has_dz, const floating[:, :] Z, const floating[:, :] T,
                 double grad_scale, const floating[:] weights):
    """Check the arguments of a head hook and run it: (sum_b w_b loss_b / sum_b w_b, n_correct)."""
    cdef Py_ssize_t B = Z.shape[0], C = Z.shape[1]
    cdef double total = 0
    cdef Py_ssize_t correct = 0
    _check_nonempty("Z", B, C)
    _check2("T", T.shape[0], T.shape[1], B, C)
    if has_dz:
        _check2("dZ", dZ.shape[0], dZ.shape[1], B, C)
    cdef double wsum = _weight_sum(weights, B)
    cdef floating scale = <floating>(1.0 / wsum if grad_scale < 0 else grad_scale)
    cdef floating[::1] scratch = None
    cdef floating* exps = NULL
    if head == HEAD_LOGISTIC:
        scratch = _head_scratch(Z)
        exps = &scratch[0]
    with nogil:
        _head_rows(head, dZ, has_dz, Z, T, _weights_ptr(weights), scale, exps, &total, &correct)
    return total / wsum, correct


def logistic_cross_entropy_forward_backward(floating[:, ::1] dZ, const floating[:, :] Z, const floating[:, :] T,
                                            double grad_scale=-1.0, const floating[:] weights=None):
    """The logistic head: loss = sum_b w_b sum_c [softplus(Z) - T Z]_bc / sum_b w_b;  dZ_b = (sigmoid(Z_b) - T_b) w_b * grad_scale.

    The binary cross-entropy of sigmoid(Z) against targets T in [0, 1], summed
    over the C outputs (multilabel; C = 1 for two classes), a weighted mean over
    the rows, computed from the logits Z (B, C) (softplus(z) = max(z, 0) +
    log1p(exp(-|z|)): no overflow, no log of 0). weights and grad_scale as in
    :func:`softmax_cross_entropy_forward_backward`; dZ (B, C) may be Z. Returns
    (loss, n_correct), a row correct when every output is on the side of 0.5 its
    target is.
    """
    return _head(HEAD_LOGISTIC, dZ, True, Z, T, grad_scale, weights)


def logistic_cross_entropy_forward(const floating[:, :] Z, const floating[:, :] T, const floating[:] weights=None):
    """(loss, n_correct) of :func:`logistic_cross_entropy_forward_backward`, without the gradient."""
    cdef floating[:, ::1] no_dz = None
    return _head(HEAD_LOGISTIC, no_dz, False, Z, T, 0.0, weights)


def squared_error_forward_backward(floating[:, ::1] dZ, const floating[:, :] Z, const floating[:, :] T,
                                   double grad_scale=-1.0, const floating[:] weights=None):
    """The identity head: loss = sum_b w_b ||Z_b - T_b||^2 / (2 C sum_b w_b);  dZ_b = (Z_b - T_b) w_b * grad_scale.

    scikit-learn's squared loss (half the weighted mean over rows and outputs)
    and scikit-learn's gradient, which is C times that loss's: the gradient of
    the half squared error summed over the C outputs (the two agree for one
    output). Z (B, C) outputs, T (B, C) targets; weights, grad_scale and dZ as in
    :func:`softmax_cross_entropy_forward_backward`. Returns (loss, 0).
    """
    loss, _ = _head(HEAD_SQUARED, dZ, True, Z, T, grad_scale, weights)
    return loss / Z.shape[1], 0


def squared_error_forward(const floating[:, :] Z, const floating[:, :] T, const floating[:] weights=None):
    """(loss, 0) of :func:`squared_error_forward_backward`, without the gradient."""
    cdef floating[:, ::1] no_dz = None
    loss, _ = _head(HEAD_SQUARED, no_dz, False, Z, T, 0.0, weights)
    return loss / Z.shape[1], 0


# ---------------------------------------------------------------------------
# optimizer updates (flat parameter buffers, in place)
# ---------------------------------------------------------------------------

cdef int _check_layer(floating[:, ::1] W, floating[::1] b, const floating[:, ::1] dW, const floating[::1] db,
                      floating[::1] s, str s_name) except -1:
    """The shapes of one layer's update: W, dW (O, I); b, db (O,); a state block s (O*I + O,) or None."""
    _check2("dW", dW.shape[0], dW.shape[1], W.shape[0], W.shape[1])
    _check1("b", b.shape[0], W.shape[0])
    _check1("db", db.shape[0], W.shape[0])
    if s is not None:
        _check1(s_name, s.shape[0], W.shape[0] * W.shape[1] + W.shape[0])
    return 0


cdef inline void _sgd_run(floating* w, const floating* g, floating* v, Py_ssize_t n, double lr, double mu,
                          bint nesterov, double wd) noexcept nogil:
    if floating is float:
        fm_sgd_f32(w, g, v, n, <float>lr, <float>mu, nesterov, <float>wd)
    else:
        fm_sgd_f64(w, g, v, n, lr, mu, nesterov, wd)


def sgd_update_layer(floating[:, ::1] W, floating[::1] b, const floating[:, ::1] dW, const floating[::1] db,
                     floating[::1] v, double lr, double momentum=0.0, bint nesterov=False, double weight_decay=0.0):
    """SGD step on one layer's W (O, I) and b (O,) in place (PyTorch's convention, dampening 0).

    g' = g + wd w;  v <- mu v + g';  w <- w - lr (g' + mu v if nesterov else v).
    With v None (momentum 0): w <- w - lr g'. ``v`` (O*I + O,) holds W's
    velocities then b's and is updated in place. Weight decay applies to W, not to b.
    """
    cdef Py_ssize_t n = W.shape[0] * W.shape[1]
    _check_layer(W, b, dW, db, v, "v")
    if v is None and momentum != 0.0:
        raise ValueError("v: a momentum buffer is required when momentum != 0")
    with nogil:
        _sgd_run(&W[0, 0], &dW[0, 0], &v[0] if v is not None else NULL, n, lr, momentum, nesterov, weight_decay)
        _sgd_run(&b[0], &db[0], &v[n] if v is not None else NULL, b.shape[0], lr, momentum, nesterov, 0.0)


cdef inline void _adam_run(floating* w, const floating* g, floating* m, floating* v, Py_ssize_t n, double step,
                           double inv_bc2, double b1, double b2, double eps, double wd) noexcept nogil:
    if floating is float:
        fm_adam_f32(w, g, m, v, n, <float>step, <float>inv_bc2, <float>b1, <float>b2, <float>eps, <float>wd)
    else:
        fm_adam_f64(w, g, m, v, n, step, inv_bc2, b1, b2, eps, wd)


def adam_update_layer(floating[:, ::1] W, floating[::1] b, const floating[:, ::1] dW, const floating[::1] db,
                      floating[::1] m, floating[::1] v, double lr, double beta1, double beta2, double eps,
                      double weight_decay, long step):
    """Adam step on one layer's W (O, I) and b (O,) in place, with bias correction (step >= 1 counts this update).

    g' = g + wd w;  m <- b1 m + (1-b1) g';  v <- b2 v + (1-b2) g'^2;
    w <- w - lr/(1-b1^t) * m / (sqrt(v/(1-b2^t)) + eps). ``m``, ``v`` (O*I + O,)
    hold W's moments then b's and are updated in place. Weight decay applies to W, not to b.
    """
    cdef Py_ssize_t n = W.shape[0] * W.shape[1]
    if step < 1:
        raise ValueError(f"step: expected >= 1, got {step}")
    if m is None or v is None:
        raise ValueError("m, v: Adam needs both moment buffers, got None")
    _check_layer(W, b, dW, db, m, "m")
    _check_layer(W, b, dW, db, v, "v")
    cdef double step_size = lr / (1.0 - beta1 ** step)
    cdef double inv_bc2 = 1.0 / sqrt(1.0 - beta2 ** step)
    with nogil:
        _adam_run(&W[0, 0], &dW[0, 0], &m[0], &v[0], n, step_size, inv_bc2, beta1, beta2, eps, weight_decay)
        _adam_run(&b[0], &db[0], &m[n], &v[n], b.shape[0], step_size, inv_bc2, beta1, beta2, eps, 0.0)
