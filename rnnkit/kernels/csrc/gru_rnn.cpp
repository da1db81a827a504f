// rnnkit fused GRU (torch form) and Elman RNN directions: forward and explicit BPTT, looping
// over time in C++ (fused.cpp's kinds 1-3). Mirrors rnnkit/kernels/{gru,rnn}.py (same saved
// tensors, same schedule, same equations; float64 agrees to ~1e-15).
//
// Per step no Tensor is created: the recurrent GEMM runs on raw pointers (rnnkit_pw::gemm_xwt /
// gemm_xw: oneDNN's brgemm micro-kernel for float32, dgemm_ for float64) and one pass per batch
// row does everything element-wise (gates with SLEEF sigmoid/tanh, candidate, zoneout lerp,
// recurrent-dropout mask; backward: every gate gradient). Every row of a step depends only on
// the same row of the previous step (h_t[b] is a function of h_{t-1}[b]; backward likewise),
// so the batch is split into one contiguous block of rows per thread for the WHOLE time loop:
// one fork/join per call instead of two per step, and each thread's step GEMM is its rows
// times all of W_hh (W_hh stays in that core's cache). Weight gradients are single GEMMs over
// all steps after the loop, through ATen.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "gru_rnn.h"
#include "pointwise.h"

// Row passes are plain loops over H: vectorized at -O3 only (as fused.cpp; no -ffast-math, no FMA
// in the baseline ISA, so the arithmetic is unchanged).
#pragma GCC optimize("O3")

using at::Tensor;
using namespace rnnkit_common;
using OptT = std::optional<Tensor>;

