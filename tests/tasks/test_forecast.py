"""The forecasting task as a library: the split in time, the model's edge sizes, the metric."""

from __future__ import annotations

import re

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


ARCH = {"cell": "lstm", "hidden": 5, "layers": 1, "dropout": 0.0}


def test_a_one_value_window_trains_and_forecasts():
    """``--window 1`` (a positive int, accepted) fed the encoder an empty context (0 steps)
    and failed; a context of one value starts the unroll from that value and no state."""
    from rnnkit.tasks.forecast import Forecaster, forecast_next

    torch.manual_seed(0)
    m = Forecaster(ARCH)
    w = torch.randn(4, 1 + 3, 1)
    loss = m.loss(w, 3)
    preds, x, state = [], w[:, 0], None
    for t in range(3):  # the oracle: the one-step predictor unrolled by hand, teacher forced
        p, state = m.step(x, state, t)
        preds.append(p)
        x = w[:, t + 1]
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(torch.stack(preds, 1), w[:, 1:]))
    assert m.forecast(w[:, :1], 3).shape == (4, 3, 1)
    assert forecast_next(m, torch.arange(6.0), 1, 2, 0.0, 1.0).shape == (2,)
    with pytest.raises(ValueError, match=r"need W >= 1 and H >= 1, got shape \(4, 4, 1\) and horizon 4"):
        m.loss(w, 4)


def test_rmse_against_numpy_and_refuses_to_broadcast():
    """rmse((N, H), (N, 1)) broadcast the target over the horizon and returned a number."""
    import numpy as np

    from rnnkit.tasks.forecast import rmse

    p, t = torch.randn(6, 3), torch.randn(6, 3)
    assert rmse(p, t) == pytest.approx(np.sqrt(np.mean((p.numpy() - t.numpy()) ** 2)))
    with pytest.raises(ValueError, match=r"same shape.*\(6, 3\).*\(6, 1\)"):
        rmse(p, t[:, :1])


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-Infinity"])
def test_load_series_refuses_non_finite_values(tmp_path, bad):
    """float() reads "nan" and "inf": a missing value written as NaN made the training part's
    mean and std NaN and every loss NaN, with no word about the file."""
    from rnnkit.tasks.forecast import load_series

    p = tmp_path / "s.csv"
    p.write_text(f"t,v\n0,1.5\n1,{bad}\n2,2.0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"s.csv:3: v='{bad}' is not a finite number"):
        load_series(str(p), "v")


@pytest.mark.parametrize(
    "train, valid",
    [(0.9, 0.2), (0.8, 0.2), (0.0, 0.1), (1.0, 0.1), (0.7, 0.0), (0.7, -0.1), (float("nan"), 0.1)],
)
def test_split_refuses_fractions_outside_0_1_or_summing_to_1(train, valid):
    """train=0.9, valid=0.2 was reported as a series "too short" with a test part of -10
    values, and a NaN fraction failed in math.floor; the fractions are checked first."""
    msg = rf"in \(0, 1\) with train \+ valid < 1.*train={train}, valid={valid}"
    with pytest.raises(ValueError, match=msg):
        Series.split(torch.arange(100.0), window=2, horizon=3, train=train, valid=valid)


def test_load_series_error_names_the_file_line_after_blank_and_multi_line_rows(tmp_path):
    """Lines were counted as rows from 2: DictReader skips blank lines and a quoted field may
    span two lines, so the error named a line before the bad value."""
    from rnnkit.tasks.forecast import load_series

    p = tmp_path / "s.csv"
    p.write_text('t,v,note\n0,1.5,a\n\n1,2.0,"two\nlines"\n2,x,c\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"s.csv:6: v='x' is not a finite number"):
        load_series(str(p), "v")


def test_forecast_next_reads_the_last_window_and_refuses_a_window_below_one():
    """values[-window:] with window 0 (or -3) is the whole series: forecast_next forecast from all of
    it, silently, the same numbers as a window of the series' length."""
    from rnnkit.tasks.forecast import Forecaster, forecast_next

    torch.manual_seed(0)
    m = Forecaster(ARCH)
    values = torch.randn(12)
    ctx = ((values[-4:] - 0.5) / 2.0)[None, :, None]  # the last 4 values, normalized
    torch.testing.assert_close(
        forecast_next(m, values, 4, 3, 0.5, 2.0), m.forecast(ctx, 3)[0, :, 0] * 2.0 + 0.5
    )
    for bad in (0, -3, True, 2.5):
        with pytest.raises(ValueError, match=rf"window must be an int >= 1, got {bad!r}"):
            forecast_next(m, values, bad, 3, 0.5, 2.0)
    # a count, not a shape ("got (2,)"), and a 2-D series is named as such
    with pytest.raises(ValueError, match=r"at least --window 4 values, got 2$"):
        forecast_next(m, values[:2], 4, 3, 0.5, 2.0)
    with pytest.raises(ValueError, match=r"need a 1-D series \(N,\), got shape \(3, 4\)"):
        forecast_next(m, values.view(3, 4), 4, 3, 0.5, 2.0)


@pytest.mark.parametrize(
    ("window", "horizon", "name"),
    [
        (0, 3, "window"),
        (-1, 3, "window"),
        (2.5, 3, "window"),
        (True, 3, "window"),
        (2, 0, "horizon"),
        (2, 1.0, "horizon"),
    ],
)
def test_split_refuses_a_window_or_horizon_below_one_or_not_an_int(window, horizon, name):
    """A window of 0 or -1, a float or a bool built a Series whose windows were empty or failed in range()."""
    bad = window if name == "window" else horizon
    with pytest.raises(ValueError, match=rf"{name} must be an int >= 1, got {bad!r}"):
        Series.split(torch.arange(100.0), window, horizon)


def test_forecast_refuses_a_context_without_steps():
    """A context of 0 steps (rolling_forecasts with window 0) failed with 'index -1 is out of bounds'."""
    from rnnkit.tasks.forecast import Forecaster

    m = Forecaster(ARCH)
    for shape in [(2, 0, 1), (2, 3), (2, 3, 2)]:
        msg = f"context must have shape (B, W >= 1, 1), got {shape}"
        with pytest.raises(ValueError, match=re.escape(msg)):
            m.forecast(torch.zeros(shape), 2)
