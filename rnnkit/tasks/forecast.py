"""Multi-step time-series forecasting with an autoregressive recurrent model.

The model is a one-step predictor ``x_t -> x_{t+1}`` (a :class:`SequenceNet` over one
feature). Trained on windows of ``window + horizon`` values: the ``window`` context is
read with teacher forcing, the ``horizon`` steps are unrolled with
:func:`rnnkit.train.autoregressive_unroll`, whose :class:`ScheduledSampler` feeds either
the true previous value (teacher forcing) or the model's own prediction (scheduled
sampling, Bengio et al. 2015). The loss is the MSE of every one-step prediction.

Evaluation is rolling-origin: from every origin ``t`` of the test part the model sees
``x[t-window:t]`` and forecasts ``x[t:t+horizon]`` free-running; the RMSE (original units)
is compared with the persistence forecast (``x[t-1]`` repeated) and with statsmodels'
ARIMA fitted on the training part and filtered over the same past (same origins).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit._checks import is_int
from rnnkit.baselines import reads_ahead
from rnnkit.tasks._common import SequenceNet, keeps_mode, utf8_error_offset

__all__ = [
    "load_series",
    "Series",
    "Forecaster",
    "rolling_forecasts",
    "forecast_next",
    "persistence",
    "arima_forecasts",
    "rmse",
    "plot_forecast",
]


def load_series(data: str, column: str | None = None, flag: str = "--data") -> tuple[Tensor, str]:
    """``"sunspots"`` (statsmodels, yearly 1700-2008) or a CSV file's numeric ``column``;
    ``flag`` is the command-line option that named ``data``, for the error messages
    (``rnnkit predict`` reads the series from ``--input``)."""
    if data == "sunspots":
        try:
            from statsmodels.datasets import sunspots
        except ImportError:
            raise ImportError(f"{flag} sunspots needs statsmodels: pip install 'rnnkit[tasks]'") from None
        values = sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
        return torch.tensor(values, dtype=torch.get_default_dtype()), "sunspots (statsmodels, yearly)"
    p = Path(data)
    if not p.is_file():
        raise FileNotFoundError(f"{flag} {data!r}: no such file (or use {flag} sunspots)")
    if column is None:
        try:
            with open(p, encoding="utf-8-sig", newline="") as f:
                names = next(csv.reader(f), None)
        except (OSError, UnicodeDecodeError):
            names = None
        listed = f"; columns are {names}" if names else ""
        raise ValueError(f"{flag} {data} needs --column NAME (the CSV column to forecast{listed})")
    out: list[float] = []
    try:
        with open(p, encoding="utf-8-sig", newline="") as f:  # a BOM is not text
            reader = csv.DictReader(f)
            if reader.fieldnames is None or column not in reader.fieldnames:
                raise ValueError(f"{data}: no column {column!r}; columns are {reader.fieldnames}")
            for row in reader:
                try:
                    v = float(row[column])
                    if not math.isfinite(v):  # float() reads "nan", "inf": a NaN mean, NaN losses
                        raise ValueError
                except (TypeError, ValueError):
                    # line_num, not a row count: DictReader skips blank lines, a quoted field may span lines
                    raise ValueError(
                        f"{data}:{reader.line_num}: {column}={row[column]!r} is not a finite number"
                    ) from None
                out.append(v)
    except UnicodeDecodeError:  # (its start counts from the decoder's chunk of the file)
        raise ValueError(f"{data} is not valid UTF-8 (byte {utf8_error_offset(p.read_bytes())})") from None
    return torch.tensor(out, dtype=torch.get_default_dtype()), f"{p.name}:{column}"


@dataclass
class Series:
    """A series split in time: ``[0, n_train)`` train, ``[n_train, n_valid_end)`` valid,
    the rest test; ``mean``/``std`` of the training part normalize it."""

    values: Tensor
    n_train: int
    n_valid_end: int
    mean: float
    std: float

    @classmethod
    def split(
        cls, values: Tensor, window: int, horizon: int, train: float = 0.7, valid: float = 0.1
    ) -> Series:
        """``values`` (N,) split at ``floor(N * train)`` and ``floor(N * (train + valid))``;
        ``train`` and ``valid`` in (0, 1) with ``train + valid < 1`` (the rest is the test part)."""
        for name, v in (("window", window), ("horizon", horizon)):
            if not is_int(v) or v < 1:  # (0, -1, True, 2.5 gave a Series whose windows failed or were empty)
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        # checked here: out-of-range fractions gave negative part sizes in the "too short" error
        if not (0 < train < 1 and 0 < valid < 1 and train + valid < 1):
            raise ValueError(
                f"train and valid must be fractions in (0, 1) with train + valid < 1 (the rest is the "
                f"test part), got train={train}, valid={valid}"
            )
        n = len(values)
        # floor(n * fraction), rounded first: 0.7 + 0.1 is 0.7999... in binary (79 of 100 values)
        a, b = (math.floor(round(n * f, 9)) for f in (train, train + valid))
        need = window + horizon
        if a < need + 1 or b - a < horizon or n - b < horizon:
            raise ValueError(
                f"series of {n} values is too short for --window {window} --horizon {horizon} "
                f"(train {a}, valid {b - a}, test {n - b} values; "
                f"train needs > {need}, valid/test >= {horizon})"
            )
        tr = values[:a]
        std = float(tr.std()) or 1.0
        return cls(values, a, b, float(tr.mean()), std)

    def norm(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def denorm(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean

    def windows(self, start: int, end: int, length: int) -> Tensor:
        """Every normalized window ``(N, length, 1)`` lying inside ``[start, end)``."""
        z = self.norm(self.values)
        idx = list(range(max(0, start), end - length + 1))
        if not idx:
            raise ValueError(f"no window of length {length} in [{start}, {end})")
        return torch.stack([z[t : t + length] for t in idx])[..., None]


class Forecaster(nn.Module):
    """A one-step predictor over a scalar series: ``forward(x (B, T, 1), state) ->
    (next values (B, T, 1), state)``; :meth:`forecast` unrolls it ``horizon`` steps."""

    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__()
        self.net = SequenceNet(arch, 1, input_size=1)
        if reads_ahead(self.net.encoder):
            raise ValueError(
                "a forecaster needs a unidirectional encoder (each step predicts the next value, which a "
                "backward direction would already have read), got bidirectional=True"
            )

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        return self.net(x, state)

    def step(self, x_t: Tensor, state: Any, t: int = 0) -> tuple[Tensor, Any]:
        """``x_t`` (B, 1), the series' step ``t`` (the steps already fed: batch norm normalizes
        with that step's statistics) -> (prediction (B, 1), state)."""
        y, state = self.net(x_t[:, None, :], state, step=t)
        return y[:, 0], state

    def loss(self, windows: Tensor, horizon: int, sampler: Any = None, step: int = 0) -> Tensor:
        """MSE over a batch of normalized windows ``(B, W + H, 1)``."""
        from rnnkit.train import autoregressive_unroll

        ctx = windows.shape[1] - horizon
        if ctx < 1 or horizon < 1:
            raise ValueError(
                f"windows (B, W + H, 1) need W >= 1 and H >= 1, got shape {tuple(windows.shape)} "
                f"and horizon {horizon}"
            )
        # predicts windows[:, 1:ctx]; a one-value context has nothing to read before the unroll
        pred_ctx, state = self(windows[:, : ctx - 1], None) if ctx > 1 else (windows[:, :0], None)
        t = iter(range(ctx - 1, windows.shape[1]))  # the unrolled steps' time indices
        pred_h, _ = autoregressive_unroll(
            lambda x_t, st: self.step(x_t, st, next(t)),
            windows[:, ctx - 1],
            windows[:, ctx:],
            state,
            sampler=sampler,
            step=step,
            to_input=lambda p: p,
            batch_first=True,
        )
        pred = torch.cat([pred_ctx, pred_h], 1)
        return nn.functional.mse_loss(pred, windows[:, 1:])

    @torch.no_grad()
    def forecast(self, context: Tensor, horizon: int) -> Tensor:
        """Free-running forecast: ``context`` (B, W, 1) -> ``(B, horizon, 1)``; ``horizon >= 0``
        (0 gives an empty ``(B, 0, 1)``)."""
        if not is_int(horizon) or horizon < 0:  # (True forecast one step, 2.0 failed in range())
            raise ValueError(f"horizon must be an int >= 0, got {horizon!r}")
        if context.dim() != 3 or context.shape[1] < 1 or context.shape[2] != 1:  # (was an IndexError)
            raise ValueError(f"context must have shape (B, W >= 1, 1), got {tuple(context.shape)}")
        if horizon == 0:  # (torch.stack refuses an empty list)
            return context.new_empty((context.shape[0], 0, context.shape[2]))
        state = self(context[:, :-1], None)[1] if context.shape[1] > 1 else None
        x, preds = context[:, -1], []
        for k in range(horizon):
            x, state = self.step(x, state, context.shape[1] - 1 + k)
            preds.append(x)
        return torch.stack(preds, 1)


