// rnnkit fused LSTM directions (standard, peephole, projection, recurrent dropout, zoneout):
// forward and explicit BPTT, looping over time in C++. The GRU and RNN kinds live in gru_rnn.cpp,
// the Greff layouts in lstm_variants.cpp, the normalized cells in norm*.cpp.
//
// Mirrors rnnkit/kernels/lstm.py (same buffers, schedule and equations). Per step one parallel
// region: each thread runs the recurrent GEMM for the gates of its own block of hidden units
// (blocked.h) and then everything element-wise for them (lstm_row.h); backward, each thread
// computes the gate gradients of its units and their share of dh_{t-1} (lstm_bwd_row.h). Weight
// gradients are single GEMMs over all steps after the loop. See docs/fused.md, "Threads".
//
// kind: 0 = LSTM, 1 = GRU (torch form), 2 = RNN tanh, 3 = RNN relu; + 16: inference (no saving).
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
#include "gru_rnn.h"  // kinds 1-3
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

using OptT = std::optional<Tensor>;

// The arguments of forward against each other (kind without its flags): N rows of the packed
// input, B rows of the state, P its width, H the hidden size (P == H without projection).
void check_forward(int64_t kind, const Tensor& xp, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                   const OptT& b_hh, const OptT& w_hr, const OptT& mask, const OptT& zh, const OptT& zc,
                   const OptT& w_peep, const OptT& x, const OptT& w_ih, const OptT& b_in) {
  using namespace rnnkit_check;
  const char* op = "rnnkit_ext::forward";
  TORCH_CHECK(kind >= 0 && kind <= 3, op, ": kind must be 0 (LSTM), 1 (GRU), 2 (RNN tanh) or 3 (RNN relu), plus ",
              "the flags 16 and 32, got ", kind);
  TORCH_CHECK(kind == 0 || !x.has_value(), op, ": only the LSTM projects its input itself");
  const Sizes sz = forward_sizes(op, x.has_value() ? "x" : "xp", x.has_value() ? *x : xp, h0);
  const auto dt = sz.dt;
  const int64_t N = sz.N, B = sz.B, P = sz.P;
  if (kind != 1) no_b_hh(op, kind == 0 ? "LSTM" : "RNN", b_hh, "add it to xp, or to b_ih with x");
  if (kind == 0) {
    const int64_t H = lstm_state(op, c0, dt, B, P, w_hr, h0);
    if (x.has_value()) {
      const int64_t I = x->size(1);
      tensor(op, "w_ih", req(op, "w_ih", w_ih, "with x"), dt, "(4H, I)", {4 * H, I});
      opt(op, "b_ih", b_in, dt, "(4H,)", {4 * H});
    } else {
      tensor(op, "xp", xp, dt, "(N, 4H)", {N, 4 * H});
    }
    tensor(op, "w_hh", w_hh, dt, "(4H, P)", {4 * H, P});
    lstm_regularizers(op, dt, B, N, P, H, mask, zh, zc);
    opt(op, "w_peep", w_peep, dt, "(3H,)", {3 * H});
    return;
  }
  const int64_t G = kind == 1 ? 3 * P : P;  // GRU: r, z, n
  tensor(op, "xp", xp, dt, kind == 1 ? "(N, 3H)" : "(N, H)", {N, G});
  tensor(op, "w_hh", w_hh, dt, kind == 1 ? "(3H, H)" : "(H, H)", {G, P});
  if (kind == 1) opt(op, "b_hh", b_hh, dt, "(3H,)", {G});
  opt(op, "mask", mask, dt, "(B, H)", {B, P});
  opt(op, "zh", zh, dt, "(N, H)", {N, P});
}

