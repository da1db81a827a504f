"""The counter-based mask generator (rnnkit/kernels/rng.py, csrc/rng.cpp).

Oracles: SplitMix64 written out below with Python integers straight from its definition
(Steele, Lea & Flood 2014); the C++ kernel and the int64 tensor version must give the very
same masks; the masks' statistics (rate, independence of neighbours, of successive masks).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnkit import regularizers
from rnnkit.kernels import ext, rng

from ..fused.test_fused_kernels import require_ext

MASK64 = (1 << 64) - 1


def splitmix64(seed: int, n: int) -> list[int]:
    """The first ``n`` outputs of SplitMix64 from state ``seed`` (unsigned 64-bit)."""
    out, z = [], seed & MASK64
    for _ in range(n):
        z = (z + 0x9E3779B97F4A7C15) & MASK64
        x = z
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
        out.append(x ^ (x >> 31))
    return out


@pytest.mark.parametrize("seed", [0, 1234567, -1, -(1 << 63), (1 << 63) - 1])
def test_tensor_version_is_splitmix64(seed):
    high = rng.splitmix_high(seed, 300).tolist()
    assert high == [v >> 32 for v in splitmix64(seed, 300)]


def _with_ext(monkeypatch, on: bool):
    if on:
        require_ext()
        ext.ops()
    else:
        monkeypatch.setattr(ext, "loaded_ops", lambda: None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", [0.0, 1e-9, 0.15, 0.5, 0.999, 1.0])
@pytest.mark.parametrize("n", [1, 17, 1000, 70001])  # 70001: several parallel chunks of 2**15
def test_extension_and_tensor_ops_give_the_same_mask(n, p, dtype, monkeypatch, num_threads):
    num_threads(2)
    masks = []
    for on in (True, False):
        _with_ext(monkeypatch, on)
        torch.manual_seed(3)
        masks.append(rng.bernoulli_mask((n,), p, 0.0, 1 / (1 - p) if p < 1 else 0.0, dtype))
        monkeypatch.undo()
    assert masks[0].dtype == masks[1].dtype == dtype
    assert torch.equal(masks[0], masks[1])
    seed_state = torch.manual_seed(3)  # the same seed as the masks: the first draw is the seed
    seed = int(torch.randint(-(1 << 63), (1 << 63) - 1, (), dtype=torch.int64, generator=seed_state))
    torch.manual_seed(3)
    expect = [(v >> 32) < int(p * 2**32) for v in splitmix64(seed, min(n, 500))]
    assert (masks[0][: len(expect)] == 0).tolist() == expect


@pytest.mark.parametrize("on", [True, False])
def test_masks_are_bernoulli_and_independent(on, monkeypatch):
    _with_ext(monkeypatch, on)
    n, p = 1 << 20, 0.15
    torch.manual_seed(0)
    a = regularizers.sample_mask("zoneout", (n,), p, torch.zeros((), dtype=torch.float32))
    b = regularizers.sample_mask("zoneout", (n,), p, torch.zeros((), dtype=torch.float32))
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(a.mean().item() - p) < 5 * sd and abs(b.mean().item() - p) < 5 * sd
    for x, y in ((a[1:], a[:-1]), (a[64:], a[:-64]), (a, b)):  # neighbours, lag 64, two masks
        r = torch.corrcoef(torch.stack([x, y]).double())[0, 1].item()
        assert abs(r) < 5 / math.sqrt(n), r
    torch.manual_seed(0)
    assert torch.equal(regularizers.sample_mask("zoneout", (n,), p, a), a)  # reproducible


def test_a_mask_never_builds_the_extension(monkeypatch):
    monkeypatch.setattr(ext, "_state", {})

    def no_build():
        raise AssertionError("a mask tried to build the extension")

    monkeypatch.setattr(ext, "_build", no_build)
    m = regularizers.sample_mask("recurrent", (4, 5), 0.5, torch.zeros(()))
    assert m.shape == (4, 5) and set(m.unique().tolist()) <= {0.0, 2.0}


def test_rejects_bad_probability():
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"):
        rng.bernoulli_mask((3,), 1.5, 1.0, 0.0, torch.float32)


@pytest.mark.parametrize("on", [True, False])
def test_hit_and_miss_at_the_extremes_and_the_threshold(on, monkeypatch):
    """``p = 1``: every entry is ``hit``; ``p = 0``: every one ``miss`` (the dropout masks above
    pass ``hit = miss = 0`` at ``p = 1``, which cannot tell them apart). At the threshold the
    comparison is strict, as documented: ``(z >> 32) < ⌊p · 2³²⌋``, so an element whose high bits
    equal ``⌊p · 2³²⌋`` is a miss, and a hit one step of ``2⁻³²`` above."""
    _with_ext(monkeypatch, on)
    for dtype in (torch.float32, torch.float64):
        assert torch.equal(rng.bernoulli_mask((50,), 1.0, 1.0, 0.0, dtype), torch.ones(50, dtype=dtype))
        assert torch.equal(rng.bernoulli_mask((50,), 0.0, 1.0, 0.0, dtype), torch.zeros(50, dtype=dtype))
        torch.manual_seed(5)
        high = int(rng.splitmix_high(rng._seed(), 1)[0])  # the first element's high 32 bits
        for k, want in ((high, 0.0), (high + 1, 1.0)):
            torch.manual_seed(5)  # the same seed again: the same first element
            assert rng.bernoulli_mask((1,), k / 2**32, 1.0, 0.0, dtype).item() == want


def test_the_same_masks_on_the_avx2_and_scalar_paths(tmp_path):
    """csrc/rng.cpp fills masks with an AVX-512 loop where the CPU has it; ``RNNKIT_NO_AVX512=1``
    and ``RNNKIT_NO_AVX2=1`` turn it off as every other vector path (it ignored them). The same
    integer maths: the masks drawn in a fresh interpreter under each switch (read once per
    process) are bit-identical, sizes with vector tails and several threads' chunks included."""
    require_ext()
    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys, torch; from rnnkit.kernels import ext; ops = ext.ops(); torch.set_num_threads(2)\n"
        "masks = [ops.bernoulli_mask(n, seed, p, 1.5, -0.25, f64) for n in (1, 7, 9, 17, 70001)\n"
        "         for seed in (0, -1, 1 << 40) for p in (0.0, 0.15, 0.5, 0.999, 1.0)\n"
        "         for f64 in (False, True)]\n"
        "torch.save(masks, sys.argv[1])"
    )
    got = {}
    for switch in ("", "RNNKIT_NO_AVX512", "RNNKIT_NO_AVX2"):
        env = {k: v for k, v in os.environ.items() if k not in ("RNNKIT_NO_AVX512", "RNNKIT_NO_AVX2")}
        if switch:
            env[switch] = "1"
        out = tmp_path / f"masks{switch}.pt"
        run = subprocess.run([sys.executable, "-c", code, str(out)], cwd=root, env=env, timeout=300)
        assert run.returncode == 0
        got[switch] = torch.load(out)
    for switch in ("RNNKIT_NO_AVX512", "RNNKIT_NO_AVX2"):
        assert all(torch.equal(a, b) for a, b in zip(got[""], got[switch], strict=True)), switch
