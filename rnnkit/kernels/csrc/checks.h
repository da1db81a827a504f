// Argument checks at the entry of the public ops (torch.ops.rnnkit_ext.*, torch.ops.rnnkit_norm.*).
// The kernels address every tensor through raw pointers with sizes taken from one or two of
// them, so a tensor of another shape, dtype or device (a direct call of the op, a graph traced
// at another shape) would be read or written out of bounds. Each check is O(1): a few integer
// comparisons per argument, the message built only on failure.
#pragma once
#include <ATen/ATen.h>

#include <initializer_list>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace rnnkit_check {

using at::Tensor;

// A dimension whose size is not checked (checked elsewhere, or free).
constexpr int64_t kAny = -1;

inline std::string dims(std::initializer_list<int64_t> s) {
  std::ostringstream o;
  o << "[";
  bool first = true;
  for (int64_t v : s) {
    o << (first ? "" : ", ");
    if (v == kAny)
      o << "*";
    else
      o << v;
    first = false;
  }
  o << "]";
  return o.str();
}

// `t` (argument `name` of `op`) is a CPU tensor of dtype `dtype` with the sizes `shape` (kAny:
// any size); `what` names the sizes, e.g. "(4H, P)".
inline void tensor(const char* op, const char* name, const Tensor& t, at::ScalarType dtype, const char* what,
                   std::initializer_list<int64_t> shape) {
  TORCH_CHECK(t.defined(), op, ": ", name, " must be a tensor");
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got device ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must have dtype ", dtype, " (as the input), got ",
              t.scalar_type());
  bool ok = t.dim() == static_cast<int64_t>(shape.size());
  int64_t i = 0;
  for (int64_t v : shape) {
    if (!ok) break;
    ok = v == kAny || t.size(i) == v;
    ++i;
  }
  TORCH_CHECK(ok, op, ": ", name, " must have shape ", what, " = ", dims(shape), ", got ", t.sizes());
}

// The same for an optional argument, when given.
inline void opt(const char* op, const char* name, const std::optional<Tensor>& t, at::ScalarType dtype,
                const char* what, std::initializer_list<int64_t> shape) {
  if (t.has_value()) tensor(op, name, *t, dtype, what, shape);
}

// An optional argument the configuration requires.
inline const Tensor& req(const char* op, const char* name, const std::optional<Tensor>& t, const char* why) {
  TORCH_CHECK(t.has_value(), op, ": ", name, " is required ", why);
  return *t;
}

// A size taken from a tensor, checked to be a positive multiple of k (gate blocks).
inline int64_t per_gate(const char* op, const char* name, const Tensor& t, int64_t k, const char* what) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) > 0 && t.size(0) % k == 0, op, ": ", name, " must have shape ", what,
              " with a first size that is a positive multiple of ", k, ", got ", t.sizes());
  return t.size(0) / k;
}

// Number of saved tensors of a backward op: exactly `want` (exact) or at least.
inline void count(const char* op, const char* name, size_t got, size_t want, bool exact = true) {
  TORCH_CHECK(exact ? got == want : got >= want, op, ": ", name, " must hold the forward's ", want,
              " saved tensors, got ", got);
}

// The input's dtype: one the kernels are built for (float32, float64).
inline at::ScalarType floating(const char* op, const char* name, const Tensor& t) {
  TORCH_CHECK(t.defined() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble), op, ": ", name,
              " must be float32 or float64, got ", t.defined() ? c10::toString(t.scalar_type()) : "no tensor");
  return t.scalar_type();
}

// A state's width (`t`'s second size) is positive: torch.nn rejects hidden_size 0, and here the
// GEMMs got a leading dimension of 0 (MKL printed "Parameter 8 was incorrect" and carried on).
inline void positive_width(const char* op, const char* name, const Tensor& t, const char* what) {
  TORCH_CHECK(t.size(1) > 0, op, ": ", name, " must have shape ", what, " with a positive width, got ", t.sizes());
}

// A b_hh given to a family whose caller folds it into xp (the kernels read none) is refused: it
// was ignored whatever its shape, dtype or device, and the numbers silently lacked the bias.
inline void no_b_hh(const char* op, const std::string& family, const std::optional<Tensor>& b_hh,
                    const char* remedy) {
  TORCH_CHECK(!b_hh.has_value(), op, ": b_hh must be None for the ", family, " (", remedy,
              "), got a tensor of shape ", b_hh.has_value() ? b_hh->sizes() : c10::IntArrayRef{});
}

