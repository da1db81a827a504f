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

#include "gru_rnn.h"
#include "pointwise.h"
#include "variants.h"

// Row passes vectorize at -O3 only (as fused.cpp; no -ffast-math, no FMA: same arithmetic).
#pragma GCC optimize("O3")

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

// A block of W_hh as the raw-pointer step GEMMs read it: W (rows, H) dense, and for float32's
// brgemm W^T (H, rows) dense (rnnkit_pw::gemm_xwt).
struct Wblk {
  Tensor w, wt;
  Wblk(const Tensor& w_, bool f32) : w(w_.contiguous()), wt(f32 ? rnnkit_common::transposed(w_) : w) {}
};

using rnnkit_gru_rnn::batch_blocks;  // one block of batch rows per thread for the whole loop

// Per step, for this thread's rows: the GEMM(s) on raw pointers (brgemm / dgemm_), and row
// passes for everything else: no Tensor is created in the time loop.
std::vector<Tensor> gru_forward(const GruLayout& L, const Tensor& xp, const Tensor& h0, const Tensor& w_hh,
                                const OptT& b_hh, const OptT& mask, const OptT& zh, const Steps& steps,
                                bool /*onednn*/) {
  const int64_t N = xp.size(0), B = h0.size(0), H = h0.size(1), nD = L.D.size(), G = 3 * H;
  const auto opt = xp.options();
  const bool f32 = xp.scalar_type() == at::kFloat;
  Tensor gates = at::empty({N, G}, opt), hprev = at::empty({N, H}, opt), out = at::empty({N, H}, opt);
  Tensor hprev_m = mask.has_value() ? at::empty({N, H}, opt) : none(xp);
  Tensor an = L.reset_after ? at::empty({N, H}, opt) : none(xp);
  Tensor th = L.zsrc == 2 ? at::empty({N, H}, opt) : none(xp);
  Tensor hbuf = h0.clone(kRowMajor), abuf = at::empty({B, nD * H}, opt), sbuf = at::empty({B, H}, opt);
  Tensor s2buf = at::empty({B, H}, opt);
  const Wblk wd(L.rows(w_hh, L.D, H), f32);
  const Wblk wz(L.zsrc == 2 ? L.rows(w_hh, "z", H) : none(xp), f32);
  const Wblk wn(!L.reset_after ? L.rows(w_hh, "n", H) : none(xp), f32);
  const bool bias = b_hh.has_value();
  const Tensor bd = bias ? L.rows(*b_hh, L.D, H) : none(xp);
  const Tensor bz = bias && L.zsrc == 2 ? L.rows(*b_hh, "z", H) : none(xp);
  const Tensor bn = bias && !L.reset_after ? L.rows(*b_hh, "n", H) : none(xp);
  const Tensor xc = xp.contiguous(), m = mask.has_value() ? mask->contiguous() : none(xp);
  const rnnkit_common::ZoneoutRows zrows(zh, B);
  const int64_t zcol = L.zsrc == 1 ? 1 : -1, ncol = nD - 1;
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "rnnkit_gru_v_fwd", [&] {
    using namespace rnnkit_pw;
    scalar_t *HB = hbuf.data_ptr<scalar_t>(), *O = out.data_ptr<scalar_t>(), *GT = gates.data_ptr<scalar_t>();
    scalar_t *HPV = hprev.data_ptr<scalar_t>(), *HMV = mask.has_value() ? hprev_m.data_ptr<scalar_t>() : HPV;
    scalar_t *AN = L.reset_after ? an.data_ptr<scalar_t>() : nullptr, *TH = L.zsrc == 2 ? th.data_ptr<scalar_t>() : nullptr;
    scalar_t *AB = abuf.data_ptr<scalar_t>(), *SB = sbuf.data_ptr<scalar_t>(), *S2 = s2buf.data_ptr<scalar_t>();
    const scalar_t *XP = xc.data_ptr<scalar_t>(), *M = mask.has_value() ? m.data_ptr<scalar_t>() : nullptr;
    const scalar_t *BD = bias ? bd.data_ptr<scalar_t>() : nullptr, *BZ = bz.numel() ? bz.data_ptr<scalar_t>() : nullptr;
    const scalar_t* BN = bn.numel() ? bn.data_ptr<scalar_t>() : nullptr;
    const scalar_t *WD = wd.w.data_ptr<scalar_t>(), *WDT = wd.wt.data_ptr<scalar_t>();
    const scalar_t *WZ = L.zsrc == 2 ? wz.w.data_ptr<scalar_t>() : nullptr, *WZT = L.zsrc == 2 ? wz.wt.data_ptr<scalar_t>() : nullptr;
    const scalar_t *WN = !L.reset_after ? wn.w.data_ptr<scalar_t>() : nullptr;
    const scalar_t* WNT = !L.reset_after ? wn.wt.data_ptr<scalar_t>() : nullptr;
    const int64_t DW = nD * H;
    batch_blocks(B, G, steps, [&](int64_t b0, int64_t b1) {
      for (const auto& st : steps) {
        const int64_t off = st.first, n = std::min(b1, st.second) - b0;
        const scalar_t* ZH = zrows.at<scalar_t>(off);  // zoneout: the step's rows
        if (n <= 0) continue;  // packed: this thread's rows have ended (or not started)
        for (int64_t b = b0; b < b0 + n; ++b) {  // h_{t-1} (saved), h̄ = h_{t-1} ⊙ m, MUT3's tanh h̄
          const scalar_t* h = HB + b * H;
          scalar_t *hp = HPV + (off + b) * H, *hm = HMV + (off + b) * H;
          std::copy(h, h + H, hp);
          if (M)
            for (int64_t j = 0; j < H; ++j) hm[j] = h[j] * M[b * H + j];
          if (TH) tanh(hm, TH + (off + b) * H, H);
        }
        gemm_xwt(HMV + (off + b0) * H, WD, WDT, AB + b0 * DW, n, DW, H, scalar_t(0));  // a_D = h̄ W_D^T
        if (TH) gemm_xwt(TH + (off + b0) * H, WZ, WZT, S2 + b0 * H, n, H, H, scalar_t(0));  // tanh h̄ W_z^T
        for (int64_t b = b0; b < b0 + n; ++b) {  // r, z (and n with reset_after)
          scalar_t *a = AB + b * DW, *g = GT + (off + b) * G, *s2 = S2 + b * H;
          const scalar_t* x = XP + (off + b) * G;
          if (BD)
            for (int64_t j = 0; j < DW; ++j) a[j] += BD[j];
          for (int64_t j = 0; j < H; ++j) a[j] = x[j] + a[j];
          sigmoid(a, g, H);
          if (zcol >= 0) {
            for (int64_t j = 0; j < H; ++j) a[H + j] = x[H + j] + a[H + j];
            sigmoid(a + H, g + H, H);
          } else if (TH) {
            for (int64_t j = 0; j < H; ++j) s2[j] = x[H + j] + (BZ ? s2[j] + BZ[j] : s2[j]);
            sigmoid(s2, g + H, H);
          } else {
            sigmoid(x + H, g + H, H);
          }
          if (L.reset_after) {
            scalar_t *anr = AN + (off + b) * H, *an_ = a + ncol * H;
            for (int64_t j = 0; j < H; ++j) {
              anr[j] = an_[j];
              an_[j] = x[2 * H + j] + g[j] * an_[j];
            }
            tanh(an_, g + 2 * H, H);
          } else {  // n reads r ⊙ h̄ through its own GEMM, after this pass
            const scalar_t* hm = HMV + (off + b) * H;
            scalar_t* rh = SB + b * H;
            for (int64_t j = 0; j < H; ++j) rh[j] = g[j] * hm[j];
          }
        }
        if (!L.reset_after) {
          gemm_xwt(SB + b0 * H, WN, WNT, S2 + b0 * H, n, H, H, scalar_t(0));  // (r ⊙ h̄) W_n^T
          for (int64_t b = b0; b < b0 + n; ++b) {
            scalar_t *s2 = S2 + b * H, *g = GT + (off + b) * G;
            const scalar_t* x = XP + (off + b) * G;
            for (int64_t j = 0; j < H; ++j) s2[j] = x[2 * H + j] + (BN ? s2[j] + BN[j] : s2[j]);
            tanh(s2, g + 2 * H, H);
          }
        }
        for (int64_t b = b0; b < b0 + n; ++b) {  // h_t, zoneout
          const scalar_t *g = GT + (off + b) * G, *hp = HPV + (off + b) * H;
          const scalar_t* z = ZH ? ZH + b * H : nullptr;
          scalar_t *o = O + (off + b) * H, *h = HB + b * H;
          for (int64_t j = 0; j < H; ++j) {
            // Cho / torch: (h_{t-1} - n) z + n as torch's GRUCell; MUT, z gates the candidate: the
            // paper's n z + h_{t-1} (1 - z). Not lerp: a data-dependent branch per element, and NaN
            // for an infinite h_{t-1} where these keep the inf (z > 0; z < 1), as
            // (n - h_{t-1}) z + h_{t-1} would be at every z
            const scalar_t nv = g[2 * H + j], u = g[H + j];
            const scalar_t v = L.cand_z ? nv * u + hp[j] * (1 - u) : (hp[j] - nv) * u + nv;
            h[j] = o[j] = z ? lerp(v, hp[j], z[j]) : v;
          }
        }
      }
    });
  });
  return {out, hbuf, none(xp), none(xp), gates, hprev, hprev_m, an, th};
}

