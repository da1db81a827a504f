"""Normalization inside a recurrent step: layer norm (Ba et al. 2016) and recurrent batch
norm with per-time-step statistics (Cooijmans et al. 2016).

Both normalize one *group* of features at a time — the input gate vector ``W_ih x_t``, the
recurrent gate vector ``W_hh h_{t-1}``, or the cell ``c_t`` — with a learnable gain and,
where the cell asks for one, a shift::

    LN(a) = γ ⊙ (a - mean_features(a)) / sqrt(var_features(a) + ε) + β
    BN_t(a) = γ ⊙ (a - mean_batch(a)) / sqrt(var_batch(a) + ε) + β     (training)
    BN_t(a) = γ ⊙ (a - μ_t) / sqrt(σ²_t + ε) + β                       (evaluation)

``μ_t, σ²_t`` are running averages (momentum 0.1, unbiased variance, as ``nn.BatchNorm1d``)
kept separately for every time step ``t < max_len``; steps beyond reuse those of
``max_len - 1``. Parameters of a group named ``ih`` are ``weight_ln_ih``/``bias_ln_ih`` (layer
norm) or ``weight_bn_ih``/``bias_bn_ih`` and the buffers ``running_mean_ih``/``running_var_ih``
``(max_len, features)`` (batch norm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Params, ParamSpec, StepContext

NORMS = (None, "layer", "batch")
EPS = 1e-5
MOMENTUM = 0.1
BN_GAIN = 0.1  # Cooijmans et al.: γ = 0.1 keeps tanh/σ out of saturation early in training
_COUNT_KEY = "rnnkit.norm.step_count"


def check_norm(norm: object, allowed: tuple = NORMS) -> None:
    if norm not in allowed:
        raise ValueError(f"norm must be one of {allowed}, got {norm!r}")


def norm_specs(kind: str, group: str, size: int, shift: bool, max_len: int = 0) -> list[ParamSpec]:
    """Parameters (and, for batch norm, running-statistics buffers) of one normalized group."""
    if kind == "layer":
        specs = [ParamSpec(f"weight_ln_{group}", (size,), "ones")]
        return specs + ([ParamSpec(f"bias_ln_{group}", (size,), "zeros")] if shift else [])
    specs = [ParamSpec(f"weight_bn_{group}", (size,), BN_GAIN)]
    if shift:
        specs.append(ParamSpec(f"bias_bn_{group}", (size,), "zeros"))
    return specs + [
        ParamSpec(f"running_mean_{group}", (max_len, size), "zeros", buffer=True),
        ParamSpec(f"running_var_{group}", (max_len, size), "ones", buffer=True),
    ]


def layer_norm(p: Params, group: str, a: Tensor) -> Tensor:
    """``LN(a)`` over the last dimension with the group's gain and (optional) shift."""
    gain = p[f"weight_ln_{group}"]  # its shape, not a's: a constant when traced for ONNX
    return F.layer_norm(a, gain.shape, gain, p.get(f"bias_ln_{group}"), EPS)


def step_slots(ctx: StepContext, batch: int, max_len: int) -> int | Tensor:
    """Which time step's statistics each row of this step uses; advances the count.

    A row's slot is the number of steps its sequence has taken in this direction (so the
    backward direction of a bidirectional layer counts from each sequence's *end*, exactly
    like a forward run on the reversed sequence). Counts live in ``ctx.extra``, which the
    loop creates afresh for every layer-direction; rows that appear (the backward direction
    of a packed batch) start at 0, rows that end are dropped. ``ctx.extra["step"]`` (set by
    the single-step ``*Cell`` modules) offsets a fresh count.
    """
    count: list[int] | None = ctx.extra.get(_COUNT_KEY)
    if count is None:
        count = [int(ctx.extra.get("step", 0))] * batch
    elif len(count) < batch:
        count = count + [0] * (batch - len(count))
    else:
        count = count[:batch]
    ctx.extra[_COUNT_KEY] = [n + 1 for n in count]
    last = max_len - 1
    if not count:  # an empty batch (a single-step cell's input (0, H_in), as torch.nn's cells allow)
        return min(int(ctx.extra.get("step", 0)), last)
    if count[0] == count[-1]:  # every row at the same step (always true for dense batches)
        return min(count[0], last)
    return torch.tensor([min(n, last) for n in count])


def shift_slots(p: Params, step: int) -> dict[str, Tensor]:
    """``p`` with every running-statistics buffer ``(max_len, F)`` viewed from slot
    ``min(step, max_len - 1)`` on (views: updates reach the buffers). A direction run on such
    parameters reads and updates slot ``min(step + t, max_len - 1)`` at its step ``t``: what a
    run that started ``step`` steps earlier does there (the slot count clamps at the view's end)."""
    return {k: v[min(step, v.shape[0] - 1) :] if k.startswith("running_") else v for k, v in p.items()}


def batch_norm(
    p: Params, group: str, a: Tensor, slots: int | Tensor, training: bool, update: bool = True
) -> Tensor:
    """``BN_t(a)`` for one step ``a (B, F)``; updates the running statistics when training
    (unless ``update=False``: the diagnostics recompute a step's gates without moving them).

    In training the batch statistics are those of the step's rows; the running statistics
    updated are those of the first row's slot (rows of one step share a slot unless the
    backward direction of a packed batch with unequal lengths is running, where the longest
    sequence's slot is used). A step with a single row normalizes to the shift (variance 0)
    and leaves the running variance alone (its unbiased estimate is undefined); a step with no
    rows leaves both alone.
    """
    mean_buf, var_buf = p[f"running_mean_{group}"], p[f"running_var_{group}"]
    if training and a.shape[0] > 0:  # no rows (an empty batch): no statistics to take
        n = a.shape[0]
        mean = a.mean(0)
        var = a.var(0, unbiased=False)
        if update:
            with torch.no_grad():
                s = slots if isinstance(slots, int) else int(slots[0])
                mean_buf[s].lerp_(mean.detach(), MOMENTUM)
                if n > 1:
                    var_buf[s].lerp_(var.detach() * (n / (n - 1)), MOMENTUM)
    else:
        if not isinstance(slots, int):
            slots = slots.to(mean_buf.device)
        mean, var = mean_buf[slots], var_buf[slots]
    y = (a - mean) * torch.rsqrt(var + EPS) * p[f"weight_bn_{group}"]
    shift = p.get(f"bias_bn_{group}")
    return y if shift is None else y + shift
