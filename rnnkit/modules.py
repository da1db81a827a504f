"""``rnnkit.RNN``, ``LSTM``, ``GRU`` and their single-step ``*Cell`` twins.

Each is a thin configuration of the shared machinery: a cell (:mod:`rnnkit.cells`) inside
:class:`rnnkit.layers.RecurrentStack` (sequences) or :class:`StepCell` (one step). With
default arguments every class is a drop-in replacement for its ``torch.nn`` namesake: same
arguments, parameter names and shapes, initialization, inputs, outputs and numbers.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from torch import _VF, Tensor, nn

from . import _checks, dispatch, options, regularizers
from ._nn_compat import reference, refuse_script, reset_like_torch
from .cells import Cell, GRUCellMath, LSTMCellMath, RNNCellMath, StepContext
from .layers import RecurrentStack
from .regularizers import StepMasks

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


def check_options(cls: type, math_cls: type, cell_opts: dict, exclude=()) -> None:
    """Raise a ``TypeError`` naming the public class ``cls`` for a keyword that neither its cell
    (``math_cls``) nor ``cls`` itself (its keyword-only options: a layer's or a cell's) takes,
    instead of the cell's ``LSTMCellMath.__init__() got an unexpected keyword argument``.
    ``exclude``: cell parameters ``cls`` does not offer."""
    fixed = {"self", "input_size", "hidden_size", "bias", "nonlinearity", *exclude}
    cell_keys = sorted(set(inspect.signature(math_cls.__init__).parameters) - fixed)
    unknown = [k for k in cell_opts if k not in cell_keys]
    if not unknown:
        return
    name = f"{cls.__module__.split('.')[0]}.{cls.__qualname__}"
    if "proj_size" in unknown and issubclass(cls, RecurrentStack):  # torch.nn.RNN / GRU's error
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
    layer_only = RecurrentStack.layer_option_names() | {"impl"}
    own = StepCell.step_option_names() if issubclass(cls, StepCell) else layer_only
    hint = ""
    if issubclass(cls, StepCell) and unknown[0] in layer_only:
        hint = f" ({unknown[0]!r} is an option of the layers rnnkit.RNN / LSTM / GRU, not of the cells)"
    raise TypeError(
        f"{name}.__init__() got an unexpected keyword argument {unknown[0]!r}{hint}; its cell options "
        f"are {', '.join(cell_keys)} and its other options {', '.join(sorted(own))}"
    )


class RNN(RecurrentStack):
    """Elman RNN, ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`` (or ReLU).

    Drop-in for :class:`torch.nn.RNN`; extra keywords select cell options (see docs/zoo.md's
    table of cells) and layer options (regularizers). Cell option: ``norm='layer'`` (Ba et al.
    2016), see :mod:`rnnkit.cells.rnn`.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None,
                 *, impl: str = "auto", **options) -> None:  # fmt: skip
        self.nonlinearity = nonlinearity
        cell_opts, layer_opts = split_options(options)
        check_options(type(self), RNNCellMath, cell_opts)
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
        check_options(type(self), LSTMCellMath, cell_opts, exclude=("proj_size",))  # a named argument
        super().__init__(
            lambda n: LSTMCellMath(n, hidden_size, bias, proj_size, **cell_opts),
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            proj_size, device, dtype, impl=impl, **layer_opts,
        )  # fmt: skip

    def get_expected_cell_size(self, input: Tensor, batch_sizes: Tensor | None) -> tuple[int, int, int]:
        """``(num_layers * num_directions, batch, hidden_size)``, as :class:`torch.nn.LSTM`'s."""
        return self.state_shapes(self._mini_batch(input, batch_sizes))[1]  # type: ignore[return-value]


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
        check_options(type(self), GRUCellMath, cell_opts)
        super().__init__(
            lambda n: GRUCellMath(n, hidden_size, bias, **cell_opts),
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            0, device, dtype, impl=impl, **layer_opts,
        )  # fmt: skip


for _cls in (RNN, LSTM, GRU):
    _cls.__doc__ = (_cls.__doc__ or "") + _SHAPES


