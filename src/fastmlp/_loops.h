/* fastmlp's elementwise inner loops, compiled once per x86-64 level and picked at load time.
 *
 * The extension is built for the baseline x86-64 (SSE2) so that it runs anywhere;
 * these loops are cloned for x86-64-v3 (AVX2) and x86-64-v4 (AVX-512) with GCC's
 * target_clones, and the dynamic loader picks the best clone for the CPU it runs
 * on. Each function handles one row (or one contiguous run): the Cython kernels
 * keep the indexing, the threading and the checks.
 */
#ifndef FASTMLP_LOOPS_H
#define FASTMLP_LOOPS_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FM_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FM_CLONES
#endif

/* out[j] = (float(src[j]) - offset[j]) / scale[j], or without the division when scale is NULL. */
#define FM_DEFINE_CONVERT(T, NAME)                                                                   \
    FM_CLONES static void NAME(T *restrict out, const uint8_t *restrict src, const T *restrict offset, \
                               const T *restrict scale, ptrdiff_t n) {                              \
        if (scale == NULL) {                                                                         \
            for (ptrdiff_t j = 0; j < n; j++) out[j] = (T)src[j] - offset[j];                        \
        } else {                                                                                     \
            for (ptrdiff_t j = 0; j < n; j++) out[j] = ((T)src[j] - offset[j]) / scale[j];           \
        }                                                                                            \
    }
FM_DEFINE_CONVERT(float, fm_convert_f32)
FM_DEFINE_CONVERT(double, fm_convert_f64)

/* acc[j] += src[j]: uint8 pixels counted into 32-bit sums (exact for up to 2^24 rows). */
FM_CLONES static void fm_add_u8_u32(uint32_t *restrict acc, const uint8_t *restrict src, ptrdiff_t n) {
    for (ptrdiff_t j = 0; j < n; j++) acc[j] += src[j];
}

/* c[j] = 0 where not (mask[j] > 0): a ReLU's derivative, mask being the ReLU's output (NaN masks to 0). */
#define FM_DEFINE_MASK(T, NAME)                                                              \
    FM_CLONES static void NAME(T *restrict c, const T *restrict mask, ptrdiff_t n) {         \
        for (ptrdiff_t j = 0; j < n; j++) c[j] = mask[j] > 0 ? c[j] : (T)0;                  \
    }
FM_DEFINE_MASK(float, fm_relu_mask_f32)
FM_DEFINE_MASK(double, fm_relu_mask_f64)

/* y[j] += x[j]. */
#define FM_DEFINE_ADD(T, NAME)                                                               \
    FM_CLONES static void NAME(T *restrict y, const T *restrict x, ptrdiff_t n) {            \
        for (ptrdiff_t j = 0; j < n; j++) y[j] += x[j];                                      \
    }
FM_DEFINE_ADD(float, fm_add_f32)
FM_DEFINE_ADD(double, fm_add_f64)

/* y[j] = act(y[j] + b[j]) with act the ReLU if relu (NaN stays NaN) or the identity; b may be NULL. */
#define FM_DEFINE_BIAS_ACT(T, NAME)                                                                   \
    FM_CLONES static void NAME(T *restrict y, const T *restrict b, int relu, ptrdiff_t n) {          \
        if (b != NULL)                                                                                \
            for (ptrdiff_t j = 0; j < n; j++) y[j] += b[j];                                           \
        if (relu)                                                                                     \
            for (ptrdiff_t j = 0; j < n; j++) y[j] = (y[j] > 0 || y[j] != y[j]) ? y[j] : (T)0;        \
    }
FM_DEFINE_BIAS_ACT(float, fm_bias_act_f32)
FM_DEFINE_BIAS_ACT(double, fm_bias_act_f64)

#endif /* FASTMLP_LOOPS_H */
