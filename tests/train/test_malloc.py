"""``tune_malloc``: freed big blocks stay in the process (checked in a fresh interpreter, since
the setting is process-wide): a tensor allocated again after being freed faults no pages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rnnkit.train import tune_malloc

CODE = """
import resource, sys, torch
from rnnkit.train import tune_malloc
if sys.argv[1] == "1":
    assert tune_malloc()
def faults(mib, n=3):  # minor page faults of a "step": four tensors alive at once, then freed
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        live = [torch.empty(mib << 18).fill_(1.0) for _ in range(4)]
        del live
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
faults(int(sys.argv[2]))
print(faults(int(sys.argv[2])))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_without_page_faults():
    def run(tuned: str, mib: int) -> int:
        r = subprocess.run([sys.executable, "-c", CODE, tuned, str(mib)], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr
        return int(r.stdout.strip())

    # 8 MiB blocks: untuned, glibc serves them from the heap (its mmap threshold has risen to 8 MiB
    # after the first free) and trims them when they end up at its top, which depends on what
    # else the process allocated (most runs fault every step, not all); tuned, they stay
    assert run("1", 8) < 100
    # 48 MiB blocks (oneDNN's LSTM workspace is ~33 MiB at the medium shape): above the 32 MiB
    # that caps glibc's dynamic threshold, so mmap'd, and faulted in, every time unless tuned
    tuned, untuned = run("1", 48), run("0", 48)
    assert tuned < 100, tuned
    assert untuned > 3 * 4 * 12288 // 2, untuned


def test_rejects_negative_thresholds():
    with pytest.raises(ValueError, match="thresholds must be >= 0"):
        tune_malloc(-1)
    with pytest.raises(ValueError, match="< 2 GiB"):
        tune_malloc(trim_threshold=2**31)
