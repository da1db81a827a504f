// The element-wise part of one LSTM forward step, for one batch row and one block of hidden units
// u in [0, w) (blocked.h): gate activations, peepholes, cell update, tanh(c), output, zoneout.
//
//   a_q = A_q + X_q (+ p_q ⊙ c_{t-1} for q = i, f)      A: the block's GEMM output, X: input term
//   i, f, o = σ(a_i), σ(a_f), σ(a_o + p_o ⊙ c~_t);  g = tanh(a_g)
//   c~_t = f ⊙ c_{t-1} + i ⊙ g;   h~_t = o ⊙ tanh(c~_t)
//   c_t = lerp(c~_t, c_{t-1}, z_c),  h_t = lerp(h~_t, h_{t-1}, z_h)   (zoneout; else c~, h~)
//
// Two implementations with the same arithmetic: a generic one (a few passes over the row, SLEEF
// vector routines for σ/tanh, pointwise.h) and, for float32 where the CPU has AVX-512, one pass in
// registers, 16 units at a time: at the medium shape the generic passes were ~40% of a forward
// step on one core, as much as the GEMM, against ~15% for oneDNN's LSTM.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common.h"
#include "pointwise.h"

// Loops over a block of units on raw pointers: GCC vectorizes them at -O3 only.
#pragma GCC optimize("O3")

