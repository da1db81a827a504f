"""Input validation shared by every layer: clear errors naming expected and received values.

:class:`RecurrentInputError` subclasses both ``ValueError`` (what rnnkit promises) and
``RuntimeError`` (what ``torch.nn`` raises for the same mistakes), so code written for either
keeps working.
"""

from __future__ import annotations

import numbers
import operator
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

T = TypeVar("T")


class RecurrentInputError(ValueError, RuntimeError):
    """Bad input or state given to an rnnkit layer or cell."""


class RecurrentDtypeError(RecurrentInputError, TypeError):
    """A dtype a layer's equations are not defined for (a complex one where they are real): a
    ``TypeError``, and a :class:`RecurrentInputError` as the layers' other dtype errors."""


def fail(msg: str) -> None:
    raise RecurrentInputError(msg)


def check_tensor(x: object, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        fail(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    return x  # type: ignore[return-value]


def is_int(v: object) -> bool:
    """An integer, numpy's too, but not a bool (``True`` is an int to ``isinstance``)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v: object) -> bool:
    """A real number, numpy's scalars too, but not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def autocast_on(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)``, False for devices autocast does not know
    (``meta``: shape inference), where torch's own call raises."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def check_like(x: Tensor, ref: Tensor, what: str) -> None:
    """Same dtype and device as the module's parameters (no silent casts or copies); under
    autocast a floating-point ``x`` may differ from floating-point parameters (autocast casts
    floating tensors only: an integer or complex tensor, or a real one for a complex state, is
    still refused)."""
    floats = x.is_floating_point() and ref.is_floating_point()
    if x.dtype != ref.dtype and not (floats and autocast_on(x.device.type)):
        # (the module converted to an integer dtype is no advice: token ids want an embedding)
        module = f" or the module with .to({x.dtype})" if x.is_floating_point() or x.is_complex() else ""
        fail(
            f"{what} has dtype {x.dtype} but the parameters are {ref.dtype}; convert it with "
            f".to({ref.dtype}){module}"
        )
    if x.device != ref.device:
        fail(f"{what} is on {x.device} but the parameters are on {ref.device}")


def check_real_relu(cells: Sequence[object], x: Tensor) -> None:
    """ReLU orders numbers, so complex ``x`` with a ``nonlinearity="relu"`` cell is refused, as
    torch.nn's RNN and RNNCell refuse it, in words (theirs, "clamp is not supported for complex
    types", named neither the option nor the dtype)."""
    if x.is_complex() and any(getattr(c, "nonlinearity", None) == "relu" for c in cells):
        raise RecurrentDtypeError(
            f"nonlinearity='relu' is not defined for complex numbers, got input of dtype {x.dtype}; "
            "use nonlinearity='tanh' or a real dtype"
        )


def check_real_norm(cells: Sequence[object], x: Tensor) -> None:
    """Layer and batch norm take means and variances over real numbers, so complex ``x`` with a
    ``norm=`` cell is refused in words (torch's, "LayerNormKernelImpl not implemented for
    'ComplexDouble'" or a dtype mismatch of ``end``, named neither the option nor the dtype)."""
    if not x.is_complex():  # (first: the per-call cost of a real input is this test alone)
        return
    norm = next((n for n in (getattr(c, "norm", None) for c in cells) if n), None)
    if norm:
        raise RecurrentDtypeError(
            f"norm={norm!r} is not defined for complex numbers, got input of dtype {x.dtype}; "
            "use norm=None or a real dtype"
        )


def check_real_dropout(dropout: float, num_layers: int, training: bool, x: Tensor) -> None:
    """Between-layer ``dropout`` draws its mask with torch's ``bernoulli_``, which has no complex
    kernel, so complex ``x`` in training with more than one layer is refused in words (torch's,
    as torch.nn's layers fail: "bernoulli_scalar_cpu_" not implemented for 'ComplexDouble', named
    neither the option nor the dtype). ``locked_dropout``'s masks are real: it runs."""
    if x.is_complex() and dropout and training and num_layers > 1:
        raise RecurrentDtypeError(
            f"dropout={dropout} between layers has no complex kernel in torch (in training), got input "
            f"of dtype {x.dtype}; use locked_dropout={dropout} (real masks) instead, eval() or a real dtype"
        )


def check_input(x: Tensor, input_size: int, packed: bool, ref: Tensor, batch_dim: int | None = None) -> None:
    """``batch_dim``: the batch dimension of a batched dense input (a layer's or a cell's), which
    may be empty, as torch.nn allows (empty outputs and states); zero time steps never are."""
    check_tensor(x, "input")
    if packed:
        if x.dim() != 2:
            fail(f"packed input data must be 2-D (total_steps, {input_size}), got {tuple(x.shape)}")
    elif x.dim() not in (2, 3):
        fail(
            "input must be 3-D (L, N, H_in) / (N, L, H_in) with batch_first, or 2-D (L, H_in) "
            f"unbatched; got {x.dim()}-D input of shape {tuple(x.shape)}"
        )
    if x.shape[-1] != input_size:
        fail(
            f"input has {x.shape[-1]} features in its last dimension but the layer expects "
            f"input_size={input_size} (input shape {tuple(x.shape)})"
        )
    empty_other = any(n == 0 for i, n in enumerate(x.shape[:-1]) if i != batch_dim)
    if x.numel() == 0 and (batch_dim is None or empty_other):
        # (a batch of no sequences is allowed, as torch.nn: empty outputs; no time step is not)
        fail(f"input must have at least one time step, got shape {tuple(x.shape)}")
    check_like(x, ref, "input")


def check_param_shapes(
    params: Mapping[str, Tensor],
    shapes: Mapping[str, tuple[int, ...]],
    names: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Each of a cell's tensors ``params`` (by base name) shaped as its spec ``shapes`` says and,
    given ``dtype`` (the parameters', ``weight_ih``'s), of that dtype; ``names``: the module's
    attribute of each (``weight_hh_l0``), for the message. A weight replaced by one of another
    shape is refused: cells that read a weight by row blocks (the GRU variants, peepholes, FGR)
    would ignore extra rows without a word; one of another dtype too: the loop and the fused
    kernels converted it silently (float32 values in a float64 layer), where torch.nn fails."""
    for base, w in params.items():
        if w.shape != shapes[base]:
            name = names[base] if names else base
            fail(f"{name} must have shape {tuple(shapes[base])}, got {tuple(w.shape)}")
        if dtype is not None and w.dtype != dtype:
            param_dtype_error(names[base] if names else base, w, dtype)


def kept(module: torch.nn.Module, key: str, build: Callable[[], T]) -> T:
    """``module.__dict__[key]``, built by ``build()`` at the first call and kept (the layers'
    and cells' weight shapes: fixed at construction, ~3 µs to build from the specs per call, 5%
    of a small LSTM's). Not kept while torch.compile traces: a write to the module is a side
    effect there."""
    v = module.__dict__.get(key)
    if v is None:
        v = build()
        if not torch.compiler.is_compiling():
            module.__dict__[key] = v
    return v


def param_dtype_error(name: str, w: Tensor, dtype: torch.dtype) -> None:
    fail(f"{name} has dtype {w.dtype} but the parameters are {dtype}; convert it with .to({dtype})")


def check_step(step: object) -> int:
    """A time index (a cell's ``step``, a layer's first step): a non-negative int, or a 0-d
    integer tensor (how ``torch.onnx.export`` passes it: a constant of the trace). A negative
    one would read batch norm's statistics from their end and ``int()`` would truncate a
    float, so both are refused. Returns it as an int."""
    value = -1
    if isinstance(step, Tensor) and step.dim() == 0 and not (step.is_floating_point() or step.is_complex()):
        if step.dtype != torch.bool:
            with warnings.catch_warnings():  # tracing: the value is a constant of the trace
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                value = int(step)
    elif is_int(step):
        value = int(step)
    if value < 0:
        fail(f"step must be a non-negative int (the time index of this step), got {step!r}")
    return value


def check_state(
    hx: object, names: Sequence[str], shapes: Sequence[tuple[int, ...]], ref: Tensor
) -> tuple[Tensor, ...]:
    """``hx`` is a tensor (one state) or a tuple (several); each must match its shape."""
    if len(names) == 1:
        if isinstance(hx, (tuple, list)):
            fail(f"the initial state must be a single tensor {names[0]}_0, got a {type(hx).__name__}")
        states = (hx,)
    else:
        if not isinstance(hx, (tuple, list)) or len(hx) != len(names):
            got = type(hx).__name__ + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else "")
            fail(f"the initial state must be a tuple ({', '.join(n + '_0' for n in names)}), got {got}")
        states = tuple(hx)
    for s, name, shape in zip(states, names, shapes):
        check_tensor(s, f"{name}_0")
        if tuple(s.shape) != tuple(shape):
            fail(f"expected {name}_0 of shape {tuple(shape)}, got {tuple(s.shape)}")
        check_like(s, ref, f"{name}_0")
    return states  # type: ignore[return-value]


def check_packed(packed: PackedSequence) -> int:
    """A ``PackedSequence``'s fields consistent with its ``data (rows, H_in)``: ``batch_sizes``
    a 1-D CPU int64 tensor, positive, non-increasing, summing to ``rows``; ``sorted_indices`` and
    ``unsorted_indices`` (when given) one per sequence; on the CPU also a permutation of
    ``0 .. B-1`` each, and the inverse of each other. Returns the batch size ``batch_sizes[0]``.

    Every path reads the data by ``batch_sizes``: a hand-built PackedSequence that disagrees
    with its data had rows past the sum dropped (as torch.nn does), a state of another batch
    returned, or an output of more rows than the input, silently. Indices with a repeat gave one
    sequence's state for two (and ``PackedSequence`` inverts them into uninitialized memory: an
    index error deep in torch). Indices on another device are not checked to be a permutation:
    that would read them back (a CUDA sync) at every call."""
    data, bs = packed.data, packed.batch_sizes
    # what pack_padded_sequence makes and torch's kernels take (they refuse int32 in their words)
    if not isinstance(bs, Tensor) or bs.dim() != 1 or bs.dtype != torch.int64 or bs.device.type != "cpu":
        got = f"{bs.dim()}-D {bs.device.type} {bs.dtype}" if isinstance(bs, Tensor) else type(bs).__name__
        fail(f"a PackedSequence's batch_sizes must be a 1-D CPU int64 tensor, got {got}")
    sizes = bs.tolist()  # plain ints: ~4 us at 100 steps, half the tensor ops' time
    if not sizes:
        fail("a PackedSequence must have at least one time step, got empty batch_sizes")
    if sizes[-1] <= 0 or not all(map(operator.ge, sizes, sizes[1:])):
        fail(f"a PackedSequence's batch_sizes must be positive and non-increasing, got {sizes}")
    total = sum(sizes)
    if total != data.shape[0]:
        fail(f"a PackedSequence's batch_sizes must sum to the {data.shape[0]} rows of its data, got {total}")
    batch = sizes[0]
    for name in ("sorted_indices", "unsorted_indices"):
        idx = getattr(packed, name)
        if idx is not None and tuple(idx.shape) != (batch,):
            fail(f"expected {name} of shape ({batch},) (batch_sizes[0] sequences), got {tuple(idx.shape)}")
    _check_permutations(packed.sorted_indices, packed.unsorted_indices, batch)
    return batch


def _check_permutations(sorted_idx: Tensor | None, unsorted_idx: Tensor | None, batch: int) -> None:
    """CPU ``(B,)`` indices: each a permutation of ``0 .. B-1``, ``unsorted`` the inverse of
    ``sorted``; checked in order (a ``sorted_indices`` with a repeat has a garbage inverse)."""
    given = {"sorted_indices": sorted_idx, "unsorted_indices": unsorted_idx}
    if any(idx is not None and idx.device.type != "cpu" for idx in given.values()):
        return
    # Python lists: ~5 us for 32 sequences, but ~0.2 us a sequence (100 us at 1024, half a small
    # forward's time); tensor ops: 10-30 us up to 4096. Past _LIST_MAX the tensor ops clear the
    # usual valid indices, and the lists below only word an error.
    if batch > _LIST_MAX and _permutations_ok(sorted_idx, unsorted_idx, batch):
        return
    lists = {name: idx.tolist() for name, idx in given.items() if idx is not None}
    for name, idx in lists.items():
        if sorted(idx) != list(range(batch)):
            shown = idx if batch <= 16 else f"{idx[:16]} ... ({batch} entries)"
            fail(
                f"a PackedSequence's {name} must be a permutation of 0..{batch - 1} (each sequence "
                f"once), got {shown}"
            )
    if len(lists) == 2:
        order, inverse = lists["sorted_indices"], lists["unsorted_indices"]
        bad = next((i for i, s in enumerate(order) if inverse[s] != i), None)
        if bad is not None:
            fail(
                "a PackedSequence's unsorted_indices must be the inverse of its sorted_indices, got "
                f"unsorted_indices[sorted_indices[{bad}]] = {inverse[order[bad]]}, expected {bad}"
            )


_LIST_MAX = 128  # sequences: above, _check_permutations checks in tensor ops first


def _permutations_ok(sorted_idx: Tensor | None, unsorted_idx: Tensor | None, batch: int) -> bool:
    """Whether the CPU ``(B,)`` indices (``batch > 0``) are int64 permutations of ``0 .. B-1``,
    ``unsorted`` the inverse of ``sorted``, in tensor ops. False means: not shown valid here."""
    present = [idx for idx in (sorted_idx, unsorted_idx) if idx is not None]
    if not present:  # (a batch packed sorted: no indices)
        return True
    if any(idx.dtype != torch.int64 for idx in present):
        return False
    idx = present[0]
    lo, hi = torch.aminmax(idx)
    if lo < 0 or hi >= batch:
        return False
    seen = torch.zeros(batch, dtype=torch.bool)
    seen[idx] = True
    if not seen.all():  # a repeat leaves another entry unseen
        return False
    if len(present) == 2:  # then unsorted[sorted] = 0..B-1 makes unsorted the inverse permutation
        return torch.equal(unsorted_idx[sorted_idx], torch.arange(batch))  # type: ignore[index]
    return True


UNTRACEABLE = (
    "packed input and lengths= are not supported under torch.compile(fullgraph=True) or torch.export: "
    "their batch sizes are a tensor's values, on which the time loop depends (a data-dependent guard); "
    "pass a dense batch there (torch.compile without fullgraph breaks the graph here and runs them eagerly)"
)


def untraceable_batch_sizes() -> None:
    """Where packed input or ``lengths=`` meets torch.compile or torch.export: torch's own error
    (``Could not guard on data-dependent expression u0 < 1``) names neither. torch.compile breaks
    the graph here with this message (``fullgraph=True`` raises it); torch.export raises it."""
    if not torch.compiler.is_compiling():
        return
    # torch >= 2.6 (rnnkit supports 2.4: there fullgraph=True failed on the missing attribute)
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    if is_exporting is not None and is_exporting():
        fail(UNTRACEABLE)
    torch._dynamo.graph_break(msg=UNTRACEABLE)


def check_lengths(lengths: object, batch: int, max_len: int) -> Tensor:
    if not isinstance(lengths, Tensor):
        lengths = as_lengths(lengths)
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        fail(f"lengths must be 1-D with one entry per sequence ({batch}), got shape {tuple(lengths.shape)}")
    # a bool tensor (a mask) would be read as lengths of 1 and 0
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        fail(f"lengths must be integers, got dtype {lengths.dtype}")
    lo, hi = (int(lengths.min()), int(lengths.max())) if lengths.numel() else (1, 1)  # (none: no batch)
    if lo < 1 or hi > max_len:
        fail(f"lengths must lie in [1, {max_len}] (the padded length), got values in [{lo}, {hi}]")
    return lengths.cpu().long()


def as_lengths(lengths: object) -> Tensor:
    """``torch.as_tensor(lengths)``, but an empty sequence (an empty batch's ``[]``), which torch
    reads as a float tensor, is an int64 one: it holds no fractional length to refuse."""
    try:
        t = torch.as_tensor(lengths)
    except (TypeError, RuntimeError, ValueError) as e:  # torch's words named no argument
        got = f"{type(lengths).__name__} ({e})"
        raise RecurrentInputError(
            f"lengths must be a tensor or a sequence of ints (one per sequence), got {got}"
        ) from None
    return t.long() if t.numel() == 0 and not isinstance(lengths, Tensor) else t


def check_layer_config(
    input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size, bidir
) -> None:
    """A recurrent layer's constructor arguments, as torch.nn.RNNBase checks them and more (the
    layers, the time-parallel layers). The warning's stacklevel points at the user's constructor."""
    for name, v in [
        ("input_size", input_size),
        ("hidden_size", hidden_size),
        ("num_layers", num_layers),
    ]:
        # any integer (numpy's too, as torch.nn takes for num_layers); a non-integer is a TypeError, as
        # torch.nn's for hidden_size
        if not is_int(v):
            raise TypeError(f"{name} should be of type int, got: {type(v).__name__}")
        if v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    # bidirectional too (torch.nn does not): 'no' is true. dropout: numbers.Real, numpy's scalars too
    for name, v in [("bias", bias), ("batch_first", batch_first), ("bidirectional", bidir)]:
        if not isinstance(v, bool):
            raise TypeError(f"{name} should be of type bool, got: {type(v).__name__}")
    if not is_real(dropout) or not 0 <= dropout <= 1:
        raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
    if not is_int(proj_size) or proj_size < 0:
        raise ValueError(f"proj_size must be a non-negative int, got {proj_size!r}")
    if dropout > 0 and num_layers == 1:  # torch.nn's warning, pointing at the user's constructor call
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero "
            f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
            f"num_layers={num_layers}",
            stacklevel=4,
        )
    if proj_size >= hidden_size:
        raise ValueError(f"proj_size ({proj_size}) must be smaller than hidden_size ({hidden_size})")
