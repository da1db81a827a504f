"""bptt_batches (language-model windows, their seeds and shards) and BucketBatchSampler."""

import re

import pytest
import torch

from rnnkit.data import BucketBatchSampler, bptt_batches
from rnnkit.data.batching import epoch_seed, make_streams


def test_issue_example_batch_first():
    steps = list(bptt_batches(torch.arange(1, 13), 2, 3, batch_first=True))
    assert len(steps) == 2
    assert steps[0].inputs.tolist() == [[1, 2, 3], [7, 8, 9]]
    assert steps[0].targets.tolist() == [[2, 3, 4], [8, 9, 10]]
    assert steps[1].inputs.tolist() == [[4, 5, 6], [10, 11, 12]]
    assert steps[1].targets.tolist() == [[5, 6, 7], [11, 12, 1]]
    assert [s.seq_len for s in steps] == [3, 3] and [s.lr_scale for s in steps] == [1.0, 1.0]
    assert [s.position for s in steps] == [0, 3]


def test_issue_example_time_major():
    steps = list(bptt_batches(torch.arange(1, 13), 2, 3))
    assert steps[0].inputs.shape == (3, 2)
    assert steps[0].inputs.t().tolist() == [[1, 2, 3], [7, 8, 9]]
    assert steps[1].targets.t().tolist() == [[5, 6, 7], [11, 12, 1]]
    assert steps[0].inputs.is_contiguous()


