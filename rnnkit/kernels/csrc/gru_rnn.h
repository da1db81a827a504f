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

// f(b0, b1) over batch rows [0, B): one contiguous block of rows per thread for the WHOLE time
// loop (row b of a step depends only on row b of the previous step, forward and backward), so
// one fork/join per call and no barrier inside the loop. Packed input: rows are sorted by
// decreasing length, so the cuts balance the row-steps (sum over steps of the active rows in a
// block), not the rows. Steps under 2048 values (B * width) stay on one thread: the fork/join
// (~5 us) would cost more than it saves; else at least 4 rows per thread.
template <typename F>
void batch_blocks(int64_t B, int64_t width, const Steps& steps, const F& f) {
  constexpr int64_t kMinRows = 4;
  const int64_t k = B * width < 2048 ? 1 : std::min<int64_t>(at::get_num_threads(), B / kMinRows);
  if (k <= 1 || at::in_parallel_region()) return f(int64_t(0), B);
  std::vector<int64_t> len(B, 0), cut(k + 1, B);  // len[b]: steps in which row b is active
  for (const auto& st : steps)
    for (int64_t b = 0; b < std::min(st.second, B); ++b) ++len[b];
  int64_t total = 0, acc = 0, i = 1;
  for (int64_t b = 0; b < B; ++b) total += len[b];
  cut[0] = 0;
  for (int64_t b = 0; b < B && i < k; ++b) {
    acc += len[b];
    for (; i < k && acc * k >= total * i; ++i) cut[i] = b + 1;
  }
  for (int64_t j = 1; j <= k; ++j) cut[j] = std::min(std::max(cut[j], cut[j - 1]), B);
  at::parallel_for(0, k, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t j = i0; j < i1; ++j)
      if (cut[j + 1] > cut[j]) f(cut[j], cut[j + 1]);
  });
}

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
