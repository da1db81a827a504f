"""``reset_parameters`` of the parallel layers (their own initialization, not torch's) after what a
PyTorch user does to a weight: a parametrization, pruning, weight norm."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, prune

import rnnkit

LAYERS = {
    "mingru": lambda: rnnkit.MinGRU(3, 4, num_layers=2, bidirectional=True),
    "minlstm": lambda: rnnkit.MinLSTM(3, 4),
    "qrnn": lambda: rnnkit.QRNN(3, 4, num_layers=2),
    "lru": lambda: rnnkit.LRU(3, 3, state_size=5),
}


def _old_weight_norm(m: nn.Module, name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated, still in use
        nn.utils.weight_norm(m, name)


CHANGES = {  # name -> (f(module, attribute), the tensor the draw lands in, or None: the weight itself)
    "orthogonal": (lambda m, a: parametrizations.orthogonal(m, a), "parametrizations.{}.original"),
    "prune": (lambda m, a: prune.l1_unstructured(m, a, amount=0.5), "{}_orig"),
    "parametrize-weight_norm": (lambda m, a: parametrizations.weight_norm(m, a), None),
    "old-weight_norm": (_old_weight_norm, None),
}


def _make(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return LAYERS[name]()


@pytest.mark.parametrize("name", LAYERS)
def test_a_plain_modules_draws_are_unchanged(name):
    m, old = _make(name), _make(name)
    torch.manual_seed(1)
    m.reset_parameters()
    torch.manual_seed(1)
    with torch.no_grad():  # what reset_parameters did before it drew where each weight is held
        for k in range(old.num_layers):
            for d in range(old.num_directions):
                old.init_params(old.layer_params(k, d), old.layer_input_size(k))
    for (key, want), got in zip(old.state_dict().items(), m.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("name", LAYERS)
def test_reset_parameters_redraws_a_changed_weight(name, change):
    """The draw went into ``getattr(module, attr)``: for a parametrized or pruned weight a computed
    tensor, so the weight was silently not reset."""
    plain, m = _make(name), _make(name)
    attr = next(a for a, p in m.named_parameters() if p.dim() == 2)
    f, where = CHANGES[change]
    f(m, attr)
    for mod in (plain, m):
        torch.manual_seed(1)
        mod.reset_parameters()
    want = getattr(plain, attr)
    if where is None:  # drawn whole, set through the weight norm: the weight is the plain draw
        m(torch.randn(2, 1, 3))  # the old weight_norm computes the weight in a forward pre-hook
        torch.testing.assert_close(getattr(m, attr), want, rtol=1e-12, atol=1e-12)
    else:  # drawn where the weight is held, as torch.nn's and rnnkit's standard layers do
        torch.testing.assert_close(m.get_parameter(where.format(attr)), want, rtol=0, atol=0)
    for key, t in plain.named_parameters():  # the other weights drawn as in a plain module
        if key != attr:
            torch.testing.assert_close(getattr(m, key), t, rtol=0, atol=0, msg=key)


def _forced_u1(monkeypatch, value: float) -> None:
    """The ring's first draw ``u1`` (the first ``rand_like`` of each layer) with entry 0 forced."""
    real, calls = torch.rand_like, iter(range(10**6))

    def rand_like(t, *args, **kw):
        u = real(t, *args, **kw)
        if next(calls) % 2 == 0:  # u1, then u2 (the phases)
            u.view(-1)[0] = value
        return u

    monkeypatch.setattr(torch, "rand_like", rand_like)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("u1", "ring"),
    [(0.0, {"r_min": 0.0}), (0.0, {"r_min": 0.0, "r_max": 1e-200}), (1.0, {"r_max": 1.0})],
)
def test_lru_ring_init_is_finite_at_the_ring_edges(monkeypatch, dtype, u1, ring):
    """u1 = 0 with r_min = 0 (2^-24 per entry in float32) gave nu_log = inf, u1 near 1 with
    r_max = 1 nu_log = -inf (|λ|² rounded to 1), a tiny r_max inf everywhere: each a NaN
    gradient at the first step. Now nu_log is finite and so is every gradient."""
    u1 = min(u1, 1 - torch.finfo(dtype).eps / 2)  # 1: the largest draw below 1 in dtype
    _forced_u1(monkeypatch, u1)
    torch.manual_seed(0)
    m = rnnkit.LRU(3, 3, num_layers=2, bidirectional=True, dtype=dtype, **ring)
    for p in m.parameters():
        assert torch.isfinite(p).all()
    out, h_n = m(torch.randn(6, 2, 3, dtype=dtype))
    (out.sum() + torch.view_as_real(h_n).sum()).backward()
    for name, p in m.named_parameters():
        assert torch.isfinite(p.grad).all(), name


def test_lru_ring_init_is_the_papers_distribution(monkeypatch):
    """Away from the edges nu_log is the paper's log(-½ log(u1 (r_max² − r_min²) + r_min²)), and
    with r_min = 0 over many seeds every entry is finite, |λ| in [r_min, r_max)."""
    u = torch.linspace(0, 1, 1001, dtype=torch.float64)[1:-1]
    monkeypatch.setattr(torch, "rand_like", lambda t, *a, **k: u.to(t.dtype).clone())
    for r_min, r_max in [(0.9, 0.999), (0.0, 1.0), (0.5, 0.7)]:
        m = rnnkit.LRU(3, 3, state_size=999, r_min=r_min, r_max=r_max)
        want = torch.log(-0.5 * torch.log(u * (r_max**2 - r_min**2) + r_min**2))
        torch.testing.assert_close(m.nu_log_l0.detach(), want, rtol=1e-12, atol=0)
    monkeypatch.undo()
    for seed in range(50):
        torch.manual_seed(seed)
        m = rnnkit.LRU(3, 3, state_size=4096, r_min=0.0, dtype=torch.float32)
        radius = torch.exp(-torch.exp(m.nu_log_l0.detach().double()))
        assert torch.isfinite(m.nu_log_l0).all() and (radius < 0.999).all() and (radius > 0).all()


def test_lru_phase_and_projection_init_are_the_papers(monkeypatch):
    """θ = max_phase · u₂; B's entries N(0, 1/(2 H_in)), C's N(0, 1/S) (the module docstring): a
    θ of u₂ alone, a B of N(0, 1/H_in) and a C of N(0, 1/H) survived every test."""
    u = torch.linspace(0, 1, 1001, dtype=torch.float64)[1:-1]
    with monkeypatch.context() as mp:
        mp.setattr(torch, "rand_like", lambda t, *a, **k: u.to(t.dtype).clone())
        for max_phase in (2 * math.pi, 1.5):
            m = rnnkit.LRU(3, 3, state_size=999, max_phase=max_phase)
            torch.testing.assert_close(m.theta_l0.detach(), max_phase * u, rtol=1e-12, atol=0)
    torch.manual_seed(0)
    m = rnnkit.LRU(200, 100, state_size=300)  # H_in, H, S all different
    for name, std in (("B_re", 400**-0.5), ("B_im", 400**-0.5), ("C_re", 300**-0.5), ("C_im", 300**-0.5)):
        got = float(getattr(m, f"{name}_l0").detach().std())
        assert abs(got / std - 1) < 0.03, (name, got, std)
