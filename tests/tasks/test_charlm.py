"""Fast tests of the character language model and sampler."""

from __future__ import annotations

import functools
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.datasets import CharVocab
from rnnkit.tasks import BASELINE, RECIPE, RECIPE_LONG, CharLM, detach_state, lr_at, recipe_for, sample

VOCAB = CharVocab.from_text("abcdefgh \n")


def _model(factory=nn.LSTM, layers: int = 2) -> CharLM:
    torch.manual_seed(0)
    return CharLM(len(VOCAB), hidden_size=16, num_layers=layers, embedding_dim=8,
                  rnn_factory=factory).eval()  # fmt: skip


@pytest.mark.parametrize("factory", [nn.LSTM, nn.GRU, nn.RNN, rnnkit.QRNN])
def test_shapes_and_state_carry(factory) -> None:
    model = _model(factory)
    x = torch.randint(0, len(VOCAB), (3, 10))
    logits, state = model(x)
    assert logits.shape == (3, 10, len(VOCAB))
    h = state[0] if isinstance(state, tuple) else state
    assert h.shape == (2, 3, 16)
    first, s = model(x[:, :4])
    second, s = model(x[:, 4:], s)
    torch.testing.assert_close(torch.cat([first, second], 1), logits)


def test_factory_receives_standard_arguments() -> None:
    seen = {}

    def factory(*args, **kw):
        seen.update(args=args, kw=kw)
        return nn.LSTM(*args, **kw)

    CharLM(10, 32, 3, 8, dropout=0.1, rnn_factory=factory)
    assert seen["args"] == (8, 32)
    assert seen["kw"] == {"num_layers": 3, "batch_first": True, "dropout": 0.1}


def test_projection_width_and_no_bidirectional_stack() -> None:
    """The head reads what the stack outputs (proj_size wide with a projection: it read
    hidden_size and failed on the first batch); a bidirectional stack is refused (it would have
    read the characters it predicts)."""
    import functools

    import rnnkit

    model = _model(functools.partial(rnnkit.LSTM, proj_size=5))
    assert model.head.in_features == 5
    logits, (h, c) = model(torch.randint(0, len(VOCAB), (2, 7)))
    assert logits.shape == (2, 7, len(VOCAB)) and h.shape == (2, 2, 5) and c.shape == (2, 2, 16)
    with pytest.raises(ValueError, match="unidirectional"):
        _model(functools.partial(nn.LSTM, bidirectional=True))


def test_detach_state() -> None:
    h = torch.zeros(2, requires_grad=True) * 2
    out = detach_state((h, h))
    assert isinstance(out, tuple) and not out[0].requires_grad
    assert detach_state(None) is None and not detach_state(h).requires_grad


def test_sample_deterministic_and_streaming() -> None:
    model = _model()
    model.train()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    it = sample(model, VOCAB, "abc", 20, 1.0, g1)
    first = next(it)
    assert isinstance(first, str) and len(first) == 1
    a = first + "".join(it)
    b = "".join(sample(model, VOCAB, "abc", 20, 1.0, g2))
    assert a == b and len(a) == 20 and set(a) <= set(VOCAB.chars)
    assert model.training  # mode restored
    greedy = "".join(sample(model, VOCAB, "abc", 10, 0.0))
    assert greedy == "".join(sample(model, VOCAB, "abc", 10, 0.0))


@pytest.mark.parametrize("factory", [nn.LSTM, rnnkit.QRNN])
def test_sample_matches_full_forward(factory) -> None:
    """Streaming with state equals rerunning the whole sequence (greedy)."""
    model = _model(factory)
    out = "".join(sample(model, VOCAB, "ab", 12, 0.0))
    seq = "ab"
    for ch in out:
        logits, _ = model(VOCAB.encode(seq).unsqueeze(0))
        assert VOCAB.chars[int(logits[0, -1].argmax())] == ch
        seq += ch


@pytest.mark.parametrize("factory", [nn.LSTM, rnnkit.QRNN, functools.partial(rnnkit.QRNN, window=1)])
def test_scoring_one_char_at_a_time_equals_the_whole_sequence(factory) -> None:
    """Teacher-forced log-probabilities fed one character at a time with the state carried (what
    sampling does) == one call on the whole text. The QRNN (window=2) restarted its convolution
    from x_{-1} = 0 at every call: its h_n held only c (log-probs off by ~0.1)."""
    model = _model(factory)
    x = VOCAB.encode("abc defgh\nhgf edcba").unsqueeze(0)
    whole = torch.log_softmax(model(x)[0], -1)
    state, steps = None, []
    for t in range(x.shape[1]):
        logits, state = model(x[:, t : t + 1], state)
        steps.append(torch.log_softmax(logits, -1))
    torch.testing.assert_close(torch.cat(steps, 1), whole, rtol=1e-10, atol=1e-10)


def test_sample_errors() -> None:
    model = _model()
    with pytest.raises(ValueError, match="prime"):
        next(sample(model, VOCAB, "", 5))
    # ("x" failed in the comparison's words, True sampled at 1, inf uniformly)
    for bad in (-1.0, "x", True, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=f"temperature must be a finite number >= 0, got {bad!r}"):
            next(sample(model, VOCAB, "a", 5, bad))
    with pytest.raises(ValueError, match="vocabulary"):
        next(sample(model, VOCAB, "xyz", 5))


