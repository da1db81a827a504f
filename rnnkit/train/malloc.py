"""Keep freed memory in the process: no page faults for the big tensors of every step.

A CPU training step allocates and frees the same large tensors (activations saved for
backward, gradients, oneDNN's RNN workspace) every iteration. glibc's malloc serves a block
from fresh ``mmap`` pages when no free memory of the arena fits it and it is above the mmap
threshold (dynamic, at most 32 MiB unless set), and trims the heap top above its trim
threshold, so each step can fault its buffers in again, page by page, zero-filled by the
kernel. Measured on the development machine (2 cores, T=100, B=32, I=128, H=256, one training
step; ``benchmarks/malloc_faults.py``): ``torch.nn.LSTM`` faults its ~33 MiB workspace in every
step, 34.4 ms and 8,141 faults per step under the defaults, 23.3 ms and none tuned; rnnkit's
layer-norm LSTM 48.7 → 36.2 ms, batch norm 56.8 → 41.3 ms. Alone in its process torch's LSTM
still faulted every step with the earlier 32 MiB threshold (28–32 ms against 21–22).

:func:`tune_malloc` raises both thresholds (the same as ``MALLOC_MMAP_THRESHOLD_=1073741824
MALLOC_TRIM_THRESHOLD_=1073741824`` in the environment): blocks up to 1 GiB come from the heap,
and freed ones stay in the process for the next step, at the price of up to
``trim_threshold`` bytes of freed memory kept. It changes the whole process, so the library
never calls it on its own; ``rnnkit train`` does (unless ``--no-tune-malloc``).

Why it matters for comparisons: without it, whether a step faults depends on what else the
process allocated before (a block is served without faults from free heap memory that other
tensors left behind), so one layer's time moved 20–31 ms between runs of the same benchmark.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>

__all__ = ["tune_malloc"]


def tune_malloc(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 30) -> bool:
    """Raise glibc malloc's mmap and trim thresholds (bytes, below 2 GiB); ``False`` where
    there is no glibc ``mallopt`` (other C libraries, other systems) or it refused a value."""
    if not 0 <= mmap_threshold < 2**31 or not 0 <= trim_threshold < 2**31:
        raise ValueError(f"thresholds must be >= 0 and < 2 GiB, got {mmap_threshold}, {trim_threshold}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # (32 MiB caps only glibc's *dynamic* threshold; a value set here may be larger: 2.36 takes
    # any int, and oneDNN's LSTM workspace at T=100, B=32, H=256 is already ~33 MiB)
    ok = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
    return mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1 and ok
