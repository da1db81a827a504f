// Batch norm of the input group of the recurrent batch-norm LSTM in training (Cooijmans et al.
// 2016): y = BN_t(a) ⊙ γ (+ b) for all steps at once, with per-step statistics over the step's
// rows, and its backward. Ops torch.ops.rnnkit_norm.bn_input_forward/backward, used by
// rnnkit/kernels/norm_input.py's batch_norm_input in eager mode (its PyTorch expression, which
// these compute up to rounding, stays for torch.compile and the pure backend). At the small
// shape that expression and its autograd backward (a dozen ATen calls each way) took ~40% of
// the layer's training step; here the steps run in parallel, one pass per statistic.
#include <torch/library.h>

#include "norm_group_bwd.h"

namespace rnnkit_norm {
namespace {

std::vector<int64_t> offsets(const std::vector<int64_t>& bsz) {
  std::vector<int64_t> off(bsz.size() + 1, 0);
  for (size_t t = 0; t < bsz.size(); ++t) off[t + 1] = off[t] + bsz[t];
  return off;
}

// [y (N, G), x^ (N, G), mean (T, G), biased var (T, G), rho (T, G)] of a (N, G), packed
// time-major with batch sizes bsz; statistics in time order. Without `save` (no gradient
// wanted) x^ is not kept: each thread writes it into one row of scratch (at the medium shape
// 13 MB less to allocate and write), and the x^ returned is empty.
std::vector<Tensor> bn_input_forward(const Tensor& a_, const Tensor& w_, const OptT& b_, std::vector<int64_t> bsz,
                                     bool save) {
  {
    using namespace rnnkit_check;
    const char* op = "rnnkit_norm::bn_input_forward";
    const auto dt = floating(op, "a", a_);
    tensor(op, "a", a_, dt, "(N, G)", {kAny, kAny});
    positive_width(op, "a", a_, "(N, G)");  // G = 0: (N, 0) results, whose backward died of SIGFPE
    tensor(op, "w", w_, dt, "(G,)", {a_.size(1)});
    opt(op, "b", b_, dt, "(G,)", {a_.size(1)});
  }
  const Tensor a = a_.contiguous(), w = w_.contiguous();
  const OptT b = b_.has_value() ? OptT(b_->contiguous()) : b_;
  const int64_t N = a.size(0), G = a.size(1), T = bsz.size();
  check_batch_sizes("rnnkit_norm::bn_input_forward", bsz, N, -1);
  auto o = a.options();
  Tensor y = at::empty({N, G}, o), xh = at::empty({save ? N : 0, G}, o), mean = at::empty({T, G}, o);
  Tensor var = at::empty({T, G}, o);
  Tensor rs = at::empty({T, G}, o);
  const auto off = offsets(bsz);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "rnnkit_bn_input_fwd", [&] {
    using T_ = scalar_t;
    const T_* A = a.data_ptr<T_>();
    T_* Y = y.data_ptr<T_>();
    at::parallel_for(0, T, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, bsz[0] * G)), [&](int64_t t0, int64_t t1) {
      const Tensor scratch = save ? xh : at::empty({1, G}, o);  // x^ of the row at hand
      const NormG<T_> ng(kBNTrain, G, scratch, rs, mean, var, w, b, std::nullopt);
      for (int64_t t = t0; t < t1; ++t) {
        ng.stats(A + off[t] * G, bsz[t], t);
        for (int64_t n = off[t]; n < off[t + 1]; ++n)
          ng.row(A + n * G, n, save ? n : 0, t, nullptr, nullptr, Y + n * G);
      }
    });
  });
  return {y, xh, mean, var, rs};
}