namespace rnnkit_row {

template <typename T>
struct LstmFwdRow {
  T* a;         // (4, w): the GEMM's pre-activations [i | f | g | o], overwritten
  const T* x;   // input term of gate q at x + q H; null when already in a (fused.cpp, InputChunks)
  T* g;         // saved activations, gate q at g + q H (null: inference, nothing saved)
  T* c;         // in: c_{t-1}; out: c_t
  T* cp;        // saved c_{t-1}, or null
  T* tc;        // saved tanh(c~_t), or null
  T* hr;        // h~_t (or h_t when hb is set)
  const T* pw;  // peephole weights, gate q (i, f, o) at pw + q H; or null
  T* cn;        // saved c~_t (for the peephole gradient); null without peepholes
  const T* zc;  // zoneout on c: per-unit weights, or null
  T* hb;        // h_{t-1} in, h_t out (no projection): then hr gets h_t too; else null
  const T* zh;  // zoneout on h (with hb), or null
  // zc, zh as bits (ZoneoutBits: bit u % 16 of word u / 16 is unit u's 0/1 weight), or null;
  // only the AVX-512 row reads them, the generic one reads zc, zh
  const uint16_t* zcb = nullptr;
  const uint16_t* zhb = nullptr;
};

template <typename T>
void lstm_fwd_generic(int64_t w, int64_t H, const LstmFwdRow<T>& r) {
  using namespace rnnkit_pw;
  T *ar = r.a, *c = r.c;  // activations in place in ar: [i | f | g | o], then tanh(c~) in the i slot
  if (r.x)
    for (int64_t q = 0; q < 4; ++q)
      for (int64_t u = 0; u < w; ++u) ar[q * w + u] += r.x[q * H + u];
  if (r.pw)
    for (int64_t u = 0; u < w; ++u) {
      ar[u] += r.pw[u] * c[u];
      ar[w + u] += r.pw[H + u] * c[u];
    }
  sigmoid(ar, ar, 2 * w);
  tanh(ar + 2 * w, ar + 2 * w, w);
  if (!r.pw) sigmoid(ar + 3 * w, ar + 3 * w, w);
  if (r.g)
    for (int64_t q = 0; q < (r.pw ? 3 : 4); ++q) std::copy(ar + q * w, ar + (q + 1) * w, r.g + q * H);
  if (r.cp) std::copy(c, c + w, r.cp);
  T* cprev = ar;  // c_{t-1}, kept for zoneout in the i slot (i is used up by then)
  for (int64_t u = 0; u < w; ++u) {
    const T cv = c[u], cn = ar[w + u] * cv + ar[u] * ar[2 * w + u];
    cprev[u] = cv;
    c[u] = cn;
  }
  if (r.pw) {
    if (r.cn) std::copy(c, c + w, r.cn);
    for (int64_t u = 0; u < w; ++u) ar[3 * w + u] += r.pw[2 * H + u] * c[u];
    sigmoid(ar + 3 * w, ar + 3 * w, w);
    if (r.g) std::copy(ar + 3 * w, ar + 4 * w, r.g + 3 * H);
  }
  T* tc = ar + w;  // tanh(c~_t) in the f slot
  tanh(c, tc, w);
  if (r.tc) std::copy(tc, tc + w, r.tc);
  for (int64_t u = 0; u < w; ++u) r.hr[u] = ar[3 * w + u] * tc[u];
  if (r.zc)
    for (int64_t u = 0; u < w; ++u) c[u] = lerp(c[u], cprev[u], r.zc[u]);
  if (r.hb)
    for (int64_t u = 0; u < w; ++u) r.hb[u] = r.hr[u] = r.zh ? lerp(r.hr[u], r.hb[u], r.zh[u]) : r.hr[u];
}

#ifdef RNNKIT_SLEEF
#pragma GCC push_options
#pragma GCC target("avx512f")
// ATen's lerp: s + w (e - s) where |w| < 1/2, else e - (e - s)(1 - w).
inline __m512 lerp16(__m512 s, __m512 e, __m512 w) {
  const __m512 d = _mm512_sub_ps(e, s);
  const __m512 lo = _mm512_add_ps(s, _mm512_mul_ps(w, d));
  const __m512 hi = _mm512_sub_ps(e, _mm512_mul_ps(d, _mm512_sub_ps(_mm512_set1_ps(1.f), w)));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(_mm512_abs_ps(w), _mm512_set1_ps(0.5f), _CMP_LT_OQ), hi, lo);
}
// Zoneout weights as 0/1 bits: ZoneoutBits below.
inline __m512 zoneout16(const float* z, const uint16_t* zb, int64_t u, __mmask16 m) {
  return zb ? _mm512_maskz_mov_ps(__mmask16(zb[u / 16]), _mm512_set1_ps(1.f)) : _mm512_maskz_loadu_ps(m, z + u);
}
inline void lstm_fwd_avx512(int64_t w, int64_t H, const LstmFwdRow<float>& r) {
  for (int64_t u = 0; u < w; u += 16) {
    const __mmask16 m = w - u >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (w - u)) - 1);
    auto ld = [&](const float* p) { return _mm512_maskz_loadu_ps(m, p + u); };
    auto st = [&](float* p, __m512 v) { _mm512_mask_storeu_ps(p + u, m, v); };
    // non-temporal where a whole aligned line is written: no read of the line before the write
    auto stream = [&](float* p, __m512 v) {
      if (m == 0xFFFF && (reinterpret_cast<uintptr_t>(p + u) & 63) == 0)
        _mm512_stream_ps(p + u, v);
      else
        st(p, v);
    };
    // pre-activation of gate q: the GEMM's output plus the input term (unless already in it)
    auto pre = [&](int64_t q) {
      return r.x ? _mm512_add_ps(ld(r.a + q * w), ld(r.x + q * H)) : ld(r.a + q * w);
    };
    __m512 ai = pre(0), af = pre(1);
    const __m512 ag = pre(2);
    __m512 ao = pre(3);
    const __m512 cv = ld(r.c);
    if (r.pw) {
      ai = _mm512_add_ps(ai, _mm512_mul_ps(ld(r.pw), cv));
      af = _mm512_add_ps(af, _mm512_mul_ps(ld(r.pw + H), cv));
    }
    const __m512 i = rnnkit_act::sigmoid16(ai), f = rnnkit_act::sigmoid16(af), gg = rnnkit_act::tanh16(ag);
    const __m512 cn = _mm512_add_ps(_mm512_mul_ps(f, cv), _mm512_mul_ps(i, gg));
    if (r.pw) {
      ao = _mm512_add_ps(ao, _mm512_mul_ps(ld(r.pw + 2 * H), cn));
      if (r.cn) st(r.cn, cn);
    }
    const __m512 o = rnnkit_act::sigmoid16(ao), t = rnnkit_act::tanh16(cn);
    __m512 h = _mm512_mul_ps(o, t);
    if (r.g) {  // saved for backward, read only after the whole forward: past the cache
      stream(r.g, i), stream(r.g + H, f), stream(r.g + 2 * H, gg), stream(r.g + 3 * H, o);
      stream(r.cp, cv), stream(r.tc, t);
    }
    st(r.c, r.zc ? lerp16(cn, cv, zoneout16(r.zc, r.zcb, u, m)) : cn);
    if (r.hb) {
      if (r.zh) h = lerp16(h, ld(r.hb), zoneout16(r.zh, r.zhb, u, m));
      st(r.hb, h);
    }
    st(r.hr, h);
  }
  if (r.g) _mm_sfence();  // the streamed stores visible before anyone reads them
}
#pragma GCC pop_options
#endif

