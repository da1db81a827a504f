"""``rnnkit.RNN``, ``LSTM``, ``GRU`` and their single-step ``*Cell`` twins.

Each is a thin configuration of the shared machinery: a cell (:mod:`rnnkit.cells`) inside
:class:`rnnkit.layers.RecurrentStack` (sequences) or :class:`StepCell` (one step). With
default arguments every class is a drop-in replacement for its ``torch.nn`` namesake: same
arguments, parameter names and shapes, initialization, inputs, outputs and numbers.
"""

from __future__ import annotations

import torch
from torch import _VF, Tensor, nn

from . import _checks
from .cells import Cell, GRUCellMath, LSTMCellMath, RNNCellMath, StepContext
from .layers import RecurrentStack

_SHAPES = """
    Inputs: ``input, hx``
        * ``input``: ``(L, N, H_in)``, ``(N, L, H_in)`` with ``batch_first``, ``(L, H_in)``
          unbatched, or a ``PackedSequence``.
        * ``hx``: initial state, ``(D * num_layers, N, H_out)`` (``(D * num_layers, H_out)``
          unbatched); zeros when omitted.
        * ``lengths`` (keyword, rnnkit extra): ``(N,)`` valid lengths of a padded batch.
    Outputs: ``output, h_n`` — ``output`` is ``(L, N, D * H_out)`` (a ``PackedSequence``
    for packed input), ``h_n`` is shaped like ``hx``. ``D = 2`` if bidirectional else 1.
"""


def split_options(options: dict) -> tuple[dict, dict]:
    """Split extra keywords into (cell options, layer options).

    Layer options are the keyword-only parameters of :class:`RecurrentStack` (regularizers
    and the like); everything else goes to the cell, whose constructor rejects unknown names.
    """
    layer_keys = RecurrentStack.layer_option_names()
    cell = {k: v for k, v in options.items() if k not in layer_keys}
    return cell, {k: v for k, v in options.items() if k in layer_keys}


class RNN(RecurrentStack):
    """Elman RNN, ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`` (or ReLU).

    Drop-in for :class:`torch.nn.RNN`; extra keywords select cell options (see the README's
    table of cells) and layer options (regularizers). Cell option: ``norm='layer'`` (Ba et al.
    2016), see :mod:`rnnkit.cells.rnn`.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None,
                 *, impl: str = "auto", **options) -> None:  # fmt: skip
        self.nonlinearity = nonlinearity
        cell_opts, layer_opts = split_options(options)
        super().__init__(
            lambda n: RNNCellMath(n, hidden_size, bias, nonlinearity, **cell_opts),
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            0, device, dtype, impl=impl, **layer_opts,
        )  # fmt: skip


class LSTM(RecurrentStack):
    """Long short-term memory; drop-in for :class:`torch.nn.LSTM`.

    Equations (gate order i, f, g, o as torch)::

        i, f, o = σ(W_i· x_t + b_i· + W_h· h_{t-1} + b_h·);  g = tanh(...)
        c_t = f ⊙ c_{t-1} + i ⊙ g;  h_t = o ⊙ tanh(c_t)   (h_t = W_hr h_t if proj_size)

    ``hx`` is a tuple ``(h_0, c_0)``; ``c_0`` has ``hidden_size`` features, ``h_0``
    ``proj_size or hidden_size``. Returns ``output, (h_n, c_n)``.

    Cell options (keywords; see :mod:`rnnkit.cells.lstm` and :mod:`rnnkit.cells.greff` for
    equations and parameter layout): ``peephole``, ``norm='layer'|'batch'`` (``max_len``),
    ``forget_bias``, and Greff et al.'s ablations ``input_gate``, ``forget_gate``,
    ``output_gate``, ``input_activation``, ``output_activation``, ``coupled_gates``,
    ``full_gate_recurrence`` (whose state is ``(h, c, gates)``).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, impl: str = "auto",
                 **options) -> None:  # fmt: skip
        cell_opts, layer_opts = split_options(options)
        super().__init__(
            lambda n: LSTMCellMath(n, hidden_size, bias, proj_size, **cell_opts),
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            proj_size, device, dtype, impl=impl, **layer_opts,
        )  # fmt: skip


