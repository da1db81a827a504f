"""Keep freed memory in the process: no page faults for the big tensors of every step.

A CPU training step allocates and frees the same large tensors (activations saved for
backward, gradients) every iteration. glibc's malloc serves blocks above its mmap threshold
(dynamic, up to 32 MiB) with fresh ``mmap`` pages and trims the heap top above its trim
threshold, so each step can fault its buffers in again, page by page, zero-filled by the
kernel. Measured on the development machine (2 cores, T=100, B=32, I=128, H=256, one training
step; benchmarks/malloc_faults.py): ``torch.nn.LSTM`` 31.5 → 21.7 ms (8,174 → 0 minor faults
per step), rnnkit's layer-norm LSTM 45.5 → 32.3 ms (12,801 → 1), batch norm 52.2 → 38.7 ms;
rnnkit's fused LSTM/GRU kernels fault less (0–6,110).

:func:`tune_malloc` raises both thresholds (the same as ``MALLOC_MMAP_THRESHOLD_=33554432
MALLOC_TRIM_THRESHOLD_=1073741824`` in the environment): freed blocks stay in the process for
the next step, at the price of up to ``trim_threshold`` bytes of freed memory kept. It changes
the whole process, so the library never calls it on its own; ``rnnkit train`` does (unless
``--no-tune-malloc``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>

__all__ = ["tune_malloc"]


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Raise glibc malloc's mmap and trim thresholds (bytes); ``False`` where there is no glibc
    ``mallopt`` (other C libraries, other systems) or it refused a value."""
    if mmap_threshold < 0 or trim_threshold < 0:
        raise ValueError(f"thresholds must be >= 0, got {mmap_threshold}, {trim_threshold}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # glibc caps the mmap threshold at 32 MiB on 64-bit (HEAP_MAX / 2) and refuses more
    ok = mallopt(M_MMAP_THRESHOLD, min(mmap_threshold, 32 << 20)) == 1
    return mallopt(M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1)) == 1 and ok