class StepCell(nn.Module):
    """One time step of any cell, with parameters under the cell's base names.

    ``forward(input (N, H_in) or (H_in,), hx=None, masks=None)`` returns the new state: a
    tensor for one-state cells, a tuple ``(h, c)`` for LSTM — exactly like ``torch.nn.*Cell``.

    Regularizers (keyword-only, off by default), with the semantics of the layer options:
    ``recurrent_dropout`` and ``weight_drop`` use one mask *per sequence*, which a one-step
    module cannot know, so the caller holds them: ``masks = cell.sample_masks(batch)`` at the
    start of each sequence, then ``cell(x_t, state, masks=masks)`` at every step (required in
    training, ignored in evaluation). ``zoneout`` needs no masks from the caller: a new one is
    drawn at every step (its expectation is used in evaluation).
    """

    zoneout = options.ZoneoutOption()  # assignable: keeps zoneout_probs in step
    recurrent_dropout = options.ProbOption()  # checked on every assignment
    weight_drop = options.ProbOption()
    _TORCH_CELLS = {
        "LSTM": _VF.lstm_cell,
        "GRU": _VF.gru_cell,
        "RNN_TANH": _VF.rnn_tanh_cell,
        "RNN_RELU": _VF.rnn_relu_cell,
    }

    def __init__(
        self,
        cell: Cell,
        device=None,
        dtype=None,
        *,
        recurrent_dropout: float = 0.0,
        weight_drop: float = 0.0,
        zoneout: float | tuple[float, float] | dict[str, float] = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(cell, Cell):  # (else "'int' object has no attribute 'input_size'")
            got = type(cell).__name__
            raise TypeError(f"cell must be an rnnkit.cells.Cell (e.g. LSTMCellMath(3, 4)), got {got}")
        self.cell = cell
        self.input_size, self.hidden_size, self.bias = cell.input_size, cell.hidden_size, cell.bias
        self.recurrent_dropout = recurrent_dropout
        self.weight_drop = weight_drop
        self.zoneout = zoneout  # (sets zoneout_probs: options.ZoneoutOption)
        for spec in cell.param_specs():
            t = torch.empty(spec.shape, device=device, dtype=dtype)
            if spec.buffer:  # running statistics (recurrent batch norm)
                self.register_buffer(spec.name, t)
            else:
                self.register_parameter(spec.name, nn.Parameter(t))
        if not cell.bias:  # torch.nn's cells hold bias_ih = bias_hh = None (code reads c.bias_ih)
            for name in ("bias_ih", "bias_hh"):
                if name not in self._parameters:
                    self.register_parameter(name, None)
        self.reset_parameters()

    @classmethod
    def step_option_names(cls) -> frozenset[str]:
        """Keyword-only options of the step machinery (regularizers; the rest are cell options)."""
        sig = inspect.signature(StepCell.__init__)
        return frozenset(n for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY)

    @classmethod
    def split_options(cls, options: dict) -> tuple[dict, dict]:
        """Split extra keywords into (cell options, step options such as regularizers)."""
        keys = cls.step_option_names()
        return {k: v for k, v in options.items() if k not in keys}, {
            k: v for k, v in options.items() if k in keys
        }

    def params(self, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """The cell's tensors by name, each checked against the shape of its spec and, given
        ``dtype`` (the parameters'), of that dtype."""
        build = lambda: {s.name: s.shape for s in self.cell.param_specs()}  # noqa: E731
        shapes = _checks.kept(self, "_spec_shapes", build)  # (the specs per step: ~10% of a small step)
        p = {name: getattr(self, name) for name in shapes}
        _checks.check_param_shapes(p, shapes, dtype=dtype)
        return p

    def __prepare_scriptable__(self):
        """What ``torch.jit.script`` asks of a module (and of every submodule) before compiling it."""
        refuse_script(self)

    def reset_parameters(self) -> None:
        """Draw every parameter anew as torch.nn does, also where a torch.nn utility holds it."""
        reset_like_torch(self, [(self.cell, {s.name: s.name for s in self.cell.param_specs()})])

    def needs_custom_loop(self) -> bool:
        """Recurrent dropout in training needs the cell's own step (torch's has no mask)."""
        return self.training and self.recurrent_dropout > 0

    def sample_masks(self, batch_size: int = 1) -> StepMasks:
        """Draw the per-sequence masks of ``batch_size`` sequences (1 for unbatched input)
        from torch's RNG, in the layers' order (:func:`rnnkit.regularizers.sample_plan`, so the
        same seed gives a one-layer ``rnnkit.LSTM`` & co.'s masks): one per ``weight_hh*``,
        then ``(batch_size, S_0)`` for recurrent dropout."""
        # 0: an empty batch (0, H_in), which torch.nn's cells take too
        if not _checks.is_int(batch_size) or batch_size < 0:  # numpy's ints too
            raise ValueError(f"batch_size must be a non-negative int, got {batch_size!r}")
        batch_size = int(batch_size)
        like = reference(self, "weight_ih")  # (not self.weight_ih, self.params(): computed if parametrized)
        weights = {}
        if self.weight_drop:
            for n in (s.name for s in self.cell.param_specs() if s.name.startswith("weight_hh")):
                shape = getattr(self, n).shape
                weights[n] = regularizers.sample_mask("weight_drop", shape, self.weight_drop, like)
        rec = None
        if self.recurrent_dropout:
            shape = (batch_size, self.cell.state_sizes()[0])
            rec = regularizers.sample_mask("recurrent", shape, self.recurrent_dropout, like)
        return StepMasks(batch_size, rec, weights)

    def _masked_params(
        self, masks: StepMasks | None, batch: int, dtype: torch.dtype | None
    ) -> tuple[dict[str, Tensor], Tensor | None]:
        p = self.params(dtype)  # dtype: the parameters' (None: unchecked, under autocast)
        if not self.training or not (self.recurrent_dropout or self.weight_drop):
            return p, None
        regularizers.check_step_masks(self, masks, p, batch)
        p = {n: w * masks.weights[n] if n in masks.weights else w for n, w in p.items()}
        return p, masks.recurrent

    def forward(self, input: Tensor, hx=None, masks: StepMasks | None = None, step: int = 0):
        """One step. rnnkit extras: ``masks`` (from :meth:`sample_masks`) for recurrent dropout
        and weight-drop in training; ``step``, the time index, for cells whose math depends on
        it (``norm='batch'`` uses that step's running statistics; steps from ``max_len`` on use
        those of ``max_len - 1``)."""
        # no keyword-only parameters: torch.onnx.export(dynamo=False) passes every one by position
        _checks.check_tensor(input, "input")
        step = _checks.check_step(step)
        if input.dim() not in (1, 2):
            _checks.fail(f"{type(self).__name__} expects a 1-D or 2-D input, got shape {tuple(input.shape)}")
        ref = reference(self, "weight_ih")  # (self.weight_ih would compute a parametrized one once more)
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        _checks.check_input(x, self.input_size, True, ref, batch_dim=0)
        _checks.check_real_relu([self.cell], x)
        _checks.check_real_norm([self.cell], x)
        B, names, sizes = x.shape[0], self.cell.state_names, self.cell.state_sizes()
        if hx is None:
            state = tuple(x.new_zeros(B, s) for s in sizes)
        else:
            shapes = [(s,) if unbatched else (B, s) for s in sizes]
            state = _checks.check_state(hx, names, shapes, ref)
            if unbatched:
                state = tuple(s.unsqueeze(0) for s in state)
        autocast = _checks.autocast_on(x.device.type)  # which casts the weights, as for torch.nn's cells
        p, rec = self._masked_params(masks, B, None if autocast else ref.dtype)
        mode = self.cell.torch_mode()
        if getattr(self.cell, "proj_size", 0):  # StepCell(LSTMCellMath(..., proj_size)): not in lstm_cell
            mode = None
        # inside torch.func transforms the cell's own step (plain ops), as the layers take the loop
        # there: torch's lstm_cell has no batching rule (vmap failed as torch.nn.LSTMCell does), and
        # gru_cell / rnn_*_cell ran vmap's slow per-sample fallback, with a warning at every call.
        # Not under forward-mode AD alone: torch's cell ops have forward derivatives, and there the
        # own step's LSTM rounded otherwise than torch.nn.LSTMCell (and than the call outside it)
        use_torch = mode is not None and not self.needs_custom_loop() and not dispatch.in_transform()
        precision = contextlib.nullcontext()
        if (not use_torch or any(self.zoneout_probs)) and autocast:
            # as the layers: autocast has no rule for the options torch lacks (mixed dtypes inside
            # a step crash torch.lerp), so they run in the parameters' dtype with autocast off
            x, state = x.to(ref.dtype), tuple(s.to(ref.dtype) for s in state)
            precision = torch.autocast(x.device.type, enabled=False)
        with precision:
            if use_torch:
                hx_ = state if mode == "LSTM" else state[0]
                out = self._TORCH_CELLS[mode](  # type: ignore[index]
                    x, hx_, p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh")
                )
                new = tuple(out) if mode == "LSTM" else (out,)
            else:
                ctx = StepContext(t=step, training=self.training, recurrent_mask=rec, extra={"step": step})
                new = self.cell.step(p, self.cell.project_input(p, x), state, ctx)
            if any(self.zoneout_probs):
                new = self._zoneout(state, new, like=x)
        if unbatched:
            new = tuple(s.squeeze(0) for s in new)
        return new if len(new) > 1 else new[0]

    def _zoneout(self, prev: tuple[Tensor, ...], new: tuple[Tensor, ...], like: Tensor) -> tuple[Tensor, ...]:
        out = []
        for s0, s1, p in zip(prev, new, self.zoneout_probs):
            if p and self.training:
                s1 = torch.lerp(s1, s0, regularizers.sample_mask("zoneout", s1.shape, p, like))
            elif p:
                s1 = torch.lerp(s1, s0, p)
            out.append(s1)
        return tuple(out)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        act = getattr(self.cell, "nonlinearity", "tanh")  # the cell's (a StepCell of a ReLU cell too)
        if act != "tanh":  # as torch.nn.RNNCell's repr
            s += f", nonlinearity={act}"
        if getattr(self.cell, "proj_size", 0):
            s += f", proj_size={self.cell.proj_size}"
        extra = self.cell.describe()
        for key in ("recurrent_dropout", "weight_drop", "zoneout"):
            if getattr(self, key) != 0.0:
                s += f", {key}={getattr(self, key)}"
        return s + (f", {extra}" if extra else "")


class RNNCell(StepCell):
    """One Elman step; drop-in for :class:`torch.nn.RNNCell`."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None, **options) -> None:  # fmt: skip
        cell_opts, step_opts = StepCell.split_options(options)
        check_options(type(self), RNNCellMath, cell_opts)
        cell = RNNCellMath(input_size, hidden_size, bias, nonlinearity, **cell_opts)
        super().__init__(cell, device, dtype, **step_opts)

    @property
    def nonlinearity(self) -> str:
        """``"tanh"`` or ``"relu"``, the cell's. Assignable, as ``torch.nn.RNNCell``'s (which reads
        it at every call): a copy kept here changed the repr but not the math, silently."""
        return self.cell.nonlinearity  # type: ignore[attr-defined]

    @nonlinearity.setter
    def nonlinearity(self, value: str) -> None:
        # a new cell (its options kept): the math is fixed at a cell's construction, which checks value
        old = self.cell
        self.cell = RNNCellMath(old.input_size, old.hidden_size, old.bias, value, norm=old.norm)  # type: ignore[attr-defined]


class LSTMCell(StepCell):
    """One LSTM step; drop-in for :class:`torch.nn.LSTMCell`. Returns ``(h_1, c_1)``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None,
                 **options) -> None:  # fmt: skip
        cell_opts, step_opts = StepCell.split_options(options)
        # torch.nn.LSTMCell has no proj_size: a TypeError as torch's
        check_options(type(self), LSTMCellMath, cell_opts, exclude=("proj_size",))
        super().__init__(LSTMCellMath(input_size, hidden_size, bias, **cell_opts), device, dtype, **step_opts)


class GRUCell(StepCell):
    """One GRU step; drop-in for :class:`torch.nn.GRUCell`."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None,
                 **options) -> None:  # fmt: skip
        cell_opts, step_opts = StepCell.split_options(options)
        check_options(type(self), GRUCellMath, cell_opts)
        super().__init__(GRUCellMath(input_size, hidden_size, bias, **cell_opts), device, dtype, **step_opts)
