"""Time-parallel recurrences on one linear-scan primitive (:func:`rnnkit.ops.linear_scan`)."""

from .base import ParallelRecurrent
from .lru import LRU
from .mingru import MinGRU
from .minlstm import MinLSTM
from .qrnn import QRNN

__all__ = ["ParallelRecurrent", "MinGRU", "MinLSTM", "QRNN", "LRU"]
