"""The time-parallel layers' checks of their own parameters and states: clear errors naming the
expected and received shapes and dtypes, no silent broadcasting."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit

from .test_layers import LAYERS, make

# (layer, parameter, a replacement of another shape that torch's ops broadcast or choke on)
REPLACED = [
    ("mingru", "bias_ih_l0", (1,)),  # broadcast over all gates: silently another model
    ("mingru", "weight_ih_l0", (12, 3)),  # failed in linear's words ("expanded size")
    ("minlstm_log", "bias_ih_l0", (1,)),
    ("qrnn", "weight_ih_l0", (12, 3)),  # window=2 takes 2 * input_size columns
    ("qrnn_w1", "bias_ih_l0", (1,)),
    ("lru", "theta_l0", (1,)),  # one phase for every state feature
    ("lru", "nu_log_l0", (1,)),
    ("lru", "D_l0", (3, 3)),  # a dense D where the layer's is diagonal: another model
    ("lru_dense_d", "C_re_l0", (5, 3)),
]


@pytest.mark.parametrize("name,attr,shape", REPLACED)
def test_parameter_replaced_by_another_shape_is_refused(name, attr, shape):
    m = make(name, num_layers=2)
    want = tuple(getattr(m, attr).shape)
    setattr(m, attr, nn.Parameter(torch.randn(shape)))
    x = torch.randn(5, 2, m.input_size)
    msg = rf"{attr} must have shape {want}, got {shape}".replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=msg):
        m(x)
    with pytest.raises(ValueError, match=msg):
        m.step(x[0])


@pytest.mark.parametrize("name,attr", [("mingru", "bias_ih_l1"), ("qrnn", "bias_ih_l0"), ("lru", "theta_l0")])
def test_parameter_of_another_dtype_is_refused(name, attr):
    """One float32 parameter in a float64 layer failed in a matmul's or a kernel's words."""
    m = make(name, num_layers=2)
    setattr(m, attr, nn.Parameter(getattr(m, attr).detach().float()))
    msg = rf"{attr} has dtype torch.float32 but the parameters are torch.float64"
    with pytest.raises(ValueError, match=msg):
        m(torch.randn(5, 2, m.input_size))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex64])
def test_lru_state_of_another_dtype_names_the_complex_state(dtype):
    """The message said "the parameters are torch.complex128" (they are float64) and suggested
    converting the module to the state's dtype, which cannot make a real state right."""
    m = make("lru", num_layers=2)
    x = torch.randn(5, 2, 3)
    msg = rf"h_0 has dtype {dtype} but the LRU's state is torch.complex128 \(for torch.float64 parameters\)"
    with pytest.raises(ValueError, match=msg):
        m(x, torch.zeros(2, 2, 3, dtype=dtype))
    with pytest.raises(ValueError, match=msg):
        m.step(x[0], torch.zeros(2, 2, 3, dtype=dtype))


@pytest.mark.parametrize("bad", [True, 2.0, 1.0, "2"])
def test_qrnn_window_must_be_the_int_1_or_2(bad):
    """window=True (== 1) was taken silently as window 1; window=2.0 (== 2) passed the check and
    failed in torch.empty's words."""
    with pytest.raises(ValueError, match=rf"window must be 1 or 2, got {bad!r}"):
        rnnkit.QRNN(3, 4, window=bad)


@pytest.mark.parametrize("kw", [{"r_min": False, "r_max": True}, {"r_min": "0.5"}, {"r_max": None}])
def test_lru_radii_must_be_numbers(kw):
    """r_min=False, r_max=True built a ring [0, 1] silently; a string or None failed in the
    comparison's words ("'<=' not supported between instances of 'int' and 'str'")."""
    with pytest.raises(ValueError, match="need 0 <= r_min < r_max <= 1, got"):
        rnnkit.LRU(3, 4, **kw)


@pytest.mark.parametrize("name", ["mingru_log", "minlstm_log"])
@pytest.mark.parametrize("fill", [float("nan"), -0.5])
def test_log_space_step_refuses_a_state_forward_refuses(name, fill):
    """log_space keeps the state positive: forward refused hx < 0, but step() took it silently
    (its update is linear) and returned a state the next forward call refused. Now the same
    error; no state (zeros, the scan's start) still steps as forward runs."""
    m = make(name, num_layers=2).eval()
    x = torch.randn(4, 2, 3)
    bad = torch.full((2, 2, 4), fill)
    msg = "log_space=True keeps the state positive"
    got = rf"got 16 of its 16 entries negative or NaN \(the first: {fill}\)"
    with pytest.raises(ValueError, match=f"{msg}.*, {got}"):
        m(x, bad)
    with pytest.raises(ValueError, match=msg):
        m.step(x[0], bad)
    with pytest.raises(ValueError, match=msg):
        m.step(x[0, 0], bad[:, 0])  # unbatched
    out, h_n = m(x)
    state, ys = None, []
    for t in range(4):
        y, state = m.step(x[t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys), out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, h_n, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["mingru_log", "minlstm_log"])
