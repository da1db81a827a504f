"""Mixed precision: ``torch.autocast`` and half-precision models.

Under autocast a standard configuration runs torch's kernels, so autocast's rules for them
apply exactly as to torch.nn (on the CPU in bfloat16 its LSTM and RNN run in bfloat16, its GRU
in float32): the oracle is torch.nn under the same autocast. Autocast has no rule for the
options torch lacks; they run in the parameters' dtype with autocast off, so their numbers are
the layer's own without autocast, whatever the input's dtype. The parallel-in-time layers in
bfloat16/float16 take the scan's pure loop (the compiled kernel is float32/64 and complex).
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit import dispatch

F32, BF16 = torch.float32, torch.bfloat16
STANDARD = [
    ("LSTM", {}),
    ("GRU", {}),
    ("RNN", {}),
    ("RNN", {"nonlinearity": "relu"}),
    ("LSTM", {"num_layers": 2, "bidirectional": True, "proj_size": 3}),
    ("GRU", {"num_layers": 2, "batch_first": True, "weight_drop": 0.3}),
]
OPTIONS = [
    ("LSTM", {"norm": "layer"}),
    ("LSTM", {"norm": "batch", "max_len": 8, "num_layers": 2}),
    ("LSTM", {"peephole": True, "bidirectional": True}),
    ("LSTM", {"zoneout": (0.2, 0.1), "recurrent_dropout": 0.2}),
    ("LSTM", {"coupled_gates": True}),
    ("GRU", {"variant": "mut1"}),
    ("GRU", {"norm": "layer", "recurrent_dropout": 0.2}),
    ("RNN", {"norm": "layer"}),
]


def _grads(m, x, run):
    """Outputs, states and the gradients of the parameters and the input of ``run(m, x)``."""
    x = x.detach().requires_grad_(True)
    out, h = run(m, x)
    if isinstance(out, torch.nn.utils.rnn.PackedSequence):
        out = out.data
    hs = list(h) if isinstance(h, tuple) else [h]
    loss = out.float().square().sum() + sum(s.float().sum() for s in hs)
    return [out, *hs, *torch.autograd.grad(loss, [*m.parameters(), x])]


def _autocast(m, x):
    with torch.autocast("cpu", dtype=BF16):
        return m(x)


def _same(got, want):
    for u, v in zip(got, want, strict=True):
        assert u.dtype == v.dtype
        # float32 rounding only (GEMM blocking may differ with the buffers); bfloat16 is ~1e-2
        torch.testing.assert_close(u, v.to(u.dtype), atol=1e-5, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")  # torch.nn's too
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize(("name", "kw"), STANDARD)
def test_standard_layers_follow_autocast_like_torch(name, kw, packed):
    """bfloat16 autocast on the CPU: the same dtypes and numbers as torch.nn, gradients too."""
    kw = dict(kw)
    wd = kw.pop("weight_drop", 0)
    torch.manual_seed(0)
    ours = getattr(rnnkit, name)(5, 7, dtype=F32, weight_drop=wd, **kw).eval()
    ref = getattr(torch.nn, name)(5, 7, dtype=F32, **kw).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 6, 5, dtype=F32) if kw.get("batch_first") else torch.randn(6, 3, 5, dtype=F32)

    def run(m, v):
        if packed:
            v = pack_padded_sequence(v, torch.tensor([6, 4, 2]), batch_first=kw.get("batch_first", False))
        return _autocast(m, v)

    _same(_grads(ours, x, run), _grads(ref, x, run))


@pytest.mark.parametrize("impl", ["auto", "loop", "fused"])
@pytest.mark.parametrize(("name", "kw"), OPTIONS)
def test_options_run_in_the_parameters_dtype_under_autocast(name, kw, impl):
    """Options torch has no kernel for: under autocast the layer's own float32 numbers (same
    masks), for a float32 or a bfloat16 input; gradients in the input's dtype."""
    torch.manual_seed(0)
    m = getattr(rnnkit, name)(5, 7, dtype=F32, impl=impl, **kw)
    x = torch.randn(6, 3, 5, dtype=F32)

    def plain(m, v):
        torch.manual_seed(1)
        return m(v.float())

    def mixed(m, v):
        torch.manual_seed(1)
        return _autocast(m, v)

    want = _grads(m, x, plain)
    _same(_grads(m, x, mixed), want)
    got = _grads(m, x.to(BF16), mixed)
    assert got[-1].dtype == BF16  # the input's gradient
    _same(got[:-1], _grads(m, x.to(BF16).float(), plain)[:-1])


def test_autocast_takes_torch_kernels_for_standard_configurations():
    """On the CPU a float32 GRU runs rnnkit's fused kernels, under autocast torch's (whose GRU
    autocast keeps in float32, like torch.nn's)."""
    m, x = rnnkit.GRU(5, 7, dtype=F32), torch.randn(6, 3, 5, dtype=F32)
    with torch.autocast("cpu", dtype=BF16):
        assert dispatch.select(m, x) == "torch"
        assert dispatch.select(rnnkit.LSTM(5, 7, norm="layer", dtype=F32), x) in ("fused", "loop")


