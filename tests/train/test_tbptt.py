"""Truncated BPTT: equivalence with full BPTT, Williams & Peng's (k1, k2), flat memory."""

import math
import weakref

import pytest
import torch

from rnnkit.data import bptt_batches
from rnnkit.train import Trainer, detach_state, lm_loss
from rnnkit.train.tbptt import tbptt_batch

from .models import NestedStateLM, TinyLM, masked_mean_loss, tokens


def _pair(seed=0, **kw):
    torch.manual_seed(seed)
    a = TinyLM(**kw)
    b = TinyLM(**kw)
    b.load_state_dict(a.state_dict())
    return a, b


def test_window_equal_to_sequence_is_full_bptt():
    a, b = _pair()
    x, y = tokens(24).view(12, 2), tokens(24, seed=1).view(12, 2)
    # full BPTT by hand
    opt_a = torch.optim.SGD(a.parameters(), lr=0.5)
    out, _ = a(x)
    lm_loss(out, y).backward()
    opt_a.step()
    # trainer with k1 = k2 = T
    tr = Trainer(b, torch.optim.SGD(b.parameters(), lr=0.5), tbptt_k1=12, progress=False)
    tr.fit([(x, y)])
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-12)


def test_k1_chunks_equal_carrying_state_across_windows():
    """tbptt_k1=k inside one long batch == bptt_batches windows of k with carried state."""
    a, b = _pair()
    data = tokens(2 * 12 + 1)
    windows = list(bptt_batches(data, 2, 4))  # 3 windows of 4 steps
    x = torch.cat([w.inputs for w in windows])
    y = torch.cat([w.targets for w in windows])
    ta = Trainer(a, torch.optim.SGD(a.parameters(), lr=0.3), progress=False)
    ta.fit(windows)
    tb = Trainer(b, torch.optim.SGD(b.parameters(), lr=0.3), tbptt_k1=4, progress=False)
    tb.fit([(x, y)])
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k2", [3, 5, 12])
def test_k2_greater_than_k1_gradient(k2):
    """The last update's gradient is that of the newest k1 losses through k2 steps."""
    a, b = _pair()
    T, k1 = 10, 2
    x, y = tokens(2 * T).view(T, 2), tokens(2 * T, seed=1).view(T, 2)
    tr = Trainer(a, torch.optim.SGD(a.parameters(), lr=0.0), tbptt_k1=k1, tbptt_k2=k2, progress=False)
    tr.fit([(x, y)])  # lr=0: weights fixed, p.grad holds the last update's gradient
    s = max(0, T - k2)
    with torch.no_grad():
        _, st = b(x[:s]) if s else (None, None)
    out, _ = b(x[s:], st)
    lm_loss(out[-k1:], y[-k1:]).backward()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=0, atol=1e-12)
    # the recurrent state after the batch is that of the whole sequence, detached
    _, full = b(x)
    torch.testing.assert_close(tr.state, detach_state(full), rtol=0, atol=1e-12)
    assert all(t.grad_fn is None for t in tr.state)


def _graph_size(t: torch.Tensor) -> int:
    seen, stack = set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(f for f, _ in fn.next_functions)
    return len(seen)


@pytest.mark.parametrize(
    "model_fn",
    [lambda: TinyLM(5, 4), lambda: TinyLM(5, 4, cell="gru"), lambda: NestedStateLM(5, 4)],
    ids=["lstm-tuple", "gru-tensor", "nested"],
)
def test_memory_flat_over_thousands_of_windows(model_fn):
    """States really detached (tuple and nested too, cf. Lightning #8145): the autograd
    graph of each window's loss has the same size at window 5 and window 2000."""
    torch.manual_seed(0)
    model = model_fn()
    sizes = []

    def loss_fn(out, y):
        loss = lm_loss(out, y)
        sizes.append(_graph_size(loss))
        return loss

    data = tokens(2000, vocab=5)
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), loss_fn=loss_fn, progress=False)
    tr.fit(bptt_batches(data, 1, 1))
    assert len(sizes) == 2000
    assert sizes[4] == sizes[-1] == max(sizes[1:])
    leaves = [tr.state] if torch.is_tensor(tr.state) else list(_leaves(tr.state))
    assert leaves and all(t.grad_fn is None and not t.requires_grad for t in leaves)

    # the measure does see a leak: without detaching, the graph grows with every window
    state, grown = None, []
    for w in list(bptt_batches(data, 1, 1))[:4]:
        out, state = model(w.inputs, state)
        grown.append(_graph_size(lm_loss(out, w.targets)))
    assert grown[3] > grown[0]


