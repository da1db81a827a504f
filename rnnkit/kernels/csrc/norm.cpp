// rnnkit fused directions of the normalized cells (layer norm, recurrent batch norm):
// forward and explicit BPTT, looping over time in C++.
//
// The same buffers, schedule and equations as rnnkit/kernels/norm.py (see there), so the same
// numbers up to rounding (float64: 1e-12, batch norm of a few rows 1e-10). Per step: one GEMM
// for the recurrent group r_t = (h_{t-1} ⊙ m) W_hh^T (oneDNN for large float32 products, else
// BLAS); ATen's vectorized sigmoid/tanh on whole gate blocks; everything else in plain loops
// over the step's rows: the normalization (mode 1 layer norm, 2 batch norm with the step's
// statistics, 3 batch norm with given per-row statistics) fused with the terms added to it,
// the cell update, and in backward the gate gradients, the normalization's gradient and the
// accumulation of the gain/shift gradients (float64 accumulators). Few tensor ops per step:
// at small sizes their fixed cost is the bottleneck. Compiled with csrc/fused.cpp into one
// library (rnnkit/kernels/ext.py); ops torch.ops.rnnkit_norm.forward/backward.
// kind: "lstm", "gru" (torch form), "rnn_tanh", "rnn_relu".
#include <torch/library.h>

#include "norm_kernels.h"