def test_trailing_tokens_are_the_next_target_and_short_last_window():
    steps = list(bptt_batches(torch.arange(1, 14), 2, 4, batch_first=True))  # 13 tokens
    assert [s.seq_len for s in steps] == [4, 2]
    assert steps[-1].targets.tolist() == [[6, 7], [12, 13]]  # 13 exists: no wrap yet
    assert len(bptt_batches(torch.arange(1, 14), 2, 4)) == 2
    assert len(list(bptt_batches(torch.arange(1, 14), 2, 4, drop_last=True))) == 1


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (torch.zeros(3, 4, dtype=torch.long), "1-D tensor.*shape \\(3, 4\\)"),
        (torch.arange(5), "5 tokens, fewer than batch_size \\* seq_len = 2 \\* 3 = 6"),
    ],
)
def test_bad_data(data, match):
    with pytest.raises(ValueError, match=match):
        bptt_batches(data, 2, 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="seq_len must be >= 1, got 0"):
        bptt_batches(torch.arange(10), 2, 0)
    with pytest.raises(ValueError, match="divisible by world_size.*batch_size=3, world_size=2"):
        bptt_batches(torch.arange(30), 3, 2, world_size=2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seq_len": 2.5}, "seq_len must be an int, got 2.5"),
        ({"seq_len": 3.0}, "seq_len must be an int, got 3.0"),
        ({"batch_size": 2.5}, "batch_size must be an int, got 2.5"),
        ({"max_len": 4.5, "variable_length": True, "seed": 0}, "max_len must be an int or None, got 4.5"),
        ({"min_len": 2.5, "variable_length": True, "seed": 0}, "min_len must be an int, got 2.5"),
        ({"world_size": 2.0}, "world_size must be an int, got 2.0"),
    ],
)
def test_sizes_that_are_not_ints_are_refused(kwargs, match):
    """A float seq_len (or drawn window bound) was accepted and failed at the first window in a
    slice ('slice indices must be integers'); a float batch_size was reported as not divisible
    by world_size. Each is refused, naming it."""
    args = {"batch_size": 2, "seq_len": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        list(bptt_batches(torch.arange(40), **args))


def test_bucket_sampler_sizes_that_are_not_ints_are_refused():
    """A float batch_size failed at iteration in range() ('float' object cannot be interpreted as
    an integer), a string one in a comparison."""
    for bad in (1.5, "2"):
        with pytest.raises(ValueError, match=f"batch_size must be an int, got {bad!r}"):
            BucketBatchSampler([1, 2, 3], bad)
    with pytest.raises(ValueError, match="bucket_size must be an int or None, got 2.5"):
        BucketBatchSampler([1, 2, 3], 1, bucket_size=2.5)


@pytest.mark.parametrize("bad", [1.5, 2.0, "1", True])
def test_seeds_that_are_not_ints_are_refused_at_construction(bad):
    """A float seed was taken and failed only at iteration, in Generator.manual_seed ('expected a
    long'); numpy's integers failed there too ('an integer is required'): they are ints now."""
    with pytest.raises(ValueError, match=f"seed must be an int, got {bad!r}"):
        BucketBatchSampler([1, 2, 3], 1, seed=bad)
    with pytest.raises(ValueError, match=f"seed must be an int or None, got {bad!r}"):
        bptt_batches(torch.arange(40), 2, 3, variable_length=True, seed=bad)
    np = pytest.importorskip("numpy")
    assert list(BucketBatchSampler([1, 2, 3], 1, seed=np.int64(4))) == list(
        BucketBatchSampler([1, 2, 3], 1, seed=4)
    )
    ours, ref = (
        bptt_batches(torch.arange(400), 2, 20, variable_length=True, seed=s) for s in (np.int32(3), 3)
    )
    assert [w.inputs.shape for w in ours] == [w.inputs.shape for w in ref]


def test_large_and_negative_seeds_work_and_keep_their_order():
    """seed=2**62 (any seed whose seed * 1_000_003 + epoch leaves manual_seed's 64 bits) failed at
    iteration ('Overflow when unpacking long long'); the mixed seed is reduced modulo 2**64, which
    leaves every seed that worked with its order (manual_seed maps a negative one the same way)."""
    lengths = list(range(1, 41))
    for seed in (2**62, 2**64 + 3, -(2**62)):
        assert sorted(i for b in BucketBatchSampler(lengths, 4, seed=seed) for i in b) == list(range(40))
        assert len(list(bptt_batches(torch.arange(400), 2, 20, variable_length=True, seed=seed))) > 0
    for seed, epoch in ((-7, 2), (0, 0), (5, 3), (2**40, 1)):  # the old mix, in range: the same generator
        old = torch.Generator().manual_seed(seed * 1_000_003 + epoch).initial_seed()
        assert torch.Generator().manual_seed(epoch_seed(seed, epoch)).initial_seed() == old


def test_rank_shards_tile_the_global_batch():
    data = torch.arange(64)
    full = list(bptt_batches(data, 4, 5))
    parts = [list(bptt_batches(data, 4, 5, rank=r, world_size=2)) for r in range(2)]
    for i, step in enumerate(full):
        assert torch.equal(torch.cat([parts[0][i].inputs, parts[1][i].inputs], 1), step.inputs)
        assert torch.equal(torch.cat([parts[0][i].targets, parts[1][i].targets], 1), step.targets)


def test_variable_length_drop_last_drops_a_window_cut_short():
    """With variable_length, drop_last dropped the last window only when shorter than min_len: a
    window drawn 21 long and cut to 18 by the stream's end (seed 0) was kept, incomplete."""
    from rnnkit.data.batching import epoch_seed

    for seed in range(5):
        kw = {"variable_length": True, "seed": seed}
        b = bptt_batches(torch.arange(400), 2, 20, drop_last=True, **kw)
        kept = [w.seq_len for w in b]
        every = [w.seq_len for w in bptt_batches(torch.arange(400), 2, 20, **kw)]
        gen = torch.Generator().manual_seed(epoch_seed(seed, 0))
        drawn = [b._draw_len(gen) for _ in every]
        assert kept == drawn[: len(kept)]  # every kept window as long as drawn
        cut = every[-1] < drawn[len(every) - 1]
        assert kept == (every[:-1] if cut else every)  # only the cut-short last window dropped
        assert cut or seed != 0


def test_variable_length_windows():
    data = torch.arange(2000)
    b = bptt_batches(data, 2, 20, variable_length=True, seed=3, batch_first=True)
    steps = list(b)
    lens = [s.seq_len for s in steps]
    assert len(set(lens)) > 3 and min(lens) >= 5 and max(lens) <= 60
    assert all(s.lr_scale == pytest.approx(s.seq_len / 20) for s in steps)
    # every token exactly once, in order
    assert torch.equal(torch.cat([s.inputs[0] for s in steps]), torch.arange(1000))
    assert lens == [s.seq_len for s in b]  # same epoch: same draws
    b.set_epoch(1)
    assert lens != [s.seq_len for s in b]
    # unseeded: follows the global torch RNG
    torch.manual_seed(0)
    a1 = [s.seq_len for s in bptt_batches(data, 2, 20, variable_length=True)]
    torch.manual_seed(0)
    a2 = [s.seq_len for s in bptt_batches(data, 2, 20, variable_length=True)]
    assert a1 == a2


def test_variable_length_draw_follows_awd_lstm():
    """The draw, from its definition: base seq_len with probability p, else seq_len / 2, then
    N(base, std) truncated by int() as AWD-LSTM's, clamped to [min_len, seq_len + 40]. std=0 pins
    each length to its base; a huge std pins it to a bound (no test noticed a wrong half-base, a
    swapped p, rounding for truncation, or a wrong max_len default)."""
    kw = {"variable_length": True, "std": 0.0, "min_len": 1, "seed": 0}
    assert {w.seq_len for w in bptt_batches(torch.arange(400), 2, 10, p=0.0, **kw)} == {5}
    assert {w.seq_len for w in bptt_batches(torch.arange(402), 2, 9, p=0.0, **kw)} == {4, 201 % 4}
    assert {w.seq_len for w in bptt_batches(torch.arange(400), 2, 10, p=1.0, **kw)} == {10}
    assert {w.seq_len for w in bptt_batches(torch.arange(400), 2, 11, p=0.0, **kw)} == {5}  # int(5.5)
    lens = [w.seq_len for w in bptt_batches(torch.arange(4000), 2, 10, variable_length=True, std=1e6, seed=0)]
    assert set(lens[:-1]) == {5, 10 + 40} and sum(lens) == 2000


def test_bucket_sampler_covers_all_and_reduces_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 100, (500,), generator=g).tolist()
    s = BucketBatchSampler(lengths, 10, bucket_size=100, seed=1)
    batches = list(s)
    assert len(batches) == len(s) == 50
    assert sorted(i for b in batches for i in b) == list(range(500))

    def padding(bs):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    perm = torch.randperm(500, generator=g).tolist()
    random_batches = [perm[i : i + 10] for i in range(0, 500, 10)]
    assert padding(batches) < padding(random_batches) / 5
    assert list(s) == batches  # deterministic per epoch
    s.set_epoch(1)
    assert list(s) != batches


