"""CUDA graphs for recurrent layers: one replay instead of ~10 kernel launches per time step.

On a GPU, torch.nn's standard layers run cuDNN, but every option cuDNN lacks (recurrent
dropout, zoneout, peepholes, layer norm, ...) runs a loop of small kernels: at T = 100 a
training step launches a few thousand of them and the GPU idles between launches (10-20x
cuDNN's time, benchmarks/RESULTS.md). A CUDA graph records those launches once and replays
them as one, which removes most of that overhead (5-6x faster on an H100, same numbers).

    layer = rnnkit.cuda_graphed(rnnkit.LSTM(256, 512, zoneout=0.1).cuda())
    out, (h, c) = layer(x)          # first call per shape: warm-up and capture; then replays
    out.sum().backward()            # the backward is one replay too

The wrapper keeps one forward graph (and, when gradients are wanted, one backward graph) per
*signature*: the training flag, whether grad mode is on, each argument's shape, dtype and
``requires_grad``, the parameters' storage (so ``.half()`` or re-created parameters are
captured afresh) and CUDA autocast's state (on, and its dtype). Up to ``max_graphs``
signatures are kept, the least recently used dropped.

Why not ``torch.cuda.make_graphed_callables``: it hands out its static output and gradient
buffers, which the next replay overwrites (a parameter's ``.grad`` may *be* such a buffer,
so gradient accumulation over two backward passes doubles the second), and it cannot tell a
backward that belongs to an overwritten forward. Here outputs and gradients are copies, and a
backward whose activations were overwritten by a later replay of the same graph raises.

Random masks (dropout, zoneout) are drawn inside the graph from torch's CUDA generator, whose
replays advance its offset: every replay draws fresh masks, reproducibly under a seed.

Each capture runs ``warmup`` eager calls first; buffers they update (recurrent batch norm's
running statistics in training) are restored afterwards, so a graphed layer's statistics move
once per call, as the eager layer's (tests/test_cuda.py, run on an H100).

Runs eagerly instead (same results, no graphs): on the CPU, for packed sequences and padded
batches with ``lengths=``, under ``torch.compile``, and while another CUDA graph is being
captured.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import PackedSequence

from . import _checks


class _Graphs:
    """One captured signature: the static input/output buffers and the two graphs."""

    def __init__(self, n_args: int) -> None:
        self.n_args = n_args
        self.inputs: list[Tensor] = []  # static copies of the user's arguments
        self.outputs: list[Tensor] = []  # what the forward graph writes
        self.fwd = torch.cuda.CUDAGraph()
        self.bwd: torch.cuda.CUDAGraph | None = None
        self.differentiable: list[bool] = []  # which outputs carry a gradient
        self.grad_outputs: list[Tensor] = []  # what the backward graph reads (those outputs')
        self.grad_inputs: list[Tensor | None] = []  # what it writes (args, then parameters)
        self.replays = 0  # forward replays so far: a backward must belong to the latest

    def run(self, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Replay the forward on ``args``; the outputs are copies (the next replay overwrites
        the graph's own)."""
        for static, a in zip(self.inputs, args, strict=True):
            if static.data_ptr() != a.data_ptr():
                static.copy_(a)
        self.fwd.replay()
        self.replays += 1
        return tuple(o.clone() for o in self.outputs)


class _Replay(torch.autograd.Function):
    """Autograd node of one forward replay; its backward replays the backward graph."""

    @staticmethod
    def forward(ctx: Any, g: _Graphs, *inputs: Tensor) -> tuple[Tensor, ...]:
        outs = g.run(inputs[: g.n_args])
        ctx.graphs, ctx.replay = g, g.replays
        ctx.mark_non_differentiable(*(o for o, d in zip(outs, g.differentiable) if not d))
        return outs

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        g: _Graphs = ctx.graphs
        if ctx.replay != g.replays:
            raise RuntimeError(
                "cuda_graphed: this backward belongs to a forward whose saved activations were "
                "overwritten by a later call with the same shapes; run backward before calling "
                "the layer again, or call the layer itself for this pattern"
            )
        for buf, grad in zip(g.grad_outputs, (gr for gr, d in zip(grads, g.differentiable) if d)):
            buf.copy_(grad)
        assert g.bwd is not None
        g.bwd.replay()
        return (None, *(None if gi is None else gi.clone() for gi in g.grad_inputs))


# The layer attributes a captured graph depends on besides its inputs and parameters.
_OPTIONS = ("impl", "batch_first", "dropout", "zoneout", "weight_drop", "recurrent_dropout", "locked_dropout")


