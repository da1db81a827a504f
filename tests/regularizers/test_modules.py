"""Model-level regularizers: LockedDropout, EmbeddingDropout, AR/TAR losses, mask sampler."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit import losses, regularizers


def _two_valued(r: torch.Tensor, scale: float) -> bool:
    """Every entry is 0 or ``scale`` (up to rounding of the ratio that measured it)."""
    return bool((r.eq(0) | torch.isclose(r, torch.full_like(r, scale))).all())


# -- LockedDropout ----------------------------------------------------------------------------
@pytest.mark.parametrize("batch_first", [False, True])
def test_locked_dropout_one_mask_over_time(batch_first):
    T, B, F, p = 7, 30, 40, 0.4
    ld = rnnkit.LockedDropout(p, batch_first=batch_first)
    x = torch.rand(B, T, F) + 0.5 if batch_first else torch.rand(T, B, F) + 0.5
    x.requires_grad_(True)
    y = ld(x)
    ratio = (y / x).transpose(0, 1) if batch_first else y / x  # (T, B, F)
    torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio))  # the same at every step
    assert _two_valued(ratio, 1 / (1 - p))
    drop = (ratio[0] == 0).double().mean().item()
    assert abs(drop - p) < 5 * (p * (1 - p) / (B * F)) ** 0.5
    assert not torch.equal(ratio[0, 0], ratio[0, 1])  # one mask per sequence
    (g,) = torch.autograd.grad(y.sum(), x)  # gradient only through kept units
    torch.testing.assert_close(g, (y / x).detach())


def test_locked_dropout_eval_p0_unbatched_and_reproducible():
    x = torch.randn(5, 3, 4)
    assert rnnkit.LockedDropout(0.5).eval()(x) is x
    assert rnnkit.LockedDropout(0.0)(x) is x
    ld = rnnkit.LockedDropout(0.5)
    torch.manual_seed(3)
    a = ld(x)
    torch.manual_seed(3)
    torch.testing.assert_close(a, ld(x), rtol=0, atol=0)
    u = ld(torch.ones(6, 10))  # unbatched (T, F)
    torch.testing.assert_close(u, u[:1].expand_as(u))
    with pytest.raises(ValueError, match=r"expects \(T, B, F\).*got \(2, 3, 4, 5\)"):
        ld(torch.randn(2, 3, 4, 5))
    # refused in eval() and at p = 0 too, where they were returned as they came (so a model
    # evaluated fine and failed only once it trained)
    for idle in (rnnkit.LockedDropout(0.5).eval(), rnnkit.LockedDropout(0.0)):
        for bad in (torch.randn(2, 3, 4, 5), torch.randn(4)):
            with pytest.raises(
                ValueError, match=r"expects \(T, B, F\).*got " + re.escape(str(tuple(bad.shape)))
            ):
                idle(bad)
    with pytest.raises(ValueError, match="p must be a number in"):
        rnnkit.LockedDropout(2.0)


def test_locked_dropout_checks_batch_first_and_its_input_type():
    """batch_first='no' (a true string) shared masks over the batch instead of over time, and an
    array input failed with AttributeError ('no attribute dim'), silently or unclearly."""
    with pytest.raises(TypeError, match="batch_first should be of type bool, got: str"):
        rnnkit.LockedDropout(0.5, batch_first="no")
    with pytest.raises(ValueError, match="LockedDropout expects a tensor or a PackedSequence, got ndarray"):
        rnnkit.LockedDropout(0.5)(torch.randn(3, 2, 4).numpy())


@pytest.mark.parametrize("training", [True, False])
def test_locked_and_embedding_dropout_refuse_integer_tensors(training):
    """An integer tensor got a mask of its dtype, 1 / (1 - p) truncated: at p = 0.3 the kept units
    came out unscaled (x · 1, not x / 0.7), silently; torch's dropout refuses such input too."""
    ld, ed = rnnkit.LockedDropout(0.3).train(training), rnnkit.EmbeddingDropout(0.3).train(training)
    x = torch.full((4, 2, 3), 10, dtype=torch.long)
    with pytest.raises(ValueError, match="LockedDropout expects a floating-point input .* got torch.int64"):
        ld(x)
    with pytest.raises(ValueError, match="LockedDropout expects a floating-point input .* got torch.int32"):
        ld(pack_padded_sequence(x.int(), torch.tensor([4, 2])))
    with pytest.raises(ValueError, match="EmbeddingDropout expects a floating-point weight .* got torch.int"):
        ed(torch.ones(5, 3, dtype=torch.long), torch.tensor([0, 4]))


