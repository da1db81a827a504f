// rnnkit fused GRU (torch form) and Elman RNN directions: forward and explicit BPTT, looping
// over time in C++ (fused.cpp's kinds 1-3). Mirrors rnnkit/kernels/{gru,rnn}.py exactly (same
// buffers, same schedule, same equations).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "gru_rnn.h"

using at::Tensor;
using namespace rnnkit_common;

namespace {

// h_prev (as fed to the GEMM) for the active rows: hbuf[:bs] (times the mask).
void load_prev(Tensor& dst, const Tensor& hbuf, const std::optional<Tensor>& mask, int64_t bs) {
  if (mask.has_value())
    at::mul_out(dst, hbuf.narrow(0, 0, bs), mask->narrow(0, 0, bs));
  else
    dst.copy_(hbuf.narrow(0, 0, bs));
}

}  // namespace

namespace rnnkit_gru_rnn {

std::vector<Tensor> forward(int64_t kind, const Tensor& xp, const Tensor& h0, const Tensor& w_hh,
                            const OptT& b_hh, const OptT& mask, const OptT& zh, const Steps& steps, bool onednn) {
  const int64_t N = xp.size(0), P = h0.size(1), B = h0.size(0);
  const Linear lin(w_hh, B, onednn);
  Tensor hbuf = h0.clone(), out = at::empty({N, P}, xp.options());
  Tensor hprev = at::empty({N, P}, xp.options());
  if (kind == 1) {
    const int64_t H = P;
    // a_n (the n-part of the recurrent GEMM) is all backward needs of it: (N, H), not (N, 3H)
    Tensor gates = at::empty({N, 3 * H}, xp.options()), an = at::empty({N, H}, xp.options());
    Tensor hprev_m = mask.has_value() ? at::empty({N, H}, xp.options()) : hprev;
    AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "rnnkit_gru_fwd", [&] {
      for (const auto& st : steps) {
        const int64_t off = st.first, bs = st.second;
        Tensor hp = hprev.narrow(0, off, bs), hm = hprev_m.narrow(0, off, bs);
        Tensor g = gates.narrow(0, off, bs);
        hp.copy_(hbuf.narrow(0, 0, bs));
        if (mask.has_value()) at::mul_out(hm, hp, mask->narrow(0, 0, bs));
        const Tensor a = lin(hm, b_hh);
        an.narrow(0, off, bs).copy_(a.narrow(1, 2 * H, H));
        Tensor x = xp.narrow(0, off, bs), rz = g.narrow(1, 0, 2 * H), n = g.narrow(1, 2 * H, H);
        at::add_out(rz, x.narrow(1, 0, 2 * H), a.narrow(1, 0, 2 * H));
        rz.sigmoid_();
        at::addcmul_out(n, x.narrow(1, 2 * H, H), g.narrow(1, 0, H), a.narrow(1, 2 * H, H));
        n.tanh_();
        const scalar_t* G = g.data_ptr<scalar_t>();
        const scalar_t* HP = hp.data_ptr<scalar_t>();
        scalar_t* O = out.data_ptr<scalar_t>() + off * H;
        scalar_t* HB = hbuf.data_ptr<scalar_t>();
        rows(bs, 3 * H, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            const scalar_t* gr = G + b * 3 * H;
            for (int64_t j = 0; j < H; ++j) {
              const scalar_t n = gr[2 * H + j];
              const scalar_t h = n + gr[H + j] * (HP[b * H + j] - n);
              O[b * H + j] = h;
              HB[b * H + j] = h;
            }
          }
        });
        if (zh.has_value()) {  // zoneout: h_t = lerp(h~_t, h_{t-1}, zh)
          Tensor o = out.narrow(0, off, bs);
          o.lerp_(hp, zh->narrow(0, off, bs));
          hbuf.narrow(0, 0, bs).copy_(o);
        }
      }
    });
    return {out, hbuf, none(xp), gates, an, hprev, hprev_m};
  }
  // Elman RNN; hnew holds h~ (for act'), which zoneout mixes into the output.
  Tensor hnew = zh.has_value() ? at::empty({N, P}, xp.options()) : out;
  for (const auto& st : steps) {
    const int64_t off = st.first, bs = st.second;
    Tensor hp = hprev.narrow(0, off, bs), o = hnew.narrow(0, off, bs), y = out.narrow(0, off, bs);
    load_prev(hp, hbuf, mask, bs);
    const Tensor a = lin.add(hp, xp.narrow(0, off, bs));
    if (kind == 3) at::clamp_min_out(o, a, 0); else at::tanh_out(o, a);
    if (zh.has_value()) at::lerp_out(y, o, hbuf.narrow(0, 0, bs), zh->narrow(0, off, bs));
    hbuf.narrow(0, 0, bs).copy_(y);
  }
  return {out, hbuf, none(xp), hnew, hprev};
}

