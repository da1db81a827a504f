"""The single dispatch point: which implementation runs a layer call.

* ``"torch"`` — torch's own fused kernels (``_VF.lstm`` & co., cuDNN on GPUs), used whenever
  the configuration is exactly a ``torch.nn`` one: same numbers, same speed as ``torch.nn``.
* ``"fused"`` — rnnkit's fused kernels (:mod:`rnnkit.kernels`): per layer-direction, one
  op for the whole time loop with explicit BPTT (compiled C++ on the CPU, pure PyTorch as
  fallback); packed input runs without padding.
* ``"loop"`` — the reference loop of :mod:`rnnkit.loop`, correct for every cell and option.

Regularizers (:mod:`rnnkit.regularizers`) reach every path through the call's ``plan``:
weight-dropped ``W_hh`` go into the weights a path receives (so weight-drop alone still runs
on torch's kernels), locked dropout between layers runs torch's kernel layer by layer,
recurrent dropout and zoneout run on the fused path (their masks are inputs of the fused
kernels) or the loop.

``impl="auto"`` (every layer's default) picks torch's kernels for standard configurations
(except on the CPU in float32, where GRU/RNN and packed LSTMs run faster on the fused path: see
:func:`fused_by_default`), the fused path for the other configurations it covers (recurrent
dropout, zoneout, peepholes, the Greff ablations, the GRU variants, layer and batch norm) on the
CPU when the compiled kernels are available and for batch norm on CUDA, else the loop. Under
``torch.compile`` it picks the fused path wherever it applies: its custom ops keep the graph
whole; under ``torch.onnx.export`` torch's kernels for standard configurations, else the loop
(ONNX has no translation of the custom ops), and under ``torch.jit.trace`` or ``torch.autocast``
torch's kernels for standard ones (the layer runs the other paths in its parameters' dtype,
autocast off). Complex data never takes the fused path (its BPTT is real): torch's kernels for
standard configurations, else the loop. A layer built with ``impl="loop"`` (or ``"torch"``)
forces one, which is how tests compare the paths; a forced ``impl="fused"`` is traced and
exported as ``"auto"`` is (the fused ops never are).

The linear scan of the parallel-in-time layers (:func:`rnnkit.ops.linear_scan`) asks
:func:`select_scan` here too: the compiled CPU kernel, its pure-PyTorch loop, the Triton
kernel on CUDA, or the chunked parallel scan (complex tensors, other devices).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence

import torch
from torch import _VF, Tensor
from torch.autograd import forward_ad

from . import _checks, kernels
from .cells.base import State, StepContext
from .cells.norm import shift_slots
from .loop import run_direction as loop_direction
from .regularizers import CallPlan, apply_sequence_mask

IMPLS = ("auto", "torch", "fused", "loop")
_TORCH_FNS = {"LSTM": _VF.lstm, "GRU": _VF.gru, "RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu}


def check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


class ImplOption:
    """A layer stack's ``impl`` (a data descriptor), checked on every assignment, at construction
    or later (``layer.impl = "loop"``): a plain attribute took any value, and every one but
    ``"torch"`` and ``"fused"`` (``"Fused"``, ``"fast"``) then ran the reference loop silently. On a
    built layer the new value must also be possible for it (:func:`check_impl_possible`); a refused
    value leaves the old one."""

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        try:
            return obj.__dict__["impl"]
        except KeyError:  # (an AttributeError, as for any attribute)
            raise AttributeError(f"{type(obj).__name__!r} object has no attribute 'impl'") from None

    def __set__(self, obj, value: str) -> None:
        check_impl(value)
        old = obj.__dict__.get("impl")
        obj.__dict__["impl"] = value
        if "_names" in obj.__dict__:  # built (not in __init__, which checks once its cells exist)
            try:
                check_impl_possible(obj)
            except ValueError:
                obj.__dict__["impl"] = old
                raise


def torch_mode(module, *, in_eval: bool = False) -> str | None:
    """torch's mode name when ``module`` computes exactly a ``torch.nn`` layer, else None;
    ``in_eval``: in evaluation, whatever the module's mode (recurrent dropout then counts, as
    torch's kernels compute it exactly there; zoneout never does)."""
    modes = {cell.torch_mode() for cell in module.cells}
    custom = any(any(z) for z in module.zoneout_probs) if in_eval else module.needs_custom_loop()
    if len(modes) != 1 or custom:
        return None
    return modes.pop()


