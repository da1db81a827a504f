// rnnkit fused variant directions: LSTM gate layouts (Greff et al. 2017) and GRU variants
// (Cho et al. 2014 reset-before; MUT1-3 of Jozefowicz et al. 2015), forward and explicit BPTT.
//
// The LSTM layouts live in lstm_variants.cpp. Mirrors rnnkit/kernels/{lstm,gru}_variants.py
// (same buffers, schedule, equations and flags):
// per step the recurrent GEMM(s), ATen's vectorized sigmoid/tanh for the transcendental parts
// and one fused loop for the element-wise arithmetic; backward computes every gate gradient in
// one fused loop from the saved activations. Weight gradients are single GEMMs after the loop.
// family: 0 = LSTM layouts ("lstm_v"), 1 = GRU variants ("gru_v").
#include <torch/library.h>

#include "variants.h"

using namespace rnnkit_common;
using at::Tensor;
using OptT = std::optional<Tensor>;

namespace {

// ---- GRU variants (flags as gru_variants.py: variant code | 4 * reset_after) ----
struct GruLayout {
  bool reset_after, cand_z;
  int zsrc;             // source of z's recurrent term: 0 none (MUT1), 1 h (Cho, MUT2), 2 tanh h (MUT3)
  std::string hid, D;   // hidden blocks of W_hh; the blocks reading h (one GEMM per step)
  explicit GruLayout(int64_t f) {
    const int64_t v = f & 3;
    reset_after = f & 4;
    cand_z = v != 0;
    hid = v == 1 ? "rn" : "rzn";
    zsrc = v == 1 ? 0 : (v == 3 ? 2 : 1);
    D = std::string("r") + (zsrc == 1 ? "z" : "") + (reset_after ? "n" : "");
  }
  Tensor rows(const Tensor& w, const std::string& blocks, int64_t H) const {
    std::vector<Tensor> parts;
    for (char k : blocks) parts.push_back(w.narrow(0, static_cast<int64_t>(hid.find(k)) * H, H));
    return parts.size() == 1 ? parts[0].contiguous() : at::cat(parts);
  }
  OptT rows(const OptT& w, const std::string& blocks, int64_t H) const {
    return w.has_value() ? OptT(rows(*w, blocks, H)) : std::nullopt;
  }
};

std::vector<Tensor> gru_forward(const GruLayout& L, const Tensor& xp, const Tensor& h0, const Tensor& w_hh,
                                const OptT& b_hh, const OptT& mask, const OptT& zh, const Steps& steps,
                                bool onednn) {
  const int64_t N = xp.size(0), B = h0.size(0), H = h0.size(1), nD = L.D.size();
  const auto opt = xp.options();
  Tensor gates = at::empty({N, 3 * H}, opt), hprev = at::empty({N, H}, opt), out = at::empty({N, H}, opt);
  Tensor hprev_m = mask.has_value() ? at::empty({N, H}, opt) : none(xp);
  Tensor an = L.reset_after ? at::empty({N, H}, opt) : none(xp);
  Tensor th = L.zsrc == 2 ? at::empty({N, H}, opt) : none(xp);
  Tensor rh = at::empty({B, H}, opt), hbuf = h0.clone();
  const Linear lin_d(L.rows(w_hh, L.D, H), B, onednn);
  const OptT b_d = L.rows(b_hh, L.D, H);
  const std::optional<Linear> lin_z =
      L.zsrc == 2 ? std::optional<Linear>(Linear(L.rows(w_hh, "z", H), B, onednn)) : std::nullopt;
  const std::optional<Linear> lin_n =
      !L.reset_after ? std::optional<Linear>(Linear(L.rows(w_hh, "n", H), B, onednn)) : std::nullopt;
  const OptT b_z = L.zsrc == 2 ? L.rows(b_hh, "z", H) : std::nullopt;
  const OptT b_n = !L.reset_after ? L.rows(b_hh, "n", H) : std::nullopt;
  for (const auto& st : steps) {
    const int64_t off = st.first, bs = st.second;
    Tensor hp = hprev.narrow(0, off, bs), g = gates.narrow(0, off, bs), x = xp.narrow(0, off, bs);
    hp.copy_(hbuf.narrow(0, 0, bs));
    Tensor hm = hp;
    if (mask.has_value()) {
      hm = hprev_m.narrow(0, off, bs);
      at::mul_out(hm, hp, mask->narrow(0, 0, bs));
    }
    const Tensor a = lin_d(hm, b_d);
    Tensor r = g.narrow(1, 0, H), z = g.narrow(1, H, H), n = g.narrow(1, 2 * H, H);
    at::add_out(r, x.narrow(1, 0, H), a.narrow(1, 0, H));
    r.sigmoid_();
    if (L.zsrc == 1) {
      at::add_out(z, x.narrow(1, H, H), a.narrow(1, H, H));
      z.sigmoid_();
    } else if (L.zsrc == 2) {
      Tensor t = th.narrow(0, off, bs);
      at::tanh_out(t, hm);
      at::add_out(z, x.narrow(1, H, H), (*lin_z)(t, b_z));
      z.sigmoid_();
    } else {
      at::sigmoid_out(z, x.narrow(1, H, H));
    }
    if (L.reset_after) {
      Tensor ans = an.narrow(0, off, bs);
      ans.copy_(a.narrow(1, (nD - 1) * H, H));
      at::addcmul_out(n, x.narrow(1, 2 * H, H), r, ans);
    } else {
      Tensor rb = rh.narrow(0, 0, bs);
      at::mul_out(rb, r, hm);
      at::add_out(n, x.narrow(1, 2 * H, H), (*lin_n)(rb, b_n));
    }
    n.tanh_();
    Tensor o = out.narrow(0, off, bs);
    if (L.cand_z)  // h + z (n - h): z gates the candidate
      at::lerp_out(o, hp, n, z);
    else  // n + z (h - n), as torch
      at::lerp_out(o, n, hp, z);
    if (zh.has_value()) o.lerp_(hp, zh->narrow(0, off, bs));
    hbuf.narrow(0, 0, bs).copy_(o);
  }
  return {out, hbuf, none(xp), none(xp), gates, hprev, hprev_m, an, th};
}

std::vector<Tensor> gru_backward(const GruLayout& L, const Tensor& gout, const Tensor& ghn,
                                 const std::vector<Tensor>& saved, const Tensor& w_hh, const OptT& mask,
                                 const OptT& zh, bool has_bias, const Steps& steps, bool onednn) {
  const Tensor &gates = saved[0], &hprev = saved[1], &hprev_m = saved[2], &an = saved[3], &th = saved[4];
  const int64_t B = ghn.size(0), H = hprev.size(1), nD = L.D.size();
  const Tensor& hm_all = mask.has_value() ? hprev_m : hprev;
  const auto opt = gates.options();
  Tensor dxp = at::empty_like(gates), dan = L.reset_after ? at::empty_like(hprev) : none(gates);
  Tensor dd = at::empty({B, nD * H}, opt), dir = at::empty({B, H}, opt), dnb = at::empty({B, H}, opt);
  Tensor dzb = at::empty({B, H}, opt), ex = at::empty({B, H}, opt), dht = at::empty({B, H}, opt);
  Tensor dhz = zh.has_value() ? at::empty_like(ghn) : none(ghn), dhbuf = ghn.clone();
  const Linear lin_d(L.rows(w_hh, L.D, H).t(), B, onednn);
  const std::optional<Linear> lin_z =
      L.zsrc == 2 ? std::optional<Linear>(Linear(L.rows(w_hh, "z", H).t(), B, onednn)) : std::nullopt;
  const std::optional<Linear> lin_n =
      !L.reset_after ? std::optional<Linear>(Linear(L.rows(w_hh, "n", H).t(), B, onednn)) : std::nullopt;
  const int64_t zcol = L.zsrc == 1 ? 1 : -1, ncol = nD - 1;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_gru_v_bwd", [&] {
    for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
      const int64_t off = it->first, bs = it->second;
      const scalar_t* DT = nullptr;
      if (zh.has_value()) {  // h_t = lerp(h~_t, h_{t-1}, zh): split the gradient
        Tensor dst = dht.narrow(0, 0, bs), z = dhz.narrow(0, 0, bs);
        at::add_out(dst, gout.narrow(0, off, bs), dhbuf.narrow(0, 0, bs));
        at::mul_out(z, dst, zh->narrow(0, off, bs));
        dst.sub_(z);
        DT = dst.data_ptr<scalar_t>();
      }
      const scalar_t* GO = gout.data_ptr<scalar_t>() + off * H;
      const scalar_t* DHB = dhbuf.data_ptr<scalar_t>();
      const scalar_t* G = gates.data_ptr<scalar_t>() + off * 3 * H;
      const scalar_t* HP = hprev.data_ptr<scalar_t>() + off * H;
      const scalar_t* HM = hm_all.data_ptr<scalar_t>() + off * H;
      const scalar_t* AN = L.reset_after ? an.data_ptr<scalar_t>() + off * H : nullptr;
      scalar_t* DAN = L.reset_after ? dan.data_ptr<scalar_t>() + off * H : nullptr;
      scalar_t *DX = dxp.data_ptr<scalar_t>() + off * 3 * H, *DD = dd.data_ptr<scalar_t>();
      scalar_t *DIR = dir.data_ptr<scalar_t>(), *DNB = dnb.data_ptr<scalar_t>(), *DZB = dzb.data_ptr<scalar_t>();
      rows(bs, 3 * H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const scalar_t* g = G + b * 3 * H;
          scalar_t *dx = DX + b * 3 * H, *da = DD + b * nD * H;
          for (int64_t j = 0; j < H; ++j) {
            const int64_t k = b * H + j;
            const scalar_t dh = DT ? DT[k] : GO[k] + DHB[k];
            const scalar_t r = g[j], z = g[H + j], n = g[2 * H + j], hp = HP[k];
            const scalar_t dnp = dh * (1 - n * n) * (L.cand_z ? z : 1 - z);
            const scalar_t dzp = dh * (z - z * z) * (L.cand_z ? n - hp : hp - n);
            DIR[k] = L.cand_z ? dh - dh * z : dh * z;
            dx[H + j] = dzp;
            dx[2 * H + j] = dnp;
            if (zcol >= 0) da[zcol * H + j] = dzp;
            DZB[k] = dzp;
            if (L.reset_after) {
              const scalar_t drp = dnp * AN[k] * (r - r * r);
              dx[j] = da[j] = drp;
              DAN[k] = da[ncol * H + j] = dnp * r;
            } else {
              DNB[k] = dnp;
            }
          }
        }
      });
      if (!L.reset_after) {  // n read r ⊙ h: its GEMM's gradient feeds r's
        const Tensor grh = (*lin_n)(dnb.narrow(0, 0, bs)).contiguous();
        const scalar_t* GR = grh.data_ptr<scalar_t>();
        scalar_t* EX = ex.data_ptr<scalar_t>();
        rows(bs, H, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            const scalar_t* g = G + b * 3 * H;
            scalar_t *dx = DX + b * 3 * H, *da = DD + b * nD * H;
            for (int64_t j = 0; j < H; ++j) {
              const int64_t k = b * H + j;
              const scalar_t r = g[j];
              dx[j] = da[j] = GR[k] * HM[k] * (r - r * r);
              EX[k] = GR[k] * r;
            }
          }
        });
      }
      Tensor dhm = lin_d(dd.narrow(0, 0, bs));
      if (!L.reset_after) dhm.add_(ex.narrow(0, 0, bs));
      if (L.zsrc == 2) {
        const Tensor t = th.narrow(0, off, bs);
        dhm.addcmul_((*lin_z)(dzb.narrow(0, 0, bs)), at::mul(t, t).neg_().add_(1));
      }
      Tensor dhp = dhbuf.narrow(0, 0, bs);
      if (mask.has_value())
        at::mul_out(dhp, dhm, mask->narrow(0, 0, bs));
      else
        dhp.copy_(dhm);
      dhp.add_(dir.narrow(0, 0, bs));
      if (zh.has_value()) dhp.add_(dhz.narrow(0, 0, bs));
    }
  });
  // weight gradients: each hidden block against its source, one GEMM over all rows
  std::vector<Tensor> dws, dbs;
  for (char k : L.hid) {
    Tensor dblk, src;
    if (k == 'r') {
      dblk = dxp.narrow(1, 0, H), src = hm_all;
    } else if (k == 'z') {
      dblk = dxp.narrow(1, H, H), src = L.zsrc == 2 ? th : hm_all;
    } else {
      dblk = L.reset_after ? dan : dxp.narrow(1, 2 * H, H);
      src = L.reset_after ? hm_all : gates.narrow(1, 0, H) * hm_all;
    }
    dws.push_back(mm_tn(dblk, src, onednn));
    if (has_bias) dbs.push_back(dblk.sum(0));
  }
  Tensor db = has_bias ? at::cat(dbs) : none(gates);
  return {dxp, dhbuf, none(gates), none(gates), at::cat(dws), db, none(gates), none(gates), none(gates)};
}