def test_a_bfloat16_input_outside_autocast_still_needs_matching_parameters():
    m = rnnkit.LSTM(5, 7, dtype=F32)
    with pytest.raises(ValueError, match="dtype torch.bfloat16 but the parameters are torch.float32"):
        m(torch.randn(6, 3, 5, dtype=BF16))


@pytest.mark.parametrize("name", ["MinGRU", "MinLSTM", "QRNN"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_parallel_layers_in_half_precision(name, dtype):
    """Half-precision parallel layers (the scan's pure loop) stay close to float32 and train."""
    torch.manual_seed(0)
    m = getattr(rnnkit, name)(5, 7, dtype=F32)
    half = getattr(rnnkit, name)(5, 7, dtype=dtype)
    half.load_state_dict(m.state_dict())
    x = torch.randn(6, 3, 5, dtype=F32)
    out, got = m(x)[0], half(x.to(dtype))[0]
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), out, atol=0.05, rtol=0.05)
    got.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in half.parameters())
    with torch.autocast("cpu", dtype=BF16):
        mixed = m(x)[0]
    torch.testing.assert_close(mixed.float(), out, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("name", ["MinGRU", "MinLSTM", "QRNN", "LRU"])
def test_parallel_layers_under_autocast_take_a_float32_state(name):
    """A float32 initial state (as the training kit carries it across TBPTT windows) with
    autocast's bfloat16 gates: the state joins autocast's dtype (QRNN and minLSTM refused it,
    which broke ``rnnkit train charlm --arch qrnn`` under --amp auto); close to float32, trains."""
    torch.manual_seed(0)
    m = getattr(rnnkit, name)(5, 7, dtype=F32)
    x = torch.randn(6, 3, 5, dtype=F32)
    _, h = m(x[:3])  # QRNN (window=2): (c, x_prevs), float32 too
    want = m(x[3:], h)[0]
    with torch.autocast("cpu", dtype=BF16):
        got, h_n = m(x[3:], rnnkit.detach_state(h))
    torch.testing.assert_close(got.float(), want, atol=0.05, rtol=0.05)
    got.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize(("sizes", "layers"), [((5, 7), 1), ((7, 7), 1), ((5, 7), 2)])
def test_lru_output_dtype_under_autocast_does_not_depend_on_its_shape(sizes, layers):
    """The LRU's skip term ``D x``: a full ``D`` is a GEMM (autocast's bfloat16), a diagonal one
    (``input_size == hidden_size``, also every layer after the first) was an ``addcmul`` of the
    float32 input, which promoted the output to float32. Now bfloat16 either way, as the other
    parallel layers' outputs."""
    torch.manual_seed(0)
    m = rnnkit.LRU(*sizes, num_layers=layers, dtype=F32)
    x = torch.randn(6, 3, sizes[0], dtype=F32)
    want, _ = m(x)
    with torch.autocast("cpu", dtype=BF16):
        got, _ = m(x)
    assert got.dtype == BF16
    torch.testing.assert_close(got.float(), want, atol=0.05, rtol=0.05)


CELL_OPTIONS = [
    ("GRUCell", {"reset_after": False}),
    ("GRUCell", {"norm": "layer"}),
    ("GRUCell", {"variant": "mut2"}),
    ("LSTMCell", {"norm": "batch"}),
    ("LSTMCell", {"peephole": True, "coupled_gates": True}),
    ("RNNCell", {"zoneout": 0.3}),
    ("RNNCell", {"norm": "layer", "recurrent_dropout": 0.2}),
]


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("state_dtype", [None, F32, BF16])
@pytest.mark.parametrize(("name", "kw"), CELL_OPTIONS)
def test_option_cells_run_in_the_parameters_dtype_under_autocast(name, kw, state_dtype, training):
    """As the layers: a cell option torch has no kernel for runs in the parameters' dtype with
    autocast off (it ran under autocast: mixed dtypes inside the step crashed torch.lerp, e.g.
    GRUCell(reset_after=False) without a state, and the numbers were not the layer's)."""
    torch.manual_seed(0)
    cell = getattr(rnnkit, name)(5, 7, dtype=F32, **kw).train(training)
    x = torch.randn(3, 5, dtype=F32)
    h = None
    if state_dtype is not None:
        h = tuple(torch.randn(3, s, dtype=state_dtype) for s in cell.cell.state_sizes())
        h = h if len(h) > 1 else h[0]

    def step(autocast):
        torch.manual_seed(1)
        masks = cell.sample_masks(3) if cell.recurrent_dropout else None
        hx = h
        if h is not None and not autocast:
            hx = tuple(s.float() for s in h) if isinstance(h, tuple) else h.float()
        with torch.autocast("cpu", dtype=BF16, enabled=autocast):
            out = cell(x, hx, masks=masks, step=1)
        return out if isinstance(out, tuple) else (out,)

    want = step(False)
    _same(step(True), want)


@pytest.mark.parametrize(
    ("make", "bad"),
    [
        (lambda: rnnkit.LSTM(5, 7, norm="layer", dtype=F32), {"input": torch.int64}),
        (lambda: rnnkit.GRU(5, 7, variant="mut1", dtype=F32), {"input": torch.complex64}),
        (lambda: rnnkit.LSTMCell(5, 7, peephole=True, dtype=F32), {"input": torch.int64}),
        (lambda: rnnkit.LRU(5, 7, dtype=F32), {"h_0": F32}),  # its state is complex64
        (lambda: rnnkit.LRU(5, 7, dtype=F32), {"h_0": BF16}),
    ],
    ids=["lstm-int-input", "gru-complex-input", "cell-int-input", "lru-real-state", "lru-bf16-state"],
)
def test_autocast_relaxes_the_dtype_check_for_floating_tensors_only(make, bad):
    """Autocast casts floating-point tensors only, so only a floating input or state may differ
    from the parameters' dtype under it. The check let any dtype through: an option layer cast
    an integer input to float32 (a complex one lost its imaginary part, with a warning) and ran;
    the LRU took a real state for its complex one. Now the error they get without autocast."""
    m = make()
    cell = isinstance(m, rnnkit.StepCell)
    (what, dtype), shape = next(iter(bad.items())), (3, 5) if cell else (6, 3, 5)
    x = torch.ones(shape, dtype=dtype if what == "input" else F32)
    h = torch.ones(1, 3, 7, dtype=dtype) if what == "h_0" else None
    with torch.autocast("cpu", dtype=BF16), pytest.raises(ValueError, match=f"{what} has dtype {dtype} but"):
        m(x, h)


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("LSTM", {"weight_drop": 0.3}),
        ("RNN", {"weight_drop": 0.3}),
        ("LSTM", {"locked_dropout": 0.3, "num_layers": 2}),
    ],
)
def test_masks_of_torch_kernels_under_autocast_are_in_the_parameters_dtype(name, kw):
    """A standard layer with weight-drop or locked dropout under autocast runs torch's kernels
    on the input as given; its masks were drawn in the input's dtype, so a bfloat16 input to a
    float32 layer scaled the dropped weights by 1 / (1 - p) rounded to bfloat16 (1.4297 for
    1 / 0.7): other numbers than for the same input in float32, and other weights than the
    cells' masks (``sample_masks``, in the parameters' dtype) give for the same seed. Masks now
    follow the parameters' dtype, so both inputs give the same numbers."""
    torch.manual_seed(0)
    m = getattr(rnnkit, name)(5, 7, dtype=F32, **kw).train()
    x = torch.randn(6, 3, 5, dtype=F32).to(BF16)

    def run(v):
        torch.manual_seed(1)
        return _autocast(m, v)[0]

    got, want = run(x), run(x.float())
    assert got.dtype == want.dtype == BF16  # torch's LSTM / RNN under autocast
    torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize(("name", "kw"), STANDARD[:4] + [("LSTM", {"proj_size": 3})])
