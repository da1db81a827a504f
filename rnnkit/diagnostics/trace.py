"""Step-by-step replay of a recurrent layer, exposing every state ``h_t`` (and ``c_t``).

The fused layers (torch's kernels, and rnnkit's fused paths) return only the output
sequence and the final state; diagnostics need each layer's state at *every* step and
the tensors themselves, so that ``∂L/∂h_t`` can be read off with ``retain_grad``. This
module therefore re-runs a layer in Python, one ``cell.step`` at a time, with the layer's
own cells and parameter tensors (so gradients reach the real parameters). It is the same
math as :func:`rnnkit.loop.run_direction` for dense (non-packed) input, which the tests
check against the layer's own forward.

Works for :class:`rnnkit.RecurrentStack` (``RNN``/``LSTM``/``GRU`` and every cell of the
zoo), for ``torch.nn.RNN``/``LSTM``/``GRU`` (whose parameters are wrapped in rnnkit's
standard cells: same names, same gate order) and for the time-parallel layers
``MinGRU``/``MinLSTM``/``QRNN``/``LRU`` (their own ``step_layer``, see
:mod:`rnnkit.diagnostics.parallel`). Zoneout is replayed (its expectation in evaluation,
fresh masks in training). Not replayed: ``PackedSequence`` input and the other
layer-level regularizers in training mode (weight drop, recurrent and locked dropout
masks) — the replay runs the plain cell math there, and says so with a ``UserWarning``
(once per call site; ``model.eval()`` measures the model as it runs in evaluation).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .. import _checks, regularizers
from ..cells import Cell, GRUCellMath, LSTMCellMath, RNNCellMath, StepContext
from ..layers import RecurrentStack
from ..loop import _zoneout
from ..parallel import ParallelRecurrent

State = tuple[Tensor, ...]


@dataclass
class LayerView:
    """One layer of a stack: its cell and the parameter dict of each direction."""

    cell: Cell
    params: list[dict[str, Tensor]]


def is_recurrent(module: nn.Module) -> bool:
    """True for the layers the diagnostics can replay."""
    return isinstance(module, (RecurrentStack, nn.RNNBase, ParallelRecurrent))


def find_recurrent(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every replayable recurrent layer in ``model`` (not nested)."""
    found: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, m: nn.Module) -> None:
        if is_recurrent(m):
            found.append((prefix, m))
            return
        for name, child in m.named_children():
            walk(f"{prefix}.{name}" if prefix else name, child)

    walk("", model)
    return found


def layer_views(module: nn.Module) -> list[LayerView]:
    """The cell and parameters of every layer of an rnnkit stack or a ``torch.nn`` RNN."""
    if isinstance(module, RecurrentStack):
        D = module.num_directions
        return [
            LayerView(c, [module.layer_params(k, d) for d in range(D)]) for k, c in enumerate(module.cells)
        ]
    if isinstance(module, ParallelRecurrent):
        raise ValueError(
            f"{type(module).__name__} is a diagonal linear recurrence, not a stack of cells: the diagnostics "
            "replay it with rnnkit.diagnostics.parallel.replay_parallel"
        )
    if isinstance(module, nn.RNNBase):
        D = 2 if module.bidirectional else 1
        H, P = module.hidden_size, getattr(module, "proj_size", 0)
        views = []
        for k in range(module.num_layers):
            n_in = module.input_size if k == 0 else (P or H) * D
            if module.mode == "LSTM":
                cell: Cell = LSTMCellMath(n_in, H, module.bias, P)
            elif module.mode == "GRU":
                cell = GRUCellMath(n_in, H, module.bias)
            elif module.mode in ("RNN_TANH", "RNN_RELU"):
                cell = RNNCellMath(n_in, H, module.bias, module.mode[4:].lower())
            else:
                raise ValueError(f"unsupported torch.nn recurrent mode {module.mode!r}")
            params = []
            for d in range(D):
                sfx = f"_l{k}" + ("_reverse" if d else "")
                params.append({s.name: getattr(module, s.name + sfx) for s in cell.param_specs()})
            views.append(LayerView(cell, params))
        return views
    raise ValueError(
        "expected an rnnkit recurrent layer (RNN/LSTM/GRU/RecurrentStack, MinGRU/MinLSTM/QRNN/LRU) or "
        "torch.nn.RNN/LSTM/GRU, "
        f"got {type(module).__name__}"
    )


