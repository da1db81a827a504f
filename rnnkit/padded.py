"""Padded batches with ``lengths=``: a recurrent layer's packed call, padded back.

Shared by :class:`~rnnkit.layers.RecurrentStack` and the time-parallel layers
(:mod:`rnnkit.parallel`), which take packed input and run ``lengths=`` through it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from . import _checks, dispatch


def forward_padded(module: nn.Module, input: Tensor, hx, lengths, step: int = 0):
    """``module(input, hx, lengths, step)`` for a padded batch with valid ``lengths (B,)``: the
    packed call's outputs padded back (zeros past each length) and its final state. ``module``
    is a recurrent layer taking packed input (:class:`RecurrentStack`, the time-parallel layers,
    which take no ``step``)."""
    if isinstance(input, PackedSequence):  # ("input must be a torch.Tensor" named no cause)
        _checks.fail("lengths= is for a padded tensor input; a PackedSequence carries its own lengths")
    batch_dim = 0 if module.batch_first else 1  # may be empty, as without lengths= (a 2-D input fails below)
    _checks.check_input(input, module.input_size, False, module._ref, batch_dim)
    if input.dim() != 3:
        _checks.fail(f"lengths= needs a batched 3-D input, got shape {tuple(input.shape)}")
    T = input.shape[1] if module.batch_first else input.shape[0]
    B = input.shape[0] if module.batch_first else input.shape[1]
    lengths = _checks.check_lengths(lengths, B, T)
    extra = (None, step) if step else ()
    if B == 0:  # no sequence to pack: the dense call's empty outputs and states
        return module(input, hx, *extra)
    if input.is_complex() and input.requires_grad and torch.is_grad_enabled():
        # torch's pack_padded_sequence has no complex derivative: its error named neither
        raise _checks.RecurrentDtypeError(
            f"lengths= cannot differentiate a complex input ({input.dtype}): torch's packing has no "
            "complex derivative; detach the input (parameters and hx still get gradients) or omit lengths="
        )
    if fast_packing(input):
        plan = plan_from_lengths(lengths, T, B, module.batch_first, input.device)
        out, state = module(pack(input, plan), hx, *extra)
        shape = (B, T, -1) if module.batch_first else (T, B, -1)
        return unpack(out.data, plan, T * B).view(shape), state
    with dispatch.packing("lengths= is"):
        packed = pack_padded_sequence(input, lengths, module.batch_first, enforce_sorted=False)
    out, state = module(packed, hx, *extra)
    with dispatch.packing("lengths= is"):
        out, _ = pad_packed_sequence(out, module.batch_first, total_length=T)
    return out, state


# torch's pack_padded_sequence / pad_packed_sequence run a tensor op per time step, forward and
# backward: one gather each way does the same (a lengths= training step of an RNN at T = 150,
# B = 32, H = 256: 16-17 ms with torch's functions, 8 ms with the gathers; RESULTS.md).
class PackPlan(NamedTuple):
    """Where torch's ``pack_padded_sequence(enforce_sorted=False)`` puts each row: its
    ``batch_sizes (T_max,)`` (int64, CPU) and ``sorted_indices (B,)`` (``None``: a packed input's,
    sorted), and ``index (N,)``, each packed row's row in the padded batch's flat ``(T * B, F)``
    view (``(B * T, F)`` batch-first).
    """

    batch_sizes: Tensor
    sorted_indices: Tensor | None
    index: Tensor


def fast_packing(x: Tensor) -> bool:
    """Whether :func:`pack` / :func:`unpack` may stand in for torch's functions on input ``x``:
    plain eager mode, a real floating dtype on the CPU or CUDA, where they are checked to give the
    same data and gradients. Elsewhere (``torch.func`` transforms, forward-mode AD, compile
    tracing, export, CUDA graph capture, tensor subclasses and modes, complex) torch's functions
    run, as before."""
    return (
        x.device.type in ("cpu", "cuda")
        and x.is_floating_point()
        and not torch.overrides.has_torch_function_unary(x)  # subclasses, torch function modes
        and not is_in_torch_dispatch_mode()  # (FakeTensorMode, ...)
        and not dispatch._plain_ops_needed()
        and not dispatch._exporting()
        and not torch.compiler.is_compiling()
        # (host-to-device copies of the plan while a CUDA graph captures: torch's functions, as before)
        and not (x.is_cuda and torch.cuda.is_current_stream_capturing())
    )


def plan_from_lengths(lengths: Tensor, T: int, B: int, batch_first: bool, device) -> PackPlan:
    """The plan of a padded batch ``(T, B, F)`` (``(B, T, F)`` batch-first) with valid
    ``lengths (B,)`` (int64, CPU); ``sorted_indices`` and ``index`` on ``device``."""
    # torch's own call, so equal lengths come in its order
    sorted_lengths, sorted_indices = torch.sort(lengths, descending=True)
    steps = torch.arange(int(sorted_lengths[0])).unsqueeze(1)
    valid = steps < sorted_lengths.unsqueeze(0)  # (T_max, B): a prefix of each row (sorted)
    index = _rows(valid, sorted_indices, T, B, batch_first)
    return PackPlan(valid.sum(1), sorted_indices.to(device), index.to(device))


def plan_from_packed(packed: PackedSequence) -> tuple[PackPlan, Tensor]:
    """The plan of a checked ``packed`` padded time-major, ``(T_max, B, F)`` with ``T_max`` its
    steps, and its lengths ``(B,)`` (int64, CPU) in the caller's order: ``pad_packed_sequence``'s.
    """
    bs, order = packed.batch_sizes, packed.sorted_indices
    T, B = bs.shape[0], int(bs[0])
    sorted_lengths = (bs.unsqueeze(1) > torch.arange(B)).sum(0)
    valid = torch.arange(T).unsqueeze(1) < sorted_lengths.unsqueeze(0)
    index = _rows(valid, torch.arange(B) if order is None else order.cpu(), T, B, False)
    lengths = sorted_lengths if order is None else sorted_lengths[packed.unsorted_indices.cpu()]
    return PackPlan(bs, order, index.to(packed.data.device)), lengths


def pad_packed(packed: PackedSequence) -> tuple[Tensor, Tensor, PackPlan]:
    """``pad_packed_sequence(packed)`` of a checked ``packed``: ``(T_max, B, F)`` and the lengths,
    in the caller's batch order; and the plan, to pack that layout again (:func:`gather`)."""
    plan, lengths = plan_from_packed(packed)
    T, B = plan.batch_sizes.shape[0], lengths.shape[0]
    return unpack(packed.data, plan, T * B).view(T, B, -1), lengths, plan


