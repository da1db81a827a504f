"""Mixed precision in the training loop (``TrainConfig.amp``): bfloat16 and float16 autocast of
the forward, loss scaling for float16, float32 parameters, losses and carried states, exact
resume (the loss scaler's state is in the checkpoint)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkit
from rnnkit.data import bptt_batches
from rnnkit.train import Trainer, seed_everything
from rnnkit.train.precision import MixedPrecision
from rnnkit.train.state import lm_loss
from tests.conftest import default_dtype

from .models import TinyLM, tokens
from .test_checkpoint import Interrupt


@pytest.fixture(autouse=True)
def _float32():
    """Autocast casts float32 (not the suite's float64 default)."""
    with default_dtype(torch.float32):
        yield


class _RnnkitLM(TinyLM):
    def __init__(self, **kw):
        super().__init__(hidden=16)
        self.rnn = rnnkit.LSTM(16, 16, **kw)


def _run(amp, out_dir=None, interrupt_at=None, resume=False, model=None, **kw):
    seed_everything(0)
    # float16 on the CPU: torch's LSTM has no float16 kernel there (oneDNN refuses it), its GRU
    # stays in float32 under autocast; the linear head runs in float16
    model = model or TinyLM(hidden=16, cell="gru" if amp == "fp16" else "lstm")
    seen = []
    model.rnn.register_forward_hook(lambda m, i, o: seen.append(o[0].dtype))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    files = {"out_dir": str(out_dir), "checkpoint_every": 5} if out_dir else {}
    tr = Trainer(model, opt, amp=amp, max_epochs=2, progress=False, plot=False, clip_norm=1.0, resume=resume,
                 callbacks=[Interrupt(interrupt_at)] if interrupt_at else [], **files, **kw)  # fmt: skip
    data, val = bptt_batches(tokens(600), 3, 12), bptt_batches(tokens(60, seed=9), 1, 12)
    if interrupt_at:
        with pytest.raises(KeyboardInterrupt):
            tr.fit(data, val)
    else:
        tr.fit(data, val)
    return tr, model, seen


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_in_half_with_float32_state(amp):
    tr, model, seen = _run(amp)
    half = {"bf16": torch.bfloat16, "fp16": torch.float32}[amp]  # torch's CPU GRU: float32
    assert set(seen) == {half}  # the recurrent layer ran under autocast's rule for it
    assert all(p.dtype == torch.float32 for p in model.parameters())
    states = tr.state if isinstance(tr.state, tuple) else (tr.state,)
    assert all(s.dtype == torch.float32 for s in states)  # the carried state
    assert all(torch.isfinite(torch.tensor(v)) for v in tr.losses)
    assert tr.losses[-1] < tr.losses[0] - 0.3
    fp32, _, _ = _run(None)  # close to the float32 run, not equal to it
    assert tr.losses != fp32.losses
    assert tr.losses[-1] == pytest.approx(fp32.losses[-1], abs=0.2)


def test_options_train_under_autocast_in_float32():
    """A layer-norm LSTM (no torch kernel) runs in float32 inside the autocast forward."""
    _, _, seen = _run("bf16", model=_RnnkitLM(norm="layer"))
    assert set(seen) == {torch.float32}


def test_step_fn_state_is_carried_in_float32():
    """With a step_fn the forward ran under autocast but its state came back as the model left it
    (bfloat16 for torch's LSTM), so the carried state lived in half precision: it is float32 now,
    as with the default step."""

    def step_fn(model, batch, state):
        out, state = model(batch[0], state)
        return lm_loss(out, batch[1]), state

    tr, _, seen = _run("bf16", step_fn=step_fn, max_steps=3)
    assert set(seen) == {torch.bfloat16}  # the layer ran under autocast
    assert [s.dtype for s in tr.state] == [torch.float32, torch.float32]
    assert all(torch.isfinite(torch.tensor(v)) for v in tr.losses)


def test_mixed_precision_with_truncated_bptt():
    tr, _, seen = _run("bf16", tbptt_k1=4)
    assert set(seen) == {torch.bfloat16} and tr.losses[-1] < tr.losses[0]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_resume_with_mixed_precision_is_exact(amp, tmp_path, monkeypatch):
    """fp16: the loss scale (and its growth tracker) resume from the checkpoint; the scale
    grows every 2 steps here, so it moves (and overflows) within the run."""
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, growth_interval=2))
    ref, ref_model, _ = _run(amp, tmp_path / "ref")
    _run(amp, tmp_path / "run", interrupt_at=13)
    res, res_model, _ = _run(amp, tmp_path / "run", resume=True)
    assert res.losses == ref.losses
    for a, b in zip(ref_model.parameters(), res_model.parameters(), strict=True):
        assert torch.equal(a, b)
    if amp == "fp16":
        assert res.precision.scaler.get_scale() == ref.precision.scaler.get_scale()


def test_float16_scaler_skips_overflowing_steps():
    """A step whose scaled gradients overflow is skipped and the scale halves."""
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    mp = MixedPrecision("fp16", torch.device("cpu"))
    scale = mp.scaler.get_scale()
    mp.backward((w * 1e38).sum())  # scaled by 65536: inf
    mp.unscale_(opt)
    mp.step(opt)
    assert torch.equal(w.detach(), torch.ones(3)) and mp.scaler.get_scale() == scale / 2


