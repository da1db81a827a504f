"""The weight-gradient GEMMs on brgemm (csrc/common.h ``tn_brgemm``/``nn_brgemm``, the ops
``rnnkit_ext::mm_tn``/``mm_nn`` of csrc/gemm.cpp) against float64 products, and the Python side's
choice of them (rnnkit/kernels/_gemm.py)."""

from __future__ import annotations

import pytest
import torch

import rnnkit.kernels as K
from rnnkit.kernels import _gemm, ext

from ..conftest import default_dtype
from .test_fused_kernels import require_ext

# the inner dimension around brgemm's chunk (256), b^T's row tile (512), odd widths around a
# vector (16) and the column block (256); K past mm_tn's 512-row tiles of b^T and mm_nn's
# 512-column blocks of w (a wrong tile or block offset showed nowhere else)
SHAPES = [
    (1, 1, 1), (255, 17, 15), (256, 16, 128), (257, 300, 129), (700, 33, 1), (513, 1, 260), (260, 20, 1100),
]  # fmt: skip


def _ops():
    require_ext()
    return ext.ops()


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == torch.float32 and got.shape == want.shape and got.is_contiguous()
    scale = max(want.abs().max().item(), 1.0)
    torch.testing.assert_close(got.double(), want, atol=1e-5 * scale, rtol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", SHAPES)
def test_mm_tn_and_mm_nn_against_float64_products(num_threads, threads, shape):
    """``mm_tn(a, b) = aᵀ b`` for a (N, M), b (N, K); ``mm_nn(a, w) = a w`` for w (M, K)."""
    num_threads(threads)
    N, M, K_ = shape
    torch.manual_seed(0)
    f32 = dict(dtype=torch.float32)
    a, b, w = torch.randn(N, M, **f32), torch.randn(N, K_, **f32), torch.randn(M, K_, **f32)
    want = a.double().t() @ b.double()
    _close(_ops().mm_tn(a, b), want)
    _close(_ops().mm_tn(a, b.t().contiguous().t()), want)  # b column-major: read in place
    # strided operands (every other row of larger tensors)
    a2, b2 = torch.randn(2 * N, M).float()[::2].copy_(a), torch.randn(2 * N, K_).float()[::2].copy_(b)
    _close(_ops().mm_tn(a2, b2), want)
    want = a.double() @ w.double()
    _close(_ops().mm_nn(a, w), want)
    _close(_ops().mm_nn(a.t().contiguous().t(), w.t().contiguous().t()), want)


def test_empty_dimensions(num_threads):
    """No rows summed: zeros (brgemm never runs, its output would be uninitialized memory)."""
    num_threads(2)
    ops = _ops()
    with default_dtype(torch.float32):
        z = ops.mm_tn(torch.empty(0, 5), torch.empty(0, 3))
        assert z.shape == (5, 3) and not z.any()
        z = ops.mm_nn(torch.empty(4, 0), torch.empty(0, 3))
        assert z.shape == (4, 3) and not z.any()
        assert ops.mm_nn(torch.empty(0, 5), torch.empty(5, 3)).shape == (0, 3)
        assert ops.mm_tn(torch.empty(6, 0), torch.empty(6, 3)).shape == (0, 3)


def test_the_bits_do_not_depend_on_the_thread_count(num_threads):
    """Each output element is one thread's, summed in the same order whatever the split."""
    ops = _ops()
    torch.manual_seed(0)
    a, b, w = torch.randn(3200, 1024), torch.randn(3200, 128), torch.randn(1024, 128)
    a, b, w = a.float(), b.float(), w.float()
    res = []
    for n in (1, 2):
        num_threads(n)
        res.append((ops.mm_tn(a, b), ops.mm_nn(a, w)))
    for u, v in zip(*res):
        assert torch.equal(u, v)


@pytest.mark.parametrize(
    "op,a,b,msg",
    [
        ("mm_tn", (4, 3), (5, 2), r"shapes a \(N, M\) and b \(N, K\) do not match, got \[4, 3\] and \[5"),
        ("mm_nn", (4, 3), (4, 2), r"shapes a \(N, M\) and w \(M, K\) do not match, got \[4, 3\] and \[4"),
        ("mm_tn", (4,), (4, 2), r"expected 2-D tensors"),
    ],
)
def test_bad_shapes_are_named(op, a, b, msg):
    with pytest.raises(RuntimeError, match=msg):
        getattr(_ops(), op)(torch.zeros(a, dtype=torch.float32), torch.zeros(b, dtype=torch.float32))


def test_other_dtypes_are_refused():
    with pytest.raises(RuntimeError, match="expected CPU float32 tensors, got Double"):
        _ops().mm_tn(torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64))


