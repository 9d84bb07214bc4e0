/* The body of _small_gemm.h, included there once per element type (double, float).
 *
 * The includer defines FM_SG_T (the element), FM_SG_VEC (its ymm type), FM_SG_LANES (elements per
 * vector), FM_SG_NAME(x) (x with the type's suffix), FM_SG_PANEL (the thread-local panel buffer) and
 * the intrinsics FM_SG_ZERO, FM_SG_LOADU, FM_SG_STOREU, FM_SG_SET1, FM_SG_MUL, FM_SG_FMADD, FM_SG_MASK
 * (lane mask of a partial vector), FM_SG_MLOAD, FM_SG_MSTORE; they are undefined at the end.
 * No include guard: that is the point.
 */

#define FM_SG_NR (2 * FM_SG_LANES) /* columns of a panel */

/* panel[k][0:NR] = op(B)[k0 + k, n:n + width], zero past width: one k-major panel of op(B) (kc x NR). */
FM_SG_TARGET static void FM_SG_NAME(fm_sg_pack)(FM_SG_T *restrict panel, const FM_SG_T *restrict B, ptrdiff_t ldb,
                                                int tb, ptrdiff_t k0, ptrdiff_t kc, ptrdiff_t n, ptrdiff_t width) {
    if (tb) { /* op(B)[k, n] = B[n, k]: each stored row of B becomes a column of the panel, 4 x 4 at a time */
        ptrdiff_t j4 = width / 4 * 4, k4 = kc / 4 * 4;
        for (ptrdiff_t j = 0; j < j4; j += 4)
            for (ptrdiff_t k = 0; k < k4; k += 4)
                FM_SG_NAME(fm_sg_t4x4)(panel + k * FM_SG_NR + j, FM_SG_NR, B + (n + j) * ldb + k0 + k, ldb);
        for (ptrdiff_t j = 0; j < width; j++) {
            const FM_SG_T *src = B + (n + j) * ldb + k0;
            for (ptrdiff_t k = j < j4 ? k4 : 0; k < kc; k++) panel[k * FM_SG_NR + j] = src[k];
        }
    } else if (width == FM_SG_NR) {
        for (ptrdiff_t k = 0; k < kc; k++) {
            const FM_SG_T *src = B + (k0 + k) * ldb + n;
            FM_SG_STOREU(panel + k * FM_SG_NR, FM_SG_LOADU(src));
            FM_SG_STOREU(panel + k * FM_SG_NR + FM_SG_LANES, FM_SG_LOADU(src + FM_SG_LANES));
        }
        return;
    } else {
        for (ptrdiff_t k = 0; k < kc; k++) {
            const FM_SG_T *src = B + (k0 + k) * ldb + n;
            for (ptrdiff_t j = 0; j < width; j++) panel[k * FM_SG_NR + j] = src[j];
        }
    }
    for (ptrdiff_t k = 0; k < kc; k++)
        for (ptrdiff_t j = width; j < FM_SG_NR; j++) panel[k * FM_SG_NR + j] = 0;
}

/* How a tile stores its sums: C = alpha sums + beta C in the first block of k, C += alpha sums in later
 * ones; in the last, bias (the panel's columns of it, or NULL) is added and the ReLU applied (relu 1). */
typedef struct {
    FM_SG_T alpha, beta;
    int first, relu;
    const FM_SG_T *bias;
} FM_SG_NAME(fm_sg_store);

/* C[i, 0:width] = alpha sum_k op(A)[i, k] b[k][0:width] + beta C[i, 0:width] for i < mr (first block of k),
 * or C[i, 0:width] += alpha sum_k ... (later blocks), then bias and ReLU as `out` says: one tile of `rows` rows
 * and `nv` vectors of columns.
 * op(A)[i, k] = a[i rs + k cs]; b's rows are bs elements apart. A tile that is not full (mr < rows) reads
 * its last row again for the rows past M, whose sums are never stored. Inlined into variants whose
 * rows, nv, full and one of rs, cs are constants, so the accumulators live in registers. */
