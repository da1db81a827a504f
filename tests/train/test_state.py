from collections import OrderedDict, defaultdict, namedtuple

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence

from rnnkit.data import pad_collate
from rnnkit.train import Trainer, count_tokens, detach_state, lm_loss, move_to

HC = namedtuple("HC", "h c")


def test_detach_state_all_shapes():
    x = torch.ones(2, requires_grad=True)
    y = x * 2
    assert detach_state(None) is None
    assert detach_state(y).grad_fn is None
    t = detach_state((y, [y, {"a": y}], HC(y, y), 3))
    assert isinstance(t, tuple) and isinstance(t[1], list) and isinstance(t[2], HC)
    leaves = [t[0], t[1][0], t[1][1]["a"], t[2].h, t[2].c]
    assert all(v.grad_fn is None and not v.requires_grad for v in leaves)
    assert t[3] == 3
    assert torch.equal(t[0], y.detach())


def test_move_to_and_count_tokens():
    b = move_to((torch.ones(2), {"k": [torch.zeros(1)]}), "cpu")
    assert isinstance(b[1]["k"], list)
    assert count_tokens((torch.zeros(3, 2), torch.tensor([[1, -100], [2, 3], [4, 5]]))) == 5
    assert count_tokens((torch.zeros(3, 2), torch.zeros(3, 2))) == 6


class Memory(dict):
    """A model's own state class: a dict with an attribute and a method."""

    def __init__(self, *args, slots=0, **kw):
        super().__init__(*args, **kw)
        self.slots = slots

    def h(self):
        return self["h"]


def test_dict_subclasses_keep_their_type():
    """detach_state / move_to turned every dict subclass into a plain dict: a defaultdict lost its
    factory (KeyError in the model's next call), a model's own state class its methods and
    attributes. Now each is rebuilt as its type with the new values, as torch's pytree does."""
    y = torch.ones(2, requires_grad=True) * 2
    dd = defaultdict(list, {"h": y})
    states = [OrderedDict([("b", y), ("a", [y])]), dd, Memory({"h": y}, slots=3)]
    for fn in (detach_state, lambda s: move_to(s, "cpu")):
        od, d, mem = fn(states)
        assert type(od) is OrderedDict and list(od) == ["b", "a"] and isinstance(od["a"], list)
        assert type(d) is defaultdict and d.default_factory is list and d["missing"] == []
        assert type(mem) is Memory and mem.slots == 3 and torch.equal(mem.h(), y)
    assert list(dd) == ["h"] and dd["h"] is y  # the given state is left as it was
    od, d, mem = detach_state(states)
    assert all(v.grad_fn is None for v in (od["b"], od["a"][0], d["h"], mem["h"]))


def test_lm_loss_shape_check():
    with pytest.raises(ValueError, match=r"logits shape \(3, 2, 5\) does not match targets"):
        lm_loss(torch.zeros(3, 2, 5), torch.zeros(2, 3, dtype=torch.long))


def test_count_tokens_counts_targets_not_input_steps():
    """A padded batch weighs by its non-ignored targets: one per sequence for labels (it counted
    the input steps, sum(lengths)), the real steps of tag sequences, ignored ones excepted."""
    x = [torch.zeros(L, 3) for L in (2, 5, 9)]
    labels = pad_collate([(s, torch.tensor(i)) for i, s in enumerate(x)])
    assert count_tokens(labels) == 3
    tags = pad_collate([(s, torch.arange(s.shape[0])) for s in x])
    assert count_tokens(tags) == 16  # sum(lengths): the padding is -100
    tags.targets[0, 1] = -100  # an ignored position inside a sequence
    assert count_tokens(tags) == 15
    multi_hot = pad_collate([(s, torch.ones(4)) for s in x[:2]])  # float labels (B, K)
    assert count_tokens(multi_hot) == 8
    series = pad_collate([(s, torch.ones(s.shape[0], 2)) for s in x])  # float sequences, padded
    assert count_tokens(series) == 2 * 16
    assert count_tokens(pad_collate(x)) == 16  # no targets: the lengths
    assert count_tokens(torch.zeros(3, 2)) == 6


