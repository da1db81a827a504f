"""The C++ ops check their tensor arguments against each other at entry (shapes, dtype, device)
and raise a RuntimeError naming the op and the argument instead of reading or writing out of
bounds: they are public (``torch.ops.rnnkit_ext.forward`` & co.) and a graph traced at one shape
may replay them at another. Consistent arguments still give the layers' numbers, and a dense
but not row-major state (a transposed ``h0``) gives the row-major result.

(``test_batch_size_checks.py`` covers ``batch_sizes``.)"""

from __future__ import annotations

import re

import pytest
import torch

from rnnkit.kernels import lstm_variants, norm, norm_ops, variants
from rnnkit.ops import load_extension

from .test_fused_kernels import require_ext

T, B, I, H = 3, 2, 5, 4
N = T * B
BSZ = [B] * T
F64 = torch.float64
LSTM_V = lstm_variants.HAS_I | lstm_variants.HAS_F | lstm_variants.HAS_O | lstm_variants.IN_ACT
LSTM_V |= lstm_variants.OUT_ACT | lstm_variants.PEEPHOLE | lstm_variants.FGR  # every gate, peepholes, FGR
S = 3 * H  # FGR's gate state: i, f, o


def _t(*shape, dtype=F64):
    g = torch.Generator().manual_seed(hash(shape) % 1000)
    return (0.5 * torch.randn(*shape, generator=g)).to(dtype)


# -- the ops with consistent arguments (overridable by name) -------------------------------------
def fused_fwd(kind, **kw):
    G = {0: 4, 1: 3, 2: 1}[kind] * H
    c0, b_hh = _t(B, H) if kind == 0 else _t(0), _t(G) if kind == 1 else None
    a = dict(xp=_t(N, G), h0=_t(B, H), c0=c0, w_hh=_t(G, H), b_hh=b_hh, w_hr=None, mask=None, zh=None,
             zc=None, w_peep=None)  # fmt: skip
    a.update(kw)
    return torch.ops.rnnkit_ext.forward(kind, *a.values(), BSZ, False, False)


def fused_bwd(kind, **kw):
    G = {0: 4, 1: 3, 2: 1}[kind] * H
    saved = list(fused_fwd(kind)[3:])
    if kind == 0:
        saved[4] = _t(N, H)  # h~ is out without projection (not read)
    a = dict(gout=_t(N, H), ghn=_t(B, H), gcn=_t(B, H) if kind == 0 else _t(0), saved=saved, w_hh=_t(G, H),
             w_hr=None, mask=None, zh=None, zc=None, w_peep=None)  # fmt: skip
    a.update(kw)
    return torch.ops.rnnkit_ext.backward(kind, *a.values(), kind == 1, BSZ, False, False)


def variant_lstm_fwd(**kw):
    a = dict(xp=_t(N, 4 * H), h0=_t(B, H), c0=_t(B, H), w_hh=_t(4 * H, H), b_hh=None, w_hr=None, mask=None,
             zh=None, zc=None, w_peep=_t(3 * H), a0=_t(B, S), w_gg=_t(S, S), zg=None)  # fmt: skip
    a.update(kw)
    return torch.ops.rnnkit_ext.variant_forward(0, LSTM_V, *a.values(), BSZ, False, False)


def variant_gru_bwd(flags=4 | 3, **kw):  # MUT3 (tanh h source), reset after
    fwd = torch.ops.rnnkit_ext.variant_forward(
        1, flags, _t(N, 3 * H), _t(B, H), None, _t(3 * H, H), _t(3 * H), *[None] * 8, BSZ, False, False
    )
    a = dict(gout=_t(N, H), ghn=_t(B, H), gcn=_t(0), gan=_t(0), saved=list(fwd[4:]), w_hh=_t(3 * H, H),
             w_hr=None, mask=None, zh=None, zc=None, w_peep=None, w_gg=None, zg=None)  # fmt: skip
    a.update(kw)
    return torch.ops.rnnkit_ext.variant_backward(1, flags, *a.values(), True, BSZ, False, False)


