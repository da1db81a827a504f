"""Truncated BPTT: equivalence with full BPTT, Williams & Peng's (k1, k2), flat memory."""

import pytest
import torch

from rnnkit.data import bptt_batches
from rnnkit.train import Trainer, detach_state, lm_loss

from .models import NestedStateLM, TinyLM, tokens


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