class CUDAGraphed(nn.Module):
    """Run ``layer(input, hx)`` as CUDA graph replays; see the module docstring.

    ``layer`` is any rnnkit (or torch.nn) recurrent layer whose call is
    ``layer(input, hx=None) -> (output, state)`` with tensor or tuple-of-tensor states. Shapes
    are the layer's own; the wrapper changes no number (tests/test_cuda.py compares every
    output and gradient with the eager layer).
    """

    def __init__(self, layer: nn.Module, max_graphs: int = 8, warmup: int = 3) -> None:
        super().__init__()
        # ints: warmup=1.5 was kept and failed at the first capture, in range()'s words
        if not (_checks.is_int(max_graphs) and _checks.is_int(warmup)) or max_graphs < 1 or warmup < 1:
            raise ValueError(f"max_graphs and warmup must be ints >= 1, got {max_graphs!r} and {warmup!r}")
        if not isinstance(layer, nn.Module):  # (was kept, and failed at the first call: "not callable")
            got = type(layer).__name__
            raise TypeError(f"layer must be a recurrent nn.Module (an rnnkit or torch.nn layer), got {got}")
        self.layer = layer
        self.max_graphs, self.warmup = max_graphs, warmup
        self._graphs: OrderedDict[tuple, _Graphs] = OrderedDict()
        self._state_kind: str | int = "tensor"  # the layer's state: a tensor, or a tuple of n
        # The wrapper is invisible in checkpoints: the layer's own keys, loadable either way.
        self.register_state_dict_post_hook(_drop_layer_prefix)
        self.register_load_state_dict_pre_hook(_add_layer_prefix)

    def forward(
        self, input: Tensor | PackedSequence, hx: Tensor | tuple[Tensor, ...] | None = None, **kwargs: Any
    ):
        """``layer(input, hx, **kwargs)``, replayed; keyword arguments (rnnkit's ``lengths=``
        for padded batches, ``step=`` for a sequence's later pieces) and packed input run the
        layer eagerly."""
        if (
            kwargs
            or isinstance(input, PackedSequence)
            or not isinstance(input, Tensor)  # the layer's own error, not an AttributeError here
            or not input.is_cuda
            or torch.compiler.is_compiling()
            or torch.cuda.is_current_stream_capturing()
        ):
            return self.layer(input, hx, **kwargs)
        args = (input,) if hx is None else (input, hx) if isinstance(hx, Tensor) else (input, *hx)
        n_state = -1 if hx is None else 0 if isinstance(hx, Tensor) else len(hx)
        params = [p for p in self.layer.parameters() if p.requires_grad]
        grad = torch.is_grad_enabled() and (bool(params) or any(a.requires_grad for a in args))
        key = (
            self.layer.training,
            grad,
            n_state,
            tuple((a.shape, a.dtype, a.device, a.requires_grad) for a in args),
            # requires_grad too: a graph captured before a weight was frozen (or unfrozen) returns
            # gradients for the parameters it was captured with
            tuple((p.data_ptr(), p.shape, p.dtype, p.requires_grad) for p in self.layer.parameters()),
            torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda"),
            # the options a graph bakes in: one assigned later (layer.zoneout = 0.0) takes effect at
            # the next call, as eagerly, instead of replaying the graph captured with the old value
            tuple(repr(getattr(self.layer, n, None)) for n in _OPTIONS),
        )
        g = self._graphs.get(key)
        if g is None:
            g = self._capture(args, n_state, params, grad)
            self._graphs[key] = g
            if len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        flat = _Replay.apply(g, *args, *params) if grad else g.run(args)
        return self._unflatten(flat)

    # -- capture ---------------------------------------------------------------------------
    def _call(self, args: list[Tensor], n_state: int, aliases: dict[str, Tensor]) -> list[Tensor]:
        """The layer on the static arguments, its ``(output, state)`` flattened to a list.

        ``aliases``: the trainable parameters as fresh leaves on the same storage (see
        ``_capture``); the graph reads the parameters' memory all the same."""
        hx = None if n_state < 0 else args[1] if n_state == 0 else tuple(args[1:])
        out, state = torch.func.functional_call(self.layer, aliases, (args[0], hx))
        self._state_kind = "tensor" if isinstance(state, Tensor) else len(state)
        return [out, state] if isinstance(state, Tensor) else [out, *state]

    def _unflatten(self, flat: tuple[Tensor, ...]):
        return (flat[0], flat[1]) if self._state_kind == "tensor" else (flat[0], tuple(flat[1:]))

    def _capture(self, args: tuple[Tensor, ...], n_state: int, params: list[Tensor], grad: bool) -> _Graphs:
        g = _Graphs(len(args))
        g.inputs = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
        # Gradients are taken with respect to aliases of the parameters (same storage, new leaves),
        # not the parameters: a parameter's gradient accumulator, kept alive by an earlier call's
        # output the caller still holds, belongs to the default stream, and the engine's wait on
        # it from the capture stream failed the capture ("operation would make the legacy stream
        # depend on a capturing blocking stream"): `out, h = layer(x, h)` from the second call on.
        # torch.nn's own layers keep their parameters: they re-flatten weights they have not seen
        # (cuDNN's copy, which the graph would then read instead of the parameters).
        fresh = not any(isinstance(m, nn.RNNBase) for m in self.layer.modules())
        trainable = {id(p) for p in params}
        aliases = {
            n: p.detach().requires_grad_() if fresh else p
            for n, p in self.layer.named_parameters()
            if id(p) in trainable
        }
        wrt = [a for a in g.inputs if a.requires_grad] + list(aliases.values())

        def step() -> list[Tensor]:
            outs = self._call(g.inputs, n_state, aliases)
            if grad:  # autograd.grad, not backward: no .grad is touched by warm-up or capture
                diff = [o for o in outs if o.requires_grad]
                with _no_autocast():
                    torch.autograd.grad(diff, wrt, [torch.ones_like(o) for o in diff], allow_unused=True)
            return outs

        # Under autocast, casts must not come from its cache: a weight cast by a warm-up call would
        # be read by every replay, stale after the optimizer's next step.
        amp = torch.is_autocast_enabled("cuda")
        with torch.autocast("cuda", torch.get_autocast_dtype("cuda"), enabled=amp, cache_enabled=False):
            return self._warm_up_and_capture(g, n_state, aliases, grad, wrt, step)

    def _warm_up_and_capture(self, g: _Graphs, n_state: int, aliases: dict[str, Tensor], grad: bool,
                             wrt: list[Tensor], step: Any) -> _Graphs:  # fmt: skip
        # Warm up on a side stream (lazy initializations such as cuDNN's plans and the
        # allocator's first blocks must not land in the graph), then capture.
        # The warm-up calls must not count as training calls: buffers they update (recurrent
        # batch norm's running statistics) are put back as they were.
        buffers = [b for b in self.layer.buffers() if b.is_floating_point()]
        before = [b.detach().clone() for b in buffers]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.set_grad_enabled(grad):
            for _ in range(self.warmup):
                step()
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for b, v in zip(buffers, before):
                b.copy_(v)
        with torch.set_grad_enabled(grad):
            with torch.cuda.graph(g.fwd):
                outs = self._call(g.inputs, n_state, aliases)
            if grad:
                g.differentiable = [o.requires_grad for o in outs]
                diff = [o for o in outs if o.requires_grad]
                g.grad_outputs = [torch.empty_like(o) for o in diff]
                g.bwd = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g.bwd, pool=g.fwd.pool()), _no_autocast():
                    grads = torch.autograd.grad(diff, wrt, g.grad_outputs, allow_unused=True)
                it = iter(grads)
                g.grad_inputs = [next(it) if a.requires_grad else None for a in g.inputs]
                g.grad_inputs += [next(it) for _ in aliases]
        # Keep the buffers, drop the captured autograd graph (its nodes would otherwise hold
        # the parameters' gradient accumulators, created on the capture stream).
        g.outputs = [o.detach() for o in outs]
        return g


