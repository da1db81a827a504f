"""QRNN(window=2) carries its convolution's past: ``h_n = (c, (x_prev_0, ..., x_prev_{L-1}))``.

The gates of step t read ``[x_{t-1}, x_t]``; ``forward`` took and returned only ``c``, so a
sequence continued across calls (sampling one character at a time, TBPTT windows, a decoder
fed its own outputs) restarted from ``x_{-1} = 0`` at every call. The whole-sequence call is
the oracle here (float64)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit.state import detach_state, map_tensors

from . import references


def make(I=3, H=4, seed=0, **kw):
    torch.manual_seed(seed)
    return rnnkit.QRNN(I, H, **kw)


def leaves(state):
    out = []
    map_tensors(out.append, state)
    return out


def close(got, want, tol=1e-12):
    a, b = leaves(got), leaves(want)
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=tol, atol=tol)


def seq(state, i):
    """Sequence ``i`` of a batched ``(c, x_prevs)``, as an unbatched call takes it."""
    return state[0][:, i], tuple(p[i] for p in state[1])


def random_state(m, B):
    c = torch.randn(m.num_layers * m.num_directions, B, m.hidden_size)
    return c, tuple(torch.randn(B, m.layer_input_size(k)) for k in range(m.num_layers))


@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
@pytest.mark.parametrize("chunks", [[1] * 9, [4, 1, 2, 2]])
def test_chunks_with_the_state_carried_equal_one_call(L, layout, chunks):
    m = make(num_layers=L, batch_first=layout == "batch_first")
    x = torch.randn(2, 9, 3) if layout == "batch_first" else torch.randn(9, 2, 3)
    if layout == "unbatched":
        x = x[:, 0]
    td = 1 if layout == "batch_first" else 0
    out, h_n = m(x)
    c, prevs = h_n
    assert isinstance(h_n, tuple) and len(prevs) == L
    B = () if layout == "unbatched" else (2,)
    assert c.shape == (L, *B, 4) and [p.shape for p in prevs] == [(*B, 3), *[(*B, 4)] * (L - 1)]
    parts, state = [], None
    for piece in x.split(chunks, td):
        y, state = m(piece, state)
        parts.append(y)
    torch.testing.assert_close(torch.cat(parts, td), out, rtol=1e-12, atol=1e-12)
    close(state, h_n)
    # layer 0's x_prev is the last input; the old behaviour (only c carried) was far off
    torch.testing.assert_close(prevs[0], x.select(td, -1))
    y1, s1 = m(x.narrow(td, 0, 4))
    y2, _ = m(x.narrow(td, 4, 5), s1[0])
    assert (y2 - out.narrow(td, 4, 5)).abs().max() > 1e-3


def test_initial_x_prev_is_the_input_before_the_first_step():
    """Against the paper reference with ``x_{-1}`` given, gradients included; a plain ``c``
    (the old state) still means ``x_{-1} = 0``, and ``None`` zeros."""
    m = make(num_layers=2)
    x = torch.randn(6, 2, 3, requires_grad=True)
    c0, prevs = random_state(m, 2)
    h0 = (c0.requires_grad_(), tuple(p.requires_grad_() for p in prevs))
    got, want = m(x, h0), references.stack(m, x, h0)
    close(got, want)
    ins = [x, c0, *prevs, *m.parameters()]
    w = [torch.randn_like(t) for t in leaves(want)]
    close(torch.autograd.grad(leaves(got), ins, w), torch.autograd.grad(leaves(want), ins, w))
    zeros = tuple(torch.zeros_like(p) for p in prevs)
    close(m(x, c0), m(x, (c0, zeros)))
    close(m(x), m(x, (torch.zeros_like(c0), zeros)))
    close(m(x, (None, prevs)), m(x, (torch.zeros_like(c0), prevs)))
    close(m(x, (c0, None)), m(x, c0))


def test_gradcheck_through_x_prev():
    m = make(I=2, H=2, num_layers=2)
    x = torch.randn(3, 2, 2, requires_grad=True)
    c0, (p0, p1) = random_state(m, 2)
    args = (x, c0.requires_grad_(), p0.requires_grad_(), p1.requires_grad_())
    assert torch.autograd.gradcheck(lambda x, c, p0, p1: tuple(leaves(m(x, (c, (p0, p1))))), args)
    g = torch.autograd.grad(m(x, (c0, (p0, p1)))[0].sum(), [p0, p1])
    assert all(t.abs().sum() > 0 for t in g)


def test_forward_and_step_states_are_interchangeable():
    m = make(num_layers=2, dropout=0.2).eval()
    x = torch.randn(10, 2, 3)
    out, h_n = m(x)
    y1, s = m(x[:3])
    ys = [y1]
    for t in range(3, 6):  # step after forward
        y, s = m.step(x[t], s)
        ys.append(y[None])
    y3, s = m(x[6:], s)  # forward after step
    torch.testing.assert_close(torch.cat([*ys, y3]), out, rtol=1e-12, atol=1e-12)
    close(s, h_n)
    # step takes a plain c too (x_prev = 0), as forward does
    c0 = torch.randn(2, 2, 4)
    close(m.step(x[0], c0), m.step(x[0], (c0, (torch.zeros(2, 3), torch.zeros(2, 4)))))


@pytest.mark.parametrize("unbatched", [False, True])
def test_step_state_is_not_the_callers_input(unbatched):
    """``step``'s ``x_prev_0`` is a copy of ``x_t``: it was the caller's tensor itself (a view of
    it unbatched), so a stream refilling one input buffer in place saw ``[x_t, x_t]`` at the next
    step instead of ``[x_{t-1}, x_t]``, and an in-place change of the state changed the input."""
    m = make(num_layers=2).eval()
    x = torch.randn(5, 2, 3)
    if unbatched:
        x = x[:, 0]
    out, _ = m(x)
    buf, s, ys = torch.empty_like(x[0]), None, []
    for t in range(x.shape[0]):
        buf.copy_(x[t])  # one input buffer, refilled in place
        y, s = m.step(buf, s)
        ys.append(y.clone())
    torch.testing.assert_close(torch.stack(ys), out, rtol=1e-12, atol=1e-12)
    s[1][0].add_(1.0)
    torch.testing.assert_close(buf, x[-1], rtol=0, atol=0)


@pytest.mark.parametrize("batch_first", [False, True])
def test_padded_and_packed_x_prev_is_each_sequences_own_last_input(batch_first):
    m = make(num_layers=2, batch_first=batch_first)
    lengths = torch.tensor([3, 6, 1, 4])
    xt = torch.randn(6, 4, 3)
    x = xt.transpose(0, 1) if batch_first else xt
    h0 = random_state(m, 4)
    out, (c, prevs) = m(x, h0, lengths)
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    close(m(packed, h0)[1], (c, prevs))
    for i, n in enumerate(lengths.tolist()):
        h0_i = seq(h0, i)
        _, (ci, pi) = m(xt[:n, i], h0_i)  # the sequence alone, unbatched
        torch.testing.assert_close(prevs[0][i], xt[n - 1, i])
        close(seq((c, prevs), i), (ci, pi))
        # continuing each sequence from its state == the sequence and its continuation at once
        more = torch.randn(2, 3)
        y2, _ = m(more, seq((c, prevs), i))
        whole, _ = m(torch.cat([xt[:n, i], more]), h0_i)
        torch.testing.assert_close(y2, whole[n:], rtol=1e-12, atol=1e-12)


def test_bidirectional_reverse_direction_starts_from_zero():
    """The reverse direction's ``x_T`` stays 0 (its future is unknown): only the forward
    half reads ``x_prev``; ``h_n`` holds the last inputs (layer 1's are ``2H`` wide)."""
    m = make(num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3)
    c0, prevs = random_state(m, 2)
    assert [p.shape[-1] for p in prevs] == [3, 8]
    _, (c, last) = m(x, (c0, prevs))
    assert c.shape == (4, 2, 4) and last[1].shape == (2, 8)
    torch.testing.assert_close(last[0], x[-1])
    one = make(bidirectional=True)
    y, _ = one(x, (c0[:2], prevs[:1]))
    y0, _ = one(x, c0[:2])
    assert (y[0, :, :4] - y0[0, :, :4]).abs().max() > 1e-3  # forward half: x_{-1} matters
    torch.testing.assert_close(y[..., 4:], y0[..., 4:], rtol=0, atol=0)  # reverse half: not read


def test_state_errors_name_expected_and_received():
    m = make(num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3)
    c0, prevs = random_state(m, 2)
    with pytest.raises(ValueError, match=r"expected x_prev_1 of shape \(2, 8\), got \(2, 4\)"):
        m(x, (c0, (prevs[0], torch.zeros(2, 4))))
    with pytest.raises(ValueError, match=r"expected x_prev_0 of shape \(3,\), got \(2, 3\)"):
        m(x[:, 0], (c0[:, 0], prevs))
    with pytest.raises(ValueError, match=r"expected h_0 of shape \(4, 2, 4\), got \(2, 2, 4\)"):
        m(x, (c0[:2], prevs))
    with pytest.raises(ValueError, match="per layer, got tuple of length 2 holding tuple of length 1"):
        m(x, (c0, prevs[:1]))
    with pytest.raises(ValueError, match="got tuple of length 3"):
        m(x, (c0, prevs, None))
    with pytest.raises(ValueError, match="x_prev_0 must be a torch.Tensor, got list"):
        m(x, (c0, ([0.0], prevs[1])))
    with pytest.raises(ValueError, match="x_prev_0 has dtype torch.float32"):
        m(x, (c0, (prevs[0].float(), prevs[1])))
    with pytest.raises(ValueError, match=r"expected h_0 of shape \(1, 2, 4\)"):
        make().step(x[0], (torch.zeros(2, 4), (torch.zeros(2, 3),)))


def test_window_1_state_is_unchanged():
    m = make(num_layers=2, window=1)
    x = torch.randn(5, 2, 3)
    out, h = m(x)
    assert isinstance(h, torch.Tensor) and h.shape == (2, 2, 4)
    y1, h1 = m(x[:2])
    y2, h2 = m(x[2:], h1)
    torch.testing.assert_close(torch.cat([y1, y2]), out)


def test_training_kit_carries_detaches_and_checkpoints_the_state(tmp_path):
    """TBPTT windows with the tuple state carried (detached) == the whole sequence; the state
    survives a checkpoint: a run resumed from it ends in the whole sequence's state."""
    from rnnkit.data import bptt_batches
    from rnnkit.train import Trainer
    from rnnkit.train.tbptt import tbptt_batch

    class LM(torch.nn.Module):
        calls = 0

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb, self.rnn = torch.nn.Embedding(7, 4), make(4, 5, num_layers=2)
            self.out = torch.nn.Linear(5, 7)

        def forward(self, x, state=None):
            LM.calls += 1
            y, state = self.rnn(self.emb(x), state)
            return self.out(y), state

    model = LM()
    x, y = torch.randint(0, 7, (12, 2)), torch.randint(0, 7, (12, 2))
    full, full_state = model(x)
    losses = []

    def update(loss):
        losses.append(float(loss.detach()))
        return 0.0

    lm = lambda out, t: torch.nn.functional.cross_entropy(out.reshape(-1, 7), t.reshape(-1))  # noqa: E731
    _, _, _, state = tbptt_batch(model, lm, update, x, y, None, 4, 4, 0)
    close(state, detach_state(full_state))
    assert all(t.grad_fn is None for t in leaves(state))
    for i, loss in enumerate(losses):
        torch.testing.assert_close(loss, float(lm(full[4 * i : 4 * i + 4], y[4 * i : 4 * i + 4]).detach()))
    # carried across batches and through a checkpoint (lr = 0: the weights stay those of full)
    data = list(bptt_batches(torch.randint(0, 7, (2 * 12 + 1,)), 2, 4))
    stream = torch.cat([w.inputs for w in data])
    _, want = model(stream)

    def run(steps, resume):
        m = LM()
        tr = Trainer(m, torch.optim.SGD(m.parameters(), lr=0.0), out_dir=str(tmp_path), checkpoint_every=2,
                     max_steps=steps, resume=resume, progress=False, plot=False)  # fmt: skip
        tr.fit(data)
        return tr

    run(2, False)
    LM.calls = 0
    tr = run(3, True)
    assert tr.step == 3 and LM.calls == 1  # one window from the checkpoint's state
    close(tr.state, detach_state(want))


def test_diagnostics_replay_takes_and_returns_the_tuple_state():
    from rnnkit.diagnostics import replay

    m = make(num_layers=2, batch_first=True)
    x = torch.randn(2, 5, 3)
    h0 = random_state(m, 2)
    close(replay(m, x, h0)[:2], m(x, h0))
    close(replay(m, x[0], seq(h0, 0))[:2], m(x[0], seq(h0, 0)))
    out, h_n = replay(m, x, h0[0])[:2]  # a plain c: x_prev = 0, as forward
    close((out, h_n), m(x, h0[0]))
