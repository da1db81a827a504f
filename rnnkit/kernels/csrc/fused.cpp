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

#include "common.h"  // GEMM policy (oneDNN / BLAS), step schedule, row loops
#include "gru_rnn.h"  // kinds 1-3
#include "pointwise.h"

// The per-step element-wise passes are plain loops over H on raw pointers: GCC vectorizes them
// at -O3 only (the extension's -O2 vectorizes nothing that needs a remainder loop; scalar, they
// made the large shape's forward ~30% slower). No -ffast-math and no FMA in the baseline ISA,
// so the arithmetic is unchanged.
#pragma GCC optimize("O3")

using at::Tensor;
using namespace rnnkit_common;

namespace {

// One row of the LSTM backward step (see backward(): every gate gradient and the cell
// gradient), templated on the options so that the loop over H has no branch and vectorizes
// (this file is compiled at -O3, see the top). No
// -ffast-math and no FMA in the baseline ISA: the same arithmetic, in the same order, as
// the scalar loop. dh: the materialized dL/d(o ⊙ tanh c) row (kDH), else gout's row with
// dhb, the running dh, added.
template <typename T, bool kDH, bool kZC, bool kPI>
void lstm_bwd_row(int64_t H, const T* __restrict__ g, const T* __restrict__ dh_, const T* __restrict__ dhb,
                  const T* __restrict__ tc_, const T* __restrict__ cp, const T* __restrict__ zc,
                  const T* __restrict__ pw, T* __restrict__ dg, T* __restrict__ dcv) {
  for (int64_t j = 0; j < H; ++j) {
    const T dh = kDH ? dh_[j] : dh_[j] + dhb[j];
    // c_t = lerp(c~_t, c_{t-1}, zc): dL/dc~ = dc - dc ⊙ zc; dc ⊙ zc goes straight to c_{t-1}
    const T dcz = kZC ? dcv[j] * zc[j] : T(0);
    const T dcin = kZC ? dcv[j] - dcz : dcv[j];
    const T i = g[j], f = g[H + j], gg = g[2 * H + j], o = g[3 * H + j], tc = tc_[j];
    const T dop = dh * tc * (o - o * o);
    T dc = dcin + dh * o * (1 - tc * tc);
    if (kPI) dc += dop * pw[2 * H + j];
    const T dip = dc * gg * (i - i * i), dfp = dc * cp[j] * (f - f * f);
    dg[j] = dip;
    dg[H + j] = dfp;
    dg[2 * H + j] = dc * i * (1 - gg * gg);
    dg[3 * H + j] = dop;
    const T dcn = kPI ? dc * f + dip * pw[j] + dfp * pw[H + j] : dc * f;
    dcv[j] = kZC ? dcn + dcz : dcn;
  }
}
template <typename T>
using BwdRow = void (*)(int64_t, const T*, const T*, const T*, const T*, const T*, const T*, const T*, T*, T*);
template <typename T>
BwdRow<T> pick_bwd_row(bool dh, bool zc, bool pi) {
  static const BwdRow<T> table[8] = {
      lstm_bwd_row<T, false, false, false>, lstm_bwd_row<T, false, false, true>,
      lstm_bwd_row<T, false, true, false>,  lstm_bwd_row<T, false, true, true>,
      lstm_bwd_row<T, true, false, false>,  lstm_bwd_row<T, true, false, true>,
      lstm_bwd_row<T, true, true, false>,   lstm_bwd_row<T, true, true, true>};
  return table[(dh ? 4 : 0) + (zc ? 2 : 0) + (pi ? 1 : 0)];
}

std::vector<Tensor> forward(int64_t kind, const Tensor& xp, const Tensor& h0, const Tensor& c0,
                            const Tensor& w_hh, const std::optional<Tensor>& b_hh,
                            const std::optional<Tensor>& w_hr, const std::optional<Tensor>& mask,
                            const std::optional<Tensor>& zh, const std::optional<Tensor>& zc,
                            const std::optional<Tensor>& w_peep, std::vector<int64_t> batch_sizes, bool reverse,
                            bool onednn) {
  const auto steps = schedule(batch_sizes, reverse);
  if (kind != 0) return rnnkit_gru_rnn::forward(kind, xp, h0, w_hh, b_hh, mask, zh, steps, onednn);
  const int64_t N = xp.size(0), P = h0.size(1), B = h0.size(0);
  const Linear lin(w_hh, B, onednn);
  Tensor hbuf = h0.clone(), out = at::empty({N, P}, xp.options());
  Tensor hprev = at::empty({N, P}, xp.options());
  if (kind == 0) {
    // One GEMM per step, then one pass per row over raw pointers for everything element-wise
    // (no Tensor per step on the BLAS path: see pointwise.h for why).
    const int64_t H = c0.size(1), G4 = 4 * H;
    const auto opt = xp.options();
    Tensor cbuf = c0.clone(), gates = at::empty({N, G4}, opt);
    Tensor cprev = at::empty({N, H}, opt), tanhc = at::empty({N, H}, opt);
    const bool proj = w_hr.has_value();
    Tensor hraw = proj ? at::empty({N, H}, opt) : out;
    const bool peep = w_peep.has_value();  // peepholes: i, f see c_{t-1}; o sees c_t
    Tensor cnew = peep ? at::empty({N, H}, opt) : none(xp);
    const std::optional<Linear> lin_r = proj ? std::optional<Linear>(Linear(*w_hr, B, onednn)) : std::nullopt;
    const Tensor xc = xp.contiguous(), wc = w_hh.contiguous(), abuf = at::empty({B, G4}, opt);
    // W_hh^T dense: the float32 step GEMM (brgemm, pointwise.h) reads it as (P, G)
    const Tensor wtc = xp.scalar_type() == at::kFloat ? w_hh.t().contiguous() : wc;
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
      const scalar_t *XP = xc.data_ptr<scalar_t>(), *W = wc.data_ptr<scalar_t>(), *WT = wtc.data_ptr<scalar_t>();
      scalar_t* AB = abuf.data_ptr<scalar_t>();
      for (const auto& st : steps) {
        const int64_t off = st.first, bs = st.second;
        scalar_t* HP = HPV + off * P;  // h_{t-1} (times the recurrent-dropout mask), as fed to the GEMM
        for (int64_t k = 0; k < bs * P; ++k) HP[k] = M ? HB[k] * M[k] : HB[k];
        Tensor a;  // a = xp_t + h_{t-1} W_hh^T
        scalar_t* A = AB;
        if (lin.use_rows(bs)) {
          a = lin.add(hprev.narrow(0, off, bs), xc.narrow(0, off, bs)).contiguous();
          A = a.data_ptr<scalar_t>();
        } else {
          std::copy(XP + off * G4, XP + (off + bs) * G4, A);
          rnnkit_pw::gemm_xwt(HP, W, WT, A, bs, G4, P, scalar_t(1));
        }
        rows(bs, G4, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            scalar_t *ar = A + b * G4, *g = GT + (off + b) * G4, *c = C + b * H, *cp = CPV + (off + b) * H;
            scalar_t *tc = TCV + (off + b) * H, *hr = HR + (off + b) * H;
            if (PW)
              for (int64_t j = 0; j < H; ++j) {
                ar[j] = ar[j] + PW[j] * c[j];
                ar[H + j] = ar[H + j] + PW[H + j] * c[j];
              }
            sigmoid(ar, g, 2 * H);
            tanh(ar + 2 * H, g + 2 * H, H);
            if (!PW) sigmoid(ar + 3 * H, g + 3 * H, H);
            for (int64_t j = 0; j < H; ++j) {
              const scalar_t cv = c[j];
              cp[j] = cv;
              c[j] = g[H + j] * cv + g[j] * g[2 * H + j];
            }
            if (PW) {
              scalar_t* cn = CN + (off + b) * H;
              for (int64_t j = 0; j < H; ++j) {
                cn[j] = c[j];
                ar[3 * H + j] = ar[3 * H + j] + PW[2 * H + j] * c[j];
              }
              sigmoid(ar + 3 * H, g + 3 * H, H);
            }
            tanh(c, tc, H);
            for (int64_t j = 0; j < H; ++j) hr[j] = g[3 * H + j] * tc[j];
            if (ZC) {
              const scalar_t* z = ZC + (off + b) * H;
              for (int64_t j = 0; j < H; ++j) c[j] = lerp(c[j], cp[j], z[j]);
            }
          }
        });
        if (proj) {
          Tensor o = out.narrow(0, off, bs), hr = hraw.narrow(0, off, bs);
          if (lin_r->use_rows(bs))
            o.copy_((*lin_r)(hr));
          else
            at::mm_out(o, hr, w_hr->t());
        }
        // zoneout on h (after the projection): h_t = lerp(h~_t, h_{t-1}, zh); then h_t -> hbuf
        scalar_t* o = O + off * P;
        for (int64_t k = 0; k < bs * P; ++k) HB[k] = o[k] = ZH ? lerp(o[k], HB[k], ZH[off * P + k]) : o[k];
      }
    });
    return {out, hbuf, cbuf, gates, cprev, tanhc, hprev, hraw, cnew};
  }
}

