/* A branch-free exp, and the tanh built on it, for float64 and float32 that GCC vectorises: the softmax
 * and logistic heads and the tanh and logistic activations use them.
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

/* The parts of exp for T, named with SFX (U the unsigned integer of T's width, MANT its mantissa bits,
 * BIAS its exponent bias, SHIFT = 1.5 * 2^MANT: adding it rounds to an integer; LN2_HI has few enough
 * bits that n LN2_HI is exact):
 * - fm_round_SFX(x): x rounded to an integer (|x| < 2^(MANT - 1));
 * - fm_reduce_SFX(x, &r): n = round(x / ln2), returned as a T, and r = x - n ln2;
 * - fm_expm1_small_SFX(r): exp(r) - 1 for |r| <= 0.36 (Horner's scheme, a fixed count GCC unrolls);
 * - fm_pow2_SFX(n): 2^n for an integer-valued n with n + BIAS in [1, 2 BIAS] (built in the exponent bits:
 *   the shifter's bits leave the word, the biased exponent lands in its field). */
#define FM_DEFINE_EXP_PARTS(T, U, SFX, TAYLOR, MANT, BIAS, SHIFT, LOG2E, LN2_HI, LN2_LO)                    \
    static inline FM_ALWAYS_INLINE T fm_round_##SFX(T x) { return (x + SHIFT) - SHIFT; }                    \
    static inline FM_ALWAYS_INLINE T fm_reduce_##SFX(T x, T *r) {                                           \
        T n = fm_round_##SFX(x * LOG2E);                                                                    \
        *r = x - n * LN2_HI;                                                                                \
        *r = *r - n * LN2_LO;                                                                               \
        return n;                                                                                           \
    }                                                                                                       \
    static inline FM_ALWAYS_INLINE T fm_expm1_small_##SFX(T r) {                                            \
        T p = TAYLOR[0];                                                                                    \
        for (size_t k = 1; k < sizeof TAYLOR / sizeof TAYLOR[0]; k++) p = p * r + TAYLOR[k];               \
        return r + r * r * p;                                                                               \
    }                                                                                                       \
    static inline FM_ALWAYS_INLINE T fm_pow2_##SFX(T n) {                                                   \
        T s = n + (SHIFT + (T)BIAS); /* the biased exponent n + BIAS in the low mantissa bits */            \
        U b;                                                                                                \
        memcpy(&b, &s, sizeof b);                                                                           \
        b <<= MANT;                                                                                         \
        memcpy(&s, &b, sizeof s);                                                                           \
        return s;                                                                                           \
    }

/* ln2_hi: 33 significant bits (double), 9 (float). */
FM_DEFINE_EXP_PARTS(double, uint64_t, f64, fm_exp_taylor_f64, 52, 1023, 0x1.8p52, 0x1.71547652b82fep0,
                    0x1.62e42fee00000p-1, 0x1.a39ef35793c76p-33)
FM_DEFINE_EXP_PARTS(float, uint32_t, f32, fm_exp_taylor_f32, 23, 127, 0x1.8p23f, 0x1.715476p0f, 0x1.63p-1f,
                    -0x1.bd0106p-13f)

/* fm_exp1_SFX(x) = exp(x); max error 1 ulp against the correctly rounded exp (tests/test_exp.py).
 * X_MAX: an x whose exp overflows; X_MIN: one whose exp is below half the smallest subnormal (so the
 * clamps change no result). After them n lies within [X_MIN LOG2E - 1, X_MAX LOG2E + 1], and
 * n1 = round(n / 2) and n2 = n - n1 are both normal exponents. */
#define FM_DEFINE_EXP1(T, SFX, X_MAX, X_MIN)                                                                \
    static inline FM_ALWAYS_INLINE T fm_exp1_##SFX(T x) {                                                   \
        T n, r, n1;                                                                                         \
        x = x > X_MAX ? X_MAX : x;                                                                          \
        x = x < X_MIN ? X_MIN : x;                                                                          \
        n = fm_reduce_##SFX(x, &r);                                                                         \
        n1 = fm_round_##SFX(n * (T)0.5);                                                                    \
        return ((T)1 + fm_expm1_small_##SFX(r)) * fm_pow2_##SFX(n1) * fm_pow2_##SFX(n - n1);                \
    }
FM_DEFINE_EXP1(double, f64, 710.0, -746.0)
FM_DEFINE_EXP1(float, f32, 89.0f, -104.0f)

/* fm_tanh1_SFX(x) = tanh(x) = sign(x) t / (t + 2) with t = expm1(2 |x|) = 2^n (1 + q) - 1, q = expm1(r):
 * for small |x| (n = 0) t is q itself, so no 1 - e cancellation loses its digits. Y_MAX: a 2 |x| beyond
 * which tanh rounds to 1 (the clamp keeps t finite); SIGN: the sign bit of U. NaN stays NaN, tanh(-0) = -0.
 * Max error 2.5 ulp of the exact tanh (tests/test_exp.py). */
#define FM_DEFINE_TANH1(T, U, SFX, Y_MAX, SIGN)                                                             \
    static inline FM_ALWAYS_INLINE T fm_tanh1_##SFX(T x) {                                                  \
        T y, n, r, s, t;                                                                                    \
        U bx, bt;                                                                                           \
        y = x < 0 ? (T)-2 * x : (T)2 * x;                                                                   \
        y = y > Y_MAX ? Y_MAX : y;                                                                          \
        n = fm_reduce_##SFX(y, &r);                                                                         \
        s = fm_pow2_##SFX(n);                                                                               \
        t = s * fm_expm1_small_##SFX(r) + (s - (T)1);                                                       \
        t = t / (t + (T)2);                                                                                 \
        memcpy(&bx, &x, sizeof bx);                                                                         \
        memcpy(&bt, &t, sizeof bt);                                                                         \
        bt |= bx & SIGN;                                                                                    \
        memcpy(&t, &bt, sizeof t);                                                                          \
        return t;                                                                                           \
    }
FM_DEFINE_TANH1(double, uint64_t, f64, 40.0, 0x8000000000000000u)
FM_DEFINE_TANH1(float, uint32_t, f32, 20.0f, 0x80000000u)

#endif /* FASTMLP_EXP_H */
