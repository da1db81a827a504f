// Row-wise sigmoid / tanh and the recurrent GEMM over raw pointers, for the per-step passes of
// the fused LSTM kernels (fused.cpp, lstm_variants.cpp). At small shapes (B*H ~ 512) one ATen call per gate block costs more in
// dispatcher and TensorImpl overhead (~1-3 us) than its arithmetic; these helpers do the same
// math with no Tensor at all.
//
// float32 goes to inlined polynomials within 3 ulp (act512.h on AVX-512, act256.h on AVX2 +
// FMA); float64 calls SLEEF (exported by libtorch_cpu, which dispatches on the CPU at run
// time): sigmoid exactly as ATen's vectorized kernel, 1 / (1 + Sleef_exp*_u10(-x)); tanh through
// SLEEF's 3.5-ulp routine (Sleef_tanh*_u35), 3x faster than the 1-ulp one ATen uses (measured:
// 1.1 vs 3.7 us for 2048 floats, one core); float64 fused vs pure stays ~1e-15. The extension
// is compiled for baseline x86-64, so only these functions are built for AVX2 / AVX-512 (target
// pragmas) and are chosen at run time; elsewhere a scalar std::exp / std::tanh loop runs.
#pragma once
#include <ATen/native/CPUBlas.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "act256.h"
#include "act512.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define RNNKIT_SLEEF 1
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("avx2,fma")
extern "C" {
__m256d Sleef_expd4_u10(__m256d);
__m256d Sleef_tanhd4_u35(__m256d);
}
namespace rnnkit_pw {
// y = f(x) 8 floats (4 doubles) at a time, the tail through a lane mask (the same bits wherever
// a value sits in the row); x == y allowed. float32: act256.h; float64: SLEEF's routines.
template <typename F>
inline void map8(const float* x, float* y, int64_t n, const F& f) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(y + j, f(_mm256_loadu_ps(x + j)));
  if (j < n) {
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n - j)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    _mm256_maskstore_ps(y + j, m, f(_mm256_maskload_ps(x + j, m)));
  }
}
template <typename F>
inline void map4(const double* x, double* y, int64_t n, const F& f) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) _mm256_storeu_pd(y + j, f(_mm256_loadu_pd(x + j)));
  if (j < n) {
    const __m256i m = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n - j), _mm256_setr_epi64x(0, 1, 2, 3));
    _mm256_maskstore_pd(y + j, m, f(_mm256_maskload_pd(x + j, m)));
  }
}
inline void sigmoid_avx2(const float* x, float* y, int64_t n) { map8(x, y, n, rnnkit_act::sigmoid8); }
inline void sigmoid_avx2(const double* x, double* y, int64_t n) {
  map4(x, y, n, [](__m256d v) {
    const __m256d one = _mm256_set1_pd(1.);
    return _mm256_div_pd(one, _mm256_add_pd(one, Sleef_expd4_u10(_mm256_sub_pd(_mm256_setzero_pd(), v))));
  });
}
inline void tanh_avx2(const float* x, float* y, int64_t n) { map8(x, y, n, rnnkit_act::tanh8); }
inline void tanh_avx2(const double* x, double* y, int64_t n) { map4(x, y, n, Sleef_tanhd4_u35); }
}  // namespace rnnkit_pw
#pragma GCC pop_options