def check_real(views: list[LayerView], what: str) -> None:
    """A ``ValueError`` for a complex classic layer (torch.nn's run complex64/128): ``what`` reads
    real states or real step Jacobians (its numbers were cast to real, or autograd failed)."""
    if any(v is not None and v.is_complex() for p in views[0].params for v in p.values()):
        raise ValueError(
            f"{what} needs a real layer, got complex parameters; gradient_flow with a loss_fn that "
            "returns a real scalar and recurrent_eigenvalues take complex layers"
        )


def check_sample(sample: int, B: int) -> None:
    """A ``ValueError`` unless ``sample`` is an integer index of one of the ``B`` sequences (a
    bool was one: True measured sequence 1)."""
    if not (_checks.is_int(sample) and 0 <= sample < B):
        raise ValueError(f"sample must be an integer in [0, {B}), got {sample!r}")


def check_layer_direction(
    module: nn.Module, layer: int, direction: int, layers: int, directions: int
) -> None:
    """A ``ValueError`` unless ``layer`` and ``direction`` are integer indices of one of the
    ``layers`` x ``directions`` layer-directions of ``module`` (a bool was one)."""
    if not (_checks.is_int(layer) and 0 <= layer < layers and _checks.is_int(direction)
            and 0 <= direction < directions):  # fmt: skip
        raise ValueError(f"no layer {layer!r} direction {direction!r} in {type(module).__name__}")


def zoneout_probs(module: nn.Module, layer: int) -> tuple[float, ...]:
    """Per-state zoneout probabilities of one layer (``()`` without zoneout, as torch.nn's)."""
    zp = module.zoneout_probs[layer] if isinstance(module, RecurrentStack) else ()
    return zp if any(zp) else ()


def num_directions(module: nn.Module) -> int:
    return 2 if module.bidirectional else 1


def layer_labels(module: nn.Module, prefix: str = "") -> list[tuple[int, int, str]]:
    """``(layer, direction, label)`` with labels ``l0``, ``l0_reverse``... (torch's suffixes)."""
    pre = f"{prefix}." if prefix else ""
    D = num_directions(module)
    return [
        (k, d, f"{pre}l{k}" + ("_reverse" if d else "")) for k in range(module.num_layers) for d in range(D)
    ]


@dataclass
class Trace:
    """States of every step: ``states[k][d][t]`` is the state tuple after step ``t``
    (each ``(B, S_i)``) of layer ``k``, direction ``d``; ``inputs[k]`` is layer ``k``'s
    input ``(T, B, I_k)``; ``initial[k][d]`` the state before the first step;
    ``outputs[k][d]`` the output ``(T, B, H)`` of a parallel layer's direction (empty for
    the classic cells, whose output is ``h``)."""

    states: list[list[list[State]]]
    inputs: list[Tensor]
    initial: list[list[State]]
    state_names: tuple[str, ...]
    outputs: list[list[Tensor]] = field(default_factory=list)


def _as_time_major(module: nn.Module, x: Tensor) -> tuple[Tensor, bool]:
    if isinstance(x, PackedSequence):
        raise ValueError("diagnostics replay dense (padded) input only, got a PackedSequence")
    if not isinstance(x, Tensor) or x.dim() not in (2, 3):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"expected input of shape (T, B, I), (B, T, I) with batch_first, or (T, I); got {shape}"
        )
    if x.shape[-1] != module.input_size:
        raise ValueError(
            f"input has {x.shape[-1]} features but the layer expects input_size={module.input_size}"
        )
    ref = next(module.parameters(), None)
    if ref is not None:  # as the layer's forward (it was a bare matmul dtype error in the first step)
        _checks.check_like(x, ref, "input")
    unbatched = x.dim() == 2
    data = x.unsqueeze(1) if unbatched else (x.transpose(0, 1) if module.batch_first else x)
    if data.shape[0] == 0 or data.shape[1] == 0:  # nothing to measure (it was an obscure reshape error)
        raise ValueError(
            f"diagnostics need at least one time step and one sequence, got input of shape {tuple(x.shape)}"
            + (" (batch_first: (B, T, I))" if module.batch_first and not unbatched else "")
        )
    return data, unbatched