std::vector<Tensor> variant_forward(int64_t family, int64_t flags, const Tensor& xp, const Tensor& h0,
                                    const OptT& c0, const Tensor& w_hh, const OptT& b_hh, const OptT& w_hr,
                                    const OptT& mask, const OptT& zh, const OptT& zc, const OptT& w_peep,
                                    const OptT& a0, const OptT& w_gg, const OptT& zg,
                                    std::vector<int64_t> batch_sizes, bool reverse, bool onednn) {
  const auto steps = schedule(batch_sizes, reverse);
  if (family == 0)
    return rnnkit_variants::lstm_forward(flags, xp, h0, *c0, w_hh, w_hr, mask, zh, zc, w_peep, a0, w_gg, zg, steps,
                                         onednn);
  return gru_forward(GruLayout(flags), xp, h0, w_hh, b_hh, mask, zh, steps, onednn);
}

std::vector<Tensor> variant_backward(int64_t family, int64_t flags, const Tensor& gout, const Tensor& ghn,
                                     const Tensor& gcn, const Tensor& gan, std::vector<Tensor> saved,
                                     const Tensor& w_hh, const OptT& w_hr, const OptT& mask, const OptT& zh,
                                     const OptT& zc, const OptT& w_peep, const OptT& w_gg, const OptT& zg,
                                     bool has_bias, std::vector<int64_t> batch_sizes, bool reverse, bool onednn) {
  const auto steps = schedule(batch_sizes, reverse);
  if (family == 0)
    return rnnkit_variants::lstm_backward(flags, gout, ghn, gcn, gan, saved, w_hh, w_hr, mask, zh, zc, w_peep, w_gg,
                                          zg, steps, onednn);
  return gru_backward(GruLayout(flags), gout, ghn, saved, w_hh, mask, zh, has_bias, steps, onednn);
}

}  // namespace

// Outputs: forward [out, h_n, c_n, gates_n, *saved]; backward [d xp, d h0, d c0, d a0, d W_hh,
// d b_hh, d W_hr, d w_peep, d W_gg] (empty tensors where absent), as rnnkit/kernels/variants.py.
TORCH_LIBRARY_FRAGMENT(rnnkit_ext, m) {
  m.def(
      "variant_forward(int family, int flags, Tensor xp, Tensor h0, Tensor? c0, Tensor w_hh, Tensor? b_hh, "
      "Tensor? w_hr, Tensor? mask, Tensor? zh, Tensor? zc, Tensor? w_peep, Tensor? a0, Tensor? w_gg, Tensor? zg, "
      "int[] batch_sizes, bool reverse, bool onednn) -> Tensor[]",
      &variant_forward);
  m.def(
      "variant_backward(int family, int flags, Tensor gout, Tensor ghn, Tensor gcn, Tensor gan, Tensor[] saved, "
      "Tensor w_hh, Tensor? w_hr, Tensor? mask, Tensor? zh, Tensor? zc, Tensor? w_peep, Tensor? w_gg, "
      "Tensor? zg, bool has_bias, int[] batch_sizes, bool reverse, bool onednn) -> Tensor[]",
      &variant_backward);
}