def _norm_args(**kw):
    a = dict(xp=_t(N, 4 * H), h0=_t(B, H), c0=_t(B, H), w_hh=_t(4 * H, H), b_hh=None, w_hr=None, mask=None,
             zh=None, zc=None, g_hh=1 + _t(4 * H), s_hh=_t(4 * H), g_c=1 + _t(H), s_c=_t(H), st_hh=None,
             st_c=None, w_peep=_t(3 * H))  # fmt: skip
    a.update(kw)
    return a


def norm_fwd(**kw):
    a = _norm_args(**kw)
    return torch.ops.rnnkit_norm.forward("lstm", norm.LN, *a.values(), *[None] * 4, BSZ, False, False)


def norm_bwd(**kw):
    a = _norm_args()
    saved = list(norm_fwd()[7:])
    b = dict(gout=_t(N, H), ghn=_t(B, H), gcn=_t(B, H), out=_t(N, H), saved=saved, w_hh=a["w_hh"],
             has_bias=False, w_hr=None, mask=None, zh=None, zc=None, g_hh=a["g_hh"], shift_hh=True,
             g_c=a["g_c"], shift_c=True, st_hh=None, st_c=None, w_peep=a["w_peep"])  # fmt: skip
    b.update(kw)
    return torch.ops.rnnkit_norm.backward("lstm", norm.LN, *b.values(), BSZ, False, False)


def bn_input_bwd(**kw):
    G = 4 * H
    a = dict(dy=_t(N, G), xh=_t(N, G), rs=_t(T, G), w=_t(G))
    a.update(kw)
    return torch.ops.rnnkit_norm.bn_input_backward(*a.values(), True, BSZ)


def ln_input_bwd(**kw):
    G = 4 * H
    a = dict(dy=_t(N, G), xh=_t(N, G), rs=_t(N, 1), w=_t(G))
    a.update(kw)
    return torch.ops.rnnkit_norm.ln_input_backward(*a.values(), True)


def update_running(**kw):
    a = dict(rm=_t(2, H), rv=_t(2, H).abs(), mean=_t(T, H), var=_t(T, H).abs())
    a.update(kw)
    torch.ops.rnnkit_norm.update_running(*([t] for t in a.values()), BSZ, 0.1)


def scan_bwd(**kw):
    a = dict(grad=_t(T, B, H), a=_t(T, B, H), h=_t(T, B, H), h0=_t(B, H))
    a.update(kw)
    return load_extension().backward(*a.values(), False)


OPS = {
    "rnnkit_ext::forward lstm": lambda **kw: fused_fwd(0, **kw),
    "rnnkit_ext::forward gru": lambda **kw: fused_fwd(1, **kw),
    "rnnkit_ext::forward rnn": lambda **kw: fused_fwd(2, **kw),
    "rnnkit_ext::backward lstm": lambda **kw: fused_bwd(0, **kw),
    "rnnkit_ext::backward gru": lambda **kw: fused_bwd(1, **kw),
    "rnnkit_ext::backward rnn": lambda **kw: fused_bwd(2, **kw),
    "rnnkit_ext::variant_forward lstm": variant_lstm_fwd,
    "rnnkit_ext::variant_backward gru": variant_gru_bwd,
    "rnnkit_norm::forward lstm": norm_fwd,
    "rnnkit_norm::backward lstm": norm_bwd,
    "rnnkit_norm::bn_input_backward": bn_input_bwd,
    "rnnkit_norm::ln_input_backward": ln_input_bwd,
    "rnnkit_norm::update_running": update_running,
}

