/* A first layer fed uint8 images: fastmlp's own GEMMs (float32, AVX-512).
 *
 * Shape legend
 *   B   rows of the batch; R = [r0, r1) the rows one call computes
 *   D   values per image; K = [k0, k1) (forward) or [i0, i1) (update) the ones one call covers
 *   O   output features (rows of W)
 *
 *   x[r, k] = (float(src[row(r), k]) - offset[k]) / scale[k]   (no division when scale is NULL;
 *                                                               row(r) = index[r], or r without index)
 *   forward  fm_images_gemm_f32:  Y[r, :] = sum over k in K of x[r, k] W[:, k]   (overwritten)
 *                                 X[r, k] = x[r, k]                              (when X is not NULL)
 *   update   fm_images_wgrad_f32: W[:, i] = beta W[:, i] + alpha sum_b dY[b, :]^T x[b, i], i in [i0, i1)
 *
 * OpenBLAS needs x as a float matrix: the batch is converted into memory, then read
 * back and copied again into OpenBLAS's packed panels. Here the conversion *is* the
 * packing: the pixels are converted straight into small cache-resident panels, so an
 * evaluation, and a training step with plain SGD (forward, then the update from the
 * pixels again), never write a converted batch at all.
 *
 * Forward loops, outside in: blocks of NC output features; blocks of KC inner values
 * (W's block packed as its transpose, panels of 16 features); blocks of MR rows (their
 * conversion); one micro-kernel per panel: an MR x 16 tile of Y in MR zmm registers,
 * one broadcast-FMA per row and inner value. A panel of 4 features or fewer
 * (100 = 6 x 16 + 4) runs on xmm registers, which issue twice as fast here.
 * Update loops: blocks of NC columns of W; blocks of KC batch rows (their columns
 * converted into (rows, 16) panels); blocks of MR_W rows of W; one micro-kernel per
 * pair of panels: an MR_W x 32 tile of W, dY's values broadcast straight from dY.
 * (Pairs of panels per tile pay off for the update, not for the forward: BENCHMARKS.md's diary.)
 *
 * The sums run in a fixed order, block after block, whatever the rows or columns a
 * call is given: results do not depend on how the callers cut the work among
 * threads. They differ from OpenBLAS's in the last bits (another summation order),
 * as any two BLAS do.
 *
 * Compiled with GCC's target attribute, so the extension itself stays baseline
 * x86-64; fm_images_gemm_available() tells whether this CPU (and its OS) runs it.
 * Elsewhere the functions are empty and fm_images_gemm_available() returns 0.
 * Work areas are thread-local (140 KB per thread that calls), so the hot loop
 * allocates nothing.
 */
#ifndef FASTMLP_IMAGES_GEMM_H
#define FASTMLP_IMAGES_GEMM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_loops.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FM_IG_ENABLED 1
#include <immintrin.h>
#define FM_IG_TARGET __attribute__((target("avx512f,avx512vl,avx512bw,fma")))
#else
#define FM_IG_ENABLED 0
#endif

enum {
    FM_IG_MR = 12,   /* rows per micro-kernel tile */
    FM_IG_KC = 256,  /* inner values per block: MR x KC floats of x stay in L1 */
    FM_IG_NC = 128,  /* output features per block: KC x NC floats of W^T stay in L2 */
    FM_IG_MR_W = 10, /* rows of W per tile of the weight update (100 = 10 x 10) */
};

