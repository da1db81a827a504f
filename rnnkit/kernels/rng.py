"""Bernoulli masks from a counter-based generator: every regularizer mask on the CPU.

torch's CPU generator (mt19937) is serial, about 2 ns per number: zoneout's two ``(T, B, H)``
masks took ~5 ms of a ~16 ms forward at the medium shape, more than the rest of zoneout. Here
a mask is SplitMix64 (Steele, Lea & Flood 2014; passes BigCrush) run from a seed drawn from
torch's generator (so ``torch.manual_seed`` makes masks reproducible):

    z_i = seed + (i + 1) · 0x9E3779B97F4A7C15  (mod 2⁶⁴),  then SplitMix64's output mix
    mask_i = hit  if  (z_i >> 32) < ⌊p · 2³²⌋  else  miss        (P(hit) = p to within 2⁻³²)

Element ``i`` depends only on ``(seed, i)``: the C++ extension fills a mask on all threads
(``rnnkit_ext::bernoulli_mask``, csrc/rng.cpp; 0.07 ms for 819,200 values against 1.7 ms for
``torch.rand``), and the same bits come from int64 tensor ops where the extension is not
loaded — the choice never changes a mask. The extension is used only once loaded (by a fused
kernel): a mask never triggers a build.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
from torch import Tensor

from . import ext

# SplitMix64's constants as signed int64 (torch has no uint64 arithmetic; the products wrap
# the same way, and right shifts are masked to be logical).
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M2 = 0x94D049BB133111EB - (1 << 64)


def _shr(z: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 ``z`` by ``k`` (torch's ``>>`` keeps the sign)."""
    return z.bitwise_right_shift(k).bitwise_and_((1 << (64 - k)) - 1)


def splitmix_high(seed: int, n: int) -> Tensor:
    """The high 32 bits of SplitMix64's first ``n`` outputs from ``seed``, as int64 ``(n,)``."""
    z = torch.arange(1, n + 1, dtype=torch.int64).mul_(_GOLDEN).add_(seed)
    z = z.bitwise_xor_(_shr(z, 30)).mul_(_M1)
    z = z.bitwise_xor_(_shr(z, 27)).mul_(_M2)
    return _shr(z.bitwise_xor_(_shr(z, 31)), 32)


def _seed() -> int:
    """A signed 64-bit seed from torch's default CPU generator."""
    return int(torch.randint(-(1 << 63), (1 << 63) - 1, (), dtype=torch.int64))


def bernoulli_mask(shape: Sequence[int], p: float, hit: float, miss: float, dtype: torch.dtype) -> Tensor:
    """A CPU tensor of ``shape`` holding ``hit`` with probability ``p``, else ``miss``."""
    if not 0 <= p <= 1:
        raise ValueError(f"bernoulli_mask: p must be in [0, 1], got {p}")
    n, seed = prod(shape), _seed()
    ops = ext.loaded_ops()
    if ops is not None and dtype in (torch.float32, torch.float64):
        return ops.bernoulli_mask(n, seed, p, hit, miss, dtype == torch.float64).view(tuple(shape))
    if p >= 1:
        return torch.full(tuple(shape), hit, dtype=dtype)
    hits = splitmix_high(seed, n).lt(int(p * 4294967296.0))
    # hit/miss rounded to dtype once, as the C++ kernel's cast
    h, m = torch.tensor(hit, dtype=torch.float64).to(dtype), torch.tensor(miss, dtype=torch.float64).to(dtype)
    return torch.where(hits, h, m).view(tuple(shape))