// [d a, dγ, dβ (empty without bias)] from dy (N, G) and the forward's x^, rho.
std::vector<Tensor> bn_input_backward(const Tensor& dy_, const Tensor& xh_, const Tensor& rs_, const Tensor& w_,
                                      bool has_bias, std::vector<int64_t> bsz) {
  {
    using namespace rnnkit_check;
    const char* op = "rnnkit_norm::bn_input_backward";
    const auto dt = floating(op, "dy", dy_);
    tensor(op, "dy", dy_, dt, "(N, G)", {kAny, kAny});
    positive_width(op, "dy", dy_, "(N, G)");  // G = 0 died of SIGFPE (NormB::grads divides by 2G)
    const int64_t N = dy_.size(0), G = dy_.size(1), T = bsz.size();
    tensor(op, "xh", xh_, dt, "(N, G)", {N, G});
    tensor(op, "rs", rs_, dt, "(T, G)", {T, G});
    tensor(op, "w", w_, dt, "(G,)", {G});
  }
  const Tensor dy = dy_.contiguous(), w = w_.contiguous(), xh = xh_.contiguous(), rs = rs_.contiguous();
  const int64_t N = dy.size(0), G = dy.size(1), T = bsz.size();
  check_batch_sizes("rnnkit_norm::bn_input_backward", bsz, N, -1);
  Tensor da = at::empty({N, G}, dy.options());
  const auto off = offsets(bsz);
  std::pair<Tensor, Tensor> ab;
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "rnnkit_bn_input_bwd", [&] {
    using T_ = scalar_t;
    const T_* D = dy.data_ptr<T_>();
    T_* DA = da.data_ptr<T_>();
    NormB<T_> nb(kBNTrain, G, xh, rs, w, std::nullopt);  // its per-thread accumulators
    at::parallel_for(0, T, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, bsz[0] * G)), [&](int64_t t0, int64_t t1) {
      NormB<T_> local(kBNTrain, G, xh, rs, w, std::nullopt, {}, 1);  // this thread's column means
      for (int64_t t = t0; t < t1; ++t) {
        local.stats(D + off[t] * G, off[t], bsz[t]);
        for (int64_t n = off[t]; n < off[t + 1]; ++n) local.row(D + n * G, n, t, DA + n * G);
      }
      double* mine = nb.mine();  // this thread's slot of the shared accumulators
      const double* got = local.mine();
      for (int64_t j = 0; j < 2 * G; ++j) mine[j] += got[j];
    });
    ab = nb.grads();
  });
  const auto cast = [&](const Tensor& t) { return t.to(dy.scalar_type(), false, true); };
  return {da, cast(ab.first), has_bias ? cast(ab.second) : none(dy)};
}

// [d a, dγ, dβ (empty without shift)] of the input group's layer norm y = x^ γ (+ β), rows of
// x^ = (a - mean) 1/std, from dy (N, G), the forward's x^ and 1/std (N, 1): the LSTM kernel's
// in-kernel input group (norm.cpp x_in) saves those. The rows run in parallel with NormB's
// AVX-512/AVX2 row backward and float64 gain/shift sums per thread; torch's layer-norm backward
// took ~1.9 ms of a medium training step for it.
std::vector<Tensor> ln_input_backward(const Tensor& dy_, const Tensor& xh_, const Tensor& rs_, const Tensor& w_,
                                      bool has_shift) {
  {
    using namespace rnnkit_check;
    const char* op = "rnnkit_norm::ln_input_backward";
    const auto dt = floating(op, "dy", dy_);
    tensor(op, "dy", dy_, dt, "(N, G)", {kAny, kAny});
    positive_width(op, "dy", dy_, "(N, G)");  // as bn_input_backward's
    const int64_t N = dy_.size(0), G = dy_.size(1);
    tensor(op, "xh", xh_, dt, "(N, G)", {N, G});
    tensor(op, "rs", rs_, dt, "(N, 1)", {N, 1});
    tensor(op, "w", w_, dt, "(G,)", {G});
  }
  const Tensor dy = dy_.contiguous(), w = w_.contiguous(), xh = xh_.contiguous(), rs = rs_.contiguous();
  const int64_t N = dy.size(0), G = dy.size(1);
  Tensor da = at::empty({N, G}, dy.options());
  std::pair<Tensor, Tensor> ab;
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "rnnkit_ln_input_bwd", [&] {
    using T_ = scalar_t;
    const T_* D = dy.data_ptr<T_>();
    T_* DA = da.data_ptr<T_>();
    NormB<T_> nb(kLN, G, xh, rs, w, std::nullopt);  // an accumulator per thread
    at::parallel_for(0, N, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, G)), [&](int64_t n0, int64_t n1) {
      nb.rows(D + n0 * G, n0, n1 - n0, 0, DA + n0 * G);
    });
    ab = nb.grads();
  });
  const auto cast = [&](const Tensor& t) { return t.to(dy.scalar_type(), false, true); };
  return {da, cast(ab.first), has_shift ? cast(ab.second) : none(dy)};
}

// update_running's argument checks of one group (all of them run before any group is updated)
void check_group(const Tensor& rm, const Tensor& rv, const Tensor& mean, const Tensor& var,
                 const std::vector<int64_t>& ns) {
  using namespace rnnkit_check;
  const char* op = "rnnkit_norm::update_running";
  const auto dt = floating(op, "rm", rm);
  tensor(op, "rm", rm, dt, "(S, F)", {kAny, kAny});
  tensor(op, "rv", rv, dt, "(S, F)", {rm.size(0), rm.size(1)});
  tensor(op, "mean", mean, dt, "(T, F)", {static_cast<int64_t>(ns.size()), rm.size(1)});
  tensor(op, "var", var, dt, "(T, F)", {static_cast<int64_t>(ns.size()), rm.size(1)});
  // step k updates slot min(k, S - 1): there must be one
  TORCH_CHECK(rm.size(0) > 0, op, ": rm and rv must have at least one slot (S > 0), got ", rm.sizes());
  // updated in place through raw row-major pointers (the sizes alone said nothing of this)
  TORCH_CHECK(rm.is_contiguous() && rv.is_contiguous(), op, ": rm and rv must be contiguous, got strides ",
              rm.strides(), " and ", rv.strides());
  // a step's row count: 0 or less was taken as a step (rm updated, rv skipped as for one row)
  for (int64_t n : ns) TORCH_CHECK(n > 0, op, ": batch_sizes must be positive, got ", c10::IntArrayRef(ns));
}