def _no_autocast():
    """Backward as users run it, outside autocast: the engine runs a backward with the calling
    thread's autocast state, which would cast a float32 layer's gradient products to half."""
    return torch.autocast("cuda", enabled=False)


def _drop_layer_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    inner = prefix + "layer."
    for k in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + k[len(inner) :]] = state_dict.pop(k)


def _add_layer_prefix(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """The layer's own keys (a checkpoint of the wrapper or of the bare layer) get ``layer.``;
    the others are left as they are (one with the prefix already: the wrapper's raw form). Not
    every key without ``layer.``: a layer whose own keys begin with ``layer.`` (a module holding
    a submodule ``layer``, another wrapper) had its saved keys taken for the raw form."""
    own = module.layer.state_dict(keep_vars=True).keys()
    inner = prefix + "layer."
    for k in [k for k in state_dict if k.startswith(prefix) and k[len(prefix) :] in own]:
        state_dict[inner + k[len(prefix) :]] = state_dict.pop(k)


def cuda_graphed(layer: nn.Module, max_graphs: int = 8, warmup: int = 3) -> CUDAGraphed:
    """Wrap a recurrent layer so that its CUDA calls replay captured graphs.

    >>> layer = rnnkit.cuda_graphed(rnnkit.LSTM(128, 256, recurrent_dropout=0.25).cuda())

    ``max_graphs``: how many signatures (shapes, dtypes, modes) keep their graphs;
    ``warmup``: eager calls on a side stream before each capture.
    """
    return CUDAGraphed(layer, max_graphs=max_graphs, warmup=warmup)
