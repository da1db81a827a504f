// rnnkit_ext::activation: the fused kernels' row σ / tanh (pointwise.h, act512.h) on a tensor,
// so tests can hold them to their stated accuracy against float64 (tests/fused/test_activations.py).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "pointwise.h"

namespace {

// which: 0 = sigmoid, 1 = tanh. One row over the whole (contiguous) tensor.
at::Tensor activation(const at::Tensor& x, int64_t which) {
  TORCH_CHECK(which == 0 || which == 1, "rnnkit_ext::activation: which must be 0 (sigmoid) or 1 (tanh), got ",
              which);
  TORCH_CHECK(x.device().is_cpu(), "rnnkit_ext::activation: x must be a CPU tensor, got device ", x.device());
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty_like(xc);
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "rnnkit_activation", [&] {
    const scalar_t* a = xc.data_ptr<scalar_t>();
    scalar_t* b = y.data_ptr<scalar_t>();
    if (which == 0)
      rnnkit_pw::sigmoid(a, b, xc.numel());
    else
      rnnkit_pw::tanh(a, b, xc.numel());
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit_ext, m) { m.def("activation(Tensor x, int which) -> Tensor", &activation); }
