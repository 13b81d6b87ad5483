"""Probabilistic forecast metrics: CRPS from samples and in closed form, pinball loss, MASE.

    CRPS(F, y) = E|X - y| - 1/2 E|X - X'|,  X, X' ~ F independent        (Gneiting & Raftery 2007)
    sample form: for sorted x_(1) <= ... <= x_(S),
        (1/S) sum_i |x_i - y| - (1/S^2) sum_i (2i - S - 1) x_(i)
    Gaussian:  CRPS(N(mu, s^2), y) = s [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)],  z = (y - mu)/s
    normalized CRPS = sum CRPS / sum |y| (the scale-free form of TSDiff's tables, GluonTS's
        mean weighted quantile loss in the limit of all quantiles)
    pinball_q(e) = max(q e, (q - 1) e),  e = y - prediction      (minimised by the q-quantile)
    MASE = mean |y - y_hat| / mean_t |h_t - h_{t-m}|  over the in-sample history h (season m)
"""
from __future__ import annotations

import math

import numpy as np


def crps_samples(samples, y, axis: int = -2) -> np.ndarray:
    """CRPS per target point: ``samples`` (..., S, H) with the sample axis ``axis``, y (..., H)."""
    x = np.moveaxis(np.asarray(samples, np.float64), axis, -1)       # (..., H, S)
    y = np.asarray(y, np.float64)[..., None]
    s = x.shape[-1]
    first = np.abs(x - y).mean(-1)
    xs = np.sort(x, -1)
    w = 2 * np.arange(1, s + 1) - s - 1
    return first - (xs * w).sum(-1) / s ** 2


def crps_gaussian(mu, sigma, y) -> np.ndarray:
    from scipy.stats import norm

    mu, sigma, y = (np.asarray(a, np.float64) for a in (mu, sigma, y))
    z = (y - mu) / sigma
    return sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / math.sqrt(math.pi))


def normalized_crps(samples, y, axis: int = -2) -> float:
    return float(crps_samples(samples, y, axis).sum() / max(np.abs(y).sum(), 1e-12))


def pinball(q, e):
    """max(q e, (q - 1) e) = (q - [e < 0]) e elementwise (numpy or traced jax arrays)."""
    return (q - (e < 0)) * e


def mase(point, y, history, season: int) -> float:
    """Mean absolute scaled error of point forecasts (K, H) against targets (K, H)."""
    h = np.asarray(history, np.float64)
    m = max(int(season), 1)
    if len(h) <= m:
        raise ValueError(f"MASE needs more than {m} history values, got {len(h)}")
    denom = np.abs(h[m:] - h[:-m]).mean()
    return float(np.abs(np.asarray(point) - np.asarray(y)).mean() / max(denom, 1e-12))