def check_impl_possible(module, dtype: torch.dtype | None = None, in_eval: bool = True) -> None:
    """At construction: ``impl="torch"`` or ``"fused"`` for a configuration that can never run
    there is a ``ValueError`` now, not at the first forward (or, for zoneout in evaluation, a
    forward well into a run). Recurrent dropout with ``impl="torch"`` is refused only in training
    (in evaluation torch's kernels compute it exactly): :func:`select` checks each call, with the
    module's mode (``in_eval=False``) and the input's ``dtype`` (the parameters' when ``None``)."""
    if module.impl == "torch" and torch_mode(module, in_eval=in_eval) is None:
        _checks.fail(f"impl='torch' needs a configuration torch.nn supports; this one is {module!r}")
    if module.impl == "fused" and not fused_supported(module):
        _checks.fail(f"impl='fused' has no fused kernel for this configuration yet: {module!r}")
    check_fused_dtype(module, module._ref.dtype if dtype is None else dtype)


def check_fused_dtype(module, dtype: torch.dtype) -> None:
    """A forced ``impl="fused"`` on complex parameters (or input) is a ``TypeError``: the fused
    kernels' BPTT is real (no conjugates), so their gradients were wrong, silently; torch's
    kernels and the loop take complex numbers as torch.nn does."""
    if module.impl == "fused" and dtype.is_complex:
        raise _checks.RecurrentDtypeError(
            f"impl='fused' has no kernel for complex dtypes (its backward is real-valued), got {dtype}; "
            "build the layer with impl='auto', 'torch' or 'loop'"
        )


def fused_supported(module) -> bool:
    """Whether every layer of ``module`` (cells and regularizers) has a fused kernel."""
    return all(kernels.supports(cell) for cell in module.cells)


# Families whose fused kernels run faster than torch's own CPU kernels, forward and training
# (benchmarks/layers.py, docs/fused.md): torch's GRU/RNN run a generic per-step loop (and
# per-op autograd backward); its LSTM runs oneDNN's fused LSTM, which the fused path matches
# at medium size and trails at small size. Measured (2 threads, float32, no grad,
# benchmarks/inference.py): GRU forward 0.38-0.55x torch's time, RNN 0.27-0.44x.
FUSED_MODES = frozenset({"GRU", "RNN_TANH", "RNN_RELU"})


# The standard LSTM runs on torch's kernels (oneDNN's fused LSTM), except on packed input:
# torch's packed CPU LSTM trains 5-8x slower than its padded one, the fused path 1.07x
# (benchmarks/packed_memory.py), and its forward too (the fused path takes 0.23-0.40x its time:
# benchmarks/inference.py). Padded, the fused path measured 0.72-0.97x torch's time only
# while torch faulted its ~33 MiB workspace in every step (glibc mmaps blocks above 32 MiB);
# with rnnkit.train.tune_malloc() nobody faults and torch is faster at every shape measured,
# the fused path 1.07-1.23x its time (benchmarks/lstm_dispatch.py --tune-malloc).


def fused_by_default(module, x: Tensor, mode: str | None, packed: bool = False) -> bool:
    """``impl="auto"``: take the fused path for a CPU float32 call (forward or training) of a
    family listed in :data:`FUSED_MODES`, or of an LSTM on packed input, when the compiled
    kernels are available."""
    return (
        (mode in FUSED_MODES or (mode == "LSTM" and packed))
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and fused_supported(module)
        and kernels.backend(x) == "ext"
    )


def _plain_ops_needed() -> bool:
    """Inside a ``torch.func`` transform (``grad``, ``jacrev``, ``vmap``, ...) or a forward-mode
    AD level (``torch.autograd.forward_ad.dual_level``). The fused kernels' autograd nodes run
    C++ kernels that functorch cannot see through and have no forward-mode derivative; the
    reference loop is plain ops (torch.nn's GRU supports ``jacrev`` and forward AD, not ``vmap``:
    its ops have no batching rule)."""
    return in_transform() or getattr(forward_ad, "_current_level", -1) >= 0


def in_transform() -> bool:
    """Inside a ``torch.func`` transform (``grad``, ``jacrev``, ``vmap``, ...), forward-mode AD
    alone not included."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return active is not None and bool(active())


@contextlib.contextmanager
def packing(what: str):
    """Around torch's ``pack_padded_sequence`` / ``pad_packed_sequence``, which the feature
    ``what`` names (with its verb: ``"lengths= is"``) runs through: inside ``torch.func`` transforms and
    forward-mode AD they fail in torch's words ("Cannot access data pointer of Tensor that
    doesn't have storage", "_pack_padded_sequence that does not support it"), naming neither;
    that failure is this error. Outside them, or where torch's functions run, nothing changes."""
    try:
        yield
    except RuntimeError as e:  # (NotImplementedError is one)
        if isinstance(e, _checks.RecurrentInputError) or not _plain_ops_needed():
            raise
        raise _checks.RecurrentInputError(
            f"{what} not supported inside torch.func transforms (grad, vmap, jvp, jacrev, ...) or "
            "forward-mode AD: torch's pack_padded_sequence / pad_packed_sequence, which it runs "
            "through, do not support them; differentiate with torch.autograd outside the transform, "
            "or pass the padded batch without lengths= (a one-direction layer's outputs up to each "
            "length are the same; its final states and a reverse direction's outputs are not)"
        ) from e


