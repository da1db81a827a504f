"""Trainer: what it refuses or skips, so that a run does not go on silently wrong: a step with a
non-finite gradient norm, the carried state over shuffled batches, a stateful model or step_fn
that returns no state."""

import math

import pytest
import torch
from torch.utils.data import DataLoader

from rnnkit.data import BucketBatchSampler, PadCollate, bptt_batches
from rnnkit.train import Callback, Trainer, evaluate_lm, lm_loss

from .models import TinyLM, sgd, tokens


@pytest.mark.parametrize("clip_norm", [None, 1.0])
@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_non_finite_gradient_skips_the_update(clip_norm, bad, caplog):
    """One inf/NaN gradient entry used to reach every weight: the norm measured (or clipped) with
    clip_grad_norm_ scales all gradients by max_norm / norm, NaN for a non-finite norm, and the
    optimizer stepped. The update is skipped now (as the float16 loss scaler does), and logged."""
    torch.manual_seed(0)
    model = TinyLM()
    hits = []

    def poison(g):  # the first backward only: one entry of one parameter's gradient
        hits.append(1)
        return g.index_fill(0, torch.tensor([0]), bad) if len(hits) == 1 else g

    model.out.bias.register_hook(poison)
    rows = []

    class Spy(Callback):
        def on_log(self, trainer, row):
            rows.append(row)

    before = [p.detach().clone() for p in model.parameters()]
    cfg = {"clip_norm": clip_norm, "max_steps": 1, "progress": False}
    tr = Trainer(model, sgd(model), log_every=1, callbacks=[Spy()], **cfg)
    with caplog.at_level("WARNING", logger="rnnkit.train"):
        tr.fit(bptt_batches(tokens(100), 2, 5))
    assert "gradient norm" in caplog.text and "update skipped" in caplog.text
    assert not math.isfinite(rows[0]["grad_norm"])
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.detach(), b)
    # a finite step then moves every weight, finitely
    Trainer(model, sgd(model), **cfg).fit(bptt_batches(tokens(100), 2, 5))
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.isfinite(p).all() and not torch.equal(p.detach(), b)


@pytest.mark.parametrize("clip_norm", [None, 0.1])
def test_sparse_gradients_train_as_their_dense_twins(clip_norm):
    """An nn.Embedding(sparse=True) made every step fail in the gradient norm, with or without
    clip_norm (linalg_vector_norm has no sparse kernel): a loop torch trains. The norm is now that
    of the coalesced gradient (repeated rows summed first), clipped as clip_grad_norm_ clips it."""

    class Spy(Callback):
        def __init__(self):
            self.norms = []

        def on_log(self, trainer, row):
            self.norms.append(row["grad_norm"])

    runs = []
    for sparse in (False, True):
        torch.manual_seed(0)
        model = TinyLM()
        model.emb.sparse = sparse
        spy = Spy()
        cfg = {"clip_norm": clip_norm, "max_steps": 3, "progress": False, "log_every": 1}
        Trainer(model, sgd(model), callbacks=[spy], **cfg).fit(bptt_batches(tokens(100), 2, 5))
        runs.append((spy.norms, [p.detach().clone() for p in model.parameters()]))
    (dense_norms, dense_weights), (sparse_norms, sparse_weights) = runs
    assert len(sparse_norms) == 3 and sparse_norms == pytest.approx(dense_norms, rel=1e-12)
    if clip_norm is not None:
        assert max(dense_norms) > clip_norm  # (clipping took place)
    for s, d in zip(sparse_weights, dense_weights, strict=True):
        torch.testing.assert_close(s, d, rtol=1e-12, atol=1e-14)


def test_sparse_gradients_clip_by_value_as_their_dense_twins():
    """clip_value failed at every step on an nn.Embedding(sparse=True) (clip_grad_value_'s clamp has
    no sparse kernel). A sparse gradient's values are clamped now, once coalesced: its repeated rows
    (a token seen twice) summed first, so the update is the dense twin's, which torch clips."""
    weights = []
    for sparse in (False, True):
        torch.manual_seed(0)
        model = TinyLM()
        model.emb.sparse = sparse
        cfg = {"clip_value": 1e-3, "max_steps": 3, "progress": False}
        Trainer(model, sgd(model), **cfg).fit(bptt_batches(tokens(100), 2, 5))
        weights.append([p.detach().clone() for p in model.parameters()])
    for s, d in zip(*weights, strict=True):
        torch.testing.assert_close(s, d, rtol=1e-12, atol=1e-14)
    # (clipping took place: unclipped, the embedding moves otherwise)
    torch.manual_seed(0)
    model = TinyLM()
    Trainer(model, sgd(model), max_steps=3, progress=False).fit(bptt_batches(tokens(100), 2, 5))
    assert not torch.allclose(model.emb.weight, weights[0][0])


