"""Property tests of the layers' invariants (continued from tests/test_properties.py): the impls
agree, forward and gradients; a ``state_dict`` round trip; the step APIs (:class:`Stream`, the
``*Cell`` modules) against the full-sequence call. For every cell option of the zoo.
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit import dispatch
from rnnkit.kernels.stream import Stream

from .test_properties import (
    CLASSES,
    IMPLS,
    OPTIONS,
    SETTINGS,
    TOL,
    as_hx,
    as_tuple,
    backend,
    build,
    close,
    configs,
    is_batch_norm,
    random_state,
)

CELLS = {"lstm": rnnkit.LSTMCell, "gru": rnnkit.GRUCell, "rnn": rnnkit.RNNCell}


@SETTINGS
@given(
    cfg=configs(bidirectional=False),
    impl=st.sampled_from(IMPLS),
    T=st.integers(1, 5),
    prompt=st.integers(0, 3),
    B=st.integers(0, 3),
)
def test_stream_equals_full_sequence(cfg, impl, T, prompt, B):
    """Stepping a layer with :class:`Stream` from a prompt's final state (``step=len(prompt)``)
    gives the layer's call over prompt + continuation. ``B=0``: unbatched."""
    family, kw = cfg
    m = build(family, kw, impl, T).eval()
    bf = kw["batch_first"]
    I, n = kw["input_size"], T + prompt
    shape = (n, I) if B == 0 else ((B, n, I) if bf else (n, B, I))
    x = torch.randn(shape)
    seq = x if B == 0 or not bf else x.transpose(0, 1)  # time-major view
    h0 = as_hx(random_state(m, B or None))
    with backend(impl), torch.no_grad():
        y, fin = m(x, h0)
        state = h0
        if prompt:
            _, state = m(x[:, :prompt] if bf and B else x[:prompt], h0)
        stream, ys = Stream(m), []
        for t in range(prompt, prompt + T):
            u, state = stream.step(seq[t], state, step=t if t == prompt else None)
            ys.append(u)
    want = y if B == 0 or not bf else y.transpose(0, 1)
    close(torch.stack(ys), want[prompt:], atol=1e-12, rtol=1e-12)
    close(state, fin, atol=1e-12, rtol=1e-12)


