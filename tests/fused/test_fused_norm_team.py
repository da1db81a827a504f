"""The batch-norm LSTM in training on its team of row blocks (``csrc/norm_team.h``), forward
and backward, against the loop (float64: shapes at the edges of the team's row blocks; float32
against the float64 loop)."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit

from .test_concurrent_calls import run_threads
from .test_fused_kernels import require_ext


def _train_call(m: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Output, final state, the gradients of the input and every parameter, and the buffers."""
    torch.manual_seed(1)
    out, (h, c) = m(x)
    loss = (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum() + c.sum()
    return [out, h, c, *torch.autograd.grad(loss, [x, *m.parameters()]), *m.buffers()]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("B,H", [(2, 1024), (3, 683)])
def test_fewer_than_four_rows_in_a_wide_step(threads, B, H, num_threads):
    """Regression: a step of B < 4 rows but at least 8192 values (B x 4H) asked the team for
    B / 4 = 0 row blocks, so no thread owned a row: the output was never written (garbage) and
    the gradients were wrong, on any number of threads."""
    require_ext()
    num_threads(threads)
    torch.manual_seed(0)
    a, b = (rnnkit.LSTM(3, H, norm="batch", impl=impl) for impl in ("fused", "loop"))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, B, 3, requires_grad=True)
    for u, v in zip(_train_call(a, x), _train_call(b, x), strict=True):
        torch.testing.assert_close(u, v, atol=1e-10, rtol=1e-10)


PACKED = [4] + [1] * 23  # 24 rows, then one: every row block but the first idle from step 2 on


@pytest.mark.parametrize("threads", [3, 4])  # more than the cores (2 here): oversubscribed
@pytest.mark.parametrize(
    "kw,lengths",
    [
        ({"bidirectional": True}, PACKED),  # reverse: the blocks' rows start late
        (
            {"proj_size": 5, "peephole": True, "bias": False, "bidirectional": True},
            [9] * 3 + [7] * 10 + [2] * 11,
        ),
        ({"zoneout": 0.2, "recurrent_dropout": 0.3, "max_len": 3}, None),
    ],
)
def test_team_with_idle_row_blocks_equals_loop(threads, kw, lengths, num_threads):
    """A team of 3 or 4 threads on a batch of 24 rows (6 blocks of 4 at most; 4H = 388, odd
    feature counts: the vector loops' tails): packed steps where some blocks have no rows, so
    their threads only meet at the barriers; forward, backward and the running statistics
    against the loop."""
    require_ext()
    num_threads(threads)
    torch.manual_seed(0)
    a, b = (rnnkit.LSTM(5, 97, norm="batch", impl=impl, **kw) for impl in ("fused", "loop"))
    with torch.no_grad():
        for name, w in a.named_parameters():
            if "_bn_" in name or "peephole" in name:
                w.uniform_(0.5, 1.5)
    b.load_state_dict(a.state_dict())
    T = max(lengths) if lengths else 5
    x = torch.randn(T, 24, 5, requires_grad=True)

    def call(m):
        torch.manual_seed(1)
        out, (h, c) = m(pack_padded_sequence(x, torch.tensor(lengths)) if lengths else x)
        out = out.data if lengths else out
        loss = (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum() + c.sum()
        return [out, h, c, *torch.autograd.grad(loss, [x, *m.parameters()]), *m.buffers()]

    for u, v in zip(call(a), call(b), strict=True):  # steps of 1-2 rows: ill-conditioned
        torch.testing.assert_close(u, v, atol=1e-9, rtol=1e-9)


def test_concurrent_training_calls_on_teams(num_threads):
    """Python threads training their own batch-norm LSTMs at once (torch releases the GIL in
    the kernels): each call opens its own OpenMP team, whose barriers must not mix with the
    others'; every call gives what it gives alone."""
    require_ext()
    num_threads(2)
    torch.manual_seed(0)
    proto = rnnkit.LSTM(9, 96, norm="batch", impl="fused", proj_size=7, bidirectional=True)
    x, lengths = torch.randn(6, 40, 9), torch.tensor([6] * 10 + [4] * 20 + [1] * 10)

    def job(m: torch.nn.Module) -> list[torch.Tensor]:
        xi = x.clone().requires_grad_(True)
        out, (h, c) = m(pack_padded_sequence(xi, lengths))
        loss = (out.data * out.data).sum() + h.sum() + c.sum()
        return [out.data, h, c, *torch.autograd.grad(loss, [xi, *m.parameters()]), *m.buffers()]

    want = job(copy.deepcopy(proto))
    failures: list[str] = []

    def worker() -> None:
        for _ in range(3):
            try:
                for u, v in zip(job(copy.deepcopy(proto)), want, strict=True):
                    torch.testing.assert_close(u, v, atol=1e-12, rtol=1e-12)
            except Exception as e:  # noqa: BLE001 - reported by the main thread
                failures.append(repr(e))

    run_threads([threading.Thread(target=worker) for _ in range(4)], failures)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize(
    "kw,H,lengths",
    [
        ({"peephole": True, "zoneout": (0.3, 0.2), "recurrent_dropout": 0.3}, 100, None),
        ({"bidirectional": True, "zoneout": 0.2}, 64, [7] * 16 + [6] * 8 + [5] * 16 + [3] * 8),
        ({"num_layers": 2, "bias": False}, 72, None),
    ],
)
@pytest.mark.parametrize("grad", [True, False])
def test_float32_team_equals_float64_loop(threads, kw, H, lengths, grad, num_threads):
    """The team's float32 code (AVX-512 where the CPU has it: the rows with per-column
    statistics, the one-pass column sums and their finishing, the backward's column sums; H =
    100 and 72: partial last vectors) on 2-3 threads, against the float64 loop under the same
    masks (zoneout, recurrent dropout), with and without the tensors saved for backward, dense
    and packed (reverse: the input group one step at a time), with peepholes and two layers."""
    require_ext()
    num_threads(threads)
    torch.manual_seed(0)
    a = rnnkit.LSTM(24, H, norm="batch", impl="fused", max_len=8, dtype=torch.float32, **kw)
    b = rnnkit.LSTM(24, H, norm="batch", impl="loop", max_len=8, dtype=torch.float64, **kw)
    with torch.no_grad():
        for name, w in a.named_parameters():
            w.uniform_(0.5, 1.5) if "_bn_" in name or "peephole" in name else w.uniform_(-0.3, 0.3)
    b.load_state_dict({k: v.double() for k, v in a.state_dict().items()})
    T = max(lengths) if lengths else 7
    x = torch.randn(T, 48, 24, dtype=torch.float64)

    def call(m, dtype):
        xi = x.to(dtype).requires_grad_(grad)
        torch.manual_seed(1)  # the call's masks
        with torch.set_grad_enabled(grad):
            out, (h, c) = m(pack_padded_sequence(xi, torch.tensor(lengths)) if lengths else xi)
        out = out.data if lengths else out
        res = [out, h, c]
        if grad:
            loss = (out * torch.linspace(-1, 1, out.numel(), dtype=dtype).view(out.shape)).sum() + c.sum()
            res += torch.autograd.grad(loss, [xi, *m.parameters()])
        return [t.double() for t in [*res, *m.buffers()]]

    for u, v in zip(call(a, torch.float32), call(b, torch.float64), strict=True):
        torch.testing.assert_close(u, v, atol=2e-4 * max(1.0, v.abs().max().item()), rtol=1e-3)