std::vector<Tensor> gru_backward(const GruLayout& L, const Tensor& gout, const Tensor& ghn,
                                 const std::vector<Tensor>& saved, const Tensor& w_hh, const OptT& mask,
                                 const OptT& zh, bool has_bias, const Steps& steps, bool onednn) {
  const Tensor &gates = saved[0], &hprev = saved[1], &hprev_m = saved[2], &an = saved[3], &th = saved[4];
  const int64_t B = ghn.size(0), H = hprev.size(1), nD = L.D.size(), G = 3 * H, DW = nD * H;
  const Tensor& hm_all = mask.has_value() ? hprev_m : hprev;
  const auto opt = gates.options();
  Tensor dxp = at::empty_like(gates, kRowMajor), dan = L.reset_after ? at::empty_like(hprev, kRowMajor) : none(gates);
  Tensor dd = at::empty({B, DW}, opt), dir = at::empty({B, H}, opt), dnb = at::empty({B, H}, opt);
  Tensor dzb = at::empty({B, H}, opt), ex = at::empty({B, H}, opt), dhm = at::empty({B, H}, opt);
  Tensor dz2 = at::empty({B, H}, opt), dhz = at::empty({B, H}, opt), dhbuf = ghn.clone(kRowMajor);
  const Tensor wd = L.rows(w_hh, L.D, H).contiguous();
  const Tensor wz = L.zsrc == 2 ? L.rows(w_hh, "z", H).contiguous() : none(gates);
  const Tensor wn = !L.reset_after ? L.rows(w_hh, "n", H).contiguous() : none(gates);
  const Tensor goc = gout.contiguous(), m = mask.has_value() ? mask->contiguous() : none(gates);
  const rnnkit_common::ZoneoutRows zrows(zh, B);
  const int64_t zcol = L.zsrc == 1 ? 1 : -1, ncol = nD - 1;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_gru_v_bwd", [&] {
    using rnnkit_pw::gemm_xw;
    const scalar_t *GV = gates.data_ptr<scalar_t>(), *HPV = hprev.data_ptr<scalar_t>(), *HMV = hm_all.data_ptr<scalar_t>();
    const scalar_t *ANV = L.reset_after ? an.data_ptr<scalar_t>() : nullptr, *THV = L.zsrc == 2 ? th.data_ptr<scalar_t>() : nullptr;
    const scalar_t *GO = goc.data_ptr<scalar_t>(), *M = mask.has_value() ? m.data_ptr<scalar_t>() : nullptr;
    const scalar_t *WD = wd.data_ptr<scalar_t>(), *WZ = THV ? wz.data_ptr<scalar_t>() : nullptr;
    const scalar_t* WN = !L.reset_after ? wn.data_ptr<scalar_t>() : nullptr;
    scalar_t *DX = dxp.data_ptr<scalar_t>(), *DANV = L.reset_after ? dan.data_ptr<scalar_t>() : nullptr;
    scalar_t *DD = dd.data_ptr<scalar_t>(), *DIR = dir.data_ptr<scalar_t>(), *DNB = dnb.data_ptr<scalar_t>();
    scalar_t *DZB = dzb.data_ptr<scalar_t>(), *EX = ex.data_ptr<scalar_t>(), *DHM = dhm.data_ptr<scalar_t>();
    scalar_t *DZ2 = dz2.data_ptr<scalar_t>(), *DHZ = dhz.data_ptr<scalar_t>(), *DHB = dhbuf.data_ptr<scalar_t>();
    batch_blocks(B, G, steps, [&](int64_t b0, int64_t b1) {
      for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
        const int64_t off = it->first, n = std::min(b1, it->second) - b0;
        const scalar_t* ZH = zrows.at<scalar_t>(off);  // zoneout: the step's rows
        if (n <= 0) continue;
        for (int64_t b = b0; b < b0 + n; ++b) {
          const int64_t r0 = (off + b) * H;
          const scalar_t *g = GV + (off + b) * G, *hpr = HPV + r0, *go = GO + r0;
          const scalar_t *zr = ZH ? ZH + b * H : nullptr, *anr = ANV ? ANV + r0 : nullptr;
          scalar_t *dx = DX + (off + b) * G, *da = DD + b * DW, *dhb = DHB + b * H;
          for (int64_t j = 0; j < H; ++j) {
            const int64_t k = b * H + j;
            scalar_t dh = go[j] + dhb[j];
            if (zr) {  // h_t = lerp(h~_t, h_{t-1}, zh): dh ⊙ zh goes straight to h_{t-1}
              DHZ[k] = dh * zr[j];
              dh = dh - DHZ[k];
            }
            const scalar_t r = g[j], z = g[H + j], nn = g[2 * H + j], hp = hpr[j];
            const scalar_t dnp = dh * (1 - nn * nn) * (L.cand_z ? z : 1 - z);
            const scalar_t dzp = dh * (z - z * z) * (L.cand_z ? nn - hp : hp - nn);
            DIR[k] = L.cand_z ? dh - dh * z : dh * z;
            dx[H + j] = dzp;
            dx[2 * H + j] = dnp;
            if (zcol >= 0) da[zcol * H + j] = dzp;
            DZB[k] = dzp;
            if (L.reset_after) {
              const scalar_t drp = dnp * anr[j] * (r - r * r);
              dx[j] = da[j] = drp;
              DANV[r0 + j] = da[ncol * H + j] = dnp * r;
            } else {
              DNB[k] = dnp;
            }
          }
        }
        if (!L.reset_after) {  // n read r ⊙ h̄: its GEMM's gradient feeds r's
          gemm_xw(DNB + b0 * H, WN, EX + b0 * H, n, H, H);  // dn' W_n, into EX, then EX = that ⊙ r
          for (int64_t b = b0; b < b0 + n; ++b) {
            const scalar_t *g = GV + (off + b) * G, *hm = HMV + (off + b) * H;
            scalar_t *dx = DX + (off + b) * G, *da = DD + b * DW, *ex = EX + b * H;
            for (int64_t j = 0; j < H; ++j) {
              const scalar_t r = g[j], gr = ex[j];
              dx[j] = da[j] = gr * hm[j] * (r - r * r);
              ex[j] = gr * r;
            }
          }
        }
        gemm_xw(DD + b0 * DW, WD, DHM + b0 * H, n, H, DW);  // dh̄ = da_D W_D
        if (THV) gemm_xw(DZB + b0 * H, WZ, DZ2 + b0 * H, n, H, H);
        for (int64_t b = b0; b < b0 + n; ++b) {
          const scalar_t* t = THV ? THV + (off + b) * H : nullptr;
          for (int64_t j = 0; j < H; ++j) {
            const int64_t k = b * H + j;
            scalar_t v = DHM[k];
            if (!L.reset_after) v = v + EX[k];
            if (t) v = v + DZ2[k] * -(t[j] * t[j] - 1);  // MUT3: (dz' W_z) ⊙ (1 - tanh² h̄)
            v = (M ? v * M[k] : v) + DIR[k];
            DHB[k] = ZH ? v + DHZ[k] : v;
          }
        }
      }
    });
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