namespace rnnkit_norm {
namespace {

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
    AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "rnnkit_norm_lstm_fwd", [&] {
      scalar_t *C = cbuf.data_ptr<scalar_t>(), *HB = hbuf.data_ptr<scalar_t>();
      const scalar_t* M = mask.has_value() ? mask->data_ptr<scalar_t>() : nullptr;
      for (int64_t k = 0; k < T; ++k) {
        const int64_t off = steps[k].first, bs = steps[k].second;
        Tensor hp = hprev.narrow(0, off, bs), g = gates.narrow(0, off, bs), x = xp.narrow(0, off, bs);
        scalar_t* HP = hp.data_ptr<scalar_t>();
        for (int64_t i = 0; i < bs * P; ++i) HP[i] = M ? HB[i] * M[i] : HB[i];
        const Tensor a = hh(lin(hp), off, bs, k, &x);  // norm_hh(r) + xp
        sigmoid_o(g, a);  // i, f, o (the g block is overwritten next)
        tanh_o(g.narrow(1, 2 * H, H), a.narrow(1, 2 * H, H));
        const scalar_t* Gt = g.data_ptr<scalar_t>();
        scalar_t* CP = cprev.data_ptr<scalar_t>() + off * H;
        for (int64_t b = 0; b < bs; ++b)
          for (int64_t j = 0; j < H; ++j) {
            const scalar_t* gr = Gt + b * 4 * H;
            const scalar_t cp = C[b * H + j];
            CP[b * H + j] = cp;
            C[b * H + j] = gr[H + j] * cp + gr[j] * gr[2 * H + j];
          }
        Tensor tc = tanh_o(tanhc.narrow(0, off, bs), cg(cbuf.narrow(0, 0, bs), off, bs, k));
        Tensor y = out.narrow(0, off, bs), hr = w_hr.has_value() ? hraw.narrow(0, off, bs) : y;
        const scalar_t* TC = tc.data_ptr<scalar_t>();
        scalar_t* HR = hr.data_ptr<scalar_t>();
        for (int64_t b = 0; b < bs; ++b)
          for (int64_t j = 0; j < H; ++j) HR[b * H + j] = Gt[b * 4 * H + 3 * H + j] * TC[b * H + j];
        if (lin_r.has_value()) y.copy_((*lin_r)(hr));
        if (zc.has_value()) cbuf.narrow(0, 0, bs).lerp_(cprev.narrow(0, off, bs), zc->narrow(0, off, bs));
        if (zh.has_value()) y.lerp_(hbuf.narrow(0, 0, bs), zh->narrow(0, off, bs));
        std::copy_n(y.data_ptr<scalar_t>(), bs * P, HB);
      }
    });
    return {out, hbuf, cbuf, hh.mean, hh.var, cg.mean, cg.var, gates, cprev, tanhc, hprev, hraw, hh.xh, hh.rs,
            cg.xh, cg.rs};
  }
  if (kind == "gru") {
    const int64_t H = P;
    Tensor gates = at::empty({N, 3 * H}, o), an = at::empty({N, H}, o);
    Tensor hprev_m = mask.has_value() ? at::empty({N, H}, o) : e();
    const Tensor bh = b_hh.has_value() ? b_hh->contiguous() : Tensor();
    AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "rnnkit_norm_gru_fwd", [&] {
      scalar_t* HB = hbuf.data_ptr<scalar_t>();
      const scalar_t* M = mask.has_value() ? mask->data_ptr<scalar_t>() : nullptr;
      for (int64_t k = 0; k < T; ++k) {
        const int64_t off = steps[k].first, bs = steps[k].second;
        Tensor hp = hprev.narrow(0, off, bs), g = gates.narrow(0, off, bs);
        Tensor hm = M ? hprev_m.narrow(0, off, bs) : hp;
        scalar_t *HP = hp.data_ptr<scalar_t>(), *HM = hm.data_ptr<scalar_t>();
        for (int64_t i = 0; i < bs * H; ++i) {
          HP[i] = HB[i];
          if (M) HM[i] = HB[i] * M[i];
        }
        const Tensor a = hh(lin(hm), off, bs, k, nullptr, b_hh.has_value() ? &bh : nullptr);  // norm + b_hh
        const scalar_t *A = a.data_ptr<scalar_t>(), *X = xp.data_ptr<scalar_t>() + off * 3 * H;
        scalar_t *Gt = g.data_ptr<scalar_t>(), *AN = an.data_ptr<scalar_t>() + off * H;
        for (int64_t b = 0; b < bs; ++b)
          for (int64_t j = 0; j < 2 * H; ++j) Gt[b * 3 * H + j] = X[b * 3 * H + j] + A[b * 3 * H + j];
        g.narrow(1, 0, 2 * H).sigmoid_();  // r, z
        for (int64_t b = 0; b < bs; ++b)
          for (int64_t j = 0; j < H; ++j) {
            const int64_t q = b * 3 * H + 2 * H + j;
            AN[b * H + j] = A[q];
            Gt[q] = X[q] + Gt[b * 3 * H + j] * A[q];
          }
        g.narrow(1, 2 * H, H).tanh_();  // n
        Tensor y = out.narrow(0, off, bs);
        scalar_t* O = y.data_ptr<scalar_t>();
        for (int64_t b = 0; b < bs; ++b)
          for (int64_t j = 0; j < H; ++j) {  // lerp(n, h_{t-1}, z), in at::lerp's two-sided form
            const scalar_t n = Gt[b * 3 * H + 2 * H + j], z = Gt[b * 3 * H + H + j], h = HP[b * H + j];
            O[b * H + j] = z < scalar_t(0.5) ? n + z * (h - n) : h - (h - n) * (1 - z);
          }
        if (zh.has_value()) y.lerp_(hp, zh->narrow(0, off, bs));
        std::copy_n(O, bs * H, HB);
      }
    });
    return {out, hbuf, e(), hh.mean, hh.var, e(), e(), gates, an, hprev, hprev_m, hh.xh, hh.rs};
  }
  Tensor hnew = zh.has_value() ? at::empty({N, P}, o) : e();
  for (int64_t k = 0; k < T; ++k) {
    const int64_t off = steps[k].first, bs = steps[k].second;
    Tensor hp = prev(hbuf, mask, bs, hprev.narrow(0, off, bs));
    const Tensor x = xp.narrow(0, off, bs);
    Tensor a = hh(lin(hp), off, bs, k, &x);
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
  const Tensor gh = g_hh.contiguous(), gc = g_c.has_value() ? g_c->contiguous() : none(out);
  const OptT sth = st_hh.has_value() ? OptT(st_hh->contiguous()) : st_hh;
  const OptT stc = st_c.has_value() ? OptT(st_c->contiguous()) : st_c;
  Tensor dr_all = at::empty({out.size(0), w_hh.size(0)}, out.options());
  const auto acc_opts = out.options().dtype(at::kDouble);
  auto cast = [&](const Tensor& t) { return t.to(out.scalar_type(), false, true); };  // a copy: no aliasing
  Tensor dgam = at::zeros({w_hh.size(0)}, acc_opts), dbet = at::zeros({w_hh.size(0)}, acc_opts);
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
    Tensor dgates = at::empty_like(gates), dyc = at::empty({B, H}, tanhc.options());  // d y_c of a step
    Tensor dgam_c = at::zeros({H}, acc_opts), dbet_c = at::zeros({H}, acc_opts);
    Tensor dcbuf = gcn.clone(), dcz = at::empty_like(gcn), tmp = at::empty({B, H}, gcn.options());
    Tensor t2 = at::empty({B, H}, gcn.options());
    Tensor dh_all = w_hr.has_value() ? at::empty_like(hprev) : none(out);
    const std::optional<Linear> lin_rt = w_hr.has_value() ? std::optional<Linear>(Linear(w_hr->t(), B, onednn)) : std::nullopt;
    AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_norm_lstm_bwd", [&] {
      scalar_t* DC = dcbuf.data_ptr<scalar_t>();
      for (int64_t k = T - 1; k >= 0; --k) {
        const int64_t off = steps[k].first, bs = steps[k].second;
        Tensor dc = dcbuf.narrow(0, 0, bs), dg = dgates.narrow(0, off, bs), dy = dyc.narrow(0, 0, bs);
        Tensor dhp = split_h(w_hr.has_value() ? dh_all.narrow(0, off, bs) : tmp.narrow(0, 0, bs), off, bs);
        if (zc.has_value()) {  // c_t = lerp(c~_t, c_{t-1}, zc): the direct part waits in dcz
          mul_o(dcz.narrow(0, 0, bs), dc, zc->narrow(0, off, bs));
          dc.sub_(dcz.narrow(0, 0, bs));
        }
        const Tensor dh = lin_rt.has_value() ? (*lin_rt)(dhp).contiguous() : dhp;
        const scalar_t* Gt = gates.data_ptr<scalar_t>() + off * 4 * H;
        const scalar_t* TC = tanhc.data_ptr<scalar_t>() + off * H;
        const scalar_t* CP = cprev.data_ptr<scalar_t>() + off * H;
        const scalar_t* DH = dh.data_ptr<scalar_t>();
        scalar_t *DG = dg.data_ptr<scalar_t>(), *DY = dy.data_ptr<scalar_t>();
        for (int64_t b = 0; b < bs; ++b)
          for (int64_t j = 0; j < H; ++j) {  // d o' = dh tanh(y_c) o(1-o);  d y_c = dh o (1 - tanh²)
            const int64_t q = b * H + j;
            const scalar_t o = Gt[b * 4 * H + 3 * H + j], tc = TC[q];
            DG[b * 4 * H + 3 * H + j] = (o - o * o) * DH[q] * tc;
            DY[q] = (1 - tc * tc) * o * DH[q];
          }
        const Tensor dcn = norm_backward(mode, dy, xc.narrow(0, off, bs), rho(mode, rc, stc, off, bs, k), gc,
                                         t2.narrow(0, 0, bs), dgam_c, dbet_c);
        const scalar_t* DN = dcn.data_ptr<scalar_t>();
        for (int64_t b = 0; b < bs; ++b)
          for (int64_t j = 0; j < H; ++j) {
            const int64_t q = b * H + j;
            const scalar_t* gr = Gt + b * 4 * H;
            scalar_t* dgr = DG + b * 4 * H;
            const scalar_t i = gr[j], f = gr[H + j], gg = gr[2 * H + j], d = DC[q] + DN[q];
            dgr[j] = (i - i * i) * gg * d;
            dgr[H + j] = (f - f * f) * CP[q] * d;
            dgr[2 * H + j] = (1 - gg * gg) * i * d;
            DC[q] = d * f;
          }
        if (zc.has_value()) dc.add_(dcz.narrow(0, 0, bs));
        recur(norm_backward(mode, dg, xh.narrow(0, off, bs), rho(mode, rs, sth, off, bs, k), gh,
                            dr_all.narrow(0, off, bs), dgam, dbet),
              bs);
        direct(bs);
      }
    });
    res[0] = dgates;
    res[2] = dcbuf;
    if (w_hr.has_value()) res[5] = mm_tn(dh_all, hraw, onednn);
    res[8] = cast(dgam_c);
    if (shift_c) res[9] = cast(dbet_c);
    hin = hprev;
  } else if (kind == "gru") {
    const Tensor &gates = saved[0], &an = saved[1], &hprev = saved[2], &hprev_m = saved[3];
    const int64_t H = hprev.size(1);
    Tensor dxp = at::empty_like(gates), dh = at::empty({B, H}, hprev.options()), tmp = at::empty({B, H}, hprev.options());
    Tensor dat = at::empty({B, 3 * H}, gates.options());  // d of the normalized group, this step
    AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_norm_gru_bwd", [&] {
      scalar_t* DZ = tmp.data_ptr<scalar_t>();  // dh ⊙ z: h's direct path to h_{t-1}
      for (int64_t k = T - 1; k >= 0; --k) {
        const int64_t off = steps[k].first, bs = steps[k].second;
        const Tensor d = split_h(dh.narrow(0, 0, bs), off, bs);
        const scalar_t *Gt = gates.data_ptr<scalar_t>() + off * 3 * H, *AN = an.data_ptr<scalar_t>() + off * H;
        const scalar_t *HP = hprev.data_ptr<scalar_t>() + off * H, *D = d.data_ptr<scalar_t>();
        scalar_t *DX = dxp.data_ptr<scalar_t>() + off * 3 * H, *DA = dat.data_ptr<scalar_t>();
        for (int64_t b = 0; b < bs; ++b)
          for (int64_t j = 0; j < H; ++j) {
            const int64_t q = b * H + j, g0 = b * 3 * H + j;
            const scalar_t r = Gt[g0], z = Gt[g0 + H], n = Gt[g0 + 2 * H], dh = D[q];
            const scalar_t dn = (1 - n * n) * dh * (1 - z);
            const scalar_t dz = (z - z * z) * dh * (HP[q] - n);
            const scalar_t dr = (r - r * r) * dn * AN[q];
            DX[g0] = DA[g0] = dr;
            DX[g0 + H] = DA[g0 + H] = dz;
            DX[g0 + 2 * H] = dn;
            DA[g0 + 2 * H] = dn * r;
            DZ[q] = dh * z;
          }
        const Tensor dr = norm_backward(mode, dat.narrow(0, 0, bs), xh.narrow(0, off, bs),
                                        rho(mode, rs, sth, off, bs, k), gh, dr_all.narrow(0, off, bs), dgam, dbet);
        recur(dr, bs).add_(tmp.narrow(0, 0, bs));
        direct(bs);
      }
    });
    res[0] = dxp;
    if (has_bias) res[4] = cast(dbet);  // b_hh is added right after the shift
    hin = mask.has_value() ? hprev_m : hprev;
  } else {
    const Tensor &hnew = saved[0], &hprev = saved[1];
    const Tensor& h = zh.has_value() ? hnew : out;
    da_all = at::empty_like(out);
    for (int64_t k = T - 1; k >= 0; --k) {
      const int64_t off = steps[k].first, bs = steps[k].second;
      Tensor da = split_h(da_all.narrow(0, off, bs), off, bs), o = h.narrow(0, off, bs);
      AT_DISPATCH_FLOATING_TYPES(o.scalar_type(), "rnnkit_norm_rnn_act", [&] {  // da = dh ⊙ act'(h~)
        scalar_t* DA = da.data_ptr<scalar_t>();
        const scalar_t* O = o.data_ptr<scalar_t>();
        const bool relu = kind == "rnn_relu";
        for (int64_t i = 0; i < bs * o.size(1); ++i)
          DA[i] = relu ? (O[i] > 0 ? DA[i] : scalar_t(0)) : DA[i] * (1 - O[i] * O[i]);
      });
      recur(norm_backward(mode, da, xh.narrow(0, off, bs), rho(mode, rs, sth, off, bs, k), gh,
                          dr_all.narrow(0, off, bs), dgam, dbet),
            bs);
      direct(bs);
    }
    res[0] = da_all;
    hin = hprev;
  }
  res[1] = dhbuf;
  res[3] = mm_tn(dr_all, hin, onednn);
  res[6] = cast(dgam);
  if (shift_hh) res[7] = cast(dbet);
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
