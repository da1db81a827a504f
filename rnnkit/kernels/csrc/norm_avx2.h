// AVX2 row kernels of layer norm (forward statistics and affine, backward) for norm_kernels.h.
// The extension is compiled for baseline x86-64 (SSE2: 4 floats a vector, and the float64
// sums of the row statistics stay scalar), so, as pointwise.h does for sigmoid/tanh, only these
// functions are built for AVX2 (target pragma) and chosen at run time (rnnkit_pw::has_avx2());
// no FMA, so each value is the same arithmetic as the scalar loop, only the order of the float64
// partial sums differs. At the medium shape they made the layer norm of a step ~3x faster.
#pragma once
#include "pointwise.h"

#ifdef RNNKIT_SLEEF
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("avx2")
namespace rnnkit_norm_avx2 {
inline double hsum(__m256d a) {
  const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}
// four values of a row as float64
inline __m256d ld4(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }
inline __m256d ld4(const double* p) { return _mm256_loadu_pd(p); }
inline void st4(double* p, __m256d v) { _mm256_storeu_pd(p, v); }
inline void st4(float* p, __m256d v) { _mm_storeu_ps(p, _mm256_cvtpd_ps(v)); }  // rounded to nearest, as T(v)
// a ⊙ b rounded to the row's type, as float64
inline __m256d mul4(const float* a, const float* b) {
  return _mm256_cvtps_pd(_mm_mul_ps(_mm_loadu_ps(a), _mm_loadu_ps(b)));
}
inline __m256d mul4(const double* a, const double* b) { return _mm256_mul_pd(_mm256_loadu_pd(a), _mm256_loadu_pd(b)); }

// Layer norm's row statistics in one pass: s1 = Σ (r - r₀), s2 = Σ (r - r₀)² (float64, 8 partial
// sums each), r₀ the row's first value (the shifted-data variance, as batch norm's col_shifted:
// μ = r₀ + s1 / F, σ² = s2 / F - (s1 / F)²). Two passes before (Σ r, then Σ (r - μ)²): the
// statistics were ~6% of the layer-norm LSTM's forward.
template <typename T>
void shifted_sums(const T* r, int64_t F, double& s1, double& s2) {
  const __m256d k = _mm256_set1_pd(double(r[0]));
  __m256d a1 = _mm256_setzero_pd(), b1 = a1, a2 = a1, b2 = a1;
  int64_t j = 0;
  for (; j + 8 <= F; j += 8) {
    const __m256d u = _mm256_sub_pd(ld4(r + j), k), v = _mm256_sub_pd(ld4(r + j + 4), k);
    a1 = _mm256_add_pd(a1, u);
    b1 = _mm256_add_pd(b1, v);
    a2 = _mm256_add_pd(a2, _mm256_mul_pd(u, u));
    b2 = _mm256_add_pd(b2, _mm256_mul_pd(v, v));
  }
  s1 = hsum(_mm256_add_pd(a1, b1)), s2 = hsum(_mm256_add_pd(a2, b2));
  for (; j < F; ++j) {
    const double u = double(r[j]) - double(r[0]);
    s1 += u;
    s2 += u * u;
  }
}

// LN backward of a row: p1 = Σ d g, p2 = Σ (d g) x (float64), and the affine gradients
// dga += d x, dbe += d (float64, per feature).
template <typename T>
void bwd_sums(const T* d, const T* x, const T* g, int64_t F, double* dga, double* dbe, double& p1, double& p2) {
  __m256d a = _mm256_setzero_pd(), b = _mm256_setzero_pd();
  int64_t j = 0;
  for (; j + 4 <= F; j += 4) {
    const __m256d dv = ld4(d + j), xv = ld4(x + j);
    const __m256d tv = mul4(d + j, g + j);  // d g rounded to T, as the scalar loop
    a = _mm256_add_pd(a, tv);
    b = _mm256_add_pd(b, _mm256_mul_pd(tv, xv));
    st4(dga + j, _mm256_add_pd(_mm256_loadu_pd(dga + j), _mm256_mul_pd(dv, xv)));
    st4(dbe + j, _mm256_add_pd(_mm256_loadu_pd(dbe + j), dv));
  }
  double s1 = hsum(a), s2 = hsum(b);
  for (; j < F; ++j) {
    const T t = d[j] * g[j];
    s1 += t;
    s2 += double(t) * x[j];
    dga[j] += double(d[j]) * x[j];
    dbe[j] += d[j];
  }
  p1 = s1, p2 = s2;
}

// x = (r - mu) rho, y = x g (+ s) (+ add) (+ addv) over a row (y may be r), in the scalar
// loop's order.
inline void affine(const float* r, float mu, float rho, const float* g, const float* s, const float* add,
                   const float* addv, float* x, float* y, int64_t F) {
  const __m256 m = _mm256_set1_ps(mu), q = _mm256_set1_ps(rho);
  int64_t j = 0;
  for (; j + 8 <= F; j += 8) {
    const __m256 xv = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(r + j), m), q);
    _mm256_storeu_ps(x + j, xv);
    __m256 yv = _mm256_mul_ps(xv, _mm256_loadu_ps(g + j));
    if (s) yv = _mm256_add_ps(yv, _mm256_loadu_ps(s + j));
    if (add) yv = _mm256_add_ps(yv, _mm256_loadu_ps(add + j));
    if (addv) yv = _mm256_add_ps(yv, _mm256_loadu_ps(addv + j));
    _mm256_storeu_ps(y + j, yv);
  }
  for (; j < F; ++j) {
    const float xv = (r[j] - mu) * rho;
    x[j] = xv;
    float yv = xv * g[j];
    if (s) yv += s[j];
    if (add) yv += add[j];
    if (addv) yv += addv[j];
    y[j] = yv;
  }
}
inline void affine(const double* r, double mu, double rho, const double* g, const double* s, const double* add,
                   const double* addv, double* x, double* y, int64_t F) {
  const __m256d m = _mm256_set1_pd(mu), q = _mm256_set1_pd(rho);
  int64_t j = 0;
  for (; j + 4 <= F; j += 4) {
    const __m256d xv = _mm256_mul_pd(_mm256_sub_pd(_mm256_loadu_pd(r + j), m), q);
    _mm256_storeu_pd(x + j, xv);
    __m256d yv = _mm256_mul_pd(xv, _mm256_loadu_pd(g + j));
    if (s) yv = _mm256_add_pd(yv, _mm256_loadu_pd(s + j));
    if (add) yv = _mm256_add_pd(yv, _mm256_loadu_pd(add + j));
    if (addv) yv = _mm256_add_pd(yv, _mm256_loadu_pd(addv + j));
    _mm256_storeu_pd(y + j, yv);
  }
  for (; j < F; ++j) {
    const double xv = (r[j] - mu) * rho;
    x[j] = xv;
    double yv = xv * g[j];
    if (s) yv += s[j];
    if (add) yv += add[j];
    if (addv) yv += addv[j];
    y[j] = yv;
  }
}
// Batch norm's affine of a row with per-column statistics: x = (r - mu) rho, y = x g (+ s) (+ add)
// (+ addv) (y may be r), 32 bytes at a time in GCC vector types (the typedef's alignment is T's:
// unaligned loads), the scalar loop's arithmetic.
template <typename T>
void affine_cols(const T* r, const T* mu, const T* rho, const T* g, const T* s, const T* add, const T* addv, T* x,
                 T* y, int64_t F) {
  typedef T V __attribute__((vector_size(32), aligned(sizeof(T)), may_alias));
  constexpr int64_t L = 32 / sizeof(T);
  auto at = [](const T* p) { return *reinterpret_cast<const V*>(p); };
  int64_t j = 0;
  for (; j + L <= F; j += L) {
    const V xv = (at(r + j) - at(mu + j)) * at(rho + j);
    V yv = xv * at(g + j);
    if (s) yv += at(s + j);
    if (add) yv += at(add + j);
    if (addv) yv += at(addv + j);
    *reinterpret_cast<V*>(x + j) = xv;  // after the loads: y may be r
    *reinterpret_cast<V*>(y + j) = yv;
  }
  for (; j < F; ++j) {
    const T xv = (r[j] - mu[j]) * rho[j];
    T yv = xv * g[j];
    if (s) yv += s[j];
    if (add) yv += add[j];
    if (addv) yv += addv[j];
    x[j] = xv;
    y[j] = yv;
  }
}
// Batch norm's backward of a row in training: out = q (d g - a - x c) with per-column q, a, c
// (the step's 1/std and column means of dx^ and dx^ ⊙ x^), 32 bytes at a time.
template <typename T>
void bnb_out_cols(const T* d, const T* x, const T* g, const T* a, const T* c, const T* q, T* out, int64_t F) {
  typedef T V __attribute__((vector_size(32), aligned(sizeof(T)), may_alias));
  constexpr int64_t L = 32 / sizeof(T);
  auto at = [](const T* p) { return *reinterpret_cast<const V*>(p); };
  int64_t j = 0;
  for (; j + L <= F; j += L)
    *reinterpret_cast<V*>(out + j) = at(q + j) * (at(d + j) * at(g + j) - at(a + j) - at(x + j) * at(c + j));
  for (; j < F; ++j) out[j] = q[j] * (d[j] * g[j] - a[j] - x[j] * c[j]);
}
// dr = rho (d g - a - x c) over a row.
inline void lnb_out(const float* d, const float* x, const float* g, float a, float c, float rho, float* out,
                    int64_t F) {
  const __m256 av = _mm256_set1_ps(a), cv = _mm256_set1_ps(c), q = _mm256_set1_ps(rho);
  int64_t j = 0;
  for (; j + 8 <= F; j += 8) {
    const __m256 t = _mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(d + j), _mm256_loadu_ps(g + j)), av);
    _mm256_storeu_ps(out + j, _mm256_mul_ps(q, _mm256_sub_ps(t, _mm256_mul_ps(_mm256_loadu_ps(x + j), cv))));
  }
  for (; j < F; ++j) out[j] = rho * (d[j] * g[j] - a - x[j] * c);
}
inline void lnb_out(const double* d, const double* x, const double* g, double a, double c, double rho, double* out,
                    int64_t F) {
  const __m256d av = _mm256_set1_pd(a), cv = _mm256_set1_pd(c), q = _mm256_set1_pd(rho);
  int64_t j = 0;
  for (; j + 4 <= F; j += 4) {
    const __m256d t = _mm256_sub_pd(_mm256_mul_pd(_mm256_loadu_pd(d + j), _mm256_loadu_pd(g + j)), av);
    _mm256_storeu_pd(out + j, _mm256_mul_pd(q, _mm256_sub_pd(t, _mm256_mul_pd(_mm256_loadu_pd(x + j), cv))));
  }
  for (; j < F; ++j) out[j] = rho * (d[j] * g[j] - a - x[j] * c);
}