namespace {

using rnnkit_gru_rnn::batch_blocks;

template <typename T>
const T* ptr_or_null(const std::optional<Tensor>& t, const Tensor& c) {
  return t.has_value() ? c.data_ptr<T>() : nullptr;
}
Tensor dense_or_none(const std::optional<Tensor>& t, const Tensor& like) {
  return t.has_value() ? t->contiguous() : none(like);
}

// dW = sum over steps of da_t^T h_{t-1}, where h_{t-1} of step t is read back from the rows the
// previous step (processing order) wrote into `out`, or from h0 where there was none: used when
// h_{t-1} was not stored (no mask, no zoneout). A step of `bs` rows after one of `pbs` rows:
// rows [0, min) come from the previous step's output, rows [pbs, bs) (a reverse packed
// direction, sequences that start here) from h0. Segments that are contiguous both in da and in
// the source merge, so a padded batch takes two GEMMs (all steps but the first, and the first).
Tensor dw_from_out(const Tensor& da_all, const Tensor& out, const Tensor& h0, const Steps& fwd_steps, bool onednn) {
  struct Seg {
    int64_t da_off, n, src_off;
    bool from_h0;
  };
  std::vector<Seg> segs;
  for (size_t i = 0; i < fwd_steps.size(); ++i) {
    const int64_t off = fwd_steps[i].first, bs = fwd_steps[i].second;
    if (i == 0) {
      segs.push_back({off, bs, 0, true});
      continue;
    }
    const int64_t poff = fwd_steps[i - 1].first, pbs = fwd_steps[i - 1].second, m = std::min(bs, pbs);
    segs.push_back({off, m, poff, false});
    if (bs > pbs) segs.push_back({off + pbs, bs - pbs, pbs, true});
  }
  std::sort(segs.begin(), segs.end(), [](const Seg& a, const Seg& b) { return a.da_off < b.da_off; });
  std::vector<Seg> merged;
  for (const auto& s : segs) {
    if (!merged.empty()) {
      Seg& l = merged.back();
      if (l.from_h0 == s.from_h0 && l.da_off + l.n == s.da_off && l.src_off + l.n == s.src_off) {
        l.n += s.n;
        continue;
      }
    }
    merged.push_back(s);
  }
  // In float32 the parts are summed as dW^T, the layout tn_transposed (brgemm) returns them in,
  // and dW^T is transposed once: the same values added in the same order, so the same bits. A
  // packed batch has a segment per change of batch size (28 for 32 sequences of lengths
  // 50-150), and mm_tn's 256x256 transpose per part was ~0.4 ms of its training step at 1
  // thread. A BLAS part is transposed to dense first: a strided add takes 12x a dense one (49
  // against 4 us at 256x256).
  const bool t_layout = wgrad_brgemm(da_all, onednn) && wgrad_brgemm(out, onednn);
  Tensor acc;
  for (const auto& s : merged) {
    const Tensor a = da_all.narrow(0, s.da_off, s.n), b = (s.from_h0 ? h0 : out).narrow(0, s.src_off, s.n);
    Tensor part = t_layout ? tn_transposed(a, b, onednn) : mm_tn(a, b, onednn);
    if (!part.defined()) part = rnnkit_common::transposed(at::mm(a.t(), b));
    acc = acc.defined() ? acc.add_(part) : part;
  }
  if (!acc.defined()) return at::zeros({da_all.size(1), out.size(1)}, out.options());
  return t_layout ? rnnkit_common::transposed(acc) : acc;
}

// ---- GRU (torch form): r, z = σ(xp_rz + a_rz); n = tanh(xp_n + r ⊙ a_n); h = (h_{t-1} - n) z + n
std::vector<Tensor> gru_forward(const Tensor& xp, const Tensor& h0, const Tensor& w_hh, const OptT& b_hh,
                                const OptT& mask, const OptT& zh, const Steps& steps) {
  const int64_t N = xp.size(0), B = h0.size(0), H = h0.size(1), G = 3 * H;
  const auto opt = xp.options();
  Tensor hbuf = h0.clone(kRowMajor), out = at::empty({N, H}, opt), hprev = at::empty({N, H}, opt);
  // a_n (the n-part of the recurrent GEMM, bias included) is all backward needs of it
  Tensor gates = at::empty({N, G}, opt), an = at::empty({N, H}, opt), abuf = at::empty({B, G}, opt);
  Tensor hprev_m = mask.has_value() ? at::empty({N, H}, opt) : hprev;
  const Tensor xc = xp.contiguous(), wc = w_hh.contiguous();
  const Tensor wtc = xp.scalar_type() == at::kFloat ? rnnkit_common::transposed(w_hh) : wc;  // brgemm reads W^T
  const Tensor bc = dense_or_none(b_hh, xp), m = dense_or_none(mask, xp);
  const rnnkit_common::ZoneoutRows zr(zh, B);
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "rnnkit_gru_fwd", [&] {
    using namespace rnnkit_pw;
    scalar_t *HB = hbuf.data_ptr<scalar_t>(), *O = out.data_ptr<scalar_t>(), *HPV = hprev.data_ptr<scalar_t>();
    scalar_t *HMV = hprev_m.data_ptr<scalar_t>(), *GT = gates.data_ptr<scalar_t>(), *AN = an.data_ptr<scalar_t>();
    scalar_t* AB = abuf.data_ptr<scalar_t>();
    const scalar_t *XP = xc.data_ptr<scalar_t>(), *W = wc.data_ptr<scalar_t>(), *WT = wtc.data_ptr<scalar_t>();
    const scalar_t *BH = ptr_or_null<scalar_t>(b_hh, bc), *M = ptr_or_null<scalar_t>(mask, m);
    batch_blocks(B, G, steps, [&](int64_t b0, int64_t b1) {
      for (const auto& st : steps) {
        const int64_t off = st.first, n = std::min(b1, st.second) - b0;
        const scalar_t* ZH = zr.at<scalar_t>(off);  // zoneout: the step's rows
        if (n <= 0) continue;  // packed: this thread's rows have all ended (or not started)
        for (int64_t b = b0; b < b0 + n; ++b) {  // h_{t-1} (saved) and h_{t-1} ⊙ m (GEMM input)
          const scalar_t* h = HB + b * H;
          scalar_t *hp = HPV + (off + b) * H, *hm = HMV + (off + b) * H;
          std::copy(h, h + H, hp);
          if (M)
            for (int64_t j = 0; j < H; ++j) hm[j] = h[j] * M[b * H + j];
        }
        // a = (h_{t-1} ⊙ m) W_hh^T for this thread's rows (the bias is added in the row pass)
        gemm_xwt(HMV + (off + b0) * H, W, WT, AB + b0 * G, n, G, H, scalar_t(0));
        for (int64_t b = b0; b < b0 + n; ++b) {
          scalar_t *a = AB + b * G, *g = GT + (off + b) * G, *anr = AN + (off + b) * H, *h = HB + b * H;
          const scalar_t *x = XP + (off + b) * G, *hp = HPV + (off + b) * H;
          if (BH)
            for (int64_t j = 0; j < G; ++j) a[j] += BH[j];
          for (int64_t j = 0; j < 2 * H; ++j) a[j] = x[j] + a[j];
          sigmoid(a, g, 2 * H);
          for (int64_t j = 0; j < H; ++j) {
            anr[j] = a[2 * H + j];
            a[2 * H + j] = x[2 * H + j] + g[j] * a[2 * H + j];
          }
          tanh(a + 2 * H, g + 2 * H, H);
          scalar_t* o = O + (off + b) * H;
          const scalar_t* z = ZH ? ZH + b * H : nullptr;
          for (int64_t j = 0; j < H; ++j) {
            // h = (h_{t-1} - n) z + n, torch's GRUCell form, not lerp(n, h_{t-1}, z): for z >= 1/2
            // the lerp computes h_{t-1} - (h_{t-1} - n)(1 - z), NaN for an infinite h_{t-1} at
            // z = 1 where torch.nn.GRU keeps the inf (and other roundings)
            const scalar_t v = (hp[j] - g[2 * H + j]) * g[H + j] + g[2 * H + j];
            h[j] = o[j] = z ? lerp(v, hp[j], z[j]) : v;
          }
        }
      }
    });
  });
  return {out, hbuf, none(xp), gates, an, hprev, hprev_m};
}

