// Batch norm in training on a team of threads (the LSTM's: csrc/norm.cpp forward, csrc/norm_bwd.cpp
// backward).
//
// A step's batch statistics need all its rows, so batch norm in training used to split each
// step over the threads: the GEMM by column blocks, then the row passes by rows, four fork/joins
// a step, and each row pass read half its rows from the other core's cache (the GEMM had
// written them there). Here each thread keeps one block of batch rows for the whole loop, as
// layer norm's row blocks (over_steps), and the threads meet at a barrier where a step's
// statistics need every row: each sums its own rows (partial: count, column means and sums of
// squared deviations about them), then every thread combines the team's partials in thread
// order (Chan, Golub and LeVeque's pairwise update) into the same statistics. Only the
// partials cross cores. With one thread this is the one-pass NormG::stats.
#pragma once
#include "norm_kernels.h"

#include <array>
#include <exception>
#include <mutex>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace rnnkit_norm {
namespace {

inline void team_barrier() {
#ifdef _OPENMP
#pragma omp barrier
#endif
}

// f(k, phase, b0, b1, t, nt) for every step k of a direction in processing order and phases
// 0 .. phases-1 of each, then f(T, 0, ...) once (closing the last step), with a team barrier
// after every call but that last: thread t of nt owns batch rows [b0, b1) (rows of a step past
// its batch size are inactive: f clips them, possibly to none, and still takes part; so do
// threads beyond the row blocks, with none). On one thread below kRowsMin values a step (the
// small shape: a barrier would cost more than the step's work). The team is OpenMP's default
// one, as ATen's parallel_for (no num_threads clause: pytorch #32008), with ATen's thread id
// set (NormB's per-thread accumulators). An exception in f stops that thread's work but not
// its barriers (the others would wait forever), and is rethrown after the loop.
template <typename F>
void over_steps_team(int64_t B, int64_t width, const rnnkit_common::Steps& steps, int phases, const F& f) {
  const int64_t T = steps.size();
  // at least one block (B < 4 in a wide step: B / 4 = 0 blocks left every row unowned)
  const int64_t want = B * width < kRowsMin || at::in_parallel_region()
                           ? 1
                           : std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), B / 4));
  // the callers size their per-thread buffers for ATen's thread count: a larger OpenMP team
  // (the ICVs differ in some thread) keeps its extra threads to the barriers
  const int64_t cap = std::max(1, at::get_num_threads());
  std::exception_ptr err;
  std::mutex mu;
  auto run = [&](int64_t t, int64_t team) {
    const int64_t nt = std::min(team, cap), nb = std::min(nt, want);
    const std::vector<int64_t> cut = rnnkit_common::row_cuts(B, steps, nb);
    const int64_t b0 = t < nb ? cut[t] : B, b1 = t < nb ? cut[t + 1] : B;
    bool ok = t < nt;
    for (int64_t k = 0; k <= T; ++k)
      for (int ph = 0; ph < (k < T ? phases : 1); ++ph) {
        if (ok) try {
            f(k, ph, b0, b1, t, nt);
          } catch (...) {
            ok = false;
            std::lock_guard<std::mutex> lock(mu);
            if (!err) err = std::current_exception();
          }
        if (k < T) team_barrier();
      }
  };
#ifdef _OPENMP
  if (want > 1) {
#pragma omp parallel
    {
      const at::internal::ThreadIdGuard tid(omp_get_thread_num());
      run(omp_get_thread_num(), omp_get_num_threads());
    }
  } else
#endif
    run(0, 1);
  if (err) std::rethrow_exception(err);
}

// Team statistics of one normalized group of F columns: per thread a partial (1 + 2F doubles:
// count, column means, sums of squared deviations), and per thread the combined statistics
// (3F values: mean, biased variance, 1/sqrt(var + eps)) its row pass reads.
template <typename T>
struct TeamStats {
  int64_t F, nt, slots;  // slots: partials per thread (the input group: a chunk's steps)
  std::vector<double> part;
  std::vector<T> comb;
  TeamStats(int64_t F_, int64_t nt_, int64_t slots_ = 1)
      : F(F_), nt(nt_), slots(slots_), part(nt_ * slots_ * (1 + 2 * F_)), comb(nt_ * 3 * F_) {}
  double* partial(int64_t t, int64_t s = 0) { return part.data() + (s * nt + t) * (1 + 2 * F); }
  // Thread t's partial of rows [0, n) of R (row stride ld): shifted by its first row.
  void sum(int64_t t, const T* R, int64_t ld, int64_t n, int64_t s = 0) {
    double *P = partial(t, s), *m = P + 1, *v = m + F;
    P[0] = double(n);
    std::fill(m, m + 2 * F, 0.0);
    if (n > 0) shifted_moments(R, ld, n, m, v, F);
  }
  // The team's statistics of slot s (thread order) into thread t's comb (mean, var, rho: the
  // pointer returned); with `out` (M, V, Q at the step's row) also stored there.
  const T* combine(int64_t t, int64_t nt_, int64_t s = 0, T* M = nullptr, T* V = nullptr, T* Q = nullptr) {
    double *m, *v;
    double n = 0;
    if (nt_ == 1) {  // one thread: its partial is the team's (sum() zeroed it when it has no rows),
      double* P = partial(0, s);  // so no zeroed copy of it (~1.2 MB of memset and copy a small call)
      n = P[0], m = P + 1, v = m + F;
    } else {
      zeroed_scratch(2 * F, m);
      v = m + F;
    }
    for (int64_t u = 0; u < nt_ && nt_ > 1; ++u) {
      const double *P = partial(u, s), nu = P[0], *pm = P + 1, *pv = pm + F;
      if (nu == 0) continue;
      if (n == 0) {
        std::copy_n(pm, 2 * F, m);
      } else {
        const double w = nu / (n + nu), c = n * nu / (n + nu);
        for (int64_t j = 0; j < F; ++j) {
          const double d = pm[j] - m[j];
          m[j] += d * w;
          v[j] += pv[j] + d * d * c;
        }
      }
      n += nu;
    }
    T* L = comb.data() + t * 3 * F;
    bn_stats_out(m, v, n, L, L + F, L + 2 * F, F);
    if (M) {
      std::copy_n(L, F, M);
      std::copy_n(L + F, F, V);
      std::copy_n(L + 2 * F, F, Q);
    }
    return L;
  }
};

}  // namespace
}  // namespace rnnkit_norm
