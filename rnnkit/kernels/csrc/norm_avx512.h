// AVX-512 twins of norm_avx2.h's row kernels for float32 rows (16 floats a vector, float64 sums
// 8 lanes wide), and of batch norm's column statistics and backward sums for float32 and float64
// (8 columns a vector), chosen at run time where the CPU has AVX-512
// (rnnkit_pw::has_avx512(); RNNKIT_NO_AVX512=1 keeps the AVX2 ones). The arithmetic is
// norm_avx2.h's, with two differences in the last bits: the order of the float64 partial sums,
// and GCC, which may contract a multiply and an add into an FMA here (it does in shifted_sums: AVX-512
// implies FMA; the AVX2 build has none). At the small shape, where a step's rows sit in L1, the row
// passes are arithmetic-bound: 8-wide, layer norm's statistics and affine were ~23% of the
// layer-norm LSTM's forward.
#pragma once
#include "norm_avx2.h"

#ifdef RNNKIT_SLEEF
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("avx512f")
namespace rnnkit_norm_avx512 {
inline double hsum(__m512d a) { return _mm512_reduce_add_pd(a); }
// 16 floats of a row as two vectors of 8 float64
inline __m512d lo8(__m512 v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
inline __m512d hi8(__m512 v) { return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))); }
// 8 values of a row as float64, and back rounded to the row's type (as T(v))
inline __m512d ld8(const float* p) { return _mm512_cvtps_pd(_mm256_loadu_ps(p)); }
inline __m512d ld8(const double* p) { return _mm512_loadu_pd(p); }
inline void st8(double* p, __m512d v) { _mm512_storeu_pd(p, v); }
inline void st8(float* p, __m512d v) { _mm256_storeu_ps(p, _mm512_cvtpd_ps(v)); }
// a ⊙ b rounded to the row's type, as float64
inline __m512d mul8(const float* a, const float* b) {
  return _mm512_cvtps_pd(_mm256_mul_ps(_mm256_loadu_ps(a), _mm256_loadu_ps(b)));
}
inline __m512d mul8(const double* a, const double* b) { return _mm512_mul_pd(_mm512_loadu_pd(a), _mm512_loadu_pd(b)); }

// norm_avx2.h's shifted_sums, 16 floats a pass (float64 sums 16 partial sums each).
inline void shifted_sums(const float* r, int64_t F, double& s1, double& s2) {
  const __m512d k = _mm512_set1_pd(double(r[0]));
  __m512d a1 = _mm512_setzero_pd(), b1 = a1, a2 = a1, b2 = a1;
  int64_t j = 0;
  for (; j + 16 <= F; j += 16) {
    const __m512 v = _mm512_loadu_ps(r + j);
    const __m512d u = _mm512_sub_pd(lo8(v), k), w = _mm512_sub_pd(hi8(v), k);
    a1 = _mm512_add_pd(a1, u);
    b1 = _mm512_add_pd(b1, w);
    a2 = _mm512_add_pd(a2, _mm512_mul_pd(u, u));
    b2 = _mm512_add_pd(b2, _mm512_mul_pd(w, w));
  }
  s1 = hsum(_mm512_add_pd(a1, b1)), s2 = hsum(_mm512_add_pd(a2, b2));
  for (; j < F; ++j) {
    const double u = double(r[j]) - double(r[0]);
    s1 += u;
    s2 += u * u;
  }
}

// x = (r - mu) rho, y = x g (+ s) (+ add) (+ addv) over a row (y may be r), the scalar loop's order.
inline void affine(const float* r, float mu, float rho, const float* g, const float* s, const float* add,
                   const float* addv, float* x, float* y, int64_t F) {
  const __m512 m = _mm512_set1_ps(mu), q = _mm512_set1_ps(rho);
  int64_t j = 0;
  for (; j + 16 <= F; j += 16) {
    const __m512 xv = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(r + j), m), q);
    __m512 yv = _mm512_mul_ps(xv, _mm512_loadu_ps(g + j));
    if (s) yv = _mm512_add_ps(yv, _mm512_loadu_ps(s + j));
    if (add) yv = _mm512_add_ps(yv, _mm512_loadu_ps(add + j));
    if (addv) yv = _mm512_add_ps(yv, _mm512_loadu_ps(addv + j));
    _mm512_storeu_ps(x + j, xv);
    _mm512_storeu_ps(y + j, yv);
  }
  if (j < F) rnnkit_norm_avx2::affine(r + j, mu, rho, g + j, s ? s + j : nullptr, add ? add + j : nullptr,
                                      addv ? addv + j : nullptr, x + j, y + j, F - j);
}

