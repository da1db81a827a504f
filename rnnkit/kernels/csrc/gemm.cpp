// rnnkit_ext::mm_tn and rnnkit_ext::mm_nn: the weight-gradient GEMMs of common.h (brgemm on the
// operands in place) for the Python side of the fused kernels' backward (rnnkit/kernels/_gemm.py:
// the input projection's dW_ih = d(xW^T)^T x and dx = d(xW^T) W, which oneDNN's linear ran with
// a reorder of its weight operand at every call). CPU float32 only: the caller keeps the others.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common.h"

namespace {

using at::Tensor;

void check(const char* op, const Tensor& a, const Tensor& b, int64_t a_dim, int64_t b_dim, const char* shapes) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, op, ": expected 2-D tensors ", shapes, ", got ", a.sizes(), " and ",
              b.sizes());
  TORCH_CHECK(a.size(a_dim) == b.size(b_dim), op, ": the shapes ", shapes, " do not match, got ", a.sizes(),
              " and ", b.sizes());
  TORCH_CHECK(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && a.is_cpu() && b.is_cpu(), op,
              ": expected CPU float32 tensors, got ", a.scalar_type(), " on ", a.device(), " and ",
              b.scalar_type(), " on ", b.device());
}

// a^T b, (M, K), for a (N, M) and b (N, K).
Tensor mm_tn(const Tensor& a, const Tensor& b) {
  check("rnnkit_ext::mm_tn", a, b, 0, 0, "a (N, M) and b (N, K)");
  return rnnkit_common::mm_tn(a, b, true);
}

// a w, (N, K), for a (N, M) and w (M, K).
Tensor mm_nn(const Tensor& a, const Tensor& w) {
  check("rnnkit_ext::mm_nn", a, w, 1, 0, "a (N, M) and w (M, K)");
  const Tensor ad = a.contiguous(), wd = w.contiguous();
  const int64_t N = ad.size(0), M = ad.size(1), K = wd.size(1);
  Tensor c = at::empty({N, K}, a.options());
  if (N == 0 || K == 0) return c;
  if (M == 0) return c.zero_();
  rnnkit_common::nn_brgemm(ad.data_ptr<float>(), wd.data_ptr<float>(), c.data_ptr<float>(), N, M, K);
  return c;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit_ext, m) {
  m.def("mm_tn(Tensor a, Tensor b) -> Tensor", &mm_tn);
  m.def("mm_nn(Tensor a, Tensor w) -> Tensor", &mm_nn);
}
