"""CUDA: the same oracles as on the CPU, on a GPU. Skipped where CUDA is absent (CI).

Run on a GPU machine with ``python -m pytest tests/test_cuda.py``. Covers what only a GPU
exercises: torch's cuDNN path behind ``impl="auto"`` (parity with torch.nn, flattened
weights, no compaction warnings), the pure-PyTorch fused kernels and the reference loop on
CUDA, regularizers whose weights change every call (weight-drop, locked dropout), the
chunked linear scan and the parallel-in-time layers, CPU↔CUDA agreement, and a short
training run of the kit on the device.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.ops import backend, linear_scan

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEV = torch.device("cuda")
TORCH = {"LSTM": (rnnkit.LSTM, nn.LSTM), "GRU": (rnnkit.GRU, nn.GRU), "RNN": (rnnkit.RNN, nn.RNN)}


@pytest.fixture(autouse=True)
def _no_tf32():
    """cuDNN's RNNs use TF32 for float32 by default (10-bit mantissa products), torch's
    matmuls do not: compare full float32 with full float32."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old


def _pair(mode, dtype, **kw):
    torch.manual_seed(0)
    ours_cls, ref_cls = TORCH[mode]
    impl = kw.pop("impl", "auto")
    ref = ref_cls(5, 7, **kw).to(DEV, dtype)
    ours = ours_cls(5, 7, impl=impl, **kw).to(DEV, dtype)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _close(a, b, tol):
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, atol=tol, rtol=tol)


def _run(m, inp, x):
    """Output, final state and the gradients of every parameter and of the leaf ``x``."""
    out, h = m(inp)
    if isinstance(out, nn.utils.rnn.PackedSequence):
        out = pad_packed_sequence(out)[0]
    hs = h if isinstance(h, tuple) else (h,)
    loss = out.square().sum() + sum(s.square().sum() for s in hs)
    grads = torch.autograd.grad(loss, [*m.parameters(), x])
    return [out, *hs, *grads]


@pytest.mark.parametrize("impl", ["auto", "loop", "fused"])
@pytest.mark.parametrize("mode", list(TORCH))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_matches_torch_on_cuda(impl, mode, dtype, tol):
    """Forward, final state and every gradient, 2 layers, bidirectional, batch_first."""
    ours, ref = _pair(mode, dtype, impl=impl, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(3, 6, 5, device=DEV, dtype=dtype, requires_grad=True)
    _close(_run(ours, x, x), _run(ref, x, x), tol)


@pytest.mark.parametrize("impl", ["auto", "loop", "fused"])
@pytest.mark.parametrize("mode", list(TORCH))
def test_packed_matches_torch_on_cuda(impl, mode):
    ours, ref = _pair(mode, torch.float64, impl=impl, num_layers=2, bidirectional=True)
    x = torch.randn(6, 4, 5, device=DEV, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 2, 5, 3])  # unsorted, on the CPU as torch requires
    pack = lambda: pack_padded_sequence(x, lengths, enforce_sorted=False)  # noqa: E731
    _close(_run(ours, pack(), x), _run(ref, pack(), x), 1e-9)


def test_lstm_proj_on_cuda():
    ours, ref = _pair("LSTM", torch.float64, num_layers=2, proj_size=3)
    x = torch.randn(6, 4, 5, device=DEV, dtype=torch.float64, requires_grad=True)
    _close(_run(ours, x, x), _run(ref, x, x), 1e-9)


def test_auto_runs_cudnn_with_flattened_weights():
    """After ``.to('cuda')`` the weights share one cuDNN buffer, as torch.nn's do, so the
    call neither compacts nor warns (pytest turns warnings into errors)."""
    ours, _ = _pair("LSTM", torch.float32, num_layers=2)
    ws = [p for p in ours.parameters()]
    assert len({w.untyped_storage().data_ptr() for w in ws}) == 1
    ours(torch.randn(4, 3, 5, device=DEV, dtype=torch.float32))[0].sum().backward()


@pytest.mark.parametrize("opts", [{"weight_drop": 0.5}, {"locked_dropout": 0.3}, {"dropout": 0.2}])
def test_regularized_layers_train_on_cuda(opts):
    torch.manual_seed(0)
    m = rnnkit.LSTM(5, 7, num_layers=2, **opts).to(DEV)
    x = torch.randn(4, 3, 5, device=DEV)
    m(x)[0].sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    m.eval()
    a, b = m(x)[0], m(x)[0]
    torch.testing.assert_close(a, b)  # deterministic in evaluation