@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_locked_dropout_packed_row_belongs_to_the_sequence(enforce_sorted):
    """Packed input draws the dense mask (same seed) and keeps each row with its sequence."""
    lengths = torch.tensor([5, 3, 2, 1]) if enforce_sorted else torch.tensor([2, 5, 1, 3])
    x = torch.randn(5, 4, 6)
    ld = rnnkit.LockedDropout(0.5)
    torch.manual_seed(0)
    dense = ld(x)
    torch.manual_seed(0)
    packed = ld(pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted))
    out, _ = pad_packed_sequence(packed, total_length=5)
    valid = (torch.arange(5).unsqueeze(1) < lengths).unsqueeze(-1)
    torch.testing.assert_close(out, dense * valid)


@pytest.mark.parametrize("training", [True, False])
def test_locked_dropout_refuses_packed_data_that_is_not_2d(training):
    """Packed (N,) data got the mask (N, N) of its rows, an (N, N) output, silently; (N, A, F) data
    broadcast the (N, F) mask over its second axis (or failed in a multiply's words)."""
    ld = rnnkit.LockedDropout(0.5).train(training)
    for data, shape in ((torch.ones(3, 2), "(5,)"), (torch.ones(3, 2, 6, 4), "(6, 6, 4)")):
        packed = pack_padded_sequence(data, torch.tensor([3, 2]) if data.dim() == 2 else torch.tensor([3, 3]))
        with pytest.raises(ValueError, match=re.escape(f"(sum(batch_sizes), F), got {shape}")):
            ld(packed)


# -- EmbeddingDropout ---------------------------------------------------------------------------
def test_embedding_dropout_drops_whole_rows():
    V, E, p = 500, 8, 0.3
    emb = nn.Embedding(V, E)
    ed = rnnkit.EmbeddingDropout(p)
    words = torch.arange(V).repeat(3, 1)  # every word three times
    y = ed(emb, words)
    ratio = y / emb.weight[words]
    row = ratio[0, :, 0]
    torch.testing.assert_close(ratio, row.view(1, V, 1).expand_as(ratio))  # whole rows, all uses
    assert _two_valued(row, 1 / (1 - p))
    assert abs((row == 0).double().mean().item() - p) < 5 * (p * (1 - p) / V) ** 0.5
    y.sum().backward()
    dropped = row == 0
    assert (emb.weight.grad[dropped] == 0).all() and (emb.weight.grad[~dropped] != 0).all()


def test_embedding_dropout_eval_weight_tensor_and_padding_idx():
    emb = nn.Embedding(10, 4, padding_idx=0)
    ids = torch.tensor([[0, 1, 2], [3, 0, 9]])
    ed = rnnkit.EmbeddingDropout(0.5)
    torch.testing.assert_close(ed.eval()(emb, ids), emb(ids))
    ed.train()
    torch.manual_seed(1)
    a = ed(emb, ids)
    torch.manual_seed(1)
    b = ed(emb.weight, ids)  # a raw (V, E) weight
    torch.testing.assert_close(a, b)
    a.sum().backward()
    assert (emb.weight.grad[0] == 0).all()  # padding_idx honoured
    with pytest.raises(ValueError, match=r"nn.Embedding or a \(V, E\) weight, got \(10,\)"):
        ed(torch.randn(10), ids)


