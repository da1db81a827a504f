"""The training kit and the autograd corners on a GPU. Skipped where CUDA is absent (CI).

Run on a GPU machine with ``python -m pytest tests/test_cuda_train.py``. What the CPU suite
checks on the CPU (or on ``meta``) and only a GPU can show: mixed precision with cuDNN's half
kernels and the float16 loss scaler, exact resume under it, packed batches moved to the device
by the trainer, DDP over CUDA tensors (two processes on one GPU, gloo: NCCL needs a GPU per
rank), in-place ops on the output of the kernels that save it, tracing and second-order
gradients through the CUDA fused kernels.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.train import Trainer, seed_everything
from tests.conftest import default_dtype
from tests.train import ddp_worker
from tests.train.models import TinyLM
from tests.train.test_ddp import _ddp_and_one_process, _torchrun
from tests.train.test_precision import _run as precision_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEV = torch.device("cuda")


@pytest.fixture(autouse=True)
def _deterministic():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic
    torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic = False, True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic = old


def _lm_run(amp, out_dir=None, interrupt_at=None, resume=False):
    """tests/train/test_precision.py's run on the GPU, with an LSTM for both half types (the
    CPU run takes a GRU for float16: torch's CPU LSTM has none); cuDNN runs it."""
    seed_everything(0)
    return precision_run(amp, out_dir, interrupt_at, resume, model=TinyLM(hidden=16), device="cuda")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_in_half_on_cuda(amp):
    """cuDNN runs the LSTM in the half type; parameters, carried state and losses stay float32,
    the loss falls, and it is close to (not equal to) the float32 run."""
    with default_dtype(torch.float32):
        tr, model, seen = _lm_run(amp)
        fp32, _, seen32 = _lm_run(None)
    # torch's autocast wrapper of cuDNN's RNNs casts to float16 whatever autocast's dtype (torch
    # 2.11): under "bf16" too (docs/fused.md, "Mixed precision"; a torch that follows the dtype gives bf16)
    half = {"bf16": (torch.float16, torch.bfloat16), "fp16": (torch.float16,)}[amp]
    assert len(set(seen)) == 1 and seen[0] in half and set(seen32) == {torch.float32}
    assert all(p.dtype == torch.float32 and p.is_cuda for p in model.parameters())
    assert all(s.dtype == torch.float32 and s.is_cuda for s in tr.state)
    assert all(torch.isfinite(torch.tensor(v)) for v in tr.losses)
    assert tr.losses[-1] < tr.losses[0] - 0.3
    assert tr.losses != fp32.losses
    assert tr.losses[-1] == pytest.approx(fp32.losses[-1], abs=0.2)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_resume_with_mixed_precision_is_exact_on_cuda(amp, tmp_path, monkeypatch):
    """Interrupted and resumed = uninterrupted, bit for bit, the loss scale included (it grows
    every 2 steps here, so it moves within the run)."""
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, growth_interval=2))
    with default_dtype(torch.float32):
        ref, ref_model, _ = _lm_run(amp, tmp_path / "ref")
        _lm_run(amp, tmp_path / "run", interrupt_at=13)
        res, res_model, _ = _lm_run(amp, tmp_path / "run", resume=True)
    assert res.losses == ref.losses
    for a, b in zip(ref_model.parameters(), res_model.parameters(), strict=True):
        assert torch.equal(a, b)
    if amp == "fp16":
        assert res.precision.scaler.get_scale() == ref.precision.scaler.get_scale()


