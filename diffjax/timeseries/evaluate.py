"""A series run's forecasts on its held-out windows, against the baselines (``diffjax forecast``).

    rows = evaluate(run, num_samples=32, scale=1.0, energy='quantile', refine='lmc')

Rows (each: normalized CRPS over the test targets, MASE of the sample median, seconds):
    seasonal_naive      the last season repeated (a point forecast: CRPS = absolute error)
    linear              ridge regression of the horizon on the context, Gaussian residuals
    tsdiff              the run's self-guided forecasts (guidance 'tsdiff', ``energy``, ``scale``)
    linear+refine       the linear forecaster's samples refined on the run's implicit density
                        (``refine``: 'sgd' or 'lmc', TSDiff Sec. 3.2), when ``refine`` is given
all on the rolling test split of ``config.data`` (series.py), in the series' own units.
"""
from __future__ import annotations

import time

import numpy as np

from diffjax.timeseries import baselines, forecast, metrics, series


def held_out(run):
    context, horizon, _ = forecast._window_config(run)
    d = run.config.data
    values, season = series.load_series(d.series)
    return series.split_series(values, context, horizon, int(d.get("test_windows", 4))), season


def _row(name, samples, split, season, seconds):
    med = np.median(samples, axis=1)
    return {"method": name, "ncrps": metrics.normalized_crps(samples, split.test_target),
            "mase": metrics.mase(med, split.test_target, split.history, season),
            "seconds": round(seconds, 2)}


def evaluate(run, *, num_samples: int = 32, scale: float = 1.0, energy: str = "quantile",
             steps: int = 50, sampler: str = "ddim", seed: int = 0, refine: str | None = None,
             refine_iters: int = 20, refine_reg: str = "quantile") -> list[dict]:
    import jax

    context, horizon, kind = forecast._window_config(run)
    split, season = held_out(run)
    rows = []
    t = time.time()
    sn = baselines.seasonal_naive(split.test_context, horizon, season)
    rows.append(_row("seasonal_naive", sn[:, None], split, season, time.time() - t))
    t = time.time()
    train, _, _ = series.scale_windows(split.train, context, kind)
    lin = baselines.fit_linear(train[:, :context, 0], train[:, context:, 0])
    loc, sc = series.window_stats(split.test_context, kind)
    tc = (split.test_context - loc[:, None]) / sc[:, None]
    lin_scaled = lin.sample(tc, num_samples, seed)                         # (K, S, H)
    unscale = lambda a: a * sc[:, None, None] + loc[:, None, None]
    rows.append(_row("linear", unscale(lin_scaled), split, season, time.time() - t))
    t = time.time()
    f = forecast.forecast(run, split.test_context, num_samples=num_samples, scale=scale,
                          energy=energy, steps=steps, sampler=sampler, seed=seed)
    rows.append(_row(f"tsdiff ({energy}, s={scale:g})", f, split, season, time.time() - t))
    if refine:
        t = time.time()
        k = len(tc)
        init = np.zeros((k, num_samples, context + horizon, 1), np.float32)
        init[:, :, :context, 0] = tc[:, None]
        init[:, :, context:, 0] = np.sort(lin_scaled, axis=1)      # sample i <-> quantile i
        mask = np.zeros_like(init)
        mask[:, :, :context] = 1.0
        q = np.tile(forecast.quantiles(num_samples), k)
        flat = lambda a: a.reshape((k * num_samples,) + a.shape[2:])
        out = forecast.refine(run, flat(init), flat(init), flat(mask), key=jax.random.key(seed),
                              method=refine, reg=refine_reg, iters=refine_iters, q=q)
        out = out.reshape(init.shape)[:, :, context:, 0]
        rows.append(_row(f"linear+refine ({refine})", unscale(out), split, season,
                         time.time() - t))
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'method':<28} {'nCRPS':>7} {'MASE':>7} {'s':>7}"]
    lines += [f"{r['method']:<28} {r['ncrps']:7.3f} {r['mase']:7.3f} {r['seconds']:7.1f}"
              for r in rows]
    return "\n".join(lines)
