/* fastmlp's own GEMM for small matrices (float64 and float32, AVX2 + FMA).
 *
 * Shape legend
 *   M, N   rows and columns of C
 *   K      inner dimension
 *
 *   C (M, N) = alpha op(A) (M, K) @ op(B) (K, N) + beta C, every matrix row-major with its leading
 *   dimension (lda, ldb, ldc); op(A) = A^T when ta (A stored (K, M)), op(B) = B^T when tb (B stored
 *   (N, K)). The semantics of _kernels.pyx's _blas_gemm: beta == 0 never reads C (garbage or NaN in C
 *   stays out), NaN and inf in A or B propagate.
 *
 * At a small network's sizes (a batch of 200 rows, 64 inputs, 64 or 10 outputs) OpenBLAS's dgemm
 * spends a large share of each call outside its micro-kernel: packing both operands, and edge
 * tiles of a 10-wide product. Here A is never packed: each micro-kernel broadcasts its values
 * straight from A, in either layout. op(B) is read in place when it is row-major with unit stride
 * along N and short or read by few row tiles (a long one, its rows a power of two apart, would
 * not stay in the few L1 sets they map to); otherwise (and for the last, narrower panel) one panel
 * of it is packed k-major into a small zero-padded buffer that stays in L1 while every row tile
 * uses it (4 x 4 blocks transposed in registers when B is stored transposed).
 *
 * Loops, outside in: blocks of KC inner values; blocks of rows of C (their A block stays in L2);
 * panels of NR = 2 vectors of columns (8 doubles, 16 floats); tiles of MR = 6 rows: one micro-kernel
 * holds a 6 x NR tile of C in 12 ymm accumulators, one broadcast and two FMAs per row and inner value.
 * A last panel of one vector's width or less (64 + 2 for a 10-wide double output: 8 + 2) takes a
 * 12-row tile of one vector per row instead, so the padding costs half as much. One call runs a
 * panel's whole column of tiles: with a short K (10 inputs), a call per tile cost as much as its sums.
 * Edge tiles of rows repeat their last row (computed, never stored), so no row of A past M is read;
 * partial panels store through lane masks. A forward's bias and ReLU can be applied to each tile as it
 * is stored after the last block of k (the same operations as _loops.h's fm_bias_act pass over C,
 * which the forward then skips).
 *
 * The sum of each element of C runs over k in one fixed order (block after block of KC, each from
 * zero, one FMA per k), whatever tile, panel or layout computes it: results do not depend on how a
 * caller cuts M or N among threads. Where K fits one block and alpha is 1, OpenBLAS's Haswell
 * kernels here happen to sum in the same order (same bits); otherwise the two differ in the last
 * bits, as any two BLAS do.
 *
 * Compiled with GCC's target attribute, so the extension itself stays baseline x86-64;
 * fm_small_gemm_available() tells whether this CPU (and its OS) runs AVX2 and FMA. Elsewhere the
 * functions are empty and fm_small_gemm_available() returns 0. The panel buffer is thread-local
 * (16 KB per thread that calls), so the hot loop allocates nothing.
 */
#ifndef FASTMLP_SMALL_GEMM_H
#define FASTMLP_SMALL_GEMM_H

#include <stddef.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FM_SG_ENABLED 1
#include <immintrin.h>
#define FM_SG_TARGET __attribute__((target("avx2,fma")))
#else
#define FM_SG_ENABLED 0
#endif

enum {
    FM_SG_MR = 6,           /* rows of a full-width tile: 6 x 2 accumulators, 3 ymm left for operands */
    FM_SG_MR_NARROW = 12,   /* rows of a one-vector tile */
    FM_SG_KC = 256,         /* inner values per block: a KC x NR panel of B stays in L1 */
    FM_SG_A_BLOCK = 32768,  /* elements of A per block of rows (256 KB of doubles): it stays in L2 */
    FM_SG_IN_PLACE_KC = 32, /* a row-major op(B) this short is read in place, whatever M */
};

