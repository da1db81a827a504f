// rnnkit fused recurrent directions: forward and explicit BPTT, looping over time in C++.
//
// Mirrors rnnkit/kernels/{lstm,gru,rnn}.py exactly (same buffers, same schedule, same
// equations): per step one GEMM for the recurrent term (oneDNN for float32, else BLAS), ATen's
// vectorized sigmoid/tanh for the transcendental parts, and plain fused loops over B*H rows (split across
// threads with at::parallel_for) for the element-wise arithmetic. Backward needs no
// transcendental function at all: one fused loop per step computes every gate gradient.
// Weight gradients are single GEMMs over all steps after the loop.
//
// kind: 0 = LSTM, 1 = GRU (torch form), 2 = RNN tanh, 3 = RNN relu.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "blocked.h"  // the step GEMM split over threads by blocks of hidden units
#include "common.h"  // GEMM policy (oneDNN / BLAS), step schedule, row loops
#include "lstm_row.h"  // the element-wise part of a forward step
#include "pointwise.h"

// The per-step element-wise passes are plain loops over H on raw pointers: GCC vectorizes them
// at -O3 only (the extension's -O2 vectorizes nothing that needs a remainder loop; scalar, they
// made the large shape's forward ~30% slower). No -ffast-math and no FMA in the baseline ISA,
// so the arithmetic is unchanged.
#pragma GCC optimize("O3")

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

