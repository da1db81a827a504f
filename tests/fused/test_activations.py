"""The fused kernels' σ and tanh (``csrc/pointwise.h``; float32: ``act512.h``'s polynomials on
AVX-512 CPUs, ``act256.h``'s on AVX2) against float64, through ``rnnkit_ext::activation``; the
AVX2 paths again in a process with ``RNNKIT_NO_AVX512=1``.

The stated accuracy: float32 within 3 ulp of the correctly rounded value wherever that is a
normal number; float64 (SLEEF) within 4 ulp of torch's float64. NaN propagates, the
infinities map to the limits.
"""

from __future__ import annotations

import pytest
import torch

from rnnkit.kernels import ext

pytestmark = pytest.mark.skipif(not ext.available(), reason="C++ extension not available")

FUNCS = {0: torch.sigmoid, 1: torch.tanh}


def _act(x: torch.Tensor, which: int) -> torch.Tensor:
    return torch.ops.rnnkit_ext.activation(x, which)


def _ulps(y: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """|y - exact| in units of the last place of exact rounded to y's dtype (normal range only)."""
    r = exact.to(y.dtype)
    ulp = (torch.nextafter(r.abs(), torch.full_like(r, float("inf"))) - r.abs()).double()
    return (y.double() - exact).abs() / ulp


def _grid(dtype: torch.dtype) -> torch.Tensor:
    # dense where the functions bend, every binade down to 1e-30, and a row length that is not a
    # multiple of 16 (the masked tail)
    dense = torch.linspace(-100, 100, 2_000_003, dtype=torch.float64)
    tiny = torch.logspace(-30, 1, 20_001, dtype=torch.float64)
    return torch.cat([dense, tiny, -tiny]).to(dtype)


@pytest.mark.parametrize("which", [0, 1], ids=["sigmoid", "tanh"])
@pytest.mark.parametrize("dtype,bound", [(torch.float32, 3.0), (torch.float64, 4.0)])
def test_accuracy_against_float64(which, dtype, bound):
    x = _grid(dtype)
    # float64's yardstick is torch's own float64 routine (within an ulp of exact itself)
    exact = FUNCS[which](x.double())
    err = _ulps(_act(x, which), exact)
    normal = exact.abs() >= torch.finfo(dtype).tiny
    worst = err[normal].max().item()
    at = x[normal][err[normal].argmax()].item()
    assert worst <= bound, f"{FUNCS[which].__name__}: {worst:.2f} ulp at x = {at}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_special_values(dtype):
    inf, nan = float("inf"), float("nan")
    # (-0 and +0 both give 0.5; tanh keeps the sign of zero)
    x = torch.tensor([0.0, -0.0, inf, -inf, nan, 1e30, -1e30, 20.0, -20.0], dtype=dtype)
    s, t = _act(x, 0), _act(x, 1)
    assert s[0] == 0.5 and s[1] == 0.5 and s[2] == 1 and s[5] == 1 and torch.isnan(s[4])
    # σ(-inf) = 0 exactly, as ATen's (float32: 0 below -88.7228, where ATen's e^-x overflows;
    # before, the exp's clamp left a subnormal, and a GRU's z ⊙ inf stayed inf where torch's is NaN)
    assert s[3] == 0 and s[6] == 0
    if dtype == torch.float32:
        edge = torch.tensor([-88.7229, -88.72, -88.0], dtype=dtype)
        assert _act(edge, 0)[0] == 0 == torch.sigmoid(edge)[0] and (_act(edge, 0)[1:] > 0).all()
        # at the float where ATen's e^-x first overflows (-88.72283935546875) its σ is 0 already,
        # and the next float up is not: the fused σ was 3e-39 at that float itself
        k = torch.tensor(-88.72283935546875, dtype=dtype)
        near = torch.stack([torch.nextafter(k, k + 1), k, torch.nextafter(k, k - 1)])
        assert torch.equal(_act(near, 0) == 0, torch.sigmoid(near) == 0), (_act(near, 0), torch.sigmoid(near))
    assert torch.equal(t[[2, 3, 5, 6]], torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=dtype))
    assert torch.isnan(t[4])
    assert t[0] == 0 and t[1] == 0 and torch.signbit(t[1]) and not torch.signbit(t[0])
    torch.testing.assert_close(s[7:], torch.sigmoid(x[7:]), rtol=4e-7, atol=0)
    torch.testing.assert_close(t[7:], torch.tanh(x[7:]), rtol=4e-7, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 15, 16, 17, 33])
def test_position_in_the_row_does_not_change_the_value(n, dtype):
    """The vector body and the masked tail compute the same function: a value gives the same
    bits wherever it sits in the row."""
    x = torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=dtype) * 4
    for which in (0, 1):
        alone = torch.stack([_act(v.reshape(1), which)[0] for v in x])
        assert torch.equal(_act(x, which), alone)


def test_rejects_an_unknown_function():
    with pytest.raises(RuntimeError, match="which must be 0 .sigmoid. or 1 .tanh., got 2"):
        _act(torch.zeros(3), 2)


@pytest.mark.parametrize("switch", ["RNNKIT_NO_AVX512", "RNNKIT_NO_AVX2"])
def test_the_avx2_and_scalar_paths_too(tmp_path, switch):
    """The same tests, and the fused LSTM/GRU and normalized cells against the loop, with the
    AVX2 code paths forced (``RNNKIT_NO_AVX512=1``) or the scalar ones (``RNNKIT_NO_AVX2=1``:
    what a CPU without AVX2, an ARM one among them, runs; never reached here before). Read once
    per process: a fresh interpreter."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, switch: "1"}
    tests = [__file__ + "::" + name for name in ("test_accuracy_against_float64", "test_special_values",
             "test_position_in_the_row_does_not_change_the_value")]  # fmt: skip
    tests.append(str(root / "tests/fused/test_fused_kernels.py"))
    tests.append(
        str(root / "tests/fused/test_fused_property.py")
        + "::test_float32_kernels_equal_float64_loop_property"
    )
    # the normalized cells' float32 rows and statistics (norm_avx2.h), vector tails included
    tests.append(str(root / "tests/fused/test_fused_norm.py") + "::test_float32_threaded_sizes_equal_loop")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    # and the switch took: on an AVX-512 CPU the σ differ in some last bits (act256.h divides,
    # act512.h takes a Newton step from rcp14, the scalar loop calls std::exp)
    out = tmp_path / "forced.pt"
    code = "import sys, torch; from rnnkit.kernels import ext; ext.available()"
    code += "; torch.save(torch.ops.rnnkit_ext.activation(torch.linspace(-30, 30, 100001), 0), sys.argv[1])"
    run = subprocess.run([sys.executable, "-c", code, str(out)], cwd=root, env=env, timeout=300)
    assert run.returncode == 0
    had = ("AVX512",) if switch == "RNNKIT_NO_AVX512" else ("AVX2", "AVX512")  # what the switch turns off
    if torch.backends.cpu.get_cpu_capability() in had:
        assert not torch.equal(torch.load(out), _act(torch.linspace(-30, 30, 100001), 0))
