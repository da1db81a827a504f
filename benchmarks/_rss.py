"""Peak memory of one step in a fresh process (Linux), shared by the benchmark scripts."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

# glibc's allocator maps every block of 128 KiB and more on its own and unmaps it when freed:
# the high-water mark is then the peak of the live allocations. With its default (a threshold
# that grows with the blocks freed) freed pages stay in the heap and are reused or not by
# chance: the same step read 193-257 MiB in fresh processes, 161 MiB every time with this.
MEASURE_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def peak_rss_mib(setup: str, step: str, repeat: int = 1) -> float:
    """Extra peak RSS (MiB) of ``step`` after ``setup`` (Python code run from the repository
    root, ``benchmarks`` importable), in a fresh interpreter whose allocator returns freed
    blocks to the system (:data:`MEASURE_ENV`, whatever the timing process uses): the
    high-water mark, reset through ``/proc/self/clear_refs`` right before ``step``, is the
    peak of the step's live allocations. Blocks under 128 KiB still come from the heap, and
    with several threads how much of it a step reuses varies between processes (torch.nn's GRU,
    medium shape, 2 threads: 39.5-44.2 MiB): the median of ``repeat`` fresh processes."""
    code = (
        f"import sys;sys.path.insert(0,'.');{setup};"
        "kb=lambda k:int(next(l for l in open('/proc/self/status') if l.startswith(k)).split()[1]);"
        f"open('/proc/self/clear_refs','w').write('5');base=kb('VmRSS');{step};"
        "print((kb('VmHWM')-base)/1024)"
    )
    env = {**os.environ, **MEASURE_ENV}
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        for _ in range(repeat)
    ]
    return statistics.median(float(res.stdout.split()[-1]) for res in runs)