static int fm_images_gemm_available(void) {
#if FM_IG_ENABLED
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

#if FM_IG_ENABLED

/* One thread's packed panels; thread-local so that the hot loop allocates nothing. The forward
 * packs W^T into wpack and x into xpack; the update packs x into wpack and dY's last rows into xpack. */
static __thread float fm_ig_wpack[FM_IG_NC * FM_IG_KC] __attribute__((aligned(64)));
static __thread float fm_ig_xpack[FM_IG_MR * FM_IG_KC] __attribute__((aligned(64)));
_Static_assert(FM_IG_MR_W <= FM_IG_MR, "the update's zero-padded dY block must fit in fm_ig_xpack");
_Static_assert(FM_IG_NC % 16 == 0, "column blocks are whole 16-wide panels");

/* wp[p][k][16] = W[n0 + 16p + j, k0 + k], zero past the last feature: (KC, 16) panels of W^T. */
FM_IG_TARGET static void fm_ig_pack_w(float *restrict wp, const float *restrict W, ptrdiff_t ldw, ptrdiff_t n0,
                                      ptrdiff_t nc, ptrdiff_t k0, ptrdiff_t kc) {
    for (ptrdiff_t p = 0; p * 16 < nc; p++) {
        float *dst = wp + p * kc * 16;
        ptrdiff_t width = nc - 16 * p < 16 ? nc - 16 * p : 16;
        for (ptrdiff_t j = 0; j < width; j++) {
            const float *w = W + (n0 + 16 * p + j) * ldw + k0;
            for (ptrdiff_t k = 0; k < kc; k++) dst[k * 16 + j] = w[k];
        }
        for (ptrdiff_t j = width; j < 16; j++)
            for (ptrdiff_t k = 0; k < kc; k++) dst[k * 16 + j] = 0.0f;
    }
}

/* xp[i][k] = x[r0 + i, k0 + k] for i < mr (zero rows after), also into X when X is not NULL: each row's
 * run through _loops.h's fm_convert_f32, the same conversion as convert_images. */
FM_IG_TARGET static void fm_ig_pack_x(float *restrict xp, float *X, ptrdiff_t ldx, const uint8_t *src,
                                      ptrdiff_t src_stride, const int64_t *index, const float *offset,
                                      const float *scale, ptrdiff_t r0, ptrdiff_t mr, ptrdiff_t k0, ptrdiff_t kc) {
    for (ptrdiff_t i = 0; i < mr; i++) {
        ptrdiff_t row = index != NULL ? (ptrdiff_t)index[r0 + i] : r0 + i;
        float *d = xp + i * FM_IG_KC;
        fm_convert_f32(d, src + row * src_stride + k0, offset + k0, scale != NULL ? scale + k0 : NULL, kc);
        if (X != NULL) memcpy(X + (r0 + i) * ldx + k0, d, (size_t)kc * sizeof(float));
    }
    for (ptrdiff_t i = mr; i < FM_IG_MR; i++) memset(xp + i * FM_IG_KC, 0, (size_t)kc * sizeof(float));
}

/* Y[i, 0:width] (+)= sum_k xp[i][k] wp[k][0:width] for i < mr: an MR-row tile, one vector of
 * accumulators per row; NAME_16 on zmm lanes (width <= 16), NAME_4 on xmm lanes (width <= 4). */
#define FM_IG_DEFINE_TILE(NAME, VEC, MASK, ZERO, LOAD, FMADD, SET1, ADD, MASKZ_LOADU, MASK_STOREU)                   \
    FM_IG_TARGET static void NAME(float *Y, ptrdiff_t ldy, const float *restrict xp, const float *restrict wp,      \
                                  ptrdiff_t kc, ptrdiff_t mr, ptrdiff_t width, int accumulate) {                  \
        VEC acc[FM_IG_MR];                                                                                        \
        for (int i = 0; i < FM_IG_MR; i++) acc[i] = ZERO();                                                       \
        for (ptrdiff_t k = 0; k < kc; k++) {                                                                      \
            VEC w = LOAD(wp + k * 16);                                                                            \
            _Pragma("GCC unroll 12") for (int i = 0; i < FM_IG_MR; i++)                                           \
                acc[i] = FMADD(SET1(xp[i * FM_IG_KC + k]), w, acc[i]);                                            \
        }                                                                                                         \
        MASK m = (MASK)((1u << width) - 1u);                                                                      \
        for (ptrdiff_t i = 0; i < mr; i++) {                                                                      \
            float *y = Y + i * ldy;                                                                               \
            if (accumulate) acc[i] = ADD(acc[i], MASKZ_LOADU(m, y));                                              \
            MASK_STOREU(y, m, acc[i]);                                                                            \
        }                                                                                                         \
    }
FM_IG_DEFINE_TILE(fm_ig_tile16, __m512, __mmask16, _mm512_setzero_ps, _mm512_load_ps, _mm512_fmadd_ps,
                  _mm512_set1_ps, _mm512_add_ps, _mm512_maskz_loadu_ps, _mm512_mask_storeu_ps)
FM_IG_DEFINE_TILE(fm_ig_tile4, __m128, __mmask8, _mm_setzero_ps, _mm_load_ps, _mm_fmadd_ps, _mm_set1_ps,
                  _mm_add_ps, _mm_maskz_loadu_ps, _mm_mask_storeu_ps)

/* Y (ldy) rows [r0, r1) = x[r0:r1, k0:k1] @ W[0:N, k0:k1]^T; X (ldx) rows [r0, r1), columns [k0, k1) = x when
 * X is not NULL. src rows are src_stride bytes apart (row(r) = index[r], or r when index is NULL); W (N, ldw). */
FM_IG_TARGET static void fm_images_gemm_f32(float *Y, ptrdiff_t ldy, float *X, ptrdiff_t ldx, const uint8_t *src,
                                            ptrdiff_t src_stride, const int64_t *index, const float *offset,
                                            const float *scale, const float *W, ptrdiff_t ldw, ptrdiff_t N,
                                            ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t k0, ptrdiff_t k1) {
    float *wp = fm_ig_wpack, *xp = fm_ig_xpack;
    for (ptrdiff_t n0 = 0; n0 < N; n0 += FM_IG_NC) {
        ptrdiff_t nc = N - n0 < FM_IG_NC ? N - n0 : FM_IG_NC;
        for (ptrdiff_t kb = k0; kb < k1; kb += FM_IG_KC) {
            ptrdiff_t kc = k1 - kb < FM_IG_KC ? k1 - kb : FM_IG_KC;
            fm_ig_pack_w(wp, W, ldw, n0, nc, kb, kc);
            for (ptrdiff_t r = r0; r < r1; r += FM_IG_MR) {
                ptrdiff_t mr = r1 - r < FM_IG_MR ? r1 - r : FM_IG_MR;
                fm_ig_pack_x(xp, n0 == 0 ? X : NULL, ldx, src, src_stride, index, offset, scale, r, mr, kb, kc);
                for (ptrdiff_t p = 0; p * 16 < nc; p++) {
                    ptrdiff_t width = nc - 16 * p < 16 ? nc - 16 * p : 16;
                    float *y = Y + r * ldy + n0 + 16 * p;
                    if (width <= 4)
                        fm_ig_tile4(y, ldy, xp, wp + p * kc * 16, kc, mr, width, kb > k0);
                    else
                        fm_ig_tile16(y, ldy, xp, wp + p * kc * 16, kc, mr, width, kb > k0);
                }
            }
        }
    }
}

/* W[o, 16q + 0:16q + width] = beta W + alpha sum_b d[b][o] xp[q][b][0:width] for o < mr and the np panels q
 * (panels pstride floats apart; width <= 16 masks the last): an MR_W x 16 np tile of W, d read with stride
 * dstride. The first block of batch rows scales W by beta (0: W's old values ignored); later ones add. */
FM_IG_TARGET static inline __attribute__((always_inline)) void fm_ig_wtile(
    float *W, ptrdiff_t ldw, const float *restrict xp, ptrdiff_t pstride, const float *restrict d,
    ptrdiff_t dstride, ptrdiff_t kb, ptrdiff_t mr, const int np, ptrdiff_t width, int first, float beta,
    float alpha) {
    __m512 acc[2][FM_IG_MR_W];
    for (int q = 0; q < np; q++)
        for (int r = 0; r < FM_IG_MR_W; r++) acc[q][r] = _mm512_setzero_ps();
    for (ptrdiff_t b = 0; b < kb; b++) {
        __m512 x[2];
        for (int q = 0; q < np; q++) x[q] = _mm512_load_ps(xp + q * pstride + b * 16);
        const float *db = d + b * dstride;
#pragma GCC unroll 12
        for (int r = 0; r < FM_IG_MR_W; r++) {
            __m512 v = _mm512_set1_ps(db[r]);
            for (int q = 0; q < np; q++) acc[q][r] = _mm512_fmadd_ps(v, x[q], acc[q][r]);
        }
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (ptrdiff_t r = 0; r < mr; r++) {
        for (int q = 0; q < np; q++) {
            __mmask16 m = q == np - 1 ? (__mmask16)((1u << width) - 1u) : (__mmask16)0xFFFF;
            float *w = W + r * ldw + 16 * q;
            __m512 old = _mm512_maskz_loadu_ps(m, w);
            if (first) old = beta == 0.0f ? _mm512_setzero_ps() : _mm512_mul_ps(vb, old);
            _mm512_mask_storeu_ps(w, m, _mm512_fmadd_ps(va, acc[q][r], old));
        }
    }
}

/* One panel (width <= 16), and two full panels side by side: half the broadcasts per FMA. */
FM_IG_TARGET static void fm_ig_wtile16(float *W, ptrdiff_t ldw, const float *restrict xp, const float *restrict d,
                                       ptrdiff_t dstride, ptrdiff_t kb, ptrdiff_t mr, ptrdiff_t width, int first,
                                       float beta, float alpha) {
    fm_ig_wtile(W, ldw, xp, 0, d, dstride, kb, mr, 1, width, first, beta, alpha);
}

FM_IG_TARGET static void fm_ig_wtile32(float *W, ptrdiff_t ldw, const float *restrict xp, ptrdiff_t pstride,
                                       const float *restrict d, ptrdiff_t dstride, ptrdiff_t kb, ptrdiff_t mr,
                                       int first, float beta, float alpha) {
    fm_ig_wtile(W, ldw, xp, pstride, d, dstride, kb, mr, 2, 16, first, beta, alpha);
}

/* W[:, i0:i1] = beta W[:, i0:i1] + alpha dY^T x[:, i0:i1]: a first layer's SGD update fed uint8 images.
 * W (O, ldw); dY (B, lddy); x[b, i] = (src[row(b), i] - offset[i]) / scale[i] as in fm_images_gemm_f32.
 * The conversion again is the packing: (b, 16) panels of x straight from the pixels, so the
 * forward pass need not keep the converted batch. beta == 0 ignores W's old values. */
FM_IG_TARGET static void fm_images_wgrad_f32(float *W, ptrdiff_t ldw, ptrdiff_t O, float beta, float alpha,
                                             const float *dY, ptrdiff_t lddy, ptrdiff_t B, const uint8_t *src,
                                             ptrdiff_t src_stride, const int64_t *index, const float *offset,
                                             const float *scale, ptrdiff_t i0, ptrdiff_t i1) {
    float *xp = fm_ig_wpack, *dtail = fm_ig_xpack;
    for (ptrdiff_t ig = i0; ig < i1; ig += FM_IG_NC) {
        ptrdiff_t nc = i1 - ig < FM_IG_NC ? i1 - ig : FM_IG_NC, panels = (nc + 15) / 16;
        for (ptrdiff_t b0 = 0; b0 < B; b0 += FM_IG_KC) {
            ptrdiff_t kb = B - b0 < FM_IG_KC ? B - b0 : FM_IG_KC;
            /* xp[p][b][16] = x[b0 + b, ig + 16p + j]: fm_convert_f32's arithmetic, but 16 values at a time into
             * panels (one call per panel row, not one per 16 values: the calls' overhead dominated). */
            for (ptrdiff_t b = 0; b < kb; b++) {
                ptrdiff_t row = index != NULL ? (ptrdiff_t)index[b0 + b] : b0 + b;
                const uint8_t *s = src + row * src_stride + ig;
                const float *o = offset + ig, *sc = scale != NULL ? scale + ig : NULL;
                for (ptrdiff_t p = 0; p < panels; p++) {
                    ptrdiff_t j0 = 16 * p, width = nc - j0 < 16 ? nc - j0 : 16;
                    __mmask16 m = (__mmask16)((1u << width) - 1u);
                    __m512 v = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, s + j0)));
                    v = _mm512_maskz_sub_ps(m, v, _mm512_maskz_loadu_ps(m, o + j0));
                    if (sc != NULL) v = _mm512_maskz_div_ps(m, v, _mm512_mask_loadu_ps(_mm512_set1_ps(1.0f), m, sc + j0));
                    _mm512_store_ps(xp + (p * kb + b) * 16, v);
                }
            }
            for (ptrdiff_t o0 = 0; o0 < O; o0 += FM_IG_MR_W) {
                ptrdiff_t mr = O - o0 < FM_IG_MR_W ? O - o0 : FM_IG_MR_W;
                const float *d = dY + b0 * lddy + o0;
                ptrdiff_t dstride = lddy;
                if (mr < FM_IG_MR_W) {  /* the last rows of W: dY's columns copied into a zero-padded block */
                    for (ptrdiff_t b = 0; b < kb; b++)
                        for (ptrdiff_t r = 0; r < FM_IG_MR_W; r++)
                            dtail[b * FM_IG_MR_W + r] = r < mr ? dY[(b0 + b) * lddy + o0 + r] : 0.0f;
                    d = dtail;
                    dstride = FM_IG_MR_W;
                }
                ptrdiff_t p = 0;
                for (; 16 * (p + 2) <= nc; p += 2)
                    fm_ig_wtile32(W + o0 * ldw + ig + 16 * p, ldw, xp + p * kb * 16, kb * 16, d, dstride, kb, mr,
                                  b0 == 0, beta, alpha);
                for (; p < panels; p++) {
                    ptrdiff_t width = nc - 16 * p < 16 ? nc - 16 * p : 16;
                    fm_ig_wtile16(W + o0 * ldw + ig + 16 * p, ldw, xp + p * kb * 16, d, dstride, kb, mr, width,
                                  b0 == 0, beta, alpha);
                }
            }
        }
    }
}