// The running statistics of one batch-norm group after a training call, in place: for the k-th
// processed step (statistics mean, biased var (T, F); ns[k] rows) at slot min(k, S - 1) of
// rm, rv (S, F): rm <- lerp(rm, mean, momentum), rv <- lerp(rv, var * n / (n - 1), momentum)
// (untouched when the step has one row); the steps past the last slot update it one after the
// other. norm_input.py's update_running (kept for torch.compile and the pure backend) in one
// call instead of a handful of ATen ops per group (~20 us each group at the small shape). Its
// arguments: check_group's.
void update_group(Tensor rm, Tensor rv, const Tensor& mean_, const Tensor& var_, const std::vector<int64_t>& ns,
                  double momentum) {
  const Tensor mean = mean_.contiguous(), var = var_.contiguous();
  const int64_t T = mean.size(0), S = rm.size(0), F = rm.size(1);
  AT_DISPATCH_FLOATING_TYPES(rm.scalar_type(), "rnnkit_bn_update_running", [&] {
    using T_ = scalar_t;
    T_ *RM = rm.data_ptr<T_>(), *RV = rv.data_ptr<T_>();
    const T_ *M = mean.data_ptr<T_>(), *V = var.data_ptr<T_>(), w = T_(momentum);
    for (int64_t k = 0; k < T; ++k) {
      const int64_t s = std::min(k, S - 1), n = ns[k];
      T_ *rm_s = RM + s * F, *rv_s = RV + s * F;
      const T_ *m = M + k * F, *v = V + k * F;
#ifdef RNNKIT_SLEEF
      if (std::is_same_v<T_, float> && rnnkit_pw::has_avx512()) {  // (the casts: T_ is float here)
        float *rmf = reinterpret_cast<float*>(rm_s), *rvf = reinterpret_cast<float*>(rv_s);
        const float *mf = reinterpret_cast<const float*>(m), *vf = reinterpret_cast<const float*>(v);
        rnnkit_norm_avx512::lerp_row(rmf, mf, 1.f, float(w), F);
        if (n > 1) rnnkit_norm_avx512::lerp_row(rvf, vf, float(double(n) / double(n - 1)), float(w), F);
        continue;
      }
#endif
      for (int64_t j = 0; j < F; ++j) rm_s[j] = rnnkit_pw::lerp(rm_s[j], m[j], w);
      if (n > 1) {
        const T_ c = T_(double(n) / double(n - 1));
        for (int64_t j = 0; j < F; ++j) rv_s[j] = rnnkit_pw::lerp(rv_s[j], v[j] * c, w);
      }
    }
  });
}

}  // namespace

// update_group of every group of a direction (its lists' i-th entries), one op call: a call
// from Python cost ~12 us a group, a third of a small batch-norm LSTM's training overhead.
// (Also called by rnnkit_norm::forward itself when given the running statistics.)
void update_running(std::vector<Tensor> rm, std::vector<Tensor> rv, const std::vector<Tensor>& mean,
                    const std::vector<Tensor>& var, std::vector<int64_t> ns, double momentum) {
  TORCH_CHECK(rv.size() == rm.size() && mean.size() == rm.size() && var.size() == rm.size(),
              "rnnkit_norm::update_running: rm, rv, mean and var must be lists of one length, got ", rm.size(),
              ", ", rv.size(), ", ", mean.size(), " and ", var.size());
  // every group checked first: a bad group leaves the others as they were, not half the direction updated
  for (size_t i = 0; i < rm.size(); ++i) check_group(rm[i], rv[i], mean[i], var[i], ns);
  for (size_t i = 0; i < rm.size(); ++i) update_group(rm[i], rv[i], mean[i], var[i], ns, momentum);
}

}  // namespace rnnkit_norm

TORCH_LIBRARY_FRAGMENT(rnnkit_norm, m) {
  m.def("bn_input_forward(Tensor a, Tensor w, Tensor? b, int[] batch_sizes, bool save=True) -> Tensor[]",
        &rnnkit_norm::bn_input_forward);
  m.def(
      "bn_input_backward(Tensor dy, Tensor xh, Tensor rs, Tensor w, bool has_bias, int[] batch_sizes) -> Tensor[]",
      &rnnkit_norm::bn_input_backward);
  m.def("ln_input_backward(Tensor dy, Tensor xh, Tensor rs, Tensor w, bool has_shift) -> Tensor[]",
        &rnnkit_norm::ln_input_backward);
  m.def(
      "update_running(Tensor(a!)[] rm, Tensor(b!)[] rv, Tensor[] mean, Tensor[] var, int[] batch_sizes, "
      "float momentum) -> ()",
      &rnnkit_norm::update_running);
}
