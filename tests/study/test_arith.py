import numpy as np
import pytest
import torch

from rnnkit.study import arith


def test_format_example():
    assert arith.format_example(12, 345, "+") == "12+345=357"
    assert arith.format_example(907, 4321, "-") == "907-4321=-3414"
    assert arith.format_example(5, 0, "-", blanks=2) == "5-0=__5"
    with pytest.raises(ValueError, match="op must be"):
        arith.format_example(1, 2, "*")


def test_encode_scores_exactly_the_answer():
    x, y = arith.encode(["12+345=357"])
    assert arith.decode(x[:, 0]) == "12+345=357"  # the end mark is never an input
    scored = [(t, arith.VOCAB[int(y[t, 0])]) for t in range(len(y)) if y[t, 0] != arith.IGNORE]
    # position t predicts character t + 1: "=" (t=6) predicts "3", ..., "7" (t=9) predicts "."
    assert scored == [(6, "3"), (7, "5"), (8, "7"), (9, ".")]


def test_encode_pads_and_skips_blanks():
    x, y = arith.encode(["1+1=__2", "10-200=-190"])
    assert x.shape == y.shape == (11, 2)
    assert arith.decode(y[y[:, 0] != arith.IGNORE, 0]) == "2."  # blanks carry nothing: unscored
    assert arith.decode(y[y[:, 1] != arith.IGNORE, 1]) == "-190."
    assert (x[7:, 0] == arith.PAD).all() and (y[7:, 0] == arith.IGNORE).all()
    with pytest.raises(ValueError, match="not an Arith problem"):
        arith.encode(["12+3"])


def test_exact_match_needs_every_answer_character():
    x, y = arith.encode(["12+345=357", "1+2=3"])
    logits = torch.zeros(*y.shape, len(arith.VOCAB))
    logits.scatter_(2, y.clamp(min=0).unsqueeze(-1), 1.0)  # right everywhere it is scored
    assert arith.exact_match(logits, y).tolist() == [True, True]
    logits[8, 0] = 0.0
    logits[8, 0, arith.STOI["8"]] = 1.0  # "358": one wrong digit
    logits[0, 1] = 0.0
    logits[0, 1, arith.STOI["9"]] = 1.0  # an unscored position: irrelevant
    assert arith.exact_match(logits, y).tolist() == [False, True]


def test_generate_digit_counts_and_values():
    probs = arith.generate(2000, 3, np.random.default_rng(0), ops="+-")
    lens = []
    for p in probs:
        lhs, ans = p.split("=")
        op = "+" if "+" in lhs else "-"
        a, b = lhs.split(op)
        assert a == str(int(a)) and b == str(int(b))  # no leading zeros
        lens += [len(a), len(b)]
        assert int(ans) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    counts = np.bincount(lens)[1:]
    assert len(counts) == 3 and counts.min() > 0.28 * len(lens)  # lengths uniform in 1..3
    assert probs == arith.generate(2000, 3, np.random.default_rng(0), ops="+-")


def test_generate_refuses_operands_past_int64():
    """19 digits drew ``integers(10**18, 10**19)``: numpy's "high is out of bounds for int64", and
    only once a 19-digit operand came up (a study failed after its first runs, or not at all)."""
    probs = arith.generate(200, 18, np.random.default_rng(0))
    lhs = [p.split("=")[0].replace("-", "+").split("+") for p in probs]
    assert max(len(x) for ops in lhs for x in ops) == 18  # the largest operands are fine
    for digits in (19, 30):
        with pytest.raises(ValueError, match=rf"max_digits must be in \[1, 18\] .*got {digits}"):
            arith.generate(1, digits, np.random.default_rng(0))


def test_accuracy_of_a_perfect_oracle():
    problems = ["12+345=357", "99-100=-1"]

    class Oracle(torch.nn.Module):
        def forward(self, x):
            _, y = arith.encode(problems)
            return torch.nn.functional.one_hot(y.clamp(min=0), len(arith.VOCAB)).float()

    assert arith.accuracy(Oracle(), problems) == 1.0


def test_accuracy_restores_the_modes_when_the_model_raises(failing_model):
    """``model.train(was)`` came after the loop, not in a ``finally``: a forward that raised left the
    model in eval mode. Each module's own mode is back, on an error too."""
    with pytest.raises(RuntimeError, match="forward failed"):
        arith.accuracy(failing_model, ["1+1=2"])
    assert failing_model.training and not failing_model.frozen.training
