"""Building zoo layers for tests: every variant, randomized parameters, initial states."""

from __future__ import annotations

import torch

import rnnkit

LAYERS = {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU, "rnn": rnnkit.RNN}
CELLS = {"lstm": rnnkit.LSTMCell, "gru": rnnkit.GRUCell, "rnn": rnnkit.RNNCell}

# (family, cell options): every option of the issue, alone and in the combinations the
# papers allow. ``proj_size`` is a layer argument, carried in the options for LSTM cases.
LSTM_CONFIGS = [
    {"peephole": True},
    {"peephole": True, "proj_size": 2},
    {"norm": "layer"},
    {"norm": "layer", "proj_size": 2, "peephole": True},
    {"norm": "batch"},
    {"norm": "batch", "max_len": 2, "proj_size": 2},
    {"forget_bias": 1.0},
    {"input_gate": False},  # NIG
    {"forget_gate": False},  # NFG
    {"output_gate": False},  # NOG
    {"input_activation": False},  # NIAF
    {"output_activation": False},  # NOAF
    {"coupled_gates": True},  # CIFG
    {"full_gate_recurrence": True},  # FGR
    {"full_gate_recurrence": True, "peephole": True, "proj_size": 2},
    {"coupled_gates": True, "peephole": True, "full_gate_recurrence": True},
    {"input_gate": False, "output_gate": False, "peephole": True, "norm": "layer"},
    {"norm": "batch", "peephole": True, "coupled_gates": True, "output_activation": False},
]
GRU_CONFIGS = [
    {"reset_after": False},
    {"norm": "layer"},
    {"variant": "mut1"},
    {"variant": "mut2"},
    {"variant": "mut3"},
    {"variant": "mut1", "reset_after": True},
    {"variant": "mut2", "reset_after": True},
]
RNN_CONFIGS = [{"norm": "layer"}, {"norm": "layer", "nonlinearity": "relu"}]
CONFIGS = (
    [("lstm", o) for o in LSTM_CONFIGS]
    + [("gru", o) for o in GRU_CONFIGS]
    + [("rnn", o) for o in RNN_CONFIGS]
)


def config_id(case) -> str:
    family, opts = case
    return family + "-" + "-".join(f"{k}={v}" for k, v in opts.items())


def build(family: str, opts: dict, I: int, H: int, L: int = 1, seed: int = 0, **kw):
    """The layer with every parameter perturbed (so zero/one-initialized options matter)
    and, for batch norm, random running statistics."""
    torch.manual_seed(seed)
    m = LAYERS[family](I, H, L, **opts, **kw)
    randomize(m)
    return m


def randomize(m: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for name, b in m.named_buffers():
            if "running_mean" in name:
                b.copy_(0.5 * torch.randn_like(b))
            elif "running_var" in name:
                b.copy_(0.5 + torch.rand_like(b))


def initial_state(m, B: int | None) -> tuple:
    """Random initial state of every state tensor (FGR's gate activations in (0, 1))."""
    shapes = m.state_shapes(B)
    names = m.cells[-1].state_names
    return tuple(
        (torch.rand(s) if n == "gates" else torch.randn(s)).requires_grad_(True)
        for s, n in zip(shapes, names)
    )


def as_hx(state: tuple):
    return state if len(state) > 1 else state[0]


def as_tuple(s) -> tuple:
    return tuple(s) if isinstance(s, (tuple, list)) else (s,)


def ref_options(family: str, opts: dict) -> dict:
    """Options as the reference reads them (``proj_size`` lives in the parameters)."""
    return {k: v for k, v in opts.items() if k != "proj_size"}