std::vector<Tensor> gru_backward(const Tensor& gout, const Tensor& ghn, const std::vector<Tensor>& saved,
                                 const Tensor& w_hh, const OptT& mask, const OptT& zh, bool has_bias,
                                 const Steps& steps, bool onednn) {
  const Tensor &gates = saved[0], &an = saved[1], &hprev = saved[2], &hprev_m = saved[3];
  const int64_t B = ghn.size(0), H = ghn.size(1), G = 3 * H;
  const auto opt = gates.options();
  // d a = [dr', dz', dn' ⊙ r] per step in `dat`; its r, z parts are d xp's, so only the n-part
  // is stacked over the sequence (dan) for the weight gradient.
  Tensor dxp = at::empty_like(gates, kRowMajor), dan = at::empty_like(an, kRowMajor), dhbuf = ghn.clone(kRowMajor);
  Tensor dat = at::empty({B, G}, opt), dz = at::empty({B, H}, opt), dhz = at::empty({B, H}, opt);
  // gout strided (the expand of a sum's gradient): its dense copy, an (N, H) buffer, is dropped
  // right after the loop, before the weight-gradient GEMMs and the (N, H) operand copy oneDNN
  // makes; held to the end it sat on top of them at backward's peak (medium shape: +3.1 MiB)
  Tensor goc = gout.contiguous();
  const Tensor wc = w_hh.contiguous(), m = dense_or_none(mask, gates);
  const rnnkit_common::ZoneoutRows zr(zh, B);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_gru_bwd", [&] {
    const scalar_t *GV = gates.data_ptr<scalar_t>(), *ANV = an.data_ptr<scalar_t>();
    const scalar_t *HPV = hprev.data_ptr<scalar_t>(), *GOV = goc.data_ptr<scalar_t>(), *W = wc.data_ptr<scalar_t>();
    const scalar_t* M = ptr_or_null<scalar_t>(mask, m);
    scalar_t *DX = dxp.data_ptr<scalar_t>(), *DAN = dan.data_ptr<scalar_t>(), *DHB = dhbuf.data_ptr<scalar_t>();
    scalar_t *DA = dat.data_ptr<scalar_t>(), *DZ = dz.data_ptr<scalar_t>(), *DHZ = dhz.data_ptr<scalar_t>();
    batch_blocks(B, G, steps, [&](int64_t b0, int64_t b1) {
      for (const auto& st : steps) {
        const int64_t off = st.first, n = std::min(b1, st.second) - b0;
        const scalar_t* ZH = zr.at<scalar_t>(off);  // zoneout: the step's rows
        if (n <= 0) continue;
        for (int64_t b = b0; b < b0 + n; ++b) {
          const int64_t r0 = (off + b) * H;
          const scalar_t *g = GV + (off + b) * G, *anr = ANV + r0, *hp = HPV + r0, *go = GOV + r0;
          const scalar_t* z_ = ZH ? ZH + b * H : nullptr;
          scalar_t *dx = DX + (off + b) * G, *da = DA + b * G, *dhb = DHB + b * H;
          scalar_t *dzr = DZ + b * H, *dhz = DHZ + b * H, *danr = DAN + r0;
          for (int64_t j = 0; j < H; ++j) {
            scalar_t dh = go[j] + dhb[j];
            if (z_) {  // h_t = lerp(h~_t, h_{t-1}, zh): dh ⊙ zh goes straight to h_{t-1}
              dhz[j] = dh * z_[j];
              dh = dh - dhz[j];
            }
            const scalar_t r = g[j], z = g[H + j], nn = g[2 * H + j];
            const scalar_t dn = dh * (1 - nn * nn) * (1 - z);
            const scalar_t dzp = dh * (z - z * z) * (hp[j] - nn);
            const scalar_t drp = dn * anr[j] * (r - r * r);
            dx[j] = da[j] = drp;
            dx[H + j] = da[H + j] = dzp;
            dx[2 * H + j] = dn;
            da[2 * H + j] = danr[j] = dn * r;
            dzr[j] = dh * z;
          }
        }
        // dh_{t-1} = (da W_hh) ⊙ m + dh ⊙ z (+ zoneout's direct part)
        rnnkit_pw::gemm_xw(DA + b0 * G, W, DHB + b0 * H, n, H, G);
        for (int64_t k = b0 * H; k < (b0 + n) * H; ++k) {
          const scalar_t v = (M ? DHB[k] * M[k] : DHB[k]) + DZ[k];
          DHB[k] = ZH ? v + DHZ[k] : v;
        }
      }
    });
  });
  goc.reset();
  const Tensor drz = dxp.narrow(1, 0, 2 * H);
  Tensor db = has_bias ? at::cat({drz.sum(0), dan.sum(0)}) : none(gates);
  // the n-part first: its GEMM (oneDNN, dense operands) copies h_{t-1} (N, H), and dan is dropped
  // before the r, z part's result exists (ATen's GEMM on the strided drz makes no copy)
  Tensor dw_n = mm_tn(dan, hprev_m, onednn);
  dan.reset();
  Tensor dw = at::cat({mm_tn(drz, hprev_m, onednn), dw_n});
  return {dxp, dhbuf, none(gates), dw, db, none(gates), none(gates)};
}

