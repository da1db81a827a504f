// Building blocks of csrc/norm.cpp: one normalized group's forward (Group) and backward
// (norm_backward); the GEMMs and the step schedule come from common.h.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "common.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace rnnkit_norm {
using at::Tensor;
using OptT = std::optional<Tensor>;
namespace {

constexpr double kEps = 1e-5;  // rnnkit.cells.norm.EPS
constexpr int64_t kLN = 1, kBNTrain = 2, kBNEval = 3;

// GEMMs (the policy of rnnkit/kernels/_gemm.py), the step schedule: csrc/common.h.
using rnnkit_common::Linear;
using rnnkit_common::mm_tn;
using rnnkit_common::none;
using rnnkit_common::schedule;

// Out-variants that take the destination by value (a narrow()ed view is an rvalue).
Tensor sigmoid_o(Tensor out, const Tensor& a) { return at::sigmoid_out(out, a); }
Tensor tanh_o(Tensor out, const Tensor& a) { return at::tanh_out(out, a); }
Tensor mul_o(Tensor out, const Tensor& a, const Tensor& b) { return at::mul_out(out, a, b); }

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

// One normalized group over a direction (norm.py's _Group): saved x^ (N, F), rho, stats.
struct Group {
  int64_t mode, F;
  Tensor g;
  OptT s, st;
  Tensor xh, rs, mean, var;
  Group(int64_t mode_, int64_t N, int64_t T, int64_t F_, const Tensor& like, const Tensor& g_, const OptT& s_,
        const OptT& st_)
      : mode(mode_), F(F_), g(g_.contiguous()) {
    if (s_.has_value()) s = s_->contiguous();
    if (st_.has_value()) st = st_->contiguous();
    auto o = like.options();
    xh = at::empty({N, F}, o);
    rs = mode == kLN ? at::empty({N, 1}, o) : mode == kBNTrain ? at::empty({T, F}, o) : none(like);
    mean = mode == kBNTrain ? at::empty({T, F}, o) : none(like);
    var = mode == kBNTrain ? at::empty({T, F}, o) : none(like);
  }
  // y = g ⊙ x^ (+ s) of the raw group r (bs, F) at rows [off, off + bs), processing step k;
  // x^, rho (and the step's statistics) saved. One pass over r per statistic, no temporaries.
  // `add` (bs, F) contiguous rows and `addv` (F,) are optional terms added to y.
  Tensor operator()(const Tensor& r_, int64_t off, int64_t bs, int64_t k, const Tensor* add = nullptr,
                    const Tensor* addv = nullptr) {
    const Tensor r = r_.contiguous();
    Tensor y = at::empty({bs, F}, r.options());
    AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "rnnkit_norm_fwd", [&] {
      using acc = double;
      const scalar_t* R = r.data_ptr<scalar_t>();
      scalar_t* X = xh.data_ptr<scalar_t>() + off * F;
      scalar_t* Y = y.data_ptr<scalar_t>();
      const scalar_t* Gm = g.data_ptr<scalar_t>();
      const scalar_t* S = s.has_value() ? s->data_ptr<scalar_t>() : nullptr;
      if (mode == kLN) {  // two passes per row (mean, then centred variance), 4 partial sums each
        scalar_t* RS = rs.data_ptr<scalar_t>() + off;
        for (int64_t b = 0; b < bs; ++b) {
          const scalar_t* row = R + b * F;
          const acc m = sum4<acc>(F, [&](int64_t j) { return acc(row[j]); }) / F;
          const acc v = sum4<acc>(F, [&](int64_t j) { return (row[j] - m) * (row[j] - m); }) / F;
          const scalar_t rho = scalar_t(1 / std::sqrt(v + kEps)), mu = scalar_t(m);
          RS[b] = rho;
          for (int64_t j = 0; j < F; ++j) X[b * F + j] = (row[j] - mu) * rho;
        }
      } else if (mode == kBNTrain) {
        std::vector<acc> m(F, 0), v(F, 0);
        for (int64_t b = 0; b < bs; ++b)
          for (int64_t j = 0; j < F; ++j) m[j] += R[b * F + j];
        for (int64_t j = 0; j < F; ++j) m[j] /= bs;
        for (int64_t b = 0; b < bs; ++b)
          for (int64_t j = 0; j < F; ++j) v[j] += (R[b * F + j] - m[j]) * (R[b * F + j] - m[j]);
        scalar_t *M = mean.data_ptr<scalar_t>() + k * F, *V = var.data_ptr<scalar_t>() + k * F;
        scalar_t* RS = rs.data_ptr<scalar_t>() + k * F;
        for (int64_t j = 0; j < F; ++j) {
          M[j] = scalar_t(m[j]);
          V[j] = scalar_t(v[j] / bs);
          RS[j] = scalar_t(1 / std::sqrt(v[j] / bs + kEps));
        }
        for (int64_t b = 0; b < bs; ++b)
          for (int64_t j = 0; j < F; ++j) X[b * F + j] = (R[b * F + j] - M[j]) * RS[j];
      } else {
        const int64_t N = st->size(1);
        const scalar_t* MU = st->data_ptr<scalar_t>() + off * F;
        const scalar_t* RH = MU + N * F;
        for (int64_t i = 0; i < bs * F; ++i) X[i] = (R[i] - MU[i]) * RH[i];
      }
      const scalar_t* A = add ? add->data_ptr<scalar_t>() : nullptr;
      const scalar_t* AV = addv ? addv->data_ptr<scalar_t>() : nullptr;
      for (int64_t b = 0; b < bs; ++b)
        for (int64_t j = 0; j < F; ++j) {
          scalar_t y = X[b * F + j] * Gm[j];
          if (S) y += S[j];
          if (A) y += A[b * F + j];
          if (AV) y += AV[j];
          Y[b * F + j] = y;
        }
    });
    return y;
  }
};