def _initial(module: nn.Module, views: list[LayerView], hx, B: int, ref: Tensor, unbatched: bool):
    names = views[-1].cell.state_names
    sizes = views[-1].cell.state_sizes()
    LD = module.num_layers * num_directions(module)
    if hx is None:
        return tuple(ref.new_zeros(LD, B, s) for s in sizes)
    states = (hx,) if isinstance(hx, Tensor) else tuple(hx)
    if len(states) != len(names):
        raise ValueError(f"expected an initial state of {len(names)} tensor(s) {names}, got {len(states)}")
    for s, name, size in zip(states, names, sizes):
        # checked as given (an unbatched input's state has no batch dimension), as the layer does
        shape = (LD, size) if unbatched else (LD, B, size)
        if tuple(s.shape) != shape:
            raise ValueError(f"expected {name}_0 of shape {shape}, got {tuple(s.shape)}")
        _checks.check_like(s, ref, f"{name}_0")
    return tuple(s.unsqueeze(1) for s in states) if unbatched else states


_UNREPLAYED = ("weight_drop", "recurrent_dropout", "locked_dropout")


def _zoneout_masks(module: nn.Module, layer: int, state: tuple[Tensor, ...], like: Tensor) -> list | None:
    """Fresh ``(T, B, S)`` zoneout keep-masks of one layer-direction in training mode (one per
    state component, None where its probability is 0); None in evaluation or without zoneout."""
    zp = zoneout_probs(module, layer)
    if not (zp and module.training):
        return None
    T, B = like.shape[0], like.shape[1]
    return [regularizers.sample_mask("zoneout", (T, B, s.shape[-1]), q, like) if q else None
            for s, q in zip(state, zp)]  # fmt: skip