# op -> [(argument, wrong value, what the message names)]
BAD = {
    "rnnkit_ext::forward lstm": [
        ("w_hh", _t(4 * H, H + 1), "w_hh must have shape (4H, P)"),
        ("w_hh", _t(4 * H - 1, H), "w_hh must have shape (4H, P)"),
        ("w_hh", _t(4 * H, H, dtype=torch.float32), "w_hh must have dtype"),
        ("c0", _t(B + 1, H), "c0 must have shape (B, H)"),
        ("h0", _t(B, H + 2), "h0 (B, P) and c0 (B, H)"),
        ("xp", _t(N, 4 * H - 1), "xp must have shape (N, 4H)"),
        ("mask", _t(B, H + 1), "mask must have shape (B, P)"),
        ("zh", _t(N - 1, H), "zh must have shape (N, P)"),
        ("zc", _t(N, 1), "zc must have shape (N, H)"),
        ("w_peep", _t(2 * H), r"w_peep must have shape \(3H,\)"),
        ("w_hr", _t(H + 1, H), "w_hr must have shape (P, H)"),
        ("b_hh", _t(4 * H), "b_hh must be None for the LSTM (add it to xp"),  # it was ignored
        ("b_hh", _t(7, dtype=torch.float32), "b_hh must be None for the LSTM"),
    ],
    "rnnkit_ext::forward gru": [
        ("w_hh", _t(3 * H, H + 1), "w_hh must have shape (3H, H)"),
        ("b_hh", _t(3 * H + 1), r"b_hh must have shape \(3H,\)"),
        ("xp", _t(N, 3 * H - 1), "xp must have shape (N, 3H)"),
        ("h0", _t(B + 1, H), "batch_sizes[0] must equal the state's batch size"),
    ],
    "rnnkit_ext::forward rnn": [
        ("w_hh", _t(H, H + 1), "w_hh must have shape (H, H)"),
        ("mask", _t(B, H - 1), "mask must have shape (B, H)"),
        ("b_hh", _t(H), "b_hh must be None for the RNN (add it to xp"),  # it was ignored
    ],
    "rnnkit_ext::backward lstm": [
        ("ghn", _t(B, H + 1), "ghn must have shape (B, P)"),
        ("gcn", _t(B, H + 1), "gcn must have shape (B, H)"),
        ("w_hh", _t(4 * H, H + 1), "w_hh must have shape (4H, P)"),
        ("w_hh", _t(4 * H + 1, H), "w_hh must have shape (4H, P) with a first size that is a positive"),
        ("w_hh", _t(4 * H + 4, H), "gcn must have shape (B, H)"),  # H is read off w_hh
        ("saved", [_t(N, 4 * H - 1)], "saved must hold"),
        ("gout", _t(N, H, dtype=torch.float32), "ghn must have dtype"),
    ],
    "rnnkit_ext::backward gru": [
        ("ghn", _t(B, H + 1), "ghn must have shape (B, P)"),
        ("w_hh", _t(3 * H, H - 1), "w_hh must have shape (3H, H)"),
    ],
    "rnnkit_ext::backward rnn": [
        ("w_hh", _t(H + 1, H), "w_hh must have shape (H, H)"),
        ("saved", [_t(N, H), _t(B + 1, H)], r"saved\[1\] \(h_\{t-1\}\) must have shape"),
        ("saved", [_t(N, H + 1), _t(N, H)], r"saved\[0\] \(h~\) must have shape"),
    ],
    "rnnkit_ext::variant_forward lstm": [
        ("w_gg", _t(S, S - 1), "w_gg must have shape (S, S)"),
        ("a0", _t(B, S + 1), "a0 must have shape (B, S)"),
        ("a0", None, "a0 is required"),
        ("w_peep", None, "w_peep is required"),
        ("w_peep", _t(2 * H), "w_peep must have shape (peepholes H,)"),
        ("c0", None, "c0 is required"),
        ("w_hh", _t(4 * H, H + 1), "w_hh must have shape (gates H, P)"),
        ("zg", _t(N, S - 1), "zg must have shape (N, S)"),
        ("b_hh", _t(4 * H), "b_hh must be None for the LSTM layouts (the caller adds it"),  # was ignored
    ],
    "rnnkit_ext::variant_backward gru": [
        ("ghn", _t(B + 1, H + 1), "ghn must have shape (B, P)"),
        ("w_hh", _t(2 * H, H), "w_hh must have shape (3H, H)"),
        ("saved", [_t(N, 3 * H), _t(N, H), _t(0), _t(N, H), _t(N, H - 1)], r"saved\[4\] \(tanh h_\{t-1\}\)"),
        ("saved", [_t(N, 3 * H), _t(N, H)], "saved must hold"),
    ],
    "rnnkit_norm::forward lstm": [
        ("g_c", _t(H + 1), r"g_c must have shape \(F,\)"),
        ("g_c", None, "g_c is required"),
        ("g_hh", _t(3 * H), r"g_hh must have shape \(F,\)"),
        ("s_hh", _t(4 * H, 1), r"s_hh must have shape \(F,\)"),
        ("st_hh", _t(2, 3, H), r"st_hh must have shape \(2, slots, F\)"),
        ("w_hh", _t(4 * H, H - 1), "w_hh must have shape (4H, P)"),
        ("c0", None, "c0 is required"),
        ("xp", _t(N, H), "xp must have shape (N, 4H)"),
        ("b_hh", _t(4 * H), "b_hh must be None for the lstm (the caller adds it to xp)"),  # was ignored
    ],
    "rnnkit_norm::backward lstm": [
        ("ghn", _t(B, H - 1), "ghn must have shape (B, P)"),
        ("gcn", _t(B - 1, H), "gcn must have shape (B, H)"),
        ("gout", _t(N, H + 1), "gout must have shape (N, P)"),
        ("out", _t(N, 0), "out must have shape (N, P) with a positive width"),
        ("saved", [_t(N, 4 * H)] * 8, "saved must hold the forward's 9"),
        ("g_c", _t(2 * H), r"g_c must have shape \(F,\)"),
        ("w_peep", _t(H), r"w_peep must have shape \(3H,\)"),
    ],
    "rnnkit_norm::bn_input_backward": [
        ("xh", _t(N, 4 * H - 1), "xh must have shape (N, G)"),
        ("rs", _t(T - 1, 4 * H), "rs must have shape (T, G)"),
        ("w", _t(4 * H + 1), r"w must have shape \(G,\)"),
    ],
    "rnnkit_norm::ln_input_backward": [
        ("xh", _t(N, 4 * H + 1), "xh must have shape (N, G)"),
        ("rs", _t(N, 2), "rs must have shape (N, 1)"),
        ("w", _t(4 * H, dtype=torch.float32), "w must have dtype"),
    ],
    "rnnkit_norm::update_running": [
        ("mean", _t(T, H + 1), "mean must have shape (T, F)"),
        ("rv", _t(3, H), "rv must have shape (S, F)"),
        ("var", _t(T, H, dtype=torch.float32), "var must have dtype"),
        ("rm", _t(H, 2).t(), "rm and rv must be contiguous"),  # updated in place: not a copy
    ],
}