def _rows(valid: Tensor, sorted_indices: Tensor, T: int, B: int, batch_first: bool) -> Tensor:
    """Each packed row's row in the flat padded batch, in packed order (time-major through
    ``valid (T_max, B)``, sequences by ``sorted_indices (B,)``)."""
    steps = torch.arange(valid.shape[0]).unsqueeze(1)
    rows = sorted_indices.unsqueeze(0) * T + steps if batch_first else steps * B + sorted_indices.unsqueeze(0)
    return rows[valid]


def gather(x: Tensor, plan: PackPlan) -> Tensor:
    """The packed data ``(N, F)`` of the padded batch ``x`` (laid out as ``plan``'s)."""
    return x.reshape(-1, x.shape[-1]).index_select(0, plan.index)


def pack(x: Tensor, plan: PackPlan) -> PackedSequence:
    """``pack_padded_sequence(x, lengths, batch_first, enforce_sorted=False)`` for ``x``'s plan:
    the same PackedSequence (``unsorted_indices`` by torch's inversion)."""
    return PackedSequence(gather(x, plan), plan.batch_sizes, plan.sorted_indices, None)


def unpack(data: Tensor, plan: PackPlan, rows: int) -> Tensor:
    """Packed ``data (N, H)`` of ``plan`` padded back with zeros to the flat ``(rows, H)`` view
    (``rows = T * B``), in the caller's batch order: ``pad_packed_sequence``'s output, flat."""
    return data.new_zeros(rows, data.shape[-1]).index_copy(0, plan.index, data)