def origins(s: Series, horizon: int) -> list[int]:
    """Forecast origins of the test part: every ``t`` with ``x[t:t+horizon]`` in it."""
    return list(range(s.n_valid_end, len(s.values) - horizon + 1))


@torch.no_grad()
@keeps_mode
def rolling_forecasts(model: Forecaster, s: Series, window: int, horizon: int) -> Tensor:
    """``(n_origins, horizon)`` forecasts in original units."""
    model.eval()
    z = s.norm(s.values)
    ctx = torch.stack([z[t - window : t] for t in origins(s, horizon)])[..., None]
    ctx = ctx.to(next(model.parameters()).device)
    return s.denorm(model.forecast(ctx, horizon)[..., 0].cpu())


@torch.no_grad()
@keeps_mode
def forecast_next(
    model: Forecaster, values: Tensor, window: int, horizon: int, mean: float, std: float
) -> Tensor:
    """The ``horizon`` (>= 0) values after the end of ``values`` (N,) (original units), forecast
    from its last ``window`` values normalized with the training part's ``mean``/``std``."""
    if not is_int(window) or window < 1:  # values[-0:] is the whole series: window 0 (or -3) read all of it
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    if values.ndim != 1:
        raise ValueError(f"need a 1-D series (N,), got shape {tuple(values.shape)}")
    if len(values) < window:
        raise ValueError(f"need a series of at least --window {window} values, got {len(values)}")
    model.eval()
    ctx = ((values[-window:] - mean) / std)[None, :, None].to(next(model.parameters()).device)
    return model.forecast(ctx, horizon)[0, :, 0].cpu() * std + mean


