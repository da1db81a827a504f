"""Non-recurrent baselines with the recurrent layers' calling convention.

* :class:`TCN` -- a temporal convolutional network (Bai, Kolter & Koltun 2018, "An
  empirical evaluation of generic convolutional and recurrent networks"): residual
  blocks of two dilated causal convolutions, dilation ``2**level``. Its receptive field
  is ``1 + 2 * (kernel_size - 1) * (2**levels - 1)`` steps: an output at time ``t`` sees
  inputs ``t - R + 1 .. t`` and nothing else.
* :class:`ConvRecurrent` -- a causal convolution front end (local features, a few steps
  wide) feeding a recurrent stack (the "CNN + RNN" pattern).

Both are called like ``rnnkit.LSTM``: ``forward(x, state=None) -> (out, state)`` with
``x`` ``(T, B, F)`` or ``(B, T, F)`` (``batch_first``). The *state* of a causal
convolution is the tail of its past inputs (``(B, C, (k-1)*d)`` per convolution), so
running a sequence in pieces with the state carried gives exactly the outputs of one
run over the whole sequence -- step-by-step sampling and truncated BPTT work as for a
recurrent layer. ``causal=False`` centres the kernels instead (a bidirectional-style
encoder for tagging); it has no state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import _checks
from rnnkit._nn_compat import reference

__all__ = ["CausalConv1d", "TCN", "ConvRecurrent", "tcn_receptive_field", "reads_ahead", "step_kwargs"]


def tcn_receptive_field(levels: int, kernel_size: int) -> int:
    """``1 + 2 (k - 1) (2^levels - 1)``: two convolutions of dilation ``2^i`` per level."""
    return 1 + 2 * (kernel_size - 1) * (2**levels - 1)


class CausalConv1d(nn.Conv1d):
    """``Conv1d`` over ``(B, C, T)`` whose output at ``t`` depends on inputs ``<= t``.

    The input is left-padded by ``(k - 1) * dilation`` steps: with zeros when
    ``past is None``, else with ``past`` -- the previous call's last inputs, returned
    as the new ``past``. With ``lengths`` (a padded batch) the new ``past`` of each sequence
    is its own last inputs before its padding (for one shorter than the context: the end of
    ``past`` followed by its inputs). ``causal=False`` pads both sides (``(k-1)*d`` must be even); there
    ``valid`` ``(B, 1, T)`` (1 at a sequence's steps, 0 at its padding) zeroes the padding first,
    so that a centred kernel near a sequence's end sees zeros, as for the sequence alone.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, *, causal: bool = True
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation)
        self.causal = causal
        self.context = (kernel_size - 1) * dilation
        if not causal and self.context % 2:
            raise ValueError(f"a centred convolution needs an odd kernel_size, got {kernel_size}")

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        past: Tensor | None = None,
        valid: Tensor | None = None,
        lengths: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        if not self.causal:
            if past is not None:
                raise ValueError("a non-causal convolution has no state to carry")
            if valid is not None:
                x = x * valid
            return super().forward(F.pad(x, (self.context // 2, self.context // 2))), None
        expected = (x.shape[0], self.in_channels, self.context)
        what = "the state of a causal convolution (its past inputs)"
        if past is None:
            past = x.new_zeros(expected)
        elif tuple(_checks.check_tensor(past, what).shape) != expected:  # else torch.cat's size error
            _checks.fail(
                f"{what} must be (batch, in_channels, (kernel_size - 1) * dilation): expected shape "
                f"{expected} for this input, got {tuple(past.shape)}"
            )
        else:  # as a recurrent layer's h0: torch.cat would promote another dtype silently
            _checks.check_like(past, self.weight, what)
        full = torch.cat([past, x], dim=2)
        if not self.context:
            new_past = past
        elif lengths is None:
            new_past = full[:, :, full.shape[2] - self.context :]
        else:  # sequence b's last inputs end at column context + lengths[b] of full
            steps = torch.arange(self.context, device=x.device)
            idx = lengths.to(device=x.device, dtype=torch.long).view(-1, 1, 1) + steps.view(1, 1, -1)
            new_past = full.gather(2, idx.expand(full.shape[0], full.shape[1], self.context))
        return super().forward(full), new_past


class _TemporalBlock(nn.Module):
    """Two dilated causal convolutions with ReLU and dropout, plus a residual connection."""

    def __init__(self, cin: int, cout: int, k: int, d: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.conv1 = CausalConv1d(cin, cout, k, d, causal=causal)
        self.conv2 = CausalConv1d(cout, cout, k, d, causal=causal)
        self.drop = nn.Dropout(dropout)
        self.down = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(
        self, x: Tensor, past: tuple | None, valid: Tensor | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, tuple]:
        p1, p2 = past if past is not None else (None, None)  # TCN.forward checked it is a pair
        y, p1 = self.conv1(x, p1, valid, lengths)
        y, p2 = self.conv2(self.drop(F.relu(y)), p2, valid, lengths)
        return F.relu(self.drop(F.relu(y)) + self.down(x)), (p1, p2)


def _to_bct(x: Tensor, batch_first: bool, first: CausalConv1d) -> Tensor:
    """``x`` ``(T, B, F)`` / ``(B, T, F)`` checked against the first convolution ``first`` as a
    recurrent layer checks its input (else torch.cat or conv1d fail on another feature size,
    dtype or no time step), as ``(B, F, T)``."""
    if _checks.check_tensor(x, "input").dim() != 3:
        raise ValueError(f"expected a 3-D input (T, B, F) or (B, T, F), got shape {tuple(x.shape)}")
    # reference(): first.weight would compute a parametrized weight once more (spectral norm: a
    # second power iteration per training call)
    ref = reference(first, "weight")
    _checks.check_input(x, first.in_channels, False, ref, 0 if batch_first else 1)
    return x.permute(0, 2, 1) if batch_first else x.permute(1, 2, 0)


def _from_bct(y: Tensor, batch_first: bool) -> Tensor:
    return y.permute(0, 2, 1) if batch_first else y.permute(2, 0, 1)


def _pasts(state: Any, n: int, what: str, unit: str) -> Any:
    """``state``'s per-convolution entries (``n`` of them; ``None``: ``n`` Nones), checked in
    number -- zip() would otherwise fail with its own message or drop the extra ones."""
    if state is None:
        return [None] * n
    if not isinstance(state, (tuple, list)) or len(state) != n:
        _checks.fail(f"the {what} state must hold {n} entries (one per {unit}), got {_described(state)}")
    return state


def _described(state: Any) -> str:
    """A state's kind and length for an error message (a tensor's shape, not its values)."""
    if isinstance(state, Tensor):
        return f"a tensor of shape {tuple(state.shape)}"
    if isinstance(state, (tuple, list)):
        return f"{type(state).__name__} of length {len(state)}"
    return str(state)


def _valid_mask(lengths: Tensor | None, y: Tensor) -> Tensor | None:
    """``(B, 1, T)``: 1 at the steps of each sequence of ``y (B, C, T)``, 0 at its padding."""
    if lengths is None:
        return None
    steps = torch.arange(y.shape[2], device=y.device)
    return (steps < lengths.to(y.device).view(-1, 1)).unsqueeze(1).to(y.dtype)


def _lengths(lengths: Any, y: Tensor) -> Tensor | None:
    """``lengths`` checked as the recurrent layers check it (``(B,)``, in ``1 .. T``), on ``y``'s device."""
    if lengths is None:
        return None
    return _checks.check_lengths(lengths, y.shape[0], y.shape[2]).to(y.device)


def _check_args(owner: str, sizes: dict[str, Any], flags: dict[str, Any], dropout: Any = 0.0) -> None:
    """As the recurrent layers check theirs (``rnnkit._checks.check_layer_config``): sizes are integers
    >= 1 (numpy's too; a float failed inside ``torch.empty``), flags bools (``'no'`` is true), the
    dropout a number in [0, 1] (NaN failed only at the first training call)."""
    for name, v in sizes.items():
        if not _checks.is_int(v):
            raise TypeError(f"{owner} {name} should be of type int, got: {type(v).__name__}")
        if v < 1:
            raise ValueError(f"{owner} {name} must be >= 1, got {v}")
    for name, v in flags.items():
        if not isinstance(v, bool):
            raise TypeError(f"{owner} {name} should be of type bool, got: {type(v).__name__}")
    if not _checks.is_real(dropout) or not 0 <= dropout <= 1:
        raise ValueError(f"{owner} dropout must be a number in [0, 1], got {dropout!r}")


class TCN(nn.Module):
    """Temporal convolutional network: ``levels`` residual blocks, dilations 1, 2, 4, ...

    ``forward(x (T, B, F) | (B, T, F), state=None) -> (y (.., hidden_size), state)``.
    ``receptive_field`` is the number of input steps one output sees. Signature mirrors
    ``rnnkit.LSTM`` (``num_layers`` = levels) so it can replace a recurrent stack;
    ``bidirectional=True`` means non-causal (centred) kernels, output still ``hidden_size``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 4,
        *,
        kernel_size: int = 3,
        dropout: float = 0.0,
        batch_first: bool = False,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        sizes = {"input_size": input_size, "hidden_size": hidden_size, "num_layers": num_layers}
        sizes["kernel_size"] = kernel_size
        _check_args("TCN", sizes, {"batch_first": batch_first, "bidirectional": bidirectional}, dropout)
        input_size, hidden_size, num_layers, kernel_size = map(int, sizes.values())  # numpy's: ints
        dropout = float(dropout)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.kernel_size, self.batch_first, self.causal = kernel_size, batch_first, not bidirectional
        self.blocks = nn.ModuleList(
            _TemporalBlock(
                input_size if i == 0 else hidden_size, hidden_size, kernel_size, 2**i, dropout, self.causal
            )
            for i in range(num_layers)
        )

    @property
    def receptive_field(self) -> int:
        return tcn_receptive_field(self.num_layers, self.kernel_size)

    @property
    def output_size(self) -> int:
        return self.hidden_size

    def forward(self, x: Tensor, state: Any = None, lengths: Tensor | None = None) -> tuple[Tensor, Any]:
        """``lengths`` (padded batches): centred kernels see zeros past each sequence's end, so
        its valid outputs are those of the sequence alone; a causal output at a valid step never
        sees the padding after it, and the state carries each sequence's own last steps. Outputs
        past each length are zero, as a recurrent layer's."""
        y = _to_bct(x, self.batch_first, self.blocks[0].conv1)
        checked = _lengths(lengths, y)  # both modes: the mask below would broadcast a bad shape
        mask = _valid_mask(checked, y)
        valid = None if self.causal else mask
        ends = checked if self.causal else None
        pasts = _pasts(state, len(self.blocks), "TCN", "level")
        pasts = [_pasts(p, 2, f"TCN level {i}", "convolution") for i, p in enumerate(pasts)]
        new = []
        for block, past in zip(self.blocks, pasts, strict=True):
            y, p = block(y, past, valid, ends)
            new.append(p)
        if mask is not None:  # the padding's outputs (biases, residuals) would enter a mean over time
            y = y * mask.to(y.dtype)  # (the input's dtype: under autocast it would promote y)
        return _from_bct(y, self.batch_first), (tuple(new) if self.causal else None)


class ConvRecurrent(nn.Module):
    """Causal convolution front end (``conv_layers`` x Conv1d + ReLU) feeding a recurrent stack.

    ``make_recurrent(conv_channels) -> module`` builds the recurrent part (same
    ``batch_first``). State: ``(conv pasts, recurrent state)``.
    """

    def __init__(
        self,
        input_size: int,
        make_recurrent: Callable[[int], nn.Module],
        *,
        conv_channels: int = 64,
        kernel_size: int = 3,
        conv_layers: int = 1,
        batch_first: bool = False,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        sizes = {"input_size": input_size, "conv_channels": conv_channels, "kernel_size": kernel_size}
        sizes["conv_layers"] = conv_layers
        _check_args("conv front end", sizes, {"batch_first": batch_first, "bidirectional": bidirectional})
        input_size, conv_channels, kernel_size, conv_layers = map(int, sizes.values())
        self.batch_first, self.causal = batch_first, not bidirectional
        self.convs = nn.ModuleList(
            CausalConv1d(
                input_size if i == 0 else conv_channels, conv_channels, kernel_size, causal=self.causal
            )
            for i in range(conv_layers)
        )
        self.rnn = make_recurrent(conv_channels)
        self.receptive_field = 1 + conv_layers * (kernel_size - 1)  # of the front end alone

    @property
    def output_size(self) -> int:
        return encoder_output_size(self.rnn)

    def forward(self, x: Tensor, state: Any = None, **kwargs: Any) -> tuple[Tensor, Any]:
        if state is not None and (not isinstance(state, (tuple, list)) or len(state) != 2):
            # else the unpacking below fails ("not enough values to unpack") or splits a tensor
            _checks.fail(
                "the ConvRecurrent state must be a pair (convolution pasts, recurrent state), "
                f"got {_described(state)}"
            )
        pasts, rstate = state if state is not None else (None, None)
        pasts = _pasts(pasts, len(self.convs), "convolution front end", "convolution")
        y, new = _to_bct(x, self.batch_first, self.convs[0]), []
        checked = _lengths(kwargs.get("lengths"), y)  # before the convolutions, in both modes
        valid = None if self.causal else _valid_mask(checked, y)  # see CausalConv1d
        ends = checked if self.causal else None
        for conv, past in zip(self.convs, pasts, strict=True):
            y, p = conv(y, past, valid, ends)
            y = F.relu(y)
            new.append(p)
        out, rstate = self.rnn(_from_bct(y, self.batch_first), rstate, **kwargs)
        return out, ((tuple(new) if self.causal else [None] * len(self.convs)), rstate)


def encoder_output_size(module: nn.Module) -> int:
    """Features per step of a recurrent stack / baseline's output."""
    if hasattr(module, "output_size"):
        return int(module.output_size)
    out = getattr(module, "proj_size", 0) or module.hidden_size
    return out * (2 if getattr(module, "bidirectional", False) else 1)


def reads_ahead(module: nn.Module) -> bool:
    """Whether an output of ``module`` can depend on later inputs: a bidirectional recurrent
    layer or a centred (non-causal) convolution anywhere in it -- also inside a conv front end
    (:class:`ConvRecurrent` has no ``bidirectional`` of its own)."""
    mods = module.modules()
    return any(bool(getattr(m, "bidirectional", False)) or getattr(m, "causal", True) is False for m in mods)


def step_kwargs(module: nn.Module, step: int) -> dict[str, int]:
    """The keywords that tell ``module`` (an encoder called as ``module(x, state, **kw)``) that
    ``x`` starts at time step ``step`` of its sequence: ``{"step": step}`` when a recurrent
    stack in it depends on the time index (batch norm's per-step statistics, see
    :meth:`rnnkit.layers.RecurrentStack.forward`), else none (the other encoders, torch.nn's
    layers among them, take no ``step``)."""
    cells = (c for m in module.modules() for c in getattr(m, "cells", ()))
    return {"step": step} if step and any(getattr(c, "norm", None) == "batch" for c in cells) else {}
