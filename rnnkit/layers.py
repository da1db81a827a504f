"""The layer machinery: the stacked module that runs any cell (through :mod:`rnnkit.loop`).

``RecurrentStack`` composes cell -> direction -> layer -> stack (as in PyTorch's
``benchmarks/fastrnns/custom_lstms.py``), registers parameters under torch's names, parses
every input form ``torch.nn`` accepts, and asks :mod:`rnnkit.dispatch` which implementation
runs the call: torch's fused kernels, a fused rnnkit kernel, or this reference loop.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _checks, dispatch, kernels, options, regularizers
from ._nn_compat import RNNBaseCompat, reference, reset_like_torch
from .cells.base import Cell, State
from .padded import forward_padded


class RecurrentStack(RNNBaseCompat, nn.Module):
    """A stack of (optionally bidirectional) recurrent layers of any cell.

    ``make_cell(layer_input_size)`` builds the cell of one layer. Input, state and output
    conventions are exactly ``torch.nn.LSTM``'s (see :class:`rnnkit.LSTM`).

    Regularizers (keyword-only, all off by default; see :mod:`rnnkit.regularizers`):

    * ``locked_dropout`` — between layers, one dropout mask per sequence for all steps.
    * ``recurrent_dropout`` — one mask per sequence on ``h_{t-1}`` before ``W_hh`` (Gal &
      Ghahramani 2016), through the cell's ``StepContext.recurrent_mask``.
    * ``weight_drop`` — DropConnect on every ``weight_hh*`` tensor, one mask per forward call,
      scaled by ``1 / (1 - p)`` (Merity et al. 2017); parameters themselves are untouched.
    * ``zoneout`` — a number, ``(p_c, p_h)`` for LSTM, or ``{state name: p}``: each state unit
      keeps its previous value with probability ``p`` in training, and the state is the
      expectation ``p s_{t-1} + (1 - p) s̃_t`` in evaluation (Krueger et al. 2017).

    In ``eval()`` dropout-type regularizers are off; masks come from torch's RNG and are
    redrawn at every forward call. Independent masks per layer and direction.
    """

    zoneout = options.ZoneoutOption()  # assignable: keeps zoneout_probs in step
    # checked on every assignment (at construction too)
    locked_dropout = options.ProbOption()
    recurrent_dropout = options.ProbOption()
    weight_drop = options.ProbOption()
    impl = dispatch.ImplOption()  # checked on every assignment (at construction too)

    def __init__(
        self,
        make_cell: Callable[[int], Cell],
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        impl: str = "auto",
        locked_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        weight_drop: float = 0.0,
        zoneout: float | tuple[float, float] | dict[str, float] = 0.0,
    ) -> None:
        super().__init__()
        _checks.check_layer_config(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size, bidirectional
        )
        dispatch.check_impl(impl)
        self.input_size, self.hidden_size, self.num_layers = map(int, (input_size, hidden_size, num_layers))
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size, self.impl = bidirectional, int(proj_size), impl
        D = 2 if bidirectional else 1
        out = proj_size or hidden_size
        if not callable(make_cell):
            got = type(make_cell).__name__
            raise TypeError(f"make_cell must be a callable input_size -> Cell, got {got}")
        self.cells: list[Cell] = [make_cell(input_size if k == 0 else out * D) for k in range(num_layers)]
        for cell in self.cells:  # (else "'int' object has no attribute 'state_names'")
            if not isinstance(cell, Cell):
                raise TypeError(f"make_cell must return an rnnkit.cells.Cell, got {type(cell).__name__}")
        self.locked_dropout = locked_dropout
        if self.locked_dropout and num_layers == 1:  # after the value check: a bad value is an error first
            warnings.warn(
                "locked_dropout acts between recurrent layers, so it expects num_layers greater "
                f"than 1, but got locked_dropout={locked_dropout} and num_layers={num_layers}; "
                "use rnnkit.LockedDropout on the layer's input or output instead",
                stacklevel=3,
            )
        self.recurrent_dropout = recurrent_dropout
        self.weight_drop = weight_drop
        self.zoneout = zoneout  # (sets zoneout_probs: options.ZoneoutOption)
        self._names: list[list[dict[str, str]]] = []  # [layer][direction] base name -> attribute
        factory = {"device": device, "dtype": dtype}
        for k, cell in enumerate(self.cells):
            self._names.append([])
            for d in range(D):
                names = {}
                for spec in cell.param_specs():
                    attr = f"{spec.name}_l{k}{'_reverse' if d else ''}"
                    t = torch.empty(spec.shape, **factory)
                    if spec.buffer:
                        self.register_buffer(attr, t)
                    else:
                        self.register_parameter(attr, nn.Parameter(t))
                    names[spec.name] = attr
                self._names[k].append(names)
        self.reset_parameters()
        dispatch.check_impl_possible(self)

    @classmethod
    def layer_option_names(cls) -> frozenset[str]:
        """Keyword-only options of the layer machinery (the rest are cell options)."""
        sig = inspect.signature(RecurrentStack.__init__)
        return frozenset(n for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY)

    # -- parameters ------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Draw every parameter anew as torch.nn does, also where a torch.nn utility holds it
        (parametrized, pruned: :func:`rnnkit._nn_compat.reset_like_torch`)."""
        reset_like_torch(self, [(cell, names) for cell, per in zip(self.cells, self._names) for names in per])

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def mode(self) -> str:
        """torch.nn's name of the layer's family, whatever its options: ``"LSTM"``, ``"GRU"``,
        ``"RNN_TANH"`` or ``"RNN_RELU"`` (code written for ``nn.RNNBase.mode`` reads it)."""
        cell = self.cells[0]
        if cell.family == "rnn":
            return f"RNN_{cell.nonlinearity.upper()}"  # type: ignore[attr-defined]
        return cell.family.upper()

    def layer_params(self, layer: int, direction: int) -> dict[str, Tensor]:
        """The tensors of one layer-direction, keyed by the cell's base names, each checked against
        its spec's shape and the parameters' dtype (a replaced one of another is refused)."""
        names = self._names[layer][direction]
        # a registered parameter straight from _parameters, which getattr reaches last, through
        # nn.Module.__getattr__ (~0.4 us a tensor); the others (buffers, a parametrized, pruned or
        # weight-normed weight: no longer in _parameters) through getattr, as is a tensor set in the
        # instance dict over a registered parameter (object.__setattr__), which getattr (torch.nn,
        # rnnkit's torch path) reads first: from _parameters the loop and fused paths ignored it
        held, shadow = self._parameters, self.__dict__
        p = {
            base: held[attr] if attr in held and attr not in shadow else getattr(self, attr)
            for base, attr in names.items()
        }
        _checks.check_param_shapes(p, dispatch.spec_shapes(self)[layer], names, self._ref.dtype)
        return p

    def flat_weights(self) -> list[Tensor]:
        """Parameters in torch's ``_flat_weights`` order (for torch's fused kernels)."""
        return [
            getattr(self, attr) for per_layer in self._names for names in per_layer for attr in names.values()
        ]

    def flatten_parameters(self) -> None:
        """Like ``torch.nn.RNNBase.flatten_parameters``: on CUDA with cuDNN, move the weights of
        a torch-compatible configuration into one contiguous buffer; a no-op elsewhere. Recurrent
        dropout counts as torch-compatible (it is, in evaluation: a layer built in training mode,
        evaluated on torch's kernels, had unflattened weights and cuDNN's warning at every call).
        Also a no-op while a weight is missing, as torch.nn's: a weight-drop wrapper deletes one and
        sets it before each call (torchnlp's WeightDrop), and ``.to(device)`` in between called this."""
        mode, ws = dispatch.torch_mode(self, in_eval=True), self._flat_weights  # (None: missing)
        if mode is None or not all(
            w is not None and w.is_cuda and w.dtype == ws[0].dtype and torch.backends.cudnn.is_acceptable(w)
            for w in ws
        ):
            return
        ptrs = tuple(w.data_ptr() for w in ws)
        if len(set(ptrs)) != len(ws) or not torch._use_cudnn_rnn_flatten_weight():
            return
        # Still where the last flattening put them (a .to() to their own device): new addresses
        # made rnnkit.cuda_graphed capture afresh at every Trainer (torch.nn re-flattens).
        if ptrs == self.__dict__.get("_flat_ptrs"):
            return
        from torch.backends.cudnn import rnn as cudnn_rnn

        with torch.cuda.device_of(ws[0]), torch.no_grad():
            torch._cudnn_rnn_flatten_weight(
                ws, (4 if self.bias else 2) + (1 if self.proj_size else 0), self.input_size,
                cudnn_rnn.get_cudnn_mode(mode), self.hidden_size, self.proj_size, self.num_layers,
                self.batch_first, self.bidirectional,
            )  # fmt: skip
        self.__dict__["_flat_ptrs"] = tuple(w.data_ptr() for w in ws)

    def _apply(self, fn, recurse=True):
        ret = super()._apply(fn, recurse)
        self.flatten_parameters()  # as torch.nn does after .cuda() / .to()
        return ret

    @property
    def all_weights(self) -> list[list[Tensor]]:
        """Parameters grouped per layer-direction, as ``torch.nn.RNNBase.all_weights``: the tensors
        ``_all_weights`` names (batch norm's running statistics, buffers, are no weights: code that
        initializes every weight of the list drew them too)."""
        return [[getattr(self, a) for a in names] for names in self._all_weights]

    @property
    def _ref(self) -> Tensor:
        """A tensor of the parameters' dtype and device (the checks' reference): ``weight_ih_l0``,
        or the tensor that holds it where reading it computes it (a parametrization: one more
        orthogonal map, or spectral norm's power step, per check)."""
        return reference(self, self._names[0][0]["weight_ih"])

    def state_shapes(self, batch: int | None) -> list[tuple[int, ...]]:
        LD = self.num_layers * self.num_directions
        sizes = self.cells[-1].state_sizes()
        return [(LD, s) if batch is None else (LD, batch, s) for s in sizes]

    def needs_custom_loop(self) -> bool:
        """True when an option rules out torch's fused kernels: zoneout (it changes the state
        between steps, in evaluation too) and recurrent dropout in training."""
        return any(any(z) for z in self.zoneout_probs) or (self.training and self.recurrent_dropout > 0)

    def _regularized(self) -> bool:
        return bool(self.locked_dropout or self.recurrent_dropout or self.weight_drop) or any(
            any(z) for z in self.zoneout_probs
        )

    # -- forward ---------------------------------------------------------------------
    def forward(self, input, hx=None, lengths=None, step=0):  # noqa: C901 - mirrors torch's branches
        """Run the stack. See :class:`rnnkit.LSTM` for the shapes; ``lengths`` (a 1-D tensor of
        ``B`` ints) marks padded sequences of a dense batch: outputs past each length are zero
        and the final state is taken at each sequence's last valid step.

        ``step`` (an int >= 0, unidirectional layers): the time index of the input's first step
        in its sequence, for the cells whose math depends on it. Batch norm normalizes step
        ``t`` of the call with the statistics of slot ``min(step + t, max_len - 1)``, so a
        sequence fed in pieces with its state carried (step-by-step decoding: ``step`` = the
        number of steps already fed) gives what one call over the whole sequence gives."""
        # no keyword-only parameters: torch.onnx.export(dynamo=False) passes every one by position
        step = _checks.check_step(step)
        if step and self.bidirectional:  # the backward direction counts from the sequence's end
            _checks.fail(f"step={step} (a sequence's first time index) needs a unidirectional layer")
        if lengths is not None or isinstance(input, PackedSequence):
            _checks.untraceable_batch_sizes()  # under torch.compile / torch.export: a clear message
        if lengths is not None:
            return forward_padded(self, input, hx, lengths, step)
        packed = isinstance(input, PackedSequence)
        sorted_idx = unsorted_idx = batch_sizes = None
        if packed:
            x, batch_sizes, sorted_idx, unsorted_idx = input
            _checks.check_input(x, self.input_size, True, self._ref)
            # (under vmap, lengths= packs a batched batch_sizes: check_packed cannot read it)
            with dispatch.packing("packed input and lengths= are"):
                batch, unbatched = _checks.check_packed(input), False
        else:
            x = _checks.check_tensor(input, "input")
            batch_dim = (0 if self.batch_first else 1) if x.dim() == 3 else None  # may be empty
            _checks.check_input(x, self.input_size, False, self._ref, batch_dim)
            unbatched = x.dim() == 2
            if unbatched:
                x = x.unsqueeze(1)
            batch = x.shape[0] if (self.batch_first and not unbatched) else x.shape[1]
        _checks.check_real_relu(self.cells, x)
        _checks.check_real_norm(self.cells, x)
        _checks.check_real_dropout(self.dropout, self.num_layers, self.training, x)
        if unbatched:  # time-major (L, 1, H_in) from here on, whatever batch_first says
            batch_first = False
        else:
            batch_first = self.batch_first and not packed
        state = self._initial_state(hx, batch, unbatched, x)
        if sorted_idx is not None:
            state = tuple(s.index_select(1, sorted_idx) for s in state)

        # no sequence (dense input): torch.nn's empty outputs and states; under autocast torch's
        # kernel, whose dtypes there are autocast's (float32 for its LSTM and GRU, unlike a batch's)
        if batch == 0 and not (_checks.autocast_on(x.device.type) and dispatch.select(self, x) == "torch"):
            if self.impl != "auto":  # a forced impl's refusals (select's checks) hold for no sequence too
                dispatch.select(self, x)
            if _checks.autocast_on(x.device.type):  # the parameters' dtype, as a batch's (below)
                x, state = x.to(self._ref.dtype), tuple(s.to(self._ref.dtype) for s in state)
            return self._empty_batch(x, state, batch_first, unbatched)
        impl = dispatch.select(self, x, packed)
        precision = contextlib.nullcontext()
        if impl != "torch" and _checks.autocast_on(x.device.type):
            # autocast has no rule for the options torch lacks (mixed dtypes inside a step, kernels
            # in float32/64): they run in the parameters' dtype with autocast off, as autocast
            # leaves torch.nn's CPU GRU in float32
            dtype = self._ref.dtype
            x, state = x.to(dtype), tuple(s.to(dtype) for s in state)
            precision = torch.autocast(x.device.type, enabled=False)
        plan = None
        if self._regularized():
            steps = len(batch_sizes) if packed else x.shape[1 if batch_first else 0]
            # masks in the parameters' dtype: under autocast torch's kernels take the input as
            # given, and a bfloat16 mask would round weight-drop's 1 / (1 - p) into the weights
            plan = regularizers.sample_plan(self, batch, steps, self._ref, sorted_idx)
        if impl == "torch":
            out, final = dispatch.run_torch(self, x, batch_sizes, state, batch_first, plan)
        else:
            with precision:
                out, final = self._run_layers(x, batch_sizes, state, batch_first, impl, plan, step)

        if unsorted_idx is not None:
            final = tuple(s.index_select(1, unsorted_idx) for s in final)
        if packed:
            out = PackedSequence(out, batch_sizes, sorted_idx, unsorted_idx)
        elif unbatched:
            out, final = out.squeeze(1), tuple(s.squeeze(1) for s in final)
        return out, (final if len(final) > 1 else final[0])

    def _empty_batch(self, x: Tensor, state: State, batch_first: bool, unbatched: bool):
        """``(output, final state)`` for a dense batch of zero sequences, shaped as torch.nn's;
        output and final state are tied (by a zero) to the input, the initial state and every
        parameter, so that a loss over either backpropagates as torch.nn's does (zero gradients
        for all of them). Tied to the input and the first parameter alone, the output left the
        other parameters without gradients, and a final state of zeros needed none: a loss over
        ``h_n`` raised ("does not require grad") where torch.nn's gives zeros."""
        for k in range(self.num_layers * self.num_directions):  # a weight replaced by one of another
            self.layer_params(*divmod(k, self.num_directions))  # shape or dtype: refused as for a batch
        T = x.shape[1] if batch_first else x.shape[0]
        O = (self.proj_size or self.hidden_size) * self.num_directions
        out = x.new_zeros((0, T, O) if batch_first else (T, 0, O))
        if not torch.is_grad_enabled():
            final = tuple(s.clone() for s in state)
            return out, (final if len(final) > 1 else final[0])
        zero = (x.sum() + sum(t.sum() for t in (*state, *self.parameters()))) * 0
        final = tuple(s + zero for s in state)
        return out + zero, (final if len(final) > 1 else final[0])

    def _initial_state(self, hx, batch: int, unbatched: bool, x: Tensor) -> State:
        names = self.cells[-1].state_names
        if hx is None:
            return tuple(x.new_zeros(s) for s in self.state_shapes(batch))
        states = _checks.check_state(hx, names, self.state_shapes(None if unbatched else batch), self._ref)
        return tuple(s.unsqueeze(1) for s in states) if unbatched else states

    def _run_layers(self, x, batch_sizes, state: State, batch_first: bool, impl: str, plan=None, step=0):
        """The reference path: project, loop, stack; dense input is flattened time-major."""
        if batch_sizes is None:
            if batch_first:
                x = x.transpose(0, 1)
            T, B = x.shape[0], x.shape[1]
            steps, data = [B] * T, x.reshape(T * B, -1)
        else:
            steps, data = batch_sizes.tolist(), x
        finals: list[list[Tensor]] = [[] for _ in state]
        D = self.num_directions
        for k in range(self.num_layers):
            outs = []
            for d in range(D):
                idx = k * D + d
                h0 = tuple(s[idx] for s in state)
                out, fin = dispatch.run_direction(self, impl, k, d, data, steps, h0, plan, step)
                outs.append(out)
                for i, f in enumerate(fin):
                    finals[i].append(f)
            data = outs[0] if D == 1 else torch.cat(outs, 1)
            if D == 1 and k == self.num_layers - 1 and impl == "fused" and data.requires_grad:
                data = _own_output(self.cells[k], data)
            if self.dropout and self.training and k < self.num_layers - 1:
                data = F.dropout(data, self.dropout, True)
            if plan is not None and k < self.num_layers - 1 and plan.locked[k] is not None:
                data = regularizers.apply_sequence_mask(data, plan.locked[k], batch_sizes, False)
        final = tuple(torch.stack(f) for f in finals)
        if batch_sizes is None:
            data = data.view(T, B, -1)
            if batch_first:
                data = data.transpose(0, 1)
        return data, final

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for key, default in [
            ("proj_size", 0),
            ("num_layers", 1),
            ("bias", True),
            ("batch_first", False),
            ("dropout", 0.0),
            ("bidirectional", False),
            ("impl", "auto"),
            ("locked_dropout", 0.0),
            ("recurrent_dropout", 0.0),
            ("weight_drop", 0.0),
            ("zoneout", 0.0),
        ]:
            if getattr(self, key) != default:
                s += f", {key}={getattr(self, key)}"
        extra = self.cells[0].describe()
        return s + (f", {extra}" if extra else "")


def _own_output(cell, out: Tensor) -> Tensor:
    """The last layer's output, safe for in-place ops (``nn.Dropout(inplace=True)``) as torch.nn's.

    Some fused kernels save their output itself as the h-history for backward, so an in-place
    op on it would fail backward's version check: the caller then gets a copy (one output-sized
    copy per call that records a graph; inference calls and the other kernels skip it)."""
    return out.clone() if kernels.saves_output(cell) else out