std::vector<Tensor> backward(int64_t kind, const Tensor& gout, const Tensor& ghn, const Tensor& gcn,
                             std::vector<Tensor> saved, const Tensor& w_hh,
                             const std::optional<Tensor>& w_hr, const std::optional<Tensor>& mask,
                             const std::optional<Tensor>& zh, const std::optional<Tensor>& zc,
                             const std::optional<Tensor>& w_peep, bool has_bias, std::vector<int64_t> batch_sizes,
                             bool reverse, bool onednn) {
  auto steps = schedule(batch_sizes, reverse);
  std::reverse(steps.begin(), steps.end());
  if (kind != 0) return rnnkit_gru_rnn::backward(kind, gout, ghn, saved, w_hh, mask, zh, has_bias, steps, onednn);
  Tensor dhbuf = ghn.clone();
  const int64_t B = ghn.size(0), P = ghn.size(1);
  const Linear lin_t(w_hh.t(), B, onednn);
  Tensor dhz = zh.has_value() ? at::empty_like(ghn) : none(ghn), dht = at::empty_like(ghn);
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
      const BwdRow<scalar_t> row = pick_bwd_row<scalar_t>(proj || ZH, ZC != nullptr, PI != nullptr);
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
        rows(bs, G4, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b)
            row(H, G + b * G4, DH ? DH + b * H : GO + b * P, DHB + b * P, TC + b * H, CP + b * H,
                ZC ? ZC + (off + b) * H : nullptr, PI, DG + b * G4, DC + b * H);
        });
        // dh_{t-1} = (da W_hh) ⊙ m (+ zoneout's direct part)
        if (lin_t.use_rows(bs))
          dhbuf.narrow(0, 0, bs).copy_(lin_t(dgates.narrow(0, off, bs)));
        else
          rnnkit_pw::gemm_xw(DG, W, DHB, bs, P, G4);
        if (M || DHZ)
          for (int64_t k = 0; k < bs * P; ++k) {
            const scalar_t v = M ? DHB[k] * M[k] : DHB[k];
            DHB[k] = DHZ ? v + DHZ[k] : v;
          }
      }
    });
    Tensor dw_hr = proj ? mm_tn(dh_all, hraw, onednn) : none(gates), dw_peep = none(gates);
    if (w_peep.has_value())
      dw_peep = at::cat({(dgates.narrow(1, 0, H) * cprev).sum(0), (dgates.narrow(1, H, H) * cprev).sum(0),
                         (dgates.narrow(1, 3 * H, H) * cnew).sum(0)});
    return {dgates, dhbuf, dcbuf, mm_tn(dgates, hprev, onednn), none(gates), dw_hr, dw_peep};
  }
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
