// Building blocks of the normalized kernels (csrc/norm.cpp forward, csrc/norm_bwd.cpp
// backward): the step GEMM on raw pointers split over threads by output columns, the row-wise
// parallel loop, and one normalized group's forward (NormG) and backward (NormB) on raw rows.
//
// Why raw pointers: at the small shape a whole step (8 rows x 256 features) takes a few us,
// and every ATen call below that size costs ~1-3 us of dispatch and TensorImpl overhead (see
// docs/fused.md "Per-step overhead"); at the medium shape the step GEMM dominates, and
// brgemm split by column blocks over the threads runs it ~2.5x faster than addmm.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "blocked.h"
#include "common.h"
#include "norm_avx2.h"
#include "norm_avx512.h"
#include "pointwise.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>
#include <type_traits>
#include <string>
#include <utility>
#include <vector>

#pragma GCC optimize("O3")  // the row loops vectorize at -O3 only (see fused.cpp)

namespace rnnkit_norm {
using at::Tensor;
using OptT = std::optional<Tensor>;

std::vector<Tensor> backward(std::string kind, int64_t mode, const Tensor& gout, const Tensor& ghn,
                             const Tensor& gcn, const Tensor& out, std::vector<Tensor> saved, const Tensor& w_hh,
                             bool has_bias, const OptT& w_hr, const OptT& mask, const OptT& zh, const OptT& zc,
                             const Tensor& g_hh, bool shift_hh, const OptT& g_c, bool shift_c, const OptT& st_hh,
                             const OptT& st_c, const OptT& w_peep, std::vector<int64_t> batch_sizes, bool reverse,
                             bool onednn);
// norm_input.cpp: the running statistics of a direction's batch-norm groups after a training call
void update_running(std::vector<Tensor> rm, std::vector<Tensor> rv, const std::vector<Tensor>& mean,
                    const std::vector<Tensor>& var, std::vector<int64_t> ns, double momentum);
namespace {

constexpr double kEps = 1e-5;  // rnnkit.cells.norm.EPS
constexpr int64_t kLN = 1, kBNTrain = 2, kBNEval = 3;
constexpr int64_t kColHprev = 32;  // forward flag: save h_{t-1} column-major (norm.cpp)

using rnnkit_common::check_batch_sizes;
using rnnkit_common::kRowMajor;
using rnnkit_common::mm_tn;
using rnnkit_common::none;
using rnnkit_common::schedule;

template <typename T>
const T* ptr(const OptT& t) {
  return t.has_value() && t->numel() ? t->data_ptr<T>() : nullptr;
}

// f(b0, b1) over rows [0, n) of `width` values each: on the threads when a step has at least
// 8k values (the medium shape's RNN: 32 x 256), else inline (a fork/join costs a few us, the
// small shape's whole LSTM step ~4 us).
constexpr int64_t kRowsMin = 8192;
template <typename F>
void prows(int64_t n, int64_t width, const F& f) {
  if (n * width < kRowsMin || n < 2 || at::get_num_threads() < 2 || at::in_parallel_region())
    f(int64_t(0), n);
  else
    at::parallel_for(0, n, std::max<int64_t>(1, 4096 / std::max<int64_t>(width, 1)), f);
}

// f(k, b0, b1) for every step k of a direction (processing order; `backwards`: the last first)
// on the step's rows [b0, b1). Layer norm, or batch norm with given (running) statistics
// (`rowwise`): a row's statistics are its own or fixed, so row b of a step depends only on row b
// of the steps before it (forward and backward) — one block of batch rows per thread for the
// whole loop (rnnkit_common::batch_blocks: one fork/join per call instead of two per step, no
// barrier inside the loop; each thread's step GEMM is its rows times all of W_hh). Batch norm in
// training needs a step's column statistics over all its rows: f sees the whole step, and the
// threads work inside it (pcols, prows; within a block of rows they run inline).
template <typename F>
void over_steps(bool rowwise, int64_t B, int64_t width, const rnnkit_common::Steps& steps, bool backwards,
                const F& f) {
  const int64_t T = steps.size();
  auto loop = [&](int64_t b0, int64_t b1) {
    for (int64_t i = 0; i < T; ++i) {
      const int64_t k = backwards ? T - 1 - i : i, e = std::min(b1, steps[k].second);
      if (e > b0) f(k, b0, e);  // packed: this block's rows may have ended (or not started)
    }
  };
  if (rowwise && B * width >= kRowsMin)  // below, one thread (as prows): the small shape's steps
    rnnkit_common::batch_blocks(B, width, steps, loop);
  else
    loop(0, B);
}

// Column blocks [c0, c1) of an m-wide step output (n x k @ k x m): blocked.h's split — on the
// threads from 2^20 multiply-adds (the medium shape), two blocks a thread, blocks of at most
// 512 columns (brgemm runs faster on those).
template <typename F>
void pcols(int64_t n, int64_t m, int64_t k, const F& f) {
  const int64_t work = n * m * k;
  const std::vector<int64_t> c = rnnkit_blk::split(m, rnnkit_blk::blocks_for(work, m, 2));
  rnnkit_blk::each_block(static_cast<int64_t>(c.size()) - 1, work, [&](int64_t b) { f(c[b], c[b + 1]); });
}

// `after(c0, c1)` runs on the thread that computed output columns [c0, c1), while they are in
// its cache (batch norm's column statistics).
struct NoAfter {
  void operator()(int64_t, int64_t) const {}
};

// C (n, m) = X (n, k) W for W (k, m) dense.
template <typename T, typename A = NoAfter>
void step_xw(const T* x, const T* w, T* c, int64_t n, int64_t m, int64_t k, const A& after = A()) {
  pcols(n, m, k, [&](int64_t c0, int64_t c1) {
    rnnkit_blk::gemm_ld(x, k, w + c0, m, c + c0, m, n, c1 - c0, k);
    after(c0, c1);
  });
}
// C (n, m) = X (n, k) W^T for W (m, k); wt = W^T (k, m) dense (float32's brgemm reads it).
template <typename A = NoAfter>
void step_xwt(const double* x, const double* w, const double*, double* c, int64_t n, int64_t m, int64_t k,
              const A& after = A()) {
  pcols(n, m, k, [&](int64_t c0, int64_t c1) {
    rnnkit_pw::blas_gemm('T', 'N', int(c1 - c0), int(n), int(k), 1., w + c0 * k, int(k), x, int(k), 0., c + c0,
                         int(m));
    after(c0, c1);
  });
}
template <typename A = NoAfter>
void step_xwt(const float* x, const float*, const float* wt, float* c, int64_t n, int64_t m, int64_t k,
              const A& after = A()) {
  step_xw(x, wt, c, n, m, k, after);
}

// Σ_j f(j) for j < n with four independent partial sums (no single chain of dependent adds).
template <typename acc, typename Fn>
acc sum4(int64_t n, const Fn& f) {
  acc p[4] = {0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 4 <= n; j += 4)
    for (int u = 0; u < 4; ++u) p[u] += f(j + u);
  for (; j < n; ++j) p[0] += f(j);
  return (p[0] + p[1]) + (p[2] + p[3]);
}

// `n` zeroed doubles of this thread's scratch (grown, never shrunk), in `p`: batch norm's column
// sums, per step and group, without a heap allocation each time (at the small shape malloc/free
// of these were ~8% of the batch-norm LSTM's forward).
inline void zeroed_scratch(int64_t n, double*& p) {
  static thread_local std::vector<double> buf;
  if (buf.size() < size_t(n)) buf.resize(n);
  std::fill(buf.begin(), buf.begin() + n, 0.0);
  p = buf.data();
}

// Batch norm's statistics of a step from float64 column sums over its n rows: mean M = m, biased
// variance V = v / n and Q = 1 / sqrt(v / n + eps) (m: the means, v: the sums of squared
// deviations); rnnkit_norm_avx2::stats_out is the same arithmetic 4 columns at a time (at the
// small shape the scalar square roots and divisions were ~40% of a step's statistics).
template <typename T>
void bn_stats_out(const double* m, const double* v, double n, T* M, T* V, T* Q, int64_t F) {
#ifdef RNNKIT_SLEEF
  if (rnnkit_pw::has_avx512()) return rnnkit_norm_avx512::stats_out(m, v, n, kEps, M, V, Q, F);
  if (rnnkit_pw::has_avx2()) return rnnkit_norm_avx2::stats_out(m, v, n, kEps, M, V, Q, F);
#endif
  for (int64_t j = 0; j < F; ++j) {
    M[j] = T(m[j]);
    V[j] = T(v[j] / n);
    Q[j] = T(1 / std::sqrt(v[j] / n + kEps));
  }
}

// BN eval: the running-statistics slot of every packed row (rnnkit/kernels/norm.py row_slots):
// the steps its sequence has taken in this direction (t, or length - 1 - t in reverse), clamped
// to S - 1. Rows index a (2, S, F) table of slots, not a (2, N, F) copy of it per row: at the
// medium shape that copy was ~26 MB to build and read on every call.
inline std::vector<int64_t> row_slots(const std::vector<int64_t>& bsz, bool reverse, int64_t S) {
  const int64_t T = bsz.size(), B = T ? bsz[0] : 0;
  std::vector<int64_t> len(B, 0), slot;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < bsz[t]; ++b) ++len[b];
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < bsz[t]; ++b) slot.push_back(std::min(reverse ? len[b] - 1 - t : t, S - 1));
  return slot;
}

