"""Recurrent batch norm outside the time loop: the input group and the running statistics.

The input group ``BN_t(x W_ihᵀ)`` depends on ``x`` only, so all its steps are normalized at
once (training: per-step batch statistics, in C++ by ``csrc/norm_input.cpp`` where the
extension is loaded; evaluation: the running statistics of each row's slot, one ``addcmul``);
after a training call :func:`update_running` updates every group's running statistics as
:func:`rnnkit.cells.norm.batch_norm` does step by step. Used by :mod:`.norm_ops`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..cells.base import Params
from ..cells.norm import EPS, MOMENTUM
from . import _common
from .norm import row_slots


def use_ext_for(x: Tensor) -> bool:
    """The compiled kernels for CPU float32/float64 data when available (``kernels.backend``,
    looked up per call so that tests can pin a backend)."""
    from .. import kernels

    return kernels.backend(x) == "ext"


def eval_stats(p: Params, grp: str, steps: int) -> Tensor:
    """``(2, S, F)``: per running-statistics slot the mean and ``1 / sqrt(var + ε)``, for the
    ``S = min(steps, max_len)`` slots a direction of ``steps`` steps can reach (the kernels look
    each row's slot up: see :func:`.norm.row_slots`)."""
    mean, var = p[f"running_mean_{grp}"][:steps], p[f"running_var_{grp}"][:steps]
    return torch.stack([mean, torch.rsqrt(var + EPS)])


def batch_norm_input(cell, p: Params, a: Tensor, bsz: list[int], reverse: bool, training: bool) -> Tensor:
    """``BN_t(x W_ihᵀ) + b_ih + b_hh`` for all rows at once (autograd), updating the running
    statistics of ``ih`` in training."""
    T, B, N = len(bsz), bsz[0], a.shape[0]
    bias = (p["bias_ih"] + p["bias_hh"]) if cell.bias else None
    # (is_compiling first: the backend lookup may load the extension, under a lock dynamo
    # cannot trace; under torch.compile the plain ops below run)
    if training and not torch.compiler.is_compiling() and use_ext_for(a):  # the same in C++
        w = p["weight_bn_ih"]
        save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (a, w, bias))
        y, mean, var = _common.run_fn(BNInput, save, a, w, bias, bsz, save)
        if reverse:
            mean, var = mean.flip(0), var.flip(0)
        update_running(p, "ih", mean, var, bsz[::-1] if reverse else bsz)
        return y
    if training:
        if all(b == B for b in bsz):  # dense: one reduction over the batch axis
            a3 = a.view(T, B, -1)
            mean = a3.mean(1, keepdim=True)  # (var_mean over a middle axis is slow on the CPU)
            d = a3 - mean
            var = (d * d).mean(1, keepdim=True)
            y = (d * torch.rsqrt(var + EPS)).view(N, -1)
            mean, var = mean.squeeze(1), var.squeeze(1)
        else:  # packed: segment sums over each step's rows
            counts = torch.tensor(bsz, device=a.device)
            t = torch.repeat_interleave(torch.arange(T, device=a.device), counts)
            n = counts.to(a.dtype).unsqueeze(1)
            mean = a.new_zeros(T, a.shape[1]).index_add(0, t, a) / n
            d = a - mean[t]
            var = a.new_zeros(T, a.shape[1]).index_add(0, t, d * d) / n
            y = d * torch.rsqrt(var + EPS)[t]
        if reverse:  # processing order
            mean, var = mean.flip(0), var.flip(0)
        update_running(p, "ih", mean, var, bsz[::-1] if reverse else bsz)
    else:  # y = a ⊙ scale + shift with per-slot scale = γ ρ, shift = b - μ scale: one pass over a
        mean, rs = eval_stats(p, "ih", T)
        scale = rs * p["weight_bn_ih"]
        shift = -mean * scale if bias is None else bias - mean * scale
        slots = row_slots(bsz, reverse, scale.shape[0], a.device)
        if all(b == B for b in bsz):  # dense: every step's rows share its slot, broadcast it
            k = slots.view(T, B)[:, 0]
            return torch.addcmul(shift[k].unsqueeze(1), a.view(T, B, -1), scale[k].unsqueeze(1)).view(N, -1)
        return torch.addcmul(shift[slots], a, scale[slots])
    y = y * p["weight_bn_ih"]
    return y if bias is None else y + bias


class BNInput(torch.autograd.Function):
    """``BN_t(a) ⊙ γ (+ b)`` with per-step statistics in training, on the compiled kernels
    (``csrc/norm_input.cpp``): ``(y, mean, var)``, statistics ``(T, G)`` in time order."""

    @staticmethod
    def forward(ctx, a, w, b, bsz, save=True):
        # save=False (no gradient wanted, decided by the caller: needs_input_grad ignores
        # no_grad): x^ is not kept, backward is never called
        y, xh, mean, var, rs = torch.ops.rnnkit_norm.bn_input_forward(a, w, b, list(bsz), save)
        ctx.save_for_backward(xh, rs, w)
        ctx.bsz, ctx.has_bias = list(bsz), b is not None
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @_common.first_order_only
    def backward(ctx, dy, _m, _v):
        xh, rs, w = ctx.saved_tensors
        da, dw, db = torch.ops.rnnkit_norm.bn_input_backward(dy, xh, rs, w, ctx.has_bias, ctx.bsz)
        return da, dw, db if ctx.has_bias else None, None, None