@pytest.mark.parametrize("op", OPS)
def test_consistent_arguments_run(op):
    require_ext()
    OPS[op]()


@pytest.mark.parametrize(
    "op, arg, bad, msg", [(op, arg, bad, msg) for op, cases in BAD.items() for arg, bad, msg in cases]
)
def test_inconsistent_argument_raises_naming_it(op, arg, bad, msg):
    require_ext()
    name = op.split(" ")[0]
    with pytest.raises(RuntimeError) as e:
        OPS[op](**{arg: bad})
    text = str(e.value)
    assert name + ":" in text, text
    assert re.search(msg if "\\" in msg else re.escape(msg), text), text


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_zero_width_state_raises(kind):
    """Arguments consistent with hidden size 0 (torch.nn rejects it) ran: forward returned (N, 0)
    outputs, and the GRU/RNN backward too, with MKL printing "Parameter 8 was incorrect on entry
    to DGEMM" for the GEMMs' leading dimension of 0."""
    require_ext()
    G = {0: 4, 1: 3, 2: 1}[kind] * 0
    c0, b_hh = _t(B, 0) if kind == 0 else _t(0), _t(G) if kind == 1 else None
    args = (_t(N, G), _t(B, 0), c0, _t(G, 0), b_hh, None, None, None, None, None)
    msg = "rnnkit_ext::forward: h0 must have shape (B, P) with a positive width, got [2, 0]"
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        torch.ops.rnnkit_ext.forward(kind, *args, BSZ, False, False)
    if kind == 0:  # the LSTM's backward already asked for a positive number of gate rows
        return
    saved = [_t(N, G), _t(N, 0), _t(N, 0), _t(N, 0)] if kind == 1 else [_t(N, 0), _t(N, 0)]
    msg = "rnnkit_ext::backward: gout must have shape (N, P) with a positive width, got [6, 0]"
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        torch.ops.rnnkit_ext.backward(
            kind, _t(N, 0), _t(B, 0), _t(0), saved, _t(G, 0), *[None] * 5, kind == 1, BSZ, False, False
        )