std::vector<Tensor> forward(int64_t kind, const Tensor& xp, const Tensor& h0, const Tensor& c0,
                            const Tensor& w_hh, const std::optional<Tensor>& b_hh,
                            const std::optional<Tensor>& w_hr, const std::optional<Tensor>& mask,
                            const std::optional<Tensor>& zh, const std::optional<Tensor>& zc,
                            const std::optional<Tensor>& w_peep, std::vector<int64_t> batch_sizes, bool reverse,
                            bool onednn) {
  const bool save = !(kind & 16);  // else inference: the LSTM saves nothing for backward
  kind &= 15;
  const auto steps = schedule(batch_sizes, reverse);
  const int64_t N = xp.size(0), P = h0.size(1), B = h0.size(0);
  const Linear lin(w_hh, B, onednn);
  Tensor hbuf = h0.clone(), out = at::empty({N, P}, xp.options());
  Tensor hprev = at::empty({save ? N : B, P}, xp.options());
  if (kind == 0) {
    // One parallel region per step: each thread runs the recurrent GEMM for the gates of its own
    // block of hidden units (blocked.h) and then everything element-wise for them, on raw pointers.
    const int64_t H = c0.size(1), G4 = 4 * H;
    const auto opt = xp.options();
    const int64_t NS = save ? N : 0;  // rows of the buffers only backward reads
    Tensor cbuf = c0.clone(), gates = at::empty({NS, G4}, opt);
    Tensor cprev = at::empty({NS, H}, opt), tanhc = at::empty({NS, H}, opt);
    const bool proj = w_hr.has_value();
    Tensor hraw = proj ? at::empty({N, H}, opt) : out;
    const bool peep = w_peep.has_value();  // peepholes: i, f see c_{t-1}; o sees c_t
    Tensor cnew = peep ? at::empty({NS, H}, opt) : none(xp);
    const std::optional<Linear> lin_r = proj ? std::optional<Linear>(Linear(*w_hr, B, onednn)) : std::nullopt;
    const int64_t work = B * P * G4;  // multiply-adds of a full step
    const rnnkit_blk::GateBlocks wb(w_hh.contiguous(), 4, rnnkit_blk::blocks_for(work, G4));
    const Tensor xc = xp.contiguous(), abuf = at::empty({B, G4}, opt);
    const Tensor wp = peep ? w_peep->contiguous() : none(xp), m = mask.has_value() ? mask->contiguous() : none(xp);
    const Tensor zhc = zh.has_value() ? zh->contiguous() : none(xp), zcc = zc.has_value() ? zc->contiguous() : none(xp);
    AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "rnnkit_lstm_fwd", [&] {
      using namespace rnnkit_pw;
      scalar_t *HB = hbuf.data_ptr<scalar_t>(), *C = cbuf.data_ptr<scalar_t>();
      scalar_t *GT = gates.data_ptr<scalar_t>(), *CPV = cprev.data_ptr<scalar_t>();
      scalar_t *TCV = tanhc.data_ptr<scalar_t>(), *HR = hraw.data_ptr<scalar_t>(), *O = out.data_ptr<scalar_t>();
      scalar_t *HPV = hprev.data_ptr<scalar_t>(), *CN = peep ? cnew.data_ptr<scalar_t>() : nullptr;
      const scalar_t* M = mask.has_value() ? m.data_ptr<scalar_t>() : nullptr;
      const scalar_t* ZH = zh.has_value() ? zhc.data_ptr<scalar_t>() : nullptr;
      const scalar_t* ZC = zc.has_value() ? zcc.data_ptr<scalar_t>() : nullptr;
      const scalar_t* PW = peep ? wp.data_ptr<scalar_t>() : nullptr;
      const scalar_t* XP = xc.data_ptr<scalar_t>();
      scalar_t* AB = abuf.data_ptr<scalar_t>();
      for (const auto& st : steps) {
        const int64_t off = st.first, bs = st.second;
        scalar_t* HP = HPV + (save ? off : 0) * P;  // h_{t-1} (times the recurrent-dropout mask), for the GEMM
        for (int64_t k = 0; k < bs * P; ++k) HP[k] = M ? HB[k] * M[k] : HB[k];
        rnnkit_blk::each_block(wb.n(), bs * P * G4, [&](int64_t k) {
          const int64_t j0 = wb.j[k], w = wb.width(k);
          scalar_t* A = AB + B * 4 * j0;  // this block's (bs, 4 w) pre-activations [i | f | g | o]
          // the input term is streamed from memory: ask for it now, it arrives during the GEMM
          for (int64_t b = 0; b < bs; ++b)
            for (int64_t q = 0; q < 4; ++q) rnnkit_pw::prefetch(XP + (off + b) * G4 + q * H + j0, w);
          wb.gemm(k, HP, bs, A);
          for (int64_t b = 0; b < bs; ++b) {
            const int64_t r = off + b;
            auto sv = [&](scalar_t* p, int64_t width) { return save && p ? p + r * width + j0 : nullptr; };
            rnnkit_row::lstm_fwd<scalar_t>(
                w, H,
                {A + b * 4 * w, XP + r * G4 + j0, sv(GT, G4), C + b * H + j0, sv(CPV, H), sv(TCV, H), HR + r * H + j0,
                 PW ? PW + j0 : nullptr, sv(CN, H), ZC ? ZC + r * H + j0 : nullptr, proj ? nullptr : HB + b * P + j0,
                 ZH && !proj ? ZH + r * P + j0 : nullptr});
          }
        });
        if (proj) {
          Tensor o = out.narrow(0, off, bs), hr = hraw.narrow(0, off, bs);
          if (lin_r->use_rows(bs))
            o.copy_((*lin_r)(hr));
          else
            at::mm_out(o, hr, w_hr->t());
          // zoneout on h (after the projection): h_t = lerp(h~_t, h_{t-1}, zh); then h_t -> hbuf
          scalar_t* o_ = O + off * P;
          for (int64_t k = 0; k < bs * P; ++k) HB[k] = o_[k] = ZH ? lerp(o_[k], HB[k], ZH[off * P + k]) : o_[k];
        }
      }
    });
    return {out, hbuf, cbuf, gates, cprev, tanhc, hprev, hraw, cnew};
  }
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

