"""The tasks' shared helpers: ``batches`` (in one process and as a DDP rank's share), ``accuracy``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnnkit.tasks import memory
from rnnkit.tasks._common import accuracy, batches


@pytest.mark.parametrize("seed", [0, 5, -1, -(2**63), 2**63 - 1, 2**63, 2**64 - 3, 2**64 - 1])
def test_a_ranks_order_of_every_epoch_is_that_of_seed_plus_epoch_modulo_2_64(seed):
    """``DistributedSampler`` seeds epoch ``e`` with ``seed + e``, which torch refused from 2**64
    on: ``--seed 18446744073709551615`` (in the range ``--seed`` takes) trained its first epoch
    under torchrun and failed at the second's first batch ("Overflow when unpacking long long").
    The seeds wrap now, as torch reads a negative seed (``s + 2**64``): every seed that worked
    gives the order it gave."""
    loader = batches(list(range(10)), 4, shuffle=True, seed=seed, num_replicas=2, rank=1)
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        g = torch.Generator().manual_seed((seed + epoch) % 2**64)
        expected = torch.randperm(10, generator=g)[1::2].tolist()  # rank 1 of 2: every second one
        assert torch.cat(list(loader)).tolist() == expected, epoch


def test_accuracy_is_the_exact_fraction_of_the_counts():
    """accuracy() took its mean in float32: 2 of 5 gave 0.4000000059604645, and a count above 2**24
    lost its last digits. It is now correct / total of integer counts (a float64 division)."""
    pred, target = torch.tensor([1, 2, 0, 0, 0, 7]), torch.tensor([1, 2, 3, 3, 3, -100])
    assert accuracy(pred, target) == 2 / 5
    n = 2**24 + 3  # float32 has 24 bits: n - 1 right of n rounded to 1.0
    assert accuracy(torch.zeros(n, dtype=torch.long), torch.arange(n)) == 1 / n
    assert accuracy(torch.arange(n), torch.arange(n) * (torch.arange(n) != 5)) == (n - 1) / n


class _Constant(nn.Module):
    """``x (B, T) -> (zeros (B, T, 1), None)``: a model to evaluate whose answers are patched in."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x, state=None):
        return torch.zeros(*x.shape, 1), None


def test_the_arith_tasks_exact_match_is_the_exact_fraction(monkeypatch):
    """valid_exact_match took its mean in float32 too (2 of 5 right: 0.4000000059604645)."""
    task = memory.make_task("arith", length=1, n_train=1, n_valid=5, digits=2)
    answer = task.valid[1][:, -3:]
    wrong = answer.clone()
    wrong[2:, 0] = (wrong[2:, 0] + 1) % 10  # rows 2-4: their first digit wrong
    monkeypatch.setattr(memory, "arith_greedy", lambda model, x, y, d: wrong[: len(x)])
    got = memory.evaluate(task, _Constant())
    assert got["valid_exact_match"] == 2 / 5 and got["valid_digit_accuracy"] == 12 / 15


@pytest.mark.parametrize("bs", [-1, 0, 2.5, True])
def test_inference_helpers_refuse_a_batch_size_that_is_no_positive_int(bs):
    """Their chunk loops range(0, n, batch_size) ran no chunk for -1: predict_texts returned no
    prediction and exact_match a score of 0.0, silently; 0 and 2.5 failed in range(), True was 1."""
    from rnnkit.tasks.classify import classifier, predict_texts
    from rnnkit.tasks.seq2seq import Seq2Seq, Seq2SeqData, exact_match

    arch = {"cell": "lstm", "hidden": 4, "layers": 1, "dropout": 0.0, "options": {}}
    msg = rf"batch_size must be an int >= 1, got {bs!r}"
    model = classifier(arch, 2, {"vocab_size": 4, "padding_idx": 0})
    with pytest.raises(ValueError, match=msg):
        predict_texts(model, ["a b", "b"], ["<pad>", "<unk>", "a", "b"], "word", ["x", "y"], batch_size=bs)
    data = Seq2SeqData.generate(3, 3, max_number=20)
    with pytest.raises(ValueError, match=msg):
        exact_match(Seq2Seq(arch, len(data.src_vocab), len(data.tgt_vocab), 4), data.valid, batch_size=bs)
    task = memory.make_task("plus1", length=3, n_train=2, n_valid=3)
    with pytest.raises(ValueError, match=msg):
        memory.evaluate(task, memory.memory_model("plus1", arch, task.params), batch_size=bs)