FM_SG_TARGET static inline __attribute__((always_inline)) void FM_SG_NAME(fm_sg_tile)(
    FM_SG_T *C, ptrdiff_t ldc, const FM_SG_T *a, ptrdiff_t rs, ptrdiff_t cs, const FM_SG_T *b, ptrdiff_t bs,
    ptrdiff_t kc, ptrdiff_t mr, ptrdiff_t width, const FM_SG_NAME(fm_sg_store) *out, const int rows,
    const int nv, const int full, const int fused) {
    FM_SG_T beta = out->beta;
    int first = out->first, relu = fused && out->relu;
    const FM_SG_T *bias = fused ? out->bias : NULL;
    const FM_SG_T *ar[FM_SG_MR_NARROW];
    FM_SG_VEC acc[FM_SG_MR_NARROW][2];
    for (int i = 0; i < rows; i++) {
        ar[i] = a + (full || i < mr ? i : mr - 1) * rs;
        acc[i][0] = acc[i][1] = FM_SG_ZERO();
    }
    for (ptrdiff_t k = 0; k < kc; k++) {
        const FM_SG_T *bk = b + k * bs;
        FM_SG_VEC b0 = FM_SG_LOADU(bk), b1 = nv > 1 ? FM_SG_LOADU(bk + FM_SG_LANES) : b0;
#pragma GCC unroll 12
        for (int i = 0; i < rows; i++) {
            FM_SG_VEC av = FM_SG_SET1(ar[i][k * cs]);
            acc[i][0] = FM_SG_FMADD(av, b0, acc[i][0]);
            if (nv > 1) acc[i][1] = FM_SG_FMADD(av, b1, acc[i][1]);
        }
    }
    FM_SG_VEC va = FM_SG_SET1(out->alpha), vb = FM_SG_SET1(beta);
    /* unrolled whole, so that acc stays in registers */
#pragma GCC unroll 12
    for (int i = 0; i < rows; i++) {
        if (i >= mr) break;
        FM_SG_T *c = C + i * ldc;
#pragma GCC unroll 2
        for (int q = 0; q < nv; q++) {
            ptrdiff_t lanes = width - q * FM_SG_LANES;
            if (lanes <= 0) break;
            FM_SG_T *cq = c + q * FM_SG_LANES;
            FM_SG_VEC r = acc[i][q];
            if (lanes >= FM_SG_LANES) {
                if (!first) r = FM_SG_FMADD(va, r, FM_SG_LOADU(cq));
                else if (beta != 0) r = FM_SG_FMADD(vb, FM_SG_LOADU(cq), FM_SG_MUL(va, r));
                else r = FM_SG_MUL(va, r); /* C is not read: NaN garbage there stays out */
                if (bias != NULL) r = FM_SG_ADD(r, FM_SG_LOADU(bias + q * FM_SG_LANES));
                if (relu) r = FM_SG_NAME(fm_sg_relu)(r);
                FM_SG_STOREU(cq, r);
            } else {
                __m256i m = FM_SG_MASK(lanes);
                if (!first) r = FM_SG_FMADD(va, r, FM_SG_MLOAD(cq, m));
                else if (beta != 0) r = FM_SG_FMADD(vb, FM_SG_MLOAD(cq, m), FM_SG_MUL(va, r));
                else r = FM_SG_MUL(va, r);
                if (bias != NULL) r = FM_SG_ADD(r, FM_SG_MLOAD(bias + q * FM_SG_LANES, m));
                if (relu) r = FM_SG_NAME(fm_sg_relu)(r);
                FM_SG_MSTORE(cq, m, r);
            }
        }
    }
}

/* One panel's column of tiles, rows [0, m_count) of C: full tiles, then one edge tile. Four compiled
 * variants: full width (6 x NR tiles) or narrow (12 x one vector), A read by rows (A[i, k] at i lda + k)
 * or by columns (A stored transposed: k lda + i). One call per panel, so the tiles pay no call. */
typedef void (*FM_SG_NAME(fm_sg_column_fn))(FM_SG_T *, ptrdiff_t, const FM_SG_T *, ptrdiff_t, const FM_SG_T *,
                                            ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t,
                                            const FM_SG_NAME(fm_sg_store) *);
#define FM_SG_VARIANT(NAME, RS, CS, ROWS, NV)                                                                      \
    FM_SG_TARGET static void FM_SG_NAME(NAME)(FM_SG_T * C, ptrdiff_t ldc, const FM_SG_T *a, ptrdiff_t lda,           \
                                              const FM_SG_T *b, ptrdiff_t bs, ptrdiff_t kc, ptrdiff_t m_count,      \
                                              ptrdiff_t width, const FM_SG_NAME(fm_sg_store) *out) {                \
        (void)lda;                                                                                                 \
        ptrdiff_t m = 0;                                                                                           \
        if (out->bias == NULL && !out->relu) { /* compiled apart: the plain store runs no test of its own */       \
            for (; m + ROWS <= m_count; m += ROWS)                                                                 \
                FM_SG_NAME(fm_sg_tile)(C + m * ldc, ldc, a + m * (RS), RS, CS, b, bs, kc, ROWS, width, out, ROWS,  \
                                       NV, 1, 0);                                                                  \
        } else {                                                                                                   \
            for (; m + ROWS <= m_count; m += ROWS)                                                                 \
                FM_SG_NAME(fm_sg_tile)(C + m * ldc, ldc, a + m * (RS), RS, CS, b, bs, kc, ROWS, width, out, ROWS,  \
                                       NV, 1, 1);                                                                  \
        }                                                                                                          \
        if (m < m_count)                                                                                           \
            FM_SG_NAME(fm_sg_tile)(C + m * ldc, ldc, a + m * (RS), RS, CS, b, bs, kc, m_count - m, width, out,     \
                                   ROWS, NV, 0, 1);                                                                \
    }