@pytest.mark.parametrize("rank", [0, 1])
def test_a_skipped_update_is_logged_by_rank_0_alone(rank, caplog, monkeypatch):
    """Under DDP the gradients are all-reduced, so every rank skips the update alike; every rank
    also logged it, N copies of one warning, though rank 0 alone logs. Rank 1 skips it silently."""
    from rnnkit.train import distributed as dist

    monkeypatch.setattr(dist, "is_main_process", lambda: rank == 0)
    torch.manual_seed(0)
    model = TinyLM()
    model.out.bias.register_hook(lambda g: g * math.nan)
    before = [p.detach().clone() for p in model.parameters()]
    with caplog.at_level("WARNING", logger="rnnkit.train"):
        Trainer(model, sgd(model), max_steps=1, progress=False).fit(bptt_batches(tokens(100), 2, 5))
    assert ("update skipped" in caplog.text) == (rank == 0)
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.detach(), b)


def test_a_skipped_update_does_not_step_the_scheduler():
    """A step whose update was skipped (a non-finite gradient) still stepped the scheduler: the
    schedule ran ahead of the updates, and a first skipped step made torch warn "lr_scheduler.step()
    before optimizer.step()" (an error under -W error, as here). It follows the updates."""
    torch.manual_seed(0)
    model = TinyLM()
    hits = []
    model.out.bias.register_hook(lambda g: hits.append(1) or (g * math.nan if len(hits) == 1 else g))
    opt = sgd(model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    Trainer(model, opt, scheduler=sched, max_steps=3, progress=False).fit(bptt_batches(tokens(100), 2, 5))
    assert len(hits) == 3 and sched.last_epoch == 2 and opt.param_groups[0]["lr"] == 0.5 * 0.25


def test_carried_state_over_shuffled_batches_is_refused():
    """carry_state=True (the default) handed each batch the state where the previous one stopped,
    also over a shuffled DataLoader: a batch started silently from another sequence's end (or, on a
    short last batch, failed with torch's hidden-size error mid-epoch). It is a ValueError now,
    before anything is trained; unshuffled data, carry_state=False and a step_fn train as before."""
    from torch.utils.data import DistributedSampler, TensorDataset

    torch.manual_seed(0)
    ds = TensorDataset(torch.randint(0, 11, (8, 5)), torch.randint(0, 11, (8, 5)))
    pairs = [(x, y) for x, y in ds]
    shuffled = [
        DataLoader(ds, batch_size=4, shuffle=True),
        DataLoader(ds, batch_size=4, sampler=DistributedSampler(ds, num_replicas=1, rank=0)),
        DataLoader(
            pairs, batch_sampler=BucketBatchSampler([5] * 8, 4), collate_fn=PadCollate(batch_first=True)
        ),
    ]
    for loader in shuffled:
        model = TinyLM(batch_first=True)
        tr = Trainer(model, sgd(model), batch_first=True, progress=False)
        with pytest.raises(ValueError, match="carry_state=True .* the training data is shuffled"):
            tr.fit(loader)
        assert tr.step == 0
    model = TinyLM(batch_first=True)
    assert Trainer(model, sgd(model), batch_first=True, progress=False).fit(DataLoader(ds, 4))["step"] == 2
    # validation carries the state alike: a shuffled val_data is refused too, before training
    tr = Trainer(model, sgd(model), batch_first=True, progress=False)
    with pytest.raises(ValueError, match="carry_state=True .* the validation data is shuffled"):
        tr.fit(DataLoader(ds, 4), val_data=shuffled[0])
    assert tr.step == 0
    for kw in ({"carry_state": False}, {"step_fn": lambda m, b, s: (lm_loss(m(b[0])[0], b[1]), None)}):
        model = TinyLM(batch_first=True)
        assert (
            Trainer(model, sgd(model), batch_first=True, progress=False, **kw).fit(shuffled[0])["step"] == 2
        )


def test_carried_state_into_a_batch_of_other_sequences_names_the_carry():
    """carry_state=True over an unshuffled DataLoader whose last batch is short handed that batch
    the previous batch's state: the layer refused it in its own words ("expected h_0 of shape
    ..."), naming neither the carry nor a remedy. The trainer says so, in training and in
    validation; batches of one size, and carry_state=False, train as before."""
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    ds = TensorDataset(torch.randint(0, 11, (10, 5)), torch.randint(0, 11, (10, 5)))  # batches 4, 4, 2
    model = TinyLM(batch_first=True)
    tr = Trainer(model, sgd(model), batch_first=True, progress=False)
    with pytest.raises(ValueError, match="batch 3 of the epoch has 2 sequences after one of 4.*drop_last"):
        tr.fit(DataLoader(ds, batch_size=4))
    tr = Trainer(model, sgd(model), batch_first=True, progress=False)
    with pytest.raises(ValueError, match="validation batch 3 has 2 sequences after one of 4"):
        tr.fit(DataLoader(ds, batch_size=4, drop_last=True), val_data=DataLoader(ds, batch_size=4))
    tr = Trainer(model, sgd(model), batch_first=True, progress=False)
    assert tr.fit(DataLoader(ds, batch_size=4, drop_last=True))["step"] == 2
    tr = Trainer(model, sgd(model), batch_first=True, progress=False, carry_state=False)
    assert tr.fit(DataLoader(ds, batch_size=4), val_data=DataLoader(ds, batch_size=4))["step"] == 3


class _OutputOnly(torch.nn.Module):
    """A regressor whose forward takes a state but returns its output alone: (T, B)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.head = torch.nn.GRU(1, 4), torch.nn.Linear(4, 1)

    def forward(self, x, state=None):
        y, _ = self.rnn(x.unsqueeze(-1))
        return self.head(y).squeeze(-1)


def _mse(out, y):
    return (out - y).pow(2).mean()  # a loss of the user's that broadcasts


@pytest.mark.parametrize("T", [2, 3])
@pytest.mark.parametrize("k1", [None, 1])
def test_a_stateful_model_must_return_output_and_state(T, k1):
    """A stateful model returning its output alone was unpacked along the output's first dimension:
    for windows of 2 steps, output = step 0 and state = step 1, trained silently on a broadcast loss;
    else "too many values to unpack". Now a TypeError names the protocol and stateful=False."""
    model = _OutputOnly()
    data = [(torch.randn(T, 3), torch.randn(T, 3))]
    tr = Trainer(model, sgd(model), loss_fn=_mse, max_steps=1, tbptt_k1=k1, progress=False)
    got = rf"expects \(output, new_state\), got a tensor of shape \({k1 or T}, 3\)"  # (k1: a window's)
    with pytest.raises(TypeError, match=got):
        tr.fit(data)
    # the same model with stateful=False trains
    Trainer(model, sgd(model), loss_fn=_mse, max_steps=1, stateful=False, progress=False).fit(data)


def test_a_model_returning_its_state_under_stateful_false_is_named():
    """The mirror case: stateful=False with a model that returns (output, new_state) failed in the
    default loss with "'tuple' object has no attribute 'shape'", naming neither the protocol nor
    stateful=True. lm_loss now says what it got and what it expects."""
    model = TinyLM()
    tr = Trainer(model, sgd(model), stateful=False, max_steps=1, progress=False)
    with pytest.raises(TypeError, match=r"logits \(a tensor\), got a tuple of 2 items.*stateful=True"):
        tr.fit(bptt_batches(tokens(100), 2, 5))
    with pytest.raises(TypeError, match="got a list of 1 item;"):
        lm_loss([[0.0, 1.0]], torch.tensor([1]))
    assert tr.step == 0


def test_evaluate_lm_and_step_fn_results_are_checked():
    class LMOutputOnly(TinyLM):
        def forward(self, x, state=None):
            return super().forward(x, state)[0]

    with pytest.raises(TypeError, match="or pass stateful=False"):
        evaluate_lm(LMOutputOnly(), tokens(40), 2, 2)
    model = TinyLM()
    step_fn = lambda m, b, s: lm_loss(m(b[0])[0], b[1])  # noqa: E731  (the loss alone, no state)
    tr = Trainer(model, sgd(model), step_fn=step_fn, max_steps=1, progress=False)
    with pytest.raises(TypeError, match=r"must return \(loss, new_state\), got a tensor of shape \(\)"):
        tr.fit(bptt_batches(tokens(100), 2, 5))
