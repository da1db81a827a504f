// Fused GRU (torch form) and Elman RNN directions (fused.cpp's kinds 1-3), forward and
// explicit BPTT; fused.cpp's forward()/backward() call these for kind != 0.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common.h"

namespace rnnkit_gru_rnn {

using at::Tensor;
using rnnkit_common::Steps;

using rnnkit_common::batch_blocks;

using OptT = std::optional<Tensor>;

// kind: 1 = GRU, 2 = RNN tanh, 3 = RNN relu. steps in forward order (reverse already applied).
// Returns {out, h_n, c_n (empty), *saved} as fused.cpp's forward.
std::vector<Tensor> forward(int64_t kind, const Tensor& xp, const Tensor& h0, const Tensor& w_hh,
                            const OptT& b_hh, const OptT& mask, const OptT& zh, const Steps& steps, bool onednn);
// steps in backward order. Returns {d xp, d h0, d c0 (empty), d W_hh, d b_hh, empty, empty}.
std::vector<Tensor> backward(int64_t kind, const Tensor& gout, const Tensor& ghn, const std::vector<Tensor>& saved,
                             const Tensor& w_hh, const OptT& mask, const OptT& zh, bool has_bias, const Steps& steps,
                             bool onednn);

}  // namespace rnnkit_gru_rnn
