"""torch's training-side tools applied to rnnkit layers as to torch.nn's: gradient clipping,
``parameters_to_vector`` / ``vector_to_parameters``, ``swa_utils``, ``torch.utils.checkpoint``,
forward-mode AD and ``jacrev`` with respect to parameters and state (the weight utilities and
input helpers: ``tests/test_ecosystem.py``)."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call, jacrev
from torch.nn.utils import clip_grad_norm_, clip_grad_value_, parameters_to_vector, vector_to_parameters
from torch.nn.utils.rnn import PackedSequence, pack_sequence
from torch.optim.swa_utils import AveragedModel, update_bn
from torch.utils.checkpoint import checkpoint

import rnnkit

IMPLS = ["auto", "fused", "loop"]


def _pair(family: str, impl: str, dtype=None):
    torch.manual_seed(0)
    theirs = getattr(nn, family)(3, 4, 2, dtype=dtype)
    ours = getattr(rnnkit, family)(3, 4, 2, impl=impl, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("family", ["LSTM", "GRU", "RNN"])
def test_gradient_clipping_as_torch_nn(family, impl):
    theirs, ours = _pair(family, impl)
    x = torch.randn(5, 2, 3)
    norms, grads = [], []
    for m in (theirs, ours):
        m(x)[0].pow(2).sum().backward()
        norms.append(clip_grad_norm_(m.parameters(), 0.1))
        clip_grad_value_(m.parameters(), 0.01)
        grads.append([p.grad for p in m.parameters()])
    torch.testing.assert_close(norms[1], norms[0], rtol=1e-10, atol=0)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("family", "kw", "dtype"),
    [
        ("GRU", {}, torch.float32),  # (impl="auto": the fused kernels)
        ("LSTM", {}, torch.float64),
        ("RNN", {}, torch.float32),
        ("LSTM", {"norm": "layer"}, torch.float64),
        ("GRU", {"zoneout": 0.1}, torch.float64),
    ],
)
def test_vector_to_parameters_reaches_the_next_call(family, kw, dtype, impl):
    """``vector_to_parameters`` replaces each parameter's ``.data``: the next call of a layer
    that has run before computes with the new values, as a layer built with them does."""
    torch.manual_seed(0)
    m = getattr(rnnkit, family)(3, 4, 2, impl=impl, dtype=dtype, **kw).eval()
    fresh = getattr(rnnkit, family)(3, 4, 2, impl="loop", dtype=dtype, **kw).eval()
    x = torch.randn(5, 2, 3, dtype=dtype)
    m(x)
    new = torch.randn_like(parameters_to_vector(m.parameters())) * 0.3
    vector_to_parameters(new, m.parameters())
    vector_to_parameters(new, fresh.parameters())
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(m(x)[0], fresh(x)[0], **tol)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("family", "kw"), [("LSTM", {}), ("GRU", {"norm": "layer"})])
def test_averaged_model_averages_and_runs(family, kw, impl):
    torch.manual_seed(0)
    m = getattr(rnnkit, family)(3, 4, 2, impl=impl, **kw)
    avg, seen = AveragedModel(m), []
    for _ in range(3):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        seen.append([p.clone() for p in m.parameters()])
        avg.update_parameters(m)
    with torch.no_grad():
        for p, ps in zip(m.parameters(), zip(*seen, strict=True), strict=True):
            p.copy_(sum(ps) / len(ps))
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(avg(x)[0], m(x)[0], rtol=1e-10, atol=1e-12)


def test_update_bn_passes_a_batch_norm_layer_by():
    """torch's ``update_bn`` recomputes ``nn.modules.batchnorm._BatchNorm`` modules only: it
    leaves a batch-norm LSTM's per-step statistics as they are (README, "Drop-in")."""
    torch.manual_seed(0)
    m = rnnkit.LSTM(3, 4, norm="batch", max_len=6)
    swa, data = AveragedModel(m), [torch.randn(5, 2, 3) + 1 for _ in range(3)]
    swa.update_parameters(m)
    before = {k: v.clone() for k, v in swa.module.named_buffers()}
    update_bn(data, swa)
    for k, v in swa.module.named_buffers():
        assert torch.equal(v, before[k]), k


REGULARIZED = [
    ("LSTM", {"dropout": 0.3}),
    ("GRU", {"weight_drop": 0.3}),
    ("LSTM", {"zoneout": 0.1}),
    ("GRU", {"recurrent_dropout": 0.3}),
    ("LSTM", {"locked_dropout": 0.3, "norm": "layer"}),
    ("RNN", {"weight_drop": 0.3, "zoneout": 0.2}),
]


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("family", "kw"), REGULARIZED)
def test_checkpoint_redraws_the_same_masks(family, kw, impl, reentrant):
    """``checkpoint`` restores the RNG state for its recomputation: the same dropout, weight-drop
    and zoneout masks, so the same output and gradients as the call without it."""
    torch.manual_seed(0)
    m = getattr(rnnkit, family)(3, 4, 2, impl=impl, **kw)
    x = torch.randn(5, 2, 3)
    results = []
    for ckpt in (False, True):
        m.zero_grad()
        xi = x.clone().requires_grad_()
        torch.manual_seed(7)
        out = checkpoint(lambda t: m(t)[0], xi, use_reentrant=reentrant) if ckpt else m(xi)[0]
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        results.append([out.detach(), xi.grad, *(p.grad for p in m.parameters())])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's make_dual
@pytest.mark.parametrize(
    ("family", "kw"),
    [("LSTM", {}), ("GRU", {"zoneout": 0.2}), ("LSTM", {"norm": "layer", "bidirectional": True})],
)
def test_forward_mode_ad_through_a_packed_batch(family, kw):
    """The tangent of a packed call (``impl="auto"``) equals a central difference."""
    torch.manual_seed(0)
    m = getattr(rnnkit, family)(3, 4, 2, **kw).eval()
    p = pack_sequence([torch.randn(n, 3) for n in (3, 5, 2)], enforce_sorted=False)
    tangent = torch.randn_like(p.data)
    call = lambda data: m(PackedSequence(data, *p[1:]))[0].data  # noqa: E731
    with fwAD.dual_level():
        got = fwAD.unpack_dual(call(fwAD.make_dual(p.data, tangent))).tangent
    eps = 1e-6
    want = (call(p.data + eps * tangent) - call(p.data - eps * tangent)) / (2 * eps)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("impl", ["auto", "loop"])
@pytest.mark.parametrize("family", ["LSTM", "GRU", "RNN"])
def test_jacrev_in_the_parameters_and_the_state_equals_torch(family, impl):
    theirs, ours = _pair(family, impl)
    params = {k: v.detach() for k, v in theirs.named_parameters()}
    x, h = torch.randn(4, 2, 3), torch.randn(2, 2, 4)

    def f(m):
        def out(p, h):
            return functional_call(m, p, (x, (h, h * 0.5) if family == "LSTM" else h))[0].sum(0)

        return out

    (jp, jh), (wp, wh) = (
        jacrev(f(ours), argnums=(0, 1))(params, h),
        jacrev(f(theirs), argnums=(0, 1))(params, h),
    )
    torch.testing.assert_close(jh, wh, rtol=1e-10, atol=1e-12)
    for k in params:
        torch.testing.assert_close(jp[k], wp[k], rtol=1e-10, atol=1e-12, msg=k)