// The arguments of backward against each other, as check_forward; `saved` as forward returned it.
void check_backward(int64_t kind, const Tensor& gout, const Tensor& ghn, const Tensor& gcn,
                    const std::vector<Tensor>& saved, const Tensor& w_hh, const OptT& w_hr, const OptT& mask,
                    const OptT& zh, const OptT& zc, const OptT& w_peep) {
  using namespace rnnkit_check;
  const char* op = "rnnkit_ext::backward";
  TORCH_CHECK(kind >= 0 && kind <= 3, op, ": kind must be 0 (LSTM), 1 (GRU), 2 (RNN tanh) or 3 (RNN relu), got ",
              kind);
  const Sizes sz = backward_sizes(op, gout, ghn);
  const auto dt = sz.dt;
  const int64_t N = sz.N, B = sz.B, P = sz.P;
  if (kind == 0) {
    const int64_t H = per_gate(op, "w_hh", w_hh, 4, "(4H, P)");
    tensor(op, "w_hh", w_hh, dt, "(4H, P)", {4 * H, P});
    tensor(op, "gcn", gcn, dt, "(B, H)", {B, H});
    count(op, "saved", saved.size(), 6, false);
    lstm_saved(op, saved, dt, N, 4 * H, "(N, 4H)", "saved[2] (tanh c)", H, P, w_hr, "gout", gout, w_hh);
    if (w_peep.has_value()) {
      tensor(op, "w_peep", *w_peep, dt, "(3H,)", {3 * H});
      tensor(op, "saved[5] (c~)", saved[5], dt, "(N, H)", {N, H});
    }
    lstm_regularizers(op, dt, B, N, P, H, mask, zh, zc);
    return;
  }
  const int64_t G = kind == 1 ? 3 * P : P;
  tensor(op, "w_hh", w_hh, dt, kind == 1 ? "(3H, H)" : "(H, H)", {G, P});
  if (kind == 1) {
    count(op, "saved", saved.size(), 4, false);
    tensor(op, "saved[0] (gates)", saved[0], dt, "(N, 3H)", {N, G});
    tensor(op, "saved[1] (a_n)", saved[1], dt, "(N, H)", {N, P});
    tensor(op, "saved[2] (h_{t-1})", saved[2], dt, "(N, H)", {N, P});
    tensor(op, "saved[3] (h_{t-1} * mask)", saved[3], dt, "(N, H)", {N, P});
  } else {
    count(op, "saved", saved.size(), 2, false);
    tensor(op, "saved[0] (h~)", saved[0], dt, "(N, H)", {N, P});
    // h_{t-1} of every row, or (not stored) a copy of h0
    tensor(op, "saved[1] (h_{t-1})", saved[1], dt, "(N, H) or (B, H)", {kAny, P});
    TORCH_CHECK(saved[1].size(0) == N || saved[1].size(0) == B, op,
                ": saved[1] (h_{t-1}) must have shape (N, H) = [", N, ", ", P, "] or (B, H) = [", B, ", ", P,
                "], got ", saved[1].sizes());
  }
  opt(op, "mask", mask, dt, "(B, H)", {B, P});
  opt(op, "zh", zh, dt, "(N, H)", {N, P});
}