def test_lstm_zero_width_cell_raises():
    """With a projection h0 (B, P) may be fine while c0 (B, H) has H = 0."""
    require_ext()
    msg = "rnnkit_ext::forward: c0 must have shape (B, H) with a positive width, got [2, 0]"
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        fused_fwd(0, xp=_t(N, 0), c0=_t(B, 0), w_hh=_t(0, H), w_hr=_t(H, 0))


@pytest.mark.parametrize("ns", [[B, 0, B], [B, B, -1]])
def test_update_running_rejects_steps_of_no_rows(ns):
    """``update_running``'s batch sizes are row counts: a step of 0 rows (or fewer) was taken as a
    step, the running mean moved towards its statistics, not an error."""
    require_ext()
    rm, msg = _t(2, H), f"update_running: batch_sizes must be positive, got {ns}"
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        torch.ops.rnnkit_norm.update_running([rm], [_t(2, H).abs()], [_t(T, H)], [_t(T, H).abs()], ns, 0.1)
    assert torch.equal(rm, _t(2, H))  # nothing updated


def test_update_running_rejects_statistics_of_no_slot():
    """Step k updates slot min(k, S - 1) of the running statistics: S = 0 is refused by name."""
    require_ext()
    msg = f"rm and rv must have at least one slot (S > 0), got [0, {H}]"
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        torch.ops.rnnkit_norm.update_running([_t(0, H)], [_t(0, H)], [_t(T, H)], [_t(T, H).abs()], BSZ, 0.1)


def test_public_custom_op_raises():
    """``torch.ops.rnnkit.fused_direction`` (what torch.compile graphs call) reaches the checks."""
    require_ext()
    args = (_t(N, 4 * H), _t(B, H), _t(B, H), _t(4 * H, H + 1), None, None, None, None, None, None)
    msg = re.escape("rnnkit_ext::forward: w_hh must have shape (4H, P) = [16, 4], got [16, 5]")
    with pytest.raises(RuntimeError, match=msg):
        torch.ops.rnnkit.fused_direction("lstm", *args, BSZ, False)


def test_saved_tensor_of_another_shape_raises():
    """A saved activation of the wrong width in the middle of the list (the GRU's a_n)."""
    require_ext()
    saved = list(fused_fwd(1)[3:])
    saved[1] = _t(N, H - 1)
    msg = r"rnnkit_ext::backward: saved\[1\] \(a_n\) must have shape \(N, H\) = \[6, 4\], got \[6, 3\]"
    with pytest.raises(RuntimeError, match=msg):
        fused_bwd(1, saved=saved)


def test_scan_backward_checks_h0():
    require_ext()
    if load_extension() is None:
        pytest.skip("no compiled scan kernel")
    scan_bwd()
    with pytest.raises(RuntimeError, match="h0 must hold one state per feature"):
        scan_bwd(h0=_t(B, H - 1))


def test_cuda_argument_raises():
    require_ext()
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    with pytest.raises(RuntimeError, match="w_hh must be a CPU tensor"):
        fused_fwd(0, w_hh=_t(4 * H, H).cuda())