def test_bucket_sampler_pools_follow_the_definition():
    """Unshuffled, the pools are consecutive runs of bucket_size (default 50 * batch_size, at least
    batch_size) indices, each sorted by ascending length and cut into batches: with lengths falling
    along the indices, every pool comes out reversed (a 5 * batch_size default survived the tests)."""
    lengths = list(range(300, 0, -1))

    def expected(pool: int) -> list[list[int]]:
        idx = [i for start in range(0, 300, pool) for i in reversed(range(start, min(start + pool, 300)))]
        return [idx[i : i + 2] for i in range(0, 300, 2)]

    assert list(BucketBatchSampler(lengths, 2, shuffle=False)) == expected(100)
    assert list(BucketBatchSampler(lengths, 2, shuffle=False, bucket_size=30)) == expected(30)
    pools_of_4 = [list(range(k + 3, k - 1, -1)) for k in range(0, 300, 4)]  # bucket_size 1 -> 4
    assert list(BucketBatchSampler(lengths, 4, shuffle=False, bucket_size=1)) == pools_of_4


def test_bucket_sampler_ties_keep_their_order():
    """Within a pool, items of equal length keep the (here unshuffled) order: a stable sort. An
    unstable one survived every test (torch's differs from the stable one on large pools)."""
    lengths = [i % 3 for i in range(3000)]
    batches = list(BucketBatchSampler(lengths, 10, shuffle=False, bucket_size=3000))
    assert [i for b in batches for i in b] == sorted(range(3000), key=lambda i: (lengths[i], i))


