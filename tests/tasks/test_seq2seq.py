"""The seq2seq task's data: number words and the generated pairs' sizes."""

from __future__ import annotations

import numpy as np
import pytest

from rnnkit.tasks.seq2seq import Seq2SeqData, number_to_words


def test_number_words_by_hand():
    assert number_to_words(0) == ["zero"]
    assert number_to_words(341) == ["three", "hundred", "forty", "one"]
    assert number_to_words(100_020) == ["one", "hundred", "thousand", "twenty"]
    assert number_to_words(np.int64(2_000_001)) == ["two", "million", "one"]


@pytest.mark.parametrize("n", [True, 2.5, 2.0, -1, 10**9])
def test_number_to_words_refuses_what_is_no_int_in_range(n):
    """True was read as 1 ("one") and 2.5 failed indexing the word list (a TypeError naming no argument)."""
    with pytest.raises(ValueError, match=rf"n must be an int in \[0, 10\*\*9\), got {n!r}"):
        number_to_words(n)


@pytest.mark.parametrize(
    ("kw", "name"),
    [({"n_train": True}, "n_train"), ({"n_valid": 2.5}, "n_valid"), ({"max_number": 50.0}, "max_number")],
)
def test_generate_refuses_sizes_that_are_no_ints(kw, name):
    """n_train=True drew one pair; n_valid=2.5 failed slicing the numbers and max_number=50.0 inside
    torch.randperm, naming neither the argument nor the value."""
    args = {"n_train": 3, "n_valid": 2, "max_number": 50, **kw}
    with pytest.raises(ValueError, match=rf"{name} must be an int, got {kw[name]!r}"):
        Seq2SeqData.generate(args.pop("n_train"), args.pop("n_valid"), **args)


def test_generate_takes_numpy_ints_and_keeps_the_parts_disjoint():
    d = Seq2SeqData.generate(np.int64(30), np.int64(10), max_number=np.int64(40), seed=1)
    assert (len(d.train), len(d.valid)) == (30, 10)
    train, valid = ({tuple(s.tolist()) for s, _ in part} for part in (d.train, d.valid))
    assert len(train | valid) == 40  # every number once: the parts are disjoint


def test_a_bidirectional_encoders_summary_is_forward_at_the_last_valid_step_and_backward_at_step_0():
    """``--opt bidirectional=true``: the summary's backward half was the output at the last valid
    step, which had read that one source token."""
    import torch

    from rnnkit.tasks.seq2seq import Seq2Seq

    torch.manual_seed(0)
    arch = {"cell": "gru", "hidden": 5, "layers": 1, "dropout": 0.0, "options": {"bidirectional": True}}
    m = Seq2Seq(arch, 10, 12)
    src, lengths = torch.randint(1, 10, (2, 5)), torch.tensor([5, 3])
    with torch.no_grad():
        c = m.encode(src, lengths)
        for b, n in enumerate(lengths.tolist()):
            out, _ = m.encoder(m.src_embed(src[b : b + 1, :n]), None)
            torch.testing.assert_close(c[b], torch.cat([out[0, n - 1, :5], out[0, 0, 5:]]))