def test_embedding_dropout_with_max_norm_scales_the_renormalized_rows():
    """The oracle: nn.Embedding(max_norm)'s output, each word's row kept and scaled by 1 / (1 - p)
    or zeroed. The dropped copy was renormalized instead: a kept row longer than max_norm came out
    at max_norm, its 1 / (1 - p) lost, and the embedding's weight was never renormalized."""
    V, E, p = 200, 3, 0.5
    emb = nn.Embedding(V, E, max_norm=1.0)
    with torch.no_grad():
        emb.weight.mul_(5)  # every row longer than max_norm
    ref = nn.Embedding(V, E, max_norm=1.0)
    ref.load_state_dict(emb.state_dict())
    words = torch.arange(V).repeat(2, 1)
    y = rnnkit.EmbeddingDropout(p)(emb, words)
    expected = ref(words)
    torch.testing.assert_close(emb.weight, ref.weight)  # renormalized in place, as nn.Embedding's
    kept = y[0, :, 0] != 0
    assert 0 < kept.sum() < V
    torch.testing.assert_close(y[:, kept], expected[:, kept] / (1 - p))
    assert (y[:, ~kept] == 0).all()


def test_embedding_dropout_function_checks_its_arguments():
    """A 1-D weight (V,) times the row mask (V, 1) came back (V, V), silently; p outside [0, 1]
    failed in the mask generator's words (or, in evaluation, not at all)."""
    with pytest.raises(ValueError, match=r"embedding_dropout expects a \(V, E\) weight, got \(5,\)"):
        regularizers.embedding_dropout(torch.randn(5), 0.5)
    with pytest.raises(ValueError, match="p must be a number in \\[0, 1\\], got 1.5"):
        regularizers.embedding_dropout(torch.randn(5, 2), 1.5, training=False)
    with pytest.raises(ValueError, match="floating-point weight"):
        regularizers.embedding_dropout(torch.ones(5, 2, dtype=torch.long), 0.5)
    w = torch.randn(5, 2)
    assert regularizers.embedding_dropout(w, 0.5, training=False) is w


@pytest.mark.parametrize("training", ["False", None, 1])
def test_embedding_dropout_function_refuses_a_training_flag_that_is_no_bool(training):
    """training='False' dropped rows and None did not, silently; as LockedDropout's batch_first."""
    with pytest.raises(TypeError, match=f"training should be of type bool, got: {type(training).__name__}"):
        regularizers.embedding_dropout(torch.randn(5, 2), 0.5, training=training)


# -- losses -------------------------------------------------------------------------------------
def test_ar_tar_are_awd_lstm_formulas():
    h = torch.randn(6, 3, 5)
    torch.testing.assert_close(losses.ar(h, 2.0), 2.0 * h.pow(2).mean())
    torch.testing.assert_close(losses.tar(h, 1.5), 1.5 * (h[1:] - h[:-1]).pow(2).mean())
    torch.testing.assert_close(losses.ar(h.transpose(0, 1), 2.0, batch_first=True), losses.ar(h, 2.0))
    hb = h.transpose(0, 1)
    torch.testing.assert_close(losses.tar(hb, batch_first=True), losses.tar(h))
    assert losses.tar(h[:1]).item() == 0.0


def test_tar_of_an_empty_batch_is_zero():
    """TAR is zero when no sequence has two steps, so for a batch of no sequence too (the layers'
    output for an empty batch): it was NaN, the mean of no difference, which poisons a summed loss."""
    h = torch.randn(6, 0, 5)
    assert losses.tar(h).item() == 0.0
    assert losses.tar(h.transpose(0, 1), batch_first=True).item() == 0.0
    assert losses.tar(h, lengths=torch.zeros(0, dtype=torch.long)).item() == 0.0
    assert losses.tar(h, lengths=[]).item() == 0.0


@pytest.mark.parametrize(
    "shape", [(6, 0, 5), (0, 3, 5), (6, 3, 0)], ids=["no-batch", "no-step", "no-feature"]
)
def test_ar_tar_over_no_element_are_zero(shape):
    """AR of an empty batch (and either loss over no feature) was NaN, the mean of nothing,
    where TAR of an empty batch is zero as documented: both are zero over no element."""
    h = torch.randn(*shape, requires_grad=True)
    for loss in (losses.ar, losses.tar):
        assert loss(h).item() == 0.0
        assert loss(h.transpose(0, 1), batch_first=True).item() == 0.0
    lengths = [6] * shape[1] if shape[0] else None
    assert losses.ar(h, lengths=lengths).item() == losses.tar(h, lengths=lengths).item() == 0.0
    packed = PackedSequence(torch.randn(6, 0), torch.tensor([2, 2, 1, 1]))  # no feature
    assert losses.ar(packed).item() == losses.tar(packed).item() == 0.0