class _PackedTagger(nn.Module):
    """PackedSequence in, per-step logits (padded, time-major) out: batch-norm LSTM (on CUDA
    impl="auto" takes its fused kernels), bidirectional."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = rnnkit.LSTM(3, 5, norm="batch", max_len=8, bidirectional=True)
        self.out = nn.Linear(10, 4)

    def forward(self, x: PackedSequence, state=None):
        y, state = self.rnn(x, state)
        return self.out(pad_packed_sequence(y, padding_value=0.0)[0]), state


def _packed_batches():
    g = torch.Generator().manual_seed(3)
    out = []
    for lengths in ([7, 5, 2], [8, 8, 3], [4, 1, 1]):
        lengths_t = torch.tensor(lengths)
        x = torch.randn(max(lengths), 3, 3, generator=g, dtype=torch.float64)
        y = torch.randint(0, 4, (max(lengths), 3), generator=g)
        y[torch.arange(max(lengths))[:, None] >= lengths_t] = -100
        out.append((pack_padded_sequence(x, lengths_t, enforce_sorted=False), y))
    return out


def test_trainer_moves_packed_batches_to_cuda():
    """Packed batches built on the CPU train on the GPU (the trainer moves them, batch sizes
    staying on the CPU) as on the CPU, float64: losses and weights."""
    runs = []
    for device in ("cpu", "cuda"):
        seed_everything(0)
        model = _PackedTagger()
        tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.3), device=device, carry_state=False,
                     max_epochs=2, progress=False, plot=False)  # fmt: skip
        tr.fit(_packed_batches())
        runs.append((tr.losses, {k: v.cpu() for k, v in model.state_dict().items()}))
    (cpu_losses, cpu_w), (gpu_losses, gpu_w) = runs
    assert len(cpu_losses) == 6
    torch.testing.assert_close(torch.tensor(gpu_losses), torch.tensor(cpu_losses), atol=1e-10, rtol=0)
    for k in cpu_w:
        torch.testing.assert_close(gpu_w[k], cpu_w[k], atol=1e-10, rtol=1e-10, msg=k)


def test_ddp_over_cuda_tensors_equals_one_process(tmp_path, monkeypatch):
    """Two torchrun processes sharing the GPU (gloo over CUDA tensors; the trainer's DDP wrap
    with device_ids, its reductions on the device) = one CPU process with the whole batch."""
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    ddp_dir.mkdir()
    single_dir.mkdir()
    monkeypatch.setenv("RNNKIT_TEST_DEVICE", "cuda:0")
    _torchrun(ddp_worker.__file__, str(ddp_dir), "empty")
    monkeypatch.delenv("RNNKIT_TEST_DEVICE")
    ddp_worker.run(str(single_dir), "empty")
    one = json.loads((single_dir / "result0.json").read_text())
    p_one = load_file(str(single_dir / "params0.safetensors"))
    for r in (0, 1):
        res = json.loads((ddp_dir / f"result{r}.json").read_text())
        assert res["adam_steps"] == one["adam_steps"] == 2
        losses, want = torch.tensor(res["losses"]), torch.tensor(one["losses"])
        torch.testing.assert_close(losses, want, atol=1e-10, rtol=0, equal_nan=True)
        params = load_file(str(ddp_dir / f"params{r}.safetensors"))
        for k in p_one:
            torch.testing.assert_close(params[k], p_one[k], atol=1e-10, rtol=1e-10, msg=k)


@pytest.mark.parametrize("mode", ["tbptt_weighted", "step_fn_method"])
def test_ddp_token_weighting_and_step_fn_over_cuda_equal_one_process(mode, tmp_path, monkeypatch):
    """TBPTT windows weighted by each rank's share of the targets, and a ``step_fn`` calling the
    model's own method inside DDP's forward, over CUDA tensors; ``device="cuda"`` puts rank r on
    ``cuda:r % device_count`` (both ranks here on the one GPU). Equal to one CPU process."""
    monkeypatch.setenv("RNNKIT_TEST_DEVICE", "cuda")
    (r0, r1), (p0, p1), one, p_one = _ddp_and_one_process(tmp_path, mode)
    assert (r0["device"], r1["device"], one["device"]) == ("cuda:0", "cuda:0", "cpu")
    assert len(r0["losses"]) == 3 and r0["losses"] == r1["losses"]
    torch.testing.assert_close(torch.tensor(r0["losses"]), torch.tensor(one["losses"]), rtol=0, atol=1e-10)
    for k in p_one:
        torch.testing.assert_close(p0[k], p1[k], rtol=0, atol=0)
        torch.testing.assert_close(p0[k], p_one[k], rtol=0, atol=1e-10)


def test_in_place_op_on_cudnn_output_is_refused_as_by_torch_nn():
    """cuDNN's backward reads the output it returned: torch.nn's LSTM refuses relu_ on it at the
    backward, and so does the drop-in (same kernel, same error)."""
    for cls in (nn.LSTM, rnnkit.LSTM):
        torch.manual_seed(0)
        out = cls(3, 4, num_layers=2).to(DEV, torch.float64)(
            torch.randn(6, 2, 3, dtype=torch.float64, device=DEV)
        )[0]
        torch.nn.functional.relu_(out)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.square().sum().backward()


@pytest.mark.parametrize("opts", [{"norm": "batch", "max_len": 8}, {"norm": "layer"}, {"zoneout": 0.1}])
def test_in_place_ops_on_the_output_on_cuda(opts):
    """relu_ on the output of a layer with options (on CUDA, batch norm's fused kernels save
    their output): the gradients of the reference loop."""
    grads = []
    for impl in ("auto", "loop"):
        torch.manual_seed(0)
        m = rnnkit.LSTM(3, 4, num_layers=2, impl=impl, **opts).to(DEV, torch.float64)
        x = torch.randn(6, 2, 3, dtype=torch.float64, device=DEV, requires_grad=True)
        out = m(x)[0]
        torch.nn.functional.relu_(out)
        out.square().sum().backward()
        grads.append([x.grad, *(p.grad for p in m.parameters())])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.trace.* is deprecated:DeprecationWarning")
@pytest.mark.parametrize("opts", [{"norm": "layer"}, {"norm": "batch", "max_len": 9}, {"zoneout": 0.1}])
def test_traced_layer_on_cuda_records_the_loop(opts):
    """torch.jit.trace on the GPU records the reference loop (batch norm's default CUDA path, the
    fused pure-PyTorch kernels, would bake the batch sizes in): right at the traced shape, an
    error at another length."""
    torch.manual_seed(0)
    m = rnnkit.LSTM(3, 4, **opts).to(DEV, torch.float64).eval()
    x = torch.randn(5, 2, 3, dtype=torch.float64, device=DEV)
    traced = torch.jit.trace(m, (x,))
    assert not any(n.kind().startswith("rnnkit") for n in traced.inlined_graph.nodes())
    torch.testing.assert_close(traced(x)[0], m(x)[0], atol=1e-12, rtol=1e-12)
    for length in (3, 8):
        with pytest.raises(RuntimeError):
            traced(torch.randn(length, 2, 3, dtype=torch.float64, device=DEV))


@pytest.mark.parametrize(
    "cls,kw",
    [(rnnkit.LSTM, {"norm": "batch", "max_len": 8}), (rnnkit.LSTM, {"norm": "layer"}),
     (rnnkit.GRU, {"variant": "mut1"}), (rnnkit.LSTM, {"peephole": True, "zoneout": 0.1})],
)  # fmt: skip
def test_second_order_on_cuda_is_right_or_refused(cls, kw):
    """A gradient penalty through every CUDA path: the reference loop's numbers (same masks), or
    the documented error naming impl='loop' — never other numbers."""
    res = []
    for impl in ("auto", "loop"):
        torch.manual_seed(0)
        m = cls(3, 4, impl=impl, **kw).to(DEV, torch.float64)
        x = torch.linspace(-1, 1, 30, dtype=torch.float64, device=DEV).reshape(5, 2, 3).requires_grad_(True)
        torch.manual_seed(5)
        try:
            (g,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
            g.pow(2).sum().backward()
        except RuntimeError as e:
            assert impl == "auto" and "impl='loop'" in str(e), e
            return
        res.append([g.detach(), x.grad, *(p.grad for p in m.parameters())])
    for a, b in zip(*res, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
