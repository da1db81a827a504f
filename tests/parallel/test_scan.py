"""rnnkit.ops.linear_scan against a sequential float64 loop, on every implementation."""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rnnkit
from rnnkit.ops import backend, linear_scan

IMPLS = ["ext", "loop", "chunked"]


@pytest.fixture(params=IMPLS)
def impl(request, monkeypatch):
    monkeypatch.setenv("RNNKIT_SCAN_IMPL", request.param)
    if backend(torch.zeros(1)) != request.param:
        pytest.skip("C++ kernel unavailable")
    return request.param


def reference(a, b, h0=None, dim=0, reverse=False):
    """h_t = a_t h_{t-1} + b_t, one step at a time, straight from the definition."""
    a, b = a.movedim(dim, 0), b.movedim(dim, 0)
    order = range(b.shape[0] - 1, -1, -1) if reverse else range(b.shape[0])
    h = torch.zeros_like(b[0]) if h0 is None else h0
    out = [None] * b.shape[0]
    for t in order:
        h = a[t] * h + b[t]
        out[t] = h
    return torch.stack(out).movedim(0, dim)


def _inputs(shape, dtype, h0, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g, dtype=torch.float64).mul(1.2).sub(0.1)  # some a < 0, some > 1
    b = torch.randn(shape, generator=g, dtype=torch.float64)
    if dtype.is_complex:
        a = torch.polar(a.abs(), torch.rand(shape, generator=g, dtype=torch.float64) * 6.28)
        b = torch.complex(b, torch.randn(shape, generator=g, dtype=torch.float64))
    hs = shape[:dim] + shape[dim + 1 :]
    s = torch.randn(hs, generator=g, dtype=torch.float64).to(dtype) if h0 else None
    leaves = [t.to(dtype).requires_grad_(True) for t in (a, b)] + ([s.requires_grad_(True)] if h0 else [])
    return leaves


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("h0", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_matches_sequential_loop(impl, dtype, h0, reverse, dim):
    shape = (7, 70, 3) if dim == 1 else ((70, 3, 2) if dim == 0 else (3, 2, 70))  # T=70: 2 chunks
    leaves = _inputs(shape, dtype, h0, dim % 3)
    a, b, s = leaves[0], leaves[1], (leaves[2] if h0 else None)
    got = linear_scan(a, b, s, dim=dim, reverse=reverse)
    want = reference(a, b, s, dim=dim % 3, reverse=reverse)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(want)
    g_got = torch.autograd.grad(got, leaves, w)
    g_want = torch.autograd.grad(want, leaves, w)
    for u, v in zip(g_got, g_want):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck(impl, dtype, reverse):
    a, b, s = _inputs((5, 2, 3), dtype, True, 0, seed=3)
    assert torch.autograd.gradcheck(lambda a, b, s: linear_scan(a, b, s, reverse=reverse), (a, b, s))
    assert torch.autograd.gradcheck(lambda a, b: linear_scan(a, b, dim=1, reverse=reverse), (a, b))


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradgradcheck(impl, dtype, reverse):
    """A gradient taken with create_graph=True differentiates again (gradient penalties of the
    parallel layers): the backward is then this op again, in differentiable form."""
    a, b, s = _inputs((5, 2, 3), dtype, True, 0, seed=3)
    assert torch.autograd.gradgradcheck(lambda a, b, s: linear_scan(a, b, s, reverse=reverse), (a, b, s))
    assert torch.autograd.gradgradcheck(lambda a, b: linear_scan(a, b, dim=1, reverse=reverse), (a, b))


def test_opcheck():
    a, b, s = _inputs((6, 2, 3), torch.float64, True, 0)
    torch.library.opcheck(torch.ops.rnnkit.linear_scan.default, (a, b, s, 0, False))
    torch.library.opcheck(torch.ops.rnnkit.linear_scan.default, (a, b, None, 1, True))
    ac, bc, sc = _inputs((6, 2, 3), torch.complex128, True, 0)
    torch.library.opcheck(torch.ops.rnnkit.linear_scan.default, (ac, bc, sc, 0, True))


def test_opcheck_backward(impl):
    """``rnnkit::linear_scan_backward`` on each implementation: the pure loop's complex backward
    took lazy ``conj()`` views, which lost their conjugation when the op ran from an AOT graph
    (different numbers than in eager: opcheck's test_aot_dispatch)."""
    cases = [
        (torch.float64, True, 0, False),
        (torch.float64, False, 1, True),
        (torch.complex128, True, 0, True),
    ]
    for dtype, with_h0, dim, rev in cases:
        a, b, *s = (t.detach() for t in _inputs((6, 2, 3), dtype, with_h0, 0))
        h0 = s[0] if s else None
        h = torch.ops.rnnkit.linear_scan(a, b, h0, dim, rev)
        torch.library.opcheck(
            torch.ops.rnnkit.linear_scan_backward.default, (torch.randn_like(h), a, h, h0, dim, rev)
        )


def test_torch_compile_fullgraph():
    def f(a, b, s):
        return linear_scan(torch.sigmoid(a), b * 2, s, dim=1).square().sum()

    a, b, s = _inputs((3, 9, 4), torch.float64, True, 1)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(a, b, s), (a, b, s))
    want = torch.autograd.grad(f(a, b, s), (a, b, s))
    for u, v in zip(got, want):
        torch.testing.assert_close(u, v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ext_and_fallback_bit_identical(monkeypatch, dtype):
    """RNNKIT_NO_EXT=1 gives the very same numbers as the C++ kernel (forward and backward)."""
    if backend(torch.zeros(1)) != "ext":
        pytest.skip("C++ kernel unavailable")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(300, 4, 33, generator=g).to(dtype).requires_grad_(True)
    b = torch.randn(300, 4, 33, generator=g).to(dtype).requires_grad_(True)
    s = torch.randn(4, 33, generator=g).to(dtype).requires_grad_(True)
    w = torch.randn(300, 4, 33, generator=g).to(dtype)
    results = []
    for env in ("0", "1"):
        monkeypatch.setenv("RNNKIT_NO_EXT", env)
        assert backend(a) == ("ext" if env == "0" else "loop")
        for rev in (False, True):
            h = linear_scan(a, b, s, reverse=rev)
            results.append([h, *torch.autograd.grad(h, (a, b, s), w)])
    for x, y in zip(results[:2], results[2:]):
        for u, v in zip(x, y):
            assert torch.equal(u, v)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_forced_ext_takes_the_loop_for_half_precision(monkeypatch, dtype):
    """RNNKIT_SCAN_IMPL=ext where the C++ kernel cannot run falls back, as it does without
    the kernel: half precision took the kernel, which raised NotImplementedError."""
    monkeypatch.setenv("RNNKIT_SCAN_IMPL", "ext")
    a, b = torch.rand(9, 4, dtype=dtype), torch.randn(9, 4, dtype=dtype)
    assert backend(a) == "loop"
    torch.testing.assert_close(linear_scan(a, b), reference(a, b))


# creating a complex32 tensor warns that torch's support for it is experimental
@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental:UserWarning")
def test_complex_half_takes_the_loop():
    """complex32 is half precision too: the C++ kernel has no instance for it and raised
    NotImplementedError ("not implemented for 'ComplexHalf'") by default; the loop runs it."""
    a = torch.rand(9, 4, dtype=torch.complex64)
    b = torch.randn(9, 4, dtype=torch.complex64)
    assert backend(a.to(torch.complex32)) == "loop"
    h = linear_scan(a.to(torch.complex32), b.to(torch.complex32))
    assert h.dtype == torch.complex32
    torch.testing.assert_close(h.to(torch.complex64), linear_scan(a, b), rtol=1e-2, atol=1e-2)


def test_long_sequence_float32_is_finite_and_accurate():
    """T = 100,000, a in (0, 1] (including exactly 1), b of both signs; vs a float64 loop."""
    T, N = 100_000, 8
    g = torch.Generator().manual_seed(0)
    a64 = 1 - torch.rand(T, N, generator=g, dtype=torch.float64) ** 8 * 0.01  # near 1: long memory
    a64[:, 0] = 1.0  # a pure running sum: |h| grows to ~sqrt(T)
    b64 = torch.randn(T, N, generator=g, dtype=torch.float64)
    want = torch.empty_like(b64)
    h = torch.zeros(N, dtype=torch.float64)
    for t in range(T):  # float64 sequential loop
        h = a64[t] * h + b64[t]
        want[t] = h
    a, b = a64.float().requires_grad_(True), b64.float().requires_grad_(True)
    got = linear_scan(a, b)
    assert torch.isfinite(got).all()
    ga, gb = torch.autograd.grad(got.sum(), (a, b))
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
    # float32 error: relative to the scale of h (rounding of the inputs included)
    err = ((got.double() - want).abs().max(0).values / want.abs().max(0).values).max()
    # 5.15e-6 on the CPU, in the column a_t = 1 (a running sum of 100,000 terms); the other
    # columns 0.9-2.4e-6. Not a bound for every input: docs/scan.md gives the spread.
    assert err < 6e-6, err


@st.composite
def _lengths_and_splits(draw):
    T = draw(st.integers(1, 150))
    if T > 1 and draw(st.integers(0, 3)):  # mostly a split inside the sequence
        return T, draw(st.integers(1, T - 1))
    return T, draw(st.sampled_from([0, T]))  # or at an end: an empty piece


@settings(max_examples=60, deadline=None)
@given(case=_lengths_and_splits(), reverse=st.booleans())
def test_scan_splits_at_any_point(case, reverse):
    """Scanning [x1, x2] equals scanning x2 from the last state of x1 (what streaming relies on).
    The split is drawn inside the sequence three times in four, else at an end: drawn from
    ``[0, 150]`` and clipped to ``T``, most examples split at an end (one scan of everything
    against itself; 6 of 25 split inside), and a forward scan from h0 wrong for 10-19 steps passed."""
    T, split = case
    a, b, s = (t.detach() for t in _inputs((T, 3), torch.float64, True, 0, seed=T))
    whole = linear_scan(a, b, s, reverse=reverse)
    if reverse:
        late = linear_scan(a[split:], b[split:], s, reverse=True) if split < T else None
        s2 = s if late is None else late[0]
        parts = [linear_scan(a[:split], b[:split], s2, reverse=True), late]
    else:
        early = linear_scan(a[:split], b[:split], s) if split else None
        s2 = s if early is None else early[-1]
        parts = [early, linear_scan(a[split:], b[split:], s2)]
    torch.testing.assert_close(torch.cat([p for p in parts if p is not None]), whole)


def test_bad_input_is_a_clear_value_error():
    a, b = torch.rand(4, 3), torch.rand(4, 3)
    with pytest.raises(ValueError, match=r"one shape.*\(4, 2\)"):
        linear_scan(a, b[:, :2])
    with pytest.raises(ValueError, match=r"h0 must have shape \(3,\)"):
        linear_scan(a, b, torch.zeros(4))
    with pytest.raises(ValueError, match="dim must lie in"):
        linear_scan(a, b, dim=2)
    with pytest.raises(ValueError, match="share dtype"):
        linear_scan(a.float(), b)
    with pytest.raises(rnnkit.RecurrentInputError, match="floating-point"):
        linear_scan(a.long(), b.long())
    # 0-D tensors have no time dimension: the message was "dim must lie in [0, -1]", an empty range
    with pytest.raises(ValueError, match=r"at least 1-D \(a time dimension\), got 0-D"):
        linear_scan(torch.tensor(0.5), torch.tensor(1.0))


@pytest.mark.parametrize(
    "kw", [{"reverse": None}, {"reverse": 1}, {"reverse": "no"}, {"dim": True}, {"dim": 1.0}]
)
def test_reverse_and_dim_of_another_type_are_refused(kw):
    """reverse=None ran forward and dim=True along dim 1, silently; reverse='no' and dim=1.0
    failed in the custom op's schema words."""
    a, b = torch.rand(4, 3), torch.rand(4, 3)
    (name, value), want = next(iter(kw.items())), "a bool" if "reverse" in kw else "an int"
    with pytest.raises(ValueError, match=f"{name} must be {want}, got {value!r}"):
        linear_scan(a, b, **kw)


def test_empty_time_axis():
    a = torch.zeros(0, 3, requires_grad=True)
    h = linear_scan(a, torch.zeros(0, 3))
    assert h.shape == (0, 3)


def test_build_directory_is_keyed_by_source_flags_and_cpu(monkeypatch, tmp_path):
    """A changed scan.cpp, other flags or (with -march=native) another CPU get a build of their
    own: a home directory shared across CPU generations must not hand one machine's build to
    another, and an upgraded source must not load the old library."""
    scan = importlib.import_module("rnnkit.ops.scan")  # the module (rnnkit.ops.scan is shadowed)
    monkeypatch.setenv("RNNKIT_EXT_DIR", str(tmp_path))
    src = tmp_path / "scan.cpp"
    src.write_text("// v1\n")
    monkeypatch.setattr(scan, "_SOURCE", src)
    monkeypatch.setattr(scan, "_cflags", lambda: ["-O3", "-march=native"])
    monkeypatch.setattr(scan, "_cpu_identity", lambda: "flags: avx2")
    first = scan._build_dir()
    assert first.parent == tmp_path and first.name.startswith("scan-torch")
    assert scan._build_dir() == first  # stable
    monkeypatch.setattr(scan, "_cpu_identity", lambda: "flags: avx2 avx512f")
    other_cpu = scan._build_dir()
    src.write_text("// v2\n")
    other_source = scan._build_dir()
    monkeypatch.setattr(scan, "_cflags", lambda: ["-O3"])
    other_flags = scan._build_dir()
    assert len({first, other_cpu, other_source, other_flags}) == 4
    monkeypatch.setattr(scan, "_cpu_identity", lambda: "flags: sse2")
    assert scan._build_dir() == other_flags  # without -march=native the CPU does not matter


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's make_dual
@pytest.mark.parametrize("reverse", [False, True])
def test_torch_func_transforms_and_forward_ad(reverse):
    """jacrev and jvp of the op failed ("an autograd.Function ... must override the setup_context
    staticmethod"), vmap warned of a per-sample fallback loop: under them it now runs the chunked
    scan's plain ops, as the layers do."""
    from torch.func import jacrev, jvp, vmap

    T, N = 70, 3  # more than one chunk
    a, b, s = torch.rand(T, N), torch.randn(T, N), torch.randn(N)

    def f(a, b, s):
        return linear_scan(a, b, s, dim=0, reverse=reverse)

    want = torch.autograd.functional.jacobian(f, (a, b, s))
    for got, w in zip(jacrev(f, argnums=(0, 1, 2))(a, b, s), want, strict=True):
        torch.testing.assert_close(got, w)
    ta, tb, ts = torch.randn_like(a), torch.randn_like(b), torch.randn_like(s)
    _, tangent = jvp(f, (a, b, s), (ta, tb, ts))
    lin = [(w * t).flatten(-t.dim()).sum(-1) for w, t in zip(want, (ta, tb, ts), strict=True)]
    torch.testing.assert_close(tangent, sum(lin))
    batched = vmap(lambda a, b, s: linear_scan(a, b, s, reverse=reverse), in_dims=(1, 1, 0), out_dims=1)
    got = batched(a.unsqueeze(1), b.unsqueeze(1), s.unsqueeze(0))  # a batch of one along dim 1
    torch.testing.assert_close(got, f(a, b, s).unsqueeze(1))
