"""Step-by-step decoding of the task models with batch norm's per-time-step statistics: every
decoder fed one step at a time normalized each step with slot 0's statistics (the layer
call's first slot) where one call over the sequence, and training's windows, use slot ``t``.
The oracle: one call over the whole (teacher-forced or generated) sequence in evaluation."""

from __future__ import annotations

import functools

import pytest
import torch

import rnnkit
from rnnkit.datasets import CharVocab
from rnnkit.tasks import CharLM, sample
from rnnkit.tasks.forecast import Forecaster
from rnnkit.tasks.memory import arith, arith_greedy, memory_model
from rnnkit.tasks.seq2seq import BOS, Seq2Seq, greedy_decode

ARCH = {"cell": "lstm", "hidden": 6, "layers": 2, "dropout": 0.0, "options": {"norm": "batch", "max_len": 9}}


def _scrambled(m):
    """Distinct running statistics per slot (evaluation mode): a wrong slot changes the numbers."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, b in m.named_buffers():
            if "running" in name:
                b.copy_(torch.rand_like(b) * 2 + (0.5 if "var" in name else -1))
    return m.eval()


def test_forecaster_unroll_and_forecast_match_one_call():
    torch.manual_seed(0)
    model = _scrambled(Forecaster(ARCH))
    windows = torch.randn(3, 7, 1)
    # teacher forcing: the unrolled horizon is the one-step predictor over the whole window
    want = torch.nn.functional.mse_loss(model(windows[:, :-1])[0], windows[:, 1:])
    torch.testing.assert_close(model.loss(windows, horizon=3), want)
    # free running: each prediction is the one-call prediction after the values so far
    ctx, seq = windows[:, :4], windows[:, :4]
    for _ in range(3):
        seq = torch.cat([seq, model(seq)[0][:, -1:]], 1)
    torch.testing.assert_close(model.forecast(ctx, 3), seq[:, 4:])


def test_seq2seq_decoder_matches_one_call():
    torch.manual_seed(0)
    model = _scrambled(Seq2Seq(ARCH, src_vocab=7, tgt_vocab=7, embedding_dim=5))
    src, lengths = torch.randint(3, 7, (2, 4)), torch.tensor([4, 3])
    tgt = torch.randint(3, 7, (2, 5))
    c = model.encode(src, lengths)

    def decoder_logits(prev):  # prev (B, T): the tokens fed, BOS first
        x = torch.cat([model.tgt_embed(prev), c[:, None].expand(-1, prev.shape[1], -1)], -1)
        return model.out(model.decoder(x)[0])

    bos = torch.full((2, 1), BOS)
    torch.testing.assert_close(model(src, lengths, tgt), decoder_logits(torch.cat([bos, tgt[:, :-1]], 1)))
    prev = bos
    for _ in range(4):
        prev = torch.cat([prev, decoder_logits(prev)[:, -1:].argmax(-1)], 1)
    assert greedy_decode(model, src, lengths, 4) == prev[:, 1:].tolist()  # (no EOS: never drawn)


def test_zero_steps_decode_nothing_and_negative_steps_are_refused():
    """greedy_decode(max_len=0) and forecast(horizon=0) failed inside torch.stack (an empty
    list); zero steps give the documented shape, empty, and a negative count is an error."""
    from rnnkit.tasks.forecast import forecast_next

    torch.manual_seed(0)
    s2s = Seq2Seq(ARCH, src_vocab=7, tgt_vocab=7, embedding_dim=5)
    src, lengths = torch.randint(3, 7, (2, 4)), torch.tensor([4, 3])
    assert greedy_decode(s2s, src, lengths, 0) == [[], []]
    for bad in (-1, True, 2.0):  # (True decoded one token, 2.0 failed inside range())
        with pytest.raises(ValueError, match=f"max_len must be an int >= 0, got {bad}"):
            greedy_decode(s2s, src, lengths, bad)
    f = Forecaster(ARCH)
    assert f.forecast(torch.randn(3, 4, 1), 0).shape == (3, 0, 1)
    assert forecast_next(f, torch.arange(6.0), 4, 0, 0.0, 1.0).shape == (0,)
    for bad in (-2, True, 2.0):
        with pytest.raises(ValueError, match=f"horizon must be an int >= 0, got {bad}"):
            forecast_next(f, torch.arange(6.0), 4, bad, 0.0, 1.0)


def test_arith_greedy_matches_one_call():
    torch.manual_seed(0)
    model = _scrambled(memory_model("arith", ARCH, {}))
    x, y = arith(4, 2, seed=0)
    calls = []  # the logits of each call's last step (an untrained model's argmax hardly moves)
    hook = model.register_forward_hook(lambda m, args, out: calls.append(out[0][:, -1]))
    pred = arith_greedy(model, x, y, 2)
    hook.remove()
    q = 6
    want = model(torch.cat([x[:, :q], pred[:, :-1]], 1))[0][:, q - 1 :]
    torch.testing.assert_close(torch.stack(calls, 1), want)
    torch.testing.assert_close(pred, want.argmax(-1))


VOCAB = CharVocab.from_text("abcdefgh \n")


@pytest.mark.parametrize("seq_len", [None, 3])
def test_charlm_sample_matches_its_windows(seq_len):
    """Without ``seq_len`` the text is one sequence (one call over it is the oracle); with it,
    windows of ``seq_len`` with the state carried, as training and ``evaluate_lm`` read text."""
    torch.manual_seed(0)
    factory = functools.partial(rnnkit.LSTM, norm="batch", max_len=9)
    model = _scrambled(CharLM(len(VOCAB), hidden_size=6, num_layers=2, embedding_dim=5, rnn_factory=factory))
    got = "".join(sample(model, VOCAB, "abcd", 6, 0.0, seq_len=seq_len))
    text = "abcd"
    for _ in range(6):
        ids, w = VOCAB.encode(text)[None], seq_len or len(text)
        state = None
        for i in range(0, ids.shape[1], w):
            logits, state = model(ids[:, i : i + w], state)
        text += VOCAB.chars[int(logits[0, -1].argmax())]
    assert got == text[4:]


def test_charlm_sample_rejects_a_bad_seq_len():
    with pytest.raises(ValueError, match="seq_len must be a positive int"):
        next(sample(CharLM(len(VOCAB), 4, 1, 3), VOCAB, "ab", 2, seq_len=0))


def _modes(model):
    return [m.training for m in model.modules()]


def test_decoding_and_evaluation_leave_the_model_in_the_modes_they_found():
    """greedy_decode, forecast_next, rolling forecasts and the classify/tag prediction helpers put
    the model in eval mode and left it there: called inside a training loop (a metric every few
    steps), dropout and batch norm's batch statistics stayed off for the rest of training. Each
    module's own mode comes back (a batch norm the user froze in eval mode stays so)."""
    from rnnkit.tasks.classify import classifier, predict_texts
    from rnnkit.tasks.forecast import forecast_next
    from rnnkit.tasks.tag import predict_tags, tagger

    arch = {**ARCH, "options": {}}
    s2s = Seq2Seq(arch, src_vocab=7, tgt_vocab=7, embedding_dim=5).train()
    s2s.out.eval()  # (one module in another mode: restored as it was)
    want = _modes(s2s)
    greedy_decode(s2s, torch.randint(3, 7, (2, 4)), torch.tensor([4, 3]), 3)
    assert _modes(s2s) == want and s2s.training
    fc = Forecaster(arch).train()
    forecast_next(fc, torch.randn(9), window=5, horizon=2, mean=0.0, std=1.0)
    assert all(_modes(fc))
    clf = classifier(arch, 3, {"vocab_size": 6, "padding_idx": 0}).train()
    predict_texts(clf, ["a b"], ["<pad>", "<unk>", "a", "b", "c", "d"], "word", ["x", "y", "z"])
    assert all(_modes(clf))
    tg = tagger(arch, 6, 3, embedding_dim=4).train()
    predict_tags(tg, [["a", "b"]], ["<pad>", "<unk>", "a", "b", "c", "d"], ["x", "y", "z"])
    assert all(_modes(tg))
    fc.eval()  # and a model in eval mode stays in eval mode
    forecast_next(fc, torch.randn(9), window=5, horizon=2, mean=0.0, std=1.0)
    assert not any(_modes(fc))


def test_exact_match_of_no_pairs_is_refused():
    from rnnkit.tasks.seq2seq import exact_match

    model = Seq2Seq({**ARCH, "options": {}}, src_vocab=7, tgt_vocab=7, embedding_dim=5)
    with pytest.raises(ValueError, match="at least one .source, target. pair, got none"):
        exact_match(model, [])


def test_charlm_sample_leaves_each_module_in_the_mode_it_found():
    """sample() restored the model with model.train(was_training), which set every submodule: a
    module the user kept in eval mode inside a training model (a frozen embedding, batch norm)
    came back in training mode after a sample drawn mid-training. Each module's flag comes back."""
    model = CharLM(len(VOCAB), 4, 1, 3).train()
    model.rnn.eval()  # (one module in another mode: restored as it was)
    want = _modes(model)
    assert len("".join(sample(model, VOCAB, "ab", 3, 0.0))) == 3
    assert _modes(model) == want
