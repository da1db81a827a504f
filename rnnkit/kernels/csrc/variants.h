// Declarations shared by the variant kernels (lstm_variants.cpp, variants.cpp).
#pragma once
#include "common.h"

namespace rnnkit_variants {

using at::Tensor;
using OptT = std::optional<Tensor>;
using rnnkit_common::Steps;

// LSTM gate layouts; flags as rnnkit/kernels/lstm_variants.py.
std::vector<Tensor> lstm_forward(int64_t flags, const Tensor& xp, const Tensor& h0, const Tensor& c0,
                                 const Tensor& w_hh, const OptT& w_hr, const OptT& mask, const OptT& zh,
                                 const OptT& zc, const OptT& w_peep, const OptT& a0, const OptT& w_gg,
                                 const OptT& zg, const Steps& steps, bool onednn, const OptT& x = std::nullopt,
                                 const OptT& w_ih = std::nullopt, const OptT& b_in = std::nullopt);
std::vector<Tensor> lstm_backward(int64_t flags, const Tensor& gout, const Tensor& ghn, const Tensor& gcn,
                                  const Tensor& gan, const std::vector<Tensor>& saved, const Tensor& w_hh,
                                  const OptT& w_hr, const OptT& mask, const OptT& zh, const OptT& zc,
                                  const OptT& w_peep, const OptT& w_gg, const OptT& zg, const Steps& steps,
                                  bool onednn);

}  // namespace rnnkit_variants
