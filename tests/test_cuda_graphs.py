"""CUDA: ``rnnkit.cuda_graphed`` against eager. Skipped where CUDA is absent (CI).

Run on a GPU machine with ``python -m pytest tests/test_cuda_graphs.py``. Replays must give the
eager layer's outputs, states and gradients, draw fresh regularizer masks, move batch norm's
running statistics once per call, refuse a stale backward, keep at most ``max_graphs``
signatures, train as eager in the trainer and the CLI, and follow weight updates under autocast.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnkit
from tests.test_cuda import DEV, _close, _no_tf32  # noqa: F401  (autouse: full float32 here too)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _flat_state(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize(
    "cls,opts",
    [
        (rnnkit.LSTM, {}),  # cuDNN inside the graph
        (rnnkit.LSTM, {"peephole": True, "num_layers": 2, "bidirectional": True}),
        (rnnkit.LSTM, {"norm": "layer"}),
        (rnnkit.GRU, {"variant": "mut1"}),
        (rnnkit.RNN, {"norm": "layer", "num_layers": 2}),
    ],
)
def test_cuda_graphed_matches_eager(cls, opts):
    """Replays give the eager layer's outputs, states and gradients (inputs, h0, parameters),
    call after call with new data, and gradients accumulate like eager ones."""
    torch.manual_seed(0)
    eager = cls(5, 7, **opts).to(DEV)
    graphed = rnnkit.cuda_graphed(cls(5, 7, **opts).to(DEV))
    graphed.load_state_dict(eager.state_dict())
    layers = opts.get("num_layers", 1) * (2 if opts.get("bidirectional") else 1)
    for _ in range(3):
        x = torch.randn(6, 3, 5, device=DEV)
        h0 = [torch.randn(layers, 3, 7, device=DEV) for _ in range(2 if cls is rnnkit.LSTM else 1)]
        results = []
        for m in (eager, graphed):
            xr, hr = x.clone().requires_grad_(), [h.clone().requires_grad_() for h in h0]
            out, state = m(xr, tuple(hr) if len(hr) == 2 else hr[0])
            (out.square().sum() + sum(s.sum() for s in _flat_state(state))).backward()
            results.append([out, *_flat_state(state), xr.grad, *(h.grad for h in hr)])
        _close(results[1], results[0], 1e-5)
    # no zero_grad between the calls: the parameters' gradients are sums of three
    for a, b in zip(graphed.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)
    assert len(graphed._graphs) == 1
    with torch.no_grad():  # another signature: a forward-only graph
        torch.testing.assert_close(graphed(x)[0], eager(x)[0], atol=1e-5, rtol=1e-5)
    assert len(graphed._graphs) == 2


def test_cuda_graphed_batch_norm_running_statistics_move_once_per_call():
    """The warm-up calls before a capture do not update the running statistics: after three
    training calls they equal the eager layer's (and so do the outputs in evaluation)."""
    torch.manual_seed(0)
    eager = rnnkit.LSTM(5, 7, norm="batch", max_len=4).to(DEV)
    graphed = rnnkit.cuda_graphed(rnnkit.LSTM(5, 7, norm="batch", max_len=4).to(DEV))
    graphed.load_state_dict(eager.state_dict())
    for _ in range(3):
        x = torch.randn(6, 3, 5, device=DEV)
        for m in (eager, graphed):
            m(x)[0].sum().backward()
    for (name, a), b in zip(graphed.named_buffers(), eager.buffers(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
    graphed.eval(), eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(graphed(x)[0], eager(x)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("opts", [{"zoneout": (0.2, 0.1)}, {"recurrent_dropout": 0.3}, {"weight_drop": 0.5}])
def test_cuda_graphed_draws_fresh_masks_each_replay(opts):
    def run(seed):
        torch.manual_seed(seed)
        m = rnnkit.cuda_graphed(rnnkit.LSTM(5, 7, **opts).to(DEV))
        x = torch.ones(6, 3, 5, device=DEV)
        outs = []
        for _ in range(3):
            y = m(x)[0]
            y.sum().backward()
            outs.append(y.detach())
        return outs

    a, b = run(0), run(0)
    _close(a, b, 0)  # reproducible under a seed
    assert not torch.equal(a[1], a[2])  # but each replay draws its own masks
    assert all(torch.isfinite(y).all() for y in a)


def test_cuda_graphed_refuses_a_stale_backward():
    m = rnnkit.cuda_graphed(rnnkit.LSTM(5, 7, peephole=True).to(DEV))
    x = torch.randn(6, 3, 5, device=DEV)
    y1 = m(x)[0]
    y2 = m(x)[0]  # same signature: the replay overwrites y1's saved activations
    with pytest.raises(RuntimeError, match="overwritten by a later call"):
        y1.sum().backward()
    y2.sum().backward()  # the latest one is fine


def test_cuda_graphed_keeps_max_graphs_signatures():
    m = rnnkit.cuda_graphed(rnnkit.GRU(5, 7, norm="layer").to(DEV), max_graphs=2)
    for t in (3, 4, 5, 3):
        m(torch.randn(t, 2, 5, device=DEV))[0].sum().backward()
    assert len(m._graphs) == 2
    m.eval()  # the training flag is part of the signature
    with torch.no_grad():
        ref = m.layer(torch.ones(3, 2, 5, device=DEV))[0]
        torch.testing.assert_close(m(torch.ones(3, 2, 5, device=DEV))[0], ref)


def test_cuda_graphed_trains_like_eager_in_the_trainer():
    """The kit's truncated-BPTT loop (state carried from window to window, detached; gradient
    clipping; Adam) on a graphed layer ends with the eager layer's parameters."""
    from rnnkit.data import bptt_batches
    from rnnkit.train import Trainer

    class LM(nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.emb, self.rnn, self.out = nn.Embedding(20, 16), rnn, nn.Linear(24, 20)

        def forward(self, x, state=None):
            y, state = self.rnn(self.emb(x), state)
            return self.out(y), state

    ids = torch.randint(0, 20, (4000,), generator=torch.Generator().manual_seed(0))
    trained = []
    for graphed in (False, True):
        torch.manual_seed(0)
        rnn = rnnkit.LSTM(16, 24, num_layers=2, peephole=True).to(DEV)
        model = LM(rnnkit.cuda_graphed(rnn) if graphed else rnn).to(DEV)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        Trainer(model, opt, max_steps=15, clip_norm=1.0, progress=False).fit(bptt_batches(ids, 8, 20))
        trained.append(model)
    got, want = trained[1].state_dict(), trained[0].state_dict()
    assert list(got) == list(want)  # the wrapper leaves the checkpoint keys alone
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-4, rtol=1e-4, msg=name)
    assert len(trained[1].rnn._graphs) == 2  # the first window (no state) and the others


def test_cli_cuda_graphs_trains_as_without(tmp_path):
    """``rnnkit train charlm --cuda-graphs``: the same losses as without (a peephole LSTM, on the
    loop path on CUDA); a classifier on padded text (``lengths=``: eager inside) runs too."""
    from rnnkit.cli import main
    from rnnkit.train import read_metrics

    text = tmp_path / "tiny.txt"
    text.write_text("to be or not to be, that is the question. " * 200)
    args = ["--data", str(text), "--device", "cuda", "--max-steps", "12", "--hidden", "32", "--layers", "2",
            "--dropout", "0", "--seq-len", "16", "--batch-size", "4", "--opt", "peephole=True",
            "--log-every", "1", "--no-progress"]  # fmt: skip
    losses = []
    for extra in ([], ["--cuda-graphs"]):
        out = tmp_path / f"run{len(extra)}"
        assert main(["train", "charlm", *args, *extra, "--out", str(out)]) == 0
        rows = read_metrics(out / "metrics.jsonl")
        losses.append(torch.tensor([r["loss"] for r in rows]))
    torch.testing.assert_close(losses[1], losses[0], atol=1e-4, rtol=1e-4)
    csv = tmp_path / "t.csv"
    csv.write_text(
        "text,label\n" + "".join(f'"good film {k}",pos\n"bad one {k} here",neg\n' for k in range(20))
    )
    out = tmp_path / "cls"
    cls = ["train", "classify", "--data", str(csv), "--device", "cuda", "--cuda-graphs", "--max-steps", "4",
           "--hidden", "8", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(cls) == 0


@pytest.mark.parametrize("opts", [{}, {"norm": "layer"}])
def test_cuda_graphed_under_autocast_follows_weight_updates(opts):
    """Under float16 autocast a graphed layer gives the eager layer's outputs and gradients call
    after call while an optimizer changes the weights (no stale cast from autocast's cache);
    without autocast it captures another signature, in float32."""
    torch.manual_seed(0)
    eager = rnnkit.LSTM(5, 7, dtype=torch.float32, **opts).to(DEV)
    graphed = rnnkit.cuda_graphed(rnnkit.LSTM(5, 7, dtype=torch.float32, **opts).to(DEV))
    graphed.load_state_dict(eager.state_dict())
    opts_ = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (eager, graphed)]
    for _ in range(3):
        x = torch.randn(6, 3, 5, device=DEV, dtype=torch.float32)
        results = []
        for m, opt in zip((eager, graphed), opts_):
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16):
                out = m(x)[0]
            out.float().square().sum().backward()
            results.append([out, *(p.grad for p in m.parameters())])
            opt.step()
        _close(results[1], results[0], 1e-3)
    assert len(graphed._graphs) == 1
    del results, out  # no autograd graph of an earlier call alive across the next capture
    out = graphed(torch.randn(6, 3, 5, device=DEV, dtype=torch.float32))[0]
    assert out.dtype == torch.float32 and len(graphed._graphs) == 2


def test_cuda_graphed_recaptures_when_a_weight_is_frozen():
    """The graphs were keyed by the parameters' addresses, shapes and dtypes, not by which ones
    require gradients: after freezing ``bias_ih_l0`` and unfreezing it while freezing ``bias_hh_l0``
    (as many trainable, same shapes), a replay handed the gradients to the parameters it was
    captured with. Each freeze pattern is a graph of its own, with eager's gradients."""
    torch.manual_seed(0)
    eager = rnnkit.LSTM(5, 7).to(DEV)
    graphed = rnnkit.cuda_graphed(rnnkit.LSTM(5, 7).to(DEV))
    graphed.load_state_dict(eager.state_dict())
    x = torch.randn(6, 3, 5, device=DEV)
    for frozen in ("bias_ih_l0", "bias_hh_l0"):
        for m in (eager, graphed):
            m.zero_grad(set_to_none=True)
            for name, p in m.named_parameters():
                p.requires_grad_(name.removeprefix("layer.") != frozen)
            m(x)[0].square().sum().backward()
        for (name, a), b in zip(graphed.named_parameters(), eager.parameters(), strict=True):
            assert (a.grad is None) == (b.grad is None), name
            if b.grad is not None:
                torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)
    assert len(graphed._graphs) == 2


def test_cuda_graphed_follows_a_regularizer_assigned_later():
    """The graphs were keyed by inputs and parameters only: ``layer.zoneout = 0.0`` (or any
    regularizer's probability) assigned after a capture replayed the graph captured with the old
    value, where the eager layer, and the docs' "takes effect at the next call", use the new one."""
    torch.manual_seed(0)
    eager = rnnkit.LSTM(5, 7, zoneout=0.5).to(DEV).eval()
    graphed = rnnkit.cuda_graphed(rnnkit.LSTM(5, 7, zoneout=0.5).to(DEV).eval())
    graphed.load_state_dict(eager.state_dict())
    x = torch.randn(6, 3, 5, device=DEV)
    with torch.no_grad():
        for _ in range(4):  # past the warm-up: replays
            torch.testing.assert_close(graphed(x)[0], eager(x)[0], atol=1e-5, rtol=1e-5)
        for m in (eager, graphed.layer):
            m.zoneout = 0.0
        torch.testing.assert_close(graphed(x)[0], eager(x)[0], atol=1e-5, rtol=1e-5)
    assert len(graphed._graphs) == 2


@pytest.mark.parametrize(
    "opts", [{}, {"peephole": True, "num_layers": 2}, {"norm": "layer", "bidirectional": True}]
)
def test_cuda_graphed_captures_while_an_earlier_output_is_alive(opts):
    """`out, h = layer(x, h)`: the second call is a new signature (a state), captured while the
    first call's output, and so its autograd graph, is still held. That capture failed in CUDA's
    words (the parameters' gradient accumulators belonged to the default stream); outputs and
    gradients match eager."""
    torch.manual_seed(0)
    eager = rnnkit.LSTM(5, 7, **opts).to(DEV)
    graphed = rnnkit.cuda_graphed(rnnkit.LSTM(5, 7, **opts).to(DEV))
    graphed.load_state_dict(eager.state_dict())
    xs = [torch.randn(6, 3, 5, device=DEV) for _ in range(3)]
    results = []
    for m in (eager, graphed):
        state, kept = None, []
        for x in xs:
            out, state = m(x, state)
            out.square().sum().backward()
            kept.append(out)  # held across the next call
            state = tuple(s.detach() for s in state)
        results.append([*kept, *state, *(p.grad for p in m.parameters())])
    _close(results[1], results[0], 1e-5)
    assert len(graphed._graphs) == 2


def test_to_its_own_device_keeps_the_weights_and_the_graphs():
    """A .to() to the weights' own device (the Trainer's, at every construction) leaves cuDNN's
    flat weights where they are: a cuda_graphed layer kept replaying instead of capturing its
    graphs afresh at each new Trainer."""
    layer = rnnkit.LSTM(5, 7, num_layers=2, recurrent_dropout=0.25).to(DEV)
    graphed = rnnkit.cuda_graphed(layer)
    x = torch.randn(6, 3, 5, device=DEV)
    graphed(x)[0].sum().backward()
    ptrs = [p.data_ptr() for p in layer.parameters()]
    graphed.to(DEV)
    assert [p.data_ptr() for p in layer.parameters()] == ptrs
    graphed(x)[0].sum().backward()
    assert len(graphed._graphs) == 1
    layer.weight_hh_l0 = nn.Parameter(layer.weight_hh_l0.detach().clone())  # moved: flattened again
    layer.to(DEV)
    assert len({p.untyped_storage().data_ptr() for p in layer.parameters()}) == 1


def test_cuda_graphed_torch_layer_follows_weight_updates():
    """A torch.nn layer (it re-flattens weights it has not seen: the graph is captured against
    its parameters themselves) replays with the optimizer's updated weights, as eager."""
    torch.manual_seed(0)
    eager = nn.LSTM(5, 7, num_layers=2).to(DEV)
    graphed = rnnkit.cuda_graphed(nn.LSTM(5, 7, num_layers=2).to(DEV))
    graphed.load_state_dict(eager.state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (eager, graphed)]
    for _ in range(3):
        x = torch.randn(6, 3, 5, device=DEV)
        outs = []
        for m, opt in zip((eager, graphed), opts):
            opt.zero_grad()
            out = m(x)[0]
            out.square().sum().backward()
            opt.step()
            outs.append(out)
        torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    assert len(graphed._graphs) == 1
