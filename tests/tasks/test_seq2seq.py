"""The seq2seq task's data: number words and the generated pairs' sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnkit.tasks.seq2seq import Seq2Seq, Seq2SeqData, number_to_words, words_to_number


def test_number_words_by_hand():
    assert number_to_words(0) == ["zero"]
    assert number_to_words(341) == ["three", "hundred", "forty", "one"]
    assert number_to_words(100_020) == ["one", "hundred", "thousand", "twenty"]
    assert number_to_words(np.int64(2_000_001)) == ["two", "million", "one"]


def test_words_to_number_inverts_the_rendering_only():
    """predict's words2digits check: the task's own words give their number back, anything else None."""
    for n in [*range(2000), 100_020, 2_000_001, 999_999_999, 10**6, 123_456_789]:
        assert words_to_number(number_to_words(n)) == n
    for words in ["", "one hundred and five", "nineteen hundred", "one thousand zero", "twelve seven",
                  "thousand", "zero hundred", "one thousand million", "one million million"]:  # fmt: skip
        assert words_to_number(words.split()) is None, words


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


def _arch(**options):
    return {"cell": "lstm", "hidden": 8, "layers": 2, "dropout": 0.0, "options": options}


def _batch():
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randint(4, 10, (3, 5), generator=g), torch.randint(4, 12, (3, 4), generator=g)
    return src, torch.tensor([5, 4, 2]), tgt


@pytest.mark.parametrize("options", [{}, {"norm": "batch"}])
def test_bidirectional_option_makes_only_the_encoder_bidirectional(options):
    """The decoder was built bidirectional too: fed one step at a time its backward direction was a
    second forward one, and with norm=batch the decoder's step was refused ('needs a unidirectional
    layer')."""
    m = Seq2Seq(_arch(bidirectional=True, **options), 10, 12, 4)
    assert m.encoder.bidirectional and not m.decoder.bidirectional
    assert m.decoder.input_size == 4 + 16 and m.out.in_features == 8  # reads the encoder's [fwd | bwd]
    assert m(*_batch()).shape == (3, 4, 12)


def test_unidirectional_checkpoints_load_unchanged():
    m = Seq2Seq(_arch(), 10, 12, 4)
    assert m.decoder.input_size == 4 + 8 and m.out.in_features == 8
    Seq2Seq(_arch(), 10, 12, 4).load_state_dict(m.state_dict())


def test_a_checkpoint_with_a_bidirectional_decoder_is_refused_clearly():
    m = Seq2Seq(_arch(bidirectional=True), 10, 12, 4)
    old = {k: v for k, v in m.state_dict().items() if not k.startswith("out.")}
    old["out.weight"], old["out.bias"] = torch.zeros(12, 16), torch.zeros(12)
    before = m.out.weight.clone()
    msg = r"decoder is bidirectional \(out.weight \(12, 16\), expected \(12, 8\)"
    with pytest.raises(RuntimeError, match=msg):
        m.load_state_dict(old)
    assert m.out.weight.equal(before)


def test_translate_refuses_a_str_source():
    """A str source was split into characters: "three hundred" failed on the unknown token 't',
    and "312" translated as the tokens 3, 1, 2 by chance. It is now an error saying how to split it."""
    from rnnkit.tasks.seq2seq import translate

    torch.manual_seed(0)
    arch = {"cell": "gru", "hidden": 5, "layers": 1, "dropout": 0.0, "options": {}}
    for direction, text in (("words2digits", "three hundred"), ("digits2words", "312")):
        d = Seq2SeqData.generate(20, 5, max_number=100, direction=direction)
        m = Seq2Seq(arch, len(d.src_vocab), len(d.tgt_vocab))
        tokens = text.split() if direction == "words2digits" else list(text)
        with pytest.raises(ValueError, match=r"input 2: expected a list of tokens, got the str"):
            translate(m, [tokens, text], d.src_vocab, d.tgt_vocab)
        with pytest.raises(ValueError, match=r"sources must be a list of token lists, got the str"):
            translate(m, text, d.src_vocab, d.tgt_vocab)
        assert len(translate(m, [tokens], d.src_vocab, d.tgt_vocab, max_len=3)) == 1  # tokens: unchanged