@pytest.mark.parametrize(
    "bad", ["a", float("nan"), float("inf"), True, None, torch.tensor([2.0]), torch.tensor(True)]
)  # a 1-D tensor: no coefficient
@pytest.mark.parametrize("loss, name", [(losses.ar, "alpha"), (losses.tar, "beta")])
def test_ar_tar_refuse_a_coefficient_that_is_no_finite_number(loss, name, bad):
    """alpha='a' failed as an indexing error deep in torch, NaN or inf made the loss NaN."""
    h = torch.randn(6, 3, 5)
    with pytest.raises(ValueError, match=rf"{name} must be a finite number \(or a 0-d real tensor\), got "):
        loss(h, bad)
    with pytest.raises(ValueError, match=rf"{name} must be a finite number \(or a 0-d real tensor\), got "):
        loss(pack_padded_sequence(h, [6, 4, 2]), bad)
    np = pytest.importorskip("numpy")
    torch.testing.assert_close(loss(h, np.float32(0.5)), loss(h, 0.5))
    # a 0-d tensor (an annealed coefficient) worked before the check, and still does
    torch.testing.assert_close(loss(h, torch.tensor(0.5, dtype=h.dtype)), loss(h, 0.5))
    torch.testing.assert_close(loss(h, torch.tensor(2)), loss(h, 2))  # an integer one too, as before


@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_ar_tar_ignore_padding_and_accept_packed(enforce_sorted):
    lengths = torch.tensor([6, 4, 4, 1]) if enforce_sorted else torch.tensor([4, 6, 1, 4])
    h = torch.randn(6, 4, 3)
    seqs = [h[: int(n), b] for b, n in enumerate(lengths)]
    ar = torch.cat(seqs).pow(2).mean()
    tar = torch.cat([s[1:] - s[:-1] for s in seqs]).pow(2).mean()
    torch.testing.assert_close(losses.ar(h, 1.0, lengths=lengths), ar)
    torch.testing.assert_close(losses.tar(h, 1.0, lengths=lengths), tar)
    packed = pack_padded_sequence(h, lengths, enforce_sorted=enforce_sorted)
    torch.testing.assert_close(losses.ar(packed, 1.0), ar)
    torch.testing.assert_close(losses.tar(packed, 1.0), tar)
    with pytest.raises(ValueError, match=r"lengths must have shape \(4,\), got \(3,\)"):
        losses.ar(h, lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"expected a 3-D output"):
        losses.tar(torch.randn(3, 4))


@pytest.mark.parametrize("loss", [losses.ar, losses.tar])
def test_ar_tar_refuse_lengths_with_a_packed_output(loss):
    """A PackedSequence with lengths= ignored the lengths, silently (tar over sequences of one step
    was not zero): refused, as the layers refuse lengths= with packed input."""
    packed = pack_padded_sequence(torch.randn(5, 3, 4), torch.tensor([5, 3, 2]))
    with pytest.raises(ValueError, match="a PackedSequence carries its own lengths"):
        loss(packed, lengths=torch.tensor([1, 1, 1]))


@pytest.mark.parametrize("loss", [losses.ar, losses.tar])
def test_ar_tar_check_batch_first(loss):
    """batch_first='no' (a true string) took a time-major output as batch-first, silently."""
    with pytest.raises(TypeError, match="batch_first should be of type bool, got: str"):
        loss(torch.randn(5, 3, 4), batch_first="no")


@pytest.mark.parametrize("lengths", [[7, 4, 4, 1], [6, 4, 0, 1], [6, -1, 4, 1], [6.0, 4.5, 4.0, 1.0]])
@pytest.mark.parametrize("loss", [losses.ar, losses.tar])
def test_ar_tar_reject_lengths_outside_the_padded_length(loss, lengths):
    """Lengths past T, below 1 or fractional were taken silently (clipped to T, an empty or
    partly counted sequence): they are refused as the layers refuse them."""
    with pytest.raises(ValueError, match=r"lengths must (lie in \[1, 6\]|be integers)"):
        loss(torch.randn(6, 4, 3), lengths=torch.tensor(lengths))


