"""LRU (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks for Long Sequences",
arXiv:2303.06349): a diagonal complex linear recurrence::

    h_t = λ ⊙ h_{t−1} + γ ⊙ (B x_t),   y_t = Re(C h_t) + D x_t
    λ = exp(−exp(ν) + iθ),   γ = sqrt(1 − |λ|²)

``λ`` is initialized uniformly on the ring ``r_min ≤ |λ| ≤ r_max`` (``ν = log(−½ log(u₁(r_max² −
r_min²) + r_min²))``, in float64, finite at the ring's edges: :func:`ring_nu_log`) with phase
``θ = max_phase · u₂`` (trained as is; the paper's code trains ``log θ``); ``B = (B_re + i
B_im)``, entries ``N(0, 1/(2 H_in))``; ``C = (C_re + i C_im)``, entries ``N(0, 1/S)``. ``γ`` is
recomputed from ``λ`` at every call (the normalization stays exact while ``ν`` trains; the
paper's code instead trains ``log γ`` from that initial value). ``D`` is diagonal ``(H,)`` with
entries ``N(0, 1)`` as in the paper (its code draws ``D = normal(size=(H,))``) when ``input_size
== hidden_size``. Otherwise — a case the paper, with one model width ``H``, does not have —
``D`` is a dense ``(H, H_in)`` matrix with entries ``N(0, 1/H_in)``, not ``N(0, 1)``: each ``(D
x)_i`` then has the variance of the diagonal case's ``D_i x_i`` (the mean of ``x_j²``) instead
of ``H_in`` times it.

The state ``h`` is complex, of ``state_size`` features (default ``hidden_size``); ``h_0`` and
``h_n`` are complex ``(D·num_layers, N, S)``. The output ``y`` is real, ``hidden_size`` wide.
The stack is the plain recurrent stack (the paper's MLP/GLU blocks and norms are left to the
model). Parameters per layer-direction: ``nu_log, theta (S,)``, ``B_re, B_im (S, H_in)``,
``C_re, C_im (H, S)``, ``D``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _checks
from .base import ParallelRecurrent, Params

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


class LRU(ParallelRecurrent):
    """Linear Recurrent Unit stack; ``forward(input, hx=None, lengths=None) -> (output, h_n)``, ``h`` complex.

    Args: ``input_size, hidden_size, num_layers, batch_first, dropout, bidirectional, device,
    dtype`` as :class:`torch.nn.GRU` (no bias: the LRU has ``D x_t`` instead); keyword-only
    ``state_size`` (S), ``r_min``, ``r_max``, ``max_phase``.
    """

    dtypes = (torch.float32, torch.float64)  # its state is complex: complex32 lacks most operators

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None, *,
                 state_size: int | None = None, r_min: float = 0.9, r_max: float = 0.999,
                 max_phase: float = 2 * math.pi) -> None:  # fmt: skip
        # numbers, not bools: r_min=False, r_max=True passed as the ring [0, 1]
        if not (_checks.is_real(r_min) and _checks.is_real(r_max)) or not 0 <= r_min < r_max <= 1:
            raise ValueError(f"need 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
        if state_size is not None and (not _checks.is_int(state_size) or state_size <= 0):
            raise ValueError(f"state_size must be a positive int, got {state_size!r}")
        # the initial phases are U(0, max_phase): NaN or inf ones make every output NaN
        if not _checks.is_real(max_phase) or not 0 <= max_phase < math.inf:
            raise ValueError(f"max_phase must be a finite number >= 0, got {max_phase!r}")
        self._state_size = hidden_size if state_size is None else int(state_size)
        self.r_min, self.r_max, self.max_phase = float(r_min), float(r_max), float(max_phase)
        super().__init__(input_size, hidden_size, num_layers, False, batch_first, dropout, bidirectional,
                         device, dtype)  # fmt: skip

    @property
    def state_size(self) -> int:
        return self._state_size

    @property
    def state_dtype(self) -> torch.dtype:
        return _COMPLEX.get(self._ref.dtype)  # type: ignore[return-value]

    def _initial_state(self, hx, batch: int | None) -> Tensor | None:
        # the shared check names the state's dtype as the parameters' ("the parameters are
        # torch.complex128") and suggests converting the module to a real state's dtype
        if isinstance(hx, Tensor) and hx.dtype != self.state_dtype:
            _checks.fail(
                f"h_0 has dtype {hx.dtype} but the LRU's state is {self.state_dtype} (for "
                f"{self._ref.dtype} parameters); convert it with .to({self.state_dtype})"
            )
        return super()._initial_state(hx, batch)

    def param_shapes(self, n_in: int) -> dict[str, tuple[int, ...]]:
        S, H = self.state_size, self.hidden_size
        D = (H,) if n_in == H else (H, n_in)
        return {"nu_log": (S,), "theta": (S,), "B_re": (S, n_in), "B_im": (S, n_in),
                "C_re": (H, S), "C_im": (H, S), "D": D}  # fmt: skip

    def init_params(self, p: Params, n_in: int) -> None:
        u1, u2 = torch.rand_like(p["nu_log"]), torch.rand_like(p["theta"])
        p["nu_log"].copy_(ring_nu_log(u1, self.r_min, self.r_max))
        p["theta"].copy_(self.max_phase * u2)
        for name, std in (("B_re", (2 * n_in) ** -0.5), ("B_im", (2 * n_in) ** -0.5),
                          ("C_re", self.state_size**-0.5), ("C_im", self.state_size**-0.5)):  # fmt: skip
            p[name].normal_(0.0, std)
        p["D"].normal_(0.0, 1.0 if p["D"].dim() == 1 else n_in**-0.5)

    def coefficients(self, p: Params, x: Tensor) -> tuple[Tensor, Tensor]:
        """``λ (S,)`` and ``γ ⊙ B x`` ``(..., S)`` (complex)."""
        self._check_dtype()  # a layer converted with .to(torch.bfloat16) after construction
        nu = torch.exp(p["nu_log"])
        lam = torch.exp(torch.complex(-nu, p["theta"]))
        gamma = torch.sqrt(-torch.expm1(-2 * nu))  # sqrt(1 − |λ|²), accurate as |λ| -> 1
        flat = x.reshape(-1, x.shape[-1])
        # rows interleaved (re, im) per state feature: the GEMM's output *is* the complex
        # tensor (view_as_complex), no second full-size copy at peak memory
        w = torch.stack([p["B_re"], p["B_im"]], 1).reshape(2 * self.state_size, -1)
        w = w * gamma.repeat_interleave(2).unsqueeze(1)  # (2S, I)
        u = (flat @ w.t()).view(*x.shape[:-1], self.state_size, 2)
        return lam, torch.view_as_complex(u)

    def readout(self, p: Params, h: Tensor, x: Tensor) -> Tensor:
        """``Re(C h) + D x``: one real GEMM on the interleaved (re, im) state."""
        w = torch.stack([p["C_re"], -p["C_im"]], -1).reshape(self.hidden_size, 2 * self.state_size)
        y = torch.view_as_real(h).reshape(-1, 2 * self.state_size) @ w.t()
        y = y.view(*h.shape[:-1], self.hidden_size)  # not -1: an empty batch has no size to infer
        D = p["D"]
        if D.dim() == 1:  # in y's dtype: under autocast a float32 x or D would promote the output
            return torch.addcmul(y, x.to(y.dtype), D.to(y.dtype))
        return y + x @ D.t()

    def run(self, p: Params, x: Tensor, h0: Tensor | None, mask: Tensor | None, reverse: bool):
        lam, b = self.coefficients(p, x)
        h, h_n = self.scan(lam.expand_as(b), b, h0, mask, reverse)
        return self.readout(p, h, x), h_n

    def step_layer(self, p: Params, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        lam, b = self.coefficients(p, x)
        h = lam * s + b
        return self.readout(p, h, x), h

    def extra_repr(self) -> str:
        s = super().extra_repr().replace(", bias=False", "")
        if self.state_size != self.hidden_size:
            s += f", state_size={self.state_size}"
        return s + f", r_min={self.r_min}, r_max={self.r_max}, max_phase={self.max_phase:.4g}"


def ring_nu_log(u1: Tensor, r_min: float, r_max: float) -> Tensor:
    """``ν_log (S,)`` of ``|λ|² = u₁ (r_max² − r_min²) + r_min²`` for ``u₁ (S,)`` in ``[0, 1)``
    (the paper's ring), finite for every ring ``0 ≤ r_min < r_max ≤ 1``, in ``u₁``'s dtype.

    The paper's ``log(−½ log |λ|²)`` in ``u₁``'s dtype was ``inf`` where ``|λ|² = 0`` (``r_min =
    0`` and ``u₁ = 0``, 2⁻²⁴ per entry in float32; every entry once ``r_max²`` underflows) and
    ``−inf`` where ``|λ|²`` rounds to 1 (``r_max = 1``, ``u₁`` near 1): a NaN gradient at the
    first step. So in float64, as ``ν = −log r_max − ½ log1p(−(1 − u₁)(1 − q²))``, ``q = r_min /
    r_max`` (the same value, ``|λ|²`` never formed), then ``|λ|`` kept in ``[tiny, 1)``, ``tiny``
    the dtype's smallest normal number (``ν`` in ``[tiny, −log tiny]``): the distribution is the
    paper's up to that rounding."""
    q2 = (r_min / r_max) ** 2
    nu = -math.log(r_max) - 0.5 * torch.log1p(-(1 - u1.double()) * (1 - q2))
    tiny = torch.finfo(u1.dtype).tiny
    return torch.log(nu.clamp(tiny, -math.log(tiny))).to(u1.dtype)