// Batch norm's row with per-column statistics: x = (r - mu) rho, y = x g (+ s) (+ add) (+ addv)
// (y may be r), as norm_avx2.h's affine_cols, 16 floats a vector.
inline void affine_cols(const float* r, const float* mu, const float* rho, const float* g, const float* s,
                        const float* add, const float* addv, float* x, float* y, int64_t F) {
  int64_t j = 0;
  for (; j + 16 <= F; j += 16) {
    const __m512 xv = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(r + j), _mm512_loadu_ps(mu + j)),
                                    _mm512_loadu_ps(rho + j));
    __m512 yv = _mm512_mul_ps(xv, _mm512_loadu_ps(g + j));
    if (s) yv = _mm512_add_ps(yv, _mm512_loadu_ps(s + j));
    if (add) yv = _mm512_add_ps(yv, _mm512_loadu_ps(add + j));
    if (addv) yv = _mm512_add_ps(yv, _mm512_loadu_ps(addv + j));
    _mm512_storeu_ps(x + j, xv);  // after the loads: y may be r
    _mm512_storeu_ps(y + j, yv);
  }
  if (j < F)
    rnnkit_norm_avx2::affine_cols(r + j, mu + j, rho + j, g + j, s ? s + j : nullptr, add ? add + j : nullptr,
                                  addv ? addv + j : nullptr, x + j, y + j, F - j);
}

// norm_avx2.h's col_shifted for float32 rows, 8 columns a vector (the same sums, up to the FMA the
// header names), the last F % 8 columns by norm_avx2.h's.
inline void col_shifted(const float* R, int64_t ld, int64_t n, double* s1, double* s2, int64_t F) {
  const int64_t F8 = F - F % 8;
  int64_t b = 1;
  for (; b + 4 <= n; b += 4) {
    const float *r0 = R + b * ld, *r1 = r0 + ld, *r2 = r1 + ld, *r3 = r2 + ld;
    for (int64_t j = 0; j < F8; j += 8) {
      const __m512d k = ld8(R + j), u0 = _mm512_sub_pd(ld8(r0 + j), k), u1 = _mm512_sub_pd(ld8(r1 + j), k);
      const __m512d u2 = _mm512_sub_pd(ld8(r2 + j), k), u3 = _mm512_sub_pd(ld8(r3 + j), k);
      const __m512d a = _mm512_add_pd(_mm512_add_pd(u0, u1), _mm512_add_pd(u2, u3));
      const __m512d q = _mm512_add_pd(_mm512_add_pd(_mm512_mul_pd(u0, u0), _mm512_mul_pd(u1, u1)),
                                      _mm512_add_pd(_mm512_mul_pd(u2, u2), _mm512_mul_pd(u3, u3)));
      _mm512_storeu_pd(s1 + j, _mm512_add_pd(_mm512_loadu_pd(s1 + j), a));
      _mm512_storeu_pd(s2 + j, _mm512_add_pd(_mm512_loadu_pd(s2 + j), q));
    }
  }
  for (; b < n; ++b) {
    const float* r = R + b * ld;
    for (int64_t j = 0; j < F8; j += 8) {
      const __m512d u = _mm512_sub_pd(ld8(r + j), ld8(R + j));
      _mm512_storeu_pd(s1 + j, _mm512_add_pd(_mm512_loadu_pd(s1 + j), u));
      _mm512_storeu_pd(s2 + j, _mm512_add_pd(_mm512_loadu_pd(s2 + j), _mm512_mul_pd(u, u)));
    }
  }
  if (F8 < F) rnnkit_norm_avx2::col_shifted(R + F8, ld, n, s1 + F8, s2 + F8, F - F8);
}

