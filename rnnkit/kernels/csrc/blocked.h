// The recurrent GEMM of a step split into column blocks, one per thread, the way oneDNN's RNN
// primitive (torch.nn.LSTM on the CPU) gets its speed.
//
// A step's h_{t-1} W_hh^T is small (medium shape: 32x256 @ 256x1024, ~40 us on one core): one
// call on one thread leaves the other core idle, an ATen/oneDNN call per step adds its own
// fork/join and allocation. Here the hidden units are cut into n blocks and W_hh^T is rearranged
// once per call so that block k holds, side by side, the columns of every gate block (i, f, g, o)
// for its units j0_k <= j < j0_k + w_k: a dense (P, G w_k) matrix. One thread then computes all
// gates of its own units with one brgemm call and runs the element-wise part for them at once:
// one parallel region per step, nothing shared but h_{t-1}. Measured (2 cores, Zen5, brgemm via
// at::native::cpublas): 100 steps of the medium GEMM in 3.9 ms against 10 ms for 100 addmm.
//
// The backward's dh_{t-1} = da W_hh, (bs, G H) @ (G H, P), is split the same way over P (columns
// of W_hh with leading dimension P): no rearrangement needed.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "common.h"
#include "pointwise.h"

namespace rnnkit_blk {

using at::Tensor;

using rnnkit_common::kParallelWork;  // (common.h: the weight-gradient GEMMs share the rule)
using rnnkit_common::threads_for;

// Split [0, n) into `parts` blocks whose widths are multiples of 16 (one AVX-512 float register)
// where possible; fewer blocks when n is small.
inline std::vector<int64_t> split(int64_t n, int64_t parts) {
  const int64_t w = std::max<int64_t>(16, (n + parts - 1) / parts + 15) / 16 * 16;
  std::vector<int64_t> starts;
  for (int64_t j = 0; j < n; j += w) starts.push_back(j);
  starts.push_back(n);
  return starts;
}

// brgemm runs best on blocks of at most this many output columns (one thread, 32x256 @ 256xN,
// 100 steps: N = 1024 in one block 10 ms, as two blocks of 512 7.1 ms).
constexpr int64_t kMaxColumns = 512;

// Number of blocks for a step GEMM of `work` multiply-adds (at the full batch) and `cols` output
// columns: at least `per_thread` per thread when the work is worth splitting, and blocks of at
// most kMaxColumns columns, a multiple of the thread count.
inline int64_t blocks_for(int64_t work, int64_t cols, int64_t per_thread = 1) {
  const int64_t threads = threads_for(work);
  const int64_t n = std::max(threads > 1 ? threads * per_thread : 1, (cols + kMaxColumns - 1) / kMaxColumns);
  return (n + threads - 1) / threads * threads;
}

// Run f(k) for the blocks k in [0, n), in parallel when the step's work is big enough.
template <typename F>
void each_block(int64_t n, int64_t work, const F& f) {
  if (n == 1 || work < kParallelWork) {
    for (int64_t k = 0; k < n; ++k) f(k);
    return;
  }
  at::parallel_for(0, n, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) f(k);
  });
}

// Row-major C (n, m) (+)= X (n, k) W for strided operands (lda, ldb, ldc). float32: brgemm over
// chunks of at most kChunkK of the inner dimension, accumulating: one call over K = 1024 ran at
// 145 GFLOPS, four of 256 at 247 (32 x 1024 @ 1024 x 256, one core).
constexpr int64_t kChunkK = 256;
inline void gemm_ld(const double* x, int64_t lda, const double* w, int64_t ldb, double* c, int64_t ldc, int64_t n,
                    int64_t m, int64_t k, bool accumulate = false) {
  rnnkit_pw::blas_gemm('N', 'N', int(m), int(n), int(k), 1., w, int(ldb), x, int(lda), accumulate ? 1. : 0., c,
                       int(ldc));
}
inline void gemm_ld(const float* x, int64_t lda, const float* w, int64_t ldb, float* c, int64_t ldc, int64_t n,
                    int64_t m, int64_t k, bool accumulate = false) {
  for (int64_t k0 = 0; k0 < k; k0 += kChunkK)
    at::native::cpublas::brgemm(n, m, std::min(kChunkK, k - k0), lda, ldb, ldc, accumulate || k0 > 0, x + k0,
                                w + k0 * ldb, c, false);
}

