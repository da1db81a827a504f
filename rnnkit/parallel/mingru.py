"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?", arXiv:2410.01201), eq. for minGRU::

    z_t = σ(W_z x_t + b_z),   h̃_t = W_h x_t + b_h,   h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t

The gates depend on ``x_t`` only, so the recurrence is the linear scan
``a_t = 1 − z_t, b_t = z_t ⊙ h̃_t``. With ``log_space=True`` the paper's log-space form is
used instead: ``h̃_t = g(W_h x_t + b_h)`` with ``g(v) = v + 0.5`` for ``v ≥ 0`` and ``σ(v)``
otherwise (so the state stays positive), and the scan runs on logarithms (Heinsen's
``cumsum`` + ``logcumsumexp``), ``log h_t = a*_t + logcumsumexp_{k≤t}(log b_k − a*_k)``,
``a*_t = Σ_{k≤t} log a_k``. That form is the paper's GPU recipe; on the CPU ``logcumsumexp``
is slow and ``a*`` loses absolute precision over very long sequences, so the default is the
ordinary scan. Parameters: ``weight_ih_l{k} (2H, H_in)`` (rows ``z`` then ``h̃``),
``bias_ih_l{k} (2H,)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _checks, dispatch
from ..cells.base import linear
from ..kernels._common import batched
from .base import ParallelRecurrent, Params, join_autocast, plain_scan, uniform_


