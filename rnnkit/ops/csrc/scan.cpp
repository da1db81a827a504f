// Linear recurrence h_t = a_t * h_{t-1} + b_t on the CPU, forward and backward.
//
// Layout: a, b, h, grad are time-major contiguous (T, N) (the caller moves the scanned
// dim to the front and flattens the rest). The loop over time is sequential (it is
// memory-bound: one read of a and b and one write of h per element, which no parallel
// scan can beat on a CPU); the inner loop over the N features is contiguous and
// vectorizable, and at::parallel_for splits the features across threads, each thread
// running the whole time loop over its own slice (no synchronization per step).
//
// Products and sums are written as two roundings (compiled with -ffp-contract=off), so
// the numbers are bit-identical to the pure-PyTorch fallback (torch.mul, then add_).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/complex.h>

namespace {

template <typename T> inline T cj(T x) { return x; }
template <typename T> inline c10::complex<T> cj(c10::complex<T> x) { return std::conj(x); }

inline int64_t grain_for(int64_t N) {
  // Split the features over threads even for small N (the default grain of 32768 would
  // keep B*H = 4096 on one thread), but never into slices shorter than a cache line or two.
  int64_t nt = at::get_num_threads();
  return std::max<int64_t>(64, (N + nt - 1) / std::max<int64_t>(nt, 1));
}

template <typename scalar_t>
void fwd_kernel(const scalar_t* __restrict__ A, const scalar_t* __restrict__ B,
                const scalar_t* __restrict__ H0, scalar_t* __restrict__ H, int64_t T, int64_t N,
                bool reverse) {
  at::parallel_for(0, N, grain_for(N), [&](int64_t lo, int64_t hi) {
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = reverse ? T - 1 - s : s;
      const scalar_t* __restrict__ at = A + t * N;
      const scalar_t* __restrict__ bt = B + t * N;
      scalar_t* __restrict__ ht = H + t * N;
      const scalar_t* __restrict__ hp = s == 0 ? H0 : H + (reverse ? t + 1 : t - 1) * N;
      if (hp == nullptr) {
        for (int64_t i = lo; i < hi; ++i) ht[i] = bt[i];
      } else {
        for (int64_t i = lo; i < hi; ++i) {
          const scalar_t p = at[i] * hp[i];
          ht[i] = p + bt[i];
        }
      }
    }
  });
}

// g_t = dh_t + conj(a_{t+1}) g_{t+1};  db_t = g_t;  da_t = g_t conj(h_{t-1});
// dh0 = conj(a_0) g_0  ("t+1" and "0" in the order of the forward scan).
template <typename scalar_t>
void bwd_kernel(const scalar_t* __restrict__ G, const scalar_t* __restrict__ A,
                const scalar_t* __restrict__ H, const scalar_t* __restrict__ H0,
                scalar_t* __restrict__ DA, scalar_t* __restrict__ DB, scalar_t* __restrict__ DH0,
                int64_t T, int64_t N, bool reverse) {
  at::parallel_for(0, N, grain_for(N), [&](int64_t lo, int64_t hi) {
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = reverse ? s : T - 1 - s;  // opposite order to the forward
      const bool first = s == T - 1;              // the forward's first step
      const scalar_t* __restrict__ gt = G + t * N;
      const scalar_t* __restrict__ an = s == 0 ? nullptr : A + (reverse ? t - 1 : t + 1) * N;
      const scalar_t* __restrict__ dbn = s == 0 ? nullptr : DB + (reverse ? t - 1 : t + 1) * N;
      const scalar_t* __restrict__ hp = first ? H0 : H + (reverse ? t + 1 : t - 1) * N;
      scalar_t* __restrict__ dbt = DB + t * N;
      scalar_t* __restrict__ dat = DA + t * N;
      // one fused pass per step; four variants so that every inner loop is branch-free
      if (an != nullptr && hp != nullptr) {
        for (int64_t i = lo; i < hi; ++i) {
          const scalar_t p = cj(an[i]) * dbn[i];
          const scalar_t g = p + gt[i];
          dbt[i] = g;
          dat[i] = g * cj(hp[i]);
        }
      } else if (an != nullptr) {
        for (int64_t i = lo; i < hi; ++i) {
          const scalar_t p = cj(an[i]) * dbn[i];
          dbt[i] = p + gt[i];
          dat[i] = scalar_t(0);
        }
      } else if (hp != nullptr) {
        for (int64_t i = lo; i < hi; ++i) {
          dbt[i] = gt[i];
          dat[i] = gt[i] * cj(hp[i]);
        }
      } else {
        for (int64_t i = lo; i < hi; ++i) {
          dbt[i] = gt[i];
          dat[i] = scalar_t(0);
        }
      }
      if (first) {
        const scalar_t* __restrict__ a0 = A + t * N;
        for (int64_t i = lo; i < hi; ++i) DH0[i] = cj(a0[i]) * dbt[i];
      }
    }
  });
}