def test_bucket_sampler_ddp_shards():
    lengths = list(range(1, 24))
    full = list(BucketBatchSampler(lengths, 4, seed=2))
    shards = [list(BucketBatchSampler(lengths, 4, seed=2, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(full)
    for f, a, b in zip(full, *shards, strict=True):
        assert a + b == f or len(f) < 2
    with pytest.raises(ValueError, match="rank=2, num_replicas=2"):
        BucketBatchSampler(lengths, 4, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="must be >= num_replicas.*batch_size=3, num_replicas=4"):
        BucketBatchSampler(lengths, 3, num_replicas=4, rank=0)


def test_bucket_sampler_ddp_batch_not_a_multiple_of_the_world():
    """batch_size 6 on 4 ranks: shards of 2, 2, 1, 1; an item was trained twice in every batch."""
    lengths = list(range(1, 25))
    full = list(BucketBatchSampler(lengths, 6, shuffle=False))
    shards = [list(BucketBatchSampler(lengths, 6, shuffle=False, num_replicas=4, rank=r)) for r in range(4)]
    assert [s[0] for s in shards] == [[0, 1], [2, 3], [4], [5]]
    for k, f in enumerate(full):
        assert sum((s[k] for s in shards), []) == f


def test_variable_length_bounds_are_checked():
    """max_len=0 drew windows of 0 tokens: the epoch never ended; std < 0 failed mid-epoch."""
    data = torch.arange(100)
    with pytest.raises(ValueError, match=r"max_len must be >= min_len .* = 5, got max_len=0"):
        bptt_batches(data, 2, 10, variable_length=True, max_len=0)
    with pytest.raises(ValueError, match=r"= 3, got max_len=2"):
        bptt_batches(data, 2, 3, variable_length=True, max_len=2)
    with pytest.raises(ValueError, match="std must be >= 0, got -1.0"):
        bptt_batches(data, 2, 10, variable_length=True, std=-1.0)
    b = bptt_batches(data, 2, 10, variable_length=True, min_len=4, max_len=4, seed=0)
    assert {w.seq_len for w in b} <= {4, 50 % 4} and sum(w.seq_len for w in b) == 50
    assert len(list(bptt_batches(data, 2, 10, max_len=0))) == 5  # fixed windows: max_len unused


def test_bucket_sampler_rejects_bad_bucket_size_and_lengths():
    """bucket_size=0 was read as unset (50 * batch_size) and a negative one raised to batch_size;
    float lengths were truncated (1.9 -> 1) and 2-D ones failed only when iterated."""
    for bad in (0, -5):
        with pytest.raises(ValueError, match=rf"bucket_size must be >= 1 or None .*, got {bad}"):
            BucketBatchSampler([3, 1, 2], 2, bucket_size=bad)
    with pytest.raises(ValueError, match=r"1-D sequence of ints .* torch.float\d+ tensor of shape \(3,\)"):
        BucketBatchSampler([3, 1.9, 2], 2)
    with pytest.raises(ValueError, match=r"2-D torch.int64 tensor of shape \(1, 3\)"):
        BucketBatchSampler(torch.tensor([[3, 1, 2]]), 2)
    with pytest.raises(ValueError, match=r"lengths must be >= 0, got lengths\[1\] = -1"):
        BucketBatchSampler([3, -1, 2], 2)
    s = BucketBatchSampler(torch.tensor([3, 1, 2]), 2, bucket_size=1, shuffle=False)
    assert list(s) == [[1, 0], [2]]  # pools of batch_size (bucket_size 1 is raised to it)


def test_variable_length_windows_need_one_seed_on_all_ranks():
    """seed=None drew each rank's window lengths from its own global RNG: ranks seeded apart cut
    different windows, a different number of steps, and DDP's collectives fell out of step."""
    data = torch.arange(4000)
    with pytest.raises(ValueError, match=r"variable_length=True with world_size=2 needs a seed"):
        bptt_batches(data, 4, 10, variable_length=True, rank=1, world_size=2)
    lens = []
    for rank in range(2):
        torch.manual_seed(rank)  # ranks whose global RNGs differ
        b = bptt_batches(data, 4, 10, variable_length=True, seed=5, rank=rank, world_size=2)
        b.set_epoch(3)
        lens.append([w.seq_len for w in b])
    assert lens[0] == lens[1] and len(set(lens[0])) > 1


def test_a_numpy_epoch_gives_the_order_of_the_same_int():
    """set_epoch(np.int64(e)) (an epoch counted by numpy) failed at iteration ('Python int too
    large to convert to C long': the seed mix stayed a numpy int)."""
    np = pytest.importorskip("numpy")
    orders = []
    for epoch in (3, np.int64(3)):
        s = BucketBatchSampler([5, 3, 8, 2, 7, 4], batch_size=2, shuffle=True, seed=2**40)
        s.set_epoch(epoch)
        orders.append(list(s))
        b = bptt_batches(torch.arange(400), 2, 10, variable_length=True, seed=2**40)
        b.set_epoch(epoch)
        orders.append([x.inputs.shape[0] for x in b])
    assert orders[:2] == orders[2:]


def test_min_len_below_one_and_a_zero_valid_split_are_refused():
    """bptt_batches(min_len=0 or -5) silently drew windows of at least 1; char_lm_split with
    valid_chars=0 said the text was "too short to split". Each names its argument now."""
    from rnnkit.datasets.shakespeare import char_lm_split

    for bad in (0, -5):
        with pytest.raises(ValueError, match=f"min_len must be >= 1, got {bad}"):
            bptt_batches(torch.arange(100), 2, 5, variable_length=True, min_len=bad)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match=f"valid_chars must be an int >= 1, got {bad}"):
            char_lm_split("abcdefghij" * 10, 0.5, bad)
    assert char_lm_split("abcdefghij", 0.5, 2) == ("abcde", "fg")


@pytest.mark.parametrize("p", [True, 1.5, "0.9"])
def test_variable_length_p_that_is_no_probability_is_refused(p):
    """p=True was taken as 1 (every window of the base length); a str failed comparing."""
    with pytest.raises(ValueError, match=rf"p must be a number in \[0, 1\], got {p!r}"):
        bptt_batches(torch.arange(100), 2, 10, variable_length=True, p=p)


@pytest.mark.parametrize("data, got", [(None, "NoneType (Could not infer"), ("abc", "str (new(): ")])
def test_data_that_is_no_tokens_is_named(data, got):
    """make_streams(None) and bptt_batches(None, ...) failed in torch's words "Could not infer dtype
    of NoneType", naming no argument."""
    with pytest.raises(ValueError, match=re.escape(f"data must be a 1-D tensor of tokens, got {got}")):
        make_streams(data, 2)
    with pytest.raises(ValueError, match=re.escape(f"data must be a 1-D tensor of tokens, got {got}")):
        bptt_batches(data, 2, 3)


def test_bucket_sampler_names_lengths_that_are_no_sequence():
    """BucketBatchSampler(None, 2) failed on "object of type 'NoneType' has no len()"."""
    with pytest.raises(TypeError, match=r"lengths must be a sequence of ints \(.*\), got NoneType$"):
        BucketBatchSampler(None, 2)