// W_hh (G H, P) rearranged for the forward step (see the top); W_ih (G H, I) the same way when the
// kernel projects the input itself (fused.cpp, InputChunks).
struct GateBlocks {
  int64_t G, H, P;
  std::vector<int64_t> j;  // block k: units [j[k], j[k+1])
  Tensor wb;               // block k: dense (P, G w_k) at offset P G j[k]
  // Block k's (P, G w_k) is the transpose of W's rows g H + j0_k + u (u < w_k) for each gate g,
  // written by rnnkit_common::transpose_rows (tiles that stay in L1), the (block, gate) pairs
  // over the threads: ~4x faster than ATen's copy of the permuted view plus a cat (medium LSTM:
  // ~140 us a call) with 16 x 16 scalar tiles, faster again with transpose_rows' tiles.
  GateBlocks(const Tensor& w_hh, int64_t G_, int64_t parts) : G(G_), H(w_hh.size(0) / G_), P(w_hh.size(1)) {
    j = split(H, parts);
    TORCH_CHECK(w_hh.is_contiguous(), "GateBlocks: W must be contiguous");
    wb = at::empty({G * H * P}, w_hh.options());
    AT_DISPATCH_FLOATING_TYPES(w_hh.scalar_type(), "rnnkit_gate_blocks", [&] {
      const scalar_t* W = w_hh.data_ptr<scalar_t>();
      scalar_t* D = wb.data_ptr<scalar_t>();
      at::parallel_for(0, n() * G, 1, [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t k = q / G, g = q % G, j0 = j[k], w = width(k);
          scalar_t* dst = D + P * G * j0 + g * w;  // element (p, u) at dst[p G w + u]
          const scalar_t* src = W + (g * H + j0) * P;  // element (u, p) at src[u P + p]
          rnnkit_common::transpose_rows(src, dst, G * w, P, 0, w);
        }
      });
    });
  }
  int64_t n() const { return static_cast<int64_t>(j.size()) - 1; }
  int64_t width(int64_t k) const { return j[k + 1] - j[k]; }
  // C_k (bs, G w_k), dense, (+)= x (bs, P) W_k: the block's share of x W^T, gates side by side.
  template <typename T>
  void gemm(int64_t k, const T* x, int64_t bs, T* c, bool accumulate = false) const {
    const int64_t m = G * width(k);
    gemm_ld(x, P, wb.data_ptr<T>() + P * G * j[k], m, c, m, bs, m, P, accumulate);
  }
};


// The input projection x W_ih^T + b computed inside a kernel, a chunk of steps at a time: each
// block of units computes its own gates' columns (GateBlocks' layout) at the chunk's first step,
// into a buffer the step GEMM then accumulates onto. The input term is in the thread's cache
// when the chunk's steps read it, and no (N, G H) tensor goes through memory: at the medium
// shape 13 MB written and read again, and, freshly allocated every call, faulted in page by page
// (measured, medium shape, inference, 2 threads: 8.4 ms with the projection outside, 7.5 here).
struct InputChunks {
  // Rows per chunk: the chunk's (rows, G w) block stays in L2 beside the block's W_hh.
  static constexpr int64_t kRows = 128;
  GateBlocks w;                     // W_ih (G H, I) by blocks
  Tensor bias;                      // (G H), or undefined
  std::vector<int64_t> r0, rows;    // per step (execution order): its chunk's first row, row count
  std::vector<bool> starts;         // whether the step opens its chunk
  int64_t rmax = 0;
  Tensor buf;                       // block k: (rmax, G w_k) at offset rmax G j[k]
  InputChunks(const Tensor& w_ih, const std::optional<Tensor>& b, int64_t G, int64_t parts,
              const std::vector<std::pair<int64_t, int64_t>>& steps)
      : w(w_ih.contiguous(), G, parts), bias(b.has_value() ? b->contiguous() : Tensor()) {
    const size_t n = steps.size();
    r0.resize(n), rows.resize(n), starts.resize(n);
    for (size_t s = 0; s < n;) {  // greedy: whole steps while the chunk has room (at least one)
      size_t e = s + 1;
      int64_t acc = steps[s].second, lo = steps[s].first;
      for (; e < n && acc + steps[e].second <= kRows; ++e) acc += steps[e].second, lo = std::min(lo, steps[e].first);
      for (size_t q = s; q < e; ++q) r0[q] = lo, rows[q] = acc, starts[q] = q == s;
      rmax = std::max(rmax, acc);
      s = e;
    }
    buf = at::empty({rmax * G * w.H}, w_ih.options());
  }
  // Block k's input term for step s, (bs, G w_k) dense (computed first if s opens a chunk);
  // x: the packed input (N, I), contiguous.
  template <typename T>
  T* step(int64_t k, size_t s, int64_t off, const T* x) const {
    const int64_t m = w.G * w.width(k), j0 = w.j[k], wk = w.width(k);
    T* base = buf.data_ptr<T>() + rmax * w.G * j0;
    if (starts[s]) {
      w.gemm(k, x + r0[s] * w.P, rows[s], base);
      if (bias.defined()) {
        const T* b = bias.data_ptr<T>();
        for (int64_t r = 0; r < rows[s]; ++r)
          for (int64_t q = 0; q < w.G; ++q)
            for (int64_t u = 0; u < wk; ++u) base[r * m + q * wk + u] += b[q * w.H + j0 + u];
      }
    }
    return base + (off - r0[s]) * m;
  }
};

}  // namespace rnnkit_blk
