"""The baselines (TCN, conv front end), ``--arch`` building, and the task model files."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit.arch import arch_names, build_recurrent
from rnnkit.baselines import TCN, ConvRecurrent, tcn_receptive_field


def cfg(cell, **kw):
    return {"cell": cell, "hidden": 5, "layers": 2, "dropout": 0.0, "options": {}, "kernel_size": 3,
            "conv_channels": 4, "conv_layers": 2, **kw}  # fmt: skip


@pytest.mark.parametrize("arch", ["tcn", "conv-lstm", "conv-gru", "lstm", "qrnn", "conv-qrnn", "mingru"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_streaming_equals_one_pass(arch, batch_first):
    """Running in chunks with the state carried == one run over the whole sequence."""
    torch.manual_seed(0)
    m = build_recurrent(cfg(arch), 3, batch_first=batch_first)
    x = torch.randn(2, 11, 3) if batch_first else torch.randn(11, 2, 3)
    full, _ = m(x)
    td = 1 if batch_first else 0
    parts, state = [], None
    for chunk in x.split([4, 1, 6], dim=td):
        y, state = m(chunk, state)
        parts.append(y)
    torch.testing.assert_close(torch.cat(parts, td), full, rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch", ["tcn", "conv-lstm", "conv-gru"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_bidirectional_padded_batch_equals_each_sequence_alone(arch, batch_first):
    """Centred kernels (the tagger's bidirectional encoders) never see another step's padding:
    with ``lengths`` a padded sequence's valid outputs are those of the sequence alone."""
    torch.manual_seed(0)
    m = build_recurrent(cfg(arch), 3, batch_first=batch_first, bidirectional=True)
    lengths = torch.tensor([9, 4, 6])
    xs = [torch.randn(int(n), 3) for n in lengths]
    pad = torch.nn.utils.rnn.pad_sequence(xs, batch_first=batch_first, padding_value=5.0)  # loud padding
    out, _ = m(pad, None, lengths=lengths)
    for i, (x, n) in enumerate(zip(xs, lengths.tolist(), strict=True)):
        alone, _ = m(x.unsqueeze(0 if batch_first else 1), None, lengths=lengths[i : i + 1])
        got = out[i, :n] if batch_first else out[:n, i]
        want = alone[0] if batch_first else alone[:, 0]
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("arch", ["tcn", "conv-lstm", "qrnn"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padded_batch_outputs_past_each_length_are_zero(arch, bidirectional):
    """As the recurrent layers' (a mean over time, a loss over every output): the TCN returned its
    biases and residuals there, in both modes, and passed gradients back to the padding."""
    torch.manual_seed(0)
    m = build_recurrent(cfg(arch), 3, batch_first=True, bidirectional=bidirectional)
    lengths = torch.tensor([2, 6, 4])
    x = torch.randn(3, 6, 3, requires_grad=True)
    out, _ = m(x, None, lengths=lengths)
    out.sum().backward()
    for i, n in enumerate(lengths.tolist()):
        assert not out[i, n:].any() and not x.grad[i, n:].any()


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize(
    ("lengths", "match"),
    [([4], "one entry per sequence"), ([7, 2, 3], r"lie in \[1, 6\]"), ([0, 2, 3], r"lie in \[1, 6\]"),
     ([2.5, 3.0, 3.0], "integers")],
)  # fmt: skip
def test_tcn_checks_lengths_in_both_modes(bidirectional, lengths, match):
    """The centred TCN built its padding mask from ``lengths`` unchecked: one length for three
    sequences was broadcast to all of them, lengths past T or 0 taken; it checks them as the
    causal one and the recurrent layers do."""
    m = TCN(2, 4, 2, batch_first=True, bidirectional=bidirectional)
    with pytest.raises(ValueError, match=match):
        m(torch.randn(3, 6, 2), lengths=torch.tensor(lengths))


@pytest.mark.parametrize("arch", ["tcn", "conv-lstm"])
@pytest.mark.parametrize("kernel_size", [1, 3])
def test_a_wrong_state_is_a_clear_error(arch, kernel_size):
    """A state of another batch size failed in torch.cat ("Sizes of tensors must match"), one of
    too few blocks in zip(); now errors naming the expected and received shapes / lengths."""
    m = build_recurrent(cfg(arch, kernel_size=kernel_size), 3, batch_first=True)
    _, state = m(torch.randn(3, 4, 3))
    context = kernel_size - 1  # first convolution: dilation 1
    with pytest.raises(ValueError, match=rf"expected shape \(2, 3, {context}\) .*got \(3, 3, {context}\)"):
        m(torch.randn(2, 4, 3), state)
    short = state[:1] if arch == "tcn" else (state[0][:1], state[1])
    n = 2  # levels / conv layers of cfg()
    with pytest.raises(ValueError, match=rf"state must hold {n} entries .*got tuple of length 1"):
        m(torch.randn(3, 4, 3), short)


@pytest.mark.parametrize("arch", ["tcn", "conv-lstm"])
@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.randn(3, 4, 2), r"input has 2 features .* expects input_size=3"),
        (torch.randn(3, 4, 3, dtype=torch.float32), "input has dtype torch.float32 but the parameters are"),
        (torch.randn(3, 0, 3), "at least one time step"),
    ],
)
def test_a_wrong_input_is_a_clear_error(arch, x, match):
    """An input of another feature size failed in the first convolution's torch.cat ("Sizes of
    tensors must match except in dimension 2"), another dtype in conv1d, no time step on the
    kernel size; each is now the recurrent layers' error, naming expected and received."""
    m = build_recurrent(cfg(arch), 3, batch_first=True)
    with pytest.raises(ValueError, match=match):
        m(x)