def _leaves(s):
    if torch.is_tensor(s):
        yield s
    elif isinstance(s, dict):
        for v in s.values():
            yield from _leaves(v)
    else:
        for v in s:
            yield from _leaves(v)


def _hand_tbptt_grads(model, x, y, k1, k2):
    """Reference TBPTT(k1, k2) with fixed weights, written from the definition: an update after
    every k1 steps (the last one after the T mod k1 remaining steps), whose loss covers the
    steps since the previous update and backpropagates from ``prev + k1 - k2`` on, the start a
    full window would have; the state there is that of the whole prefix, without gradient."""
    T, grads = x.shape[0], []
    for prev in range(0, T, k1):
        t, s = min(prev + k1, T), max(0, prev + k1 - k2)
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            _, st = model(x[:s]) if s else (None, None)
        out, _ = model(x[s:t], st)
        lm_loss(out[prev - s :], y[prev:t]).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    return grads


@pytest.mark.parametrize(("T", "k1", "k2"), [(10, 4, 4), (7, 3, 3), (10, 3, 8), (11, 4, 6), (5, 4, 9)])
def test_length_not_a_multiple_of_k1_every_update_gradient(T, k1, k2):
    """T not a multiple of k1 (it crashed with "max() arg is an empty sequence"): the last, short
    window is trained like the others; every update's gradient is the hand-written one's."""
    a, b = _pair()
    x, y = tokens(2 * T).view(T, 2), tokens(2 * T, seed=1).view(T, 2)
    got = []

    def update(loss):  # no step: the weights stay fixed, as in the reference
        a.zero_grad(set_to_none=True)
        loss.backward()
        got.append([p.grad.clone() for p in a.parameters()])
        return 0.0

    loss_sum, n, _, state = tbptt_batch(a, lm_loss, update, x, y, None, k1, k2)
    want = _hand_tbptt_grads(b, x, y, k1, k2)
    assert len(got) == len(want) == -(-T // k1)
    for g, w in zip(got, want, strict=True):
        for gp, wp in zip(g, w, strict=True):
            torch.testing.assert_close(gp, wp, rtol=0, atol=1e-12)
    assert n == 2 * T
    _, full = b(x)
    torch.testing.assert_close(state, detach_state(full), rtol=0, atol=1e-12)


def test_length_not_a_multiple_of_k1_trains_chunks_k1_k1_rest():
    """k1 == k2 through the Trainer, weights moving: chunks of 4, 4, 2 steps, each from the
    previous chunk's detached state, as a hand-written loop does."""
    a, b = _pair()
    T, k1 = 10, 4
    x, y = tokens(2 * T).view(T, 2), tokens(2 * T, seed=1).view(T, 2)
    opt_a, state = torch.optim.SGD(a.parameters(), lr=0.5), None
    for p in range(0, T, k1):
        out, state = a(x[p : p + k1], state)
        opt_a.zero_grad()
        lm_loss(out, y[p : p + k1]).backward()
        opt_a.step()
        state = detach_state(state)
    tr = Trainer(b, torch.optim.SGD(b.parameters(), lr=0.5), tbptt_k1=k1, progress=False)
    tr.fit([(x, y)])
    assert tr.step == 1
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k2", [5, 8])
def test_chunks_without_targets_take_no_step(k2):
    """Targets only at the end (copy-memory, labels per sequence): the chunks whose targets are
    all -100 carry the state but make no update (their loss, a mean over nothing, was NaN in
    the logged loss, and Adam stepped on their zero gradients). Adam's weights equal those of a
    hand-written loop that steps on the last chunk only."""
    a, b = _pair()
    T, k1 = 13, 5
    x = tokens(2 * T).view(T, 2)
    y = torch.full((T, 2), -100)
    y[-2:] = x[:2]
    opt_a = torch.optim.Adam(a.parameters(), lr=0.01)
    s = max(0, 10 + k1 - k2)  # the last window's start
    with torch.no_grad():
        _, st = a(x[:s])
    out, _ = a(x[s:], st)
    want = lm_loss(out[10 - s :], y[10:])
    want.backward()
    opt_a.step()
    opt_b = torch.optim.Adam(b.parameters(), lr=0.01)
    tr = Trainer(b, opt_b, tbptt_k1=k1, tbptt_k2=k2, progress=False)
    tr.fit([(x, y)])
    assert int(opt_b.state[b.out.bias]["step"]) == 1
    assert len(tr.losses) == 1 and tr.losses[0] == pytest.approx(want.item())
    assert tr.tokens_seen == 4
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-12)


