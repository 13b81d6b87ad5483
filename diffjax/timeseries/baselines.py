"""Forecast baselines: seasonal naive and a linear (ridge) direct multi-horizon forecaster.

    seasonal_naive(context, horizon, m)[t] = context[-m + (t mod m)]         (point forecast)
    linear: y_hat = W^T [context, 1] fitted by ridge least squares on training windows (the
        "linear predictive score" model of Kollovieh et al. 2023, Sec. 5.3, and the base
        forecaster refined in Sec. 5.2), with Gaussian residuals of the per-step training std:
        samples y_hat + s_h N(0, 1).
Both act on whatever units they are given (the windows' scaled values in diffjax.timeseries).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


def seasonal_naive(context, horizon: int, season: int) -> np.ndarray:
    """(K, C) contexts -> (K, horizon) repeats of the last season."""
    c = np.asarray(context, np.float64)
    m = max(1, min(int(season), c.shape[-1]))
    last = c[..., -m:]
    reps = -(-horizon // m)
    return np.tile(last, reps)[..., :horizon]


class Linear(NamedTuple):
    weights: np.ndarray     # (context + 1, horizon)
    resid_std: np.ndarray   # (horizon,)

    def predict(self, context) -> np.ndarray:
        c = np.asarray(context, np.float64)
        return np.concatenate([c, np.ones(c.shape[:-1] + (1,))], -1) @ self.weights

    def sample(self, context, num: int, seed: int = 0) -> np.ndarray:
        """(K, S, horizon) Gaussian forecast samples."""
        mu = self.predict(context)
        z = np.random.default_rng(seed).standard_normal(mu.shape[:-1] + (num, mu.shape[-1]))
        return mu[..., None, :] + self.resid_std * z


def fit_linear(contexts, targets, ridge: float = 1e-2) -> Linear:
    """Ridge regression of targets (N, H) on contexts (N, C) with a bias (not penalised)."""
    c = np.asarray(contexts, np.float64)
    y = np.asarray(targets, np.float64)
    a = np.concatenate([c, np.ones((len(c), 1))], 1)
    reg = ridge * np.eye(a.shape[1])
    reg[-1, -1] = 0.0
    w = np.linalg.solve(a.T @ a + reg, a.T @ y)
    resid = y - a @ w
    return Linear(w, np.maximum(resid.std(0), 1e-6))
