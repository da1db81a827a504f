// Helpers shared by the fused kernels (fused.cpp, variants.cpp, lstm_variants.cpp): GEMM
// policy, step schedule, row loops. Same policy as rnnkit/kernels/_gemm.py.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#ifdef __SSE2__
#include <xmmintrin.h>
#endif

#include "checks.h"  // argument checks of the ops

namespace rnnkit_common {

using at::Tensor;
using Steps = std::vector<std::pair<int64_t, int64_t>>;  // (offset, batch) in forward order

// Copies and scratch that the kernels address through raw row-major pointers: clone() and
// empty_like() keep the strides of a dense non-row-major tensor (a transposed h0), so they ask
// for this format.
constexpr auto kRowMajor = at::MemoryFormat::Contiguous;

// Work (multiply-adds) of a step below which it stays on one thread: a fork/join costs a few us,
// the small shape's whole 8x64x256 GEMM ~1.3 us.
constexpr int64_t kParallelWork = 1 << 20;

// Threads a step (or a weight-gradient GEMM) of `work` multiply-adds is worth: all of them, or
// one below kParallelWork.
inline int64_t threads_for(int64_t work) {
  return work >= kParallelWork ? std::max<int64_t>(1, at::get_num_threads()) : 1;
}

inline const c10::OperatorHandle* find_op(const char* name, const char* overload) {
  auto h = c10::Dispatcher::singleton().findSchema({name, overload});
  return h.has_value() ? new c10::OperatorHandle(*h) : nullptr;
}
inline const c10::OperatorHandle* op_linear() {
  static const c10::OperatorHandle* h = find_op("mkldnn::_linear_pointwise", "");
  return h;
}
inline const c10::OperatorHandle* op_reorder() {
  static const c10::OperatorHandle* h = find_op("mkldnn::_reorder_linear_weight", "");
  return h;
}

inline Tensor call(const c10::OperatorHandle* op, std::vector<c10::IValue> stack) {
  op->callBoxed(&stack);
  return stack[0].toTensor();
}

inline bool use_onednn(const Tensor& t, bool allowed) {
  return allowed && t.scalar_type() == at::kFloat && at::hasMKLDNN() && op_linear() && op_reorder();
}

// rows * in * out below which BLAS beats oneDNN's fixed cost per call (as _gemm.py).
constexpr int64_t kOneDnnMinWork = 1 << 20;

// x -> x W^T for a fixed W (out, in), applied to many small x; W packed for oneDNN on first use.
struct Linear {
  Tensor w;
  mutable Tensor packed;
  int64_t batch;
  bool dnn;
  Linear(const Tensor& W, int64_t batch_, bool allowed) : w(W), batch(batch_), dnn(use_onednn(W, allowed)) {}
  bool use(const Tensor& x) const { return x.is_contiguous() && use_rows(x.size(0)); }
  // Whether a dense x of `n` rows goes to oneDNN (else BLAS).
  bool use_rows(int64_t n) const {
    if (!dnn || n * w.numel() < kOneDnnMinWork) return false;
    if (!packed.defined()) packed = call(op_reorder(), {w.contiguous(), c10::IValue(batch)});
    return true;
  }
  // x W^T + bias.
  Tensor operator()(const Tensor& x, const std::optional<Tensor>& bias = std::nullopt) const {
    if (use(x)) {
      c10::IValue b = bias.has_value() ? c10::IValue(*bias) : c10::IValue();
      return call(op_linear(), {x, packed, b, std::string("none"), c10::List<std::optional<c10::Scalar>>(),
                                c10::IValue(std::string(""))});
    }
    return bias.has_value() ? at::addmm(*bias, x, w.t()) : at::mm(x, w.t());
  }
};

// d[j * m + i] = s[i * k + j] for i in [i0, i1), j in [j0, j1): 4 x 4 blocks through SSE
// registers (baseline x86-64), the edges value by value. A value copy: the same bits either way;
// the scalar loop took ~1 cycle a value (~6 us a call for the small layer-norm LSTM's W_hh and W_ih).
inline void transpose_tile(const float* s, float* d, int64_t m, int64_t k, int64_t i0, int64_t i1, int64_t j0,
                           int64_t j1) {
  int64_t i4 = i0, j4 = j0;  // the blocked part ends at i4, j4
#ifdef __SSE2__
  i4 = i0 + (i1 - i0) / 4 * 4, j4 = j0 + (j1 - j0) / 4 * 4;
  for (int64_t i = i0; i < i4; i += 4)
    for (int64_t j = j0; j < j4; j += 4) {
      __m128 r0 = _mm_loadu_ps(s + i * k + j), r1 = _mm_loadu_ps(s + (i + 1) * k + j);
      __m128 r2 = _mm_loadu_ps(s + (i + 2) * k + j), r3 = _mm_loadu_ps(s + (i + 3) * k + j);
      _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
      _mm_storeu_ps(d + j * m + i, r0);
      _mm_storeu_ps(d + (j + 1) * m + i, r1);
      _mm_storeu_ps(d + (j + 2) * m + i, r2);
      _mm_storeu_ps(d + (j + 3) * m + i, r3);
    }
#endif
  for (int64_t j = j0; j < j1; ++j)  // the edges: columns past j4 of every row, rows past i4
    for (int64_t i = (j < j4 ? i4 : i0); i < i1; ++i) d[j * m + i] = s[i * k + j];
}

// d[j * m + i] = s[i * k + j] for rows i in [i0, i1) of s and all its k columns, in tiles of
// 64 rows by 8 columns: a tile writes 8 rows of d, 256 bytes each. Square 16 x 16 tiles wrote 16
// rows of d m values apart, and with m = 1024 floats (4 KB apart) all 16 lines fell in one set of
// the 12-way L1: ~1.2 ns a value for a 1024 x 256 W_hh (~310 us a call) against ~0.16 here.
template <typename T>
void transpose_rows(const T* s, T* d, int64_t m, int64_t k, int64_t i0, int64_t i1) {
  constexpr int64_t kRows = 64, kCols = 8;
  for (int64_t r0 = i0; r0 < i1; r0 += kRows)
    for (int64_t j0 = 0; j0 < k; j0 += kCols) {
      const int64_t r1 = std::min(r0 + kRows, i1), j1 = std::min(j0 + kCols, k);
      if constexpr (std::is_same_v<T, float>) {
        transpose_tile(s, d, m, k, r0, r1, j0, j1);
      } else {
        for (int64_t j = j0; j < j1; ++j)
          for (int64_t i = r0; i < r1; ++i) d[j * m + i] = s[i * k + j];
      }
    }
}

// w^T of a 2-D float32 matrix (m, k), dense (k, m): the weights brgemm reads, mm_tn's result.
// ATen's t().contiguous() ran at ~0.45 ns a value (8 us for a 256x64 W_hh, 105 us for
// 1024x256: a few % of a small or medium layer-norm forward, once per call and weight); here
// by transpose_rows (~0.16 ns a value at 1024x256). Other dtypes: ATen's copy.
inline Tensor transposed(const Tensor& w) {
  if (w.scalar_type() != at::kFloat || w.dim() != 2) return w.t().contiguous();
  const Tensor src = w.contiguous();
  const int64_t m = src.size(0), k = src.size(1);
  Tensor out = at::empty({k, m}, src.options());
  const float* s = src.data_ptr<float>();
  float* d = out.data_ptr<float>();
  // bands of 64 rows of w on the threads from ~1M values (ATen's copy is threaded too)
  constexpr int64_t kBand = 64;
  const int64_t bands = (m + kBand - 1) / kBand;
  const int64_t grain = std::max<int64_t>(1, (1 << 20) / std::max<int64_t>(k * kBand, 1));
  at::parallel_for(0, bands, grain, [&](int64_t b0, int64_t b1) {
    transpose_rows(s, d, m, k, b0 * kBand, std::min(b1 * kBand, m));
  });
  return out;
}

// ---- Weight gradients: dW = a^T b summed over all N rows, as brgemm on the operands in place --
// oneDNN's inner product (torch's linear, the GEMM this used before) takes a^T as its weights
// and reorders all N x M values of them at every call. brgemm reads a as it is. Measured, 2
// threads, the weight gradients of the LSTM's input projection (Python's mm_tn, x row-major)
// and recurrent weights (h_{t-1} column-major): medium (N = 3200, a: N x 1024) 2.47 -> 2.16 ms
// and 4.01 -> 3.82 ms, small (N = 512) 1.4-1.6x faster, large (N = 6400, a: N x 2048) 34.4 ->
// 32.8 ms for dW_ih and 31.6 -> 32.6 for dW_hh (the one loss). The threads own blocks of dW^T's
// columns, so the bits do not depend on the thread count; a block runs kChunkRows rows of a at
// a time against kTileRows rows of b^T. The threads share it from threads_for's work.
// 256-column blocks and 512-row tiles of b^T beat narrower ones by 3-10% at large; the small
// shape's 256 columns are split between the threads.
constexpr int64_t kChunkRows = 256, kTileRows = 512, kBlockCols = 256;

// C (K, M) = bT (K, N) a (N, M), all dense row-major: (a^T b)^T with bT = b^T. N > 0.
inline void tn_brgemm(const float* a, const float* bT, float* c, int64_t N, int64_t M, int64_t K) {
  const int64_t threads = threads_for(N * M * K);
  int64_t nb = std::max(threads, (M + kBlockCols - 1) / kBlockCols);
  nb = (nb + threads - 1) / threads * threads;
  const int64_t w = std::max<int64_t>(16, ((M + nb - 1) / nb + 15) / 16 * 16);
  const int64_t n = (M + w - 1) / w;
  at::parallel_for(0, n, threads > 1 ? 1 : n, [&](int64_t q0, int64_t q1) {  // (one thread: inline)
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t c0 = q * w, cw = std::min(w, M - c0);
      for (int64_t k0 = 0; k0 < N; k0 += kChunkRows)
        for (int64_t r0 = 0; r0 < K; r0 += kTileRows)
          at::native::cpublas::brgemm(std::min(kTileRows, K - r0), cw, std::min(kChunkRows, N - k0), N, M, M, k0 > 0,
                                      bT + r0 * N + k0, a + k0 * M + c0, c + r0 * M + c0, false);
    }
  });
}