FM_SG_VARIANT(fm_sg_wide_rows, lda, 1, FM_SG_MR, 2)
FM_SG_VARIANT(fm_sg_wide_cols, 1, lda, FM_SG_MR, 2)
FM_SG_VARIANT(fm_sg_narrow_rows, lda, 1, FM_SG_MR_NARROW, 1)
FM_SG_VARIANT(fm_sg_narrow_cols, 1, lda, FM_SG_MR_NARROW, 1)
#undef FM_SG_VARIANT

/* [narrow][ta] */
static const FM_SG_NAME(fm_sg_column_fn) FM_SG_NAME(fm_sg_columns)[2][2] = {
    {FM_SG_NAME(fm_sg_wide_rows), FM_SG_NAME(fm_sg_wide_cols)},
    {FM_SG_NAME(fm_sg_narrow_rows), FM_SG_NAME(fm_sg_narrow_cols)},
};

/* C = beta C (+ bias, ReLU), without reading C when beta == 0: what remains of the product when alpha == 0
 * (as BLAS does). The ReLU keeps NaN, as _loops.h's does. */
static void FM_SG_NAME(fm_sg_scale)(FM_SG_T *C, ptrdiff_t ldc, ptrdiff_t M, ptrdiff_t N, FM_SG_T beta,
                                    const FM_SG_T *bias, int relu) {
    for (ptrdiff_t i = 0; i < M; i++)
        for (ptrdiff_t j = 0; j < N; j++) {
            FM_SG_T y = beta == 0 ? (FM_SG_T)0 : beta * C[i * ldc + j];
            if (bias != NULL) y += bias[j];
            C[i * ldc + j] = relu && !(y > 0 || y != y) ? (FM_SG_T)0 : y;
        }
}

/* C (M, N) = act(alpha op(A) @ op(B) + beta C + bias): the semantics of _kernels.pyx's _blas_gemm (see the
 * top of _small_gemm.h), then the forward's bias (N,) (NULL: none) and ReLU (relu 1) applied as each tile is
 * stored, as fm_bias_act's pass over C would (same operations, same results). Blocks of KC inner values, of
 * rows (an A block of at most A_BLOCK elements), panels. */
FM_SG_TARGET static void FM_SG_NAME(fm_small_gemm)(int ta, int tb, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                                                   FM_SG_T alpha, const FM_SG_T *A, ptrdiff_t lda, const FM_SG_T *B,
                                                   ptrdiff_t ldb, FM_SG_T beta, FM_SG_T *C, ptrdiff_t ldc,
                                                   const FM_SG_T *bias, int relu) {
    if (M <= 0 || N <= 0) return;
    if (alpha == 0 || K <= 0) {
        FM_SG_NAME(fm_sg_scale)(C, ldc, M, N, beta, bias, relu);
        return;
    }
    for (ptrdiff_t k0 = 0; k0 < K; k0 += FM_SG_KC) {
        ptrdiff_t kc = K - k0 < FM_SG_KC ? K - k0 : FM_SG_KC;
        ptrdiff_t mc = FM_SG_A_BLOCK / kc / FM_SG_MR_NARROW * FM_SG_MR_NARROW; /* a multiple of both tiles' rows */
        for (ptrdiff_t m0 = 0; m0 < M; m0 += mc) {
            ptrdiff_t m1 = M - m0 < mc ? M : m0 + mc;
            for (ptrdiff_t n = 0; n < N; n += FM_SG_NR) {
                ptrdiff_t width = N - n < FM_SG_NR ? N - n : FM_SG_NR;
                const FM_SG_T *b = B + k0 * ldb + n;
                ptrdiff_t bs = ldb;
                /* In place: a full panel of a row-major op(B), when few row tiles read it or it is short
                 * (a long panel of rows a power of two apart would not stay in L1's few sets they map to) */
                if (tb || width < FM_SG_NR || (m1 - m0 > FM_SG_MR_NARROW && kc > FM_SG_IN_PLACE_KC)) {
                    FM_SG_NAME(fm_sg_pack)(FM_SG_PANEL, B, ldb, tb, k0, kc, n, width);
                    b = FM_SG_PANEL;
                    bs = FM_SG_NR;
                }
                const FM_SG_T *a = ta ? A + k0 * lda + m0 : A + m0 * lda + k0;
                int last = k0 + kc == K;
                FM_SG_NAME(fm_sg_store) out = {alpha, beta, k0 == 0, last && relu,
                                               last && bias != NULL ? bias + n : NULL};
                FM_SG_NAME(fm_sg_columns)[width <= FM_SG_LANES][ta != 0](C + m0 * ldc + n, ldc, a, lda, b, bs, kc,
                                                                         m1 - m0, width, &out);
            }
        }
    }
}

#undef FM_SG_NR
#undef FM_SG_T
#undef FM_SG_VEC
#undef FM_SG_LANES
#undef FM_SG_NAME
#undef FM_SG_PANEL
#undef FM_SG_ZERO
#undef FM_SG_LOADU
#undef FM_SG_STOREU
#undef FM_SG_SET1
#undef FM_SG_MUL
#undef FM_SG_ADD
#undef FM_SG_FMADD
#undef FM_SG_MASK
#undef FM_SG_MLOAD
#undef FM_SG_MSTORE