@pytest.mark.parametrize(
    "cls,opts",
    [
        (rnnkit.LSTM, {"peephole": True, "recurrent_dropout": 0.2}),
        (rnnkit.LSTM, {"zoneout": (0.1, 0.05)}),
        (rnnkit.LSTM, {"norm": "layer"}),
        (rnnkit.GRU, {"reset_after": False}),
        (rnnkit.GRU, {"variant": "mut1"}),
        (rnnkit.RNN, {"norm": "layer"}),
    ],
)
def test_options_same_numbers_on_cpu_and_cuda(cls, opts):
    """Every impl the dispatch picks on CUDA computes what the CPU computes (float64, eval)."""
    torch.manual_seed(0)
    cpu = cls(5, 7, num_layers=2, dtype=torch.float64, **opts).eval()
    gpu = cls(5, 7, num_layers=2, dtype=torch.float64, **opts).to(DEV).eval()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    ya, yb = cpu(x)[0], gpu(x.to(DEV))[0]
    torch.testing.assert_close(yb.cpu(), ya, atol=1e-10, rtol=1e-10)
    gpu.train()
    yb = gpu(x.to(DEV))[0]
    yb.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in gpu.parameters() if p.grad is not None)


# -- the linear scan and the parallel-in-time layers ------------------------------------------
def _seq_scan(a, b, h0, reverse):
    h, out = h0 if h0 is not None else torch.zeros_like(b[0]), []
    ts = range(a.shape[0] - 1, -1, -1) if reverse else range(a.shape[0])
    for t in ts:
        h = a[t] * h + b[t]
        out.append(h)
    return torch.stack(out[::-1] if reverse else out)


def test_scan_backend_on_cuda():
    assert backend(torch.zeros(1, device=DEV)) == "triton"  # CUDA builds of torch ship Triton
    assert backend(torch.zeros(1, device=DEV, dtype=torch.complex64)) == "chunked"


@pytest.mark.parametrize(
    "impl,dtype",
    [("triton", torch.float64), ("triton", torch.float32), ("chunked", torch.float64),
     ("chunked", torch.complex128)],
)  # fmt: skip
@pytest.mark.parametrize("h0", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T", [1, 7, 64, 65, 1000])
def test_scan_on_cuda_matches_sequential(monkeypatch, impl, dtype, h0, reverse, T):
    """Forward and every gradient against the step loop; ``T`` around the tile size (64)."""
    monkeypatch.setenv("RNNKIT_SCAN_IMPL", impl)
    torch.manual_seed(0)
    a = torch.rand(T, 3, 37, dtype=dtype, device=DEV).requires_grad_()  # 111 columns: 4 blocks
    b = torch.randn(T, 3, 37, dtype=dtype, device=DEV).requires_grad_()
    s0 = torch.randn(3, 37, dtype=dtype, device=DEV).requires_grad_() if h0 else None
    got, ref = linear_scan(a, b, s0, reverse=reverse), _seq_scan(a, b, s0, reverse)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got, ref, atol=tol, rtol=tol)
    g = torch.randn_like(ref)
    leaves = (a, b) + ((s0,) if h0 else ())
    _close(torch.autograd.grad(got, leaves, g), torch.autograd.grad(ref, leaves, g), tol * 10)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inductor imports torch.jit.script_method
def test_scan_under_torch_compile_on_cuda():
    torch.manual_seed(0)
    a, b = torch.rand(50, 4, 8, device=DEV), torch.randn(50, 4, 8, device=DEV)
    f = torch.compile(lambda a, b: linear_scan(a, b, dim=0) * 2, fullgraph=True)
    torch.testing.assert_close(f(a, b), linear_scan(a, b) * 2)


@pytest.mark.parametrize("impl", ["triton", "chunked"])
def test_scan_long_float32_is_finite_and_accurate(monkeypatch, impl):
    monkeypatch.setenv("RNNKIT_SCAN_IMPL", impl)
    torch.manual_seed(0)
    T = 100_000
    a = torch.rand(T, 2, 8, device=DEV, dtype=torch.float32) * 0.1 + 0.9
    b = torch.randn(T, 2, 8, device=DEV, dtype=torch.float32)
    h = linear_scan(a, b)
    assert torch.isfinite(h).all()
    monkeypatch.delenv("RNNKIT_SCAN_IMPL")
    ref = linear_scan(a.double().cpu(), b.double().cpu())
    err = (h.double().cpu() - ref).abs().max() / ref.abs().max()
    assert err < 1e-4, err


