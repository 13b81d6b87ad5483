"""Exact denoisers for data with closed-form diffused densities (tests, experiments, toy search).

Gaussian data N(mu, diag(s^2)) in the EDM frame x = x0 + sigma eps:
    D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2),
    Var[x0 | x] = s^2 sigma^2 / (s^2 + sigma^2),
and the probability-flow ODE has the exact solution
    x(sigma) = mu + (x(sigma_a) - mu) sqrt((s^2 + sigma^2) / (s^2 + sigma_a^2)).
Gaussian mixture sum_k w_k N(mu_k, diag(s_k^2)): p_sigma = sum_k w_k N(mu_k, s_k^2 + sigma^2) and
    D(x, sigma) = sum_k r_k(x) (s_k^2 x + sigma^2 mu_k) / (s_k^2 + sigma^2),
with responsibilities r_k(x) ∝ w_k N(x; mu_k, s_k^2 + sigma^2)  (cf. NVlabs/edm2 toy_example.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.core.denoisers import bcast


def gaussian_denoiser(mu, s):
    """Exact D for N(mu, diag(s^2)); mu, s broadcast against one example's shape."""
    mu = jnp.asarray(mu, jnp.float32)
    s2 = jnp.asarray(s, jnp.float32) ** 2

    def D(x, sigma, cond=None):
        sg2 = bcast(sigma, x) ** 2
        return (s2 * x + sg2 * mu) / (s2 + sg2)

    return D


def gaussian_posterior_var(s, sigma):
    s2 = jnp.asarray(s, jnp.float32) ** 2
    return s2 * sigma ** 2 / (s2 + sigma ** 2)


def gaussian_ode_solution(x_a, sigma_a, sigma_b, mu, s):
    """Exact probability-flow ODE map from noise level sigma_a to sigma_b for Gaussian data."""
    s2 = jnp.asarray(s, jnp.float32) ** 2
    return mu + (x_a - mu) * jnp.sqrt((s2 + sigma_b ** 2) / (s2 + sigma_a ** 2))


class GaussianMixture:
    """Mixture of axis-aligned Gaussians with exact diffused density, score and denoiser."""

    def __init__(self, means, stds, weights=None):
        self.means = jnp.asarray(means, jnp.float32)          # (K, d)
        k, d = self.means.shape
        stds = jnp.asarray(stds, jnp.float32)
        self.stds = jnp.broadcast_to(stds.reshape((-1, 1)) if stds.ndim == 1 else stds, (k, d))
        w = jnp.ones((k,)) / k if weights is None else jnp.asarray(weights, jnp.float32)
        self.log_w = jnp.log(w / w.sum())

    @property
    def dim(self):
        return self.means.shape[1]

    def _comp_logpdf(self, x, sigma):
        var = self.stds[None] ** 2 + bcast(sigma, x)[..., None] ** 2 * jnp.ones_like(self.stds)[None]
        diff = x[:, None, :] - self.means[None]
        return -0.5 * jnp.sum(diff ** 2 / var + jnp.log(2 * jnp.pi * var), axis=-1), var

    def log_prob(self, x, sigma=0.0):
        """log p_sigma(x) for x (B, d)."""
        lp, _ = self._comp_logpdf(x, sigma)
        return jax.nn.logsumexp(lp + self.log_w[None], axis=-1)

    def denoise(self, x, sigma, cond=None):
        lp, var = self._comp_logpdf(x, sigma)
        r = jax.nn.softmax(lp + self.log_w[None], axis=-1)                 # (B, K)
        s2 = self.stds[None] ** 2
        post = (s2 * x[:, None, :] + (var - s2) * self.means[None]) / var   # (B, K, d)
        return jnp.sum(r[..., None] * post, axis=1)

    def score(self, x, sigma):
        return jax.vmap(jax.grad(lambda xi, si: self.log_prob(xi[None], si)[0]))(
            x, jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (x.shape[0],)))

    def sample(self, key, n):
        kc, kn = jax.random.split(key)
        comp = jax.random.categorical(kc, self.log_w, shape=(n,))
        return self.means[comp] + self.stds[comp] * jax.random.normal(kn, (n, self.dim))