// The sizes every op reads off its first arguments, checked alike by each.
struct Sizes {
  at::ScalarType dt;
  int64_t N, B, P;  // packed rows, batch, state width
};

// A forward op's step input ``ref`` (argument ``name``: x, x_in or xp) (N, F), float32/64, and
// h0 (B, P) of its dtype.
inline Sizes forward_sizes(const char* op, const char* name, const Tensor& ref, const Tensor& h0) {
  const auto dt = floating(op, name, ref);
  tensor(op, name, ref, dt, "(N, F)", {kAny, kAny});
  tensor(op, "h0", h0, dt, "(B, P)", {kAny, kAny});
  positive_width(op, "h0", h0, "(B, P)");
  return {dt, ref.size(0), h0.size(0), h0.size(1)};
}

// A backward op's gout (N, P), float32/64, and ghn (B, P) of its dtype.
inline Sizes backward_sizes(const char* op, const Tensor& gout, const Tensor& ghn) {
  const auto dt = floating(op, "gout", gout);
  tensor(op, "gout", gout, dt, "(N, P)", {kAny, kAny});
  positive_width(op, "gout", gout, "(N, P)");
  tensor(op, "ghn", ghn, dt, "(B, P)", {kAny, gout.size(1)});
  return {dt, gout.size(0), ghn.size(0), gout.size(1)};
}

// An LSTM forward's c0 (B, H) against h0 (B, P): w_hr (P, H) with a projection, else P == H.
// Returns H.
inline int64_t lstm_state(const char* op, const Tensor& c0, at::ScalarType dt, int64_t B, int64_t P,
                          const std::optional<Tensor>& w_hr, const Tensor& h0) {
  tensor(op, "c0", c0, dt, "(B, H)", {B, kAny});
  positive_width(op, "c0", c0, "(B, H)");
  const int64_t H = c0.size(1);
  if (w_hr.has_value())
    tensor(op, "w_hr", *w_hr, dt, "(P, H)", {P, H});
  else
    TORCH_CHECK(P == H, op, ": without w_hr, h0 (B, P) and c0 (B, H) must have one width, got ", h0.sizes(),
                " and ", c0.sizes());
  return H;
}

// An LSTM op's optional regularizer inputs: the recurrent-dropout mask (B, P) and the zoneout
// weights zh (N, P), zc (N, H).
inline void lstm_regularizers(const char* op, at::ScalarType dt, int64_t B, int64_t N, int64_t P, int64_t H,
                              const std::optional<Tensor>& mask, const std::optional<Tensor>& zh,
                              const std::optional<Tensor>& zc) {
  opt(op, "mask", mask, dt, "(B, P)", {B, P});
  opt(op, "zh", zh, dt, "(N, P)", {N, P});
  opt(op, "zc", zc, dt, "(N, H)", {N, H});
}

// The LSTM backward's first saved tensors, common to the fused, variant and normalized ops
// (``count`` checked before): gates (N, W), c_{t-1} (N, H), ``third`` (N, H), h_{t-1} (N, P);
// with a projection w_hr (P, H) and h~ (N, H), without one P == H (``p_from`` gave P).
inline void lstm_saved(const char* op, const std::vector<Tensor>& saved, at::ScalarType dt, int64_t N,
                       int64_t W, const char* gates, const char* third, int64_t H, int64_t P,
                       const std::optional<Tensor>& w_hr, const char* p_from, const Tensor& p_tensor,
                       const Tensor& w_hh) {
  tensor(op, "saved[0] (gates)", saved[0], dt, gates, {N, W});
  tensor(op, "saved[1] (c_{t-1})", saved[1], dt, "(N, H)", {N, H});
  tensor(op, third, saved[2], dt, "(N, H)", {N, H});
  tensor(op, "saved[3] (h_{t-1})", saved[3], dt, "(N, P)", {N, P});
  if (w_hr.has_value()) {
    tensor(op, "w_hr", *w_hr, dt, "(P, H)", {P, H});
    tensor(op, "saved[4] (h~)", saved[4], dt, "(N, H)", {N, H});
  } else {
    TORCH_CHECK(P == H, op, ": without w_hr, ", p_from, " (N, P) and w_hh (gates H, P) must have P == H, got ",
                p_tensor.sizes(), " and ", w_hh.sizes());
  }
}

}  // namespace rnnkit_check
