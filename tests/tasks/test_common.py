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


_BIDI_ARCHS = [
    ("lstm", {}), ("lstm", {"proj_size": 2}), ("gru", {}), ("rnn", {}), ("mingru", {}), ("qrnn", {}),
    ("conv-lstm", {}),
]  # fmt: skip


def _net(cell: str, options: dict, bidirectional: bool, layers: int = 1) -> nn.Module:
    from rnnkit.tasks._common import SequenceNet

    arch = {"cell": cell, "hidden": 5, "layers": layers, "dropout": 0.0, "options": options}
    return SequenceNet(arch, 3, input_size=4, many_to_one=True, bidirectional=bidirectional).eval()


@pytest.mark.parametrize(("cell", "options"), _BIDI_ARCHS)
def test_a_bidirectional_many_to_one_head_reads_the_backward_summary_of_the_whole_sequence(cell, options):
    """The head was fed the output at the last valid step, whose backward half had read that step
    alone: with the head reading the backward half only, the first input changed nothing."""
    torch.manual_seed(0)
    net = _net(cell, options, True)
    half = net.head.in_features // 2
    with torch.no_grad():
        net.head.weight[:, :half] = 0
    x, lengths = torch.randn(3, 6, 4), torch.tensor([6, 4, 3])
    x2 = x.clone()
    x2[:, 0] += 1
    with torch.no_grad():
        y, y2 = net(x, lengths=lengths)[0], net(x2, lengths=lengths)[0]
    assert not torch.isclose(y, y2).all(-1).any()


@pytest.mark.parametrize(("cell", "options"), _BIDI_ARCHS)
@pytest.mark.parametrize("padded", [False, True])
def test_a_bidirectional_summary_is_forward_at_the_last_valid_step_and_backward_at_step_0(
    cell, options, padded
):
    torch.manual_seed(0)
    net = _net(cell, options, True, layers=2)
    x = torch.randn(3, 6, 4)
    lengths = torch.tensor([6, 2, 4]) if padded else None
    with torch.no_grad():
        y = net(x, lengths=lengths)[0]
        half = net.head.in_features // 2
        rows = []
        for b in range(3):  # each sequence alone, unpadded: h_n's [forward | backward]
            n = int(lengths[b]) if padded else 6
            out, _ = net.encoder(x[b : b + 1, :n], None)
            rows.append(torch.cat([out[0, n - 1, :half], out[0, 0, half:]]))
        torch.testing.assert_close(y, net.head(torch.stack(rows)))


@pytest.mark.parametrize("cell", ["lstm", "conv-gru", "tcn"])
def test_a_unidirectional_or_tcn_summary_is_the_output_at_the_last_valid_step(cell):
    """A TCN's ``bidirectional`` (centred kernels, one output per step) splits no directions."""
    from rnnkit.tasks._common import last_valid

    torch.manual_seed(0)
    net = _net(cell, {}, cell == "tcn")
    x, lengths = torch.randn(3, 6, 4), torch.tensor([6, 2, 4])
    with torch.no_grad():
        out, _ = net.encoder(x, None, lengths=lengths)
        torch.testing.assert_close(net(x, lengths=lengths)[0], net.head(last_valid(out, lengths)))


@pytest.mark.parametrize("cell", ["lstm", "conv-lstm"])
def test_opt_bidirectional_reaches_the_many_to_one_summary_of_the_tasks(cell):
    """``--opt bidirectional=true`` (the classify and memory tasks' only way to one), also for the
    recurrent stack behind a causal conv front end."""
    from rnnkit.tasks.classify import classifier

    torch.manual_seed(0)
    arch = {"cell": cell, "hidden": 5, "layers": 1, "dropout": 0.0, "options": {"bidirectional": True}}
    nets = [memory.memory_model("plus1", arch, {}), classifier(arch, 3, {"vocab_size": 7})]
    xs = [torch.randn(2, 6, 1), torch.randint(0, 7, (2, 6))]
    for net, x in zip(nets, xs, strict=True):
        with torch.no_grad():
            h = net.embed(x) if net.embed is not None else x
            out, _ = net.encoder(h, None)
            expected = net.head(torch.cat([out[:, -1, :5], out[:, 0, 5:]], -1))
            torch.testing.assert_close(net(x)[0], expected)
