"""Cells: the math of one time step, one family per module (see :mod:`rnnkit.cells.base`)."""

from .base import Cell, ParamSpec, StepContext
from .gru import GRUCellMath
from .lstm import LSTMCellMath
from .rnn import RNNCellMath

__all__ = ["Cell", "ParamSpec", "StepContext", "GRUCellMath", "LSTMCellMath", "RNNCellMath"]