def update_running_groups(
    p: Params, stats: list[tuple[str, Tensor, Tensor]], bsz: Sequence[int], reverse: bool
) -> None:
    """:func:`update_running` of each ``(group, μ, σ²)`` a direction's kernel call returned (per-step
    statistics ``(T, F)`` in processing order, running ones ``(S, F)``; ``bsz`` in time order).
    No groups: nothing to do. Every group's four tensors must be on the device and of the dtype
    of the first group's ``μ`` (a ``ValueError`` naming the group otherwise, before any update)."""
    if not stats:
        return
    ns = bsz[::-1] if reverse else bsz
    rms = [p[f"running_mean_{grp}"] for grp, _, _ in stats]
    rvs = [p[f"running_var_{grp}"] for grp, _, _ in stats]
    _check_groups(stats, rms, rvs)
    if _ext_update(rms + rvs):  # every group in one C++ call (~12 us a call at the small shape)
        means, variances = [m for _, m, _ in stats], [v for _, _, v in stats]  # non-differentiable
        with torch.no_grad():
            torch.ops.rnnkit_norm.update_running(rms, rvs, means, variances, list(ns), MOMENTUM)
        return
    for grp, mean, var in stats:
        update_running(p, grp, mean, var, ns)


def _check_groups(stats: list[tuple[str, Tensor, Tensor]], rms: list[Tensor], rvs: list[Tensor]) -> None:
    """Every group's statistics on one device in one dtype, those of the first group's ``μ``: the
    backend is chosen by one tensor (:func:`_ext_update`), the C++ op's error names no group, and
    the PyTorch update would update the groups before a bad one and then fail."""
    ref = stats[0][1]
    dtype, device = ref.dtype, ref.device
    for (grp, mean, var), rm, rv in zip(stats, rms, rvs, strict=True):
        for i, t in enumerate((rm, rv, mean, var)):
            if t.dtype is not dtype or t.device != device:  # (names built on an error only: a hot path)
                name = (f"running_mean_{grp}", f"running_var_{grp}", "mean", "var")[i]
                raise ValueError(
                    f"update_running_groups: group {grp!r}: {name} must be {dtype} on {device} (as "
                    f"group {stats[0][0]!r}'s step mean), got {t.dtype} on {t.device}"
                )


def _ext_update(running: list[Tensor]) -> bool:
    """Whether ``rnnkit_norm::update_running`` updates these running statistics: the compiled
    kernels' data, contiguous, in eager mode (torch.compile traces the PyTorch expression).
    The first tensor's backend stands for all: callers check that they share device and dtype."""
    return (
        bool(running)
        and all(t.is_contiguous() for t in running)
        and not torch.compiler.is_compiling()
        and use_ext_for(running[0])
    )


def update_running(p: Params, grp: str, mean: Tensor, var: Tensor, ns: list[int]) -> None:
    """``running ← lerp(running, batch statistic, 0.1)`` for steps in processing order ``k`` at
    slot ``min(k, max_len - 1)``; steps past the last slot update it one after the other."""
    rm, rv = p[f"running_mean_{grp}"], p[f"running_var_{grp}"]
    T, K = mean.shape[0], min(mean.shape[0], rm.shape[0] - 1)
    with torch.no_grad():
        mean, var = mean.detach(), var.detach()
        if _ext_update([rm, rv]):
            # the same in one C++ call (csrc/norm_input.cpp): a handful of ATen ops per group
            # cost ~20 us each at the small shape
            return torch.ops.rnnkit_norm.update_running([rm], [rv], [mean], [var], list(ns), MOMENTUM)
        rm[:K].lerp_(mean[:K], MOMENTUM)
        n0 = ns[0]
        # a full batch every step (batch sizes are monotone in either order: the ends decide):
        # a scalar correction, no mask
        if n0 > 1 and ns[-1] == n0:
            unbiased = var * (n0 / (n0 - 1))
            rv[:K].lerp_(unbiased[:K], MOMENTUM)
        else:
            unbiased = var * torch.tensor([n / (n - 1) if n > 1 else 0.0 for n in ns], dtype=var.dtype,
                                          device=var.device).unsqueeze(1)  # fmt: skip
            keep = torch.tensor([n > 1 for n in ns], device=var.device).unsqueeze(1)
            rv[:K].copy_(torch.where(keep[:K], rv[:K].lerp(unbiased[:K], MOMENTUM), rv[:K]))
        for k in range(K, T):
            rm[-1].lerp_(mean[k], MOMENTUM)
            if ns[k] > 1:
                rv[-1].lerp_(unbiased[k], MOMENTUM)
