// rnnkit fused directions of the normalized cells (layer norm, recurrent batch norm):
// forward and explicit BPTT, looping over time in C++.
//
// Mirrors rnnkit/kernels/norm.py op for op (same buffers, schedule and ATen calls, so the
// same numbers); see there for the equations. Per step: one GEMM for the recurrent group
// r_t = (h_{t-1} ⊙ m) W_hh^T (oneDNN for float32, else BLAS), its normalization (mode 1
// layer norm via at::native_layer_norm; 2 batch norm with the step's statistics; 3 batch
// norm with given per-row statistics), the gates, and for the LSTM the normalization of c_t.
// kind: "lstm", "gru" (torch form), "rnn_tanh", "rnn_relu".
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

using at::Tensor;
using OptT = std::optional<Tensor>;

namespace rnnkit_norm {
namespace {

constexpr double kEps = 1e-5;  // rnnkit.cells.norm.EPS
constexpr int64_t kLN = 1, kBNTrain = 2, kBNEval = 3;

// ---- GEMMs: the policy of rnnkit/kernels/_gemm.py (oneDNN for large float32 products). ----
const c10::OperatorHandle* find_op(const char* name, const char* overload) {
  auto h = c10::Dispatcher::singleton().findSchema({name, overload});
  return h.has_value() ? new c10::OperatorHandle(*h) : nullptr;
}
const c10::OperatorHandle* op_linear() {
  static const c10::OperatorHandle* h = find_op("mkldnn::_linear_pointwise", "");
  return h;
}
const c10::OperatorHandle* op_reorder() {
  static const c10::OperatorHandle* h = find_op("mkldnn::_reorder_linear_weight", "");
  return h;
}
Tensor call(const c10::OperatorHandle* op, std::vector<c10::IValue> stack) {
  op->callBoxed(&stack);
  return stack[0].toTensor();
}
bool use_onednn(const Tensor& t, bool allowed) {
  return allowed && t.scalar_type() == at::kFloat && at::hasMKLDNN() && op_linear() && op_reorder();
}
constexpr int64_t kOneDnnMinWork = 1 << 20;
c10::IValue no_scalars() { return c10::List<std::optional<c10::Scalar>>(); }

struct Linear {  // x -> x W^T for a fixed W (out, in)
  Tensor w;
  mutable Tensor packed;
  int64_t batch;
  bool dnn;
  Linear(const Tensor& W, int64_t b, bool allowed) : w(W), batch(b), dnn(use_onednn(W, allowed)) {}
  Tensor operator()(const Tensor& x) const {
    if (dnn && x.size(0) * w.numel() >= kOneDnnMinWork) {
      if (!packed.defined()) packed = call(op_reorder(), {w.contiguous(), c10::IValue(batch)});
      return call(op_linear(), {x, packed, c10::IValue(), std::string("none"), no_scalars(), std::string("")});
    }
    return at::mm(x, w.t());
  }
};

Tensor mm_tn(const Tensor& a, const Tensor& b, bool allowed) {  // a^T b over all rows
  if (a.is_contiguous() && b.is_contiguous() && use_onednn(a, allowed) && a.numel() * b.size(1) >= kOneDnnMinWork)
    return call(op_linear(), {b.t(), a.t(), c10::IValue(), std::string("none"), no_scalars(), std::string("")})
        .t()
        .contiguous();
  return at::mm(a.t(), b);
}

std::vector<std::pair<int64_t, int64_t>> schedule(const std::vector<int64_t>& bsz, bool reverse) {
  std::vector<std::pair<int64_t, int64_t>> s;
  int64_t off = 0;
  for (int64_t b : bsz) {
    s.emplace_back(off, b);
    off += b;
  }
  if (reverse) std::reverse(s.begin(), s.end());
  return s;
}

Tensor none(const Tensor& like) { return at::empty({0}, like.options()); }

// Out-variants that take the destination by value (a narrow()ed view is an rvalue).
Tensor sigmoid_o(Tensor out, const Tensor& a) { return at::sigmoid_out(out, a); }
Tensor tanh_o(Tensor out, const Tensor& a) { return at::tanh_out(out, a); }
Tensor mul_o(Tensor out, const Tensor& a, const Tensor& b) { return at::mul_out(out, a, b); }
Tensor add_o(Tensor out, const Tensor& a, const Tensor& b) { return at::add_out(out, a, b); }
Tensor sub_o(Tensor out, const Tensor& a, const Tensor& b) { return at::sub_out(out, a, b); }
Tensor addcmul_o(Tensor out, const Tensor& a, const Tensor& b, const Tensor& c, double v = 1) {
  return at::addcmul_out(out, a, b, c, v);
}

// One normalized group over a direction (norm.py's _Group): saved x^ (N, F), rho, stats.
struct Group {
  int64_t mode, F;
  Tensor g;
  OptT s, st;
  Tensor xh, rs, mean, var;
  Group(int64_t mode_, int64_t N, int64_t T, int64_t F_, const Tensor& like, const Tensor& g_, const OptT& s_,
        const OptT& st_)
      : mode(mode_), F(F_), g(g_), s(s_), st(st_) {
    auto o = like.options();
    xh = at::empty({N, F}, o);
    rs = mode == kLN ? at::empty({N, 1}, o) : mode == kBNTrain ? at::empty({T, F}, o) : none(like);
    mean = mode == kBNTrain ? at::empty({T, F}, o) : none(like);
    var = mode == kBNTrain ? at::empty({T, F}, o) : none(like);
  }
  Tensor operator()(const Tensor& r, int64_t off, int64_t bs, int64_t k) {
    Tensor x = xh.narrow(0, off, bs);
    if (mode == kLN) {
      auto res = at::native_layer_norm(r, {F}, std::nullopt, std::nullopt, kEps);
      x.copy_(std::get<0>(res));
      rs.narrow(0, off, bs).copy_(std::get<2>(res));
    } else if (mode == kBNTrain) {
      static const int64_t kDim0[] = {0};
      auto vm = at::var_mean(r, at::IntArrayRef(kDim0), c10::Scalar(0), false);
      Tensor v = std::get<0>(vm), m = std::get<1>(vm), rk = rs.select(0, k);
      mean.select(0, k).copy_(m);
      var.select(0, k).copy_(v);
      at::rsqrt_out(rk, v + kEps);
      at::sub_out(x, r, m).mul_(rk);
    } else {
      at::sub_out(x, r, st->select(0, 0).narrow(0, off, bs)).mul_(st->select(0, 1).narrow(0, off, bs));
    }
    return s.has_value() ? at::addcmul(*s, x, g) : x * g;
  }
};

Tensor norm_backward(int64_t mode, const Tensor& dy, const Tensor& xh, const Tensor& rs, const Tensor& g, Tensor out) {
  Tensor dxh = at::mul_out(out, dy, g);
  if (mode != kBNEval) {
    const int64_t dim = mode == kLN ? 1 : 0;
    Tensor m1 = dxh.mean(dim, true);
    Tensor m2 = (dxh * xh).mean(dim, true);
    dxh.sub_(m1).sub_(xh * m2);
  }
  return dxh.mul_(rs);
}

Tensor rho(int64_t mode, const Tensor& rs, const OptT& st, int64_t off, int64_t bs, int64_t k) {
  if (mode == kLN) return rs.narrow(0, off, bs);
  if (mode == kBNTrain) return rs.select(0, k);
  return st->select(0, 1).narrow(0, off, bs);
}

Tensor prev(const Tensor& hbuf, const OptT& mask, int64_t bs, Tensor dst) {
  if (mask.has_value()) return at::mul_out(dst, hbuf.narrow(0, 0, bs), mask->narrow(0, 0, bs));
  return dst.copy_(hbuf.narrow(0, 0, bs));
}

std::vector<Tensor> forward(std::string kind, int64_t mode, const Tensor& xp, const Tensor& h0, const OptT& c0,
                            const Tensor& w_hh, const OptT& b_hh, const OptT& w_hr, const OptT& mask, const OptT& zh,
                            const OptT& zc, const Tensor& g_hh, const OptT& s_hh, const OptT& g_c, const OptT& s_c,
                            const OptT& st_hh, const OptT& st_c, std::vector<int64_t> batch_sizes, bool reverse,
                            bool onednn) {
  const int64_t N = xp.size(0), B = h0.size(0), P = h0.size(1), T = batch_sizes.size(), G = w_hh.size(0);
  auto o = xp.options();
  Tensor hbuf = h0.clone(), out = at::empty({N, P}, o), hprev = at::empty({N, P}, o);
  Group hh(mode, N, T, G, xp, g_hh, s_hh, st_hh);
  const Linear lin(w_hh, B, onednn);
  const auto steps = schedule(batch_sizes, reverse);
  auto e = [&] { return none(xp); };  // a fresh placeholder each time: outputs may not alias
  if (kind == "lstm") {
    const int64_t H = c0->size(1);
    Group cg(mode, N, T, H, xp, *g_c, s_c, st_c);
    Tensor gates = at::empty({N, 4 * H}, o), cprev = at::empty({N, H}, o), tanhc = at::empty({N, H}, o);
    Tensor hraw = w_hr.has_value() ? at::empty({N, H}, o) : e(), cbuf = c0->clone();
    const std::optional<Linear> lin_r = w_hr.has_value() ? std::optional<Linear>(Linear(*w_hr, B, onednn)) : std::nullopt;
    for (int64_t k = 0; k < T; ++k) {
      const int64_t off = steps[k].first, bs = steps[k].second;
      Tensor hp = prev(hbuf, mask, bs, hprev.narrow(0, off, bs)), g = gates.narrow(0, off, bs);
      Tensor cb = cbuf.narrow(0, 0, bs);
      Tensor a = hh(lin(hp), off, bs, k).add_(xp.narrow(0, off, bs));
      sigmoid_o(g.narrow(1, 0, 2 * H), a.narrow(1, 0, 2 * H));
      tanh_o(g.narrow(1, 2 * H, H), a.narrow(1, 2 * H, H));
      sigmoid_o(g.narrow(1, 3 * H, H), a.narrow(1, 3 * H, H));
      cprev.narrow(0, off, bs).copy_(cb);
      cb.mul_(g.narrow(1, H, H)).addcmul_(g.narrow(1, 0, H), g.narrow(1, 2 * H, H));
      Tensor tc = tanh_o(tanhc.narrow(0, off, bs), cg(cb, off, bs, k));
      Tensor y = out.narrow(0, off, bs);
      if (lin_r.has_value())
        y.copy_((*lin_r)(mul_o(hraw.narrow(0, off, bs), g.narrow(1, 3 * H, H), tc)));
      else
        at::mul_out(y, g.narrow(1, 3 * H, H), tc);
      if (zc.has_value()) cb.lerp_(cprev.narrow(0, off, bs), zc->narrow(0, off, bs));
      if (zh.has_value()) y.lerp_(hbuf.narrow(0, 0, bs), zh->narrow(0, off, bs));
      hbuf.narrow(0, 0, bs).copy_(y);
    }
    return {out, hbuf, cbuf, hh.mean, hh.var, cg.mean, cg.var, gates, cprev, tanhc, hprev, hraw, hh.xh, hh.rs,
            cg.xh, cg.rs};
  }
  if (kind == "gru") {
    const int64_t H = P;
    Tensor gates = at::empty({N, 3 * H}, o), an = at::empty({N, H}, o);
    Tensor hprev_m = mask.has_value() ? at::empty({N, H}, o) : e();
    for (int64_t k = 0; k < T; ++k) {
      const int64_t off = steps[k].first, bs = steps[k].second;
      Tensor hp = hprev.narrow(0, off, bs).copy_(hbuf.narrow(0, 0, bs)), g = gates.narrow(0, off, bs);
      Tensor x = xp.narrow(0, off, bs);
      Tensor hm = mask.has_value() ? mul_o(hprev_m.narrow(0, off, bs), hp, mask->narrow(0, 0, bs)) : hp;
      Tensor a = hh(lin(hm), off, bs, k);
      if (b_hh.has_value()) a.add_(*b_hh);
      an.narrow(0, off, bs).copy_(a.narrow(1, 2 * H, H));
      add_o(g.narrow(1, 0, 2 * H), x.narrow(1, 0, 2 * H), a.narrow(1, 0, 2 * H)).sigmoid_();
      Tensor n = addcmul_o(g.narrow(1, 2 * H, H), x.narrow(1, 2 * H, H), g.narrow(1, 0, H), a.narrow(1, 2 * H, H));
      n.tanh_();
      Tensor y = out.narrow(0, off, bs);
      at::lerp_out(y, n, hp, g.narrow(1, H, H));
      if (zh.has_value()) y.lerp_(hp, zh->narrow(0, off, bs));
      hbuf.narrow(0, 0, bs).copy_(y);
    }
    return {out, hbuf, e(), hh.mean, hh.var, e(), e(), gates, an, hprev, hprev_m, hh.xh, hh.rs};
  }
  Tensor hnew = zh.has_value() ? at::empty({N, P}, o) : e();
  for (int64_t k = 0; k < T; ++k) {
    const int64_t off = steps[k].first, bs = steps[k].second;
    Tensor hp = prev(hbuf, mask, bs, hprev.narrow(0, off, bs));
    Tensor a = hh(lin(hp), off, bs, k).add_(xp.narrow(0, off, bs));
    Tensor y = out.narrow(0, off, bs), h = zh.has_value() ? hnew.narrow(0, off, bs) : y;
    if (kind == "rnn_relu")
      at::clamp_min_out(h, a, 0);
    else
      at::tanh_out(h, a);
    if (zh.has_value()) at::lerp_out(y, h, hbuf.narrow(0, 0, bs), zh->narrow(0, off, bs));
    hbuf.narrow(0, 0, bs).copy_(y);
  }
  return {out, hbuf, e(), hh.mean, hh.var, e(), e(), hnew, hprev, hh.xh, hh.rs};
}

std::vector<Tensor> backward(std::string kind, int64_t mode, const Tensor& gout, const Tensor& ghn, const Tensor& gcn,
                             const Tensor& out, std::vector<Tensor> saved, const Tensor& w_hh, bool has_bias,
                             const OptT& w_hr, const OptT& mask, const OptT& zh, const OptT& zc, const Tensor& g_hh,
                             bool shift_hh, const OptT& g_c, bool shift_c, const OptT& st_hh, const OptT& st_c,
                             std::vector<int64_t> batch_sizes, bool reverse, bool onednn) {
  const int64_t B = ghn.size(0), T = batch_sizes.size();
  const auto steps = schedule(batch_sizes, reverse);
  Tensor dhbuf = ghn.clone(), dhz = at::empty_like(ghn);
  const Linear lin_t(w_hh.t(), B, onednn);
  Tensor dr_all = at::empty({out.size(0), w_hh.size(0)}, out.options());
  auto split_h = [&](Tensor dst, int64_t off, int64_t bs) {
    at::add_out(dst, gout.narrow(0, off, bs), dhbuf.narrow(0, 0, bs));
    if (zh.has_value()) {
      Tensor z = dhz.narrow(0, 0, bs);
      at::mul_out(z, dst, zh->narrow(0, off, bs));
      dst.sub_(z);
    }
    return dst;
  };
  auto recur = [&](const Tensor& dr, int64_t bs) {
    Tensor dhp = dhbuf.narrow(0, 0, bs);
    if (mask.has_value())
      at::mul_out(dhp, lin_t(dr), mask->narrow(0, 0, bs));
    else
      dhp.copy_(lin_t(dr));
    return dhp;
  };
  auto direct = [&](int64_t bs) {
    if (zh.has_value()) dhbuf.narrow(0, 0, bs).add_(dhz.narrow(0, 0, bs));
  };
  std::vector<Tensor> res;
  for (int i = 0; i < 10; ++i) res.push_back(none(out));
  Tensor da_all, hin, xh = saved[saved.size() - 2 - (kind == "lstm" ? 2 : 0)];
  Tensor rs = saved[saved.size() - 1 - (kind == "lstm" ? 2 : 0)];
  if (kind == "lstm") {
    const Tensor &gates = saved[0], &cprev = saved[1], &tanhc = saved[2], &hprev = saved[3], &hraw = saved[4];
    const Tensor &xc = saved[7], &rc = saved[8];
    const int64_t H = tanhc.size(1);
    Tensor dgates = at::empty_like(gates), dyc = at::empty_like(tanhc);
    Tensor dcbuf = gcn.clone(), dcz = at::empty_like(gcn), tmp = at::empty({B, H}, gcn.options());
    Tensor t2 = at::empty({B, H}, gcn.options());
    Tensor dh_all = w_hr.has_value() ? at::empty_like(hprev) : none(out);
    const std::optional<Linear> lin_rt = w_hr.has_value() ? std::optional<Linear>(Linear(w_hr->t(), B, onednn)) : std::nullopt;
    for (int64_t k = T - 1; k >= 0; --k) {
      const int64_t off = steps[k].first, bs = steps[k].second;
      Tensor g = gates.narrow(0, off, bs), dg = dgates.narrow(0, off, bs), tc = tanhc.narrow(0, off, bs);
      Tensor dc = dcbuf.narrow(0, 0, bs);
      Tensor i = g.narrow(1, 0, H), f = g.narrow(1, H, H), gg = g.narrow(1, 2 * H, H), og = g.narrow(1, 3 * H, H);
      Tensor di = dg.narrow(1, 0, H), df = dg.narrow(1, H, H), dgg = dg.narrow(1, 2 * H, H), dog = dg.narrow(1, 3 * H, H);
      Tensor dhp = split_h(w_hr.has_value() ? dh_all.narrow(0, off, bs) : tmp.narrow(0, 0, bs), off, bs);
      if (zc.has_value()) {
        mul_o(dcz.narrow(0, 0, bs), dc, zc->narrow(0, off, bs));
        dc.sub_(dcz.narrow(0, 0, bs));
      }
      Tensor dh = lin_rt.has_value() ? (*lin_rt)(dhp) : dhp;
      at::addcmul_out(dog, og, og, og, -1).mul_(dh).mul_(tc);
      Tensor dy = mul_o(dyc.narrow(0, off, bs), tc, tc).neg_().add_(1).mul_(og).mul_(dh);
      dc.add_(norm_backward(mode, dy, xc.narrow(0, off, bs), rho(mode, rc, st_c, off, bs, k), *g_c, t2.narrow(0, 0, bs)));
      at::addcmul_out(di, i, i, i, -1).mul_(gg).mul_(dc);
      at::addcmul_out(df, f, f, f, -1).mul_(cprev.narrow(0, off, bs)).mul_(dc);
      at::mul_out(dgg, gg, gg).neg_().add_(1).mul_(i).mul_(dc);
      dc.mul_(f);
      if (zc.has_value()) dc.add_(dcz.narrow(0, 0, bs));
      recur(norm_backward(mode, dg, xh.narrow(0, off, bs), rho(mode, rs, st_hh, off, bs, k), g_hh,
                          dr_all.narrow(0, off, bs)),
            bs);
      direct(bs);
    }
    res[0] = dgates;
    res[2] = dcbuf;
    if (w_hr.has_value()) res[5] = mm_tn(dh_all, hraw, onednn);
    res[8] = (dyc * xc).sum(0);
    if (shift_c) res[9] = dyc.sum(0);
    da_all = dgates;
    hin = hprev;
  } else if (kind == "gru") {
    const Tensor &gates = saved[0], &an = saved[1], &hprev = saved[2], &hprev_m = saved[3];
    const int64_t H = hprev.size(1);
    Tensor dxp = at::empty_like(gates), dh = at::empty({B, H}, hprev.options()), tmp = at::empty({B, H}, hprev.options());
    da_all = at::empty_like(gates);
    for (int64_t k = T - 1; k >= 0; --k) {
      const int64_t off = steps[k].first, bs = steps[k].second;
      Tensor g = gates.narrow(0, off, bs), dx = dxp.narrow(0, off, bs), da = da_all.narrow(0, off, bs);
      Tensor d = dh.narrow(0, 0, bs);
      Tensor r = g.narrow(1, 0, H), z = g.narrow(1, H, H), n = g.narrow(1, 2 * H, H);
      Tensor dr_ = dx.narrow(1, 0, H), dz = dx.narrow(1, H, H), dn = dx.narrow(1, 2 * H, H);
      split_h(d, off, bs);
      at::mul_out(dn, n, n).neg_().add_(1).mul_(d);
      at::addcmul_out(dn, dn, dn, z, -1);
      at::addcmul_out(dz, z, z, z, -1).mul_(d).mul_(sub_o(tmp.narrow(0, 0, bs), hprev.narrow(0, off, bs), n));
      at::addcmul_out(dr_, r, r, r, -1).mul_(dn).mul_(an.narrow(0, off, bs));
      da.narrow(1, 0, 2 * H).copy_(dx.narrow(1, 0, 2 * H));
      mul_o(da.narrow(1, 2 * H, H), dn, r);
      Tensor dr = norm_backward(mode, da, xh.narrow(0, off, bs), rho(mode, rs, st_hh, off, bs, k), g_hh,
                                dr_all.narrow(0, off, bs));
      recur(dr, bs).addcmul_(d, z);
      direct(bs);
    }
    res[0] = dxp;
    if (has_bias) res[4] = da_all.sum(0);
    hin = mask.has_value() ? hprev_m : hprev;
  } else {
    const Tensor &hnew = saved[0], &hprev = saved[1];
    const Tensor& h = zh.has_value() ? hnew : out;
    da_all = at::empty_like(out);
    for (int64_t k = T - 1; k >= 0; --k) {
      const int64_t off = steps[k].first, bs = steps[k].second;
      Tensor da = split_h(da_all.narrow(0, off, bs), off, bs), o = h.narrow(0, off, bs);
      if (kind == "rnn_relu")
        da.mul_(o > 0);
      else
        da.mul_(at::addcmul(at::ones_like(o), o, o, -1));
      recur(norm_backward(mode, da, xh.narrow(0, off, bs), rho(mode, rs, st_hh, off, bs, k), g_hh,
                          dr_all.narrow(0, off, bs)),
            bs);
      direct(bs);
    }
    res[0] = da_all;
    hin = hprev;
  }
  res[1] = dhbuf;
  res[3] = mm_tn(dr_all, hin, onednn);
  res[6] = (da_all * xh).sum(0);
  if (shift_hh) res[7] = da_all.sum(0);
  return res;
}

}  // namespace
}  // namespace rnnkit_norm

TORCH_LIBRARY(rnnkit_norm, m) {
  m.def(
      "forward(str kind, int mode, Tensor xp, Tensor h0, Tensor? c0, Tensor w_hh, Tensor? b_hh, Tensor? w_hr, "
      "Tensor? mask, Tensor? zh, Tensor? zc, Tensor g_hh, Tensor? s_hh, Tensor? g_c, Tensor? s_c, Tensor? st_hh, "
      "Tensor? st_c, int[] batch_sizes, bool reverse, bool onednn) -> Tensor[]",
      &rnnkit_norm::forward);
  m.def(
      "backward(str kind, int mode, Tensor gout, Tensor ghn, Tensor gcn, Tensor out, Tensor[] saved, Tensor w_hh, "
      "bool has_bias, Tensor? w_hr, Tensor? mask, Tensor? zh, Tensor? zc, Tensor g_hh, bool shift_hh, Tensor? g_c, "
      "bool shift_c, Tensor? st_hh, Tensor? st_c, int[] batch_sizes, bool reverse, bool onednn) -> Tensor[]",
      &rnnkit_norm::backward);
}
