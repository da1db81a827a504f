// The LSTM layout kernels of lstm_variants.cpp (forward and backward). Included twice there: for
// the baseline ISA and, chosen at run time, compiled for AVX-512, so that the element-wise loops
// over a block of units vectorize 16 floats wide. (No include guard on purpose.)
// ---- LSTM layouts (flags as lstm_variants.py) ----
struct LstmLayout {
  bool has_i, has_f, has_o, coupled, in_act, out_act, peep, fgr, save;
  int64_t ii = -1, fi = -1, gi = -1, oi = -1, ng = 0;  // column block of each present gate
  int64_t pi = -1, pf = -1, po = -1;                   // block of each peephole in w_peep
  std::vector<int64_t> sig;                            // column blocks of the sigmoid gates (i, f, o)
  explicit LstmLayout(int64_t f)
      : has_i(f & 1), has_f(f & 2), has_o(f & 4), coupled(f & 8), in_act(f & 16), out_act(f & 32), peep(f & 64),
        fgr(f & 128), save(!(f & 1024)) {  // 1024: inference, nothing saved for backward
    if (has_i) ii = ng++;
    if (has_f) fi = ng++;
    gi = ng++;
    if (has_o) oi = ng++;
    for (int64_t k : {ii, fi, oi})
      if (k >= 0) sig.push_back(k);
    int64_t np = 0;
    if (peep) {
      if (has_i) pi = np++;
      if (has_f) pf = np++;
      if (has_o) po = np++;
    }
  }
};

