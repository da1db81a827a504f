"""Property tests of rnnkit.data: invariants that must hold for any sizes and options.

* BPTT windows tile each stream exactly once, in order, with the next token as target;
  window lengths obey the AWD-LSTM bounds; ranks shard the global batch without overlap.
* Padding keeps every sequence and its target intact, pads with the given values, and the
  packed form unpads to the same tensors; an explicit target layout holds for every batch.
* The bucket sampler yields every index exactly once per epoch (or only full batches), the
  same plan for the same (seed, epoch), and equal batch counts on every DDP rank, each
  global batch split into balanced, disjoint shards.
* TBPTT(k1, k2) splits a batch of any length into updates that cover every step once.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pad_packed_sequence

from rnnkit.data import BucketBatchSampler, bptt_batches, length_mask, pad_collate
from rnnkit.train.tbptt import tbptt_batch


@st.composite
def lm_cases(draw):
    B, S = draw(st.integers(1, 6)), draw(st.integers(1, 12))
    N = draw(st.integers(B * S, B * S + 200))
    return {
        "N": N,
        "batch_size": B,
        "seq_len": S,
        "batch_first": draw(st.booleans()),
        "variable_length": draw(st.booleans()),
        "drop_last": draw(st.booleans()),
        "seed": draw(st.integers(0, 1000)),
        "min_len": draw(st.integers(1, 6)),
        "std": draw(st.sampled_from([0.0, 2.0, 5.0])),
    }


@settings(max_examples=120, deadline=None)
@given(case=lm_cases())
def test_bptt_windows_tile_every_stream(case):
    N, B, S = case["N"], case["batch_size"], case["seq_len"]
    data = torch.randperm(N) + 1000  # distinct tokens: a misplaced one cannot hide
    kw = {k: case[k] for k in ("batch_first", "variable_length", "drop_last", "seed", "min_len", "std")}
    batches = bptt_batches(data, B, S, **kw)
    L = N // B
    min_len, max_len = max(1, min(case["min_len"], S)), S + 40
    pos, xs, ys = 0, [], []
    windows = list(batches)
    for w in windows:
        x, y = (w.inputs, w.targets) if case["batch_first"] else (w.inputs.t(), w.targets.t())
        assert x.shape == y.shape == (B, w.seq_len)
        assert w.position == pos and w.lr_scale == w.seq_len / S
        last = pos + w.seq_len == L
        if case["variable_length"]:
            assert w.seq_len <= max_len and (w.seq_len >= min_len or last)
        else:
            assert w.seq_len == S or last
        if case["drop_last"]:
            assert w.seq_len >= (min_len if case["variable_length"] else S)
        xs.append(x)
        ys.append(y)
        pos += w.seq_len
    if not case["drop_last"]:
        assert pos == L  # every kept token, once
    if not case["variable_length"]:
        assert len(windows) == len(batches)
    if not windows:  # drop_last: the only window, drawn longer than the stream, was cut short
        assert case["drop_last"] and case["variable_length"]
        return
    x, y = torch.cat(xs, 1), torch.cat(ys, 1)
    streams = data[: B * L].view(B, L)[:, :pos]
    assert torch.equal(x, streams)
    nxt = data[torch.arange(1, B * L + 1) % N].view(B, L)[:, :pos]  # the next token (wraps once)
    assert torch.equal(y, nxt)
    # the same seed and epoch: the same windows
    again = [w.seq_len for w in bptt_batches(data, B, S, **kw)]
    assert again == [w.seq_len for w in windows]


@settings(max_examples=60, deadline=None)
@given(world=st.integers(1, 4), per=st.integers(1, 3), S=st.integers(1, 8), extra=st.integers(0, 50))
def test_ranks_shard_the_global_batch(world, per, S, extra):
    B = world * per
    data = torch.arange(B * S + extra)
    whole = list(bptt_batches(data, B, S, batch_first=True))
    shard = lambda r: list(bptt_batches(data, B, S, batch_first=True, rank=r, world_size=world))  # noqa: E731
    shards = [shard(r) for r in range(world)]
    assert all(len(s) == len(whole) for s in shards)
    for k, w in enumerate(whole):
        assert torch.equal(torch.cat([s[k].inputs for s in shards]), w.inputs)
        assert torch.equal(torch.cat([s[k].targets for s in shards]), w.targets)


@st.composite
def padded_items(draw):
    n = draw(st.integers(1, 6))
    feat = draw(st.sampled_from([(), (3,)]))
    kind = draw(st.sampled_from(["none", "sequence", "label"]))
    items = []
    for i in range(n):
        T = draw(st.integers(1, 7))
        x = torch.arange(T * (feat[0] if feat else 1), dtype=torch.float64).view(T, *feat) + 100 * i + 1
        if kind == "none":
            items.append(x)
        elif kind == "sequence":
            items.append((x, torch.arange(T) + 10 * i))
        else:
            items.append((x, torch.tensor(i)))
    return items, kind


@settings(max_examples=120, deadline=None)
@given(case=padded_items(), batch_first=st.booleans(), pack=st.booleans(), pad=st.sampled_from([0.0, -7.5]))
def test_pad_collate_keeps_every_sequence(case, batch_first, pack, pad):
    items, kind = case
    b = pad_collate(items, batch_first=batch_first, padding_value=pad, pack=pack)
    seqs = [it[0] if kind != "none" else it for it in items]
    lengths = [s.shape[0] for s in seqs]
    assert b.lengths.tolist() == lengths and b.lengths.dtype == torch.long
    inputs = b.inputs if batch_first else b.inputs.transpose(0, 1)  # (B, T_max, *)
    assert inputs.shape[:2] == (len(items), max(lengths))
    mask = length_mask(b.lengths, batch_first=True)
    assert torch.equal(mask, length_mask(b.lengths).t()) and mask.sum() == sum(lengths)
    for i, s in enumerate(seqs):
        assert torch.equal(inputs[i, : lengths[i]], s)
        assert (inputs[i, lengths[i] :] == pad).all()
    if kind == "none":
        assert b.targets is None
    elif kind == "label":
        assert b.targets.tolist() == list(range(len(items)))
    else:
        t = b.targets if batch_first else b.targets.transpose(0, 1)
        for i, it in enumerate(items):
            assert torch.equal(t[i, : lengths[i]], it[1]) and (t[i, lengths[i] :] == -100).all()
    if pack:
        unpacked, lens = pad_packed_sequence(b.packed, batch_first=batch_first, padding_value=pad)
        assert torch.equal(unpacked, b.inputs) and lens.tolist() == lengths
    else:
        assert b.packed is None


@settings(max_examples=100, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=8),
    K=st.integers(1, 6),
    batch_first=st.booleans(),
    sequences=st.booleans(),
)
def test_pad_collate_explicit_target_layout(lengths, K, batch_first, sequences):
    """With sequence_targets set, the target layout is a function of the option alone: label
    vectors (K,) stack to (B, K) even when every input has length K; sequences pad to the
    inputs' (T_max, B) / (B, T_max) even when every target could be a label of one shape."""
    if sequences:
        items = [(torch.ones(L, 2), torch.arange(L)) for L in lengths]
        want = (max(lengths), len(lengths))
    else:
        items = [(torch.ones(L, 2), torch.full((K,), float(i))) for i, L in enumerate(lengths)]
        want = (len(lengths), K)
    b = pad_collate(items, batch_first=batch_first, sequence_targets=sequences)
    assert b.targets.shape == (want[::-1] if sequences and batch_first else want)
    if not sequences:
        assert b.targets[:, 0].tolist() == list(range(len(lengths)))