def _warn_unreplayed(module: nn.Module) -> None:
    """A ``UserWarning`` (the default filter shows it once per call site) when ``module`` is in
    training mode with regularizers the replay does not run: it then measures a model without them."""
    if not (isinstance(module, RecurrentStack) and module.training):
        return
    names = [n for n in _UNREPLAYED if getattr(module, n, 0)]
    if names:
        warnings.warn(
            f"rnnkit.diagnostics: {type(module).__name__} is in training mode with {', '.join(names)}, which "
            "the step-by-step replay does not run: the measurement is of the model without them; call "
            "model.eval() to measure the model as it runs in evaluation",
            UserWarning,
            stacklevel=3,
        )


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Leaves ``model``'s buffers and the random number generators as they were: in training mode a
    replay (or the model's own forward) updates batch norm's running statistics and draws dropout
    and zoneout masks, and a measurement must change neither the model nor a training run's random
    stream (torch's CPU generator and those of the CUDA devices ``model`` is on). A buffer the
    forward replaced (``self.n = self.n + 1``) gets its own tensor back."""
    if not isinstance(model, nn.Module):  # (else "'int' object has no attribute 'parameters'")
        got = type(model).__name__
        raise TypeError(f"expected a torch.nn.Module (a recurrent layer or a model holding one), got {got}")
    tensors = [*model.parameters(), *model.buffers()]
    devices = sorted({t.get_device() for t in tensors if t.is_cuda})
    saved = [(m, name, b, b.detach().clone()) for m in model.modules() for name, b in m._buffers.items()
             if b is not None]  # fmt: skip
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for m, name, b, v in saved:
                if m._buffers.get(name) is not b:  # replaced, not updated in place: the old one is the value
                    m._buffers[name] = b
                if not torch.equal(b, v):  # only what moved: an unchanged buffer keeps its autograd version
                    b.copy_(v)


def replay(
    module: nn.Module, x: Tensor, hx: Any = None, *, retain_grad: bool = False, track: bool = False
) -> tuple[Tensor, Any, Trace]:
    """Run ``module`` on dense input ``x`` one step at a time.

    Returns ``(output, h_n, trace)`` where ``output, h_n`` are exactly what
    ``module(x, hx)`` returns (same layout; ``h_n`` a tuple ``(h_n, c_n)`` for LSTM) and
    ``trace`` a :class:`Trace`. With ``retain_grad`` every state tensor keeps its ``.grad``
    after ``backward()``. ``track`` makes an initial state that does not require grad a
    leaf that does, so that every state is in the autograd graph even with frozen
    parameters (the values are unchanged). Under autocast the replay runs in the parameters'
    dtype with autocast off, as the layers run the options torch has no kernel for (torch's
    kernels' own autocast rules, LSTM and RNN in bfloat16 on the CPU, are not replayed). The
    module's buffers (batch norm's running statistics in training mode) and the random state are
    left as they were: training-mode masks are drawn without advancing torch's generators.
    """
    with untouched(module):
        return _replay(module, x, hx, retain_grad=retain_grad, track=track)


def _replay(module: nn.Module, x: Tensor, hx, *, retain_grad: bool, track: bool):
    if isinstance(module, ParallelRecurrent):  # MinGRU, MinLSTM, QRNN, LRU: their own step math
        from .parallel import replay_parallel

        return replay_parallel(module, x, hx, retain_grad=retain_grad, track=track)
    views = layer_views(module)
    _warn_unreplayed(module)
    data, unbatched = _as_time_major(module, x)
    if _checks.autocast_on(data.device.type):
        # autocast has no rule for a cell's step (mixed dtypes crash torch.lerp): the replay runs
        # in the parameters' dtype with autocast off, as the layers run the options torch lacks
        dtype = views[0].params[0]["weight_ih"].dtype
        with torch.autocast(data.device.type, enabled=False):
            hx = None if hx is None else tuple(s.to(dtype) for s in ((hx,) if isinstance(hx, Tensor) else hx))
            return replay(module, x.to(dtype), hx, retain_grad=retain_grad, track=track)
    T, B = data.shape[0], data.shape[1]
    h0 = _initial(module, views, hx, B, data, unbatched)
    if track or retain_grad:
        if not torch.is_grad_enabled():
            raise ValueError("tracking gradients through the replay needs autograd (not torch.no_grad())")
        h0 = tuple(s if s.requires_grad else s.detach().requires_grad_() for s in h0)
    D = num_directions(module)
    # every layer's and direction's zoneout keep-masks (1 = keep s_{t-1}) first, in the order the
    # layer draws them (regularizers.sample_plan, before any inter-layer dropout): one seed, the
    # layer's numbers, with dropout too
    masks = [[_zoneout_masks(module, k, tuple(s[k * D + d] for s in h0), data) for d in range(D)]
             for k in range(len(views))]  # fmt: skip
    finals: list[list[Tensor]] = [[] for _ in h0]
    trace = Trace([], [], [], views[-1].cell.state_names)
    for k, view in enumerate(views):
        trace.inputs.append(data)
        outs, per_dir, init_dir = [], [], []
        for d in range(D):
            p = view.params[d]
            xp = view.cell.project_input(p, data.reshape(T * B, -1)).view(T, B, -1)
            state = tuple(s[k * D + d] for s in h0)
            init_dir.append(state)
            steps: list[State] = [()] * T
            ctx = StepContext(training=module.training)  # afresh per layer-direction, as the layer's loop
            zp = zoneout_probs(module, k)
            for t in range(T - 1, -1, -1) if d else range(T):
                ctx.t = t
                new = view.cell.step(p, xp[t], state, ctx)
                state = _zoneout(state, new, t, zp, masks[k][d]) if zp else new
                if retain_grad:
                    for s in state:
                        if s.requires_grad:
                            s.retain_grad()
                steps[t] = state
            for i, s in enumerate(state):
                finals[i].append(s)
            per_dir.append(steps)
            outs.append(torch.stack([s[0] for s in steps]))
        trace.states.append(per_dir)
        trace.initial.append(init_dir)
        data = outs[0] if D == 1 else torch.cat(outs, 2)
        if module.dropout and module.training and k < len(views) - 1:
            data = F.dropout(data, module.dropout, True)
    final = tuple(torch.stack(f) for f in finals)
    out = data
    if unbatched:
        out, final = out.squeeze(1), tuple(s.squeeze(1) for s in final)
    elif module.batch_first:
        out = out.transpose(0, 1)
    return out, (final if len(final) > 1 else final[0]), trace
