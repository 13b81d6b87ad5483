"""Real univariate series that ship with statsmodels, cut into (context + horizon) windows.

    values, season = load_series('sunspots')
    split = split_series(values, context=44, horizon=12, test_windows=4)
    x, scale = scale_windows(split.train, context=44, kind='mean')     # (N, L, 1), (N,)

Series (``statsmodels.datasets``, bundled with the package: nothing is downloaded):
    sunspots  yearly Wolf sunspot numbers 1700-2008 (309 values), season 11 (the solar cycle)
    elnino    monthly Nino-3 sea surface temperature 1950-2010 (732 values), season 12
    co2       weekly Mauna Loa CO2 (ppm) 1958-2001 (2284 values, 59 missing: linearly
              interpolated), season 52
    nile      yearly Nile flow at Aswan 1871-1970 (100 values), season 1

Split (the GluonTS rolling evaluation TSDiff uses): the last ``test_windows`` x horizon values are
the test targets, one forecast origin every ``horizon`` steps, each with the ``context`` values
before it; training windows (stride 1) lie entirely before the first test target.

Scaling (Kollovieh et al. 2023, Sec. 4, GluonTS's MeanScaler): each window is divided by the mean
absolute value of its context, ``kind='mean'`` (the paper's), so the model sees shapes, not levels.
``kind='standard'`` subtracts the context mean and divides by the context std instead, for series
whose level dwarfs their variation (elnino's ~26 C with +-2 C anomalies). Forecasts are unscaled
with the same per-window statistics.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

SEASONS = {"sunspots": 11, "elnino": 12, "co2": 52, "nile": 1}
SCALINGS = ("mean", "standard")
MIN_SCALE = 1e-6


def _statsmodels():
    try:
        import statsmodels.datasets as d
    except ImportError as e:
        raise ImportError("the time-series data (diffjax.timeseries) reads statsmodels' bundled "
                          "datasets: pip install statsmodels (or pip install -e '.[test]')") from e
    return d


def load_series(name: str) -> tuple[np.ndarray, int]:
    """(values float64 (T,), season length) of a bundled series."""
    if name not in SEASONS:
        raise ValueError(f"unknown series {name!r}; bundled: {', '.join(SEASONS)}")
    d = _statsmodels()
    if name == "sunspots":
        v = d.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
    elif name == "elnino":
        v = d.elnino.load_pandas().data.drop(columns=["YEAR"]).to_numpy().reshape(-1)
    elif name == "co2":
        v = d.co2.load_pandas().data["co2"].to_numpy()
        bad = np.isnan(v)
        v = v.copy()
        v[bad] = np.interp(np.flatnonzero(bad), np.flatnonzero(~bad), v[~bad])
    else:
        v = d.nile.load_pandas().data["volume"].to_numpy()
    return np.asarray(v, np.float64), SEASONS[name]


class Split(NamedTuple):
    train: np.ndarray          # (N, context + horizon) training windows
    test_context: np.ndarray   # (K, context)
    test_target: np.ndarray    # (K, horizon)
    history: np.ndarray        # the values before the first test target (MASE's in-sample part)


def split_series(values, context: int, horizon: int, test_windows: int = 4,
                 stride: int = 1) -> Split:
    values = np.asarray(values, np.float64)
    t = len(values)
    start = t - test_windows * horizon
    length = context + horizon
    if start - length + 1 < 1:
        raise ValueError(f"a series of {t} values cannot give {test_windows} test windows of "
                         f"horizon {horizon} and training windows of length {length}: shorten "
                         f"the context or the test")
    if start < context:
        raise ValueError(f"the first test window needs {context} context values, the series has "
                         f"{start} before it")
    train = np.stack([values[i:i + length] for i in range(0, start - length + 1, stride)])
    origins = [start + k * horizon for k in range(test_windows)]
    return Split(train, np.stack([values[o - context:o] for o in origins]),
                 np.stack([values[o:o + horizon] for o in origins]), values[:start])


def window_stats(context, kind: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """(loc, scale) per window (..., context) -> (...,) each: x_scaled = (x - loc) / scale."""
    c = np.asarray(context, np.float64)
    if kind == "mean":
        return np.zeros(c.shape[:-1]), np.maximum(np.abs(c).mean(-1), MIN_SCALE)
    if kind == "standard":
        return c.mean(-1), np.maximum(c.std(-1), MIN_SCALE)
    raise ValueError(f"unknown scaling {kind!r}; expected one of {', '.join(SCALINGS)}")


def scale_windows(windows, context: int, kind: str = "mean"):
    """Windows (N, L) -> (scaled (N, L, 1) float32, loc (N,), scale (N,)) from each context."""
    w = np.asarray(windows, np.float64)
    loc, scale = window_stats(w[:, :context], kind)
    x = (w - loc[:, None]) / scale[:, None]
    return x[..., None].astype(np.float32), loc, scale


def source(config):
    """The 'series' data source: the training windows of ``config.data.series``, scaled."""
    from diffjax.data.arrays import ArraySource

    get = lambda k, d=None: config.get(k, d) if hasattr(config, "get") else getattr(config, k, d)
    name = get("series")
    if not name:
        raise ValueError(f"data source 'series' needs config.data.series (one of "
                         f"{', '.join(SEASONS)})")
    context, horizon = int(get("context", 0) or 0), int(get("horizon", 0) or 0)
    if context < 1 or horizon < 1:
        raise ValueError("data source 'series' needs config.data.context and config.data.horizon "
                         "(positive window lengths)")
    values, _ = load_series(name)
    sp = split_series(values, context, horizon, int(get("test_windows", 4)))
    x, _, _ = scale_windows(sp.train, context, get("scaling", "mean"))
    return ArraySource(x, np.zeros(len(x), np.int32), num_classes=1)
