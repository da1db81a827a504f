// Explicit BPTT of the normalized directions (forward: norm.cpp), the equations of
// rnnkit/kernels/norm.py's backward. Per step, with no Tensor created: one pass per row for dL/dh (gout + the carried dh, zoneout's split), the gate
// gradients, the cell norm's backward and the recurrent norm's backward (dr_t), the gain/shift
// gradients accumulated in float64 per thread (NormB); then dh_{t-1} = dr_t W_hh (step_xw) and
// one pass for the mask and zoneout's direct part. Threads as in the forward: layer norm and
// batch norm with given statistics, one block of batch rows per thread for the whole loop
// (over_steps). Batch norm in training needs the step's column means of dx^ before a row's dr,
// so the row pass is cut in two or three with those means in between: the LSTM's row blocks
// as a team that meets at the means (norm_team.h); the GRU/RNN kernels' batch-norm mode splits
// each pass by rows and the GEMM by output columns. Weight gradients are single GEMMs over all
// steps after the loop.
#include "norm_checks.h"
#include "norm_group_bwd.h"
#include "norm_team.h"

namespace rnnkit_norm {
namespace {
namespace base {
#include "norm_lstm_bwd_row.h"
}  // namespace base
#ifdef RNNKIT_SLEEF
#pragma GCC push_options
#pragma GCC target("avx512f")
namespace avx512 {
#include "norm_lstm_bwd_row.h"
}  // namespace avx512
#pragma GCC pop_options
#endif

template <typename T>
using OutRow = void (*)(int64_t, const T*, const T*, const T*, const T*, T*, T*, T*, T*);
template <typename T>
using GateRow = void (*)(int64_t, const T*, const T*, const T*, const T*, const T*, T*, T*);
// The two rows for the options (zoneout on c, peepholes), for this CPU.
template <typename T>
std::pair<OutRow<T>, GateRow<T>> pick_rows(bool zc, bool pi) {
#ifdef RNNKIT_SLEEF
  if (rnnkit_pw::has_avx512()) {
    using namespace avx512;
    static const OutRow<T> out[2] = {norm_lstm_bwd_out<T, false>, norm_lstm_bwd_out<T, true>};
    static const GateRow<T> gates[4] = {norm_lstm_bwd_gates<T, false, false>, norm_lstm_bwd_gates<T, false, true>,
                                        norm_lstm_bwd_gates<T, true, false>, norm_lstm_bwd_gates<T, true, true>};
    return {out[zc], gates[2 * pi + zc]};
  }
#endif
  using namespace base;
  static const OutRow<T> out[2] = {norm_lstm_bwd_out<T, false>, norm_lstm_bwd_out<T, true>};
  static const GateRow<T> gates[4] = {norm_lstm_bwd_gates<T, false, false>, norm_lstm_bwd_gates<T, false, true>,
                                      norm_lstm_bwd_gates<T, true, false>, norm_lstm_bwd_gates<T, true, true>};
  return {out[zc], gates[2 * pi + zc]};
}

}  // namespace

std::vector<Tensor> backward(std::string kind, int64_t mode, const Tensor& gout_, const Tensor& ghn,
                             const Tensor& gcn, const Tensor& out_, std::vector<Tensor> saved, const Tensor& w_hh,
                             bool has_bias, const OptT& w_hr, const OptT& mask_, const OptT& zh_, const OptT& zc_,
                             const Tensor& g_hh, bool shift_hh, const OptT& g_c, bool shift_c, const OptT& st_hh,
                             const OptT& st_c, const OptT& w_peep, std::vector<int64_t> batch_sizes, bool reverse,
                             bool onednn) {
  check_backward(kind, mode, gout_, ghn, gcn, out_, saved, w_hh, w_hr, mask_, zh_, zc_, g_hh, g_c, st_hh, st_c, w_peep,
                 static_cast<int64_t>(batch_sizes.size()));
  // out (the RNN reads h from it) and the saved buffers, read row-major through raw pointers (a
  // no-op for the forward's own), but h_{t-1} (LSTM, RNN: may be column-major; only meets GEMMs)
  const Tensor out = out_.contiguous();
  const int64_t B = ghn.size(0), P = ghn.size(1), N = out.size(0), G = w_hh.size(0);
  check_batch_sizes("rnnkit_norm::backward", batch_sizes, N, B);
  const auto steps = schedule(batch_sizes, reverse);
  const size_t hprev_at = kind == "lstm" ? 3 : kind == "gru" ? saved.size() : 1;
  for (size_t i = 0; i < saved.size(); ++i)
    if (i != hprev_at) saved[i] = saved[i].contiguous();
  auto o = out.options();
  auto cont = [&](const OptT& t) { return t.has_value() ? OptT(t->contiguous()) : t; };
  const OptT mask = cont(mask_), sth = cont(st_hh), stc = cont(st_c);
  const rnnkit_common::ZoneoutRows zhr(zh_, B), zcr(zc_, B);  // a step's rows at zhr.at(off)
  const bool zoned_h = zh_.has_value();
  const std::vector<int64_t> slots = eval_slots(mode, sth, batch_sizes, reverse);
  const Tensor gout = gout_.contiguous(), W = w_hh.contiguous(), gh = g_hh.contiguous();
  Tensor dhbuf = ghn.clone(kRowMajor), dhz = at::empty({B, P}, o), dr_all = at::empty({N, G}, o);
  auto cast = [&](const Tensor& t) { return t.to(out.scalar_type(), false, true); };  // a copy: no aliasing
  std::vector<Tensor> res;
  for (int i = 0; i < 10; ++i) res.push_back(none(out));
  const bool lstm = kind == "lstm";
  Tensor xh = saved[saved.size() - 2 - (lstm ? 2 : 0)], rs = saved[saved.size() - 1 - (lstm ? 2 : 0)], hin;
  std::pair<Tensor, Tensor> ab, ab_c;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "rnnkit_norm_bwd", [&] {
    using T_ = scalar_t;
    using rnnkit_pw::dh_step;
    NormB<T_> nh(mode, G, xh, rs, gh, sth, slots);
    T_ *DHB = dhbuf.data_ptr<T_>(), *DHZ = dhz.data_ptr<T_>(), *DR = dr_all.data_ptr<T_>();
    const T_ *GO = gout.data_ptr<T_>(), *Wp = W.data_ptr<T_>();
    const T_* M = ptr<T_>(mask);
    // dh_{t-1} = (dr_t W_hh) ⊙ m (+ extra) (+ zoneout's direct part)
    auto recur = [&](int64_t off, int64_t r0, int64_t r1, const T_* extra) {
      step_xw(DR + (off + r0) * G, Wp, DHB + r0 * P, r1 - r0, P, G);
      if (M || extra || zoned_h)
        for (int64_t i = r0 * P; i < r1 * P; ++i) {
          T_ v = M ? DHB[i] * M[i] : DHB[i];
          if (extra) v += extra[i];
          DHB[i] = zoned_h ? v + DHZ[i] : v;
        }
    };
    // rows [r0, r1) of one step through f1 (every row), then (batch norm in training: all
    // the step's rows) the column means, then f2, and so on; otherwise all in one pass per row
    auto passes = [&](int64_t r0, int64_t r1, int64_t width, const std::vector<std::function<void(int64_t)>>& fs,
                      const std::vector<std::function<void()>>& between) {
      if (mode == kBNTrain) {
        for (size_t i = 0; i < fs.size(); ++i) {
          if (i) between[i - 1]();
          prows(r1 - r0, width, [&](int64_t b0, int64_t b1) {
            for (int64_t b = r0 + b0; b < r0 + b1; ++b) fs[i](b);
          });
        }
      } else {
        prows(r1 - r0, width, [&](int64_t b0, int64_t b1) {
          for (int64_t b = r0 + b0; b < r0 + b1; ++b)
            for (const auto& f : fs) f(b);
        });
      }
    };
    if (lstm) {
      const Tensor &gates = saved[0], &cprev = saved[1], &tanhc = saved[2], &hprev = saved[3], &hraw = saved[4];
      const Tensor &xc = saved[7], &rc = saved[8];
      const int64_t H = tanhc.size(1), G4 = 4 * H;
      const bool proj = w_hr.has_value();
      const Tensor gcc = g_c->contiguous(), WR = proj ? w_hr->contiguous() : none(out);
      const OptT wpc = cont(w_peep);
      const T_* PW = ptr<T_>(wpc);  // peepholes (3H: i, f, o), or null
      NormB<T_> nc(mode, H, xc, rc, gcc, stc, slots);
      Tensor dgates = at::empty_like(gates, kRowMajor), dcbuf = gcn.clone(kRowMajor), dh_all = proj ? at::empty(hprev.sizes(), o) : none(out);
      Tensor dht = at::empty({B, std::max(P, H)}, o), dyc = at::empty({B, H}, o), dcn = at::empty({B, H}, o);
      Tensor dcz = at::empty({B, H}, o);
      T_ *DG = dgates.data_ptr<T_>(), *DC = dcbuf.data_ptr<T_>(), *DHT = dht.data_ptr<T_>();
      T_ *DY = dyc.data_ptr<T_>(), *DCN = dcn.data_ptr<T_>(), *DCZ = dcz.data_ptr<T_>();
      T_* DHA = proj ? dh_all.data_ptr<T_>() : nullptr;
      const T_ *GT = gates.data_ptr<T_>(), *CPV = cprev.data_ptr<T_>(), *TCV = tanhc.data_ptr<T_>();
      const auto rows = pick_rows<T_>(zc_.has_value(), PW != nullptr);
      const OutRow<T_> out_row = rows.first;
      const GateRow<T_> gate_row = rows.second;
      // rows [r0, r1) of step k: dL/dh~, then through the projection: dh = dh~ W_hr
      auto proj_rows = [&](int64_t k, int64_t r0, int64_t r1) {
        const int64_t off = steps[k].first, o0 = off + r0;
        const T_* ZH = zhr.at<T_>(off);
        dh_step((r1 - r0) * P, GO + o0 * P, DHB + r0 * P, ZH ? ZH + r0 * P : nullptr, DHZ + r0 * P, DHA + o0 * P);
        step_xw(DHA + o0 * P, WR.data_ptr<T_>(), DHT + r0 * H, r1 - r0, H, P);
      };
      auto f1 = [&](int64_t k, int64_t b) {  // d o', d y_c (the cell norm's output)
        const int64_t off = steps[k].first, n = off + b;
        const T_ *ZH = zhr.at<T_>(off), *ZC = zcr.at<T_>(off);  // zoneout: the step's rows
        T_* dh = DHT + b * H;
        if (!proj) dh_step(H, GO + n * H, DHB + b * H, ZH ? ZH + b * H : nullptr, DHZ + b * H, dh);
        out_row(H, GT + n * G4, TCV + n * H, dh, ZC ? ZC + b * H : nullptr, DC + b * H, DCZ + b * H,
                DG + n * G4 + 3 * H, DY + b * H);
      };
      auto f2 = [&](int64_t k, int64_t b, const T_* mc) {  // the cell's gradient, the other gate gradients
        const int64_t n = steps[k].first + b;
        nc.row(DY + b * H, n, k, DCN + b * H, mc);
        gate_row(H, GT + n * G4, CPV + n * H, DCN + b * H, PW, DCZ + b * H, DC + b * H, DG + n * G4);
      };
      auto f3 = [&](int64_t k, int64_t b, const T_* mc) {
        const int64_t n = steps[k].first + b;
        nh.row(DG + n * G4, n, k, DR + n * G4, mc);
      };
      if (mode != kBNTrain) {  // layer norm, batch norm in evaluation: a block of rows a thread
        over_steps(true, B, G4, steps, true, [&](int64_t k, int64_t r0, int64_t r1) {
          if (proj) proj_rows(k, r0, r1);
          prows(r1 - r0, G4, [&](int64_t b0, int64_t b1) {
            for (int64_t b = r0 + b0; b < r0 + b1; b += 4) {  // four rows, then their recurrent norm
              const int64_t e = std::min(b + 4, r0 + b1), n = steps[k].first + b;
              for (int64_t q = b; q < e; ++q) {
                f1(k, q);
                f2(k, q, nullptr);
              }
              nh.rows(DG + n * G4, n, e - b, k, DR + n * G4);
            }
          });
          recur(steps[k].first, r0, r1, nullptr);
        });
      } else {  // batch norm in training: a team of row blocks meeting at the column means (norm_team.h)
        const int64_t nmax = std::max<int64_t>(1, at::get_num_threads()), T = steps.size();
        std::vector<double> part_c(nmax * 2 * H), part_h(nmax * 2 * G4);
        std::vector<T_> mean_c(nmax * 2 * H), mean_h(nmax * 2 * G4);
        // iteration i: step k = T - 1 - i (backward in time): phase 0 closes step k + 1 (the
        // recurrent norm's backward, dh_{t-1}) and opens step k (dL/dh, the cell norm's output
        // gradient and its partial sums), phase 1 the cell's and gates' gradients and their
        // partial sums
        over_steps_team(B, G4, steps, 2, [&](int64_t i, int ph, int64_t b0, int64_t b1, int64_t t, int64_t nt) {
          auto rows_of = [&](int64_t k) { return std::max(b0, std::min(b1, steps[k].second)); };
          if (ph == 0 && i > 0) {
            const int64_t kp = T - i, e = rows_of(kp);
            T_* mc = mean_h.data() + t * 2 * G4;
            nh.combine(part_h.data(), 2 * G4, nt, steps[kp].second, mc);
            for (int64_t b = b0; b < e; ++b) f3(kp, b, mc);
            if (e > b0) recur(steps[kp].first, b0, e, nullptr);
          }
          if (i == T) return;
          const int64_t k = T - 1 - i, off = steps[k].first, r1 = rows_of(k);
          if (ph == 0) {
            if (proj && r1 > b0) proj_rows(k, b0, r1);
            for (int64_t b = b0; b < r1; ++b) f1(k, b);
            nc.partial(DY + b0 * H, off + b0, r1 - b0, part_c.data() + t * 2 * H);
          } else {
            T_* mc = mean_c.data() + t * 2 * H;
            nc.combine(part_c.data(), 2 * H, nt, steps[k].second, mc);
            for (int64_t b = b0; b < r1; ++b) f2(k, b, mc);
            nh.partial(DG + (off + b0) * G4, off + b0, r1 - b0, part_h.data() + t * 2 * G4);
          }
        });
      }
      res[0] = dgates;
      res[2] = dcbuf;
      if (proj) res[5] = mm_tn(dh_all, hraw, onednn);
      ab_c = nc.grads();
      hin = hprev;
    } else if (kind == "gru") {
      const Tensor &gates = saved[0], &an = saved[1], &hprev = saved[2], &hprev_m = saved[3];
      const int64_t H = P;
      Tensor dxp = at::empty_like(gates, kRowMajor), dat = at::empty({B, G}, o), dz = at::empty({B, H}, o);
      T_ *DX = dxp.data_ptr<T_>(), *DA = dat.data_ptr<T_>(), *DZ = dz.data_ptr<T_>();
      const T_ *GT = gates.data_ptr<T_>(), *ANV = an.data_ptr<T_>(), *HPV = hprev.data_ptr<T_>();
      over_steps(mode != kBNTrain, B, G, steps, true, [&](int64_t k, int64_t r0, int64_t r1) {
        const int64_t off = steps[k].first, bs = steps[k].second;
        const T_* ZH = zhr.at<T_>(off);  // zoneout: the step's rows
        auto f1 = [&](int64_t b) {
          const int64_t n = off + b;
          T_ *dx = DX + n * G, *da = DA + b * G, *dzr = DZ + b * H, *dhz = DHZ + b * H;
          const T_ *g = GT + n * G, *anr = ANV + n * H, *hp = HPV + n * H, *go = GO + n * H, *dhb = DHB + b * H;
          const T_* zr = ZH ? ZH + b * H : nullptr;
          for (int64_t j = 0; j < H; ++j) {
            T_ dh = go[j] + dhb[j];
            if (zr) {
              const T_ z = dh * zr[j];
              dhz[j] = z;
              dh = dh - z;
            }
            const T_ r = g[j], z = g[H + j], nv = g[2 * H + j];
            const T_ dn = (1 - nv * nv) * dh * (1 - z);
            const T_ dzp = (z - z * z) * dh * (hp[j] - nv);
            const T_ drp = (r - r * r) * dn * anr[j];
            dx[j] = da[j] = drp;
            dx[H + j] = da[H + j] = dzp;
            dx[2 * H + j] = dn;
            da[2 * H + j] = dn * r;
            dzr[j] = dh * z;
          }
        };
        auto f3 = [&](int64_t b) { nh.row(DA + b * G, off + b, k, DR + (off + b) * G); };
        passes(r0, r1, G, {f1, f3}, {[&] { nh.stats(DA, off, bs); }});
        recur(off, r0, r1, DZ);
      });
      res[0] = dxp;
      hin = mask.has_value() ? hprev_m : hprev;
    } else {
      const Tensor &hnew = saved[0], &hprev = saved[1];
      const Tensor& h = zoned_h ? hnew : out;
      const bool relu = kind == "rnn_relu";
      Tensor da_all = at::empty_like(out);
      T_* DA = da_all.data_ptr<T_>();
      const T_* HV = h.data_ptr<T_>();
      over_steps(mode != kBNTrain, B, P, steps, true, [&](int64_t k, int64_t r0, int64_t r1) {
        const int64_t off = steps[k].first, bs = steps[k].second;
        const T_* ZH = zhr.at<T_>(off);  // zoneout: the step's rows
        auto f1 = [&](int64_t b) {  // da = dh ⊙ act'(h~)
          const int64_t n = off + b;
          T_* da = DA + n * P;
          const T_* hv = HV + n * P;
          dh_step(P, GO + n * P, DHB + b * P, ZH ? ZH + b * P : nullptr, DHZ + b * P, da);
          for (int64_t j = 0; j < P; ++j) da[j] = relu ? (hv[j] <= 0 ? T_(0) : da[j]) : da[j] * (1 - hv[j] * hv[j]);
        };
        auto f3 = [&](int64_t b) { nh.row(DA + (off + b) * P, off + b, k, DR + (off + b) * P); };
        passes(r0, r1, P, {f1, f3}, {[&] { nh.stats(DA + off * P, off, bs); }});
        recur(off, r0, r1, nullptr);
      });
      res[0] = da_all;
      hin = hprev;
    }
    ab = nh.grads();
  });
  res[1] = dhbuf;
  res[3] = mm_tn(dr_all, hin, onednn);
  res[6] = cast(ab.first);
  if (shift_hh) res[7] = cast(ab.second);
  if (kind == "gru" && has_bias) res[4] = cast(ab.second);  // b_hh is added right after the shift
  if (lstm) {
    res[8] = cast(ab_c.first);
    if (shift_c) res[9] = cast(ab_c.second);
  }
  return res;
}

}  // namespace rnnkit_norm