def g(v: Tensor) -> Tensor:
    """The paper's positive activation: ``v + 0.5`` if ``v ≥ 0`` else ``σ(v)``."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def log_g(v: Tensor) -> Tensor:
    """``log g(v)``, computed without forming ``g(v)`` for negative ``v``."""
    # clamp, not relu: both keep the unselected branch's log finite, but relu's derivative at
    # v = 0 is 0 where g's (the v >= 0 branch, v + 0.5) is 1: a zero input of a bias-free layer
    # had no gradient through h̃
    return torch.where(v >= 0, torch.log(v.clamp(min=0) + 0.5), -F.softplus(-v))


def _heinsen(log_a: Tensor, log_b: Tensor, h0: Tensor | None) -> Tensor:
    """Heinsen's scan, forward in time: ``h (T, B, S)`` from ``log a, log b (T, B, S)`` and
    ``h0 (B, S)`` (linear space, >= 0, or None)."""
    a_star = torch.cumsum(log_a, 0)
    h = torch.exp(a_star + torch.logcumsumexp(log_b - a_star, 0))
    # h0's part, (Π a) h0, added in linear space: as log h0 (a step −1 with b = h0) a zero h0
    # (hx=None's state, or one underflowed to 0) was log 0 = −inf, whose derivative gave NaN
    return h if h0 is None else torch.addcmul(h, torch.exp(a_star), h0)


class _LogScan(torch.autograd.Function):
    """:func:`_heinsen` with the linear recurrence's own backward. Autograd through ``cumsum``
    and ``logcumsumexp`` subtracts sums that grow with ``T`` (and torch's ``logcumsumexp``
    backward subtracts the gradient's positive and negative parts): in float32 a minGRU's
    parameter gradients were 0.6% off float64 at T = 500 and 30% at T = 5000, its outputs
    2e-5 and 2e-4. The gradient of ``h_t = a_t h_{t−1} + b_t`` is a reverse linear scan,
    ``g_t = ∂L/∂h_t + a_{t+1} g_{t+1}``, with ``∂log a_t = g_t a_t h_{t−1}``, ``∂log b_t =
    g_t b_t``, ``∂h0 = a_0 g_0``: no cancellation. Written with differentiable ops (the scan
    op is differentiable again), so a gradient taken with ``create_graph=True`` is too."""

    @staticmethod
    def forward(ctx, log_a: Tensor, log_b: Tensor, h0: Tensor | None) -> Tensor:
        h = _heinsen(log_a, log_b, h0)
        ctx.save_for_backward(log_a, log_b, h, h0)
        return h

    @staticmethod
    def backward(ctx, gh: Tensor):
        log_a, log_b, h, h0 = ctx.saved_tensors
        a = torch.exp(log_a).to(gh.dtype)  # (autocast may have given h another dtype)
        a_next = torch.cat([a[1:], torch.zeros_like(a[:1])])
        g = torch.ops.rnnkit.linear_scan(a_next, gh.contiguous(), None, 0, True)
        first = torch.zeros_like(h[:1]) if h0 is None else h0.unsqueeze(0).to(h.dtype)
        h_prev = torch.cat([first, h[:-1]])
        return g * a * h_prev, g * torch.exp(log_b), (None if h0 is None else a[0] * g[0])


def log_scan(
    log_a: Tensor, log_b: Tensor, h0: Tensor | None, mask: Tensor | None, reverse: bool, dtype: torch.dtype
):
    """The log-space scan ``h_t = a_t h_{t−1} + b_t`` over ``(T, B, S)`` for positive
    ``a, b`` (logs) and ``h0 >= 0``; returns ``(h, h_final)`` in linear space, in ``dtype`` (the
    layer's: its input projection's, which CUDA's autocast keeps in half where it runs softplus,
    and so the logarithms, in float32). Half precision runs in float32: ``Σ log a`` reaches
    ~-100 within a few hundred steps, where bfloat16's spacing is 0.5 to 1 (a factor e^0.5 on
    ``h``; under autocast the outputs were 60-100% off float32's at T = 200)."""
    if dtype in (torch.float16, torch.bfloat16):
        log_a, log_b = log_a.float(), log_b.float()
        h0 = None if h0 is None else h0.float()
    if mask is not None:  # padded steps: a = 1, b = 0 (a very small finite log keeps grads finite)
        tiny = torch.finfo(log_b.dtype).min / 4
        log_a = torch.where(mask, log_a, torch.zeros((), dtype=log_a.dtype))
        log_b = torch.where(mask, log_b, torch.full((), tiny, dtype=log_b.dtype))
    if reverse:
        log_a, log_b = log_a.flip(0), log_b.flip(0)
    if dispatch._plain_ops_needed():  # torch.func transforms, forward AD: no custom autograd node
        h = _heinsen(log_a, log_b, h0)
    else:
        h = _LogScan.apply(log_a, log_b, h0)
    h = h.to(dtype)
    if reverse:
        h = h.flip(0)
    return h, h[0 if reverse else -1]


def check_positive_state(s: Tensor | None) -> None:
    """log_space=True's state is positive (or 0: hx=None's start, or an h_n underflowed to 0);
    a negative or NaN one is refused: the log-space form's h̃ = g(v) keeps it positive."""
    if s is not None and not bool((s >= 0).all()):
        bad = s[~(s >= 0)]  # (the message named no value: how many, which)
        _checks.fail(
            "log_space=True keeps the state positive: the initial state must be >= 0 everywhere "
            f"(use log_space=False for states of any sign), got {bad.numel()} of its {s.numel()} entries "
            f"negative or NaN (the first: {bad[0].item()})"
        )


def differentiable_backward(ctx, gh: Tensor, coefficients):
    """The backward of a fused scan Function (saved ``u, a, h, h0``) when the gradient is taken
    with ``create_graph=True`` or batched (``is_grads_batched=True``, under vmap): the in-place
    backward below writes into views of one buffer and its ops have no derivative nor batching
    rule, so it recomputes ``h`` from ``coefficients(u)`` in plain ops
    (:func:`~rnnkit.parallel.base.plain_scan`) and differentiates that, with a graph: the same
    numbers, differentiable any number of times."""
    u, _, _, h0 = ctx.saved_tensors
    need = [n and t is not None for t, n in zip((u, h0), ctx.needs_input_grad[:2], strict=True)]
    with torch.enable_grad():  # (a batched backward comes here with grad mode off)
        a, b = coefficients(u)
        h = plain_scan(a, b, h0, ctx.reverse)
        wrt = [t for t, n in zip((u, h0), need, strict=True) if n]
        grads = iter(torch.autograd.grad(h, wrt, gh, create_graph=True, allow_unused=True) if wrt else ())
    return (*(next(grads) if n else None for n in need), None)


def scan_forward(ctx, u: Tensor, h0: Tensor | None, reverse: bool, coefficients) -> Tensor:
    """The forward of a fused scan Function: ``h`` from ``(a, b) = coefficients(u)``, saving
    ``u, a, h, h0`` for its hand-written backward (and :func:`differentiable_backward`)."""
    a, b = coefficients(u)
    h = torch.ops.rnnkit.linear_scan(a, b, h0, 0, reverse)
    ctx.save_for_backward(u, a, h, h0)
    ctx.reverse = reverse
    return h


def gru_coefficients(u: Tensor) -> tuple[Tensor, Tensor]:
    """minGRU's ``(a, b) = (1 − z, z ⊙ h̃)`` from ``u = [k, h̃]``."""
    k, v = u.chunk(2, -1)
    a = torch.sigmoid(-k)  # 1 − z
    return a, torch.addcmul(v, a, v, value=-1)  # z ⊙ h̃ = h̃ − (1 − z) ⊙ h̃


class _MinGRUScan(torch.autograd.Function):
    """``u = [k, h̃] (T, B, 2H) -> h``, with a hand-written backward: training is memory-bound,
    so it keeps 3 saved tensors (``u, a, h``) and writes ``∂u`` in place (autograd's
    composition would allocate ~8 full-size temporaries). Under ``create_graph=True``
    (grad mode on in the backward) it differentiates plain ops instead."""

    @staticmethod
    def forward(ctx, u: Tensor, h0: Tensor | None, reverse: bool) -> Tensor:
        return scan_forward(ctx, u, h0, reverse, gru_coefficients)

    @staticmethod
    def backward(ctx, gh: Tensor):
        # create_graph=True, or a batched gh (jacobian(vectorize=True)): vmap cannot batch the in-place ops
        if torch.is_grad_enabled() or batched((gh,)):
            return differentiable_backward(ctx, gh, gru_coefficients)
        u, a, h, h0 = ctx.saved_tensors
        v = u.chunk(2, -1)[1]
        da, db, dh0 = torch.ops.rnnkit.linear_scan_backward(gh, a, h, h0, 0, ctx.reverse)
        du = torch.empty_like(u)
        dk, dv = du.chunk(2, -1)
        dv.copy_(db).addcmul_(db, a, value=-1)  # ∂h̃ = ∂b ⊙ z  (in place: no temporaries)
        dz = da.neg_().addcmul_(db, v).mul_(a)  # (∂b ⊙ h̃ − ∂a) ⊙ (1 − z)
        dk.copy_(dz).addcmul_(dz, a, value=-1)  # ... ⊙ z: ∂k = ∂z σ'(k)
        return du, (dh0 if h0 is not None else None), None


class MinGRU(ParallelRecurrent):
    """minGRU layer stack; ``forward(input, hx=None, lengths=None) -> (output, h_n)`` like ``torch.nn.GRU``.

    Args: as :class:`torch.nn.GRU`, plus ``log_space`` (the paper's positive log-space form).
    Shapes: ``output (L, N, D*H)``, ``h_n (D*num_layers, N, H)``.
    """

    gates = 2
    _fused_scan: type[torch.autograd.Function] | None = _MinGRUScan  # u -> h, hand-written backward

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, log_space: bool = False) -> None:  # fmt: skip
        if not isinstance(log_space, bool):  # as bias and batch_first: log_space='False' is true
            raise TypeError(f"log_space should be of type bool, got: {type(log_space).__name__}")
        self.log_space = log_space
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype)  # fmt: skip

    def param_shapes(self, n_in: int) -> dict[str, tuple[int, ...]]:
        G = self.gates * self.hidden_size
        return {"weight_ih": (G, n_in), **({"bias_ih": (G,)} if self.bias else {})}

    def init_params(self, p: Params, n_in: int) -> None:
        for t in p.values():
            uniform_(t, self.hidden_size)

    def project(self, p: Params, x: Tensor) -> Tensor:
        """All gates of all steps in one GEMM: ``(..., I) -> (..., G)``."""
        flat = x.reshape(-1, x.shape[-1])
        u = linear(flat, p["weight_ih"], p.get("bias_ih"))
        return u.view(*x.shape[:-1], u.shape[-1])  # not -1: an empty batch has no size to infer

    def coefficients(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b)`` (or ``(log a, log b)`` in log space) from the projected gates ``u``."""
        k, v = u.chunk(2, -1)
        if self.log_space:
            return -F.softplus(k), -F.softplus(-k) + log_g(v)
        return gru_coefficients(u)

    def run(self, p: Params, x: Tensor, h0: Tensor | None, mask: Tensor | None, reverse: bool):
        u = self.project(p, x)
        h0 = join_autocast(h0, u)  # every path below, as ParallelRecurrent.scan does
        # torch.func transforms and forward AD take plain ops (self.scan's): the fused Function's
        # node is opaque to them
        fused = self._fused_scan is not None and not self.log_space and mask is None
        if fused and not dispatch._plain_ops_needed():
            h = self._fused_scan.apply(u, h0, reverse)  # the same numbers, fewer passes and buffers
            return h, h[0 if reverse else -1]
        a, b = self.coefficients(u)
        if self.log_space:
            check_positive_state(h0)
            return log_scan(a, b, h0, mask, reverse, u.dtype)
        return self.scan(a, b, h0, mask, reverse)

    def _next_layer_input(self, outs: list[Tensor], mask: Tensor | None, k: int) -> Tensor:
        x = super()._next_layer_input(outs, mask, k)
        if k == self.num_layers - 1 and len(outs) == 1 and mask is None and x.requires_grad:
            # the output is the scan's h, which its backward reads (the fused Functions return a
            # view of it): a copy, so that the caller may modify it in place as torch.nn's
            # (nn.Dropout(inplace=True)); one output-sized copy per call that records a graph
            x = x.clone()
        return x

    def _initial_state(self, hx, batch: int | None) -> Tensor | None:
        h = super()._initial_state(hx, batch)
        if self.log_space:
            # step()'s check: its update is linear, so a state <= 0 ran silently (forward refuses
            # it), and the state it returned then failed the next forward call
            check_positive_state(h)
        return h

    def step_layer(self, p: Params, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        u = self.project(p, x)
        a, b = self.coefficients(u)
        if self.log_space:  # (in u's dtype: CUDA's autocast runs softplus in float32)
            a, b = a.exp().to(u.dtype), b.exp().to(u.dtype)
        h = torch.addcmul(b, a, join_autocast(s, b))  # (a float32 state would promote h)
        return h, h

    def extra_repr(self) -> str:
        return super().extra_repr() + (", log_space=True" if self.log_space else "")