// Whether the weight-gradient GEMMs of tensors like `a` run on brgemm: CPU float32, `allowed`
// (oneDNN's kernels not switched off, RNNKIT_NO_ONEDNN).
inline bool wgrad_brgemm(const Tensor& a, bool allowed) {
  return allowed && a.scalar_type() == at::kFloat && a.is_cpu();
}
// (a^T b)^T, (K, M), for 2-D a (N, M) and b (N, K) by tn_brgemm where it applies, else undefined
// (mm_tn then takes ATen's). b may be row- or column-major (b^T dense: the LSTM kernels' saved
// h_{t-1}, read in place); a sum of several parts can add them in this layout and transpose
// once (gru_rnn.cpp).
inline Tensor tn_transposed(const Tensor& a, const Tensor& b, bool allowed) {
  if (!wgrad_brgemm(a, allowed) || !wgrad_brgemm(b, allowed) || a.dim() != 2 || b.dim() != 2 ||
      a.size(0) != b.size(0))
    return Tensor();
  const Tensor ad = a.contiguous(), bT = b.t().is_contiguous() ? b.t() : transposed(b);
  const int64_t N = ad.size(0), M = ad.size(1), K = bT.size(0);
  Tensor c = at::empty({K, M}, a.options());
  if (N == 0 || M == 0 || K == 0) return c.zero_();
  tn_brgemm(ad.data_ptr<float>(), bT.data_ptr<float>(), c.data_ptr<float>(), N, M, K);
  return c;
}
inline Tensor mm_tn(const Tensor& a, const Tensor& b, bool allowed) {
  const Tensor t = tn_transposed(a, b, allowed);
  return t.defined() ? transposed(t) : at::mm(a.t(), b);
}

