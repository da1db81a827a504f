"""Mixed precision for the training loop: autocast of the forward, loss scaling for float16.

``MixedPrecision(amp, device)`` with ``amp`` one of ``None`` (off), ``"bf16"`` or ``"fp16"``:

* :meth:`call` runs ``model(*args)`` under ``torch.autocast(device, dtype)`` and returns its
  floating outputs (and recurrent states) in float32, so the loss and the carried state never
  live in half precision; the backward runs outside autocast, as PyTorch recommends (autocast
  would otherwise cast the backward's products too).
* ``"fp16"`` scales the loss (``torch.amp.GradScaler``): float16's narrow exponent range would
  flush small gradients to zero. bfloat16 has float32's range and needs no scaling.

The parameters and the optimizer's state stay in float32 (rnnkit's layers run the options
torch has no kernel for in float32 under autocast; torch's own kernels follow autocast's rules:
on CUDA cuDNN's RNNs run in float16 even under ``"bf16"``, unscaled, so ``"fp16"`` is the
choice for cuDNN layers on a GPU).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor

from rnnkit.state import map_tensors

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str | None) -> None:
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")


def check_cpu_float16(model: torch.nn.Module, device: torch.device, setting: str = "amp='fp16'") -> None:
    """Refuse float16 autocast on the CPU for a model with an LSTM that has no float16 kernel there:
    torch's (oneDNN's) LSTM, which ``torch.nn.LSTM`` and rnnkit's plain ``LSTM`` run (in eval mode
    also one with ``recurrent_dropout``), failed at the first step in oneDNN's words ("could not
    create a primitive descriptor"). Each LSTM is tried on one step in eval mode (validation's
    path; nothing is drawn or updated), modes restored. GRU, RNN and rnnkit's loop run float16."""
    from rnnkit.modules import LSTM

    if device.type != "cpu":
        return
    for name, m in model.named_modules():
        if not isinstance(m, (torch.nn.LSTM, LSTM)):
            continue
        if not _runs_float16(m):
            raise ValueError(
                f"{setting} on the CPU: the LSTM {name or 'model'} ({type(m).__name__}) has no float16 "
                "kernel there; use bf16 on the CPU (or fp16 on a CUDA device)"
            )


def _runs_float16(lstm: torch.nn.Module) -> bool:
    """Whether ``lstm`` runs one step under float16 autocast on the CPU, in eval mode (its modes
    restored); a failure that float32 shares (not float16's) is not this check's to report."""
    from rnnkit.train.evaluate import kept_modes

    p = next(lstm.parameters(), None)
    if p is None:  # nothing to run in float16
        return True
    x = torch.zeros(1, 1, lstm.input_size, dtype=p.dtype, device=p.device)
    step = type(lstm).forward  # not lstm(x): the user's forward hooks would see the probe
    with kept_modes(lstm), torch.no_grad():
        lstm.eval()
        try:
            with torch.autocast("cpu", dtype=torch.float16):
                step(lstm, x)
        except RuntimeError:  # (oneDNN's "could not create a primitive descriptor")
            try:
                step(lstm, x)
            except RuntimeError:
                return True
            return False
    return True


def _to_float(x: Any) -> Any:
    """Half-precision tensors of a (nested) output/state in float32, the containers rebuilt as
    :func:`rnnkit.state.detach_state` rebuilds them (namedtuples, ``PackedSequence`` too, keep
    their type; lists/tuples/dicts are recursed)."""
    return map_tensors(lambda t: t.float() if t.dtype in (torch.float16, torch.bfloat16) else t, x)


class MixedPrecision:
    """Autocast and (for float16) loss scaling, or nothing when ``amp`` is None; ``model``: refused
    when float16 would fail in it on the CPU (:func:`check_cpu_float16`)."""

    def __init__(self, amp: str | None, device: torch.device, model: torch.nn.Module | None = None) -> None:
        check_amp(amp)
        if amp == "fp16" and model is not None:
            check_cpu_float16(model, device)
        self.amp, self.device = amp, device
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.amp])

    def call(self, model: Any, *args: Any) -> Any:
        """``model(*args)`` under autocast, its half-precision outputs returned in float32."""
        if self.amp is None:
            return model(*args)
        with self.autocast():
            out = model(*args)
        return _to_float(out)

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients at their true size (before clipping or measuring them)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """``optimizer.step()``; with loss scaling, skipped on inf/NaN gradients. Returns whether
        the optimizer stepped (the weights moved)."""
        if self.scaler is None:
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        # update() lowers the scale exactly when it found inf/NaN gradients, i.e. skipped the step
        return self.scaler.get_scale() >= scale

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