@settings(max_examples=150, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 50), min_size=1, max_size=80),
    batch_size=st.integers(1, 9),
    bucket=st.sampled_from([None, 1, 7, 30]),
    shuffle=st.booleans(),
    drop_last=st.booleans(),
    seed=st.integers(0, 100),
    epoch=st.integers(0, 3),
)
def test_bucket_sampler_yields_each_index_once(lengths, batch_size, bucket, shuffle, drop_last, seed, epoch):
    kw = {"bucket_size": bucket, "shuffle": shuffle, "drop_last": drop_last, "seed": seed}
    s = BucketBatchSampler(lengths, batch_size, **kw)
    s.set_epoch(epoch)
    batches = list(s)
    assert len(batches) == len(s)
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) and set(flat) <= set(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in batches)
    if drop_last:
        assert all(len(b) == batch_size for b in batches)
    else:
        assert sorted(flat) == list(range(len(lengths)))
    if not shuffle and bucket is not None:  # pools in order, each sorted by length
        pool = max(batch_size, bucket)
        for b in batches:
            assert len({i // pool for i in b}) == 1
            assert [lengths[i] for i in b] == sorted(lengths[i] for i in b)
    t = BucketBatchSampler(lengths, batch_size, **kw)
    t.set_epoch(epoch)
    assert list(t) == batches  # a function of (seed, epoch)


@settings(max_examples=100, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=60),
    per_rank=st.integers(1, 4),
    replicas=st.integers(2, 4),
    seed=st.integers(0, 50),
)
def test_bucket_sampler_ranks_cover_each_global_batch(lengths, per_rank, replicas, seed):
    B = per_rank * replicas
    whole = list(BucketBatchSampler(lengths, B, seed=seed))
    ranks = [
        list(BucketBatchSampler(lengths, B, seed=seed, num_replicas=replicas, rank=r))
        for r in range(replicas)
    ]
    assert all(len(r) == len(whole) for r in ranks)  # DDP: every rank steps the same number of times
    for k, batch in enumerate(whole):
        shards = [r[k] for r in ranks]
        assert all(len(sh) >= 1 for sh in shards)
        assert set().union(*map(set, shards)) == set(batch)  # all of it, nothing else


@settings(max_examples=150, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=60),
    replicas=st.integers(2, 5),
    extra=st.integers(0, 9),
    bucket=st.sampled_from([None, 7]),
    drop_last=st.booleans(),
    seed=st.integers(0, 50),
)
def test_bucket_sampler_shards_are_balanced_and_disjoint(lengths, replicas, extra, bucket, drop_last, seed):
    """Any global batch size >= the world size, a multiple of it or not: the ranks' shards of a
    batch are its contiguous, balanced parts (sizes differing by at most one), so each item is
    trained once; only a batch shorter than the world is padded, from its start, to one item
    per rank. (Ceil-sized shards gave an empty rank an item of another shard, in every batch.)"""
    B = replicas + extra
    kw = {"bucket_size": bucket, "drop_last": drop_last, "seed": seed}
    whole = list(BucketBatchSampler(lengths, B, **kw))
    ranks = [
        list(BucketBatchSampler(lengths, B, num_replicas=replicas, rank=r, **kw)) for r in range(replicas)
    ]
    assert all(len(r) == len(whole) for r in ranks)
    for k, batch in enumerate(whole):
        shards = [r[k] for r in ranks]
        if len(batch) >= replicas:
            assert [i for sh in shards for i in sh] == batch  # in order, each item once
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
        else:
            assert shards == [[batch[r % len(batch)]] for r in range(replicas)]