std::vector<Tensor> backward(int64_t kind, const Tensor& gout, const Tensor& ghn, const std::vector<Tensor>& saved,
                             const Tensor& w_hh, const OptT& mask, const OptT& zh, bool has_bias, const Steps& steps,
                             bool onednn) {
  Tensor dhbuf = ghn.clone();
  const int64_t B = ghn.size(0), P = ghn.size(1);
  const Linear lin_t(w_hh.t(), B, onednn);
  // dh_{t-1} = (da W_hh) ⊙ m for the active rows.
  auto recur = [&](const Tensor& da, int64_t bs) {
    Tensor dhp = dhbuf.narrow(0, 0, bs);
    if (mask.has_value())
      at::mul_out(dhp, lin_t(da), mask->narrow(0, 0, bs));
    else
      dhp.copy_(lin_t(da));
    return dhp;
  };
  // Zoneout on h: dL/dh~ = dh ⊙ (1 - zh) into `dst`, the direct part dh ⊙ zh into dhz.
  Tensor dhz = zh.has_value() ? at::empty_like(ghn) : none(ghn), dht = at::empty_like(ghn);
  auto split_h = [&](Tensor dst, int64_t off, int64_t bs) {
    at::add_out(dst, gout.narrow(0, off, bs), dhbuf.narrow(0, 0, bs));
    if (zh.has_value()) {
      Tensor z = dhz.narrow(0, 0, bs);
      at::mul_out(z, dst, zh->narrow(0, off, bs));
      dst.sub_(z);
    }
    return dst;
  };
  auto add_direct = [&](int64_t bs) {
    if (zh.has_value()) dhbuf.narrow(0, 0, bs).add_(dhz.narrow(0, 0, bs));
  };
  if (kind == 1) {
    const Tensor &gates = saved[0], &an = saved[1], &hprev = saved[2], &hprev_m = saved[3];
    const int64_t H = P;
    // d a = [dr', dz', dn' ⊙ r] per step in `dat`; its r, z parts are d xp's, so only the
    // n-part is stacked over the sequence (dan) for the weight gradient.
    Tensor dxp = at::empty_like(gates), dan = at::empty_like(an), dz = at::empty({B, H}, gates.options());
    Tensor dat = at::empty({B, 3 * H}, gates.options());
    AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_gru_bwd", [&] {
      for (const auto& st : steps) {
        const int64_t off = st.first, bs = st.second;
        const scalar_t* G = gates.data_ptr<scalar_t>() + off * 3 * H;
        const scalar_t* AN = an.data_ptr<scalar_t>() + off * H;
        const scalar_t* HP = hprev.data_ptr<scalar_t>() + off * H;
        const scalar_t* GO = gout.data_ptr<scalar_t>() + off * H;
        scalar_t* DHB = dhbuf.data_ptr<scalar_t>();
        const scalar_t* DT = zh.has_value() ? split_h(dht.narrow(0, 0, bs), off, bs).data_ptr<scalar_t>() : nullptr;
        scalar_t* DX = dxp.data_ptr<scalar_t>() + off * 3 * H;
        scalar_t* DA = dat.data_ptr<scalar_t>();
        scalar_t* DAN = dan.data_ptr<scalar_t>() + off * H;
        scalar_t* DZ = dz.data_ptr<scalar_t>();
        rows(bs, 3 * H, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            const scalar_t* g = G + b * 3 * H;
            scalar_t *dx = DX + b * 3 * H, *da = DA + b * 3 * H;
            for (int64_t j = 0; j < H; ++j) {
              const int64_t k = b * H + j;
              const scalar_t dh = DT ? DT[k] : GO[k] + DHB[k];
              const scalar_t r = g[j], z = g[H + j], n = g[2 * H + j];
              const scalar_t dn = dh * (1 - n * n) * (1 - z);
              const scalar_t dzp = dh * (z - z * z) * (HP[k] - n);
              const scalar_t drp = dn * AN[k] * (r - r * r);
              dx[j] = da[j] = drp;
              dx[H + j] = da[H + j] = dzp;
              dx[2 * H + j] = dn;
              da[2 * H + j] = DAN[k] = dn * r;
              DZ[k] = dh * z;
            }
          }
        });
        recur(dat.narrow(0, 0, bs), bs).add_(dz.narrow(0, 0, bs));
        add_direct(bs);
      }
    });
    const Tensor drz = dxp.narrow(1, 0, 2 * H);
    Tensor db = has_bias ? at::cat({drz.sum(0), dan.sum(0)}) : none(gates);
    Tensor dw = at::cat({mm_tn(drz, hprev_m, onednn), mm_tn(dan, hprev_m, onednn)});
    return {dxp, dhbuf, none(gates), dw, db, none(gates), none(gates)};
  }
  const Tensor &out = saved[0], &hprev = saved[1];
  const int64_t H = P;
  Tensor da_all = at::empty_like(out);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "rnnkit_rnn_bwd", [&] {
    for (const auto& st : steps) {
      const int64_t off = st.first, bs = st.second;
      const scalar_t* O = out.data_ptr<scalar_t>() + off * H;
      const scalar_t* GO = gout.data_ptr<scalar_t>() + off * H;
      const scalar_t* DHB = dhbuf.data_ptr<scalar_t>();
      const scalar_t* DT = zh.has_value() ? split_h(dht.narrow(0, 0, bs), off, bs).data_ptr<scalar_t>() : nullptr;
      scalar_t* DA = da_all.data_ptr<scalar_t>() + off * H;
      rows(bs, H, [&](int64_t b0, int64_t b1) {
        for (int64_t k = b0 * H; k < b1 * H; ++k) {
          const scalar_t o = O[k], dh = DT ? DT[k] : GO[k] + DHB[k];
          DA[k] = kind == 3 ? (o > 0 ? dh : scalar_t(0)) : dh * (1 - o * o);
        }
      });
      recur(da_all.narrow(0, off, bs), bs);
      add_direct(bs);
    }
  });
  return {da_all, dhbuf, none(out), mm_tn(da_all, hprev, onednn), none(out), none(out), none(out)};
}

}  // namespace rnnkit_gru_rnn