// ---- Elman RNN: h~ = act(xp + (h_{t-1} ⊙ m) W_hh^T); h = lerp(h~, h_{t-1}, zh) with zoneout.
// hnew holds h~ (for act'); it is `out` without zoneout. h_{t-1} is stored (hprev) only where
// it is not the previous step's output (mask or zoneout); else saved[1] is a copy of h0 (B, P)
// and backward reads h_{t-1} back from out (dw_from_out).
std::vector<Tensor> rnn_forward(bool relu, const Tensor& xp, const Tensor& h0, const Tensor& w_hh, const OptT& mask,
                                const OptT& zh, const Steps& steps) {
  const int64_t N = xp.size(0), B = h0.size(0), H = h0.size(1);
  const auto opt = xp.options();
  const bool keep_prev = mask.has_value() || zh.has_value();
  Tensor hbuf = h0.clone(kRowMajor), out = at::empty({N, H}, opt);
  Tensor hnew = zh.has_value() ? at::empty({N, H}, opt) : out;
  Tensor hprev = keep_prev ? at::empty({N, H}, opt) : h0.clone(kRowMajor);
  const Tensor xc = xp.contiguous(), wc = w_hh.contiguous();
  const Tensor wtc = xp.scalar_type() == at::kFloat ? rnnkit_common::transposed(w_hh) : wc;
  const Tensor m = dense_or_none(mask, xp);
  const rnnkit_common::ZoneoutRows zr(zh, B);
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "rnnkit_rnn_fwd", [&] {
    using namespace rnnkit_pw;
    scalar_t *HB = hbuf.data_ptr<scalar_t>(), *O = out.data_ptr<scalar_t>(), *HN = hnew.data_ptr<scalar_t>();
    scalar_t* HPV = hprev.data_ptr<scalar_t>();
    const scalar_t *XP = xc.data_ptr<scalar_t>(), *W = wc.data_ptr<scalar_t>(), *WT = wtc.data_ptr<scalar_t>();
    const scalar_t* M = ptr_or_null<scalar_t>(mask, m);
    batch_blocks(B, H, steps, [&](int64_t b0, int64_t b1) {
      for (const auto& st : steps) {
        const int64_t off = st.first, n = std::min(b1, st.second) - b0, r0 = (off + b0) * H, r1 = (off + b0 + n) * H;
        const scalar_t* ZH = zr.at<scalar_t>(off);  // zoneout: the step's rows
        if (n <= 0) continue;
        const scalar_t* src = HB + b0 * H;  // h_{t-1} (⊙ m) as the GEMM reads it
        if (keep_prev) {
          for (int64_t k = b0 * H; k < (b0 + n) * H; ++k) HPV[off * H + k] = M ? HB[k] * M[k] : HB[k];
          src = HPV + r0;
        }
        std::copy(XP + r0, XP + r1, HN + r0);
        gemm_xwt(src, W, WT, HN + r0, n, H, H, scalar_t(1));
        scalar_t* hn = HN + r0;
        if (relu)
          for (int64_t k = 0; k < r1 - r0; ++k) hn[k] = hn[k] < 0 ? scalar_t(0) : hn[k];
        else
          tanh(hn, hn, r1 - r0);
        scalar_t *o = O + r0, *hb = HB + b0 * H;
        if (ZH)
          for (int64_t k = 0; k < r1 - r0; ++k) hb[k] = o[k] = lerp(hn[k], hb[k], ZH[b0 * H + k]);
        else
          std::copy(hn, hn + (r1 - r0), hb);
      }
    });
  });
  return {out, hbuf, none(xp), hnew, hprev};
}

