"""The CUDA kernel of :func:`rnnkit.ops.linear_scan`, in Triton (imported only on CUDA).

``h_t = a_t ⊙ h_{t-1} + b_t`` over time-major ``(T, N)`` tensors. Each program owns
``BLOCK`` columns (features × batch) and walks time in tiles of ``CT`` steps: it loads a
``(CT, BLOCK)`` tile of ``a`` and ``b``, scans it along time in registers with the
associative operator ``(a₁, b₁) ∘ (a₂, b₂) = (a₂a₁, a₂b₁ + b₂)``, applies the carry entering
the tile, ``h = A ⊙ h_carry + B``, stores the tile and carries its last row. One launch for
the whole sequence: the chunked PyTorch scan it replaces needs ``O(log T)`` launches of
full-size tensors and was launch-bound (40x one elementwise pass at ``T = 1024``).

Masked rows past ``T`` load the identity step (``a = 1``, ``b = 0``), so the tile's last row
is the state after the last real step. Real float32/float64 only (complex tensors run the
chunked scan); float32 accumulates in float32, like the other paths.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU builds of torch come without Triton
    triton = None

BLOCK = 32  # columns per program: B·H = 4096 gives 128 programs
CT = 64  # time steps per tile


@functools.cache
def available() -> bool:
    """Whether the Triton kernel can run (Triton importable and CUDA present)."""
    return triton is not None and torch.cuda.is_available()


if triton is not None:

    @triton.jit
    def _combine(a1, b1, a2, b2):
        return a2 * a1, a2 * b1 + b2

    @triton.jit
    def _scan_kernel(a_ptr, b_ptr, h0_ptr, out_ptr, T, N, REVERSE: tl.constexpr, CT: tl.constexpr,
                     BLOCK: tl.constexpr):  # fmt: skip
        cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        cmask = cols < N
        h = tl.load(h0_ptr + cols, mask=cmask, other=0.0)
        rows = tl.arange(0, CT)
        last = (rows == CT - 1)[:, None]
        for t0 in range(0, T, CT):
            step = t0 + rows
            if REVERSE:
                tt = T - 1 - step
            else:
                tt = step
            m = (step < T)[:, None] & cmask[None, :]
            off = tt.to(tl.int64)[:, None] * N + cols[None, :]
            a = tl.load(a_ptr + off, mask=m, other=1.0)
            b = tl.load(b_ptr + off, mask=m, other=0.0)
            A, B = tl.associative_scan((a, b), 0, _combine)
            hs = A * h[None, :] + B
            tl.store(out_ptr + off, hs, mask=m)
            h = tl.sum(tl.where(last, hs, 0.0), axis=0)


def forward(a: Tensor, b: Tensor, h0: Tensor | None, reverse: bool) -> Tensor:
    """``h`` for time-major ``a, b (T, ...)`` on CUDA; ``h0 (...)`` or ``None`` (zeros)."""
    T = b.shape[0]
    a2, b2 = a.reshape(T, -1).contiguous(), b.reshape(T, -1).contiguous()
    N = b2.shape[1]
    h = b2.new_zeros(N) if h0 is None else h0.reshape(N).contiguous()
    out = torch.empty_like(b2)
    if N and T:
        with torch.cuda.device(b.device):
            _scan_kernel[(triton.cdiv(N, BLOCK),)](a2, b2, h, out, T, N, REVERSE=reverse, CT=CT, BLOCK=BLOCK)
    return out.view(b.shape)
