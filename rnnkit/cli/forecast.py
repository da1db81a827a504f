"""``rnnkit train forecast``: autoregressive multi-step forecasting of sunspots or a CSV column,
scored against persistence and ARIMA on the test part of the series."""

from __future__ import annotations

import argparse
from pathlib import Path

from torch.utils.data import DataLoader, TensorDataset

from rnnkit.arch import Given, add_arch_arguments
from rnnkit.cli import CLIError
from rnnkit.cli.common import (
    add_run_arguments,
    data_record,
    echo,
    make_trainer,
    positive_int,
    prepare_out,
    ranks,
    read_run,
    refuse_unread,
    require,
)
from rnnkit.cli.finish import finish
from rnnkit.cli.rundir import data_fingerprints
from rnnkit.cli.runflags import checked_arch_config
from rnnkit.cli.sampling import add_sampling_arguments, sampler_of
from rnnkit.cli.tasks import _describe, _optimizer
from rnnkit.tasks._common import batches

__all__ = ["add_forecast_parser", "train_forecast"]


def add_forecast_parser(tsub: argparse._SubParsersAction) -> None:
    p = tsub.add_parser(
        "forecast",
        help="multi-step time-series forecasting (sunspots or a CSV column)",
        description="Autoregressive multi-step forecasting; RMSE against persistence and ARIMA.",
    )
    p.add_argument(
        "--data", default="sunspots", metavar="CSV|sunspots", help="(default sunspots, statsmodels)"
    )
    p.add_argument("--column", default=None, action=Given, help="the CSV column to forecast")
    a = p.add_argument  # Given: a resume names the ones typed that it ignores, not the defaults
    a("--window", type=positive_int, default=24, action=Given, help="context length (default 24)")
    a("--horizon", type=positive_int, default=12, action=Given, help="steps forecast (default 12)")
    p.add_argument(
        "--arima-order",
        default="3,0,0",
        action=Given,
        metavar="P,D,Q",
        help="ARIMA baseline order, or none (default 3,0,0)",
    )
    add_sampling_arguments(p, "inverse_sigmoid", inverse_sigmoid_k=50.0)
    add_arch_arguments(p, hidden=64, layers=1)
    add_run_arguments(p, task="forecast", lr=3e-3, batch_size=32, epochs=30)
    p.set_defaults(func=train_forecast)