def _exporting() -> bool:
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()  # either ONNX exporter


def _export_impl(module) -> str:
    """The path under ``torch.onnx.export`` or ``torch.jit.trace``. torch's RNN ops become ONNX's
    LSTM/GRU/RNN (any length) and a traced TorchScript model that loads without rnnkit; the fused
    custom ops have no ONNX translation, so other configurations export the reference loop (plain
    ops, unrolled over time), as do LSTMs with projections (ONNX's LSTM has none: torch's exporter
    refuses them). A trace does the same: the fused ops would record this call's batch sizes as
    constants, wrong at any other length or batch (and the trace's check fails)."""
    if torch_mode(module) and not (torch.onnx.is_in_onnx_export() and module.proj_size):
        return "torch"
    return "loop"


def select(module, x: Tensor, packed: bool = False) -> str:
    """Choose the implementation of one forward call of a ``RecurrentStack`` (``x``: the
    input, or a packed input's data)."""
    if module.impl == "auto":
        if _exporting():
            return _export_impl(module)
        mode = torch_mode(module)
        if torch.compiler.is_compiling() and fused_supported(module) and not x.is_complex():
            return "fused"  # one custom op per direction: no graph break (torch's RNNs break)
        if _plain_ops_needed():  # torch.func transforms, forward-mode AD: no custom autograd node
            return "loop"
        if x.is_complex():  # the fused kernels' backward is real-valued (check_fused_dtype)
            return "torch" if mode else "loop"
        if mode and _checks.autocast_on(x.device.type):
            return "torch"  # autocast's own rules for torch's RNN ops, exactly as torch.nn
        if fused_by_default(module, x, mode, packed):
            return "fused"
        if mode:
            return "torch"
        # A standard cell that needs a custom loop (recurrent dropout, zoneout): the compiled fused
        # kernels beat the Python loop; the pure ones only at larger sizes, so not them.
        if fused_supported(module) and x.device.type == "cpu" and kernels.backend(x) == "ext":
            return "fused"
        # On CUDA the loop and the pure fused kernels are both launch-bound and about level, except
        # batch norm, whose loop takes the batch statistics op by op: the fused kernels train
        # 2.0-2.3x faster (H100, medium/large, two runs: 71-93 ms against 151-185; RESULTS.md,
        # "On a GPU, ninth session").
        batch_norm = any(getattr(cell, "norm", None) == "batch" for cell in module.cells)
        if x.is_cuda and batch_norm and fused_supported(module):
            return "fused"
        return "loop"
    check_impl_possible(module, x.dtype, in_eval=False)
    if module.impl == "fused" and _exporting():
        return _export_impl(module)  # never the fused ops, as for impl="auto"
    if module.impl == "fused" and _plain_ops_needed() and not torch.compiler.is_compiling():
        _checks.fail(
            "impl='fused' cannot run inside torch.func transforms or forward-mode AD (its autograd "
            "nodes are opaque to them); build the layer with impl='auto' or impl='loop'"
        )
    return module.impl


def run_torch(
    module,
    x: Tensor,
    batch_sizes: Tensor | None,
    state: State,
    batch_first: bool,
    plan: CallPlan | None = None,
):
    """Whole stack on torch's kernel; returns ``(output, final_state_tuple)``.

    With a ``plan``, its (weight-dropped) tensors replace the parameters; with locked dropout
    the stack runs one layer per kernel call and the locked mask is applied in between."""
    mode = torch_mode(module)
    fn = _TORCH_FNS[mode]  # type: ignore[index]
    L, D = module.num_layers, module.num_directions
    if plan is None:
        weights = module.flat_weights()
    else:
        weights = [w for per_layer in plan.params for p in per_layer for w in p.values()]
    if x.device.type == "cpu":  # (torch's GRU and RNN fail too, in their words: this names the weight)
        _check_weight_shapes(module, weights)
    locked = plan is not None and any(m is not None for m in plan.locked)
    if not locked:
        with _compaction_expected(plan is not None and x.is_cuda):
            return _torch_call(fn, mode, module, x, batch_sizes, state, batch_first, weights, L)
    per_layer = len(weights) // L
    finals: list[list[Tensor]] = [[] for _ in state]
    for k in range(L):
        st = tuple(s[k * D : (k + 1) * D] for s in state)
        w = weights[k * per_layer : (k + 1) * per_layer]
        with _compaction_expected(x.is_cuda):
            x, fin = _torch_call(fn, mode, module, x, batch_sizes, st, batch_first, w, 1)
        for i, f in enumerate(fin):
            finals[i].append(f)
        if k < L - 1:
            if module.dropout and module.training:
                x = torch.nn.functional.dropout(x, module.dropout, True)
            if plan.locked[k] is not None:
                x = apply_sequence_mask(x, plan.locked[k], batch_sizes, batch_first)
    return x, tuple(torch.cat(f) for f in finals)


