"""The shared layer machinery of the time-parallel recurrences (minGRU, minLSTM, QRNN, LRU).

Each of those layers computes, for one layer-direction, a diagonal *linear* recurrence
``s_t = a_t ⊙ s_{t-1} + b_t`` whose ``a_t, b_t`` depend on the input only, so a whole
sequence costs a few GEMMs, a few elementwise passes and one :func:`rnnkit.ops.linear_scan`
— no Python loop over time. :class:`ParallelRecurrent` gives them ``torch.nn``'s interface,
exactly as :class:`rnnkit.RecurrentStack` does for the classic cells:

* input ``(L, N, H_in)``, ``(N, L, H_in)`` with ``batch_first``, ``(L, H_in)`` unbatched, or a
  ``PackedSequence`` (output packed the same way);
* ``hx``: initial state ``(D * num_layers, N, S)`` (``(D * num_layers, S)`` unbatched), zeros
  when omitted; ``h_n`` is shaped alike (layer-major, direction-minor, as torch) — the QRNN
  with ``window=2`` adds its convolution's past, ``(c, (x_prev_0, ...))`` (:mod:`.qrnn`);
* ``num_layers``, ``bidirectional`` (the reverse direction scans with ``reverse=True``, its
  parameters carry torch's ``_reverse`` suffix), inter-layer ``dropout``;
* ``step(x_t, state)`` for streaming inference: the same numbers as the whole-sequence call.

Variable lengths: a packed batch is padded time-major and masked — a padded step becomes the
identity ``a = 1, b = 0``, so the forward direction's state stays at each sequence's last
valid step and the reverse direction starts each sequence from ``h0`` at its own end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import _checks, dispatch, padded
from .._nn_compat import set_held, weight_storage
from ..ops import linear_scan
from ..ops.scan import _chunked_fwd
from ..padded import forward_padded

Params = dict[str, Tensor]


class ParallelRecurrent(nn.Module):
    """Base class: subclasses declare parameters and the math of one layer-direction.

    Subclasses implement :meth:`param_shapes`, :meth:`init_params`, :meth:`run` (whole
    sequence) and :meth:`step_layer` (one step); :attr:`state_size` and :attr:`state_dtype`
    describe the recurrent state; :attr:`dtypes` the parameter dtypes their equations hold for.
    """

    #: real floating point: the equations (sigmoid gates, log-space scans, ``Re(C h)``) are
    #: defined for real numbers only; a complex layer ran with complex sigmoids, or failed deep
    #: in torch (softplus)
    dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None) -> None:  # fmt: skip
        super().__init__()
        _checks.check_layer_config(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, 0, bidirectional
        )
        self.input_size, self.hidden_size, self.num_layers = map(int, (input_size, hidden_size, num_layers))
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional = bidirectional
        self._check_dtype(torch.get_default_dtype() if dtype is None else dtype)
        self._names: list[list[dict[str, str]]] = []
        for k in range(num_layers):
            n_in = self.layer_input_size(k)
            self._names.append([])
            for d in range(self.num_directions):
                names = {}
                for base, shape in self.param_shapes(n_in).items():
                    attr = f"{base}_l{k}{'_reverse' if d else ''}"
                    t = torch.empty(shape, device=device, dtype=dtype)
                    self.register_parameter(attr, nn.Parameter(t))
                    names[base] = attr
                self._names[k].append(names)
        self.reset_parameters()

    # -- what subclasses provide -----------------------------------------------------------
    def param_shapes(self, layer_input_size: int) -> dict[str, tuple[int, ...]]:  # pragma: no cover
        raise NotImplementedError

    def init_params(self, p: Params, layer_input_size: int) -> None:  # pragma: no cover
        raise NotImplementedError

    def run(self, p: Params, x: Tensor, h0: Tensor | None, mask: Tensor | None, reverse: bool):
        """One layer-direction over ``x (T, B, I)``: ``(y (T, B, H), s_final (B, S))``."""
        raise NotImplementedError  # pragma: no cover

    def step_layer(self, p: Params, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """One step of one layer: ``x (B, I)``, ``s (B, S)`` -> ``(y (B, H), s_new)``."""
        raise NotImplementedError  # pragma: no cover

    @property
    def state_size(self) -> int:
        return self.hidden_size

    @property
    def state_dtype(self) -> torch.dtype:
        return self._ref.dtype

    # -- parameters --------------------------------------------------------------------------
    def _check_dtype(self, dtype: torch.dtype | None = None) -> None:
        """``dtype`` (the parameters' when ``None``: a layer converted with ``.to()``) one of
        :attr:`dtypes`, else a ``TypeError`` naming both."""
        dtype = self._ref.dtype if dtype is None else dtype
        if dtype not in self.dtypes:
            names = [str(d).removeprefix("torch.") for d in self.dtypes]
            allowed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
            msg = f"{type(self).__name__} needs {allowed} parameters, got {dtype}"
            raise _checks.RecurrentDtypeError(msg)

    def _check_real(self, t: object, what: str) -> None:
        """A complex input (or real state) is refused in words: the shared check's advice, to
        convert the module to the tensor's dtype, is what :meth:`_check_dtype` refuses."""
        if isinstance(t, Tensor) and t.is_complex():
            raise _checks.RecurrentDtypeError(
                f"{what} has dtype {t.dtype}, but {type(self).__name__} takes a real {what} "
                f"({self._ref.dtype}, as its parameters); complex numbers are not supported"
            )

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _ref(self) -> Tensor:
        return next(iter(self.parameters()))

    def layer_params(self, layer: int, direction: int = 0) -> Params:
        """The tensors of one layer-direction by base name, each checked against
        :meth:`param_shapes` and the parameters' dtype: one replaced by another shape was
        broadcast silently (a bias of one entry, the LRU's ``theta``) or failed deep in torch's
        ops, one of another dtype in a matmul's words, as :class:`rnnkit.RecurrentStack` refuses."""
        names = self._names[layer][direction]
        p = {base: getattr(self, attr) for base, attr in names.items()}
        build = lambda: [self.param_shapes(self.layer_input_size(k)) for k in range(self.num_layers)]  # noqa: E731
        shapes = _checks.kept(self, "_param_shapes", build)[layer]  # (fixed at construction)
        _checks.check_param_shapes(p, shapes, names, self._ref.dtype)
        return p

    def reset_parameters(self) -> None:
        """Each layer-direction's :meth:`init_params`, drawn into the tensor that holds each weight:
        the parameter, a parametrization's original, prune's ``<name>_orig`` (the attribute itself is
        computed from those there: a draw into it would be lost). A weight held by several tensors
        (weight norm's magnitude and direction) is drawn whole, then set through what computes it."""
        with torch.no_grad():
            for k in range(self.num_layers):
                n_in = self.layer_input_size(k)
                for d in range(self.num_directions):
                    names = self._names[k][d]
                    held = {base: weight_storage(self, attr) for base, attr in names.items()}
                    p = {}
                    for base, ts in held.items():
                        w = ts[0] if len(ts) == 1 else getattr(self, names[base])  # none: a plain tensor
                        p[base] = torch.empty_like(w) if len(ts) > 1 else w
                    self.init_params(p, n_in)  # the draws of a plain module unchanged
                    for base, ts in held.items():
                        if len(ts) > 1:
                            set_held(self, names[base], p[base])

    def flatten_parameters(self) -> None:
        """No-op, for code written for ``torch.nn`` recurrent layers."""

    # -- shared math -------------------------------------------------------------------------
    @staticmethod
    def scan(a: Tensor, b: Tensor, h0: Tensor | None, mask: Tensor | None, reverse: bool):
        """``s_t = a_t ⊙ s_{t∓1} + b_t`` over ``(T, B, S)``; padded steps (``mask`` False)
        are the identity. Returns all states and the final one (``(B, S)``)."""
        if mask is not None:
            a = torch.where(mask, a, torch.ones((), dtype=a.dtype, device=a.device))
            b = torch.where(mask, b, torch.zeros((), dtype=b.dtype, device=b.device))
        h0 = join_autocast(h0, b)
        if dispatch._plain_ops_needed():  # torch.func transforms, forward AD: no custom autograd node
            s = plain_scan(a, b, h0, reverse)
        else:
            s = linear_scan(a, b, h0, reverse=reverse)
        return s, s[0 if reverse else -1]

    # -- forward -----------------------------------------------------------------------------
    def _state_ref(self) -> Tensor:
        return self._ref.new_empty(0, dtype=self.state_dtype)

    def _initial_state(self, hx, batch: int | None) -> Tensor | None:
        if hx is None:
            return None
        if not self.state_dtype.is_complex:  # (the LRU's is: its own check)
            self._check_real(hx, "h_0")
        LD = self.num_layers * self.num_directions
        shape = (LD, self.state_size) if batch is None else (LD, batch, self.state_size)
        (h,) = _checks.check_state(hx, ("h",), [shape], self._state_ref())
        return h if batch is not None else h.unsqueeze(1)

    def _forward_state(self, hx, batch: int | None):
        """:meth:`forward`'s initial state, checked, in the form :meth:`_run_layers` takes
        (``batch`` ``None``: unbatched); a subclass whose state holds more than ``s`` (the
        QRNN's convolution past) overrides it with :meth:`_unbatch_state`."""
        return self._initial_state(hx, batch)

    def _unbatch_state(self, h_n):
        """``h_n`` of a batch of one, without its batch dimension (an unbatched input's)."""
        return h_n.squeeze(1)

    def forward(self, input, hx=None, lengths=None):
        """Whole sequence; see the module docstring for shapes. Returns ``(output, h_n)``.
        ``lengths`` (``(N,)`` ints) marks a padded batch, as :class:`rnnkit.RecurrentStack`'s:
        outputs past each length are zero, ``h_n`` is each sequence's last valid step."""
        self._check_dtype()  # a layer converted with .to(torch.complex64) after construction
        self._check_real(input.data if isinstance(input, PackedSequence) else input, "input")
        if lengths is not None:
            return forward_padded(self, input, hx, lengths)
        packed = isinstance(input, PackedSequence)
        mask = None
        if packed:
            _checks.check_input(input.data, self.input_size, True, self._ref)
            # (under vmap, lengths= packs a batched batch_sizes: check_packed cannot read it)
            with dispatch.packing("packed input and lengths= are"):
                _checks.check_packed(input)
                # (T, B, I), the caller's batch order: one gather each way where proven (torch: an op a step)
                if padded.fast_packing(input.data):
                    x, lengths, plan = padded.pad_packed(input)
                else:
                    (x, lengths), plan = pad_packed_sequence(input), None
            T = x.shape[0]
            mask = (torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(-1).to(x.device)
            unbatched = False
        else:
            # an empty batch gives empty outputs and states, as torch.nn's layers
            batched = _checks.check_tensor(input, "input").dim() == 3
            batch_dim = (0 if self.batch_first else 1) if batched else None
            _checks.check_input(input, self.input_size, False, self._ref, batch_dim)
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else input
            if self.batch_first and not unbatched:
                x = x.transpose(0, 1)
        h0 = self._forward_state(hx, None if unbatched else x.shape[1])
        out, h_n = self._run_layers(x, h0, mask)
        if packed:
            with dispatch.packing("packed input and lengths= are"):
                out = _repack(out, lengths, input, plan)
        elif unbatched:
            out, h_n = out.squeeze(1), self._unbatch_state(h_n)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, h_n

    def _run_layers(self, x: Tensor, h0: Tensor | None, mask: Tensor | None):
        D, finals = self.num_directions, []
        for k in range(self.num_layers):
            outs = []
            for d in range(D):
                s0 = None if h0 is None else h0[k * D + d]
                y, s = self.run(self.layer_params(k, d), x, s0, mask, reverse=d == 1)
                outs.append(y)
                finals.append(s)
            x = self._next_layer_input(outs, mask, k)
        return x, torch.stack(finals)

    def _next_layer_input(self, outs: list[Tensor], mask: Tensor | None, k: int) -> Tensor:
        """Layer ``k``'s directions' outputs joined: the output, or layer ``k + 1``'s input."""
        x = outs[0] if len(outs) == 1 else torch.cat(outs, -1)
        if k < self.num_layers - 1:
            if mask is not None:  # padded steps feed the next layer zeros, like fresh padding
                x = x * mask
            if self.dropout and self.training:
                x = F.dropout(x, self.dropout, True)
        return x

    def layer_input_size(self, layer: int) -> int:
        """Features of layer ``layer``'s input: ``input_size``, then ``D * hidden_size``."""
        return self.input_size if layer == 0 else self.hidden_size * self.num_directions

    # -- streaming ---------------------------------------------------------------------------
    def _check_step_input(self, input) -> tuple[Tensor, bool]:
        if self.bidirectional:
            _checks.fail("step() streams forward in time; a bidirectional layer needs the whole sequence")
        _checks.check_tensor(input, "input")
        self._check_dtype()
        self._check_real(input, "input")
        if input.dim() not in (1, 2):
            _checks.fail(f"step() expects one time step (N, H_in) or (H_in,), got shape {tuple(input.shape)}")
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        _checks.check_input(x, self.input_size, True, self._ref, batch_dim=0)  # may be empty
        return x, unbatched

    def step(self, input: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One time step: ``input (N, H_in)`` (or ``(H_in,)``), ``state`` shaped like ``h_n``
        (zeros when ``None``) -> ``(y_t (N, H), state)``. Forward direction only."""
        x, unbatched = self._check_step_input(input)
        s = self._initial_state(state, None if unbatched else x.shape[0])
        new = []
        for k in range(self.num_layers):
            sk = s[k] if s is not None else x.new_zeros(x.shape[0], self.state_size, dtype=self.state_dtype)
            x, sk = self.step_layer(self.layer_params(k), x, sk)
            new.append(sk)
            if self.dropout and self.training and k < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        out = torch.stack(new)
        return (x.squeeze(0), out.squeeze(1)) if unbatched else (x, out)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for key, default in [("num_layers", 1), ("bias", True), ("batch_first", False),
                             ("dropout", 0.0), ("bidirectional", False)]:  # fmt: skip
            if getattr(self, key) != default:
                s += f", {key}={getattr(self, key)}"
        return s


def _repack(
    out: Tensor, lengths: Tensor, like: PackedSequence, plan: padded.PackPlan | None
) -> PackedSequence:
    """Pack padded time-major ``out`` (caller's batch order) in ``like``'s layout (``plan``'s)."""
    if plan is not None:
        data = padded.gather(out, plan)
    else:
        if like.sorted_indices is not None:
            out, lengths = out.index_select(1, like.sorted_indices), lengths[like.sorted_indices.cpu()]
        data = pack_padded_sequence(out, lengths, enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


def plain_scan(a: Tensor, b: Tensor, h0: Tensor | None, reverse: bool) -> Tensor:
    """:func:`rnnkit.ops.linear_scan` over dim 0 in plain differentiable ops (the chunked
    parallel scan, ``O(log T)`` ops): what ``torch.func`` transforms and forward-mode AD can see
    through (the custom op's autograd node is opaque to them), differentiable any number of
    times. The same numbers up to rounding."""
    return _chunked_fwd(a, b, h0, reverse)


def join_autocast(h0: Tensor | None, like: Tensor) -> Tensor | None:
    """``h0`` in ``like``'s dtype when autocast made the gates half precision: the state joins
    them, as torch.nn's RNNs run state and input in autocast's dtype (a float32 state carried
    across TBPTT windows by the training kit, e.g.)."""
    if h0 is not None and h0.dtype != like.dtype and _checks.autocast_on(like.device.type):
        return h0.to(like.dtype)
    return h0


def uniform_(t: Tensor, hidden_size: int) -> None:
    """torch's recurrent-layer initialization, U(-1/sqrt(H), 1/sqrt(H))."""
    bound = hidden_size**-0.5
    t.uniform_(-bound, bound)