def test_a_batch_of_no_sequences_under_autocast_has_torchs_dtypes(name, kw):
    """A dense batch of zero sequences gave float32 outputs and states under autocast, where
    torch.nn's RNN gives bfloat16 (as for a non-empty batch); its LSTM and GRU give float32 for
    an empty batch (not bfloat16 as for a non-empty one: torch.nn's own inconsistency, followed).
    Standard configurations now run torch's kernel on it under autocast, as on any batch."""
    torch.manual_seed(0)
    ours = getattr(rnnkit, name)(5, 7, dtype=F32, **kw)
    ref = getattr(torch.nn, name)(5, 7, dtype=F32, **kw)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(6, 0, 5, dtype=F32)
    (out, h), (ref_out, ref_h) = _autocast(ours, x), _autocast(ref, x)
    got, want = (
        [out, *(h if isinstance(h, tuple) else (h,))],
        [ref_out, *(ref_h if isinstance(ref_h, tuple) else (ref_h,))],
    )
    for u, v in zip(got, want, strict=True):
        assert u.dtype == v.dtype and u.shape == v.shape


@pytest.mark.parametrize(("name", "kw"), OPTIONS[:3] + OPTIONS[5:6])
def test_a_batch_of_no_sequences_of_an_option_layer_is_in_the_parameters_dtype(name, kw):
    """Under autocast the options torch lacks return the parameters' dtype, whatever the input's;
    a dense batch of zero sequences in bfloat16 returned bfloat16 outputs and states (as did a
    bfloat16 hx), where a non-empty batch returns float32."""
    m = getattr(rnnkit, name)(5, 7, dtype=F32, **kw).eval()
    D = m.num_layers * m.num_directions
    for B in (2, 0):
        x, h = torch.randn(6, B, 5, dtype=BF16), torch.randn(D, B, 7, dtype=BF16)
        for hx in (None, (h, h) if name == "LSTM" else h):
            with torch.autocast("cpu", dtype=BF16):
                out, state = m(x, hx)
            states = state if isinstance(state, tuple) else (state,)
            assert [t.dtype for t in (out, *states)] == [F32] * (1 + len(states))
            assert out.shape == (6, B, 7 * m.num_directions)
