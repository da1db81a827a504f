from collections import namedtuple

import pytest
import torch

from rnnkit.train import count_tokens, detach_state, lm_loss, move_to

HC = namedtuple("HC", "h c")


def test_detach_state_all_shapes():
    x = torch.ones(2, requires_grad=True)
    y = x * 2
    assert detach_state(None) is None
    assert detach_state(y).grad_fn is None
    t = detach_state((y, [y, {"a": y}], HC(y, y), 3))
    assert isinstance(t, tuple) and isinstance(t[1], list) and isinstance(t[2], HC)
    leaves = [t[0], t[1][0], t[1][1]["a"], t[2].h, t[2].c]
    assert all(v.grad_fn is None and not v.requires_grad for v in leaves)
    assert t[3] == 3
    assert torch.equal(t[0], y.detach())


def test_move_to_and_count_tokens():
    b = move_to((torch.ones(2), {"k": [torch.zeros(1)]}), "cpu")
    assert isinstance(b[1]["k"], list)
    assert count_tokens((torch.zeros(3, 2), torch.tensor([[1, -100], [2, 3], [4, 5]]))) == 5
    assert count_tokens((torch.zeros(3, 2), torch.zeros(3, 2))) == 6


def test_lm_loss_shape_check():
    with pytest.raises(ValueError, match=r"logits shape \(3, 2, 5\) does not match targets"):
        lm_loss(torch.zeros(3, 2, 5), torch.zeros(2, 3, dtype=torch.long))
