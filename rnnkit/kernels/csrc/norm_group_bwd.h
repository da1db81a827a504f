// Backward of one normalized group on raw rows (NormB; its forward is norm_kernels.h's NormG),
// for csrc/norm_bwd.cpp and csrc/norm_input.cpp.
#pragma once
#include "norm_kernels.h"

namespace rnnkit_norm {
namespace {

// Backward of one group: dr = rho ⊙ (dx^ - mean(dx^) - x^ ⊙ mean(dx^ ⊙ x^)) with dx^ = g ⊙ dy
// (means over the row's features for LN, over the step's rows for BN train; dr = rho ⊙ dx^ for
// BN eval), and the affine gradients dgam += dy ⊙ x^, dbet += dy accumulated in float64, one
// (2, F) accumulator per thread (summed at the end: no race, no lock).
template <typename T>
struct NormB {
  int64_t mode, F, S;
  const T *X, *RS, *Gm, *ST;
  const int64_t* SL;        // BN eval: row n's slot of st (2, S, F), as NormG
  std::vector<double> acc;  // (threads, 2, F)
  std::vector<T> ca, cc;    // BN train: the step's column means of dx^ and dx^ ⊙ x^
  // threads: one (2, F) accumulator per thread id. Inside a parallel region ATen may report one
  // thread (torch's thread count never set), so a NormB made there for its own thread takes 1.
  NormB(int64_t mode_, int64_t F_, const Tensor& xh, const Tensor& rs, const Tensor& g, const OptT& st,
        const std::vector<int64_t>& slots = {}, int64_t threads = at::get_num_threads())
      : mode(mode_), F(F_), S(st.has_value() ? st->size(1) : 0), X(xh.data_ptr<T>()),
        RS(rs.numel() ? rs.data_ptr<T>() : nullptr), Gm(g.data_ptr<T>()), ST(ptr<T>(st)), SL(slots.empty() ? nullptr : slots.data()),
        acc(size_t(2 * F * threads), 0.), ca(F), cc(F) {}
  double* mine() {
    const int64_t slot = acc.size() == size_t(2 * F) ? 0 : at::get_thread_num();
    TORCH_CHECK(size_t(2 * F * (slot + 1)) <= acc.size(), "rnnkit_norm: no accumulator for thread ", slot);
    return acc.data() + 2 * F * slot;
  }
  // BN train: column means of the step's rows D (bs, F) at packed rows [off, off + bs), and
  // the affine gradients of those rows.
  void stats(const T* D, int64_t off, int64_t bs) {
    if (mode != kBNTrain) return;
    // split by columns over the threads (each column's sums in the same order: the same bits);
    // a thread adds into its own accumulators, and ca, cc are per column
    if (bs * F < kRowsMin || at::get_num_threads() < 2 || at::in_parallel_region() || acc.size() == size_t(2 * F))
      return stats_cols(D, off, bs, 0, F);
    at::parallel_for(0, F, std::max<int64_t>(64, F / at::get_num_threads()),
                     [&](int64_t c0, int64_t c1) { stats_cols(D, off, bs, c0, c1); });
  }
  void stats_cols(const T* D, int64_t off, int64_t bs, int64_t c0, int64_t c1) {
    const int64_t w = c1 - c0;
    double *m1, *m2;
    zeroed_scratch(2 * w, m1);
    m2 = m1 + w;
    sums(D, off, bs, c0, c1, m1, m2);
    for (int64_t j = 0; j < w; ++j) ca[c0 + j] = T(m1[j] / bs), cc[c0 + j] = T(m2[j] / bs);
  }
  // BN train on a team (norm_team.h): this thread's sums over its n rows D at packed rows
  // [off, off + n), into P (2F: Σ d g, Σ (d g) x^) and its affine gradients; then every
  // thread's means of the step's bs rows from the team's nt partials (stride apart, thread
  // order) into m (2F: mean of d g, of (d g) x^).
  void partial(const T* D, int64_t off, int64_t n, double* P) {
    std::fill(P, P + 2 * F, 0.0);
    sums(D, off, n, 0, F, P, P + F);
  }
  void combine(const double* P, int64_t stride, int64_t nt, int64_t bs, T* m) const {
    for (int64_t j = 0; j < 2 * F; ++j) {
      double s = 0;
      for (int64_t t = 0; t < nt; ++t) s += P[t * stride + j];
      m[j] = T(s / bs);
    }
  }
  // Σ d g and Σ (d g) x^ of columns [c0, c1) over rows D (n, F) at packed rows [off, off + n)
  // into m1, m2 (c1 - c0 each), and the affine gradients of those rows.
  void sums(const T* D, int64_t off, int64_t bs, int64_t c0, int64_t c1, double* m1, double* m2) {
    const int64_t w = c1 - c0;
    double *DGA = mine() + c0, *DBE = DGA + F;
    const T *Xs = X + off * F + c0, *Dc = D + c0, *Gc = Gm + c0;
#ifdef RNNKIT_SLEEF
    if (rnnkit_pw::has_avx512()) {
      rnnkit_norm_avx512::col_bwd(Dc, Xs, F, bs, Gc, w, m1, m2, DGA, DBE);
    } else if (rnnkit_pw::has_avx2()) {
      for (int64_t b = 0; b < bs; ++b)
        rnnkit_norm_avx2::col_bwd(Dc + b * F, Xs + b * F, Gc, w, m1, m2, DGA, DBE);
    } else
#endif
    {
      for (int64_t b = 0; b < bs; ++b)
        for (int64_t j = 0; j < w; ++j) {
          const T d = Dc[b * F + j], x = Xs[b * F + j], t = d * Gc[j];
          DGA[j] += double(d) * x;
          DBE[j] += d;
          m1[j] += t;
          m2[j] += t * x;
        }
    }
  }
  // dr (F) of the row d (F) at packed row n of step k (BN train on a team: the step's means
  // `mc` (2F) that the thread combined, instead of ca, cc).
  void row(const T* d, int64_t n, int64_t k, T* out, const T* mc = nullptr) {
    const T* x = X + n * F;
    if (mode == kBNTrain) {
      const T *Q = RS + k * F, *A = mc ? mc : ca.data(), *C = mc ? mc + F : cc.data();
#ifdef RNNKIT_SLEEF
      if (rnnkit_pw::has_avx512()) return rnnkit_norm_avx512::bnb_out_cols(d, x, Gm, A, C, Q, out, F);
      if (rnnkit_pw::has_avx2()) return rnnkit_norm_avx2::bnb_out_cols(d, x, Gm, A, C, Q, out, F);
#endif
      for (int64_t j = 0; j < F; ++j) out[j] = Q[j] * (d[j] * Gm[j] - A[j] - x[j] * C[j]);
      return;
    }
    double *DGA = mine(), *DBE = DGA + F;
#ifdef RNNKIT_SLEEF
    if constexpr (std::is_same_v<T, float>) {
      if (mode == kLN && rnnkit_pw::has_avx512()) {
        double s1, s2;
        rnnkit_norm_avx512::bwd_sums(d, x, Gm, F, DGA, DBE, s1, s2);
        return rnnkit_norm_avx512::lnb_out(d, x, Gm, T(s1 / F), T(s2 / F), RS[n], out, F);
      }
    }
    if (mode == kLN && rnnkit_pw::has_avx2()) {
      double s1, s2;
      rnnkit_norm_avx2::bwd_sums(d, x, Gm, F, DGA, DBE, s1, s2);
      return rnnkit_norm_avx2::lnb_out(d, x, Gm, T(s1 / F), T(s2 / F), RS[n], out, F);
    }
#endif
    for (int64_t j = 0; j < F; ++j) {
      DGA[j] += double(d[j]) * x[j];
      DBE[j] += d[j];
    }
    if (mode == kLN) {
      double p1[4] = {0, 0, 0, 0}, p2[4] = {0, 0, 0, 0};  // independent partial sums: no add chain
      int64_t j = 0;
      for (; j + 4 <= F; j += 4)
        for (int u = 0; u < 4; ++u) {
          const T t = d[j + u] * Gm[j + u];
          p1[u] += t;
          p2[u] += double(t) * x[j + u];
        }
      for (; j < F; ++j) {
        const T t = d[j] * Gm[j];
        p1[0] += t;
        p2[0] += double(t) * x[j];
      }
      const T a = T((p1[0] + p1[1] + p1[2] + p1[3]) / F), c = T((p2[0] + p2[1] + p2[2] + p2[3]) / F), rho = RS[n];
      for (j = 0; j < F; ++j) out[j] = rho * (d[j] * Gm[j] - a - x[j] * c);
    } else {
      const T* RH = ST + (S + SL[n]) * F;
      for (int64_t j = 0; j < F; ++j) out[j] = d[j] * Gm[j] * RH[j];
    }
  }
  // row() of the nr consecutive rows D (nr, F) at packed rows [n0, n0 + nr) into out (nr, F):
  // layer norm on AVX-512 four rows at a time, their affine gradients added in registers
  // (norm_avx512.h's bwd_sums_rows: the same sums as a row at a time).
  void rows(const T* D, int64_t n0, int64_t nr, int64_t k, T* out) {
#ifdef RNNKIT_SLEEF
    if constexpr (std::is_same_v<T, float>) {
      if (mode == kLN && rnnkit_pw::has_avx512()) {
        double *DGA = mine(), *DBE = DGA + F;
        for (int64_t i = 0; i < nr; i += 4) {
          const int m = int(std::min<int64_t>(4, nr - i));
          const int64_t n = n0 + i;
          double p1[4], p2[4];
          rnnkit_norm_avx512::bwd_sums_rows(D + i * F, X + n * F, F, m, Gm, F, DGA, DBE, p1, p2);
          for (int r = 0; r < m; ++r)
            rnnkit_norm_avx512::lnb_out(D + (i + r) * F, X + (n + r) * F, Gm, T(p1[r] / F), T(p2[r] / F),
                                        RS[n + r], out + (i + r) * F, F);
        }
        return;
      }
    }
#endif
    for (int64_t i = 0; i < nr; ++i) row(D + i * F, n0 + i, k, out + i * F);
  }
  // (dgam, dbet) summed over the threads, as float64 tensors (F,).
  std::pair<Tensor, Tensor> grads() const {
    Tensor dg = at::zeros({F}, at::kDouble), db = at::zeros({F}, at::kDouble);
    double *G = dg.data_ptr<double>(), *Bt = db.data_ptr<double>();
    for (size_t t = 0; t < acc.size() / (2 * F); ++t)
      for (int64_t j = 0; j < F; ++j) G[j] += acc[t * 2 * F + j], Bt[j] += acc[t * 2 * F + F + j];
    return {dg, db};
  }
};

}  // namespace
}  // namespace rnnkit_norm