class GRU(RecurrentStack):
    """Gated recurrent unit in torch's form; drop-in for :class:`torch.nn.GRU`.

    Equations (gate order r, z, n as torch)::

        r, z = σ(W_i· x_t + b_i· + W_h· h_{t-1} + b_h·)
        n = tanh(W_in x_t + b_in + r ⊙ (W_hn h_{t-1} + b_hn));  h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

    Cell options (see :mod:`rnnkit.cells.gru`): ``reset_after=False`` (Cho et al. 2014),
    ``norm='layer'``, ``variant='mut1'|'mut2'|'mut3'`` (Jozefowicz et al. 2015).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, impl: str = "auto", **options) -> None:  # fmt: skip
        cell_opts, layer_opts = split_options(options)
        super().__init__(
            lambda n: GRUCellMath(n, hidden_size, bias, **cell_opts),
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            0, device, dtype, impl=impl, **layer_opts,
        )  # fmt: skip


for _cls in (RNN, LSTM, GRU):
    _cls.__doc__ = (_cls.__doc__ or "") + _SHAPES


class StepCell(nn.Module):
    """One time step of any cell, with parameters under the cell's base names.

    ``forward(input (N, H_in) or (H_in,), hx=None)`` returns the new state: a tensor for
    one-state cells, a tuple ``(h, c)`` for LSTM — exactly like ``torch.nn.*Cell``.
    """

    _TORCH_CELLS = {
        "LSTM": _VF.lstm_cell,
        "GRU": _VF.gru_cell,
        "RNN_TANH": _VF.rnn_tanh_cell,
        "RNN_RELU": _VF.rnn_relu_cell,
    }

    def __init__(self, cell: Cell, device=None, dtype=None) -> None:
        super().__init__()
        self.cell = cell
        self.input_size, self.hidden_size, self.bias = cell.input_size, cell.hidden_size, cell.bias
        for spec in cell.param_specs():
            t = torch.empty(spec.shape, device=device, dtype=dtype)
            if spec.buffer:  # running statistics (recurrent batch norm)
                self.register_buffer(spec.name, t)
            else:
                self.register_parameter(spec.name, nn.Parameter(t))
        self.reset_parameters()

    def params(self) -> dict[str, Tensor]:
        return {s.name: getattr(self, s.name) for s in self.cell.param_specs()}

    def reset_parameters(self) -> None:
        self.cell.reset_parameters(self.params())

    def forward(self, input: Tensor, hx=None, *, step: int = 0):
        """``step`` (rnnkit extra) is the time index, for cells whose math depends on it
        (``norm='batch'`` uses that step's running statistics)."""
        _checks.check_tensor(input, "input")
        if input.dim() not in (1, 2):
            _checks.fail(f"{type(self).__name__} expects a 1-D or 2-D input, got shape {tuple(input.shape)}")
        ref = self.weight_ih
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        _checks.check_input(x, self.input_size, True, ref)
        B, names, sizes = x.shape[0], self.cell.state_names, self.cell.state_sizes()
        if hx is None:
            state = tuple(x.new_zeros(B, s) for s in sizes)
        else:
            shapes = [(s,) if unbatched else (B, s) for s in sizes]
            state = _checks.check_state(hx, names, shapes, ref)
            if unbatched:
                state = tuple(s.unsqueeze(0) for s in state)
        mode = self.cell.torch_mode()
        if mode is not None and not getattr(self, "needs_custom_loop", lambda: False)():
            p = self.params()
            hx_ = state if mode == "LSTM" else state[0]
            out = self._TORCH_CELLS[mode](
                x, hx_, p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh")
            )
            new = tuple(out) if mode == "LSTM" else (out,)
        else:
            p = self.params()
            ctx = StepContext(t=step, training=self.training, extra={"step": step})
            new = self.cell.step(p, self.cell.project_input(p, x), state, ctx)
        if unbatched:
            new = tuple(s.squeeze(0) for s in new)
        return new if len(new) > 1 else new[0]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        extra = self.cell.describe()
        return s + (f", {extra}" if extra else "")


class RNNCell(StepCell):
    """One Elman step; drop-in for :class:`torch.nn.RNNCell`."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None, **options) -> None:  # fmt: skip
        self.nonlinearity = nonlinearity
        cell = RNNCellMath(input_size, hidden_size, bias, nonlinearity, **options)
        super().__init__(cell, device, dtype)


class LSTMCell(StepCell):
    """One LSTM step; drop-in for :class:`torch.nn.LSTMCell`. Returns ``(h_1, c_1)``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None,
                 **options) -> None:  # fmt: skip
        super().__init__(LSTMCellMath(input_size, hidden_size, bias, **options), device, dtype)


class GRUCell(StepCell):
    """One GRU step; drop-in for :class:`torch.nn.GRUCell`."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None,
                 **options) -> None:  # fmt: skip
        super().__init__(GRUCellMath(input_size, hidden_size, bias, **options), device, dtype)