// Batch norm's column sums over a step's rows (float64 accumulators per feature). Forward, in one
// pass over rows [1, n) of R (row stride ld), shifted by its row 0, k: s1 += r - k,
// s2 += (r - k)² (the shifted-data variance, no large mean to cancel), four rows per pass over
// the accumulators; backward, one row at a time: m1 += d g, m2 += (d g) x, dga += d x, dbe += d.
template <typename T>
void col_shifted(const T* R, int64_t ld, int64_t n, double* s1, double* s2, int64_t F) {
  int64_t b = 1;
  for (; b + 4 <= n; b += 4) {
    const T *r0 = R + b * ld, *r1 = r0 + ld, *r2 = r1 + ld, *r3 = r2 + ld;
    int64_t j = 0;
    for (; j + 4 <= F; j += 4) {
      const __m256d k = ld4(R + j), u0 = _mm256_sub_pd(ld4(r0 + j), k), u1 = _mm256_sub_pd(ld4(r1 + j), k);
      const __m256d u2 = _mm256_sub_pd(ld4(r2 + j), k), u3 = _mm256_sub_pd(ld4(r3 + j), k);
      const __m256d a = _mm256_add_pd(_mm256_add_pd(u0, u1), _mm256_add_pd(u2, u3));
      const __m256d q = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(u0, u0), _mm256_mul_pd(u1, u1)),
                                      _mm256_add_pd(_mm256_mul_pd(u2, u2), _mm256_mul_pd(u3, u3)));
      st4(s1 + j, _mm256_add_pd(_mm256_loadu_pd(s1 + j), a));
      st4(s2 + j, _mm256_add_pd(_mm256_loadu_pd(s2 + j), q));
    }
    for (; j < F; ++j) {
      const double k = R[j], u0 = r0[j] - k, u1 = r1[j] - k, u2 = r2[j] - k, u3 = r3[j] - k;
      s1[j] += (u0 + u1) + (u2 + u3);
      s2[j] += (u0 * u0 + u1 * u1) + (u2 * u2 + u3 * u3);
    }
  }
  for (; b < n; ++b) {
    const T* r = R + b * ld;
    int64_t j = 0;
    for (; j + 4 <= F; j += 4) {
      const __m256d u = _mm256_sub_pd(ld4(r + j), ld4(R + j));
      st4(s1 + j, _mm256_add_pd(_mm256_loadu_pd(s1 + j), u));
      st4(s2 + j, _mm256_add_pd(_mm256_loadu_pd(s2 + j), _mm256_mul_pd(u, u)));
    }
    for (; j < F; ++j) {
      const double u = double(r[j]) - R[j];
      s1[j] += u;
      s2[j] += u * u;
    }
  }
}
template <typename T>
void col_bwd(const T* d, const T* x, const T* g, int64_t F, double* m1, double* m2, double* dga, double* dbe) {
  int64_t j = 0;
  for (; j + 4 <= F; j += 4) {
    const __m256d dv = ld4(d + j), xv = ld4(x + j), tv = mul4(d + j, g + j);
    st4(m1 + j, _mm256_add_pd(_mm256_loadu_pd(m1 + j), tv));
    st4(m2 + j, _mm256_add_pd(_mm256_loadu_pd(m2 + j), _mm256_mul_pd(tv, xv)));
    st4(dga + j, _mm256_add_pd(_mm256_loadu_pd(dga + j), _mm256_mul_pd(dv, xv)));
    st4(dbe + j, _mm256_add_pd(_mm256_loadu_pd(dbe + j), dv));
  }
  for (; j < F; ++j) {
    const T t = d[j] * g[j];
    m1[j] += t;
    m2[j] += double(t) * x[j];
    dga[j] += double(d[j]) * x[j];
    dbe[j] += d[j];
  }
}

// Batch norm's step statistics from float64 column means m and sums of squared deviations v over
// n rows: M = m, V = v / n, Q = 1 / sqrt(v / n + eps), 4 columns at a time (IEEE division and
// square root: the scalar loop's values).
template <typename T>
void stats_out(const double* m, const double* v, double n, double eps, T* M, T* V, T* Q, int64_t F) {
  const __m256d nv = _mm256_set1_pd(n), e = _mm256_set1_pd(eps), one = _mm256_set1_pd(1.);
  int64_t j = 0;
  for (; j + 4 <= F; j += 4) {
    const __m256d var = _mm256_div_pd(_mm256_loadu_pd(v + j), nv);
    st4(M + j, _mm256_loadu_pd(m + j));
    st4(V + j, var);
    st4(Q + j, _mm256_div_pd(one, _mm256_sqrt_pd(_mm256_add_pd(var, e))));
  }
  for (; j < F; ++j) {
    M[j] = T(m[j]);
    V[j] = T(v[j] / n);
    Q[j] = T(1 / std::sqrt(v[j] / n + eps));
  }
}
}  // namespace rnnkit_norm_avx2
#pragma GCC pop_options
#endif