def test_amp_must_be_known():
    with pytest.raises(ValueError, match="amp must be None, 'bf16' or 'fp16'"):
        Trainer(TinyLM(), torch.optim.SGD(TinyLM().parameters(), lr=0.1), amp="fp8")


def test_float16_on_the_cpu_refuses_an_lstm_without_a_float16_kernel():
    """torch's CPU LSTM (oneDNN) has no float16 kernel: amp="fp16" failed at the first step in
    oneDNN's words ("could not create a primitive descriptor"); rnnkit's LSTM with
    recurrent_dropout in eval mode (validation) too. Refused at construction, naming the layer and
    bf16; a GRU, and rnnkit's LSTM on its loop (zoneout), train in float16 there."""
    want = r"^amp='fp16' on the CPU: the LSTM rnn \(LSTM\) has no float16 kernel there; use bf16 on the CPU"
    for model in (TinyLM(), _RnnkitLM(), _RnnkitLM(recurrent_dropout=0.1)):
        with pytest.raises(ValueError, match=want):
            Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), amp="fp16")
        assert model.training  # its modes as they were
    for model in (TinyLM(cell="gru"), _RnnkitLM(zoneout=0.1)):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), amp="fp16")
    Trainer(TinyLM(), torch.optim.SGD(TinyLM().parameters(), lr=0.1), amp="bf16")


def test_the_float16_probe_fires_no_forward_hook():
    """The probe ran the LSTM through ``__call__``: a user's forward hook (an activation list kept
    for AR/TAR, say) saw a (1, 1, H) output before training began."""
    for model in (TinyLM(), _RnnkitLM(zoneout=0.1)):
        seen = []
        model.rnn.register_forward_hook(lambda m, args, out, seen=seen: seen.append(out))
        try:
            Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), amp="fp16")
        except ValueError:
            pass  # torch's LSTM: refused, as above
        assert seen == []


class _HC(NamedTuple):
    h: torch.Tensor
    c: torch.Tensor


class _NamedStateLM(TinyLM):
    """TinyLM whose state is a NamedTuple (the model protocol allows any tuple)."""

    def forward(self, x, state=None):
        y, (h, c) = self.rnn(self.emb(x), None if state is None else (state.h, state.c))
        return self.out(y), _HC(h, c)


def test_float32_outputs_keep_namedtuples_dicts_and_packed_sequences():
    """Under autocast the returned structure is the model's, in float32: a namedtuple was
    rebuilt from a generator (TypeError), a PackedSequence failed, dicts stayed in bfloat16."""
    mp = MixedPrecision("bf16", torch.device("cpu"))
    half = torch.ones(3, 2, dtype=torch.bfloat16)
    packed = pack_padded_sequence(half, torch.tensor([3, 1]), enforce_sorted=False)

    def model(x):
        return {"hc": _HC(x, x), "d": {"k": x}}, packed, [x.long()]

    (state, out, ints) = mp.call(model, half)
    assert isinstance(state["hc"], _HC) and isinstance(out, PackedSequence) and isinstance(ints, list)
    assert state["hc"].h.dtype == state["hc"].c.dtype == state["d"]["k"].dtype == out.data.dtype
    assert out.data.dtype == torch.float32 and ints[0].dtype == torch.long
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    assert torch.equal(out.sorted_indices, packed.sorted_indices)


def test_mixed_precision_with_a_namedtuple_state():
    tr, _, seen = _run("bf16", model=_NamedStateLM(hidden=16))
    assert set(seen) == {torch.bfloat16}
    assert isinstance(tr.state, _HC) and tr.state.h.dtype == torch.float32


def test_nt_asgd_leaves_out_steps_the_loss_scaler_skipped():
    """float16: a step whose gradients overflow is skipped (the weights stay); NT-ASGD still
    folded them into its average after it, so the weights before the skip counted twice. The
    average is now over the steps taken (and the weights at the trigger)."""
    from rnnkit.train import Callback

    seed_everything(0)
    model = TinyLM(hidden=16, cell="gru")
    calls = []

    def loss_fn(output, targets):  # update 4 overflows float16's range in the backward
        calls.append(None)
        return lm_loss(output, targets) * (1e30 if len(calls) == 4 else 1.0)

    snaps = []

    class Snap(Callback):
        def on_step_end(self, trainer, logs):
            snaps.append([p.detach().clone() for p in model.parameters()])

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tr = Trainer(model, opt, amp="fp16", nt_asgd=True, nonmono=1, val_every=1, max_steps=6, loss_fn=loss_fn,
                 progress=False, plot=False, callbacks=[Snap()])  # fmt: skip
    scripted = iter([2.0, 3.0, 2.5, 2.4, 2.3, 2.2])
    tr.evaluate = lambda data: {"loss": next(scripted), "ppl": 1.0, "tokens": 1}
    tr.fit(bptt_batches(tokens(200), 2, 5), val_data=[None])
    assert tr.ntasgd.triggered_at == 3
    assert all(torch.equal(a, b) for a, b in zip(snaps[3], snaps[2], strict=True))  # step 4: skipped
    assert tr.ntasgd.n_averaged == 2  # steps 5 and 6
    for i, p in enumerate(model.parameters()):  # the weights at the trigger (step 3), 5, 6
        expected = torch.stack([snaps[k][i] for k in (2, 4, 5)]).mean(0)
        torch.testing.assert_close(p.detach(), expected)