// norm_kernels.h's shifted_moments after col_shifted, 8 columns a vector: m = r_0 + s1 / n,
// v = max(s2 - s1 s1 / n, 0) (the same IEEE operations as the scalar loop: the same values).
// max_pd returns its second operand when either is NaN: max(0, v) keeps a NaN variance (an inf
// in the column: inf - inf) NaN, as std::max(v, 0.0) does, where max(v, 0) made it 0.
// Batch norm finishes these for every column of three groups every step; the scalar divisions
// were ~7% of the small shape's forward.
template <typename T>
void finish_moments(const T* r0, int64_t n, double* m, double* v, int64_t F) {
  const __m512d nv = _mm512_set1_pd(double(n)), zero = _mm512_setzero_pd();
  int64_t j = 0;
  for (; j + 8 <= F; j += 8) {
    const __m512d a = _mm512_loadu_pd(m + j);
    _mm512_storeu_pd(m + j, _mm512_add_pd(ld8(r0 + j), _mm512_div_pd(a, nv)));
    _mm512_storeu_pd(v + j, _mm512_max_pd(zero, _mm512_sub_pd(_mm512_loadu_pd(v + j),
                                                              _mm512_div_pd(_mm512_mul_pd(a, a), nv))));
  }
  for (; j < F; ++j) {
    const double a = m[j];
    m[j] = double(r0[j]) + a / n;
    v[j] = std::max(v[j] - a * a / n, 0.0);
  }
}

// norm_avx2.h's stats_out 8 columns a vector (the same IEEE operations: the same values; its
// square roots and divisions were ~7% of the small batch-norm LSTM's forward).
template <typename T>
void stats_out(const double* m, const double* v, double n, double eps, T* M, T* V, T* Q, int64_t F) {
  const __m512d nv = _mm512_set1_pd(n), e = _mm512_set1_pd(eps), one = _mm512_set1_pd(1.);
  int64_t j = 0;
  if constexpr (std::is_same_v<T, float>) {
    // float32 rows: 1/sqrt(var + eps) in float32 (as the reference loop's float32 batch norm
    // computes it), 16 columns a vector; the float64 square roots and divisions were ~5% of the
    // small batch-norm LSTM's forward
    const __m512 ef = _mm512_set1_ps(float(eps)), onef = _mm512_set1_ps(1.f);
    for (; j + 16 <= F; j += 16) {
      const __m256 a = _mm512_cvtpd_ps(_mm512_div_pd(_mm512_loadu_pd(v + j), nv));
      const __m256 b = _mm512_cvtpd_ps(_mm512_div_pd(_mm512_loadu_pd(v + j + 8), nv));
      const __m512 var = _mm512_castpd_ps(
          _mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(a)), _mm256_castps_pd(b), 1));
      st8(M + j, _mm512_loadu_pd(m + j));
      st8(M + j + 8, _mm512_loadu_pd(m + j + 8));
      _mm512_storeu_ps(V + j, var);
      _mm512_storeu_ps(Q + j, _mm512_div_ps(onef, _mm512_sqrt_ps(_mm512_add_ps(var, ef))));
    }
  }
  for (; j + 8 <= F; j += 8) {
    const __m512d var = _mm512_div_pd(_mm512_loadu_pd(v + j), nv);
    st8(M + j, _mm512_loadu_pd(m + j));
    st8(V + j, var);
    st8(Q + j, _mm512_div_pd(one, _mm512_sqrt_pd(_mm512_add_pd(var, e))));
  }
  if (j < F) rnnkit_norm_avx2::stats_out(m + j, v + j, n, eps, M + j, V + j, Q + j, F - j);
}

