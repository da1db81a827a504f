// The element-wise rows of the normalized LSTM's backward step (norm_bwd.cpp), for one batch row
// of H units, templated on the options so that the loops have no branch and vectorize. Included
// twice by norm_bwd.cpp: for the baseline ISA and, chosen at run time, compiled for AVX-512 (4x
// the width of the baseline's SSE2 vectors: at the medium shape these loops were ~7% of a
// layer-norm LSTM's training step on one core). The same arithmetic, in the same order, as
// norm.py (with AVX-512 the compiler may fuse a multiply and an add: last-bit differences only).
// The cell norm's backward runs between the two (it needs the whole row, or the whole step).
// (No include guard on purpose.)

// Before the cell norm: zoneout's split of dc (c_t = lerp(c~_t, c_{t-1}, zc): the direct part
// dc ⊙ zc waits in dcz), d o' = dh tanh(y_c) o (1 - o) and d y_c = dh o (1 - tanh²(y_c)).
template <typename T, bool kZC>
void norm_lstm_bwd_out(int64_t H, const T* __restrict__ g, const T* __restrict__ tc, const T* __restrict__ dh,
                       const T* __restrict__ zc, T* __restrict__ dc, T* __restrict__ dcz, T* __restrict__ dgo,
                       T* __restrict__ dy) {
  for (int64_t j = 0; j < H; ++j) {
    if (kZC) {
      dcz[j] = dc[j] * zc[j];
      dc[j] -= dcz[j];
    }
    const T ov = g[3 * H + j], t = tc[j];
    dgo[j] = (ov - ov * ov) * dh[j] * t;
    dy[j] = (1 - t * t) * ov * dh[j];
  }
}

// After it (dn: the cell norm's input gradient): the cell's gradient d = dc + dn (+ o's peephole
// on c~_t), the gates i, f, g, and dc_{t-1} = d f (+ i's and f's peepholes on c_{t-1}) (+ dcz).
template <typename T, bool kPI, bool kZC>
void norm_lstm_bwd_gates(int64_t H, const T* __restrict__ g, const T* __restrict__ cp, const T* __restrict__ dn,
                         const T* __restrict__ pw, const T* __restrict__ dcz, T* __restrict__ dc,
                         T* __restrict__ dg) {
  for (int64_t j = 0; j < H; ++j) {
    const T i = g[j], f = g[H + j], gg = g[2 * H + j];
    const T d = kPI ? dc[j] + dn[j] + dg[3 * H + j] * pw[2 * H + j] : dc[j] + dn[j];
    const T di = (i - i * i) * gg * d, df = (f - f * f) * cp[j] * d;
    dg[j] = di;
    dg[H + j] = df;
    dg[2 * H + j] = (1 - gg * gg) * i * d;
    const T dcp = kPI ? d * f + di * pw[j] + df * pw[H + j] : d * f;
    dc[j] = kZC ? dcp + dcz[j] : dcp;
  }
}