@pytest.mark.parametrize("plain", [False, True])
def test_log_space_takes_a_zero_state(name, plain):
    """A log-space state of 0 (hx=None's start, or an h_n underflowed to 0) was refused ("must be
    > 0"), and its log, −inf, gave NaN gradients through plain ops. It is now the linear
    recurrence's numbers (step()'s), gradients included, on the custom backward and under
    torch.func (plain ops); explicit zeros are hx=None."""
    m = make(name, num_layers=2)
    x = torch.randn(5, 2, 3)
    h0 = torch.rand(2, 2, 4)
    h0[0, 0], h0[1, 1, :2] = 0.0, 0.0

    def run(h):
        return m(x, h)[0].sum()

    def reference(h):  # the linear recurrence, one step at a time
        total, state = 0.0, h
        for t in range(5):
            y, state = m.step(x[t], state)
            total = total + y.sum()
        return total

    h = h0.clone().requires_grad_(True)
    want = reference(h)
    (g_want,) = torch.autograd.grad(want, h)
    if plain:
        got, g = run(h0), torch.func.grad(run)(h0)
    else:
        got = run(h)
        (g,) = torch.autograd.grad(got, h)
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
    assert g.isfinite().all()
    torch.testing.assert_close(g, g_want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m(x, torch.zeros(2, 2, 4)), m(x), rtol=1e-12, atol=1e-12)


REAL_ONLY = ["mingru", "mingru_log", "minlstm", "qrnn", "qrnn_w1"]
C64 = torch.complex64


@pytest.mark.parametrize("name", REAL_ONLY + ["lru"])
@pytest.mark.filterwarnings("ignore:Complex modules are a new feature")  # torch's, for .to(complex)
def test_complex_parameters_are_refused(name):
    """The equations (sigmoid gates, log-space scans; the LRU's real B, C, D around its complex
    state) are defined for real numbers: MinGRU and QRNN built with dtype=torch.complex64, or
    converted with .to(), ran with complex sigmoids; MinLSTM failed in softplus's words."""
    allowed = "float32 or float64" if name == "lru" else "float16, bfloat16, float32 or float64"
    msg = rf"{type(make(name)).__name__} needs {allowed} parameters, got torch.complex64"
    cls, opts = LAYERS[name]
    with pytest.raises(TypeError, match=msg):
        cls(3, 4, dtype=C64, **opts)
    m = make(name).to(C64)
    x = torch.randn(5, 2, 3, dtype=C64)
    for call in (lambda: m(x), lambda: m.step(x[0])):
        with pytest.raises(TypeError, match=msg):
            call()


@pytest.mark.parametrize("name", REAL_ONLY + ["lru"])
def test_complex_input_or_state_is_refused_in_words(name):
    """A complex input (or state) was refused with the advice to convert the module to
    torch.complex64, which no layer supports (the LRU's input is real too: its state is complex)."""
    m = make(name, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    msg = rf"input has dtype torch.complex128, but {type(m).__name__} takes a real input \(torch.float64"
    lengths = torch.tensor([5, 3])
    calls = [lambda: m(x.to(torch.complex128)), lambda: m(x.to(torch.complex128), lengths=lengths),
             lambda: m(pack_padded_sequence(x.to(torch.complex128), lengths)),
             lambda: m.step(x[0].to(torch.complex128))]  # fmt: skip
    for call in calls:
        with pytest.raises(TypeError, match=msg):
            call()
    if name == "lru":
        return
    h = torch.zeros(2, 2, 4, dtype=torch.complex128)
    msg = "h_0 has dtype torch.complex128, but .* takes a real h_0"
    for call in (lambda: m(x, h), lambda: m.step(x[0], h)):
        with pytest.raises(TypeError, match=msg):
            call()
    if name == "qrnn":
        state = (h.real, (torch.zeros(2, 3, dtype=torch.complex128), torch.zeros(2, 4)))
        with pytest.raises(TypeError, match="x_prev_0 has dtype torch.complex128, but QRNN takes a real"):
            m(x, state)