// norm_avx2.h's col_bwd over n rows (stride ld) at once, 8 columns a vector: each column's four
// float64 sums stay in registers across the rows, added in row order as there (FMA may fuse a
// product into its add). Batch norm's backward runs it on every row of three groups each step:
// the AVX2 one, a row at a time, loaded and stored the sums for every row (~7% of the small
// shape's training step).
// Two blocks of 8 columns at a time: eight independent sums per row instead of four (the
// small shape's 8 rows made each sum a chain of 8 dependent adds: the loop waited on them).
template <typename T>
void col_bwd(const T* d, const T* x, int64_t ld, int64_t n, const T* g, int64_t F, double* m1, double* m2,
             double* dga, double* dbe) {
  int64_t j = 0;
  for (; j + 16 <= F; j += 16) {
    const int64_t k = j + 8;
    __m512d a1 = _mm512_loadu_pd(m1 + j), a2 = _mm512_loadu_pd(m2 + j);
    __m512d a3 = _mm512_loadu_pd(dga + j), a4 = _mm512_loadu_pd(dbe + j);
    __m512d b1 = _mm512_loadu_pd(m1 + k), b2 = _mm512_loadu_pd(m2 + k);
    __m512d b3 = _mm512_loadu_pd(dga + k), b4 = _mm512_loadu_pd(dbe + k);
    for (int64_t b = 0; b < n; ++b) {
      const T *db = d + b * ld, *xb = x + b * ld;
      const __m512d dv = ld8(db + j), xv = ld8(xb + j), tv = mul8(db + j, g + j);
      const __m512d ev = ld8(db + k), yv = ld8(xb + k), uv = mul8(db + k, g + k);
      a1 = _mm512_add_pd(a1, tv);
      b1 = _mm512_add_pd(b1, uv);
      a2 = _mm512_add_pd(a2, _mm512_mul_pd(tv, xv));
      b2 = _mm512_add_pd(b2, _mm512_mul_pd(uv, yv));
      a3 = _mm512_add_pd(a3, _mm512_mul_pd(dv, xv));
      b3 = _mm512_add_pd(b3, _mm512_mul_pd(ev, yv));
      a4 = _mm512_add_pd(a4, dv);
      b4 = _mm512_add_pd(b4, ev);
    }
    _mm512_storeu_pd(m1 + j, a1), _mm512_storeu_pd(m2 + j, a2);
    _mm512_storeu_pd(dga + j, a3), _mm512_storeu_pd(dbe + j, a4);
    _mm512_storeu_pd(m1 + k, b1), _mm512_storeu_pd(m2 + k, b2);
    _mm512_storeu_pd(dga + k, b3), _mm512_storeu_pd(dbe + k, b4);
  }
  for (; j + 8 <= F; j += 8) {
    __m512d a1 = _mm512_loadu_pd(m1 + j), a2 = _mm512_loadu_pd(m2 + j);
    __m512d a3 = _mm512_loadu_pd(dga + j), a4 = _mm512_loadu_pd(dbe + j);
    for (int64_t b = 0; b < n; ++b) {
      const T *db = d + b * ld + j, *xb = x + b * ld + j;
      const __m512d dv = ld8(db), xv = ld8(xb), tv = mul8(db, g + j);
      a1 = _mm512_add_pd(a1, tv);
      a2 = _mm512_add_pd(a2, _mm512_mul_pd(tv, xv));
      a3 = _mm512_add_pd(a3, _mm512_mul_pd(dv, xv));
      a4 = _mm512_add_pd(a4, dv);
    }
    _mm512_storeu_pd(m1 + j, a1), _mm512_storeu_pd(m2 + j, a2);
    _mm512_storeu_pd(dga + j, a3), _mm512_storeu_pd(dbe + j, a4);
  }
  if (j < F)
    for (int64_t b = 0; b < n; ++b)
      rnnkit_norm_avx2::col_bwd(d + b * ld + j, x + b * ld + j, g + j, F - j, m1 + j, m2 + j, dga + j, dbe + j);
}
// norm_avx2.h's bnb_out_cols, 64 bytes at a time.
template <typename T>
void bnb_out_cols(const T* d, const T* x, const T* g, const T* a, const T* c, const T* q, T* out, int64_t F) {
  typedef T V __attribute__((vector_size(64), aligned(sizeof(T)), may_alias));
  constexpr int64_t L = 64 / sizeof(T);
  auto at = [](const T* p) { return *reinterpret_cast<const V*>(p); };
  int64_t j = 0;
  for (; j + L <= F; j += L)
    *reinterpret_cast<V*>(out + j) = at(q + j) * (at(d + j) * at(g + j) - at(a + j) - at(x + j) * at(c + j));
  if (j < F) rnnkit_norm_avx2::bnb_out_cols(d + j, x + j, g + j, a + j, c + j, q + j, out + j, F - j);
}