std::vector<Tensor> forward_impl(const LstmLayout& L, const Tensor& xp, const Tensor& h0, const Tensor& c0,
                                 const Tensor& w_hh, const OptT& w_hr, const OptT& mask, const OptT& zh,
                                 const OptT& zc, const OptT& w_peep_, const OptT& a0, const OptT& w_gg,
                                 const OptT& zg, const Steps& steps, bool onednn, const OptT& x, const OptT& w_ih,
                                 const OptT& b_in) {
  // x given: the kernel computes xp = x W_ih^T + b itself, a chunk of steps at a time (InputChunks)
  const Tensor& ref = x.has_value() ? *x : xp;
  const int64_t N = ref.size(0), P = h0.size(1), B = h0.size(0), H = c0.size(1);
  const auto opt = ref.options();
  const std::optional<Linear> lin_r = w_hr.has_value() ? std::optional<Linear>(Linear(*w_hr, B, onednn)) : std::nullopt;
  // the buffers only backward reads: (N, .) when saving, else step-sized scratch (row offset 0)
  const int64_t NS = L.save ? N : B;
  Tensor hbuf = h0.clone(kRowMajor), cbuf = c0.clone(kRowMajor), out = at::empty({N, P}, opt), hprev = at::empty({NS, P}, opt);
  Tensor gates = at::empty({NS, L.ng * H}, opt), cprev = at::empty({NS, H}, opt), y = at::empty({NS, H}, opt);
  Tensor hraw = w_hr.has_value() ? at::empty({N, H}, opt) : none(xp);
  const bool peep_o = L.peep && L.has_o;
  Tensor cnew = peep_o ? at::empty({NS, H}, opt) : none(xp);
  Tensor w_peep = L.peep ? w_peep_->contiguous() : none(xp);
  // FGR: the sigmoid gates also see the previous gate state a_{t-1} through W_gg.
  const int64_t S = L.fgr ? a0->size(1) : 0, nsig = static_cast<int64_t>(L.sig.size());
  Tensor abuf = L.fgr ? a0->clone(kRowMajor) : none(xp), aprev = L.fgr ? at::empty({NS, S}, opt) : none(xp);
  const int64_t nfront = (L.has_i ? 1 : 0) + (L.has_f ? 1 : 0);  // i, f: the first blocks
  // Per step one parallel region (blocked.h): each thread runs the recurrent GEMM (and FGR's)
  // for the gates of its block of hidden units, then everything element-wise for them.
  const int64_t W = L.ng * H, parts = rnnkit_blk::blocks_for(B * P * W, W);
  const rnnkit_blk::GateBlocks wb(w_hh.contiguous(), L.ng, parts);
  const std::optional<rnnkit_blk::InputChunks> xin =
      x.has_value() ? std::optional<rnnkit_blk::InputChunks>(std::in_place, *w_ih, b_in, L.ng, parts, steps)
                    : std::nullopt;
  const std::optional<rnnkit_blk::GateBlocks> wg =
      L.fgr ? std::optional<rnnkit_blk::GateBlocks>(rnnkit_blk::GateBlocks(w_gg->contiguous(), nsig, parts))
            : std::nullopt;
  const bool proj = w_hr.has_value();
  const Tensor xc = ref.contiguous(), stepbuf = at::empty({xin ? 0 : B, W}, opt), recbuf = at::empty({B, S}, opt);
  const Tensor m = mask.has_value() ? mask->contiguous() : none(xp);
  const rnnkit_common::ZoneoutRows zhr(zh, B), zcr(zc, B), zgr(zg, B);
  AT_DISPATCH_FLOATING_TYPES(ref.scalar_type(), "rnnkit_lstm_v_fwd", [&] {
    using namespace rnnkit_pw;
    scalar_t *HB = hbuf.data_ptr<scalar_t>(), *C = cbuf.data_ptr<scalar_t>(), *GT = gates.data_ptr<scalar_t>();
    scalar_t *CPV = cprev.data_ptr<scalar_t>(), *YV = y.data_ptr<scalar_t>(), *O = out.data_ptr<scalar_t>();
    scalar_t *HPV = hprev.data_ptr<scalar_t>(), *HRV = proj ? hraw.data_ptr<scalar_t>() : O;
    scalar_t* CN = peep_o ? cnew.data_ptr<scalar_t>() : nullptr;
    const scalar_t* M = mask.has_value() ? m.data_ptr<scalar_t>() : nullptr;
    const scalar_t* PW = L.peep ? w_peep.data_ptr<scalar_t>() : nullptr;
    const scalar_t* XP = xc.data_ptr<scalar_t>();
    scalar_t *AB = stepbuf.data_ptr<scalar_t>(), *RB = L.fgr ? recbuf.data_ptr<scalar_t>() : nullptr;
    scalar_t *ABUF = L.fgr ? abuf.data_ptr<scalar_t>() : nullptr, *APV = L.fgr ? aprev.data_ptr<scalar_t>() : nullptr;
    for (size_t s = 0; s < steps.size(); ++s) {
      const int64_t off = steps[s].first, bs = steps[s].second;
      const scalar_t *ZH = zhr.at<scalar_t>(off), *ZC = zcr.at<scalar_t>(off), *ZG = zgr.at<scalar_t>(off);  // zoneout
      const int64_t so = L.save ? off : 0;  // first row of this step in the saved buffers
      scalar_t* HP = HPV + so * P;  // h_{t-1} (times the recurrent-dropout mask), as fed to the GEMM
      for (int64_t k = 0; k < bs * P; ++k) HP[k] = M ? HB[k] * M[k] : HB[k];
      scalar_t* AP = L.fgr ? APV + so * S : nullptr;  // a_{t-1}, the FGR gate state
      if (AP) std::copy(ABUF, ABUF + bs * S, AP);
      rnnkit_blk::each_block(wb.n(), bs * P * W, [&](int64_t k) {
        const int64_t j0 = wb.j[k], w = wb.width(k);
        // this block's (bs, ng w) pre-activations: the GEMM onto the input term (InputChunks), or
        // the GEMM alone and the input term added from xp below
        scalar_t* A = xin ? xin->step(k, s, off, XP) : AB + B * L.ng * j0;
        wb.gemm(k, HP, bs, A, xin.has_value());
        scalar_t* R = L.fgr ? RB + B * nsig * j0 : nullptr;  // (bs, nsig w): a_{t-1} W_gg^T
        if (R) wg->gemm(k, AP, bs, R);
        for (int64_t b = 0; b < bs; ++b) {
          const int64_t r = off + b;
          const int64_t rs = so + b;  // the row in the saved buffers
          scalar_t *ar = A + b * L.ng * w, *g = GT + rs * W + j0, *c = C + b * H + j0, *cp = CPV + rs * H + j0;
          scalar_t *yr = YV + rs * H + j0, *hr = HRV + r * H + j0;
          const scalar_t *xr = XP + r * W + j0, *pw = PW ? PW + j0 : nullptr;
          if (!xin)
            for (int64_t q = 0; q < L.ng; ++q)
              for (int64_t u = 0; u < w; ++u) ar[q * w + u] += xr[q * H + u];
          if (R)
            for (int64_t q = 0; q < nsig; ++q)
              for (int64_t u = 0; u < w; ++u) ar[L.sig[q] * w + u] += R[b * nsig * w + q * w + u];
          if (pw && L.has_i)
            for (int64_t u = 0; u < w; ++u) ar[L.ii * w + u] += pw[L.pi * H + u] * c[u];
          if (pw && L.has_f)
            for (int64_t u = 0; u < w; ++u) ar[L.fi * w + u] += pw[L.pf * H + u] * c[u];
          for (int64_t q = 0; q < nfront; ++q) sigmoid(ar + q * w, g + q * H, w);
          if (L.in_act)
            tanh(ar + L.gi * w, g + L.gi * H, w);
          else
            std::copy(ar + L.gi * w, ar + (L.gi + 1) * w, g + L.gi * H);
          if (L.has_o && !peep_o) sigmoid(ar + L.oi * w, g + L.oi * H, w);
          for (int64_t u = 0; u < w; ++u) {
            const scalar_t cv = c[u], z = g[L.gi * H + u];
            const scalar_t f = L.has_f ? g[L.fi * H + u] : scalar_t(1);
            const scalar_t i = L.has_i ? g[L.ii * H + u] : (L.coupled ? 1 - f : scalar_t(1));
            cp[u] = cv;
            c[u] = f * cv + i * z;
          }
          if (peep_o) {
            scalar_t* cn = CN + rs * H + j0;
            for (int64_t u = 0; u < w; ++u) {
              cn[u] = c[u];
              ar[L.oi * w + u] += pw[L.po * H + u] * c[u];
            }
            sigmoid(ar + L.oi * w, g + L.oi * H, w);
          }
          if (L.out_act)
            tanh(c, yr, w);
          else
            std::copy(c, c + w, yr);
          if (L.has_o)
            for (int64_t u = 0; u < w; ++u) hr[u] = g[L.oi * H + u] * yr[u];
          else
            std::copy(yr, yr + w, hr);
          if (ZC) {
            const scalar_t* z = ZC + b * H + j0;
            for (int64_t u = 0; u < w; ++u) c[u] = lerp(c[u], cp[u], z[u]);
          }
          if (!proj) {  // h_t = lerp(h~_t, h_{t-1}, zh) (zoneout), into out (== hraw) and hbuf
            scalar_t* hb = HB + b * P + j0;
            const scalar_t* z = ZH ? ZH + b * P + j0 : nullptr;
            for (int64_t u = 0; u < w; ++u) hb[u] = hr[u] = z ? lerp(hr[u], hb[u], z[u]) : hr[u];
          }
          if (L.fgr)  // the next gate state a_t = lerp([i, f, o]_t, a_{t-1}, zg)
            for (int64_t q = 0; q < nsig; ++q) {
              const int64_t at = b * S + q * H + j0;
              for (int64_t u = 0; u < w; ++u) {
                const scalar_t v = g[L.sig[q] * H + u];
                ABUF[at + u] = ZG ? lerp(v, AP[at + u], ZG[at + u]) : v;
              }
            }
        }
      });
      if (proj) {
        out.narrow(0, off, bs).copy_((*lin_r)(hraw.narrow(0, off, bs)));
        // zoneout on h (after the projection): h_t = lerp(h~_t, h_{t-1}, zh); then h_t -> hbuf
        scalar_t* o = O + off * P;
        for (int64_t k = 0; k < bs * P; ++k) HB[k] = o[k] = ZH ? lerp(o[k], HB[k], ZH[k]) : o[k];
      }
    }
  });
  return {out, hbuf, cbuf, abuf, gates, cprev, y, hprev, hraw, cnew, aprev};
}