#else /* not GCC on x86-64 Linux: never called, fm_images_gemm_available() is 0 */

static void fm_images_gemm_f32(float *Y, ptrdiff_t ldy, float *X, ptrdiff_t ldx, const uint8_t *src,
                               ptrdiff_t src_stride, const int64_t *index, const float *offset, const float *scale,
                               const float *W, ptrdiff_t ldw, ptrdiff_t N, ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t k0,
                               ptrdiff_t k1) {
    (void)Y; (void)ldy; (void)X; (void)ldx; (void)src; (void)src_stride; (void)index; (void)offset; (void)scale;
    (void)W; (void)ldw; (void)N; (void)r0; (void)r1; (void)k0; (void)k1;
}

static void fm_images_wgrad_f32(float *W, ptrdiff_t ldw, ptrdiff_t O, float beta, float alpha, const float *dY,
                                ptrdiff_t lddy, ptrdiff_t B, const uint8_t *src, ptrdiff_t src_stride,
                                const int64_t *index, const float *offset, const float *scale, ptrdiff_t i0,
                                ptrdiff_t i1) {
    (void)W; (void)ldw; (void)O; (void)beta; (void)alpha; (void)dY; (void)lddy; (void)B; (void)src;
    (void)src_stride; (void)index; (void)offset; (void)scale; (void)i0; (void)i1;
}

#endif /* FM_IG_ENABLED */
#endif /* FASTMLP_IMAGES_GEMM_H */