std::vector<Tensor> backward(int64_t kind, const Tensor& gout, const Tensor& ghn, const Tensor& gcn,
                             std::vector<Tensor> saved, const Tensor& w_hh,
                             const std::optional<Tensor>& w_hr, const std::optional<Tensor>& mask,
                             const std::optional<Tensor>& zh, const std::optional<Tensor>& zc,
                             const std::optional<Tensor>& w_peep, bool has_bias, std::vector<int64_t> batch_sizes,
                             bool reverse, bool onednn) {
  auto steps = schedule(batch_sizes, reverse);
  std::reverse(steps.begin(), steps.end());
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
  if (kind == 0) {
    // Per step: one pass per row over raw pointers (zoneout splits, every gate gradient, the
    // cell gradient), the recurrent GEMM, and one pass for the mask and zoneout's direct part.
    const Tensor &gates = saved[0], &cprev = saved[1], &tanhc = saved[2], &hprev = saved[3], &hraw = saved[4];
    const Tensor& cnew = saved[5];
    const int64_t H = tanhc.size(1), G4 = 4 * H;
    const bool proj = w_hr.has_value();
    Tensor dgates = at::empty_like(gates), dcbuf = gcn.clone();
    Tensor dh_all = proj ? at::empty_like(hprev) : none(gates);
    const std::optional<Linear> lin_rt = proj ? std::optional<Linear>(Linear(w_hr->t(), B, onednn)) : std::nullopt;
    const Tensor goc = gout.contiguous(), m = mask.has_value() ? mask->contiguous() : none(gates);
    const Tensor zhc = zh.has_value() ? zh->contiguous() : none(gates), zcc = zc.has_value() ? zc->contiguous() : none(gates);
    const Tensor wp = w_peep.has_value() ? w_peep->contiguous() : none(gates), wc = w_hh.contiguous();
    AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_lstm_bwd", [&] {
      const scalar_t *GV = gates.data_ptr<scalar_t>(), *CPV = cprev.data_ptr<scalar_t>();
      const scalar_t* TCV = tanhc.data_ptr<scalar_t>();
      const scalar_t* GOV = goc.data_ptr<scalar_t>();
      scalar_t *DGV = dgates.data_ptr<scalar_t>(), *DC = dcbuf.data_ptr<scalar_t>(), *DHB = dhbuf.data_ptr<scalar_t>();
      scalar_t *DHT = dht.data_ptr<scalar_t>(), *DHZ = zh.has_value() ? dhz.data_ptr<scalar_t>() : nullptr;
      const scalar_t* M = mask.has_value() ? m.data_ptr<scalar_t>() : nullptr;
      const scalar_t* ZH = zh.has_value() ? zhc.data_ptr<scalar_t>() : nullptr;
      const scalar_t* ZC = zc.has_value() ? zcc.data_ptr<scalar_t>() : nullptr;
      const scalar_t* PI = w_peep.has_value() ? wp.data_ptr<scalar_t>() : nullptr;
      const scalar_t* W = wc.data_ptr<scalar_t>();
      const rnnkit_row::BwdRow<scalar_t> row = rnnkit_row::pick_bwd_row<scalar_t>(proj || ZH, ZC != nullptr, PI != nullptr);
      // one block of units per thread (brgemm chunks K itself; more blocks = more partial sums)
      const int64_t work = B * P * G4;
      const std::vector<int64_t> units =
          rnnkit_blk::split(H, work >= rnnkit_blk::kParallelWork ? at::get_num_threads() : 1);
      const int64_t nblk = static_cast<int64_t>(units.size()) - 1;
      Tensor parts = at::empty({nblk, B, P}, gates.options());
      scalar_t* PART = parts.data_ptr<scalar_t>();
      for (const auto& st : steps) {
        const int64_t off = st.first, bs = st.second;
        const scalar_t* GO = GOV + off * P;
        const scalar_t* DH = nullptr;  // dL/d(o ⊙ tanh c) for the active rows, when materialized
        Tensor d;
        if (proj || ZH) {
          // dh = gout + dh_next; zoneout on h: dL/dh~ = dh - dh ⊙ zh, the direct part dh ⊙ zh -> dhz
          scalar_t* dst = proj ? dh_all.data_ptr<scalar_t>() + off * P : DHT;
          rnnkit_pw::dh_step(bs * P, GO, DHB, ZH ? ZH + off * P : nullptr, DHZ, dst);
          if (proj) {
            const Tensor dhp = dh_all.narrow(0, off, bs);
            d = lin_rt->use_rows(bs) ? (*lin_rt)(dhp).contiguous() : at::mm(dhp, *w_hr);
            DH = d.data_ptr<scalar_t>();
          } else {
            DH = DHT;
          }
        }
        const scalar_t* G = GV + off * G4;
        const scalar_t* CP = CPV + off * H;
        const scalar_t* TC = TCV + off * H;
        scalar_t* DG = DGV + off * G4;
        // One parallel region per step: each thread takes a block of hidden units (as in the
        // forward): every gate gradient of its units, then their part of dh_{t-1} = da W_hh, a
        // GEMM over its rows of W_hh only (partial sums, added up after the region).
        rnnkit_blk::each_block(nblk, bs * P * G4, [&](int64_t k) {
          const int64_t j0 = units[k], w = units[k + 1] - j0;
          for (int64_t b = 0; b < bs; ++b)
            row(w, H, G + b * G4 + j0, (DH ? DH + b * H : GO + b * P) + j0, DHB + b * P + j0, TC + b * H + j0,
                CP + b * H + j0, ZC ? ZC + (off + b) * H + j0 : nullptr, PI ? PI + j0 : nullptr, DG + b * G4 + j0,
                DC + b * H + j0);
          scalar_t* part = PART + k * B * P;
          for (int64_t q = 0; q < 4; ++q)
            rnnkit_blk::gemm_ld(DG + q * H + j0, G4, W + (q * H + j0) * P, P, part, P, bs, P, w, q > 0);
        });
        // dh_{t-1} = (Σ partial) ⊙ m (+ zoneout's direct part), over rows in parallel when large
        rnnkit_blk::each_block(bs, bs * P * nblk * 64, [&](int64_t b) {
          for (int64_t q = b * P; q < (b + 1) * P; ++q) {
            scalar_t v = PART[q];
            for (int64_t k = 1; k < nblk; ++k) v += PART[k * B * P + q];
            if (M) v *= M[q];
            DHB[q] = DHZ ? v + DHZ[q] : v;
          }
        });
      }
    });
    Tensor dw_hr = proj ? mm_tn(dh_all, hraw, onednn) : none(gates), dw_peep = none(gates);
    if (w_peep.has_value())
      dw_peep = at::cat({(dgates.narrow(1, 0, H) * cprev).sum(0), (dgates.narrow(1, H, H) * cprev).sum(0),
                         (dgates.narrow(1, 3 * H, H) * cnew).sum(0)});
    return {dgates, dhbuf, dcbuf, mm_tn(dgates, hprev, onednn), none(gates), dw_hr, dw_peep};
  }
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

}  // namespace

TORCH_LIBRARY(rnnkit_ext, m) {
  m.def(
      "forward(int kind, Tensor xp, Tensor h0, Tensor c0, Tensor w_hh, Tensor? b_hh, Tensor? w_hr, "
      "Tensor? mask, Tensor? zh, Tensor? zc, Tensor? w_peep, int[] batch_sizes, bool reverse, bool onednn) -> Tensor[]",
      &forward);
  m.def(
      "backward(int kind, Tensor gout, Tensor ghn, Tensor gcn, Tensor[] saved, Tensor w_hh, Tensor? w_hr, "
      "Tensor? mask, Tensor? zh, Tensor? zc, Tensor? w_peep, bool has_bias, int[] batch_sizes, bool reverse, "
      "bool onednn) -> Tensor[]",
      &backward);
}
