// The argument checks of the normalized kernels' ops (csrc/norm.cpp forward, csrc/norm_bwd.cpp
// backward): every shape and dtype against the others, with messages naming the expected and
// received shapes.
#pragma once
#include "norm_kernels.h"

namespace rnnkit_norm {
namespace {

// The arguments of forward against each other: N rows of the packed input, B rows of the
// state, P its width, H the hidden size (P == H without projection), G the recurrent group's
// width (4H, 3H, H).
void check_forward(const std::string& kind, int64_t mode, const Tensor& xp, const Tensor& h0, const OptT& c0,
                   const Tensor& w_hh, const OptT& b_hh, const OptT& w_hr, const OptT& mask, const OptT& zh,
                   const OptT& zc, const Tensor& g_hh, const OptT& s_hh, const OptT& g_c, const OptT& s_c,
                   const OptT& st_hh, const OptT& st_c, const OptT& w_peep, const OptT& x_in, const OptT& w_ih,
                   const OptT& g_ih, const OptT& s_ih) {
  using namespace rnnkit_check;
  const char* op = "rnnkit_norm::forward";
  check_kind_mode(op, kind, mode);
  const bool proj_in = x_in.has_value();
  const Sizes sz = forward_sizes(op, proj_in ? "x_in" : "xp", proj_in ? *x_in : xp, h0);
  const auto dt = sz.dt;
  const int64_t N = sz.N, B = sz.B, P = sz.P;
  TORCH_CHECK(xp.scalar_type() == dt, op, ": xp must have dtype ", dt, " (as x_in), got ", xp.scalar_type());
  if (kind != "gru") no_b_hh(op, kind, b_hh, "the caller adds it to xp");  // (the GRU adds its own)
  if (kind == "lstm") {
    const Tensor& c = req(op, "c0", c0, "by the LSTM");
    const int64_t H = lstm_state(op, c, dt, B, P, w_hr, h0), G = 4 * H;
    if (proj_in) {
      tensor(op, "w_ih", req(op, "w_ih", w_ih, "with x_in"), dt, "(4H, I)", {G, x_in->size(1)});
      tensor(op, "g_ih", req(op, "g_ih", g_ih, "with x_in"), dt, "(4H,)", {G});
      opt(op, "s_ih", s_ih, dt, "(4H,)", {G});
    } else {
      tensor(op, "xp", xp, dt, "(N, 4H)", {N, G});
    }
    tensor(op, "w_hh", w_hh, dt, "(4H, P)", {G, P});
    lstm_regularizers(op, dt, B, N, P, H, mask, zh, zc);
    opt(op, "w_peep", w_peep, dt, "(3H,)", {3 * H});
    check_group(op, "hh", dt, G, &g_hh, s_hh, st_hh);
    check_group(op, "c", dt, H, &req(op, "g_c", g_c, "by the LSTM"), s_c, st_c);
    return;
  }
  const int64_t G = kind == "gru" ? 3 * P : P;
  tensor(op, "xp", xp, dt, kind == "gru" ? "(N, 3H)" : "(N, H)", {N, G});
  tensor(op, "w_hh", w_hh, dt, kind == "gru" ? "(3H, H)" : "(H, H)", {G, P});
  if (kind == "gru") opt(op, "b_hh", b_hh, dt, "(3H,)", {G});
  opt(op, "mask", mask, dt, "(B, H)", {B, P});
  opt(op, "zh", zh, dt, "(N, H)", {N, P});
  check_group(op, "hh", dt, G, &g_hh, s_hh, st_hh);
}

// The arguments of backward against each other, as norm.cpp's check_forward; `saved` as the
// forward returned it after its seven outputs (without the input group's three).
void check_backward(const std::string& kind, int64_t mode, const Tensor& gout, const Tensor& ghn, const Tensor& gcn,
                    const Tensor& out, const std::vector<Tensor>& saved, const Tensor& w_hh, const OptT& w_hr,
                    const OptT& mask, const OptT& zh, const OptT& zc, const Tensor& g_hh, const OptT& g_c,
                    const OptT& st_hh, const OptT& st_c, const OptT& w_peep, int64_t T) {
  using namespace rnnkit_check;
  const char* op = "rnnkit_norm::backward";
  check_kind_mode(op, kind, mode);
  const auto dt = floating(op, "out", out);
  tensor(op, "out", out, dt, "(N, P)", {kAny, kAny});
  positive_width(op, "out", out, "(N, P)");
  const int64_t N = out.size(0), P = out.size(1);
  tensor(op, "gout", gout, dt, "(N, P)", {N, P});
  tensor(op, "ghn", ghn, dt, "(B, P)", {kAny, P});
  const int64_t B = ghn.size(0);
  // a group's saved x^ (N, F) and rho (layer norm (N, 1), batch norm in training (T, F))
  auto group = [&](size_t i, int64_t F, const char* xn, const char* rn) {
    tensor(op, xn, saved[i], dt, "(N, F)", {N, F});
    if (mode == kLN) tensor(op, rn, saved[i + 1], dt, "(N, 1)", {N, 1});
    if (mode == kBNTrain) tensor(op, rn, saved[i + 1], dt, "(T, F)", {T, F});
  };
  if (kind == "lstm") {
    const int64_t H = per_gate(op, "w_hh", w_hh, 4, "(4H, P)"), G = 4 * H;
    tensor(op, "w_hh", w_hh, dt, "(4H, P)", {G, P});
    tensor(op, "gcn", gcn, dt, "(B, H)", {B, H});
    count(op, "saved", saved.size(), 9);
    lstm_saved(op, saved, dt, N, G, "(N, 4H)", "saved[2] (tanh c)", H, P, w_hr, "out", out, w_hh);
    group(5, G, "saved[5] (x^ hh)", "saved[6] (rho hh)");
    group(7, H, "saved[7] (x^ c)", "saved[8] (rho c)");
    lstm_regularizers(op, dt, B, N, P, H, mask, zh, zc);
    opt(op, "w_peep", w_peep, dt, "(3H,)", {3 * H});
    check_group(op, "hh", dt, G, &g_hh, std::nullopt, st_hh);
    check_group(op, "c", dt, H, &req(op, "g_c", g_c, "by the LSTM"), std::nullopt, st_c);
    return;
  }
  const bool gru = kind == "gru";
  const int64_t G = gru ? 3 * P : P;
  tensor(op, "w_hh", w_hh, dt, gru ? "(3H, H)" : "(H, H)", {G, P});
  if (gru) {
    count(op, "saved", saved.size(), 6);
    tensor(op, "saved[0] (gates)", saved[0], dt, "(N, 3H)", {N, G});
    tensor(op, "saved[1] (a_n)", saved[1], dt, "(N, H)", {N, P});
    tensor(op, "saved[2] (h_{t-1})", saved[2], dt, "(N, H)", {N, P});
    if (mask.has_value()) tensor(op, "saved[3] (h_{t-1} * mask)", saved[3], dt, "(N, H)", {N, P});
    group(4, G, "saved[4] (x^ hh)", "saved[5] (rho hh)");
  } else {
    count(op, "saved", saved.size(), 4);
    if (zh.has_value()) tensor(op, "saved[0] (h~)", saved[0], dt, "(N, H)", {N, P});
    tensor(op, "saved[1] (h_{t-1})", saved[1], dt, "(N, H)", {N, P});
    group(2, G, "saved[2] (x^ hh)", "saved[3] (rho hh)");
  }
  opt(op, "mask", mask, dt, "(B, H)", {B, P});
  opt(op, "zh", zh, dt, "(N, H)", {N, P});
  check_group(op, "hh", dt, G, &g_hh, std::nullopt, st_hh);
}

}  // namespace
}  // namespace rnnkit_norm