// The same on 16 floats (8 doubles) at a time where the CPU has AVX-512: float32 through
// act512.h's inlined polynomials (within 3 ulp; the LSTM family's forward 3-10% faster at
// medium than with SLEEF's routines, benchmarks/RESULTS.md), float64 through SLEEF's avx512f
// routines (also exported by libtorch_cpu; on cores with full-width AVX-512 units twice the
// AVX2 routines' throughput, the same results lane by lane).
#pragma GCC push_options
#pragma GCC target("avx512f")
extern "C" {
__m512d Sleef_expd8_u10avx512f(__m512d);
__m512d Sleef_tanhd8_u35avx512f(__m512d);
}
namespace rnnkit_pw {
// y = f(x) a vector at a time, the tail through a lane mask: a value gives the same bits
// wherever it sits in the row. float32: act512.h's inlined routines; float64: SLEEF's.
template <typename F>
inline void map16(const float* x, float* y, int64_t n, const F& f) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) _mm512_storeu_ps(y + j, f(_mm512_loadu_ps(x + j)));
  if (j < n) {
    const __mmask16 m = __mmask16((1u << (n - j)) - 1);
    _mm512_mask_storeu_ps(y + j, m, f(_mm512_maskz_loadu_ps(m, x + j)));
  }
}
template <typename F>
inline void map8(const double* x, double* y, int64_t n, const F& f) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) _mm512_storeu_pd(y + j, f(_mm512_loadu_pd(x + j)));
  if (j < n) {
    const __mmask8 m = __mmask8((1u << (n - j)) - 1);
    _mm512_mask_storeu_pd(y + j, m, f(_mm512_maskz_loadu_pd(m, x + j)));
  }
}
inline void sigmoid_avx512(const float* x, float* y, int64_t n) { map16(x, y, n, rnnkit_act::sigmoid16); }
inline void sigmoid_avx512(const double* x, double* y, int64_t n) {
  map8(x, y, n, [](__m512d v) {
    const __m512d one = _mm512_set1_pd(1.);
    return _mm512_div_pd(one, _mm512_add_pd(one, Sleef_expd8_u10avx512f(_mm512_sub_pd(_mm512_setzero_pd(), v))));
  });
}
inline void tanh_avx512(const float* x, float* y, int64_t n) { map16(x, y, n, rnnkit_act::tanh16); }
inline void tanh_avx512(const double* x, double* y, int64_t n) { map8(x, y, n, Sleef_tanhd8_u35avx512f); }
}  // namespace rnnkit_pw
#pragma GCC pop_options
#endif

namespace rnnkit_pw {

// RNNKIT_NO_AVX512=1 / RNNKIT_NO_AVX2=1 (read once per process) make a CPU that has them take the
// AVX2 paths / the scalar ones (those every other CPU runs, an ARM one too), so that tests can
// run them here (tests/fused/test_activations.py).
inline bool env_off(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::string(v) != "0";
}
inline bool has_avx2() {  // with FMA (every AVX2 CPU in practice): act256.h and the row passes use it
#ifdef RNNKIT_SLEEF
  static const bool ok =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && !env_off("RNNKIT_NO_AVX2");
  return ok;
#else
  return false;
#endif
}
inline bool has_avx512() {
#ifdef RNNKIT_SLEEF
  static const bool ok = __builtin_cpu_supports("avx512f") && has_avx2() && !env_off("RNNKIT_NO_AVX512");
  return ok;
#else
  return false;
#endif
}

template <typename T>
inline void sigmoid(const T* x, T* y, int64_t n) {
#ifdef RNNKIT_SLEEF
  if (has_avx512()) return sigmoid_avx512(x, y, n);
  if (has_avx2()) return sigmoid_avx2(x, y, n);
#endif
  for (int64_t j = 0; j < n; ++j) y[j] = T(1) / (T(1) + std::exp(-x[j]));
}

template <typename T>
inline void tanh(const T* x, T* y, int64_t n) {
#ifdef RNNKIT_SLEEF
  if (has_avx512()) return tanh_avx512(x, y, n);
  if (has_avx2()) return tanh_avx2(x, y, n);
#endif
  for (int64_t j = 0; j < n; ++j) y[j] = std::tanh(x[j]);
}

// Prefetch n values from p into the cache (one request per 64-byte line).
template <typename T>
inline void prefetch(const T* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t k = 0; k < n * int64_t(sizeof(T)); k += 64) __builtin_prefetch(c + k, 0, 2);
}