@settings(max_examples=150, deadline=None)
@given(T=st.integers(1, 40), k1=st.integers(1, 12), extra=st.integers(0, 15))
def test_tbptt_windows_cover_every_step_once(T, k1, extra):
    """TBPTT(k1, k2) for any T, k1 and k2 >= k1 (T not a multiple of k1 included): updates at
    k1, 2 k1, ..., T; each loss covers the steps since the previous update, once, in order; its
    graph starts at ``prev + k1 - k2`` (a full window's start, clamped at 0) and every model call
    starts from the state of the whole prefix. A counting model: its state is the step reached."""
    k2 = k1 + extra
    w = torch.ones((), requires_grad=True)
    calls, losses = [], []

    def model(x, state):
        start = 0 if state is None else int(state)
        assert torch.equal(x[:, 0], torch.arange(start, start + x.shape[0]))  # the prefix's state
        calls.append((start, start + x.shape[0], torch.is_grad_enabled()))
        return x.double() * w, torch.tensor(start + x.shape[0])

    def loss_fn(out, tgt):
        assert torch.equal(out.detach().long(), tgt)  # outputs aligned with their targets
        losses.append(tgt[:, 0].tolist())
        return out.sum()

    x = torch.arange(T)[:, None].expand(T, 2)
    loss_sum, n, _, state = tbptt_batch(model, loss_fn, lambda loss: 0.0, x, x.clone(), None, k1, k2)
    prevs = list(range(0, T, k1))
    assert [c[:2] for c in calls if c[2]] == [(max(0, p + k1 - k2), min(p + k1, T)) for p in prevs]
    assert losses == [list(range(p, min(p + k1, T))) for p in prevs]
    assert n == 2 * T and int(state) == T
