"""The C++ entry points check ``batch_sizes`` against their tensors (sum == rows, first == the
state's batch, positive, non-increasing) and raise instead of reading or writing out of bounds:
the ops are public (``torch.ops.rnnkit_ext.forward`` & co.) and a graph traced at one shape may
replay them at another."""

from __future__ import annotations

import pytest
import torch

from rnnkit.kernels import norm

from .test_fused_kernels import require_ext

B, H, N = 3, 4, 7  # batch, hidden size, packed rows of the consistent sizes [3, 2, 2]
GOOD = [3, 2, 2]
BAD = {
    "sum below the rows": [3, 2, 1],
    "sum above the rows": [3, 3, 3],
    "first is not the batch": [2, 2, 2, 1],
    "increasing": [3, 1, 3],
    "zero": [3, 2, 2, 0],
    "negative": [3, 3, 2, -1],
    "empty": [],
}


def _t(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def _fused(kind, gates):
    def run(bsz):
        c0 = _t(B, H) if kind == 0 else _t(0)
        b_hh = _t(gates * H) if kind == 1 else None
        args = (_t(N, gates * H), _t(B, H), c0, _t(gates * H, H), b_hh, None, None, None, None, None)
        return torch.ops.rnnkit_ext.forward(kind, *args, bsz, False, False)

    return run


def _fused_backward(kind, gates):
    def run(bsz):
        res = _fused(kind, gates)(GOOD)  # saved buffers of a consistent forward
        gcn = _t(B, H) if kind == 0 else _t(0)
        return torch.ops.rnnkit_ext.backward(
            kind, _t(N, H), _t(B, H), gcn, list(res[3:]), _t(gates * H, H), None, None, None, None, None,
            kind == 1, bsz, False, False,
        )  # fmt: skip

    return run


def _variant_gru(bsz):
    args = (
        _t(N, 3 * H),
        _t(B, H),
        None,
        _t(3 * H, H),
        _t(3 * H),
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    )
    return torch.ops.rnnkit_ext.variant_forward(1, 0, *args, bsz, False, False)


def _norm_gru(bsz):
    return torch.ops.rnnkit_norm.forward(
        "gru", norm.LN, _t(N, 3 * H), _t(B, H), None, _t(3 * H, H), _t(3 * H), None, None, None, None,
        torch.ones(3 * H, dtype=torch.float64), None, None, None, None, None, None, None, None, None, None,
        bsz, False, False,
    )  # fmt: skip


def _bn_input(bsz):
    return torch.ops.rnnkit_norm.bn_input_forward(_t(N, H), torch.ones(H, dtype=torch.float64), None, bsz)


OPS = {
    "lstm": _fused(0, 4),
    "gru": _fused(1, 3),
    "rnn": _fused(2, 1),
    "lstm backward": _fused_backward(0, 4),
    "rnn backward": _fused_backward(2, 1),
    "variant gru": _variant_gru,
    "norm gru": _norm_gru,
    "bn input": _bn_input,
}


@pytest.mark.parametrize("op", OPS)
def test_consistent_batch_sizes_run(op):
    require_ext()
    OPS[op](GOOD)


# (the input batch norm has no state: [2, 2, 2, 1] is consistent there)
@pytest.mark.parametrize(
    "op, case",
    [(op, case) for op in OPS for case in BAD if (op, case) != ("bn input", "first is not the batch")],
)
def test_inconsistent_batch_sizes_raise(op, case):
    require_ext()
    with pytest.raises(RuntimeError, match="batch_sizes"):
        OPS[op](BAD[case])