static int fm_small_gemm_available(void) {
#if FM_SG_ENABLED
    __builtin_cpu_init();
    /* libgcc sets these only when the OS also saves the ymm registers */
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

#if FM_SG_ENABLED

/* One packed panel of op(B): KC x 8 doubles or KC x 16 floats, 16 KB either way. */
static __thread union {
    double d[FM_SG_KC * 8];
    float f[FM_SG_KC * 16];
} fm_sg_panel __attribute__((aligned(32)));

/* Lane masks for the maskload/maskstore of a partial vector: lanes [0, n) set. */
FM_SG_TARGET static inline __m256i fm_sg_mask_pd(ptrdiff_t n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x((long long)n), _mm256_setr_epi64x(0, 1, 2, 3));
}
FM_SG_TARGET static inline __m256i fm_sg_mask_ps(ptrdiff_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* dst[k * dstride + j] = src[j * sstride + k] for j, k < 4: a 4 x 4 block of B^T into a panel, in registers. */
FM_SG_TARGET static inline void fm_sg_t4x4_f64(double *dst, ptrdiff_t dstride, const double *src, ptrdiff_t sstride) {
    __m256d r0 = _mm256_loadu_pd(src), r1 = _mm256_loadu_pd(src + sstride);
    __m256d r2 = _mm256_loadu_pd(src + 2 * sstride), r3 = _mm256_loadu_pd(src + 3 * sstride);
    __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
    __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
    _mm256_storeu_pd(dst, _mm256_permute2f128_pd(t0, t2, 0x20));
    _mm256_storeu_pd(dst + dstride, _mm256_permute2f128_pd(t1, t3, 0x20));
    _mm256_storeu_pd(dst + 2 * dstride, _mm256_permute2f128_pd(t0, t2, 0x31));
    _mm256_storeu_pd(dst + 3 * dstride, _mm256_permute2f128_pd(t1, t3, 0x31));
}
FM_SG_TARGET static inline void fm_sg_t4x4_f32(float *dst, ptrdiff_t dstride, const float *src, ptrdiff_t sstride) {
    __m128 r0 = _mm_loadu_ps(src), r1 = _mm_loadu_ps(src + sstride);
    __m128 r2 = _mm_loadu_ps(src + 2 * sstride), r3 = _mm_loadu_ps(src + 3 * sstride);
    _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
    _mm_storeu_ps(dst, r0);
    _mm_storeu_ps(dst + dstride, r1);
    _mm_storeu_ps(dst + 2 * dstride, r2);
    _mm_storeu_ps(dst + 3 * dstride, r3);
}

/* max(y, 0) as _loops.h's ReLU: y where y > 0 or y is NaN, else +0. */
FM_SG_TARGET static inline __m256d fm_sg_relu_f64(__m256d y) {
    __m256d keep = _mm256_or_pd(_mm256_cmp_pd(y, _mm256_setzero_pd(), _CMP_GT_OQ), _mm256_cmp_pd(y, y, _CMP_UNORD_Q));
    return _mm256_and_pd(y, keep);
}
FM_SG_TARGET static inline __m256 fm_sg_relu_f32(__m256 y) {
    __m256 keep = _mm256_or_ps(_mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_GT_OQ), _mm256_cmp_ps(y, y, _CMP_UNORD_Q));
    return _mm256_and_ps(y, keep);
}

#define FM_SG_T double
#define FM_SG_VEC __m256d
#define FM_SG_LANES 4
#define FM_SG_NAME(x) x##_f64
#define FM_SG_PANEL fm_sg_panel.d
#define FM_SG_ZERO _mm256_setzero_pd
#define FM_SG_LOADU _mm256_loadu_pd
#define FM_SG_STOREU _mm256_storeu_pd
#define FM_SG_SET1 _mm256_set1_pd
#define FM_SG_MUL _mm256_mul_pd
#define FM_SG_ADD _mm256_add_pd
#define FM_SG_FMADD _mm256_fmadd_pd
#define FM_SG_MASK fm_sg_mask_pd
#define FM_SG_MLOAD _mm256_maskload_pd
#define FM_SG_MSTORE _mm256_maskstore_pd
#include "_small_gemm_impl.h"

#define FM_SG_T float
#define FM_SG_VEC __m256
#define FM_SG_LANES 8
#define FM_SG_NAME(x) x##_f32
#define FM_SG_PANEL fm_sg_panel.f
#define FM_SG_ZERO _mm256_setzero_ps
#define FM_SG_LOADU _mm256_loadu_ps
#define FM_SG_STOREU _mm256_storeu_ps
#define FM_SG_SET1 _mm256_set1_ps
#define FM_SG_MUL _mm256_mul_ps
#define FM_SG_ADD _mm256_add_ps
#define FM_SG_FMADD _mm256_fmadd_ps
#define FM_SG_MASK fm_sg_mask_ps
#define FM_SG_MLOAD _mm256_maskload_ps
#define FM_SG_MSTORE _mm256_maskstore_ps
#include "_small_gemm_impl.h"

#else /* not GCC on x86-64 Linux: never called, fm_small_gemm_available() is 0 */

static void fm_small_gemm_f64(int ta, int tb, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, double alpha, const double *A,
                              ptrdiff_t lda, const double *B, ptrdiff_t ldb, double beta, double *C, ptrdiff_t ldc,
                              const double *bias, int relu) {
    (void)ta; (void)tb; (void)M; (void)N; (void)K; (void)alpha; (void)A; (void)lda; (void)B; (void)ldb;
    (void)beta; (void)C; (void)ldc; (void)bias; (void)relu;
}

static void fm_small_gemm_f32(int ta, int tb, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, float alpha, const float *A,
                              ptrdiff_t lda, const float *B, ptrdiff_t ldb, float beta, float *C, ptrdiff_t ldc,
                              const float *bias, int relu) {
    (void)ta; (void)tb; (void)M; (void)N; (void)K; (void)alpha; (void)A; (void)lda; (void)B; (void)ldb;
    (void)beta; (void)C; (void)ldc; (void)bias; (void)relu;
}

#endif /* FM_SG_ENABLED */
#endif /* FASTMLP_SMALL_GEMM_H */
