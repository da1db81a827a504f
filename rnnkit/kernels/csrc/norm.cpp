// rnnkit fused directions of the normalized cells (layer norm, recurrent batch norm): the
// forward (this file) and explicit BPTT (norm_bwd.cpp), looping over time in C++.
//
// The same buffers, schedule and equations as rnnkit/kernels/norm.py (see there), so the same
// numbers up to rounding (float64: 1e-12, batch norm of a few rows 1e-10). Per step, with no
// Tensor created: h_{t-1} (times the dropout mask) -> the recurrent group r_t = h W_hh^T
// (csrc/norm_kernels.h step_xwt: brgemm for float32, dgemm for float64) -> one pass per row:
// the normalization of r_t (mode 1 layer norm: the row's own statistics;
// 2 batch norm: the step's column statistics, computed just before; 3 the running statistics of the row's slot)
// with gain, shift and the added terms, the gate activations (SLEEF, pointwise.h), the cell
// update, the cell's normalization and tanh, the output and zoneout. Threads: layer norm and
// batch norm in evaluation give each thread one block of batch rows for the whole loop
// (over_steps; a row depends only on its own past). The batch-norm LSTM in training keeps the
// row blocks as a team that meets at two barriers a step to combine its column statistics
// (norm_team.h); the GRU/RNN kernels' batch-norm mode (the op's, unused by the layers) splits
// each step instead (the GEMM by output columns, the row passes by rows).
// kind: "lstm", "gru" (torch form), "rnn_tanh", "rnn_relu".
#include <torch/library.h>

#include "norm_checks.h"
#include "norm_team.h"

