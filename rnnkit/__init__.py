"""rnnkit: every recurrent network of the textbook behind torch.nn's interface.

``rnnkit.LSTM`` & co. are drop-in replacements for their ``torch.nn`` namesakes; extra
features are extra keyword arguments whose defaults change nothing.
"""

from . import losses
from ._checks import RecurrentInputError
from .graphs import CUDAGraphed, cuda_graphed
from .layers import RecurrentStack
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, StepCell
from .regularizers import EmbeddingDropout, LockedDropout
from .state import detach_state

__version__ = "0.1.0"
__all__ = [
    "RNN",
    "LSTM",
    "GRU",
    "RNNCell",
    "LSTMCell",
    "GRUCell",
    "RecurrentStack",
    "StepCell",
    "RecurrentInputError",
    "detach_state",
    "cuda_graphed",
    "CUDAGraphed",
    "LockedDropout",
    "EmbeddingDropout",
    "losses",
]
from .parallel import LRU, QRNN, MinGRU, MinLSTM  # noqa: E402  (time-parallel layers, issue 10)

__all__ += ["MinGRU", "MinLSTM", "QRNN", "LRU"]
