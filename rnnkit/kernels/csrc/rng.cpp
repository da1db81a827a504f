// Bernoulli masks from a counter-based generator (SplitMix64), for the regularizers' masks.
//
// torch's CPU generator (mt19937) is serial, ~2 ns per number: zoneout's two (T, B, H) masks
// cost 3.5-5 ms of a 12-16 ms medium-shape forward. Here element i of a mask depends only on
// (seed, i): output i of SplitMix64 started at `seed` (Steele, Lea & Flood 2014; passes
// BigCrush), so any number of threads gives the same mask, and rnnkit/kernels/rng.py computes
// the very same bits with int64 tensor ops where the extension is not loaded.
//
//   z = seed + (i + 1) * 0x9E3779B97F4A7C15      (mod 2^64)
//   z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9;  z = (z ^ z >> 27) * 0x94D049BB133111EB;  z ^= z >> 31
//   mask_i = hit if (z >> 32) < floor(p 2^32) else miss
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>

#include "pointwise.h"

#pragma GCC optimize("O3")

namespace {

template <typename T>
__attribute__((always_inline)) inline void fill(T* out, int64_t i0, int64_t i1, uint64_t seed, uint64_t thr, T hit,
                                                T miss) {
  for (int64_t i = i0; i < i1; ++i) {
    uint64_t z = seed + uint64_t(i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    out[i] = static_cast<uint32_t>(z >> 32) < static_cast<uint32_t>(thr) ? hit : miss;
  }
}

// The same loop built for AVX-512 (64-bit vector multiplies need avx512dq): several times the
// scalar rate.
#ifdef RNNKIT_SLEEF
template <typename T>
__attribute__((target("avx512f,avx512dq"))) void fill_avx512(T* out, int64_t i0, int64_t i1, uint64_t seed,
                                                             uint64_t thr, T hit, T miss) {
  fill<T>(out, i0, i1, seed, thr, hit, miss);
}
// Whether to take it: as every vector path, off under RNNKIT_NO_AVX512 / RNNKIT_NO_AVX2
// (rnnkit_pw::has_avx512), so that tests can run the scalar loop here (tests/regularizers/test_rng.py).
inline bool use_avx512() {
  static const bool ok = rnnkit_pw::has_avx512() && __builtin_cpu_supports("avx512dq");
  return ok;
}
#endif

at::Tensor bernoulli_mask(int64_t n, int64_t seed, double p, double hit, double miss, bool f64) {
  TORCH_CHECK(n >= 0 && p >= 0 && p <= 1, "bernoulli_mask: n >= 0 and p in [0, 1], got n=", n, " p=", p);
  at::Tensor out = at::empty({n}, at::TensorOptions().dtype(f64 ? at::kDouble : at::kFloat));
  if (p >= 1) return out.fill_(hit);  // below: thresholds under 2^32
  const uint64_t thr = static_cast<uint64_t>(p * 4294967296.0), s = static_cast<uint64_t>(seed);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "rnnkit_bernoulli_mask", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t h = static_cast<scalar_t>(hit), m = static_cast<scalar_t>(miss);
    at::parallel_for(0, n, 1 << 15, [&](int64_t i0, int64_t i1) {
#ifdef RNNKIT_SLEEF
      if (use_avx512()) return fill_avx512<scalar_t>(o, i0, i1, s, thr, h, m);
#endif
      fill<scalar_t>(o, i0, i1, s, thr, h, m);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit_ext, m) {
  m.def("bernoulli_mask(int n, int seed, float p, float hit, float miss, bool f64) -> Tensor", &bernoulli_mask);
}