def test_evaluate_of_padded_labels_is_the_mean_over_examples():
    """Trainer.evaluate (validation loss, early stopping, NT-ASGD) of a classifier on padded
    batches of unequal lengths: the mean over the examples, not a length-weighted one."""
    torch.manual_seed(0)
    rnn, head = torch.nn.GRU(3, 8), torch.nn.Linear(8, 4)
    model = torch.nn.ModuleList([rnn, head])

    def logits(batch):
        return head(rnn(batch.inputs)[1][-1])

    def step_fn(m, batch, state):
        return F.cross_entropy(logits(batch), batch.targets), None

    items = [(torch.randn(L, 3), torch.tensor(L % 4)) for L in (2, 2, 20, 20)]
    batches = [pad_collate(items[:2]), pad_collate(items[2:])]
    tr = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), step_fn=step_fn, carry_state=False)
    res = tr.evaluate(batches)
    with torch.no_grad():
        each = torch.cat([F.cross_entropy(logits(b), b.targets, reduction="none") for b in batches])
    assert res["tokens"] == 4
    assert res["loss"] == pytest.approx(float(each.mean()), rel=1e-6)


def test_evaluate_leaves_out_batches_without_targets():
    """A validation batch whose targets are all -100 (mean loss NaN) made the whole validation
    loss NaN (NaN * 0 tokens), so early stopping and NT-ASGD saw NaN; it adds nothing now and
    its state is still carried to the next batch."""
    from .models import TinyLM

    torch.manual_seed(0)
    model = TinyLM()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), progress=False, plot=False)
    x0, x1 = torch.randint(0, 11, (5, 2)), torch.randint(0, 11, (4, 2))
    y0, y1 = torch.full((5, 2), -100), torch.randint(0, 11, (4, 2))
    res = tr.evaluate([(x0, y0), (x1, y1)])
    with torch.no_grad():
        _, state = model(x0)
        want = float(lm_loss(model(x1, state)[0], y1))
    assert res["tokens"] == 8
    assert res["loss"] == pytest.approx(want, rel=1e-12)


def test_move_to_keeps_a_packed_sequence_valid():
    """PadCollate(pack=True) batches on another device (the trainer moves every batch): the
    PackedSequence is moved as its own .to does, batch_sizes staying on the CPU ('meta' takes
    the code path of CUDA; rebuilding the namedtuple field by field raised "batch_sizes should
    always be on CPU")."""
    b = pad_collate([torch.ones(3, 2), torch.ones(1, 2), torch.ones(2, 2)], pack=True)
    moved = move_to(b, "meta")
    want = b.packed.to("meta")
    assert isinstance(moved.packed, PackedSequence)
    assert moved.inputs.device.type == moved.lengths.device.type == "meta"
    for got, ref in zip(moved.packed, want, strict=True):
        assert got.device == ref.device and got.shape == ref.shape
    assert moved.packed.batch_sizes.device.type == "cpu"
    assert torch.equal(moved.packed.batch_sizes, b.packed.batch_sizes)


def test_count_tokens_leaves_out_every_negative_class_index():
    """The tag task's unseen tags (-1) are ignored by its loss but were counted: its validation
    loss (and a DDP rank's share) weighed batches by targets their loss never saw."""
    from torch import nn

    from rnnkit.tasks import tag
    from rnnkit.train.evaluate import evaluate_batches

    x = [torch.arange(L) % 4 for L in (2, 5, 3)]
    y = [torch.tensor([0, -1]), torch.tensor([1, 2, 0, 1, 2]), torch.tensor([-1, -1, 2])]
    batches = [pad_collate(list(zip(x[:1], y[:1], strict=True)), batch_first=True),
               pad_collate(list(zip(x[1:], y[1:], strict=True)), batch_first=True)]  # fmt: skip
    assert [count_tokens(b) for b in batches] == [1, 6]  # -100 padding and -1 left out

    class Tagger(nn.Module):  # logits (B, T, 3) of each token id
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(4, 3)

        def forward(self, ids, state, lengths):
            return self.emb(ids), state

    torch.manual_seed(0)
    model = Tagger()
    total, tokens = evaluate_batches(model, batches, tag.step_fn, carry_state=False)
    logits, targets = model.emb(torch.cat(x)).detach(), torch.cat(y)
    expected = F.cross_entropy(logits, targets.masked_fill(targets < 0, -100), ignore_index=-100)
    assert tokens == 7 and total / tokens == pytest.approx(float(expected))