// C (N, K) = a (N, M) w (M, K), all dense row-major (d x = d y W of a linear layer): blocks of
// 64 rows of a over the threads, columns in blocks of at most 512 (brgemm's best width),
// kChunkRows of the inner dimension at a time. oneDNN's linear reordered w at every call.
inline void nn_brgemm(const float* a, const float* w, float* c, int64_t N, int64_t M, int64_t K) {
  const int64_t threads = threads_for(N * M * K);
  constexpr int64_t kRowBlock = 64;  // rows of a per block (64-256 measured alike)
  const int64_t rows = std::max<int64_t>(1, std::min(kRowBlock, (N + threads - 1) / threads));
  constexpr int64_t kCols = 512;
  at::parallel_for(0, (N + rows - 1) / rows, threads > 1 ? 1 : (N + rows - 1) / rows, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t r0 = q * rows, rr = std::min(rows, N - r0);
      for (int64_t c0 = 0; c0 < K; c0 += kCols)
        for (int64_t k0 = 0; k0 < M; k0 += kChunkRows)
          at::native::cpublas::brgemm(rr, std::min(kCols, K - c0), std::min(kChunkRows, M - k0), M, K, K, k0 > 0,
                                      a + r0 * M + k0, w + k0 * K + c0, c + r0 * K + c0, false);
    }
  });
}