def truth(s: Series, horizon: int) -> Tensor:
    return torch.stack([s.values[t : t + horizon] for t in origins(s, horizon)])


def persistence(s: Series, horizon: int) -> Tensor:
    """The last observed value repeated: ``(n_origins, horizon)``."""
    return torch.stack([s.values[t - 1].repeat(horizon) for t in origins(s, horizon)])


def arima_forecasts(s: Series, horizon: int, order: tuple[int, int, int]) -> Tensor:
    """ARIMA(order) fitted on the training part, then run (same parameters) over the whole
    series; from each origin a dynamic forecast uses only the values before it."""
    import warnings

    from statsmodels.tsa.arima.model import ARIMA

    y = s.values.double().numpy()
    with warnings.catch_warnings():  # convergence chatter on short series
        warnings.simplefilter("ignore")
        fitted = ARIMA(y[: s.n_train], order=order).fit()
        full = fitted.apply(y)
        rows = [
            full.get_prediction(start=t, end=t + horizon - 1, dynamic=True).predicted_mean
            for t in origins(s, horizon)
        ]
    return torch.from_numpy(np.stack(rows)).to(s.values.dtype)


def rmse(pred: Tensor, target: Tensor) -> float:
    """Root mean squared error of forecasts ``pred`` and ``target`` of the same shape."""
    if pred.shape != target.shape:  # broadcasting would score the wrong pairs
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    return math.sqrt(float(((pred - target) ** 2).mean()))


def plot_forecast(
    s: Series, horizon: int, forecasts: dict[str, Tensor], path: str | os.PathLike, title: str = "forecast"
) -> Path:
    """The series (test part and some context) with forecasts from non-overlapping origins."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(9, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    start = max(0, s.n_valid_end - 3 * horizon)
    ax.plot(range(start, len(s.values)), s.values[start:].tolist(), "k-", lw=1, label="series")
    ax.axvline(s.n_valid_end, color="grey", ls=":", lw=1)
    orig = origins(s, horizon)
    for (name, f), color in zip(forecasts.items(), ("C0", "C1", "C2", "C3")):
        for j in range(0, len(orig), horizon):
            t = orig[j]
            ax.plot(range(t, t + horizon), f[j].tolist(), color=color, lw=1.5, label=name if j == 0 else None)
    ax.set_xlabel("time step")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path