// dr of one step's group into `out` (bs, F), from dy (the gradient of y): dx^ = g ⊙ dy,
// dr = rho ⊙ (dx^ - mean(dx^) - x^ ⊙ mean(dx^ ⊙ x^)) (means over features for layer norm, over
// rows for batch norm in training), dr = rho ⊙ dx^ with given statistics.
// Also accumulates the affine gradients of the whole sequence: dgam += dy ⊙ x^, dbet += dy
// (float64 accumulators of shape (F,)).
Tensor norm_backward(int64_t mode, const Tensor& dy_, const Tensor& xh, const Tensor& rs, const Tensor& g, Tensor out,
                     Tensor& dgam, Tensor& dbet) {
  const Tensor dy = dy_.contiguous();
  const int64_t bs = dy.size(0), F = dy.size(1);
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "rnnkit_norm_bwd", [&] {
    using acc = double;
    acc *DGA = dgam.data_ptr<acc>(), *DBE = dbet.data_ptr<acc>();
    for (int64_t b = 0; b < bs; ++b) {
      const scalar_t *d = dy.data_ptr<scalar_t>() + b * F, *x = xh.data_ptr<scalar_t>() + b * F;
      for (int64_t j = 0; j < F; ++j) {
        DGA[j] += acc(d[j]) * x[j];
        DBE[j] += d[j];
      }
    }
    const scalar_t *D = dy.data_ptr<scalar_t>(), *X = xh.data_ptr<scalar_t>(), *Gm = g.data_ptr<scalar_t>();
    const scalar_t* RS = rs.data_ptr<scalar_t>();  // LN (bs, 1); BN train (F,); BN eval (bs, F)
    scalar_t* O = out.data_ptr<scalar_t>();
    if (mode == kLN) {
      for (int64_t b = 0; b < bs; ++b) {
        const scalar_t *d = D + b * F, *x = X + b * F;
        acc p1[4] = {0, 0, 0, 0}, p2[4] = {0, 0, 0, 0};  // independent partial sums: no add chain
        int64_t j = 0;
        for (; j + 4 <= F; j += 4)
          for (int u = 0; u < 4; ++u) {
            const scalar_t t = d[j + u] * Gm[j + u];
            p1[u] += t;
            p2[u] += acc(t) * x[j + u];
          }
        for (; j < F; ++j) {
          const scalar_t t = d[j] * Gm[j];
          p1[0] += t;
          p2[0] += acc(t) * x[j];
        }
        const scalar_t a = scalar_t((p1[0] + p1[1] + p1[2] + p1[3]) / F);
        const scalar_t c = scalar_t((p2[0] + p2[1] + p2[2] + p2[3]) / F), rho = RS[b];
        for (j = 0; j < F; ++j) O[b * F + j] = rho * (d[j] * Gm[j] - a - x[j] * c);
      }
    } else if (mode == kBNTrain) {
      std::vector<acc> m1(F, 0), m2(F, 0);
      for (int64_t b = 0; b < bs; ++b)
        for (int64_t j = 0; j < F; ++j) {
          const scalar_t d = D[b * F + j] * Gm[j];
          m1[j] += d;
          m2[j] += d * X[b * F + j];
        }
      std::vector<scalar_t> a(F), c(F);
      for (int64_t j = 0; j < F; ++j) a[j] = scalar_t(m1[j] / bs), c[j] = scalar_t(m2[j] / bs);
      for (int64_t b = 0; b < bs; ++b)
        for (int64_t j = 0; j < F; ++j)
          O[b * F + j] = RS[j] * (D[b * F + j] * Gm[j] - a[j] - X[b * F + j] * c[j]);
    } else {
      for (int64_t b = 0; b < bs; ++b)
        for (int64_t j = 0; j < F; ++j) O[b * F + j] = D[b * F + j] * Gm[j] * RS[b * F + j];
    }
  });
  return out;
}

Tensor rho(int64_t mode, const Tensor& rs, const OptT& st, int64_t off, int64_t bs, int64_t k) {
  if (mode == kLN) return rs.narrow(0, off, bs);
  if (mode == kBNTrain) return rs.select(0, k);
  return st->select(0, 1).narrow(0, off, bs);
}

Tensor prev(const Tensor& hbuf, const OptT& mask, int64_t bs, Tensor dst) {
  if (mask.has_value()) return at::mul_out(dst, hbuf.narrow(0, 0, bs), mask->narrow(0, 0, bs));
  return dst.copy_(hbuf.narrow(0, 0, bs));
}

}  // namespace
}  // namespace rnnkit_norm