std::vector<Tensor> backward_impl(const LstmLayout& L, const Tensor& gout, const Tensor& ghn, const Tensor& gcn,
                                  const Tensor& gan, const std::vector<Tensor>& saved, const Tensor& w_hh,
                                  const OptT& w_hr, const OptT& mask, const OptT& zh, const OptT& zc,
                                  const OptT& w_peep_, const OptT& w_gg, const OptT& zg, const Steps& steps,
                                  bool onednn) {
  const Tensor &gates = saved[0], &cprev = saved[1], &y = saved[2], &hprev = saved[3], &hraw = saved[4];
  const Tensor &cnew = saved[5], &aprev = saved[6];
  const int64_t B = ghn.size(0), P = ghn.size(1), H = y.size(1), W = L.ng * H;
  const bool proj = w_hr.has_value(), peep_o = L.peep && L.has_o;
  const std::optional<Linear> lin_rt = proj ? std::optional<Linear>(Linear(w_hr->t(), B, onednn)) : std::nullopt;
  Tensor dhbuf = ghn.clone(kRowMajor), dcbuf = gcn.clone(kRowMajor), dgates = at::empty_like(gates, kRowMajor);
  Tensor dh_all = proj ? at::empty({hprev.size(0), P}, gates.options()) : none(gates), dht = at::empty_like(ghn, kRowMajor);
  Tensor dhz = zh.has_value() ? at::empty_like(ghn, kRowMajor) : none(ghn);
  Tensor w_peep = L.peep ? w_peep_->contiguous() : none(gates);
  // FGR: running gradient of the gate state (dabuf), its part through [i, f, o]_t (dacts),
  // zoneout's direct part (daz), and the sigmoid gates' gradients stacked for dW_gg (dsig).
  const int64_t S = L.fgr ? aprev.size(1) : 0;
  Tensor dabuf = L.fgr ? gan.clone(kRowMajor) : none(gates), dacts = at::empty({B, S}, gates.options());
  Tensor daz = at::empty({B, S}, gates.options()), dsig = at::empty({L.fgr ? aprev.size(0) : 0, S}, gates.options());
  const Tensor wgc = L.fgr ? w_gg->contiguous() : none(gates);
  int64_t qi = -1, qf = -1, qo = -1;  // position of each sigmoid gate in the gate state
  for (size_t q = 0; q < L.sig.size(); ++q) {
    if (L.sig[q] == L.ii) qi = q;
    if (L.sig[q] == L.fi) qf = q;
    if (L.sig[q] == L.oi) qo = q;
  }
  const Tensor goc = gout.contiguous(), wc = w_hh.contiguous(), m = mask.has_value() ? mask->contiguous() : none(gates);
  const rnnkit_common::ZoneoutRows zhr(zh, B), zcr(zc, B), zgr(zg, B);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "rnnkit_lstm_v_bwd", [&] {
    const scalar_t *GOV = goc.data_ptr<scalar_t>(), *WH = wc.data_ptr<scalar_t>();
    scalar_t *DHB = dhbuf.data_ptr<scalar_t>(), *DHT = dht.data_ptr<scalar_t>();
    scalar_t* DHZ = zh.has_value() ? dhz.data_ptr<scalar_t>() : nullptr;
    const scalar_t* M = mask.has_value() ? m.data_ptr<scalar_t>() : nullptr;
    const std::vector<int64_t> pcols = rnnkit_blk::split(P, rnnkit_blk::blocks_for(B * P * W, P));
    const std::vector<int64_t> scols = rnnkit_blk::split(S, rnnkit_blk::blocks_for(B * S * S, S));
    const scalar_t* WG = L.fgr ? wgc.data_ptr<scalar_t>() : nullptr;
    for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
      const int64_t off = it->first, bs = it->second;
      const scalar_t *ZH = zhr.at<scalar_t>(off), *ZC = zcr.at<scalar_t>(off);  // zoneout: the step's rows
      const scalar_t* GO = GOV + off * P;
      Tensor d;  // dL/d(o ⊙ y) for the active rows, when materialized (zoneout on h, projection)
      const scalar_t* DH = rnnkit_row::lstm_step_dh(off, bs, P, GO, DHB, ZH, DHZ, DHT,
                                                    dh_all, lin_rt, w_hr, d);
      const scalar_t* DA = nullptr;
      if (L.fgr) {  // a_t = lerp([i, f, o]_t, a_{t-1}, zg): split the gradient (direct part -> daz)
        scalar_t *da = dacts.data_ptr<scalar_t>(), *dz = daz.data_ptr<scalar_t>();
        rnnkit_pw::dh_step(bs * S, dabuf.data_ptr<scalar_t>(), static_cast<const scalar_t*>(nullptr),
                           zgr.at<scalar_t>(off), dz, da);
        DA = da;
      }
      const scalar_t* G = gates.data_ptr<scalar_t>() + off * W;
      const scalar_t* CP = cprev.data_ptr<scalar_t>() + off * H;
      const scalar_t* Y = y.data_ptr<scalar_t>() + off * H;
      scalar_t* DG = dgates.data_ptr<scalar_t>() + off * W;
      scalar_t* DC = dcbuf.data_ptr<scalar_t>();
      const scalar_t* PW = L.peep ? w_peep.data_ptr<scalar_t>() : nullptr;
      rows(bs, W, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const scalar_t* g = G + b * W;
          scalar_t* dg = DG + b * W;
          const scalar_t* zc_row = ZC ? ZC + b * H : nullptr;
          for (int64_t j = 0; j < H; ++j) {
            const int64_t k = b * H + j;
            const scalar_t dh = DH ? DH[k] : GO[k] + DHB[k], yv = Y[k];
            // c_t = lerp(c~_t, c_{t-1}, zc): dL/dc~ = dc - dc ⊙ zc; dc ⊙ zc goes straight to c_{t-1}
            const scalar_t dcz = zc_row ? DC[k] * zc_row[j] : scalar_t(0);
            scalar_t dy = dh, dop = 0;
            if (L.has_o) {
              const scalar_t o = g[L.oi * H + j];
              dop = (DA ? dh * yv + DA[b * S + qo * H + j] : dh * yv) * (o - o * o);
              dg[L.oi * H + j] = dop;
              dy = dh * o;
            }
            scalar_t dc = (zc_row ? DC[k] - dcz : DC[k]) + (L.out_act ? dy * (1 - yv * yv) : dy);
            if (peep_o) dc += dop * PW[L.po * H + j];
            const scalar_t z = g[L.gi * H + j], f = L.has_f ? g[L.fi * H + j] : scalar_t(1);
            const scalar_t i = L.has_i ? g[L.ii * H + j] : (L.coupled ? 1 - f : scalar_t(1));
            const scalar_t dz = dc * i;
            dg[L.gi * H + j] = L.in_act ? dz * (1 - z * z) : dz;
            scalar_t dcn = L.has_f ? dc * f : dc;
            if (L.has_i) {
              const scalar_t dip = (DA ? dc * z + DA[b * S + qi * H + j] : dc * z) * (i - i * i);
              dg[L.ii * H + j] = dip;
              if (L.peep) dcn += dip * PW[L.pi * H + j];
            }
            if (L.has_f) {
              scalar_t dfv = L.coupled ? dc * CP[k] - dc * z : dc * CP[k];
              if (DA) dfv += DA[b * S + qf * H + j];
              const scalar_t dfp = dfv * (f - f * f);
              dg[L.fi * H + j] = dfp;
              if (L.peep) dcn += dfp * PW[L.pf * H + j];
            }
            DC[k] = zc_row ? dcn + dcz : dcn;
          }
        }
      });
      // dh_{t-1} = (da W_hh) ⊙ m (+ zoneout's direct part), split over blocks of columns of W_hh
      rnnkit_blk::each_block(static_cast<int64_t>(pcols.size()) - 1, bs * P * W, [&](int64_t k) {
        const int64_t p0 = pcols[k], pw = pcols[k + 1] - p0;
        rnnkit_blk::gemm_ld(DG, W, WH + p0, P, DHB + p0, P, bs, pw, W);
        if (M || DHZ)
          for (int64_t b = 0; b < bs; ++b)
            for (int64_t q = b * P + p0; q < b * P + p0 + pw; ++q) {
              const scalar_t v = M ? DHB[q] * M[q] : DHB[q];
              DHB[q] = DHZ ? v + DHZ[q] : v;
            }
      });
      if (L.fgr) {  // a_{t-1} fed the sigmoid gates through W_gg (and zoneout): da_{t-1} = dsig W_gg (+ direct)
        scalar_t *DS = dsig.data_ptr<scalar_t>() + off * S, *DAB = dabuf.data_ptr<scalar_t>();
        const scalar_t* DZ = daz.data_ptr<scalar_t>();
        for (int64_t b = 0; b < bs; ++b)
          for (int64_t q = 0; q < static_cast<int64_t>(L.sig.size()); ++q)
            std::copy(DG + b * W + L.sig[q] * H, DG + b * W + (L.sig[q] + 1) * H, DS + b * S + q * H);
        rnnkit_blk::each_block(static_cast<int64_t>(scols.size()) - 1, bs * S * S, [&](int64_t k) {
          const int64_t s0 = scols[k], sw = scols[k + 1] - s0;
          rnnkit_blk::gemm_ld(DS, S, WG + s0, S, DAB + s0, S, bs, sw, S);
          if (zg.has_value())
            for (int64_t b = 0; b < bs; ++b)
              for (int64_t q = b * S + s0; q < b * S + s0 + sw; ++q) DAB[q] += DZ[q];
        });
      }
    }
  });
  Tensor dw_hr = proj ? mm_tn(dh_all, hraw, onednn) : none(gates), dw_peep = none(gates);
  if (L.peep) {
    std::vector<Tensor> parts;
    if (L.has_i) parts.push_back((dgates.narrow(1, L.ii * H, H) * cprev).sum(0));
    if (L.has_f) parts.push_back((dgates.narrow(1, L.fi * H, H) * cprev).sum(0));
    if (L.has_o) parts.push_back((dgates.narrow(1, L.oi * H, H) * cnew).sum(0));
    dw_peep = at::cat(parts);
  }
  Tensor dw_gg = L.fgr ? mm_tn(dsig, aprev, onednn) : none(gates);
  return {dgates, dhbuf, dcbuf, dabuf, mm_tn(dgates, hprev, onednn), none(gates), dw_hr, dw_peep, dw_gg};
}