def _calls(monkeypatch) -> list[str]:
    """The extension ops _gemm calls (recorded)."""
    seen: list[str] = []
    real = _ops()

    class Spy:
        def mm_tn(self, a, b):
            seen.append("mm_tn")
            return real.mm_tn(a, b)

        def mm_nn(self, a, w):
            seen.append("mm_nn")
            return real.mm_nn(a, w)

    monkeypatch.setattr(ext, "loaded_ops", lambda: Spy())
    return seen


def test_python_weight_gradients_take_the_extension_ops(monkeypatch):
    """The input projection's dW_ih and dx (``_gemm.mm_tn``/``mm`` from ``linear_grads``) on the
    compiled ops for float32 past ONEDNN_MIN_WORK, with the same values as oneDNN's GEMM."""
    seen = _calls(monkeypatch)
    torch.manual_seed(0)
    dy, x, w = torch.randn(600, 512), torch.randn(600, 64), torch.randn(512, 64)
    dy, x, w = dy.float(), x.float(), w.float()
    dx, dw, db = _gemm.linear_grads(dy, x, w, True, (True, True, True))
    assert seen == ["mm_nn", "mm_tn"]
    _close(dx, dy.double() @ w.double())
    _close(dw, dy.double().t() @ x.double())
    with monkeypatch.context() as m:  # oneDNN's GEMM (the extension off): the same values
        m.setattr(_gemm, "_ext_gemm", lambda a, work: None)
        dx2, dw2, _ = _gemm.linear_grads(dy, x, w, True, (True, True, True))
    torch.testing.assert_close(dx, dx2, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(dw, dw2, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("why", ["small", "float64", "no_onednn", "pure"])
def test_python_weight_gradients_stay_off_the_extension(monkeypatch, why):
    """Below ONEDNN_MIN_WORK (BLAS), for float64, with RNNKIT_NO_ONEDNN=1 and with the kernels'
    backend pinned to the pure ones (the tests' pure_kernels) the ops are not called."""
    seen = _calls(monkeypatch)
    n = 8 if why == "small" else 600
    dt = torch.float64 if why == "float64" else torch.float32
    if why == "no_onednn":
        monkeypatch.setenv("RNNKIT_NO_ONEDNN", "1")
    if why == "pure":
        monkeypatch.setattr(K, "backend", lambda x: "pure")
    dy, x, w = torch.randn(n, 512, dtype=dt), torch.randn(n, 64, dtype=dt), torch.randn(512, 64, dtype=dt)
    dx, dw, _ = _gemm.linear_grads(dy, x, w, False, (True, True, False))
    assert seen == []
    torch.testing.assert_close(dx, dy @ w, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(dw, dy.t() @ x, atol=1e-3, rtol=1e-4)


# _gemm's functools.cache of the oneDNN check, traced through by dynamo; the other is inside torch
@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_traced_code_stays_off_the_extension_ops(monkeypatch):
    """The ops have no fake implementation: under dynamo and on fake tensors (AOT tracing) _gemm
    keeps off them (torch's GEMMs, the same values). The library never traces these GEMMs;
    the guards are what keeps a traced caller working."""
    seen = _calls(monkeypatch)
    torch.manual_seed(0)
    a, b, w = torch.randn(600, 512).float(), torch.randn(600, 64).float(), torch.randn(512, 64).float()
    torch._dynamo.reset()
    f = torch.compile(lambda a, b, w: (_gemm.mm_tn(a, b), _gemm.mm(a, w)), backend="eager")
    tn, nn = f(a, b, w)  # (dynamo breaks at use_onednn, then resumes tracing)
    assert seen == []
    _close(tn, a.double().t() @ b.double())
    _close(nn, a.double() @ w.double())
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fa, fb, fw = (mode.from_tensor(t) for t in (a, b, w))
        assert _gemm.mm_tn(fa, fb).shape == (512, 64) and _gemm.mm(fa, fw).shape == (600, 64)
    assert seen == []
