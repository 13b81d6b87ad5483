"""Toy distributions in R^d with exact densities, scores and denoisers (pure jnp, jit-friendly).

The mixture itself (GaussianMixture: density, score and denoiser) lives in diffjax.core.analytic;
this module names the standard toys built from it (gmm_8, gmm_25) and the swiss roll.

A Gaussian mixture p(x0) = sum_k w_k N(x0; mu_k, S_k) stays a mixture under the heat (VE) process
x = x0 + sigma * eps:
    p_sigma(x) = sum_k w_k N(x; mu_k, S_k + sigma^2 I).
Its ideal denoiser is the posterior mean (Gaussian conditioning per component; Bishop 2006,
Eqs. 2.116-2.117)
    D(x, sigma) = E[x0 | x] = sum_k r_k(x) [mu_k + S_k (S_k + sigma^2 I)^-1 (x - mu_k)],
    r_k(x) = w_k N(x; mu_k, S_k + sigma^2 I) / p_sigma(x),
which equals Tweedie's formula x + sigma^2 grad_x log p_sigma(x) (Efron 2011); the tests check one
against the other. The score is the exact mixture score
    grad_x log p_sigma(x) = -sum_k r_k(x) (S_k + sigma^2 I)^-1 (x - mu_k).
``sigma`` may be a scalar or one value per point (shape x.shape[:-1]); sigma = 0 is the data itself.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffjax.core.analytic import GaussianMixture, isotropic_mixture  # noqa: F401 (re-exported)


def gmm_8(radius: float = 2.0, std: float = 0.2) -> GaussianMixture:
    """8 equal modes evenly spaced on a circle of ``radius``, each N(mu_k, std^2 I)."""
    angles = jnp.arange(8) * (2 * jnp.pi / 8)
    return isotropic_mixture(radius * jnp.stack([jnp.cos(angles), jnp.sin(angles)], -1), std)


def gmm_25(spacing: float = 1.0, std: float = 0.1) -> GaussianMixture:
    """25 equal modes on the 5x5 grid {-2,...,2}^2 * spacing, each N(mu_k, std^2 I)."""
    g = jnp.arange(-2, 3, dtype=jnp.float32) * spacing
    return isotropic_mixture(jnp.stack(jnp.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2), std)


class SwissRoll(NamedTuple):
    """2-D swiss roll (the (x, z) plane of sklearn's make_swiss_roll, scaled by 1/5), plus noise.

    Sampling only: its density has no closed form, so there is no log_prob / denoise.
    """
    noise: float = 0.05

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """Draw ``n`` points: t ~ U(1.5 pi, 4.5 pi), x = (t cos t, t sin t) / 5 + noise * eps."""
        return _swiss_roll(key, n, self.noise)


@functools.partial(jax.jit, static_argnames="n")
def _swiss_roll(key: jax.Array, n: int, noise) -> jax.Array:
    k_t, k_eps = jax.random.split(key)
    t = jax.random.uniform(k_t, (n,), minval=1.5 * jnp.pi, maxval=4.5 * jnp.pi)
    x = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], -1) / 5.0
    return x + noise * jax.random.normal(k_eps, (n, 2))


TOYS = {"gmm_8": gmm_8, "gmm_25": gmm_25, "swiss_roll": SwissRoll}


def get_toy(name: str, **kwargs) -> GaussianMixture | SwissRoll:
    """Build a toy distribution by name (one of ``TOYS``); kwargs go to its constructor."""
    if name not in TOYS:
        raise ValueError(f"unknown toy distribution {name!r}; expected one of {tuple(TOYS)}")
    return TOYS[name](**kwargs)