// Sizes of an LSTM layout's flags (lstm_variants_impl.h's LstmLayout): gate blocks, sigmoid gates
// (FGR's gate state has nsig H columns), peephole blocks.
struct LstmSizes {
  int64_t ng, nsig, npeep;
  bool peep, peep_o, fgr;
  explicit LstmSizes(int64_t f) {
    const int64_t i = f & 1 ? 1 : 0, fg = f & 2 ? 1 : 0, o = f & 4 ? 1 : 0;
    peep = f & 64, fgr = f & 128, peep_o = peep && o;
    ng = i + fg + 1 + o, nsig = i + fg + o, npeep = peep ? nsig : 0;
  }
};

void check_family(const char* op, int64_t family, int64_t flags) {
  TORCH_CHECK(family == 0 || family == 1, op, ": family must be 0 (LSTM layouts) or 1 (GRU variants), got ", family);
  TORCH_CHECK(flags >= 0, op, ": flags must be non-negative, got ", flags);
}

// The arguments of variant_forward against each other: N rows of the packed input, B rows of
// the state, P its width, H the hidden size, S FGR's gate state width.
void check_variant_forward(int64_t family, int64_t flags, const Tensor& xp, const Tensor& h0, const OptT& c0,
                           const Tensor& w_hh, const OptT& b_hh, const OptT& w_hr, const OptT& mask,
                           const OptT& zh, const OptT& zc, const OptT& w_peep, const OptT& a0, const OptT& w_gg,
                           const OptT& zg, const OptT& x, const OptT& w_ih, const OptT& b_in) {
  using namespace rnnkit_check;
  const char* op = "rnnkit_ext::variant_forward";
  check_family(op, family, flags);
  TORCH_CHECK(family == 0 || !x.has_value(), op, ": only the LSTM layouts project their input themselves");
  const Sizes sz = forward_sizes(op, x.has_value() ? "x" : "xp", x.has_value() ? *x : xp, h0);
  const auto dt = sz.dt;
  const int64_t N = sz.N, B = sz.B, P = sz.P;
  if (family == 0) {
    no_b_hh(op, "LSTM layouts", b_hh, "the caller adds it to xp, or to b_ih with x");
    const LstmSizes L(flags);
    const Tensor& c = req(op, "c0", c0, "by the LSTM layouts");
    const int64_t H = lstm_state(op, c, dt, B, P, w_hr, h0), W = L.ng * H, S = L.nsig * H;
    if (x.has_value()) {
      tensor(op, "w_ih", req(op, "w_ih", w_ih, "with x"), dt, "(gates H, I)", {W, x->size(1)});
      opt(op, "b_ih", b_in, dt, "(gates H,)", {W});
    } else {
      tensor(op, "xp", xp, dt, "(N, gates H)", {N, W});
    }
    tensor(op, "w_hh", w_hh, dt, "(gates H, P)", {W, P});
    lstm_regularizers(op, dt, B, N, P, H, mask, zh, zc);
    if (L.peep) tensor(op, "w_peep", req(op, "w_peep", w_peep, "by the peephole flag"), dt, "(peepholes H,)",
                       {L.npeep * H});
    if (L.fgr) {
      tensor(op, "a0", req(op, "a0", a0, "by the FGR flag"), dt, "(B, S)", {B, S});
      tensor(op, "w_gg", req(op, "w_gg", w_gg, "by the FGR flag"), dt, "(S, S)", {S, S});
      opt(op, "zg", zg, dt, "(N, S)", {N, S});
    }
    return;
  }
  const int64_t nhid = (flags & 3) == 1 ? 2 : 3;  // MUT1's W_hh has no z block
  tensor(op, "xp", xp, dt, "(N, 3H)", {N, 3 * P});
  tensor(op, "w_hh", w_hh, dt, nhid == 2 ? "(2H, H)" : "(3H, H)", {nhid * P, P});
  opt(op, "b_hh", b_hh, dt, nhid == 2 ? "(2H,)" : "(3H,)", {nhid * P});
  opt(op, "mask", mask, dt, "(B, H)", {B, P});
  opt(op, "zh", zh, dt, "(N, H)", {N, P});
}