// ATen's scalar lerp: self + w (end - self), from the other end when |w| >= 1/2. Both ends are
// computed and one is picked by a bit mask, not a branch: zoneout's weights in training are
// random 0/1 masks, a data-dependent branch per element (GCC sinks a plain ?: back into one).
template <typename T>
inline T lerp(T self, T end, T w) {
  using U = std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t>;
  const T d = end - self, lo = self + w * d, hi = end - d * (T(1) - w);
  const U near = U(0) - U(std::abs(w) < T(0.5));  // all ones where ATen takes self + w d
  return std::bit_cast<T>((std::bit_cast<U>(lo) & near) | (std::bit_cast<U>(hi) & ~near));
}

// dst = gout + dh_next over n values (the LSTM backward's dL/dh of a step). With zoneout on h
// (zh not null), h_t = lerp(h~_t, h_{t-1}, zh): dst = dL/dh~ = t - t zh, and the direct part
// t zh goes to dhz. dhb null: t = gout alone.
template <typename T>
inline void dh_step(int64_t n, const T* go, const T* dhb, const T* zh, T* dhz, T* dst) {
  for (int64_t k = 0; k < n; ++k) {
    const T t = dhb ? go[k] + dhb[k] : go[k];
    if (zh) {
      const T z = t * zh[k];
      dhz[k] = z;
      dst[k] = t - z;
    } else {
      dst[k] = t;
    }
  }
}

// Column-major BLAS (MKL's, exported by libtorch_cpu: the routine addmm/mm end in for float32 /
// float64 when oneDNN is not used). Called directly on raw pointers in the LSTM step loop: at
// 8x64x256 the GEMM itself takes ~1 us, the addmm/mm call around it (narrow views, dispatch,
// output checks) several more.
}  // namespace rnnkit_pw
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*);
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
            const int*, const double*, const int*, const double*, double*, const int*);
}
namespace rnnkit_pw {
inline void blas_gemm(char ta, char tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
                      int ldb, float beta, float* c, int ldc) {
  sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}
inline void blas_gemm(char ta, char tb, int m, int n, int k, double alpha, const double* a, int lda,
                      const double* b, int ldb, double beta, double* c, int ldc) {
  dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}
// Row-major C (n, m) = beta C + X (n, k) W^T for W (m, k), all dense (wt: W^T, (k, m), dense,
// used by the float32 kernel): in column-major terms C^T = W^T' X^T with W read as (k, m).
// float32 goes to oneDNN's brgemm micro-kernel (at::native::cpublas::brgemm, JIT-compiled once
// per shape and cached by ATen; it falls back to cpublas::gemm where the CPU lacks it): at
// 8x64 -> 256 it takes 1.3 us against 3.8 us for MKL's sgemm_ (one core), same results.
// float64 (no brgemm) goes to dgemm_.
inline void gemm_xwt(const double* x, const double* w, const double*, double* c, int64_t n, int64_t m, int64_t k,
                     double beta) {
  blas_gemm('T', 'N', int(m), int(n), int(k), 1., w, int(k), x, int(k), beta, c, int(m));
}
inline void gemm_xwt(const float* x, const float*, const float* wt, float* c, int64_t n, int64_t m, int64_t k,
                     float beta) {
  at::native::cpublas::brgemm(n, m, k, k, m, m, beta != 0.f, x, wt, c, false);
}
// Row-major C (n, m) = X (n, k) W for W (k, m), all dense.
inline void gemm_xw(const double* x, const double* w, double* c, int64_t n, int64_t m, int64_t k) {
  blas_gemm('N', 'N', int(m), int(n), int(k), 1., w, int(m), x, int(k), 0., c, int(m));
}
inline void gemm_xw(const float* x, const float* w, float* c, int64_t n, int64_t m, int64_t k) {
  at::native::cpublas::brgemm(n, m, k, k, m, m, false, x, w, c, false);
}

}  // namespace rnnkit_pw