def test_global_count_window_without_local_targets_updates_with_a_zero_gradient():
    """``global_count`` (DDP: the target count summed over ranks): a window with no target here
    but some elsewhere still calls ``update`` (the other ranks' gradient all-reduce needs this
    one), with a zero loss whose gradients are all zero, not the NaN of the masked mean over no
    target; a window without a target anywhere makes no update, as in one process."""
    torch.manual_seed(0)
    model = TinyLM()
    T, k1 = 12, 4
    x = tokens(2 * T).view(T, 2)
    y = x.clone()
    y[4:] = -100  # windows 2 and 3 have no target here
    got = []

    def update(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        got.append((float(loss.detach()), [p.grad.clone() for p in model.parameters()]))
        return 0.0

    elsewhere = {0: 8, 1: 8, 2: 0}  # window 2 has targets on another rank, window 3 none anywhere
    counts = iter(range(3))

    def global_count(n):
        return n + elsewhere[next(counts)]

    loss_sum, n, _, _ = tbptt_batch(
        model, masked_mean_loss, update, x, y, None, k1, global_count=global_count
    )
    assert len(got) == 2 and n == 8 and math.isfinite(loss_sum)
    loss, grads = got[1]
    assert loss == 0.0 and all(g is not None and torch.equal(g, torch.zeros_like(g)) for g in grads)
    # without the hook (one process) both windows without a target here are skipped
    got.clear()
    tbptt_batch(model, masked_mean_loss, update, x, y, None, k1)
    assert len(got) == 1


def test_padded_float_targets_count_without_their_padding():
    """A padded batch's floating targets hold -100 past each length (PadCollate's padding): the
    one-update path left them out of the token count, TBPTT windows counted them (their token
    weights, the logged mean and DDP's weighting then differed from the one-update path's)."""
    from rnnkit.train.tbptt import tbptt_batch

    torch.manual_seed(0)
    rnn = torch.nn.RNN(1, 1)
    tgt = torch.randn(6, 2, 1)
    tgt[4:, 1] = -100.0  # sequence 1 is 4 steps long

    def loss_fn(out, t):
        keep = t != -100.0
        return ((out - t)[keep] ** 2).mean()

    args = (rnn, loss_fn, lambda loss: 0.0, torch.randn(6, 2, 1), tgt, None, 3)
    assert tbptt_batch(*args, padded=True)[1] == 10
    assert tbptt_batch(*args)[1] == 12  # no lengths: -100 is a value like any other


@pytest.mark.parametrize(("k1", "k2"), [(2, 2), (2, 5)])
def test_boundary_states_kept_do_not_grow_with_the_batch(k1, k2):
    """Only the boundaries the next windows can start from are kept: the detached states held
    while a long batch runs stay a few, not one per update (all of a batch's T / k1)."""
    torch.manual_seed(0)
    model = TinyLM()
    held, alive = [], []

    def run(x, state):
        if state is not None:
            held.append(weakref.ref(state[0]))
        alive.append(sum(r() is not None for r in held))
        return model(x, state)

    x = tokens(120).view(60, 2)
    tbptt_batch(run, lm_loss, lambda loss: loss.backward() or 0.0, x, x, None, k1, k2)
    assert len(held) >= 29 and max(alive) <= 4
