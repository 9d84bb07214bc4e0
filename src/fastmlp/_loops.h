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

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "_exp.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FM_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
/* For the loops that inline _exp.h: no kernel reads the floating-point exception flags, and without
 * this GCC will not compute both sides of a floating-point branch, which its vectoriser needs. */
#define FM_NO_TRAPS __attribute__((optimize("no-trapping-math")))
#else
#define FM_CLONES
#define FM_NO_TRAPS
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

/* out[j] = exp(x[j]) (fm_exp1_f32 / fm_exp1_f64 of _exp.h, vectorised); out may be x. */
#define FM_DEFINE_EXP(T, NAME, EXP1)                                                 \
    FM_CLONES FM_NO_TRAPS static void NAME(T *out, const T *x, ptrdiff_t n) {        \
        for (ptrdiff_t j = 0; j < n; j++) out[j] = EXP1(x[j]);                       \
    }
FM_DEFINE_EXP(float, fm_exp_f32, fm_exp1_f32)
FM_DEFINE_EXP(double, fm_exp_f64, fm_exp1_f64)

/* Activation codes, shared with _kernels.pyx (its ACTIVATIONS names them). */
#define FM_ACT_IDENTITY 0
#define FM_ACT_RELU 1
#define FM_ACT_TANH 2
#define FM_ACT_LOGISTIC 3

/* c[j] *= act'(y[j]) written through the activation's output y: the ReLU's (y > 0; NaN masks to 0),
 * tanh's 1 - y^2, the logistic's y (1 - y); nothing for the identity. */
#define FM_DEFINE_ACT_GRAD(T, NAME)                                                                 \
    FM_CLONES static void NAME(T *restrict c, const T *restrict y, int act, ptrdiff_t n) {          \
        if (act == FM_ACT_RELU)                                                                     \
            for (ptrdiff_t j = 0; j < n; j++) c[j] = y[j] > 0 ? c[j] : (T)0;                        \
        else if (act == FM_ACT_TANH)                                                                \
            for (ptrdiff_t j = 0; j < n; j++) c[j] = c[j] * ((T)1 - y[j] * y[j]);                   \
        else if (act == FM_ACT_LOGISTIC)                                                            \
            for (ptrdiff_t j = 0; j < n; j++) c[j] = c[j] * (y[j] * ((T)1 - y[j]));                 \
    }
FM_DEFINE_ACT_GRAD(float, fm_act_grad_f32)
FM_DEFINE_ACT_GRAD(double, fm_act_grad_f64)

/* y[j] += x[j]. */
#define FM_DEFINE_ADD(T, NAME)                                                               \
    FM_CLONES static void NAME(T *restrict y, const T *restrict x, ptrdiff_t n) {            \
        for (ptrdiff_t j = 0; j < n; j++) y[j] += x[j];                                      \
    }
FM_DEFINE_ADD(float, fm_add_f32)
FM_DEFINE_ADD(double, fm_add_f64)

/* y[j] = act(y[j] + b[j]), act one of the FM_ACT_ codes; b may be NULL. NaN stays NaN. tanh and the
 * logistic's exp are _exp.h's, vectorised. The logistic takes exp of -|y| only, so it neither overflows
 * nor loses the small side's precision. */
#define FM_DEFINE_BIAS_ACT(T, NAME, EXP, TANH)                                                        \
    FM_CLONES FM_NO_TRAPS static void NAME(T *restrict y, const T *restrict b, int act, ptrdiff_t n) { \
        if (b != NULL)                                                                                \
            for (ptrdiff_t j = 0; j < n; j++) y[j] += b[j];                                           \
        if (act == FM_ACT_RELU)                                                                       \
            for (ptrdiff_t j = 0; j < n; j++) y[j] = (y[j] > 0 || y[j] != y[j]) ? y[j] : (T)0;        \
        else if (act == FM_ACT_TANH)                                                                  \
            for (ptrdiff_t j = 0; j < n; j++) y[j] = TANH(y[j]);                                      \
        else if (act == FM_ACT_LOGISTIC)                                                              \
            for (ptrdiff_t j = 0; j < n; j++) {                                                       \
                T e = EXP(y[j] > 0 ? -y[j] : y[j]);                                                   \
                y[j] = y[j] > 0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e);                                 \
            }                                                                                         \
    }
FM_DEFINE_BIAS_ACT(float, fm_bias_act_f32, fm_exp1_f32, fm_tanh1_f32)
FM_DEFINE_BIAS_ACT(double, fm_bias_act_f64, fm_exp1_f64, fm_tanh1_f64)

/* One optimizer update of n values of w from their gradient g, weight decay wd added to g first
 * (g' = g + wd w). SGD (PyTorch's convention): v <- mu v + g'; w <- w - lr (g' + mu v if nesterov else v);
 * v NULL (momentum 0): w <- w - lr g'. Adam: m <- b1 m + (1 - b1) g'; v <- b2 v + (1 - b2) g'^2;
 * w <- w - step m / (sqrt(v) inv_bc2 + eps), step = lr / (1 - b1^t) and inv_bc2 = 1 / sqrt(1 - b2^t)
 * computed once by the caller. (setup.py builds without errno for the maths functions, so GCC
 * vectorises the square root.) */
#define FM_DEFINE_SGD(T, NAME)                                                                        \
    FM_CLONES static void NAME(T *restrict w, const T *restrict g, T *restrict v, ptrdiff_t n, T lr, T mu, \
                               int nesterov, T wd) {                                                  \
        if (v == NULL) {                                                                              \
            for (ptrdiff_t j = 0; j < n; j++) w[j] = w[j] - lr * (g[j] + wd * w[j]);                  \
        } else {                                                                                      \
            for (ptrdiff_t j = 0; j < n; j++) {                                                       \
                T gj = g[j] + wd * w[j];                                                              \
                T vj = mu * v[j] + gj;                                                                \
                v[j] = vj;                                                                            \
                w[j] = w[j] - lr * (nesterov ? gj + mu * vj : vj);                                    \
            }                                                                                         \
        }                                                                                             \
    }
FM_DEFINE_SGD(float, fm_sgd_f32)
FM_DEFINE_SGD(double, fm_sgd_f64)

#define FM_DEFINE_ADAM(T, NAME, SQRT)                                                                 \
    FM_CLONES static void NAME(T *restrict w, const T *restrict g, T *restrict m, T *restrict v, ptrdiff_t n, \
                               T step, T inv_bc2, T b1, T b2, T eps, T wd) {                          \
        for (ptrdiff_t j = 0; j < n; j++) {                                                           \
            T gj = g[j] + wd * w[j];                                                                  \
            T mj = b1 * m[j] + (1 - b1) * gj;                                                         \
            T vj = b2 * v[j] + (1 - b2) * gj * gj;                                                    \
            m[j] = mj;                                                                                \
            v[j] = vj;                                                                                \
            w[j] = w[j] - step * mj / (SQRT(vj) * inv_bc2 + eps);                                     \
        }                                                                                             \
    }
FM_DEFINE_ADAM(float, fm_adam_f32, sqrtf)
FM_DEFINE_ADAM(double, fm_adam_f64, sqrt)

#endif /* FASTMLP_LOOPS_H */