@pytest.mark.parametrize("name", ["MinGRU", "MinLSTM", "QRNN", "LRU"])
def test_parallel_layers_on_cuda_match_cpu(name):
    torch.manual_seed(0)
    cpu = getattr(rnnkit, name)(5, 7, num_layers=2, bidirectional=True, dtype=torch.float64)
    gpu = getattr(rnnkit, name)(5, 7, num_layers=2, bidirectional=True, dtype=torch.float64).to(DEV)
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(9, 3, 5, dtype=torch.float64, requires_grad=True)
    xg = x.detach().to(DEV).requires_grad_()
    ya, yb = cpu(x)[0], gpu(xg)[0]
    torch.testing.assert_close(yb.cpu(), ya, atol=1e-10, rtol=1e-10)
    ga = torch.autograd.grad(ya.square().sum(), [x, *cpu.parameters()])
    gb = torch.autograd.grad(yb.square().sum(), [xg, *gpu.parameters()])
    _close([g.cpu() for g in gb], ga, 1e-9)
    # step() on the device gives the whole-sequence numbers
    single = getattr(rnnkit, name)(5, 7, dtype=torch.float64).to(DEV)
    y, state, ys = single(xg)[0], None, []
    for t in range(xg.shape[0]):
        yt, state = single.step(xg[t], state)
        ys.append(yt)
    torch.testing.assert_close(torch.stack(ys), y)


def test_trainer_runs_on_cuda(tmp_path):
    """The char-LM task through the CLI's training entry point, a few steps on the GPU."""
    from rnnkit.cli import main

    text = tmp_path / "tiny.txt"
    text.write_text("to be or not to be, that is the question. " * 200)
    out = tmp_path / "run"
    args = ["--max-steps", "20", "--hidden", "32", "--layers", "1", "--seq-len", "16", "--batch-size", "4"]
    rc = main(
        [
            "train",
            "charlm",
            "--data",
            str(text),
            "--device",
            "cuda",
            "--out",
            str(out),
            "--no-progress",
            *args,
        ]
    )
    assert rc == 0
    assert (out / "run.json").exists()


