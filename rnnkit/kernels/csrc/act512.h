// float32 exp, σ and tanh on 16 lanes (AVX-512F), inlined into the fused kernels' row passes.
//
// SLEEF's routines (what ATen's vectorized kernels call) are out-of-line calls with their own
// range handling, and σ = 1 / (1 + e^-x) paid a full-precision division; in a perf profile of
// the medium LSTM forward SLEEF's tanh and exp took ~5% of the cycles and the row pass around
// them (divisions included) ~11%, where oneDNN's JIT-compiled LSTM inlines its activations.
// Here (oneDNN's approach, our own polynomials, fitted by weighted least squares towards
// minimax in float64; the constants in act_coeffs.h):
//
//   e^x   = 2^n (1 + r + r² P(r)),  n = round(x / ln 2),  r = x - n ln 2 (two-part ln 2), deg P = 5
//   1 / d = r0 + r0 (1 - d r0),     r0 = rcp14(d): one Newton step from 14 bits to ~28
//   σ(x)  = 1 / (1 + e^-x)
//   tanh  = x + x³ R(x²) for |x| < 0.625 (deg R = 4, no cancellation near 0),
//           else sign(x) (1 - 2 / (1 + e^2|x|))
//
// Accuracy against float64 over [-100, 100] and special values (tests/fused/test_activations.py):
// σ and tanh within 3 ulp of the rounded exact value (measured the same way: ATen's float32 σ
// 2.5 ulp, its tanh 0.5; SLEEF's tanh_u35 is specified within 3.5). NaN propagates
// (vmaxps/vminps return their second operand, x, when it is NaN); tanh(±inf) = ±1,
// σ(+inf) = 1; σ(x) = 0 at and below x = kSigmoidZero (-88.7228), as ATen's float32 σ, whose e^-x
// overflows there (from there to -88.7, where the clamp keeps 1 + e^-x finite, σ(x) stays at
// σ(-88.7) ≈ 3e-39, a subnormal). float64 keeps SLEEF (pointwise.h): the
// float64 tests hold the fused kernels to ~1e-15 of the reference loop.
#pragma once
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include "act_coeffs.h"

#pragma GCC push_options
#pragma GCC target("avx512f")
namespace rnnkit_act {

inline __m512 exp16(__m512 x) {
  // e^-103.9 underflows through the subnormals like expf; e^88.7 stays finite, so 1 + e^x never
  // reaches inf (rcp16(inf) would make 0 * inf = NaN)
  x = _mm512_min_ps(_mm512_set1_ps(88.7f), _mm512_max_ps(_mm512_set1_ps(-103.9f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);  // ln 2, high bits exact
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);      // ln 2, the rest
  __m512 p = _mm512_set1_ps(kExpP[0]);
  for (int k = 1; k < 6; ++k) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP[k]));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);  // r + r² P(r)
  return _mm512_scalef_ps(_mm512_add_ps(p, _mm512_set1_ps(1.f)), n);
}

inline __m512 rcp16(__m512 d) {
  const __m512 r = _mm512_rcp14_ps(d);
  return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.f)), r);  // r0 + r0 (1 - d r0)
}

inline __m512 sigmoid16(__m512 x) {
  const __m512 s = rcp16(_mm512_add_ps(_mm512_set1_ps(1.f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
  // 0 at and below -88.7228, where ATen's 1 / (1 + e^-x) is 1 / inf (exp16's clamp would leave
  // 3e-39): a GRU state of ±inf then gives gates of exactly 0, whose 0 ⊙ inf is torch's NaN.
  // s kept where x > kSigmoidZero or x is NaN (NLE: not <=, unordered true)
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(kSigmoidZero), _CMP_NLE_UQ), s);
}

inline __m512 tanh16(__m512 x) {
  // on |x|, the sign put back at the end (so tanh(-0) = -0)
  const __m512 a = _mm512_abs_ps(x), u = _mm512_mul_ps(x, x);
  __m512 q = _mm512_set1_ps(kTanhR[0]);
  for (int k = 1; k < 5; ++k) q = _mm512_fmadd_ps(q, u, _mm512_set1_ps(kTanhR[k]));
  const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(a, u), q, a);
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 e2a = exp16(_mm512_add_ps(a, a));
  const __m512 big = _mm512_fnmadd_ps(_mm512_set1_ps(2.f), rcp16(_mm512_add_ps(one, e2a)), one);
  const __mmask16 near0 = _mm512_cmp_ps_mask(a, _mm512_set1_ps(kTanhSmall), _CMP_LT_OQ);
  const __m512 t = _mm512_mask_blend_ps(near0, big, small);
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(int(0x80000000u)));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(t), sign));
}

}  // namespace rnnkit_act
#pragma GCC pop_options
#endif