std::vector<Tensor> rnn_backward(bool relu, const Tensor& gout, const Tensor& ghn, const std::vector<Tensor>& saved,
                                 const Tensor& w_hh, const OptT& mask, const OptT& zh, const Steps& steps,
                                 bool onednn) {
  const Tensor &hnew = saved[0], &hprev = saved[1];
  const int64_t B = ghn.size(0), H = ghn.size(1), N = hnew.size(0);
  Tensor da_all = at::empty_like(hnew, kRowMajor), dhbuf = ghn.clone(kRowMajor), dhz = at::empty({B, H}, hnew.options());
  Tensor goc = gout.contiguous();  // released after the loop, as gru_backward's
  const Tensor wc = w_hh.contiguous(), m = dense_or_none(mask, hnew);
  const rnnkit_common::ZoneoutRows zr(zh, B);
  AT_DISPATCH_FLOATING_TYPES(hnew.scalar_type(), "rnnkit_rnn_bwd", [&] {
    const scalar_t *HN = hnew.data_ptr<scalar_t>(), *GO = goc.data_ptr<scalar_t>(), *W = wc.data_ptr<scalar_t>();
    const scalar_t* M = ptr_or_null<scalar_t>(mask, m);
    scalar_t *DA = da_all.data_ptr<scalar_t>(), *DHB = dhbuf.data_ptr<scalar_t>(), *DHZ = dhz.data_ptr<scalar_t>();
    batch_blocks(B, H, steps, [&](int64_t b0, int64_t b1) {
      for (const auto& st : steps) {
        const int64_t off = st.first, n = std::min(b1, st.second) - b0, r0 = (off + b0) * H;
        const scalar_t* ZH = zr.at<scalar_t>(off);  // zoneout: the step's rows
        if (n <= 0) continue;
        for (int64_t k = b0 * H; k < (b0 + n) * H; ++k) {
          const int64_t i = off * H + k;
          scalar_t dh = GO[i] + DHB[k];
          if (ZH) {  // h_t = lerp(h~_t, h_{t-1}, zh): split the gradient
            DHZ[k] = dh * ZH[k];
            dh = dh - DHZ[k];
          }
          const scalar_t o = HN[i];
          DA[i] = relu ? (o <= 0 ? scalar_t(0) : dh) : dh * (1 - o * o);  // relu: a NaN o passes dh, as torch's
        }
        // dh_{t-1} = (da W_hh) ⊙ m (+ zoneout's direct part)
        rnnkit_pw::gemm_xw(DA + r0, W, DHB + b0 * H, n, H, H);
        if (M || ZH)
          for (int64_t k = b0 * H; k < (b0 + n) * H; ++k) {
            const scalar_t v = M ? DHB[k] * M[k] : DHB[k];
            DHB[k] = ZH ? v + DHZ[k] : v;
          }
      }
    });
  });
  goc.reset();
  Tensor dw;
  if (hprev.size(0) == N) {
    dw = mm_tn(da_all, hprev, onednn);
  } else {  // h_{t-1} not stored: read back from hnew (== out here) and h0 = hprev
    Steps fwd(steps.rbegin(), steps.rend());
    dw = dw_from_out(da_all, hnew, hprev, fwd, onednn);
  }
  return {da_all, dhbuf, none(hnew), dw, none(hnew), none(hnew), none(hnew)};
}

}  // namespace

namespace rnnkit_gru_rnn {

std::vector<Tensor> forward(int64_t kind, const Tensor& xp, const Tensor& h0, const Tensor& w_hh, const OptT& b_hh,
                            const OptT& mask, const OptT& zh, const Steps& steps, bool /*onednn*/) {
  if (kind == 1) return gru_forward(xp, h0, w_hh, b_hh, mask, zh, steps);
  return rnn_forward(kind == 3, xp, h0, w_hh, mask, zh, steps);
}

std::vector<Tensor> backward(int64_t kind, const Tensor& gout, const Tensor& ghn, const std::vector<Tensor>& saved,
                             const Tensor& w_hh, const OptT& mask, const OptT& zh, bool has_bias, const Steps& steps,
                             bool onednn) {
  if (kind == 1) return gru_backward(gout, ghn, saved, w_hh, mask, zh, has_bias, steps, onednn);
  return rnn_backward(kind == 3, gout, ghn, saved, w_hh, mask, zh, steps, onednn);
}

}  // namespace rnnkit_gru_rnn
