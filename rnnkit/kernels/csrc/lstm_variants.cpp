// rnnkit fused LSTM directions for the gate layouts of Greff et al. (2017): NIG, NFG, NOG, NIAF,
// NOAF, CIFG, with peepholes and projection; forward and explicit BPTT. Mirrors
// rnnkit/kernels/lstm_variants.py (same flags, buffers and equations); registered as ops by
// variants.cpp.
#include "blocked.h"
#include "lstm_row.h"  // lstm_step_dh
#include "pointwise.h"
#include "variants.h"

// The per-step element-wise passes are plain loops over H on raw pointers: GCC vectorizes them
// at -O3 only (the extension's -O2 vectorizes nothing that needs a remainder loop; scalar, they
// made the large shape's forward ~30% slower). No -ffast-math; no FMA in the baseline build
// (the AVX-512 build, chosen at run time, may fuse a multiply and an add: last bits only).
#pragma GCC optimize("O3")

using namespace rnnkit_common;
using at::Tensor;
using OptT = std::optional<Tensor>;

namespace {
namespace base {
#include "lstm_variants_impl.h"
}  // namespace base
#ifdef RNNKIT_SLEEF
#pragma GCC push_options
#pragma GCC target("avx512f")
namespace avx512 {
#include "lstm_variants_impl.h"
}  // namespace avx512
#pragma GCC pop_options
#endif

bool wide() {
#ifdef RNNKIT_SLEEF
  return rnnkit_pw::has_avx512();
#else
  return false;
#endif
}

}  // namespace

namespace rnnkit_variants {

std::vector<Tensor> lstm_forward(int64_t flags, const Tensor& xp, const Tensor& h0, const Tensor& c0,
                                 const Tensor& w_hh, const OptT& w_hr, const OptT& mask, const OptT& zh,
                                 const OptT& zc, const OptT& w_peep, const OptT& a0, const OptT& w_gg,
                                 const OptT& zg, const Steps& steps, bool onednn, const OptT& x,
                                 const OptT& w_ih, const OptT& b_in) {
#ifdef RNNKIT_SLEEF
  if (wide())
    return avx512::forward_impl(avx512::LstmLayout(flags), xp, h0, c0, w_hh, w_hr, mask, zh, zc, w_peep, a0, w_gg, zg,
                                steps, onednn, x, w_ih, b_in);
#endif
  return base::forward_impl(base::LstmLayout(flags), xp, h0, c0, w_hh, w_hr, mask, zh, zc, w_peep, a0, w_gg, zg,
                            steps, onednn, x, w_ih, b_in);
}

std::vector<Tensor> lstm_backward(int64_t flags, const Tensor& gout, const Tensor& ghn, const Tensor& gcn,
                                  const Tensor& gan, const std::vector<Tensor>& saved, const Tensor& w_hh,
                                  const OptT& w_hr, const OptT& mask, const OptT& zh, const OptT& zc,
                                  const OptT& w_peep, const OptT& w_gg, const OptT& zg, const Steps& steps,
                                  bool onednn) {
#ifdef RNNKIT_SLEEF
  if (wide())
    return avx512::backward_impl(avx512::LstmLayout(flags), gout, ghn, gcn, gan, saved, w_hh, w_hr, mask, zh, zc,
                                 w_peep, w_gg, zg, steps, onednn);
#endif
  return base::backward_impl(base::LstmLayout(flags), gout, ghn, gcn, gan, saved, w_hh, w_hr, mask, zh, zc, w_peep,
                             w_gg, zg, steps, onednn);
}

}  // namespace rnnkit_variants
