"""Peak memory of one step in a fresh process (Linux), shared by the benchmark scripts."""

from __future__ import annotations

import subprocess
import sys


def peak_rss_mib(setup: str, step: str) -> float:
    """Extra peak RSS (MiB) of ``step`` after ``setup`` (Python code run from the repository
    root, ``benchmarks`` importable), in a fresh interpreter: the high-water mark is reset
    through ``/proc/self/clear_refs`` right before ``step``."""
    code = (
        f"import sys;sys.path.insert(0,'.');{setup};"
        "kb=lambda k:int(next(l for l in open('/proc/self/status') if l.startswith(k)).split()[1]);"
        f"open('/proc/self/clear_refs','w').write('5');base=kb('VmRSS');{step};"
        "print((kb('VmHWM')-base)/1024)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(res.stdout.split()[-1])
