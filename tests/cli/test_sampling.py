"""The scheduled-sampling flags of ``rnnkit train forecast|seq2seq``."""

from __future__ import annotations

import pytest

from tests.cli.conftest import TINY, results

FORECAST = ["train", "forecast", "--column", "value", "--window", 8, "--horizon", 3, "--arima-order", "none"]


@pytest.mark.parametrize("kind", ["exponential", "inverse_sigmoid", "linear"])
def test_forecast_trains_with_every_schedule_and_its_default_k(cli, tmp_path, series_csv, kind):
    """forecast's default --sampling-k, 50 for its default inverse_sigmoid, was applied to any
    --sampling: --sampling exponential (no --sampling-k) failed with 'needs 0 < k < 1, got k=50.0'."""
    r = cli(*FORECAST, "--data", series_csv, "--sampling", kind, "--out", tmp_path / "f", *TINY)
    assert r.rc == 0, r.err
    assert results(tmp_path / "f")["step"] == 3