void check(const torch::Tensor& x, const torch::Tensor& ref, const char* what) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() && x.scalar_type() == ref.scalar_type(),
              what, " must be a contiguous CPU tensor of dtype ", ref.scalar_type());
}

}  // namespace

torch::Tensor scan_forward(torch::Tensor a, torch::Tensor b, c10::optional<torch::Tensor> h0,
                           bool reverse) {
  check(a, b, "a");
  check(b, b, "b");
  TORCH_CHECK(a.sizes() == b.sizes() && a.dim() >= 1, "a and b must have one shape (T, ...)");
  const int64_t T = b.size(0);
  const int64_t N = T == 0 ? 0 : b.numel() / T;
  if (h0.has_value()) {
    check(*h0, b, "h0");
    TORCH_CHECK(h0->numel() == N, "h0 must hold one state per feature (", N, "), got shape ", h0->sizes());
  }
  auto h = torch::empty_like(b);
  AT_DISPATCH_FLOATING_AND_COMPLEX_TYPES(b.scalar_type(), "rnnkit_linear_scan_fwd", [&] {
    fwd_kernel<scalar_t>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                         h0.has_value() ? h0->data_ptr<scalar_t>() : nullptr,
                         h.data_ptr<scalar_t>(), T, N, reverse);
  });
  return h;
}

std::vector<torch::Tensor> scan_backward(torch::Tensor grad, torch::Tensor a, torch::Tensor h,
                                         c10::optional<torch::Tensor> h0, bool reverse) {
  check(grad, a, "grad");
  check(h, a, "h");
  TORCH_CHECK(grad.sizes() == a.sizes() && h.sizes() == a.sizes() && a.dim() >= 1,
              "grad, a and h must have one shape (T, ...)");
  const int64_t T = a.size(0);
  const int64_t N = a.numel() / std::max<int64_t>(T, 1);
  if (h0.has_value()) {
    check(*h0, a, "h0");
    TORCH_CHECK(T == 0 || h0->numel() == N, "h0 must hold one state per feature (", N, "), got shape ",
                h0->sizes());
  }
  auto da = torch::empty_like(a);
  auto db = torch::empty_like(a);
  auto dh0 = torch::empty({T == 0 ? a.numel() : N}, a.options());
  AT_DISPATCH_FLOATING_AND_COMPLEX_TYPES(a.scalar_type(), "rnnkit_linear_scan_bwd", [&] {
    bwd_kernel<scalar_t>(grad.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                         h0.has_value() ? h0->data_ptr<scalar_t>() : nullptr,
                         da.data_ptr<scalar_t>(), db.data_ptr<scalar_t>(), dh0.data_ptr<scalar_t>(),
                         T, N, reverse);
  });
  return {da, db, dh0};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &scan_forward, "linear scan forward (CPU)");
  m.def("backward", &scan_backward, "linear scan backward (CPU)");
}