def train_forecast(args: argparse.Namespace) -> int:
    from rnnkit.tasks import forecast as F
    from rnnkit.train import ScheduledSampler

    sampler, free = sampler_of(args), ScheduledSampler(0.0)
    if args.data != "sunspots" and not args.data.lower().endswith(".csv") and not Path(args.data).is_file():
        # a bad flag value, not a missing file: a usage error, as classify's --data mnist
        raise CLIError(f"--data must be sunspots or a FILE.csv, got {args.data!r}", code=2)
    if args.data == "sunspots":
        refuse_unread(args, ("column",), "--data sunspots (one series)")
    values, source = F.load_series(args.data, args.column)
    _restore_forecast_flags(args)  # (before the split: the run's --window, not the default)
    order = None
    if args.arima_order.lower() != "none":
        try:
            order = tuple(int(v) for v in args.arima_order.split(","))
        except ValueError:
            order = ()
        if len(order) != 3 or min(order) < 0:  # a bad flag value: a usage error
            raise CLIError(
                f"--arima-order expects P,D,Q (three integers >= 0) or none, got {args.arima_order!r}", code=2
            )
    s = F.Series.split(values, args.window, args.horizon)
    run = prepare_out(
        args,
        {
            "task": "forecast",
            "data": source if args.data == "sunspots" else f"{data_record(args.data)}:{args.column}",
            "column": args.column,  # on its own: a name may hold ':' (predict's default column)
            # the CSV's size and SHA-256, which --resume checks (sunspots: statsmodels', not recorded)
            "fingerprints": data_fingerprints(data=None if args.data == "sunspots" else args.data),
            "model": {"arch": checked_arch_config(args)},
            "window": args.window,
            "horizon": args.horizon,
            "arima_order": args.arima_order,  # the baseline of results.json, which --resume keeps
            # the training part's statistics: `rnnkit predict` normalizes new data with them
            "normalization": {"mean": s.mean, "std": s.std},
        },
    )
    norm = run.get("normalization") or {"mean": s.mean, "std": s.std}
    if (norm["mean"], norm["std"]) != (s.mean, s.std):  # --resume: the scale the weights learned in
        # (an older release split the series one value earlier for some lengths; predict reads these)
        echo(f"resuming with the run's normalization mean {norm['mean']:g} std {norm['std']:g}")
        s.mean, s.std = norm["mean"], norm["std"]
    model = F.Forecaster(run["model"]["arch"])
    length = args.window + args.horizon
    train = batches(
        TensorDataset(s.windows(0, s.n_train, length)),
        args.batch_size,
        shuffle=True,
        seed=args.seed,
        **ranks(),
    )
    valid = DataLoader(
        TensorDataset(s.windows(s.n_train - args.window, s.n_valid_end, length)), batch_size=256
    )
    echo(
        f"data {source}: {len(values)} values; train {s.n_train}, valid {s.n_valid_end - s.n_train}, "
        f"test {len(values) - s.n_valid_end}; {len(train.dataset)} training windows"
    )
    _describe(model, model.net.encoder)
    trainer = None

    def step_fn(m, batch, state):  # validation is free-running: the metric that matters
        smp, step = (sampler, trainer.step) if m.training else (free, 0)
        return m.loss(batch[0], args.horizon, smp, step), None

    trainer = make_trainer(args, model, _optimizer(args, model), step_fn=step_fn, carry_state=False)
    result = trainer.fit(train, valid)
    target = F.truth(s, args.horizon)
    preds = {
        "rnnkit": F.rolling_forecasts(model, s, args.window, args.horizon),
        "persistence": F.persistence(s, args.horizon),
    }
    if order is not None:
        require("statsmodels", "the ARIMA baseline (or pass --arima-order none)")
        preds["ARIMA" + str(order)] = F.arima_forecasts(s, args.horizon, order)
    metrics = {f"test_rmse_{k.split('(')[0].lower()}": F.rmse(v, target) for k, v in preds.items()}
    metrics["test_origins"] = len(target)
    if trainer.is_main:
        title = f"{source}: {args.horizon}-step"
        F.plot_forecast(s, args.horizon, preds, Path(args.out) / "forecast.png", title=title)
    finish(args, trainer, result, metrics, valid, wrote=["forecast.png"])
    return 0


def _restore_forecast_flags(args: argparse.Namespace) -> None:
    """``--resume``: the run's ``--window``/``--horizon`` (the windows its model learned) and
    ``--arima-order`` (its baseline) replace the command line's, saying so where they differ;
    read before the series is split (a series too short for the default window may suit the
    run's). Runs stored without ``arima_order`` keep the command line's; no run: nothing. Only
    flags typed (:class:`Given`) are named as ignored: the parser's defaults are restored silently."""
    if not args.resume:
        return
    try:
        stored = read_run(Path(args.out))
    except (CLIError, OSError):  # no run here: prepare_out says so
        return
    if stored.get("task") != "forecast":  # prepare_out refuses it
        return
    given = getattr(args, "given", ())
    window, horizon = stored["window"], stored["horizon"]
    typed = [f"--{f} {getattr(args, f)}" for f, v in (("window", window), ("horizon", horizon))
             if f in given and getattr(args, f) != v]  # fmt: skip
    if typed:
        echo(f"resuming with the run's --window {window} --horizon {horizon} (command line's "
             f"{' '.join(typed)} ignored)")  # fmt: skip
    args.window, args.horizon = window, horizon
    order = stored.get("arima_order", args.arima_order)
    if order != args.arima_order and "arima_order" in given:
        echo(f"resuming with the run's --arima-order {order} (command line's {args.arima_order} ignored)")
    args.arima_order = order