namespace rnnkit_norm {
namespace {

using rnnkit_pw::lerp;
constexpr int64_t kInChunk = 8;  // steps per chunk of the in-kernel input group (dense input)

std::vector<Tensor> forward(std::string kind, int64_t mode, const Tensor& xp_, const Tensor& h0, const OptT& c0,
                            const Tensor& w_hh, const OptT& b_hh, const OptT& w_hr, const OptT& mask_,
                            const OptT& zh_, const OptT& zc_, const Tensor& g_hh, const OptT& s_hh,
                            const OptT& g_c, const OptT& s_c, const OptT& st_hh, const OptT& st_c,
                            const OptT& w_peep, const OptT& x_in, const OptT& w_ih, const OptT& g_ih,
                            const OptT& s_ih, std::vector<int64_t> batch_sizes, bool reverse, bool onednn,
                            bool save, const std::optional<std::vector<Tensor>>& running_, double momentum) {
  (void)onednn;  // the step GEMMs are raw brgemm/dgemm calls (norm_kernels.h)
  // kColHprev in `mode` (LSTM, RNN): h_{t-1} saved column-major, (N, P) with strides (1, N), so
  // that backward's dW_hh = dr^T h_{t-1} reads it without oneDNN's transposed copy (~0.75 ms
  // of a medium training step); each step's GEMM reads a row-major (B, P) copy. The GRU reads
  // h_{t-1} row by row in backward: row-major.
  const bool col = save && (mode & kColHprev) && kind != "gru";
  mode &= ~kColHprev;
  check_forward(kind, mode, xp_, h0, c0, w_hh, b_hh, w_hr, mask_, zh_, zc_, g_hh, s_hh, g_c, s_c, st_hh, st_c, w_peep,
                x_in, w_ih, g_ih, s_ih);
  // x_in given (layer-norm LSTM, batch-norm LSTM in training; eager): the kernel computes the
  // input group itself a chunk of steps ahead, xp = norm(x W_ih^T; g_ih, s_ih) (s_ih: the shift
  // with the biases folded in), instead of reading an (N, G) xp written and read back through
  // memory. Layer norm: each thread for its rows; batch norm: each thread its rows of the chunk
  // (the team, norm_team.h), then each step's column statistics from the team's partial sums
  // and the rows. With `save` it returns x^ and 1/std (a row's; a step's column's, processing
  // order) for backward (rnnkit_norm::ln_input_backward / bn_input_backward), and batch norm
  // the steps' mean and biased variance for the running statistics (norm_in_kernel.py).
  const bool proj_in = x_in.has_value();
  TORCH_CHECK(!proj_in || (kind == "lstm" && (mode == kLN || mode == kBNTrain) && w_ih.has_value() && g_ih.has_value()),
              "rnnkit_norm::forward: x_in is for the layer-norm LSTM and the batch-norm LSTM in training, with "
              "w_ih and g_ih");
  // `running` (eager batch-norm LSTM in training with x_in): the running mean and variance of
  // the hh, c and ih groups, updated here after the loop as rnnkit_norm::update_running does
  // (one op call and its Python glue less: ~15 us of a small layer's ~400 us forward)
  const std::vector<Tensor> running = running_.value_or(std::vector<Tensor>{});
  TORCH_CHECK(running.empty() || (proj_in && mode == kBNTrain && running.size() == 6),
              "rnnkit_norm::forward: running is [mean, var] of the hh, c and ih groups (6 tensors) of the "
              "batch-norm LSTM in training with x_in, got ", running.size(), " tensors");
  const int64_t N = proj_in ? x_in->size(0) : xp_.size(0), B = h0.size(0), P = h0.size(1), T = batch_sizes.size(),
                G = w_hh.size(0);
  check_batch_sizes("rnnkit_norm::forward", batch_sizes, N, B);
  // Without `save` (inference) the tensors that only backward reads (x^, gates, c_{t-1}, ...)
  // are step-sized scratch, (B, F) rather than (N, F): at the medium shape ~40 MB less to
  // allocate and fault in per call. Step k's rows live at [so, so + bs), so = off or 0.
  const int64_t NS = save ? N : B;
  auto o = h0.options();
  auto e = [&] { return none(h0); };  // a fresh placeholder each time: outputs may not alias
  auto cont = [&](const OptT& t) { return t.has_value() ? OptT(t->contiguous()) : t; };
  const Tensor xp = xp_.contiguous(), W = w_hh.contiguous();
  const Tensor WT = xp.scalar_type() == at::kFloat ? rnnkit_common::transposed(w_hh) : W;  // brgemm reads W^T (P, G)
  const OptT mask = cont(mask_), gh = cont(g_hh), sh = cont(s_hh);
  const rnnkit_common::ZoneoutRows zhr(zh_, B), zcr(zc_, B);  // a step's rows at zhr.at(off)
  const OptT sth = cont(st_hh), stc = cont(st_c);
  const std::vector<int64_t> slots = eval_slots(mode, sth, batch_sizes, reverse);
  Tensor hbuf = h0.clone(kRowMajor), out = at::empty({N, P}, o), rbuf = at::empty({B, G}, o);
  Tensor hprev = col ? at::empty({P, N}, o).t() : at::empty({NS, P}, o), hstep = col ? at::empty({B, P}, o) : e();
  auto group = [&](int64_t F) {  // x^, rho, mean, var
    return std::vector<Tensor>{at::empty({NS, F}, o),
                               mode == kLN ? at::empty({N, 1}, o) : mode == kBNTrain ? at::empty({T, F}, o) : e(),
                               mode == kBNTrain ? at::empty({T, F}, o) : e(),
                               mode == kBNTrain ? at::empty({T, F}, o) : e()};
  };
  const auto hh = group(G);
  const auto steps = schedule(batch_sizes, reverse);
  std::vector<Tensor> res;
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "rnnkit_norm_fwd", [&] {
    using T_ = scalar_t;
    using namespace rnnkit_pw;
    const NormG<T_> nh(mode, G, hh[0], hh[1], hh[2], hh[3], *gh, sh, sth, slots);
    T_ *HB = hbuf.data_ptr<T_>(), *O = out.data_ptr<T_>(), *HPV = hprev.data_ptr<T_>(), *R = rbuf.data_ptr<T_>();
    const T_ *XP = xp.data_ptr<T_>(), *Wp = W.data_ptr<T_>(), *WTp = WT.data_ptr<T_>();
    const T_* M = ptr<T_>(mask);
    T_* HS = col ? hstep.data_ptr<T_>() : nullptr;
    // h_{t-1} ⊙ m of rows [r0, r1) into the (B, P) rows the step GEMM reads (returned), and into
    // the saved h_{t-1}: row-major in place, or column-major from that copy
    auto load_h = [&](int64_t so, int64_t off, int64_t r0, int64_t r1) {
      T_* HP = col ? HS : HPV + so * P;
      for (int64_t i = r0 * P; i < r1 * P; ++i) HP[i] = M ? HB[i] * M[i] : HB[i];
      if (col) rnnkit_common::transpose_rows(HP, HPV + off, N, P, r0, r1);  // HPV[j N + off + b] = HP[b P + j]
      return HP;
    };
    if (kind == "lstm") {
      const int64_t H = c0->size(1), G4 = 4 * H;
      const bool proj = w_hr.has_value();
      const auto cg = group(H);
      const Tensor gcc = g_c->contiguous();
      const OptT scc = cont(s_c);
      const NormG<T_> nc(mode, H, cg[0], cg[1], cg[2], cg[3], gcc, scc, stc, slots);
      Tensor gates = at::empty({NS, G4}, o), cprev = at::empty({NS, H}, o), tanhc = at::empty({NS, H}, o);
      Tensor hraw = proj ? at::empty({NS, H}, o) : e(), cbuf = c0->clone(kRowMajor);
      const Tensor WR = proj ? w_hr->contiguous() : e();
      const Tensor WRT = proj && xp.scalar_type() == at::kFloat ? rnnkit_common::transposed(*w_hr) : WR;
      const OptT wpc = cont(w_peep);
      const T_* PW = ptr<T_>(wpc);  // peepholes (3H: i, f, o), or null
      T_ *C = cbuf.data_ptr<T_>(), *GT = gates.data_ptr<T_>(), *CPV = cprev.data_ptr<T_>();
      T_ *TCV = tanhc.data_ptr<T_>(), *HRW = proj ? hraw.data_ptr<T_>() : nullptr;
      // The input group computed here (proj_in): a = x W_ih^T (the chunk's scratch), its x^
      // (saved with `save`, else the chunk's scratch) and 1/std (layer norm a row's, batch norm
      // a step's column's, with the step's mean and variance), the chunk's normalized rows yp.
      // Dense input: a chunk of kInChunk steps at a time, one GEMM over a thread's rows of them
      // (xg below); packed: step by step (a thread's rows of a later step are known only then).
      const int64_t I = proj_in ? x_in->size(1) : 0;
      const bool dense = std::all_of(batch_sizes.begin(), batch_sizes.end(), [&](int64_t b) { return b == B; });
      const int64_t K = proj_in && dense ? std::min<int64_t>(kInChunk, T) : 1;
      const int64_t mi = mode == kBNTrain ? kBNTrain : kLN;  // the input group's norm
      auto ist = [&](int64_t rows, int64_t F) { return proj_in ? at::empty({rows, F}, o) : e(); };
      Tensor a_ih = ist(K * B, G4), xs_ih = ist(save ? N : K * B, G4), yp = ist(K * B, G4);
      Tensor rs_ih = mi == kLN ? ist(N, 1) : ist(T, G4), mean_ih = mi == kLN ? e() : ist(T, G4);
      Tensor var_ih = mi == kLN ? e() : ist(T, G4);
      auto xs_row = [&](int64_t oq, int64_t jq, int64_t b) { return save ? oq + b : jq * B + b; };
      Tensor xg = proj_in && K > 1 ? at::empty({K * B, I}, o) : e();
      const Tensor XI = proj_in ? x_in->contiguous() : e(), WI = proj_in ? w_ih->contiguous() : e();
      const Tensor WIT = proj_in && xp.scalar_type() == at::kFloat ? rnnkit_common::transposed(*w_ih) : WI;
      const OptT gic = cont(g_ih), sic = cont(s_ih);
      T_ *AI = proj_in ? a_ih.data_ptr<T_>() : nullptr, *YP = proj_in ? yp.data_ptr<T_>() : nullptr;
      const NormG<T_> ni(mi, G4, xs_ih, rs_ih, mean_ih, var_ih, proj_in ? *gic : gcc, sic, std::nullopt);
      // The input group of the chunk of steps opening at step k, rows [r0, r1): one GEMM over
      // them (dense input: their x gathered into xg, a into a_ih at rows [K r0, K r1)), or one
      // a step (packed: a thread's rows of a later step are known only then). in_a: row r0 of
      // step q's a. Per step, the dense GEMM had a step's rows only (16 in a medium call on 2
      // threads), too few for brgemm to run near its peak.
      auto in_a = [&](int64_t k, int64_t q, int64_t r0, int64_t r1) {
        return AI + (K > 1 ? K * r0 + (q - k) * (r1 - r0) : (q - k) * B + r0) * G4;
      };
      auto in_project = [&](int64_t k, int64_t r0, int64_t r1) {
        const int64_t q1 = std::min(k + K, T), nr = r1 - r0;
        if (nr == 0) return;
        if (K > 1) {
          T_* XG = xg.data_ptr<T_>() + K * r0 * I;
          for (int64_t q = k; q < q1; ++q)
            std::copy_n(XI.data_ptr<T_>() + (steps[q].first + r0) * I, nr * I, XG + (q - k) * nr * I);
          step_xwt(XG, WI.data_ptr<T_>(), WIT.data_ptr<T_>(), in_a(k, k, r0, r1), (q1 - k) * nr, G4, I);
        } else
          for (int64_t q = k; q < q1; ++q)
            step_xwt(XI.data_ptr<T_>() + (steps[q].first + r0) * I, WI.data_ptr<T_>(), WIT.data_ptr<T_>(),
                     in_a(k, q, r0, r1), nr, G4, I);
      };
      // the normalized input rows [r0, r1) of chunk step q (st: batch norm's team statistics)
      auto in_rows = [&](int64_t k, int64_t q, int64_t r0, int64_t r1, const T_* st) {
        const int64_t oq = steps[q].first, jq = q - k;
        const T_* A = in_a(k, q, r0, r1);
        for (int64_t b = r0; b < r1; ++b)
          ni.row(A + (b - r0) * G4, oq + b, xs_row(oq, jq, b), q, nullptr, nullptr, YP + (jq * B + b) * G4, st);
      };
      // Row b of step k: a = norm_hh(r) + the input group, the gates and the cell's c_t
      // (st: batch norm's team statistics of r_t).
      auto gate_row = [&](int64_t k, int64_t b, const T_* st) {
        const int64_t off = steps[k].first, n = off + b, ns = (save ? off : 0) + b;
        T_ *r = R + b * G4, *g = GT + ns * G4, *c = C + b * H, *cp = CPV + ns * H;
        nh.row(r, n, ns, k, proj_in ? YP + ((k % K) * B + b) * G4 : XP + n * G4, nullptr, r, st);
        if (PW)  // peepholes after the normalization (cells/greff.py): i, f see c_{t-1}
          for (int64_t j = 0; j < H; ++j) {
            r[j] += PW[j] * c[j];
            r[H + j] += PW[H + j] * c[j];
          }
        sigmoid(r, g, 2 * H);
        tanh(r + 2 * H, g + 2 * H, H);
        if (!PW) sigmoid(r + 3 * H, g + 3 * H, H);
        for (int64_t j = 0; j < H; ++j) {
          const T_ cv = c[j];
          cp[j] = cv;
          c[j] = g[H + j] * cv + g[j] * g[2 * H + j];
        }
        if (PW) {  // o sees the candidate c~_t (before zoneout)
          for (int64_t j = 0; j < H; ++j) r[3 * H + j] += PW[2 * H + j] * c[j];
          sigmoid(r + 3 * H, g + 3 * H, H);
        }
      };
      // h_t of row b from its normalized cell: tanh(norm_c(c_t)), o ⊙ it, zoneout on c (and on
      // h without projection) (st: batch norm's team statistics of c_t)
      auto out_row = [&](int64_t k, int64_t b, const T_* st) {
        const int64_t off = steps[k].first, n = off + b, ns = (save ? off : 0) + b;
        const T_ *ZH = zhr.at<T_>(off), *ZC = zcr.at<T_>(off);  // zoneout: the step's rows
        T_ *c = C + b * H, *tc = TCV + ns * H, *hr = proj ? HRW + ns * H : O + n * H;
        const T_* g = GT + ns * G4;
        nc.row(c, n, ns, k, nullptr, nullptr, tc, st);
        tanh(tc, tc, H);
        for (int64_t j = 0; j < H; ++j) hr[j] = g[3 * H + j] * tc[j];
        if (ZC) {
          const T_ *cp = CPV + ns * H, *z = ZC + b * H;
          for (int64_t j = 0; j < H; ++j) c[j] = lerp(c[j], cp[j], z[j]);
        }
        if (!proj)
          for (int64_t j = 0; j < H; ++j) HB[b * H + j] = hr[j] = ZH ? lerp(hr[j], HB[b * H + j], ZH[b * H + j]) : hr[j];
      };
      auto proj_rows = [&](int64_t k, int64_t r0, int64_t r1) {  // out = hraw W_hr^T, then zoneout on h
        const int64_t off = steps[k].first, so = save ? off : 0;
        const T_* ZH = zhr.at<T_>(off);
        T_* y = O + off * P;
        step_xwt(HRW + (so + r0) * H, WR.data_ptr<T_>(), WRT.data_ptr<T_>(), y + r0 * P, r1 - r0, P, H);
        for (int64_t i = r0 * P; i < r1 * P; ++i) HB[i] = y[i] = ZH ? lerp(y[i], HB[i], ZH[i]) : y[i];
      };
      if (mode != kBNTrain) {  // layer norm, batch norm in evaluation: a block of rows a thread
        over_steps(true, B, G4, steps, false, [&](int64_t k, int64_t r0, int64_t r1) {
          const int64_t off = steps[k].first, so = save ? off : 0, nr = r1 - r0;
          if (proj_in && k % K == 0) {
            in_project(k, r0, r1);
            for (int64_t q = k; q < std::min(k + K, T); ++q) in_rows(k, q, r0, r1, nullptr);
          }
          const T_* HP = load_h(so, off, r0, r1);
          step_xwt(HP + r0 * P, Wp, WTp, R + r0 * G4, nr, G4, P);
          prows(nr, G4, [&](int64_t b0, int64_t b1) {
            for (int64_t b = r0 + b0; b < r0 + b1; ++b) {
              gate_row(k, b, nullptr);
              out_row(k, b, nullptr);
            }
          });
          if (proj) proj_rows(k, r0, r1);
        });
      } else {  // batch norm in training: a team of row blocks meeting at the statistics (norm_team.h)
        const int64_t nmax = std::max<int64_t>(1, at::get_num_threads());
        TeamStats<T_> ts_in(G4, nmax, proj_in ? K : 0), ts_hh(G4, nmax), ts_c(H, nmax);
        auto saved = [](const NormG<T_>& ng, int64_t k, bool w) {  // the step's saved statistics (thread 0)
          const int64_t o = k * ng.F;
          return std::array<T_*, 3>{w ? ng.MEAN + o : nullptr, w ? ng.VAR + o : nullptr, w ? ng.RS + o : nullptr};
        };
        over_steps_team(B, G4, steps, 2, [&](int64_t k, int ph, int64_t b0, int64_t b1, int64_t t, int64_t nt) {
          const bool w = t == 0;
          if (ph == 0 && k > 0) {  // close step k - 1: its cell statistics, h
            const int64_t kp = k - 1, e = std::max(b0, std::min(b1, steps[kp].second));
            const auto sv = saved(nc, kp, w);
            const T_* st = ts_c.combine(t, nt, 0, sv[0], sv[1], sv[2]);
            for (int64_t b = b0; b < e; ++b) out_row(kp, b, st);
            if (proj && e > b0) proj_rows(kp, b0, e);
          }
          if (k == T) return;
          const int64_t off = steps[k].first, so = save ? off : 0;
          const int64_t r1 = std::max(b0, std::min(b1, steps[k].second)), nr = r1 - b0;
          const bool chunk = proj_in && k % K == 0;
          const int64_t q1 = chunk ? std::min(k + K, T) : k;
          if (ph == 0) {  // open step k: the input group's chunk and r_t, their partial sums
            if (chunk) {
              in_project(k, b0, r1);
              for (int64_t q = k; q < q1; ++q) ts_in.sum(t, in_a(k, q, b0, r1), G4, nr, q - k);
            }
            const T_* HP = load_h(so, off, b0, r1);
            if (nr) step_xwt(HP + b0 * P, Wp, WTp, R + b0 * G4, nr, G4, P);
            ts_hh.sum(t, R + b0 * G4, G4, nr);
          } else {  // normalize them with the team's statistics, the gates, c_t's partial sums
            for (int64_t q = k; q < q1; ++q) {
              const auto sv = saved(ni, q, w);
              in_rows(k, q, b0, r1, ts_in.combine(t, nt, q - k, sv[0], sv[1], sv[2]));
            }
            const auto sv = saved(nh, k, w);
            const T_* st = ts_hh.combine(t, nt, 0, sv[0], sv[1], sv[2]);
            for (int64_t b = b0; b < r1; ++b) gate_row(k, b, st);
            ts_c.sum(t, C + b0 * H, H, nr);
          }
        });
      }
      res = {out, hbuf, cbuf, hh[2], hh[3], cg[2], cg[3], gates, cprev, tanhc, hprev, hraw, hh[0], hh[1],
             cg[0], cg[1]};
      if (proj_in && save) res.insert(res.end(), {xs_ih, rs_ih});  // after the saved tensors
      if (proj_in && mi == kBNTrain) res.insert(res.end(), {mean_ih, var_ih});  // also without `save`
      if (!running.empty()) {  // the steps' statistics in processing order, as the op's caller would
        std::vector<int64_t> ns(T);
        for (int64_t k = 0; k < T; ++k) ns[k] = steps[k].second;
        update_running({running[0], running[2], running[4]}, {running[1], running[3], running[5]},
                       {hh[2], cg[2], mean_ih}, {hh[3], cg[3], var_ih}, ns, momentum);
      }
    } else if (kind == "gru") {
      const int64_t H = P;
      Tensor gates = at::empty({NS, 3 * H}, o), an = at::empty({NS, H}, o);
      Tensor hprev_m = M ? at::empty({NS, H}, o) : e();
      const Tensor bh = b_hh.has_value() ? b_hh->contiguous() : e();
      T_ *GT = gates.data_ptr<T_>(), *AN = an.data_ptr<T_>(), *HMV = M ? hprev_m.data_ptr<T_>() : HPV;
      const T_* BH = b_hh.has_value() ? bh.data_ptr<T_>() : nullptr;
      over_steps(mode != kBNTrain, B, G, steps, false, [&](int64_t k, int64_t r0, int64_t r1) {
        const int64_t off = steps[k].first, bs = steps[k].second, so = save ? off : 0, nr = r1 - r0;
        const T_* ZH = zhr.at<T_>(off);  // zoneout: the step's rows
        T_ *HP = HPV + so * H, *HM = HMV + so * H;
        for (int64_t i = r0 * H; i < r1 * H; ++i) {
          HP[i] = HB[i];
          if (M) HM[i] = HB[i] * M[i];
        }
        step_xwt(HM + r0 * H, Wp, WTp, R + r0 * G, nr, G, H,
                 [&](int64_t c0, int64_t c1) { nh.stats(R, bs, k, c0, c1); });  // BN train: its columns' statistics
        prows(nr, G, [&](int64_t b0, int64_t b1) {
          for (int64_t b = r0 + b0; b < r0 + b1; ++b) {
            const int64_t n = off + b, ns = so + b;
            T_ *r = R + b * G, *g = GT + ns * G, *ar = AN + ns * H, *y = O + n * H;
            const T_ *x = XP + n * G, *hp = HP + b * H;
            nh.row(r, n, ns, k, nullptr, BH, r);  // a = norm_hh(r) + b_hh
            for (int64_t j = 0; j < 2 * H; ++j) g[j] = x[j] + r[j];
            sigmoid(g, g, 2 * H);  // r, z
            for (int64_t j = 0; j < H; ++j) {
              ar[j] = r[2 * H + j];
              g[2 * H + j] = x[2 * H + j] + g[j] * r[2 * H + j];
            }
            tanh(g + 2 * H, g + 2 * H, H);  // n
            for (int64_t j = 0; j < H; ++j) {
              // h = (h_{t-1} - n) z + n, torch's GRUCell form, not lerp(n, h_{t-1}, z) and its
              // data-dependent branch per element
              const T_ nv = g[2 * H + j], z = g[H + j], h = hp[j];
              T_ v = (h - nv) * z + nv;
              if (ZH) v = lerp(v, h, ZH[b * H + j]);
              y[j] = HB[b * H + j] = v;
            }
          }
        });
      });
      res = {out, hbuf, e(), hh[2], hh[3], e(), e(), gates, an, hprev, hprev_m, hh[0], hh[1]};
    } else {
      const bool relu = kind == "rnn_relu";
      Tensor hnew = zh_.has_value() ? at::empty({NS, P}, o) : e();
      T_* HN = zh_.has_value() ? hnew.data_ptr<T_>() : O;
      over_steps(mode != kBNTrain, B, G, steps, false, [&](int64_t k, int64_t r0, int64_t r1) {
        const int64_t off = steps[k].first, bs = steps[k].second, so = save ? off : 0, nr = r1 - r0;
        const T_* ZH = zhr.at<T_>(off);  // zoneout: the step's rows
        const T_* HP = load_h(so, off, r0, r1);
        step_xwt(HP + r0 * P, Wp, WTp, R + r0 * G, nr, G, P,
                 [&](int64_t c0, int64_t c1) { nh.stats(R, bs, k, c0, c1); });  // BN train: its columns' statistics
        prows(nr, G, [&](int64_t b0, int64_t b1) {
          for (int64_t b = r0 + b0; b < r0 + b1; ++b) {
            const int64_t n = off + b;
            T_ *r = R + b * G, *h = ZH ? HN + (so + b) * P : O + n * P, *y = O + n * P, *hb = HB + b * P;
            nh.row(r, n, so + b, k, XP + n * G, nullptr, r);  // a = norm_hh(r) + xp
            if (relu)
              for (int64_t j = 0; j < P; ++j) h[j] = r[j] < T_(0) ? T_(0) : r[j];
            else
              tanh(r, h, P);
            for (int64_t j = 0; j < P; ++j) y[j] = hb[j] = ZH ? lerp(h[j], hb[j], ZH[b * P + j]) : h[j];
          }
        });
      });
      res = {out, hbuf, e(), hh[2], hh[3], e(), e(), hnew, hprev, hh[0], hh[1]};
    }
  });
  // Without `save` the tensors past the statistics are scratch that no one reads: not returned
  // (each costs a Python wrapper and its release: ~5 us a call of the small layer-norm LSTM),
  // but for the batch-norm input group's statistics (the running statistics need them)
  if (!save) res.erase(res.begin() + 7, res.end() - (proj_in && mode == kBNTrain ? 2 : 0));
  return res;
}

}  // namespace
}  // namespace rnnkit_norm