def _check_weight_shapes(module, weights: list[Tensor]) -> None:
    """Each of torch's ``_flat_weights`` shaped as the layer's sizes say. torch's CPU LSTM kernel
    (oneDNN) reads them by those sizes without checking: a weight replaced by one of another
    shape (``m.weight_hh_l0 = nn.Parameter(...)``) was read out of its bounds, silently. The
    sizes are the layer's (:func:`spec_shapes`, in torch's order: kept). Each of the parameters'
    dtype too, as on the other paths (torch fails as torch.nn does, in a matmul's words), except
    under autocast, which casts them for torch's kernels as for torch.nn's."""

    def build() -> dict[str, tuple[int, ...]]:  # by name, in torch's order
        D = module.num_directions
        flat = [shape for layer in spec_shapes(module) for _ in range(D) for shape in layer.values()]
        return dict(zip(module._flat_weights_names, flat, strict=True))

    # (another key than the list an earlier release kept in pickled modules: "_torch_weight_shapes")
    shapes = _checks.kept(module, "_flat_weight_shapes", build)
    dtype = None if _checks.autocast_on("cpu") else weights[0].dtype  # weight_ih_l0's, as the input's check
    _checks.check_param_shapes(dict(zip(shapes, weights, strict=True)), shapes, dtype=dtype)


def spec_shapes(module) -> list[dict[str, tuple[int, ...]]]:
    """Per layer of ``module`` (a ``RecurrentStack``), each spec's shape by base name (fixed at
    construction: :func:`rnnkit._checks.kept`)."""
    build = lambda: [{s.name: s.shape for s in c.param_specs()} for c in module.cells]  # noqa: E731
    return _checks.kept(module, "_spec_shapes", build)


@contextlib.contextmanager
def _compaction_expected(active: bool):
    """cuDNN warns when a call's weights are not one flat buffer in its layout and copies them
    into one. With weight-drop (fresh weights every call) or one layer of a flattened stack
    per call (locked dropout) that copy is the expected cost, not a user error: silence it."""
    if not active:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not part of single contiguous chunk of memory")
        yield


def _torch_call(fn, mode, module, x, batch_sizes, state, batch_first, weights, num_layers):
    hx = state if mode == "LSTM" else state[0]
    args = (weights, module.bias, num_layers, module.dropout, module.training, module.bidirectional)
    if batch_sizes is None:
        res = fn(x, hx, *args, batch_first)
    else:
        res = fn(x, batch_sizes, hx, *args)
    return res[0], tuple(res[1:])


def run_direction(
    module,
    impl: str,
    layer: int,
    direction: int,
    data: Tensor,
    batch_sizes: Sequence[int],
    h0: State,
    plan: CallPlan | None = None,
    step: int = 0,
) -> tuple[Tensor, State]:
    """One layer-direction over packed time-major ``data`` ``(sum(batch_sizes), I)`` whose first
    step is the sequences' time step ``step``."""
    cell = module.cells[layer]
    if plan is None:
        p, rec, zmasks = module.layer_params(layer, direction), None, None
    else:
        p = plan.params[layer][direction]
        rec, zmasks = plan.recurrent[layer][direction], plan.zoneout[layer][direction]
    if step:  # every path then reads (and updates) the statistics of slots step, step + 1, ...
        p = shift_slots(p, step)
    if impl == "fused":
        zoneout = module.zoneout_probs[layer]
        return kernels.run_layer_direction(
            cell, p, data, batch_sizes, h0, direction == 1, rec, zoneout=zoneout, zoneout_masks=zmasks,
            training=module.training,
        )  # fmt: skip
    xp = cell.project_input(p, data)
    ctx = StepContext(training=module.training, recurrent_mask=rec)
    zoneout = module.zoneout_probs[layer]
    return loop_direction(
        cell, p, xp, batch_sizes, h0, reverse=direction == 1, ctx=ctx, zoneout=zoneout, zoneout_masks=zmasks
    )


def select_scan(x: Tensor) -> str:
    """Implementation of :func:`rnnkit.ops.linear_scan` for tensors like ``x``: ``"ext"``
    (compiled CPU kernel), ``"loop"`` (pure PyTorch, same numbers), ``"triton"`` (CUDA kernel)
    or ``"chunked"`` (parallel scan in PyTorch); ``RNNKIT_SCAN_IMPL`` / ``RNNKIT_NO_EXT``
    override."""
    from .ops.scan import backend

    return backend(x)
