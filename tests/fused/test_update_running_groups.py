"""``norm_input.update_running_groups``: the running statistics of a direction's batch-norm groups
after a training call, checked group by group before any is updated (both backends)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
import rnnkit.kernels as K
from rnnkit.kernels import norm_in_kernel, norm_input


def _groups(dtype_c=torch.float64, device_c="cpu"):
    """Running statistics ``p`` of groups ``hh`` and ``c`` (``c``'s in ``dtype_c`` on ``device_c``)
    and float64 step statistics of 2 steps."""
    g = torch.Generator().manual_seed(0)
    p = {"running_mean_hh": torch.zeros(3, 5), "running_var_hh": torch.ones(3, 5)}
    p["running_mean_c"] = torch.zeros(3, 4, dtype=dtype_c, device=device_c)
    p["running_var_c"] = torch.ones(3, 4, dtype=dtype_c, device=device_c)
    stats = [(grp, *(torch.rand(2, f, generator=g) for _ in range(2))) for grp, f in (("hh", 5), ("c", 4))]
    return p, stats


@pytest.fixture(params=["ext", "pure"])
def backend(request, monkeypatch):
    if request.param == "pure":
        monkeypatch.setattr(K, "backend", lambda x: "pure")
    return request.param


def test_no_groups_is_a_no_op(backend):
    # (an IndexError before: the backend was looked up on the first group's tensor)
    norm_input.update_running_groups({}, [], [4, 4], reverse=False)


BAD = [({"dtype_c": torch.float32}, "torch.float32 on cpu"), ({"device_c": "meta"}, "torch.float64 on meta")]


@pytest.mark.parametrize("bad,got", BAD)
def test_a_group_unlike_the_others_is_named_and_nothing_is_updated(backend, bad, got):
    """The compiled update was chosen by the first group's running mean alone, and its error
    named no group ("rm must be ..."); the PyTorch one updated ``hh`` before failing on ``c``.
    Every group's tensors are now checked first: the error names the group, the tensor, what
    was expected and what was received, and nothing is updated."""
    p, stats = _groups(**bad)
    before = {k: v.clone() for k, v in p.items() if k.endswith("_hh")}
    msg = f"group 'c': running_mean_c must be torch.float64 on cpu .*, got {got}"
    with pytest.raises(ValueError, match=msg):
        norm_input.update_running_groups(p, stats, [4, 4], reverse=False)
    for k, v in before.items():
        assert torch.equal(p[k], v), k


def test_a_step_statistic_unlike_its_group_is_named(backend):
    p, stats = _groups()
    stats[1] = ("c", stats[1][1], stats[1][2].float())
    msg = "group 'c': var must be torch.float64 on cpu .*, got torch.float32 on cpu"
    with pytest.raises(ValueError, match=msg):
        norm_input.update_running_groups(p, stats, [4, 4], reverse=False)
    assert torch.equal(p["running_mean_hh"], torch.zeros(3, 5))


def test_matching_groups_are_updated(backend):
    p, stats = _groups()
    norm_input.update_running_groups(p, stats, [4, 4], reverse=False)
    for grp, mean, _ in stats:
        torch.testing.assert_close(p[f"running_mean_{grp}"][:2], 0.1 * mean)


# -- the batch-norm LSTM's kernel updates its running statistics itself -------------------------
def _bn_pair(seed=0):
    """A 2-layer bidirectional batch-norm LSTM on the compiled kernels (``max_len`` below ``T``:
    the last slot is shared) and its reference-loop copy."""
    torch.manual_seed(seed)
    m = rnnkit.LSTM(3, 4, num_layers=2, bidirectional=True, norm="batch", max_len=3, impl="fused")
    ref = rnnkit.LSTM(3, 4, num_layers=2, bidirectional=True, norm="batch", max_len=3, impl="loop")
    ref.load_state_dict(m.state_dict())
    return m, ref


def _packed():  # unsorted lengths: the reverse direction's steps have changing batch sizes
    x = torch.randn(5, 3, 3, generator=torch.Generator().manual_seed(1))
    return pack_padded_sequence(x, torch.tensor([3, 5, 2]), enforce_sorted=False)


@pytest.mark.skipif(K.ext.ops() is None, reason="needs the compiled kernels")
def test_the_kernel_updates_the_running_statistics_itself(monkeypatch):
    """``rnnkit_norm::forward`` given the running statistics updates them after its loop, as
    :func:`norm_input.update_running_groups` (which the eager layer then does not call) would."""
    m, ref = _bn_pair()

    def fail(*args):
        raise AssertionError("update_running_groups called: the kernel did not update the statistics")

    monkeypatch.setattr(norm_in_kernel, "update_running_groups", fail)
    before = {name: b.clone() for name, b in m.named_buffers()}
    for _ in range(2):
        m(_packed())
        ref(_packed())
    for (name, b), (_, r) in zip(m.named_buffers(), ref.named_buffers(), strict=True):
        torch.testing.assert_close(b, r, msg=name)
        assert not torch.equal(b, before[name]), name


@pytest.mark.skipif(K.ext.ops() is None, reason="needs the compiled kernels")
def test_a_buffer_the_kernel_cannot_update_goes_through_update_running_groups(monkeypatch):
    """A non-contiguous running buffer (or one of another dtype) is not handed to the kernel:
    ``update_running_groups`` updates the groups (or names the bad one)."""
    m, ref = _bn_pair()
    calls = []
    monkeypatch.setattr(norm_in_kernel, "update_running_groups", lambda *a: calls.append(a) or update(*a))
    update = norm_input.update_running_groups
    with torch.no_grad():  # the same values, transposed storage
        m.running_var_c_l1 = m.running_var_c_l1.t().contiguous().t()
    assert not m.running_var_c_l1.is_contiguous()
    m(_packed())
    ref(_packed())
    assert len(calls) == 1  # layer 1's forward direction only
    for (name, b), (_, r) in zip(m.named_buffers(), ref.named_buffers(), strict=True):
        torch.testing.assert_close(b, r, msg=name)