// LN backward of R consecutive rows (d, x rows ld apart; p1, p2: R each): p1 = Σ d g,
// p2 = Σ (d g) x (float64; d g rounded to float first, as the scalar loop) per row, and the
// affine gradients dga += d x, dbe += d (float64, per feature). The affine gradients stay in
// registers across the rows, added in row order (the same sums as a row at a time), so dga and
// dbe are loaded and stored once per R rows instead of every row (the layer-norm LSTM's
// backward runs this on every row of its recurrent and input groups).
template <int R>
void bwd_sums_rows(const float* d, const float* x, int64_t ld, const float* g, int64_t F, double* dga, double* dbe,
                   double* p1, double* p2) {
  __m512d a[R], b[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) a[r] = b[r] = _mm512_setzero_pd();
  int64_t j = 0;
  for (; j + 8 <= F; j += 8) {
    __m512d ga = _mm512_loadu_pd(dga + j), be = _mm512_loadu_pd(dbe + j);
    const __m256 g8 = _mm256_loadu_ps(g + j);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256 d8 = _mm256_loadu_ps(d + r * ld + j), x8 = _mm256_loadu_ps(x + r * ld + j);
      const __m512d dv = _mm512_cvtps_pd(d8), xv = _mm512_cvtps_pd(x8);
      const __m512d tv = _mm512_cvtps_pd(_mm256_mul_ps(d8, g8));  // d g rounded to float
      a[r] = _mm512_add_pd(a[r], tv);
      b[r] = _mm512_add_pd(b[r], _mm512_mul_pd(tv, xv));
      ga = _mm512_add_pd(ga, _mm512_mul_pd(dv, xv));
      be = _mm512_add_pd(be, dv);
    }
    _mm512_storeu_pd(dga + j, ga);
    _mm512_storeu_pd(dbe + j, be);
  }
  for (int r = 0; r < R; ++r) {
    const float *dr = d + r * ld, *xr = x + r * ld;
    double s1 = hsum(a[r]), s2 = hsum(b[r]);
    for (int64_t q = j; q < F; ++q) {
      const float t = dr[q] * g[q];
      s1 += t;
      s2 += double(t) * xr[q];
      dga[q] += double(dr[q]) * xr[q];
      dbe[q] += dr[q];
    }
    p1[r] = s1, p2[r] = s2;
  }
}
inline void bwd_sums_rows(const float* d, const float* x, int64_t ld, int rows, const float* g, int64_t F,
                          double* dga, double* dbe, double* p1, double* p2) {
  switch (rows) {
    case 4: return bwd_sums_rows<4>(d, x, ld, g, F, dga, dbe, p1, p2);
    case 3: return bwd_sums_rows<3>(d, x, ld, g, F, dga, dbe, p1, p2);
    case 2: return bwd_sums_rows<2>(d, x, ld, g, F, dga, dbe, p1, p2);
    default: return bwd_sums_rows<1>(d, x, ld, g, F, dga, dbe, p1, p2);
  }
}
// one row of it
inline void bwd_sums(const float* d, const float* x, const float* g, int64_t F, double* dga, double* dbe, double& p1,
                     double& p2) {
  bwd_sums_rows<1>(d, x, F, g, F, dga, dbe, &p1, &p2);
}
// dr = rho (d g - a - x c) over a row.
inline void lnb_out(const float* d, const float* x, const float* g, float a, float c, float rho, float* out,
                    int64_t F) {
  const __m512 av = _mm512_set1_ps(a), cv = _mm512_set1_ps(c), q = _mm512_set1_ps(rho);
  int64_t j = 0;
  for (; j + 16 <= F; j += 16) {
    const __m512 t = _mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(d + j), _mm512_loadu_ps(g + j)), av);
    _mm512_storeu_ps(out + j, _mm512_mul_ps(q, _mm512_sub_ps(t, _mm512_mul_ps(_mm512_loadu_ps(x + j), cv))));
  }
  for (; j < F; ++j) out[j] = rho * (d[j] * g[j] - a - x[j] * c);
}
// norm_input.cpp's update of a running-statistics row, 16 floats a vector: r <- lerp(r, e c, w)
// in ATen's scalar lerp (c = 1 for the mean, n / (n - 1) for the variance; w the momentum).
// The scalar loop was ~3% of the small batch-norm LSTM's training forward.
inline void lerp_row(float* r, const float* e, float c, float w, int64_t F) {
  const __m512 cv = _mm512_set1_ps(c), wv = _mm512_set1_ps(w), w1 = _mm512_set1_ps(1.f - w);
  const bool near = std::abs(w) < 0.5f;  // lerp's branch, the same for every value
  int64_t j = 0;
  for (; j + 16 <= F; j += 16) {
    const __m512 a = _mm512_loadu_ps(r + j), b = _mm512_mul_ps(_mm512_loadu_ps(e + j), cv);
    const __m512 d = _mm512_sub_ps(b, a);
    _mm512_storeu_ps(r + j, near ? _mm512_add_ps(a, _mm512_mul_ps(wv, d)) : _mm512_sub_ps(b, _mm512_mul_ps(d, w1)));
  }
  for (; j < F; ++j) r[j] = rnnkit_pw::lerp(r[j], e[j] * c, w);
}
}  // namespace rnnkit_norm_avx512
#pragma GCC pop_options
#endif
