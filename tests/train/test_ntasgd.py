"""NT-ASGD's averaging object on its own: applying, swapping and loading its state."""

import torch

from rnnkit.train import NTASGD


def test_apply_before_the_trigger_keeps_the_weights():
    """apply() before averaging had triggered failed with zip()'s bare "argument 2 is shorter";
    like swapped(), it now leaves the weights as they are (nothing has been averaged)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 3)
    before = [p.detach().clone() for p in model.parameters()]
    avg = NTASGD(model)
    avg.apply()
    with avg.swapped():
        pass
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)