// The row slots of a direction when `st` holds BN eval statistics (2, S, F), else none.
inline std::vector<int64_t> eval_slots(int64_t mode, const OptT& st, const std::vector<int64_t>& bsz, bool reverse) {
  if (mode != kBNEval) return {};
  TORCH_CHECK(st.has_value() && st->dim() == 3 && st->size(0) == 2 && st->size(1) > 0,
              "rnnkit_norm: batch norm in evaluation needs statistics of shape (2, slots, features), got ",
              st.has_value() ? st->sizes() : at::IntArrayRef{});
  return row_slots(bsz, reverse, st->size(1));
}

// The arguments of the normalized directions' forward and backward (norm.cpp, norm_bwd.cpp)
// that both share: the gain, shift and evaluation statistics of a group of F features.
inline void check_group(const char* op, const char* what, at::ScalarType dt, int64_t F, const Tensor* g,
                        const OptT& s, const OptT& st) {
  using namespace rnnkit_check;
  const std::string gn = std::string("g_") + what, sn = std::string("s_") + what, stn = std::string("st_") + what;
  if (g) tensor(op, gn.c_str(), *g, dt, "(F,)", {F});
  opt(op, sn.c_str(), s, dt, "(F,)", {F});
  opt(op, stn.c_str(), st, dt, "(2, slots, F)", {2, kAny, F});
}