// A training call's zoneout weights (N, W), a Bernoulli mask of 0s and 1s, as bits for the
// AVX-512 forward row: word n * words + j / 16, bit j % 16, for row n and unit j. As floats the
// rows read 4 bytes a unit from two (N, H) tensors (3.3 MB each at the medium shape) in blocks
// of units, from memory: their loads stalled the step (medium forward, one thread: 14.5 ms
// against 12.2 without zoneout; a draw in registers instead of the loads measured 12.9). One
// sequential pass makes the bits (~0.1 ms a mask on one thread, about what drawing it costs).
// Empty (at() null: the rows read the floats) for other dtypes, CPUs without AVX-512, the
// evaluation's shared weight row, blocks that do not start at a multiple of 16 units, or
// weights other than 0 and 1.
class ZoneoutBits {
 public:
  // bounds: the blocks' first units, then the end W (blocked.h GateBlocks::j). The end need not
  // be a multiple of 16 (its word is partial): checked with the starts, it sent every W not a
  // multiple of 16 to the floats.
  ZoneoutBits(const rnnkit_common::ZoneoutRows& z, const std::vector<int64_t>& bounds) {
    const at::Tensor& t = z.tensor();
    if (!t.defined() || z.shared() || t.scalar_type() != at::kFloat || t.dim() != 2) return;
#ifdef RNNKIT_SLEEF
    if (!rnnkit_pw::has_avx512()) return;
    for (size_t k = 0; k + 1 < bounds.size(); ++k)
      if (bounds[k] % 16) return;
    const int64_t N = t.size(0), W = t.size(1);
    words_ = (W + 15) / 16;
    bits_.resize(size_t(N * words_));
    std::atomic<bool> binary{true};
    const float* src = t.data_ptr<float>();
    at::parallel_for(0, N, std::max<int64_t>(1, 65536 / std::max<int64_t>(W, 1)), [&](int64_t n0, int64_t n1) {
      if (!pack(src, n0, n1, W, words_, bits_.data())) binary = false;
    });
    if (!binary) bits_.clear();
#endif
  }
  // the word of row `off + b`, unit j0 (a multiple of 16), or null (no bits)
  const uint16_t* at(int64_t off, int64_t b, int64_t j0) const {
    return bits_.empty() ? nullptr : bits_.data() + (off + b) * words_ + j0 / 16;
  }

 private:
#ifdef RNNKIT_SLEEF
  __attribute__((target("avx512f"))) static bool pack(const float* src, int64_t n0, int64_t n1, int64_t W,
                                                      int64_t words, uint16_t* dst) {
    const __m512 one = _mm512_set1_ps(1.f), zero = _mm512_setzero_ps();
    bool ok = true;
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t j = 0; j < W; j += 16) {
        const __mmask16 m = W - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (W - j)) - 1);
        const __m512 v = _mm512_maskz_loadu_ps(m, src + n * W + j);
        const __mmask16 hit = _mm512_mask_cmp_ps_mask(m, v, one, _CMP_EQ_OQ);
        ok &= (hit | _mm512_mask_cmp_ps_mask(m, v, zero, _CMP_EQ_OQ)) == m;
        dst[n * words + j / 16] = hit;
      }
    return ok;
  }
