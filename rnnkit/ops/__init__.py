"""Time-parallel primitives: :func:`linear_scan` (``torch.ops.rnnkit.linear_scan``)."""

from .scan import backend, linear_scan, load_extension

__all__ = ["linear_scan", "backend", "load_extension"]