// The packed layout's batch sizes against the tensors of a kernel call: the kernels address rows
// by them unchecked, so inconsistent sizes (a direct call of the public ops, a graph traced at
// another shape) would read and write out of bounds. Non-empty, positive, non-increasing, the
// first equal to `batch` (the state's rows; < 0: no state to compare) and summing to `rows`.
inline void check_batch_sizes(const char* op, const std::vector<int64_t>& bsz, int64_t rows, int64_t batch) {
  TORCH_CHECK(!bsz.empty(), op, ": batch_sizes must not be empty");
  TORCH_CHECK(batch < 0 || bsz[0] == batch, op, ": batch_sizes[0] must equal the state's batch size ", batch,
              ", got batch_sizes ", c10::IntArrayRef(bsz));
  int64_t sum = 0;
  for (size_t t = 0; t < bsz.size(); ++t) {
    TORCH_CHECK(bsz[t] > 0 && (t == 0 || bsz[t] <= bsz[t - 1]), op,
                ": batch_sizes must be positive and non-increasing, got ", c10::IntArrayRef(bsz));
    sum += bsz[t];
  }
  TORCH_CHECK(sum == rows, op, ": batch_sizes must sum to the input's ", rows, " rows, got ", sum, " (",
              c10::IntArrayRef(bsz), ")");
}

inline Steps schedule(const std::vector<int64_t>& bsz, bool reverse) {
  Steps s;
  int64_t off = 0;
  for (int64_t b : bsz) {
    s.emplace_back(off, b);
    off += b;
  }
  if (reverse) std::reverse(s.begin(), s.end());
  return s;
}

// Run f(b0, b1) over rows [0, n) of width `width`, in parallel when the step is big enough.
template <typename F>
void rows(int64_t n, int64_t width, const F& f) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1));
  at::parallel_for(0, n, grain, f);
}

// f(b0, b1) over batch rows [0, B): one contiguous block of rows per thread for the WHOLE time
// loop (row b of a step depends only on row b of the previous step, forward and backward), so
// one fork/join per call and no barrier inside the loop. Packed input: rows are sorted by
// decreasing length, so the cuts balance the row-steps (sum over steps of the active rows in a
// block), not the rows. Steps under 2048 values (B * width) stay on one thread: the fork/join
// (~5 us) would cost more than it saves; else at least 4 rows per thread.
// The k + 1 cuts of rows [0, B) into k blocks of about equal row-steps (rows active in more
// steps weigh more: packed batches shrink).
inline std::vector<int64_t> row_cuts(int64_t B, const Steps& steps, int64_t k) {
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
  return cut;
}

template <typename F>
void batch_blocks(int64_t B, int64_t width, const Steps& steps, const F& f) {
  constexpr int64_t kMinRows = 4;
  const int64_t k = B * width < 2048 ? 1 : std::min<int64_t>(at::get_num_threads(), B / kMinRows);
  if (k <= 1 || at::in_parallel_region()) return f(int64_t(0), B);
  const std::vector<int64_t> cut = row_cuts(B, steps, k);
  at::parallel_for(0, k, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t j = i0; j < i1; ++j)
      if (cut[j + 1] > cut[j]) f(cut[j], cut[j + 1]);
  });
}

inline Tensor none(const Tensor& like) { return at::empty({0}, like.options()); }

// Zoneout's weights (N, W), as the kernels read them: the rows of the step at offset `off` start
// at `at<T>(off)`. In training they are a mask, a row per sequence and step; in evaluation the
// expectation p, the same row for all, which rnnkit passes as a row-broadcast view (stride 0
// over rows): it becomes one (B, W) block that every step reads. Materialized as (N, W) it was
// two cold 3.2 MB tensors at the medium shape, and the rows waited on their loads (+17% on an
// evaluation forward).
class ZoneoutRows {
 public:
  ZoneoutRows(const std::optional<Tensor>& z, int64_t B) {
    if (!z.has_value()) return;
    shared_ = z->size(0) > 0 && z->stride(0) == 0;
    t_ = shared_ ? z->narrow(0, 0, std::min(B, z->size(0))).contiguous() : z->contiguous();
    width_ = t_.size(1);
  }
  template <typename T>
  const T* at(int64_t off) const {
    return t_.defined() ? t_.data_ptr<T>() + (shared_ ? 0 : off * width_) : nullptr;
  }
  // the weights, (N, W) or (one block of) (B, W) when shared; undefined when off
  const Tensor& tensor() const { return t_; }
  bool shared() const { return shared_; }

 private:
  Tensor t_;
  bool shared_ = false;
  int64_t width_ = 0;
};


}  // namespace rnnkit_common