inline void check_kind_mode(const char* op, const std::string& kind, int64_t mode) {
  TORCH_CHECK(kind == "lstm" || kind == "gru" || kind == "rnn_tanh" || kind == "rnn_relu", op,
              ": kind must be \"lstm\", \"gru\", \"rnn_tanh\" or \"rnn_relu\", got \"", kind, "\"");
  TORCH_CHECK(mode == kLN || mode == kBNTrain || mode == kBNEval, op,
              ": mode must be 1 (layer norm), 2 (batch norm, training) or 3 (batch norm, evaluation), got ", mode);
}

// Batch norm's one-pass shifted column sums over rows [1, n) of R (stride ld): s1 += r - r_0,
// s2 += (r - r_0)² (norm_avx2.h's col_shifted, one row at a time).
template <typename T>
void col_shifted_scalar(const T* R, int64_t ld, int64_t n, double* s1, double* s2, int64_t F) {
  for (int64_t b = 1; b < n; ++b)
    for (int64_t j = 0; j < F; ++j) {
      const double u = double(R[b * ld + j]) - R[j];
      s1[j] += u;
      s2[j] += u * u;
    }
}

// col_shifted on the widest vectors the CPU has.
template <typename T>
void col_shifted_any(const T* R, int64_t ld, int64_t n, double* s1, double* s2, int64_t F) {
#ifdef RNNKIT_SLEEF
  if constexpr (std::is_same_v<T, float>)
    if (rnnkit_pw::has_avx512()) return rnnkit_norm_avx512::col_shifted(R, ld, n, s1, s2, F);
  if (rnnkit_pw::has_avx2()) return rnnkit_norm_avx2::col_shifted(R, ld, n, s1, s2, F);
#endif
  col_shifted_scalar(R, ld, n, s1, s2, F);
}

