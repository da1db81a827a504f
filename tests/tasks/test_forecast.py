"""The forecasting task as a library: the split in time, the model's edge sizes, the metric."""

from __future__ import annotations

import pytest
import torch

from rnnkit.tasks.forecast import Series


@pytest.mark.parametrize("n", [30, 50, 90, 100, 1000])
def test_split_follows_the_documented_70_10_20_fractions(n):
    """0.7 + 0.1 is 0.7999... in binary and 90 * 0.7 is 62.999...: 100 values split 70/9/21,
    1000 split 700/99/201, 90 split 62/9/19, and a horizon of 10% of the series was refused as
    too long for the validation part."""
    s = Series.split(torch.arange(float(n)), window=2, horizon=n // 10)
    assert (s.n_train, s.n_valid_end) == (n * 7 // 10, n * 8 // 10)