def test_lr_schedule() -> None:
    assert lr_at(RECIPE, 1.0) == pytest.approx(RECIPE.lr * RECIPE.final_lr_ratio)
    peak = max(lr_at(RECIPE, i / 1000) for i in range(1001))
    assert peak == pytest.approx(RECIPE.lr, rel=1e-3)
    assert lr_at(RECIPE, 0.0) < RECIPE.lr
    assert lr_at(BASELINE, 0.0) == lr_at(BASELINE, 0.7) == BASELINE.lr
    lrs = [lr_at(RECIPE, i / 100) for i in range(100)]
    top = lrs.index(max(lrs))
    assert all(a >= b for a, b in zip(lrs[top:], lrs[top + 1 :], strict=False))
    assert RECIPE.to_dict()["hidden_size"] == RECIPE.hidden_size


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("schedule", "cosin", "schedule must be one of 'cosine', 'linear', 'constant', got 'cosin'"),
        ("warmup", 1.0, r"warmup must be a fraction of the budget in \[0, 1\), got 1.0"),
        ("warmup", -0.1, "warmup"),
        ("final_lr_ratio", -0.5, r"final_lr_ratio must be in \[0, 1\], got -0.5"),
        ("final_lr_ratio", float("nan"), "final_lr_ratio"),
        ("lr", 0.0, "lr must be a positive number, got 0.0"),
        ("lr", float("inf"), "lr must be"),
        ("hidden_size", 0, "hidden_size must be a positive int, got 0"),
        ("seq_len", 2.5, "seq_len must be a positive int"),
        ("dropout", 1.0, r"dropout must be in \[0, 1\)"),
        ("betas", (0.9, 1.0), r"betas must be two numbers in \[0, 1\)"),
        ("weight_decay", -1.0, "weight_decay must be a number >= 0"),
        ("clip", float("nan"), "clip must be a number >= 0"),
        ("lr", True, "lr must be a number, got True"),
        ("dropout", "0.1", "dropout must be a number, got '0.1'"),
        ("warmup", np.array(0.1), r"warmup must be a number, got array\(0.1\)"),
        ("lr", 10**400, "lr must be a number, got 1000"),  # past float's range: an OverflowError before
    ],
)
def test_recipe_is_checked_when_made(field, value, match) -> None:
    """A recipe's fields were never checked: an unknown schedule raised in lr_at only once the
    warmup was over (mid-run), a warmup of 1 divided by a 1e-9 floor, a negative floor ratio
    gave negative learning rates. Now the recipe refuses them when it is made."""
    with pytest.raises(ValueError, match=match):
        replace(RECIPE, **{field: value})


def test_recipe_and_sample_take_numpy_ints() -> None:
    """A numpy integer (``np.int64`` read from an array of sizes) was refused as a recipe's size
    or the sampler's seq_len, where the layers take one (``rnnkit._checks.is_int``); a recipe
    keeps it as a plain int, so that its ``to_dict()`` stays JSON-able."""
    recipe = replace(RECIPE, hidden_size=np.int64(64), seq_len=np.int32(50))
    assert type(recipe.hidden_size) is int and type(recipe.seq_len) is int
    assert json.loads(json.dumps(recipe.to_dict()))["seq_len"] == 50
    model = _model()
    text = "".join(sample(model, VOCAB, "abc", 6, 0.0, seq_len=np.int64(2)))
    assert text == "".join(sample(model, VOCAB, "abc", 6, 0.0, seq_len=2))
    with pytest.raises(ValueError, match="seq_len must be a positive int or None, got True"):
        next(sample(model, VOCAB, "abc", 6, 0.0, seq_len=True))


def test_recipe_keeps_numpy_floats_as_floats() -> None:
    """A numpy float (``np.float32(3e-3)``) was refused as the learning rate but kept as a numpy
    value in the other float fields, where ``to_dict()`` then failed to go to JSON."""
    recipe = replace(RECIPE, lr=np.float32(0.5), dropout=np.float64(0.25), clip=np.int64(2))
    assert (type(recipe.lr), type(recipe.dropout), type(recipe.clip)) == (float, float, float)
    assert json.loads(json.dumps(recipe.to_dict()))["dropout"] == 0.25


def test_recipe_by_budget() -> None:
    """Below 12 minutes (bf16: 9) 2x384 without dropout, from there on 2x512 with dropout 0.2, the
    rest equal."""
    assert recipe_for(None) is recipe_for(5) is recipe_for(11.9) is RECIPE
    assert recipe_for(12) is recipe_for(30) is RECIPE_LONG
    # under bfloat16 autocast (faster steps) the larger model pays off from 9 minutes
    assert recipe_for(8.9, bf16=True) is recipe_for(None, bf16=True) is RECIPE
    assert recipe_for(9, bf16=True) is recipe_for(30, bf16=True) is RECIPE_LONG
    assert (RECIPE_LONG.hidden_size, RECIPE_LONG.dropout, RECIPE.dropout) == (512, 0.2, 0.0)
    rest = {k: v for k, v in RECIPE.to_dict().items() if k not in ("hidden_size", "dropout")}
    assert {k: v for k, v in RECIPE_LONG.to_dict().items() if k in rest} == rest


@pytest.mark.parametrize("length", [-1, True, 2.0])
def test_sample_refuses_a_length_that_is_no_count(length) -> None:
    """A negative length sampled nothing and True one character, silently (the CLI's --length
    was checked, the library's not); a float failed in range()'s words."""
    with pytest.raises(
        ValueError, match=rf"length must be an int >= 0 \(the characters to sample\), got {length!r}"
    ):
        next(sample(_model(), VOCAB, "ab", length))
    assert list(sample(_model(), VOCAB, "ab", np.int64(0))) == []
    assert len(list(sample(_model(), VOCAB, "ab", np.int64(3), 0.0))) == 3