#endif
  std::vector<uint16_t> bits_;
  int64_t words_ = 0;
};

namespace base {
#include "lstm_bwd_row.h"
}  // namespace base
#ifdef RNNKIT_SLEEF
#pragma GCC push_options
#pragma GCC target("avx512f")
namespace avx512 {
#include "lstm_bwd_row.h"
}  // namespace avx512
#pragma GCC pop_options
#endif

template <typename T>
using BwdRow = void (*)(int64_t, int64_t, const T*, const T*, const T*, const T*, const T*, const T*, const T*, T*, T*);
// The backward row for the options (materialized dh, zoneout on c, peepholes), for this CPU.
template <typename T>
BwdRow<T> pick_bwd_row(bool dh, bool zc, bool pi) {
  const int k = (dh ? 4 : 0) + (zc ? 2 : 0) + (pi ? 1 : 0);
#ifdef RNNKIT_SLEEF
  if (rnnkit_pw::has_avx512()) {
    using namespace avx512;
    static const BwdRow<T> t[8] = {lstm_bwd_row<T, false, false, false>, lstm_bwd_row<T, false, false, true>,
                                   lstm_bwd_row<T, false, true, false>,  lstm_bwd_row<T, false, true, true>,
                                   lstm_bwd_row<T, true, false, false>,  lstm_bwd_row<T, true, false, true>,
                                   lstm_bwd_row<T, true, true, false>,   lstm_bwd_row<T, true, true, true>};
    return t[k];
  }
#endif
  using namespace base;
  static const BwdRow<T> t[8] = {lstm_bwd_row<T, false, false, false>, lstm_bwd_row<T, false, false, true>,
                                 lstm_bwd_row<T, false, true, false>,  lstm_bwd_row<T, false, true, true>,
                                 lstm_bwd_row<T, true, false, false>,  lstm_bwd_row<T, true, false, true>,
                                 lstm_bwd_row<T, true, true, false>,   lstm_bwd_row<T, true, true, true>};
  return t[k];
}

// dL/d(o ⊙ tanh c) of a backward step's rows where the row pass cannot form it on the fly:
// dh = gout + dh_next, split by zoneout on h (h_t = lerp(h~_t, h_{t-1}, zh): dL/dh~ = dh - dh ⊙ zh,
// the direct part dh ⊙ zh to dhz) and, with a projection, mapped back through W_hr (the result
// kept alive in `keep`). go, dhb: the step's gout rows and the running dh; zh: the step's rows.
// Returns the rows' dh (stride H), or nullptr: the row pass adds gout and dh_next itself.
template <typename T>
const T* lstm_step_dh(int64_t off, int64_t bs, int64_t P, const T* go, const T* dhb, const T* zh, T* dhz, T* dht,
                      const at::Tensor& dh_all, const std::optional<rnnkit_common::Linear>& lin_rt,
                      const std::optional<at::Tensor>& w_hr, at::Tensor& keep) {
  const bool proj = w_hr.has_value();
  if (!proj && !zh) return nullptr;
  T* dst = proj ? dh_all.data_ptr<T>() + off * P : dht;
  rnnkit_pw::dh_step(bs * P, go, dhb, zh, dhz, dst);
  if (!proj) return dht;
  const at::Tensor dhp = dh_all.narrow(0, off, bs);
  keep = lin_rt->use_rows(bs) ? (*lin_rt)(dhp).contiguous() : at::mm(dhp, *w_hr);
  return keep.data_ptr<T>();
}

template <typename T>
inline void lstm_fwd(int64_t w, int64_t H, const LstmFwdRow<T>& r) {
#ifdef RNNKIT_SLEEF
  if constexpr (std::is_same_v<T, float>)
    if (rnnkit_pw::has_avx512()) return lstm_fwd_avx512(w, H, r);
#endif
  lstm_fwd_generic(w, H, r);
}

}  // namespace rnnkit_row
