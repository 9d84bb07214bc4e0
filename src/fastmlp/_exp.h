/* A branch-free exp for float64 and float32 that GCC vectorises, for the softmax and logistic kernels.
 *
 * The textbook method: x = n ln2 + r with n the integer nearest x / ln2 (found by adding and
 * subtracting a shifter that pushes the fraction out of the mantissa) and |r| <= ln2 / 2 (a hair more
 * when the product x / ln2 rounds the wrong way), r computed as x - n ln2_hi - n ln2_lo where ln2_hi has
 * few enough bits that n ln2_hi is exact; exp(r) from its Taylor polynomial (degree 13 for float64,
 * 8 for float32: the truncation error stays far below half an ulp over |r| <= 0.36); and 2^n built in
 * the exponent bits. 2^n is applied as two factors 2^n1 2^n2, each a normal number, so that results
 * that overflow become +inf and results in the subnormal range are rounded once by the last
 * multiplication instead of being lost. The input is clamped first to a range just wider than the one
 * where exp is finite and nonzero, which keeps n small; the clamps let NaN through (a comparison with
 * NaN is false) and NaN then propagates through the arithmetic. +inf clamps to a value whose exp
 * overflows, -inf to one whose exp rounds to 0, and exp(0) is 1 exactly (n = 0, r = 0).
 *
 * The per-element functions are always inlined and have no target of their own, so each caller compiled
 * for an x86-64 level (the FM_CLONES loops of _loops.h) vectorises its loop for that level. The clamps
 * are branches GCC turns into selects only where floating-point operations may be assumed not to trap
 * (FM_NO_TRAPS): with the default -ftrapping-math it keeps the loop scalar.
 */
#ifndef FASTMLP_EXP_H
#define FASTMLP_EXP_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The callers that vectorise these functions are built with no-trapping-math (FM_NO_TRAPS of _loops.h),
 * which GCC will not inline a function of the default options into unless told to. */
#if defined(__GNUC__)
#define FM_ALWAYS_INLINE __attribute__((always_inline))
#else
#define FM_ALWAYS_INLINE
#endif

/* The Taylor coefficients 1/k! of exp(r) from the highest degree down to k = 2 (13 for double, 8 for
 * float), for |r| <= 0.36. */
static const double fm_exp_taylor_f64[] = {
    1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0,
    1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5};
static const float fm_exp_taylor_f32[] = {1.0f / 40320.0f, 1.0f / 5040.0f, 1.0f / 720.0f, 1.0f / 120.0f,
                                          1.0f / 24.0f, 1.0f / 6.0f, 0.5f};

/* NAME(x) = exp(x) for T (U its unsigned integer of the same width, MANT its mantissa bits, BIAS its
 * exponent bias). X_MAX: an x whose exp overflows; X_MIN: one whose exp is below half the smallest
 * subnormal (so the clamps change no result). SHIFT = 1.5 * 2^MANT: adding it rounds to an integer.
 * LN2_HI has few enough bits that n LN2_HI is exact. After the clamps n lies within
 * [X_MIN LOG2E - 1, X_MAX LOG2E + 1]; n1 = round(n / 2) and n2 = n - n1 are both normal exponents. */
#define FM_DEFINE_EXP1(T, U, NAME, TAYLOR, MANT, BIAS, X_MAX, X_MIN, SHIFT, LOG2E, LN2_HI, LN2_LO)           \
    static inline FM_ALWAYS_INLINE T NAME(T x) {                                                            \
        T n, r, p, n1, s1, s2;                                                                              \
        U b1, b2;                                                                                           \
        x = x > X_MAX ? X_MAX : x;                                                                          \
        x = x < X_MIN ? X_MIN : x;                                                                          \
        n = (x * LOG2E + SHIFT) - SHIFT;                                                                    \
        r = x - n * LN2_HI;                                                                                 \
        r = r - n * LN2_LO;                                                                                 \
        p = TAYLOR[0]; /* Horner's scheme (a fixed count GCC unrolls), the small terms summed before the 1 */ \
        for (size_t k = 1; k < sizeof TAYLOR / sizeof TAYLOR[0]; k++) p = p * r + TAYLOR[k];              \
        p = (T)1 + (r + r * r * p);                                                                         \
        n1 = (n * (T)0.5 + SHIFT) - SHIFT;                                                                  \
        s1 = n1 + (SHIFT + (T)BIAS); /* the biased exponent n1 + BIAS in the low mantissa bits */          \
        s2 = (n - n1) + (SHIFT + (T)BIAS);                                                                  \
        memcpy(&b1, &s1, sizeof b1);                                                                        \
        memcpy(&b2, &s2, sizeof b2);                                                                        \
        b1 <<= MANT; /* the shifter's bits leave the word; the biased exponent lands in its field */       \
        b2 <<= MANT;                                                                                        \
        memcpy(&s1, &b1, sizeof s1);                                                                        \
        memcpy(&s2, &b2, sizeof s2);                                                                        \
        return p * s1 * s2;                                                                                 \
    }

/* Max error 1 ulp against the correctly rounded exp (tests/test_exp.py). ln2_hi: 33 significant bits
 * (double), 9 (float). */
FM_DEFINE_EXP1(double, uint64_t, fm_exp1_f64, fm_exp_taylor_f64, 52, 1023, 710.0, -746.0, 0x1.8p52,
               0x1.71547652b82fep0, 0x1.62e42fee00000p-1, 0x1.a39ef35793c76p-33)
FM_DEFINE_EXP1(float, uint32_t, fm_exp1_f32, fm_exp_taylor_f32, 23, 127, 89.0f, -104.0f, 0x1.8p23f,
               0x1.715476p0f, 0x1.63p-1f, -0x1.bd0106p-13f)

#endif /* FASTMLP_EXP_H */