std::vector<Tensor> forward(int64_t kind, const Tensor& xp, const Tensor& h0, const Tensor& c0,
                            const Tensor& w_hh, const std::optional<Tensor>& b_hh,
                            const std::optional<Tensor>& w_hr, const std::optional<Tensor>& mask,
                            const std::optional<Tensor>& zh, const std::optional<Tensor>& zc,
                            const std::optional<Tensor>& w_peep, std::vector<int64_t> batch_sizes, bool reverse,
                            bool onednn, const std::optional<Tensor>& x, const std::optional<Tensor>& w_ih,
                            const std::optional<Tensor>& b_in) {
  const bool save = !(kind & 16);  // else inference: the LSTM saves nothing for backward
  const bool col = kind & 32;       // h_{t-1} saved column-major (the eager path; see below)
  kind &= ~(16 | 32);
  check_forward(kind, xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep, x, w_ih, b_in);
  check_batch_sizes("rnnkit_ext::forward", batch_sizes, x.has_value() ? x->size(0) : xp.size(0), h0.size(0));
  const auto steps = schedule(batch_sizes, reverse);
  if (kind != 0) return rnnkit_gru_rnn::forward(kind, xp, h0, w_hh, b_hh, mask, zh, steps, onednn);
  // x given: the kernel computes xp = x W_ih^T + b itself, a chunk of steps at a time (InputChunks)
  const Tensor& ref = x.has_value() ? *x : xp;
  const int64_t N = ref.size(0), P = h0.size(1), B = h0.size(0);
  Tensor hbuf = h0.clone(kRowMajor), out = at::empty({N, P}, ref.options());
  // h_{t-1} (times the mask) of every row, saved for backward's dW_hh = dgates^T h_{t-1}. With
  // `col`, column-major, (N, P) with strides (1, N): its transpose is dense and the weight-
  // gradient GEMM reads it without a transposed copy (medium shape: ~0.9 ms a training step);
  // the step GEMM then reads a row-major copy in hstep.
  Tensor hprev = !save ? at::empty({B, P}, ref.options())
                 : col ? at::empty_strided({N, P}, {1, N}, ref.options())
                       : at::empty({N, P}, ref.options());
  Tensor hstep = at::empty({save && col ? B : 0, P}, ref.options());
  // One parallel region per step: each thread runs the recurrent GEMM for the gates of its own
  // block of hidden units (blocked.h) and then everything element-wise for them, on raw pointers.
  const int64_t H = c0.size(1), G4 = 4 * H;
  const auto opt = ref.options();
  const int64_t NS = save ? N : 0;  // rows of the buffers only backward reads
  Tensor cbuf = c0.clone(kRowMajor), gates = at::empty({NS, G4}, opt);
  Tensor cprev = at::empty({NS, H}, opt), tanhc = at::empty({NS, H}, opt);
  const bool proj = w_hr.has_value();
  Tensor hraw = proj ? at::empty({N, H}, opt) : out;
  const bool peep = w_peep.has_value();  // peepholes: i, f see c_{t-1}; o sees c_t
  Tensor cnew = peep ? at::empty({NS, H}, opt) : none(xp);
  const std::optional<Linear> lin_r = proj ? std::optional<Linear>(Linear(*w_hr, B, onednn)) : std::nullopt;
  const int64_t work = B * P * G4;  // multiply-adds of a full step
  const int64_t nblk = rnnkit_blk::blocks_for(work, G4);
  const rnnkit_blk::GateBlocks wb(w_hh.contiguous(), 4, nblk);
  const std::optional<rnnkit_blk::InputChunks> xin =
      x.has_value() ? std::optional<rnnkit_blk::InputChunks>(std::in_place, *w_ih, b_in, 4, nblk, steps) : std::nullopt;
  const Tensor xc = ref.contiguous(), abuf = at::empty({xin ? 0 : B, G4}, opt);
  const Tensor wp = peep ? w_peep->contiguous() : none(xp), m = mask.has_value() ? mask->contiguous() : none(xp);
  const rnnkit_common::ZoneoutRows zhr(zh, B), zcr(zc, B);
  // the masks as bits (AVX-512); h's only without a projection (with one, zoneout on h runs on
  // the projected rows after the block pass, from the floats)
  const rnnkit_row::ZoneoutBits zhb(proj ? rnnkit_common::ZoneoutRows(std::nullopt, B) : zhr, wb.j), zcb(zcr, wb.j);
  AT_DISPATCH_FLOATING_TYPES(ref.scalar_type(), "rnnkit_lstm_fwd", [&] {
    using namespace rnnkit_pw;
    scalar_t *HB = hbuf.data_ptr<scalar_t>(), *C = cbuf.data_ptr<scalar_t>();
    scalar_t *GT = gates.data_ptr<scalar_t>(), *CPV = cprev.data_ptr<scalar_t>();
    scalar_t *TCV = tanhc.data_ptr<scalar_t>(), *HR = hraw.data_ptr<scalar_t>(), *O = out.data_ptr<scalar_t>();
    scalar_t *HPV = hprev.data_ptr<scalar_t>(), *CN = peep ? cnew.data_ptr<scalar_t>() : nullptr;
    scalar_t* HS = hstep.data_ptr<scalar_t>();
    const scalar_t* M = mask.has_value() ? m.data_ptr<scalar_t>() : nullptr;
    const scalar_t* PW = peep ? wp.data_ptr<scalar_t>() : nullptr;
    const scalar_t* XP = xc.data_ptr<scalar_t>();
    scalar_t* AB = abuf.data_ptr<scalar_t>();
    for (size_t s = 0; s < steps.size(); ++s) {
      const int64_t off = steps[s].first, bs = steps[s].second;
      const scalar_t *ZH = zhr.at<scalar_t>(off), *ZC = zcr.at<scalar_t>(off);  // zoneout: the step's rows
      // h_{t-1} (times the recurrent-dropout mask), for the GEMM
      scalar_t* HP = save && col ? HS : HPV + (save ? off : 0) * P;
      for (int64_t k = 0; k < bs * P; ++k) HP[k] = M ? HB[k] * M[k] : HB[k];
      if (save && col)  // and column-major for backward: unit j's bs values side by side
        rnnkit_common::transpose_rows(HP, HPV + off, N, P, 0, bs);  // HPV[j N + off + b] = HP[b P + j]
      rnnkit_blk::each_block(wb.n(), bs * P * G4, [&](int64_t k) {
        const int64_t j0 = wb.j[k], w = wb.width(k);
        // this block's (bs, 4 w) pre-activations [i | f | g | o]: the GEMM onto the input term
        // (InputChunks), or the GEMM alone and the row adds the input term from xp
        scalar_t* A = xin ? xin->step(k, s, off, XP) : AB + B * 4 * j0;
        if (!xin)  // xp is streamed from memory: ask for it now, it arrives during the GEMM
          for (int64_t b = 0; b < bs; ++b)
            for (int64_t q = 0; q < 4; ++q) rnnkit_pw::prefetch(XP + (off + b) * G4 + q * H + j0, w);
        wb.gemm(k, HP, bs, A, xin.has_value());
        for (int64_t b = 0; b < bs; ++b) {
          const int64_t r = off + b;
          auto sv = [&](scalar_t* p, int64_t width) { return save && p ? p + r * width + j0 : nullptr; };
          rnnkit_row::lstm_fwd<scalar_t>(
              w, H,
              {A + b * 4 * w, xin ? nullptr : XP + r * G4 + j0, sv(GT, G4), C + b * H + j0, sv(CPV, H), sv(TCV, H),
               HR + r * H + j0, PW ? PW + j0 : nullptr, sv(CN, H), ZC ? ZC + b * H + j0 : nullptr, proj ? nullptr : HB + b * P + j0,
               ZH && !proj ? ZH + b * P + j0 : nullptr, zcb.at(off, b, j0), proj ? nullptr : zhb.at(off, b, j0)});
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
        for (int64_t k = 0; k < bs * P; ++k) HB[k] = o_[k] = ZH ? lerp(o_[k], HB[k], ZH[k]) : o_[k];
      }
    }
  });
  return {out, hbuf, cbuf, gates, cprev, tanhc, hprev, hraw, cnew};
}

std::vector<Tensor> backward(int64_t kind, const Tensor& gout, const Tensor& ghn, const Tensor& gcn,
                             std::vector<Tensor> saved, const Tensor& w_hh,
                             const std::optional<Tensor>& w_hr, const std::optional<Tensor>& mask,
                             const std::optional<Tensor>& zh, const std::optional<Tensor>& zc,
                             const std::optional<Tensor>& w_peep, bool has_bias, std::vector<int64_t> batch_sizes,
                             bool reverse, bool onednn) {
  check_backward(kind, gout, ghn, gcn, saved, w_hh, w_hr, mask, zh, zc, w_peep);
  check_batch_sizes("rnnkit_ext::backward", batch_sizes, gout.size(0), ghn.size(0));
  auto steps = schedule(batch_sizes, reverse);
  std::reverse(steps.begin(), steps.end());
  // the saved buffers the kernels read row-major through raw pointers (a no-op for the forward's
  // own): LSTM gates, c_{t-1}, tanh c; GRU gates, a_n, h_{t-1}; RNN h~. The LSTM's h_{t-1} (may
  // be column-major) and the others only meet ATen GEMMs.
  for (int64_t i = 0; i < (kind == 0 || kind == 1 ? 3 : 1); ++i) saved[i] = saved[i].contiguous();
  if (kind != 0) return rnnkit_gru_rnn::backward(kind, gout, ghn, saved, w_hh, mask, zh, has_bias, steps, onednn);
  Tensor dhbuf = ghn.clone(kRowMajor);
  const int64_t B = ghn.size(0), P = ghn.size(1);
  Tensor dhz = zh.has_value() ? at::empty_like(ghn, kRowMajor) : none(ghn), dht = at::empty_like(ghn, kRowMajor);
  // Per step one parallel region over blocks of hidden units (see below), then the partial
  // dh_{t-1} added up with the mask and zoneout's direct part.
  const Tensor &gates = saved[0], &cprev = saved[1], &tanhc = saved[2], &hprev = saved[3], &hraw = saved[4];
  const Tensor& cnew = saved[5];
  const int64_t H = tanhc.size(1), G4 = 4 * H;
  const bool proj = w_hr.has_value();
  Tensor dgates = at::empty_like(gates, kRowMajor), dcbuf = gcn.clone(kRowMajor);
  // has_bias (LSTM): also the input bias gradient Σ_n dgates[n], each block summing its own
  // units' columns while they are in cache (float64), instead of a pass over (N, 4H) after
  Tensor db = has_bias ? at::zeros({G4}, gates.options().dtype(at::kDouble)) : none(gates);
  Tensor dh_all = proj ? at::empty({gates.size(0), P}, gates.options()) : none(gates);
  const std::optional<Linear> lin_rt = proj ? std::optional<Linear>(Linear(w_hr->t(), B, onednn)) : std::nullopt;
  const Tensor goc = gout.contiguous(), m = mask.has_value() ? mask->contiguous() : none(gates);
  const rnnkit_common::ZoneoutRows zhr(zh, B), zcr(zc, B);
  const Tensor wp = w_peep.has_value() ? w_peep->contiguous() : none(gates), wc = w_hh.contiguous();
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_lstm_bwd", [&] {
    const scalar_t *GV = gates.data_ptr<scalar_t>(), *CPV = cprev.data_ptr<scalar_t>();
    const scalar_t* TCV = tanhc.data_ptr<scalar_t>();
    const scalar_t* GOV = goc.data_ptr<scalar_t>();
    scalar_t *DGV = dgates.data_ptr<scalar_t>(), *DC = dcbuf.data_ptr<scalar_t>(), *DHB = dhbuf.data_ptr<scalar_t>();
    scalar_t *DHT = dht.data_ptr<scalar_t>(), *DHZ = zh.has_value() ? dhz.data_ptr<scalar_t>() : nullptr;
    const scalar_t* M = mask.has_value() ? m.data_ptr<scalar_t>() : nullptr;
    const scalar_t* PI = w_peep.has_value() ? wp.data_ptr<scalar_t>() : nullptr;
    const scalar_t* W = wc.data_ptr<scalar_t>();
    const rnnkit_row::BwdRow<scalar_t> row = rnnkit_row::pick_bwd_row<scalar_t>(proj || zh.has_value(), zc.has_value(), PI != nullptr);
    // one block of units per thread (brgemm chunks K itself; more blocks = more partial sums)
    const int64_t work = B * P * G4;
    const std::vector<int64_t> units = rnnkit_blk::split(H, rnnkit_blk::threads_for(work));
    const int64_t nblk = static_cast<int64_t>(units.size()) - 1;
    Tensor parts = at::empty({nblk, B, P}, gates.options());
    scalar_t* PART = parts.data_ptr<scalar_t>();
    for (const auto& st : steps) {
      const int64_t off = st.first, bs = st.second;
      const scalar_t *ZH = zhr.at<scalar_t>(off), *ZC = zcr.at<scalar_t>(off);  // zoneout: the step's rows
      const scalar_t* GO = GOV + off * P;
      Tensor d;  // dL/d(o ⊙ tanh c) for the active rows, when materialized (zoneout on h, projection)
      const scalar_t* DH = rnnkit_row::lstm_step_dh(off, bs, P, GO, DHB, ZH, DHZ, DHT,
                                                    dh_all, lin_rt, w_hr, d);
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
              CP + b * H + j0, ZC ? ZC + b * H + j0 : nullptr, PI ? PI + j0 : nullptr, DG + b * G4 + j0,
              DC + b * H + j0);
        if (has_bias) {
          double* D = db.data_ptr<double>();
          for (int64_t b = 0; b < bs; ++b)
            for (int64_t q = 0; q < 4; ++q) {
              const scalar_t* dg = DG + b * G4 + q * H + j0;
              for (int64_t u = 0; u < w; ++u) D[q * H + j0 + u] += dg[u];
            }
        }
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
  return {dgates, dhbuf, dcbuf, mm_tn(dgates, hprev, onednn), has_bias ? db.to(gates.scalar_type()) : none(gates),
          dw_hr, dw_peep};
}

}  // namespace

TORCH_LIBRARY(rnnkit_ext, m) {
  m.def(
      "forward(int kind, Tensor xp, Tensor h0, Tensor c0, Tensor w_hh, Tensor? b_hh, Tensor? w_hr, "
      "Tensor? mask, Tensor? zh, Tensor? zc, Tensor? w_peep, int[] batch_sizes, bool reverse, bool onednn, "
      "Tensor? x=None, Tensor? w_ih=None, Tensor? b_ih=None) -> Tensor[]",
      &forward);
  m.def(
      "backward(int kind, Tensor gout, Tensor ghn, Tensor gcn, Tensor[] saved, Tensor w_hh, Tensor? w_hr, "
      "Tensor? mask, Tensor? zh, Tensor? zc, Tensor? w_peep, bool has_bias, int[] batch_sizes, bool reverse, "
      "bool onednn) -> Tensor[]",
      &backward);
}