@pytest.mark.parametrize(
    ("name", "kw"),
    [("GRU", {}), ("LSTM", {"proj_size": 2, "zoneout": (0.2, 0.1), "recurrent_dropout": 0.2}),
     ("RNN", {"nonlinearity": "relu"})],
)  # fmt: skip
def test_second_order_through_fused_path_on_cuda(name, kw):
    """A gradient penalty through the fused kernels on CUDA (recomputed differentiably) gives the
    reference loop's first- and second-order gradients (same masks), in float64."""
    res = []
    for impl in ("fused", "loop"):
        torch.manual_seed(0)
        m = getattr(rnnkit, name)(3, 4, impl=impl, bidirectional=True, **kw).to(DEV, torch.float64)
        x = torch.linspace(-1, 1, 30, dtype=torch.float64, device=DEV).reshape(5, 2, 3).requires_grad_(True)
        torch.manual_seed(5)
        (g,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
        g.pow(2).sum().backward()
        res.append([g.detach(), x.grad, *(p.grad for p in m.parameters())])
    _close(res[0], res[1], 1e-10)


def test_per_sample_gradients_with_vmap_on_cuda():
    """torch.func on CUDA: impl="auto" leaves cuDNN for the reference loop inside the transform,
    and vmap(grad(loss)) gives each sample's own gradient."""
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    m = rnnkit.LSTM(3, 4, num_layers=2).to(DEV)
    params = {k: v.detach() for k, v in m.named_parameters()}
    x = torch.randn(5, 3, 3, device=DEV)

    def loss(p, xi):
        return functional_call(m, p, (xi.unsqueeze(1),))[0].pow(2).sum()

    per_sample = vmap(grad(loss), in_dims=(None, 1))(params, x)
    for b in range(3):
        alone = grad(loss)(params, x[:, b])
        for k in params:
            torch.testing.assert_close(per_sample[k][b], alone[k], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", list(TORCH))
def test_empty_batch_on_cuda(mode):
    """A batch of zero sequences gives torch.nn's empty outputs and states (shapes, device)."""
    ours, _ = _pair(mode, torch.float32, num_layers=2)
    out, h = ours(torch.randn(4, 0, 5, device=DEV, dtype=torch.float32))
    assert out.shape == (4, 0, 7) and out.device.type == "cuda"
    for s in h if isinstance(h, tuple) else (h,):
        assert s.shape == (2, 0, 7) and s.device.type == "cuda"


def test_auto_takes_the_fused_kernels_for_batch_norm_on_cuda():
    """On CUDA, impl="auto" runs batch norm on the fused kernels (its loop is 2x slower there)
    and the other options cuDNN lacks on the loop."""
    from rnnkit import dispatch

    x = torch.randn(6, 3, 5, device=DEV)
    assert dispatch.select(rnnkit.LSTM(5, 7, norm="batch").to(DEV), x) == "fused"
    assert dispatch.select(rnnkit.LSTM(5, 7, norm="layer").to(DEV), x) == "loop"
    assert dispatch.select(rnnkit.LSTM(5, 7, zoneout=0.1).to(DEV), x) == "loop"


@pytest.mark.parametrize("packed", [False, True])
def test_batch_norm_trains_on_cuda_as_the_loop_on_cpu(packed):
    """Batch norm's default CUDA path (fused kernels) equals the CPU reference loop in training,
    float64: outputs, final states, every gradient and the running statistics; padded to the
    longest sequence or packed, 2 layers, bidirectional."""
    torch.manual_seed(0)
    cpu = rnnkit.LSTM(5, 7, num_layers=2, bidirectional=True, norm="batch", max_len=8, impl="loop")
    gpu = rnnkit.LSTM(5, 7, num_layers=2, bidirectional=True, norm="batch", max_len=8).to(DEV)
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(6, 4, 5, requires_grad=True)
    xg = x.detach().to(DEV).requires_grad_(True)
    inputs = [x, xg]
    if packed:
        lengths = torch.tensor([6, 5, 3, 2])
        inputs = [pack_padded_sequence(x, lengths), pack_padded_sequence(xg, lengths)]
    res = [_run(cpu, inputs[0], x), _run(gpu, inputs[1], xg)]
    _close([r.cpu() for r in res[1]], res[0], 1e-9)
    for (name, a), b in zip(gpu.named_buffers(), cpu.buffers(), strict=True):
        torch.testing.assert_close(a.cpu(), b, atol=1e-12, rtol=1e-10, msg=name)


@pytest.mark.parametrize("mode", list(TORCH))
def test_standard_layers_follow_autocast_like_torch_on_cuda(mode):
    """float16 autocast on CUDA: cuDNN in half precision, the same dtypes and numbers as torch.nn."""
    ours, ref = _pair(mode, torch.float32, num_layers=2)
    x = torch.randn(6, 3, 5, device=DEV, dtype=torch.float32, requires_grad=True)
    res = []
    for m in (ours, ref):
        with torch.autocast("cuda", dtype=torch.float16):
            out, h = m(x)
        hs = h if isinstance(h, tuple) else (h,)
        assert out.dtype == torch.float16
        res.append([out, *hs, *torch.autograd.grad(out.float().sum(), [*m.parameters(), x])])
    _close(res[0], res[1], 1e-3)


@pytest.mark.parametrize(
    ("cls", "kw"),
    [(rnnkit.LSTM, {"norm": "batch", "max_len": 8}), (rnnkit.LSTM, {"norm": "layer"}),
     (rnnkit.LSTM, {"zoneout": (0.2, 0.1), "peephole": True}), (rnnkit.GRU, {"variant": "mut1"})],
)  # fmt: skip
def test_options_run_in_float32_under_autocast_on_cuda(cls, kw):
    """Options cuDNN lacks: under float16 autocast the layer's own float32 numbers (same masks)."""
    torch.manual_seed(0)
    m = cls(5, 7, num_layers=2, dtype=torch.float32, **kw).to(DEV)
    x = torch.randn(6, 3, 5, device=DEV, dtype=torch.float32)
    res = []
    for amp in (False, True):
        torch.manual_seed(1)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            out = m(x)[0]
        assert out.dtype == torch.float32
        res.append([out, *torch.autograd.grad(out.sum(), list(m.parameters()))])
    _close(res[1], res[0], 1e-5)


def test_torch_kernels_get_flat_weights_after_zoneout_off_or_in_evaluation():
    """A layer built with recurrent dropout (training mode) or zoneout was not flattened by .to(),
    so evaluating it, or setting zoneout to 0, ran cuDNN on scattered weights: its "not part of
    single contiguous chunk of memory" warning at every call (an error here). Flattened now."""
    torch.manual_seed(0)
    ref = nn.LSTM(5, 7, num_layers=2).to(DEV)
    x = torch.randn(6, 3, 5, device=DEV)
    for kw in ({"recurrent_dropout": 0.3}, {"zoneout": 0.2}):
        m = rnnkit.LSTM(5, 7, num_layers=2, **kw).to(DEV).eval()
        m.load_state_dict(ref.state_dict())
        m.zoneout = 0.0
        with torch.no_grad():
            torch.testing.assert_close(m(x)[0], ref(x)[0], atol=1e-5, rtol=1e-5)