TORCH_LIBRARY(rnnkit_norm, m) {
  m.def(
      "forward(str kind, int mode, Tensor xp, Tensor h0, Tensor? c0, Tensor w_hh, Tensor? b_hh, Tensor? w_hr, "
      "Tensor? mask, Tensor? zh, Tensor? zc, Tensor g_hh, Tensor? s_hh, Tensor? g_c, Tensor? s_c, Tensor? st_hh, "
      "Tensor? st_c, Tensor? w_peep, Tensor? x_in, Tensor? w_ih, Tensor? g_ih, Tensor? s_ih, int[] batch_sizes, "
      "bool reverse, bool onednn, bool save=True, Tensor(a!)[]? running=None, float momentum=0.1) -> Tensor[]",
      // mode: + kColHprev
      &rnnkit_norm::forward);
  m.def(
      "backward(str kind, int mode, Tensor gout, Tensor ghn, Tensor gcn, Tensor out, Tensor[] saved, Tensor w_hh, "
      "bool has_bias, Tensor? w_hr, Tensor? mask, Tensor? zh, Tensor? zc, Tensor g_hh, bool shift_hh, Tensor? g_c, "
      "bool shift_c, Tensor? st_hh, Tensor? st_c, Tensor? w_peep, int[] batch_sizes, bool reverse, bool onednn) "
      "-> Tensor[]",
      &rnnkit_norm::backward);
}