# -- mask sampler ---------------------------------------------------------------------------------
def test_sample_mask_values_and_errors():
    like = torch.zeros(())
    m = regularizers.sample_mask("recurrent", (1000,), 0.25, like)
    assert set(m.unique().tolist()) <= {0.0, 1 / 0.75} and m.dtype == like.dtype
    assert (regularizers.sample_mask("locked", (5,), 1.0, like) == 0).all()
    z = regularizers.sample_mask("zoneout", (1000,), 1.0, like)
    assert (z == 1).all()
    with pytest.raises(ValueError, match="mask kind must be one of"):
        regularizers.sample_mask("nope", (2,), 0.5, like)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sample_mask_in_place_torch_rand_branch(dtype, monkeypatch):
    """The ``torch.rand`` branch with in-place comparisons (CUDA, torch.compile), forced on the CPU:
    with torch's generator seeded alike, the masks are exactly ``(u >= p) / (1 - p)`` (dropout
    kinds) and ``u < p`` (zoneout) of ``u = torch.rand(shape)``, in ``like``'s dtype; ``p = 1``
    drops everything (zeros, not ``0 * inf``)."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    like, shape, p = torch.zeros((), dtype=dtype), (7, 300), 0.3
    for kind in regularizers.KINDS:
        torch.manual_seed(11)
        u = torch.rand(shape)
        want = u.lt(p).to(dtype) if kind == "zoneout" else u.ge(p).to(dtype) / (1 - p)
        torch.manual_seed(11)
        got = regularizers.sample_mask(kind, shape, p, like)
        assert got.dtype == dtype and got.shape == shape
        assert torch.equal(got, want), kind
        scale = torch.tensor(1.0 if kind == "zoneout" else 1 / (1 - p), dtype=dtype)
        assert torch.equal(want.unique(), torch.stack([torch.zeros((), dtype=dtype), scale]))
    zeros, ones = torch.zeros(shape, dtype=dtype), torch.ones(shape, dtype=dtype)
    assert torch.equal(regularizers.sample_mask("recurrent", shape, 1.0, like), zeros)
    assert torch.equal(regularizers.sample_mask("zoneout", shape, 1.0, like), ones)


@pytest.mark.parametrize("p", [-0.5, 1.5, float("nan")])
def test_sample_mask_refuses_a_bad_probability_on_every_branch(p, monkeypatch):
    """The torch.rand branch (CUDA, torch.compile, vmap) took p outside [0, 1] silently: NaN masks
    for p = NaN, kept units scaled by 1 / 1.5 for p = -0.5; the CPU's generator refused it."""
    like = torch.zeros(())
    with pytest.raises(ValueError, match="p must be a number in"):
        regularizers.sample_mask("locked", (4,), p, like)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    for kind in ("locked", "zoneout"):
        with pytest.raises(ValueError, match="p must be a number in"):
            regularizers.sample_mask(kind, (4,), p, like)


def test_sample_mask_values_inside_vmap_with_different_randomness():
    """Inside ``vmap(randomness="different")`` the masks come from ``torch.rand`` (one per sample),
    not the counter-based generator: the same values, ``0`` or ``1 / (1 - p)`` (``1``/``0`` for
    zoneout)."""
    p, like = 0.25, torch.zeros((), dtype=torch.float64)

    def draw(kind, prob):
        return torch.func.vmap(
            lambda x: x + regularizers.sample_mask(kind, (500,), prob, like), randomness="different"
        )(torch.zeros(3, 500, dtype=torch.float64))

    m = draw("recurrent", p)
    assert set(m.unique().tolist()) == {0.0, 1 / (1 - p)} and m.dtype == like.dtype
    assert not torch.equal(m[0], m[1])  # one mask per sample
    assert (m == 0).double().mean().item() == pytest.approx(p, abs=0.05)
    z = draw("zoneout", p)
    assert set(z.unique().tolist()) == {0.0, 1.0}
    assert z.mean().item() == pytest.approx(p, abs=0.05)  # 1 (keep) with probability p
    assert (draw("locked", 1.0) == 0).all()