// The arguments of variant_backward against each other, as check_variant_forward; `saved` as
// variant_forward returned it (after its four outputs).
void check_variant_backward(int64_t family, int64_t flags, const Tensor& gout, const Tensor& ghn, const Tensor& gcn,
                            const Tensor& gan, const std::vector<Tensor>& saved, const Tensor& w_hh,
                            const OptT& w_hr, const OptT& mask, const OptT& zh, const OptT& zc,
                            const OptT& w_peep, const OptT& w_gg, const OptT& zg) {
  using namespace rnnkit_check;
  const char* op = "rnnkit_ext::variant_backward";
  check_family(op, family, flags);
  const Sizes sz = backward_sizes(op, gout, ghn);
  const auto dt = sz.dt;
  const int64_t N = sz.N, B = sz.B, P = sz.P;
  if (family == 0) {
    const LstmSizes L(flags);
    const int64_t H = per_gate(op, "w_hh", w_hh, L.ng, "(gates H, P)"), W = L.ng * H, S = L.nsig * H;
    tensor(op, "w_hh", w_hh, dt, "(gates H, P)", {W, P});
    tensor(op, "gcn", gcn, dt, "(B, H)", {B, H});
    count(op, "saved", saved.size(), 7, false);
    lstm_saved(op, saved, dt, N, W, "(N, gates H)", "saved[2] (y)", H, P, w_hr, "gout", gout, w_hh);
    if (L.peep) tensor(op, "w_peep", req(op, "w_peep", w_peep, "by the peephole flag"), dt, "(peepholes H,)",
                       {L.npeep * H});
    if (L.peep_o) tensor(op, "saved[5] (c~)", saved[5], dt, "(N, H)", {N, H});
    if (L.fgr) {
      tensor(op, "gan", gan, dt, "(B, S)", {B, S});
      tensor(op, "w_gg", req(op, "w_gg", w_gg, "by the FGR flag"), dt, "(S, S)", {S, S});
      tensor(op, "saved[6] (a_{t-1})", saved[6], dt, "(N, S)", {N, S});
      opt(op, "zg", zg, dt, "(N, S)", {N, S});
    }
    lstm_regularizers(op, dt, B, N, P, H, mask, zh, zc);
    return;
  }
  const GruLayout L(flags);
  const int64_t H = P;
  tensor(op, "w_hh", w_hh, dt, L.hid.size() == 2 ? "(2H, H)" : "(3H, H)", {int64_t(L.hid.size()) * H, H});
  count(op, "saved", saved.size(), 5, false);
  tensor(op, "saved[0] (gates)", saved[0], dt, "(N, 3H)", {N, 3 * H});
  tensor(op, "saved[1] (h_{t-1})", saved[1], dt, "(N, H)", {N, H});
  if (mask.has_value()) tensor(op, "saved[2] (h_{t-1} * mask)", saved[2], dt, "(N, H)", {N, H});
  if (L.reset_after) tensor(op, "saved[3] (a_n)", saved[3], dt, "(N, H)", {N, H});
  if (L.zsrc == 2) tensor(op, "saved[4] (tanh h_{t-1})", saved[4], dt, "(N, H)", {N, H});
  opt(op, "mask", mask, dt, "(B, H)", {B, H});
  opt(op, "zh", zh, dt, "(N, H)", {N, H});
}