// The column statistics of rows [0, n) of R (row stride ld), columns [0, F), in one pass: into
// zeroed m the means, into zeroed v the sums of squared deviations (float64), from col_shifted's
// sums shifted by row 0 (the shifted-data variance: r_0 is near the mean, so the sums do not
// cancel as plain Σ r² - n μ² would): μ = r_0 + s1 / n, Σ (r - μ)² = s2 - s1² / n.
template <typename T>
void shifted_moments(const T* R, int64_t ld, int64_t n, double* m, double* v, int64_t F) {
  col_shifted_any(R, ld, n, m, v, F);
#ifdef RNNKIT_SLEEF
  if (rnnkit_pw::has_avx512()) return rnnkit_norm_avx512::finish_moments(R, n, m, v, F);
#endif
  for (int64_t j = 0; j < F; ++j) {
    const double a = m[j];
    m[j] = double(R[j]) + a / n;
    v[j] = std::max(v[j] - a * a / n, 0.0);
  }
}

// Forward of one normalized group over a direction (norm.py's _Group) on raw rows: the saved
// x^ (N, F), rho (LN (N, 1), BN train (T, F)) and BN train statistics (T, F); BN eval reads
// st (2, S, F) (per slot: mean, 1/std) at row n's slot SL[n].
template <typename T>
struct NormG {
  int64_t mode, F, S;  // S: slots of st (BN eval)
  T *X, *RS, *MEAN, *VAR;
  const T *Gm, *Sh, *ST;
  const int64_t* SL;
  NormG(int64_t mode_, int64_t F_, const Tensor& xh, const Tensor& rs, const Tensor& mean, const Tensor& var,
        const Tensor& g, const OptT& s, const OptT& st, const std::vector<int64_t>& slots = {})
      : mode(mode_), F(F_), S(st.has_value() ? st->size(1) : 0), X(xh.data_ptr<T>()),
        RS(rs.numel() ? rs.data_ptr<T>() : nullptr), MEAN(mean.numel() ? mean.data_ptr<T>() : nullptr), VAR(var.numel() ? var.data_ptr<T>() : nullptr),
        Gm(g.data_ptr<T>()), Sh(ptr<T>(s)), ST(ptr<T>(st)), SL(slots.empty() ? nullptr : slots.data()) {
    TORCH_CHECK(mode != kBNEval || (ST && st->size(2) == F && !slots.empty() &&
                                    *std::max_element(slots.begin(), slots.end()) < S),
                "rnnkit_norm: batch norm in evaluation needs statistics (2, slots, ", F, ")");
  }
  // BN train: the statistics of columns [c0, c1) (default all) over the bs rows of R (bs, F) of
  // processing step k (float64 sums).
  void stats(const T* R, int64_t bs, int64_t k, int64_t c0 = 0, int64_t c1 = -1) const {
    if (mode != kBNTrain) return;
    if (c1 < 0) c1 = F;
    const int64_t w = c1 - c0;
    const T* Rc = R + c0;
    double *m, *v;  // the columns' float64 sums: thread-local scratch (no allocation per step)
    zeroed_scratch(2 * w, m);
    v = m + w;
    shifted_moments(Rc, F, bs, m, v, w);
    const int64_t o = k * F + c0;
    bn_stats_out(m, v, double(bs), MEAN + o, VAR + o, RS + o, w);
  }
  // One row r (F) at packed row n of step k: x^ saved at row ns (n, or the row's slot in a
  // step-sized scratch when nothing is saved), y = (g ⊙ x^ (+ s)) (+ add) (+ addv) into y (may
  // be r itself). BN train on a team (norm_team.h): the step's statistics `st` (mean, var,
  // rho: 3F) that the thread combined, instead of the saved ones.
  void row(const T* r, int64_t n, int64_t ns, int64_t k, const T* add, const T* addv, T* y,
           const T* st = nullptr) const {
    T* x = X + ns * F;
    if (mode == kLN) {  // vectors: one pass (shifted_sums); scalar: mean, then centred variance
      double m, v;
#ifdef RNNKIT_SLEEF
      // μ = r₀ + s1 / F, σ² = s2 / F - (s1 / F)² from the sums of r - r₀ (norm_avx2.h)
      auto moments = [&](double s1, double s2) {
        const double d = s1 / F;
        m = double(r[0]) + d;
        v = std::max(s2 / F - d * d, 0.0);
      };
      double s1, s2;
      if constexpr (std::is_same_v<T, float>) {
        if (rnnkit_pw::has_avx512()) {
          rnnkit_norm_avx512::shifted_sums(r, F, s1, s2);
          moments(s1, s2);
          const T rho = T(1 / std::sqrt(v + kEps));
          RS[n] = rho;
          if (MEAN) MEAN[n] = T(m);
          return rnnkit_norm_avx512::affine(r, T(m), rho, Gm, Sh, add, addv, x, y, F);
        }
      }
      if (rnnkit_pw::has_avx2()) {
        rnnkit_norm_avx2::shifted_sums(r, F, s1, s2);
        moments(s1, s2);
        const T rho = T(1 / std::sqrt(v + kEps));
        RS[n] = rho;
        if (MEAN) MEAN[n] = T(m);  // layer norm with a mean buffer (N, 1): the input group's
        return rnnkit_norm_avx2::affine(r, T(m), rho, Gm, Sh, add, addv, x, y, F);
      } else
#endif
      {
        m = sum4<double>(F, [&](int64_t j) { return double(r[j]); }) / F;
        v = sum4<double>(F, [&](int64_t j) { return (r[j] - m) * (r[j] - m); }) / F;
      }
      const T rho = T(1 / std::sqrt(v + kEps)), mu = T(m);
      RS[n] = rho;
      if (MEAN) MEAN[n] = mu;
      for (int64_t j = 0; j < F; ++j) x[j] = (r[j] - mu) * rho;
    } else {  // batch norm: per-column statistics, the step's (training) or the row's own (evaluation)
      const T *MU = st ? st : mode == kBNTrain ? MEAN + k * F : ST + SL[n] * F;
      const T* RH = st ? st + 2 * F : mode == kBNTrain ? RS + k * F : ST + (S + SL[n]) * F;
#ifdef RNNKIT_SLEEF
      if constexpr (std::is_same_v<T, float>)
        if (rnnkit_pw::has_avx512()) return rnnkit_norm_avx512::affine_cols(r, MU, RH, Gm, Sh, add, addv, x, y, F);
      if (rnnkit_pw::has_avx2()) return rnnkit_norm_avx2::affine_cols(r, MU, RH, Gm, Sh, add, addv, x, y, F);
#endif
      for (int64_t j = 0; j < F; ++j) x[j] = (r[j] - MU[j]) * RH[j];
    }
    if (Sh)
      for (int64_t j = 0; j < F; ++j) y[j] = x[j] * Gm[j] + Sh[j];
    else
      for (int64_t j = 0; j < F; ++j) y[j] = x[j] * Gm[j];
    if (add)
      for (int64_t j = 0; j < F; ++j) y[j] += add[j];
    if (addv)
      for (int64_t j = 0; j < F; ++j) y[j] += addv[j];
  }
};

}  // namespace
}  // namespace rnnkit_norm