# -- consistent arguments still give the layers' numbers --------------------------------------
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_direct_op_equals_torch_layer(kind):
    require_ext()
    torch.manual_seed(0)
    layer = getattr(torch.nn, kind)(I, H, dtype=F64)
    x, h0 = _t(T, B, I), _t(1, B, H)
    c0 = _t(1, B, H)
    ref, hn = layer(x, (h0, c0)) if kind == "LSTM" else layer(x, h0)
    w_ih, w_hh, b_ih, b_hh = layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0
    with torch.no_grad():
        xp = x.reshape(N, I) @ w_ih.t() + b_ih + (0 if kind == "GRU" else b_hh)
        code = {"LSTM": 0, "GRU": 1, "RNN": 2}[kind]
        res = fused_fwd(code, xp=xp, h0=h0[0], c0=c0[0] if kind == "LSTM" else _t(0), w_hh=w_hh.detach(),
                        b_hh=b_hh.detach() if kind == "GRU" else None)  # fmt: skip
    torch.testing.assert_close(res[0].view(T, B, H), ref.detach())
    torch.testing.assert_close(res[1], (hn[0] if kind == "LSTM" else hn)[0].detach())


def test_direct_norm_op_equals_pure_kernels():
    require_ext()
    a = _norm_args()
    got = norm_fwd()
    want = norm_ops.forward_impl("lstm", norm.LN, False, False, *a.values(), BSZ, False)
    for g, w in zip(got[:3], want[:3]):
        torch.testing.assert_close(g, w)


def test_direct_variant_op_equals_pure_kernels():
    require_ext()
    got = variant_lstm_fwd()
    a = dict(xp=_t(N, 4 * H), h0=_t(B, H), c0=_t(B, H), w_hh=_t(4 * H, H), b_hh=None, w_hr=None, mask=None,
             zh=None, zc=None, w_peep=_t(3 * H), a0=_t(B, S), w_gg=_t(S, S), zg=None)  # fmt: skip
    want = variants.forward_impl("lstm_v", LSTM_V, tuple(BSZ), False, False, False, *a.values())
    for g, w in zip(got[:4], want[:4]):
        torch.testing.assert_close(g, w)


# -- a dense non-row-major state is read as the row-major one ---------------------------------
def _transposed(*shape):
    """``_t(*shape)`` stored column-major: dense, not contiguous."""
    t = _t(*shape).t().contiguous().t()
    assert not t.is_contiguous() and torch.equal(t, _t(*shape))
    return t


STRIDED = {
    "forward lstm h0 c0": (lambda **kw: fused_fwd(0, **kw), ("h0", (B, H)), ("c0", (B, H))),
    "forward gru h0": (lambda **kw: fused_fwd(1, **kw), ("h0", (B, H))),
    "forward rnn h0": (lambda **kw: fused_fwd(2, **kw), ("h0", (B, H))),
    "backward lstm ghn gcn": (lambda **kw: fused_bwd(0, **kw), ("ghn", (B, H)), ("gcn", (B, H))),
    "backward gru ghn": (lambda **kw: fused_bwd(1, **kw), ("ghn", (B, H))),
    "variant lstm h0 c0 a0": (variant_lstm_fwd, ("h0", (B, H)), ("c0", (B, H)), ("a0", (B, S))),
    "variant gru backward ghn": (variant_gru_bwd, ("ghn", (B, H))),
    "norm lstm h0 c0": (norm_fwd, ("h0", (B, H)), ("c0", (B, H))),
    "norm lstm backward ghn gcn": (norm_bwd, ("ghn", (B, H)), ("gcn", (B, H))),
}


@pytest.mark.parametrize("case", STRIDED)
def test_transposed_state_gives_the_row_major_result(case):
    require_ext()
    op, *args = STRIDED[case]
    want = op()
    got = op(**{name: _transposed(*shape) for name, shape in args})
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