std::vector<Tensor> variant_forward(int64_t family, int64_t flags, const Tensor& xp, const Tensor& h0,
                                    const OptT& c0, const Tensor& w_hh, const OptT& b_hh, const OptT& w_hr,
                                    const OptT& mask, const OptT& zh, const OptT& zc, const OptT& w_peep,
                                    const OptT& a0, const OptT& w_gg, const OptT& zg,
                                    std::vector<int64_t> batch_sizes, bool reverse, bool onednn, const OptT& x,
                                    const OptT& w_ih, const OptT& b_in) {
  check_variant_forward(family, flags, xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep, a0, w_gg, zg, x, w_ih,
                        b_in);
  check_batch_sizes("rnnkit_ext::variant_forward", batch_sizes, x.has_value() ? x->size(0) : xp.size(0),
                    h0.size(0));
  const auto steps = schedule(batch_sizes, reverse);
  if (family == 0)
    return rnnkit_variants::lstm_forward(flags, xp, h0, *c0, w_hh, w_hr, mask, zh, zc, w_peep, a0, w_gg, zg, steps,
                                         onednn, x, w_ih, b_in);
  return gru_forward(GruLayout(flags), xp, h0, w_hh, b_hh, mask, zh, steps, onednn);
}

std::vector<Tensor> variant_backward(int64_t family, int64_t flags, const Tensor& gout, const Tensor& ghn,
                                     const Tensor& gcn, const Tensor& gan, std::vector<Tensor> saved,
                                     const Tensor& w_hh, const OptT& w_hr, const OptT& mask, const OptT& zh,
                                     const OptT& zc, const OptT& w_peep, const OptT& w_gg, const OptT& zg,
                                     bool has_bias, std::vector<int64_t> batch_sizes, bool reverse, bool onednn) {
  check_variant_backward(family, flags, gout, ghn, gcn, gan, saved, w_hh, w_hr, mask, zh, zc, w_peep, w_gg, zg);
  check_batch_sizes("rnnkit_ext::variant_backward", batch_sizes, gout.size(0), ghn.size(0));
  const auto steps = schedule(batch_sizes, reverse);
  // the saved buffers the kernels read row-major through raw pointers (a no-op for the forward's
  // own): LSTM layouts' gates, c_{t-1}, y (h_{t-1}, a_{t-1} only meet ATen GEMMs); every one of
  // the GRU variants'
  for (size_t i = 0; i < (family == 0 ? 3 : saved.size()); ++i) saved[i] = saved[i].contiguous();
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
      "int[] batch_sizes, bool reverse, bool onednn, Tensor? x=None, Tensor? w_ih=None, Tensor? b_ih=None) "
      "-> Tensor[]",
      &variant_forward);
  m.def(
      "variant_backward(int family, int flags, Tensor gout, Tensor ghn, Tensor gcn, Tensor gan, Tensor[] saved, "
      "Tensor w_hh, Tensor? w_hr, Tensor? mask, Tensor? zh, Tensor? zc, Tensor? w_peep, Tensor? w_gg, "
      "Tensor? zg, bool has_bias, int[] batch_sizes, bool reverse, bool onednn) -> Tensor[]",
      &variant_backward);
}
