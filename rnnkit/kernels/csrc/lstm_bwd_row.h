// One row of the LSTM backward step for one block of hidden units u in [0, w) (gate blocks H
// apart): every gate gradient and the cell gradient, templated on the options so that the loop
// has no branch and vectorizes. Included twice by lstm_row.h: for the baseline ISA and, chosen
// at run time, compiled for AVX-512 (4x the width of the baseline's SSE2 vectors). No
// -ffast-math: the same arithmetic, in the same order, as the scalar loop (with AVX-512 the
// compiler may fuse a multiply and an add: last-bit differences only). dh: the materialized
// dL/d(o ⊙ tanh c) row (kDH), else gout's row with dhb, the running dh, added.
// (No include guard on purpose.)
template <typename T, bool kDH, bool kZC, bool kPI>
void lstm_bwd_row(int64_t w, int64_t H, const T* __restrict__ g, const T* __restrict__ dh_, const T* __restrict__ dhb,
                  const T* __restrict__ tc_, const T* __restrict__ cp, const T* __restrict__ zc,
                  const T* __restrict__ pw, T* __restrict__ dg, T* __restrict__ dcv) {
  for (int64_t j = 0; j < w; ++j) {
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
