"""Analytic-Init and TimeNoise: conditional image leakage (Zhao et al., NeurIPS 2024).

A conditional model over-relies on a clean condition at high noise. Two remedies:

Analytic-Init (sampling). Start at a level sigma_M below the grid's top from the isotropic
Gaussian closest in KL to the true marginal q(x at sigma_M) instead of pure noise. With the data's
mean E0 = E[x0] and per-dimension variance v0 = tr Cov[x0] / d, in the EDM frame x = x0 + sigma eps
that Gaussian is

    x_M ~ N(E0, (sigma_M^2 + v0) I)

(the paper's x_M = sqrt(abar_M) E0 + sqrt(1 - abar_M + abar_M v0) eps, divided by
alpha = sqrt(abar_M)); then the usual sampler runs on the grid restricted to sigma <= sigma_M.
For Gaussian data N(m, s^2 I) it is the exact marginal.

TimeNoise (training). The condition c (e.g. the conditioning image) is noised with a level that
grows with t: t~ = t / T in [0, 1], mu(t~) = 2 t~^a - 1, beta = beta_m sigmoid(y), y ~ N(mu, 1),
c~ = c + beta n, n ~ N(0, I), one beta per example (DynamiCrafter: beta_m = 100, a = 5; SVD: 15, 5,
with t~ = sigma / 700).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def data_moments(x0) -> tuple[np.ndarray, float]:
    """(E0, v0): the mean example (shape of one example) and tr Cov / d over a set (N, ...)."""
    x0 = np.asarray(x0, np.float64)
    if x0.ndim < 2 or len(x0) < 2:
        raise ValueError(f"data_moments needs a set of at least 2 examples (N, ...), got shape "
                         f"{x0.shape}")
    mean = x0.mean(0)
    v0 = float(((x0 - mean) ** 2).sum(0).mean() / (len(x0) - 1))
    return mean.astype(np.float32), v0


def analytic_init(keys, mean, v0: float, sigma):
    """x_M for each example key: mean + sqrt(sigma^2 + v0) eps (EDM frame); ``keys`` (B,)."""
    mean = jnp.asarray(mean, jnp.float32)
    eps = jax.vmap(lambda k: jax.random.normal(k, mean.shape, jnp.float32))(keys)
    return mean[None] + jnp.sqrt(jnp.float32(sigma) ** 2 + v0) * eps


def start_grid(sigmas, sigma_start: float):
    """The decreasing grid restricted to sigma <= sigma_start, which becomes its first level."""
    s = np.asarray(sigmas, np.float32)
    if not 0 < sigma_start:
        raise ValueError(f"start_grid: sigma_start must be positive, got {sigma_start}")
    if sigma_start > s[0]:
        raise ValueError(f"start_grid: sigma_start {sigma_start:g} is above the grid's top "
                         f"{s[0]:g}; start at or below it")
    rest = s[s < sigma_start]
    return jnp.asarray(np.concatenate([[np.float32(sigma_start)], rest]))


def timenoise_mu(t_frac, a: float = 5.0):
    """mu(t~) = 2 t~^a - 1: from -1 at t~ = 0 to 1 at t~ = 1, increasing."""
    return 2.0 * jnp.asarray(t_frac, jnp.float32) ** a - 1.0


def timenoise_condition(key, c, t_frac, *, beta_m: float = 100.0, a: float = 5.0):
    """c + beta n with beta = beta_m sigmoid(y), y ~ N(mu(t~), 1), one beta per example;
    ``c`` (B, ...), ``t_frac`` (B,) the time as a fraction of its range. Returns (c~, beta)."""
    k_y, k_n = jax.random.split(key)
    b = c.shape[0]
    y = timenoise_mu(t_frac, a) + jax.random.normal(k_y, (b,), jnp.float32)
    beta = beta_m * jax.nn.sigmoid(y)
    n = jax.random.normal(k_n, c.shape, jnp.float32)
    return c + (beta.reshape((b,) + (1,) * (c.ndim - 1)) * n).astype(c.dtype), beta