@SETTINGS
@given(
    cfg=configs(),
    T=st.integers(1, 4),
    B=st.integers(1, 3),
    training=st.booleans(),
    form=st.sampled_from(["dense", "packed", "lengths"]),
    step=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
def test_state_dict_round_trip_and_impls_agree(cfg, T, B, training, form, step, seed):
    """A fresh layer of the same options loaded from a ``state_dict`` computes what the original
    computes, exactly; the impls (torch's kernels where ``auto`` picks them, the fused kernels
    compiled and pure, the loop) agree on outputs, final states, running statistics and the
    gradients of input, initial state and every parameter; and a call without autograd gives
    the outputs of one with it. Dense, packed (unsorted) or ``lengths=`` input."""
    family, kw = cfg
    I, bf = kw["input_size"], kw["batch_first"]
    torch.manual_seed(seed)
    x = torch.randn((B, T, I) if bf else (T, B, I))
    lengths = torch.randint(1, T + 1, (B,))
    lengths[torch.randint(B, ())] = T
    call = dict(form=form, lengths=lengths, step=0 if kw["bidirectional"] else step)
    hx = random_state(build(family, kw, "loop", 0), B)
    results = {}
    fused = dispatch.fused_supported(build(family, kw, "loop", 0))
    for impl in IMPLS if fused else ["auto", "loop"]:
        src = build(family, kw, impl, 1, training)
        m = build(family, kw, impl, 2, training)
        m.load_state_dict(src.state_dict())
        with backend(impl):
            results[impl] = _forward_backward(m, x, hx, **call)
            assert all(
                torch.equal(u, v) for u, v in zip(_forward_backward(src, x, hx, **call), results[impl])
            )
            with torch.no_grad():  # the inference kernels
                fresh = build(family, kw, impl, 1, training)
                no_grad = (*_call(fresh, x, hx, **call), *fresh.buffers())
        close(no_grad, results[impl][: len(no_grad)])
    tol = dict(atol=1e-8, rtol=1e-8) if training and is_batch_norm(kw) else TOL
    for impl in results:
        close(results[impl], results["loop"], **tol)


def _call(m, x, hx: tuple, form: str, lengths, step: int) -> tuple:
    """The output (padded) and final states of ``m`` on ``x`` in ``form``."""
    bf = m.batch_first
    if form == "packed":
        out, fin = m(pack_padded_sequence(x, lengths, bf, enforce_sorted=False), as_hx(hx), step=step)
        out = pad_packed_sequence(out, bf, total_length=x.shape[1 if bf else 0])[0]
    else:
        out, fin = m(x, as_hx(hx), lengths=lengths if form == "lengths" else None, step=step)
    return (out, *as_tuple(fin))


def _forward_backward(m, x, hx: tuple, **call) -> tuple:
    """Outputs, final states, buffers after the call and the gradients of a fixed readout with
    respect to the input, the initial state and every parameter (zeros where unused)."""
    x = x.clone().requires_grad_(True)
    hx = tuple(h.clone().requires_grad_(True) for h in hx)
    outs = _call(m, x, hx, **call)
    readout = sum((o * torch.linspace(-1, 1, o.numel()).view(o.shape)).sum() for o in outs)
    leaves = [x, *hx, *m.parameters()]
    grads = torch.autograd.grad(readout, leaves, allow_unused=True)
    grads = tuple(torch.zeros_like(v) if g is None else g for g, v in zip(grads, leaves))
    return (*[o.detach() for o in outs], *[b.clone() for b in m.buffers()], *grads)


@SETTINGS
@given(
    cfg=configs(bidirectional=False),
    T=st.integers(1, 5),
    B=st.integers(0, 3),
    training=st.booleans(),
    with_state=st.booleans(),
)
def test_step_cell_over_a_sequence_equals_one_layer(cfg, T, B, training, with_state):
    """``rnnkit.LSTMCell`` & co. with the layer's cell options, stepped over a sequence with
    ``step=t``, give a one-layer layer's outputs, final state and (in training) running
    statistics. ``B=0``: unbatched. (The cells take no ``proj_size``.)"""
    family, kw = cfg
    kw = {k: v for k, v in kw.items() if k not in ("num_layers", "batch_first", "bidirectional", "dropout")}
    kw.pop("proj_size", None)
    layer = build(family, kw, "loop", T, training)
    cell = CELLS[family](**kw).train(layer.training)
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in layer.state_dict().items()})
    x = torch.randn((T, kw["input_size"]) if B == 0 else (T, B, kw["input_size"]))
    h0 = random_state(layer, B or None)
    with torch.no_grad():
        y, fin = layer(x, as_hx(h0) if with_state else None)
        state, ys = as_hx(tuple(h[0] for h in h0)) if with_state else None, []
        for t in range(T):
            state = cell(x[t], state, step=t)
            ys.append(as_tuple(state)[0])
    close(torch.stack(ys), y)
    close(tuple(s.unsqueeze(0) for s in as_tuple(state)), fin)
    close(tuple(cell.buffers()), tuple(layer.buffers()))


def test_every_listed_option_but_one_runs_fused():
    """The properties skip ``impl="fused"`` for an option without a fused kernel: the strategy
    lists just the last two, so that a dropped kernel does not silently go untested."""
    missing = [
        (family, opts)
        for family, options in OPTIONS.items()
        for opts in options
        if not dispatch.fused_supported(CLASSES[family](3, 4, **opts))
    ]
    assert missing == [("lstm", OPTIONS["lstm"][-2]), ("lstm", OPTIONS["lstm"][-1])]
