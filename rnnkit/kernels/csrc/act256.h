// act512.h's float32 exp, σ and tanh on 8 lanes, for CPUs with AVX2 and FMA but no AVX-512
// (Zen 2/3, most client Intel cores): the same polynomials and the same accuracy bound (within
// 3 ulp, tests/fused/test_activations.py, run here with RNNKIT_NO_AVX512=1). AVX2 has no
// scalef and only a 12-bit rcp, so 2^n is built in the exponent bits (the clamp keeps n in
// [-126, 127]) and σ divides.
#pragma once
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include "act_coeffs.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace rnnkit_act {

inline __m256 exp8(__m256 x) {
  // [-87.3, 88.3]: 2^n stays a normal float and 1 + e^x finite; NaN passes (second operand)
  x = _mm256_min_ps(_mm256_set1_ps(88.3f), _mm256_max_ps(_mm256_set1_ps(-87.3f), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);  // ln 2, high bits exact
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);      // ln 2, the rest
  __m256 p = _mm256_set1_ps(kExpP[0]);
  for (int k = 1; k < 6; ++k) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP[k]));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);  // r + r² P(r)
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(_mm256_add_ps(p, _mm256_set1_ps(1.f)), _mm256_castsi256_ps(e));
}

inline __m256 sigmoid8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.f);
  const __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
  // 0 at and below -88.7228 as ATen's (act512.h's sigmoid16); NaN x kept (NLE: unordered true)
  return _mm256_and_ps(s, _mm256_cmp_ps(x, _mm256_set1_ps(kSigmoidZero), _CMP_NLE_UQ));
}

inline __m256 tanh8(__m256 x) {
  const __m256 sign_bit = _mm256_set1_ps(-0.f);
  const __m256 a = _mm256_andnot_ps(sign_bit, x), u = _mm256_mul_ps(x, x), one = _mm256_set1_ps(1.f);
  __m256 q = _mm256_set1_ps(kTanhR[0]);
  for (int k = 1; k < 5; ++k) q = _mm256_fmadd_ps(q, u, _mm256_set1_ps(kTanhR[k]));
  const __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(a, u), q, a);
  const __m256 big = _mm256_sub_ps(
      one, _mm256_div_ps(_mm256_set1_ps(2.f), _mm256_add_ps(one, exp8(_mm256_add_ps(a, a)))));
  const __m256 t = _mm256_blendv_ps(big, small, _mm256_cmp_ps(a, _mm256_set1_ps(kTanhSmall), _CMP_LT_OQ));
  return _mm256_or_ps(t, _mm256_and_ps(sign_bit, x));
}

}  // namespace rnnkit_act
#pragma GCC pop_options
#endif