@pytest.mark.parametrize("arch", ["tcn", "conv-lstm"])
def test_a_state_of_another_dtype_or_form_is_a_clear_error(arch):
    """A float32 past with a float64 model and input was promoted by torch.cat without a word
    (float64 outputs from a float32 state); a TCN level that is not a (past1, past2) pair failed
    unpacking it. Now errors as for a recurrent layer's h0 / naming the level."""
    m = build_recurrent(cfg(arch), 3, batch_first=True)
    x = torch.randn(3, 4, 3)
    _, state = m(x)
    # the first convolution's past in float32 (TCN: of level 0; conv front end: of conv 0)
    f32 = ((state[0][0].float(), *state[0][1:]), *state[1:])
    msg = r"convolution \(its past inputs\) has dtype torch.float32 but the parameters are torch.float64"
    with pytest.raises(ValueError, match=msg):
        m(x, f32)
    if arch == "tcn":
        one, tensor = (state[0][0],), state[0][0]
        for bad, got in ((one, "tuple of length 1"), (tensor, r"a tensor of shape \(3, 3, 2\)")):
            with pytest.raises(ValueError, match=rf"TCN level 0 state must hold 2 entries .*got {got}"):
                m(x, (bad, *state[1:]))


@pytest.mark.parametrize("arch", ["tcn", "conv-lstm", "conv-gru", "conv-qrnn"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_padded_batch_state_continues_each_sequence(arch, batch_first):
    """The state after a padded batch (``lengths``) carries each sequence's own last steps as the
    convolutions' past: a common start, a padded middle, then a continuation == each sequence
    alone, unpadded. Lengths 1 and 2 are shorter than a context (the past then ends with the
    incoming state's), 9 is longer than all."""
    torch.manual_seed(0)
    m = build_recurrent(cfg(arch), 3, batch_first=batch_first)
    bd = 0 if batch_first else 1
    lengths = torch.tensor([9, 1, 5, 2])
    start = torch.randn(4, 2, 3) if batch_first else torch.randn(2, 4, 3)
    mids = [torch.randn(int(n), 3) for n in lengths]
    tail = torch.randn(4, 3, 3) if batch_first else torch.randn(3, 4, 3)
    _, state = m(start)
    pad = torch.nn.utils.rnn.pad_sequence(mids, batch_first=batch_first, padding_value=5.0)  # loud padding
    _, state = m(pad, state, lengths=lengths)
    got, _ = m(tail, state)
    for i, mid in enumerate(mids):
        _, s = m(start.narrow(bd, i, 1))
        _, s = m(mid.unsqueeze(bd), s)
        want, _ = m(tail.narrow(bd, i, 1), s)
        torch.testing.assert_close(got.narrow(bd, i, 1), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("levels, k", [(1, 2), (3, 3), (2, 5)])
def test_tcn_receptive_field_is_exact_and_causal(levels, k):
    """d y_t / d x_s is non-zero exactly for t - R < s <= t."""
    torch.manual_seed(0)
    m = TCN(1, 4, levels, kernel_size=k, batch_first=True)
    for p in m.parameters():  # positive weights and inputs: every ReLU is active, no zero gradient by chance
        p.data.uniform_(0.1, 1.0)
    R = m.receptive_field
    assert R == tcn_receptive_field(levels, k) == 1 + 2 * (k - 1) * (2**levels - 1)
    T = R + 6
    x = (torch.rand(1, T, 1) + 0.1).requires_grad_()
    y, _ = m(x)
    t = T - 2
    (g,) = torch.autograd.grad(y[0, t].sum(), x)
    seen = (g[0, :, 0] != 0).nonzero().flatten().tolist()
    assert seen == list(range(t - R + 1, t + 1))


def test_tcn_gradcheck_and_noncausal():
    torch.manual_seed(0)
    m = TCN(2, 3, 2, kernel_size=3, batch_first=True)
    x = torch.randn(2, 7, 2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: m(inp)[0], (x,))
    nc = TCN(1, 3, 2, kernel_size=3, batch_first=True, bidirectional=True)
    x = torch.randn(1, 15, 1, requires_grad=True)
    y, state = nc(x)
    assert state is None
    (g,) = torch.autograd.grad(y[0, 7].sum(), x)
    assert g[0, 8:, 0].abs().sum() > 0  # sees the future
    with pytest.raises(ValueError, match="odd kernel_size"):
        TCN(1, 3, 1, kernel_size=2, bidirectional=True)


@pytest.mark.parametrize(
    "kw, error, message",
    [
        ({"hidden_size": 4.0}, TypeError, "TCN hidden_size should be of type int, got: float"),
        ({"kernel_size": 3.0}, TypeError, "TCN kernel_size should be of type int, got: float"),
        ({"num_layers": True}, TypeError, "TCN num_layers should be of type int, got: bool"),
        ({"num_layers": 0}, ValueError, "TCN num_layers must be >= 1, got 0"),
        ({"bidirectional": "no"}, TypeError, "TCN bidirectional should be of type bool, got: str"),
        ({"batch_first": 1}, TypeError, "TCN batch_first should be of type bool, got: int"),
        ({"dropout": float("nan")}, ValueError, r"TCN dropout must be a number in \[0, 1\], got nan"),
    ],
)
def test_tcn_checks_its_sizes_and_flags_as_the_recurrent_layers(kw, error, message):
    """Float sizes failed inside torch.empty, bidirectional='no' built a non-causal TCN (and
    batch_first=1 was taken), a NaN dropout failed at the first training call."""
    with pytest.raises(error, match=message):
        TCN(**{"input_size": 2, "hidden_size": 4, **kw})
    np = pytest.importorskip("numpy")
    m = TCN(np.int64(2), np.int32(4), np.int64(2), kernel_size=np.int64(3))
    assert type(m.hidden_size) is int and type(m.kernel_size) is int and m.receptive_field == 13
    assert m(torch.randn(5, 1, 2))[0].shape == (5, 1, 4)


def test_conv_front_end_checks_its_sizes_and_flags():
    def lstm(c):
        return rnnkit.LSTM(c, 3)

    with pytest.raises(TypeError, match="conv front end conv_channels should be of type int, got: float"):
        ConvRecurrent(2, lstm, conv_channels=4.0)
    with pytest.raises(TypeError, match="conv front end bidirectional should be of type bool, got: str"):
        ConvRecurrent(2, lstm, bidirectional="no")
    with pytest.raises(ValueError, match="conv front end conv_layers must be >= 1, got 0"):
        ConvRecurrent(2, lstm, conv_layers=0)


def test_arch_names_and_errors():
    names = arch_names()
    assert {"lstm", "gru", "rnn", "tcn", "conv-lstm"} <= set(names)
    with pytest.raises(ValueError, match="unknown --arch 'conv-xyz'|unknown --arch 'xyz'"):
        build_recurrent(cfg("conv-xyz"), 3)
    with pytest.raises(ValueError, match="takes no --opt"):
        build_recurrent(cfg("tcn", options={"zoneout": 0.1}), 3)
    with pytest.raises(ValueError, match="--hidden must be >= 1"):
        build_recurrent(cfg("lstm", hidden=0), 3)
    # dropout with one layer is not passed on (torch would warn; warnings are errors here)
    build_recurrent(cfg("lstm", layers=1, dropout=0.5), 3)


@pytest.mark.parametrize("cell", ["conv-tcn", "conv-conv-lstm"])
def test_only_the_listed_archs_are_built(cell):
    """conv-tcn (and conv-conv-lstm) were built, a convolution front end nested in another,
    though arch_names() lists neither: the accepted set is now the listed one."""
    assert cell not in arch_names()
    with pytest.raises(ValueError, match=f"unknown --arch '{cell}'"):
        build_recurrent(cfg(cell), 3)


def test_dropout_flag_and_option_must_agree():
    """--opt dropout=0.3 was silently replaced by --dropout with more than one layer: now an error
    when both are given and differ; either alone (or both equal) is the dropout between layers."""
    import argparse

    from rnnkit.arch import add_arch_arguments, arch_config

    p = argparse.ArgumentParser()
    add_arch_arguments(p)
    with pytest.raises(ValueError, match="--dropout 0.2 and --opt dropout=0.3"):
        arch_config(p.parse_args(["--dropout", "0.2", "--opt", "dropout=0.3"]))
    both = ["--dropout", "0.3", "--opt", "dropout=0.3"]
    for argv in (["--opt", "dropout=0.3"], ["--dropout", "0.3"], both):
        lstm = build_recurrent(arch_config(p.parse_args(argv)), 3)
        assert lstm.dropout == 0.3
    # tcn too (its --dropout is the blocks' dropout): --opt dropout was refused as an option
    for argv in (["--opt", "dropout=0.3"], ["--dropout", "0.3"], both):
        tcn = build_recurrent(arch_config(p.parse_args(["--arch", "tcn", *argv])), 3)
        assert {m.p for m in tcn.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}
        assert arch_config(p.parse_args(argv))["dropout"] == 0.3  # the stored config says it alike
    with pytest.raises(ValueError, match="takes no --opt"):
        build_recurrent(
            arch_config(p.parse_args(["--arch", "tcn", "--opt", "dropout=0.3", "--opt", "x=1"])), 3
        )


def test_number_words_and_pairs():
    from rnnkit.tasks.seq2seq import Seq2SeqData, make_pairs, number_to_words

    assert number_to_words(0) == ["zero"]
    assert " ".join(number_to_words(2041)) == "two thousand forty one"
    assert " ".join(number_to_words(1_300_015)) == "one million three hundred thousand fifteen"
    assert make_pairs([17], "digits2words") == [(["1", "7"], ["seventeen"])]
    d = Seq2SeqData.generate(50, 20, max_number=100)
    src = {tuple(s.tolist()) for s, _ in d.train}
    assert not src & {tuple(s.tolist()) for s, _ in d.valid}  # held-out numbers


def test_arith_layout_and_greedy_oracle():
    from rnnkit.tasks.memory import ARITH_VOCAB, arith, arith_greedy

    x, y = arith(5, 2, seed=1)
    text = "".join(ARITH_VOCAB[i] for i in x[0].tolist()) + ARITH_VOCAB[y[0, -1]]
    a, rest = text.split("+")
    b, ans = rest.split("=")
    assert int(a) + int(b) == int(ans) and len(ans) == 3
    assert (y[:, :5] == -100).all() and (y[:, 5:] >= 0).all()

    class Oracle(torch.nn.Module):  # predicts the true next character from the full sequences
        def forward(self, inp, state=None):
            t0 = 0 if state is None else state
            idx = torch.cat([x, y[:, -1:]], 1)[:, t0 + 1 : t0 + 1 + inp.shape[1]]
            return torch.nn.functional.one_hot(idx, 12).double(), t0 + inp.shape[1]

    torch.testing.assert_close(arith_greedy(Oracle(), x, y, 2), y[:, -3:])


@pytest.mark.parametrize("arch", ["lstm", "qrnn"])
def test_step_by_step_decoding_equals_rerunning_the_whole_sequence(arch):
    """The tasks that decode one step at a time with the state carried (memory's arith greedy
    decode, Forecaster.forecast, Seq2Seq's decoder) compute what one call on the whole sequence
    so far computes. With --arch qrnn they did not: h_n held only c, each call restarted the
    window-2 convolution from x_{-1} = 0."""
    from rnnkit.tasks.forecast import Forecaster
    from rnnkit.tasks.memory import arith, arith_greedy, memory_model
    from rnnkit.tasks.seq2seq import BOS, EOS, Seq2Seq, greedy_decode

    torch.manual_seed(0)
    model = memory_model("arith", cfg(arch, hidden=8), {}).eval()
    x, y = arith(4, 2, seed=0)
    seq = x[:, :6]  # the question, then the model's own characters
    for _ in range(3):
        seq = torch.cat([seq, model(seq)[0][:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(arith_greedy(model, x, y, 2), seq[:, 6:])

    f = Forecaster(cfg(arch)).eval()
    series = torch.randn(3, 8, 1)
    with torch.no_grad():
        got, seen = f.forecast(series, 4), series
        for _ in range(4):
            seen = torch.cat([seen, f(seen)[0][:, -1:]], 1)
    torch.testing.assert_close(got, seen[:, 8:], rtol=1e-10, atol=1e-10)

    s2s = Seq2Seq(cfg(arch), 9, 9).eval()
    src, lengths = torch.randint(3, 9, (3, 5)), torch.tensor([5, 3, 4])
    with torch.no_grad():
        c, ys = s2s.encode(src, lengths), torch.full((3, 1), BOS)
        for _ in range(4):  # the decoder rerun on all tokens so far ([embed(y_{t-1}), c] each step)
            inp = torch.cat([s2s.tgt_embed(ys), c[:, None].expand(-1, ys.shape[1], -1)], -1)
            ys = torch.cat([ys, s2s.out(s2s.decoder(inp)[0][:, -1]).argmax(-1, keepdim=True)], 1)
    want = [row[: row.index(EOS)] if EOS in row else row for row in ys[:, 1:].tolist()]
    assert greedy_decode(s2s, src, lengths, 4) == want


def test_forecast_baselines():
    from rnnkit.tasks.forecast import Series, origins, persistence, truth

    v = torch.arange(100.0)
    s = Series.split(v, window=10, horizon=5)
    o = origins(s, 5)
    assert o[0] == s.n_valid_end and o[-1] == 95
    torch.testing.assert_close(persistence(s, 5)[0], torch.full((5,), float(o[0] - 1)))
    torch.testing.assert_close(truth(s, 5)[0], v[o[0] : o[0] + 5])


def test_conllu_reader_skips_ranges_and_empty_nodes(conllu):
    from rnnkit.tasks.tag import read_conllu

    sents = read_conllu(conllu)
    assert len(sents) == 30 and all(len(s) == 7 for s in sents)
    assert [t for _, t in sents[0]] == ["DET", "ADJ", "NOUN", "VERB", "DET", "NOUN", "PUNCT"]


def test_seq2seq_data_checks_max_number_first_and_draws_from_large_ranges():
    """max_number is checked before anything is drawn (a permutation of 2e9 numbers took ~16 GB
    before the error), and a range past 10**7 draws distinct numbers without permuting it all;
    up to 10**7 a seed gives the numbers it gave before (a prefix of the permutation)."""
    from rnnkit.tasks.seq2seq import Seq2SeqData

    def numbers(d, split):  # words2digits: the target is the number's digits, then EOS
        return [int("".join(d.tgt_vocab[i] for i in tgt[:-1].tolist())) for _, tgt in split]

    with pytest.raises(ValueError, match="max_number must be in"):
        Seq2SeqData.generate(5, 5, max_number=2 * 10**9)
    big = Seq2SeqData.generate(200, 50, max_number=10**9, seed=3)
    drawn = numbers(big, big.train) + numbers(big, big.valid)
    assert len(set(drawn)) == 250 and max(drawn) > 10**7
    small = Seq2SeqData.generate(50, 20, max_number=100, seed=1)
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(1)).tolist()
    assert numbers(small, small.train) + numbers(small, small.valid) == perm[:70]


def test_task_readers_drop_a_utf8_bom(conllu, text_csv, series_csv, tmp_path):
    """A file saved with a byte-order mark was read with U+FEFF glued to its first field: the
    CSV header became a row (label 'label'), the first CoNLL-U comment a malformed token line,
    the first CSV column unknown, the first line to predict another text."""
    from rnnkit.cli.predict import _lines
    from rnnkit.tasks.classify import read_text_csv
    from rnnkit.tasks.forecast import load_series
    from rnnkit.tasks.tag import read_conllu

    def bom(p):
        q = tmp_path / f"bom_{p.name}"
        q.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
        return q

    assert read_text_csv(bom(text_csv)) == read_text_csv(text_csv)
    assert read_conllu(bom(conllu)) == read_conllu(conllu)
    assert torch.equal(load_series(str(bom(series_csv)), "t")[0], load_series(str(series_csv), "t")[0])
    assert _lines(str(bom(text_csv))) == _lines(str(text_csv))


@pytest.mark.parametrize("arch", ["conv-lstm", "conv-gru"])
def test_opt_bidirectional_centres_the_conv_front_end(arch):
    """``--opt bidirectional=true`` made the recurrent part bidirectional behind a causal front
    end; now it is the tagger's bidirectional encoder (centred kernels), the same numbers."""
    torch.manual_seed(0)
    m = build_recurrent(cfg(arch, options={"bidirectional": True}, conv_centred=True), 3, batch_first=True)
    torch.manual_seed(0)
    tagger = build_recurrent(cfg(arch), 3, batch_first=True, bidirectional=True)
    assert all(not c.causal for c in m.convs)
    x = torch.randn(2, 7, 3)
    torch.testing.assert_close(m(x)[0], tagger(x)[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match=f"--kernel-size must be odd .* --arch {arch}, got 4"):
        build_recurrent(cfg(arch, options={"bidirectional": True}, conv_centred=True, kernel_size=4), 3)


def test_opt_bidirectional_run_stored_before_keeps_its_causal_front_end():
    """A run of ``conv-<family> --opt bidirectional=true`` stored before the front end was centred
    trained a causal one: its config (no ``conv_centred``) builds it causal, so its weights load
    into the model they were trained in (same shapes: centred, ``predict`` and ``--resume`` gave
    other numbers silently), an even ``--kernel-size`` too; ``arch_config`` marks new runs."""
    import argparse

    from rnnkit.arch import add_arch_arguments, arch_config

    old = cfg("conv-lstm", options={"bidirectional": True})
    assert all(c.causal for c in build_recurrent(old, 3, batch_first=True).convs)
    assert all(c.causal for c in build_recurrent({**old, "kernel_size": 4}, 3).convs)
    p = argparse.ArgumentParser()
    add_arch_arguments(p)
    new = arch_config(p.parse_args(["--arch", "conv-lstm", "--opt", "bidirectional=true"]))
    assert new["conv_centred"] is True
    assert all(not c.causal for c in build_recurrent(new, 3, batch_first=True).convs)
    assert "conv_centred" not in arch_config(p.parse_args(["--arch", "conv-lstm"]))
