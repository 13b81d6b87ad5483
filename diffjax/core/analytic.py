"""Exact denoisers for data with closed-form diffused densities (tests, experiments, toy search).

Gaussian data N(mu, diag(s^2)) in the EDM frame x = x0 + sigma eps:
    D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2),
    Var[x0 | x] = s^2 sigma^2 / (s^2 + sigma^2),
and the probability-flow ODE has the exact solution
    x(sigma) = mu + (x(sigma_a) - mu) sqrt((s^2 + sigma^2) / (s^2 + sigma_a^2)).
Gaussian mixtures sum_k w_k N(mu_k, S_k) stay mixtures under x = x0 + sigma eps:
    p_sigma(x) = sum_k w_k N(x; mu_k, S_k + sigma^2 I),
    D(x, sigma) = E[x0 | x] = sum_k r_k(x) [mu_k + S_k (S_k + sigma^2 I)^-1 (x - mu_k)],
with responsibilities r_k(x) = w_k N(x; mu_k, S_k + sigma^2 I) / p_sigma(x) (Bishop 2006, Eqs.
2.116-2.117); this equals Tweedie's x + sigma^2 grad log p_sigma(x) (cf. NVlabs/edm2 toy_example.py).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

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


class GaussianMixture(NamedTuple):
    """Mixture of K full-covariance Gaussians in R^d: weights (K,), means (K,d), covs (K,d,d)."""
    weights: jax.Array
    means: jax.Array
    covs: jax.Array

    def sample_with_components(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        """Draw ``n`` points and the index of the component each came from."""
        return _sample(self, key, n)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """Draw ``n`` points, shape (n, d)."""
        return self.sample_with_components(key, n)[0]

    def mean(self) -> jax.Array:
        """Mixture mean sum_k w_k mu_k."""
        return self.weights @ self.means

    def cov(self) -> jax.Array:
        """Mixture covariance sum_k w_k (S_k + mu_k mu_k^T) - m m^T."""
        m = self.mean()
        second = jnp.einsum("k,kij->ij", self.weights,
                            self.covs + jnp.einsum("ki,kj->kij", self.means, self.means))
        return second - jnp.outer(m, m)

    def log_prob(self, x: jax.Array, sigma: jax.Array | float = 0.0) -> jax.Array:
        """log p_sigma(x) for x of shape (..., d); sigma = 0 gives the data density."""
        return _evaluate(self, *_f32(x, sigma), 0)

    def denoise(self, x: jax.Array, sigma: jax.Array | float, cond=None) -> jax.Array:
        """Exact posterior mean E[x0 | x0 + sigma eps = x], shape (..., d): the denoiser contract."""
        return _evaluate(self, *_f32(x, sigma), 2)

    def score(self, x: jax.Array, sigma: jax.Array | float = 0.0) -> jax.Array:
        """grad_x log p_sigma(x) = -sum_k r_k(x) (S_k + sigma^2 I)^-1 (x - mu_k), shape (..., d)."""
        return _evaluate(self, *_f32(x, sigma), 1)


def _diffused(gm: GaussianMixture, x: jax.Array, sigma: jax.Array):
    """(log p_sigma(x), grad log p_sigma(x), E[x0|x]) for one point x (d,) and scalar sigma."""
    d = x.shape[-1]
    cov_s = gm.covs + sigma**2 * jnp.eye(d)  # (K, d, d)
    chol = jnp.linalg.cholesky(cov_s)
    diff = x - gm.means  # (K, d)
    white = jax.scipy.linalg.solve_triangular(chol, diff[..., None], lower=True)[..., 0]
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    log_norm = jnp.sum(white**2, -1) + log_det + d * math.log(2 * math.pi)
    log_comp = jnp.log(gm.weights) - 0.5 * log_norm
    log_p = jax.nn.logsumexp(log_comp)
    resp = jnp.exp(log_comp - log_p)  # r_k(x)
    # (S_k + sigma^2 I)^-1 (x - mu_k)
    solved = jax.scipy.linalg.cho_solve((chol, True), diff[..., None])[..., 0]
    post_means = gm.means + jnp.einsum("kij,kj->ki", gm.covs, solved)
    return log_p, -(resp @ solved), resp @ post_means


def _f32(*arrays) -> list[jax.Array]:
    """Strongly typed float32 arrays, so Python floats and float32 scalars share one compile."""
    return [jnp.asarray(a, jnp.float32) for a in arrays]


@functools.partial(jax.jit, static_argnames="which")
def _evaluate(gm: GaussianMixture, x: jax.Array, sigma, which: int) -> jax.Array:
    """Output ``which`` of ``_diffused`` over the leading dims of x, sigma broadcast to them."""
    batch = x.shape[:-1]
    sig = jnp.broadcast_to(sigma, batch).reshape(-1)
    out = jax.vmap(lambda xi, si: _diffused(gm, xi, si)[which])(x.reshape(-1, x.shape[-1]), sig)
    return out.reshape(batch + out.shape[1:])


@functools.partial(jax.jit, static_argnames="n")
def _sample(gm: GaussianMixture, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    k_comp, k_eps = jax.random.split(key)
    comp = jax.random.categorical(k_comp, jnp.log(gm.weights), shape=(n,))
    eps = jax.random.normal(k_eps, (n, gm.means.shape[-1]))
    chol = jnp.linalg.cholesky(gm.covs)[comp]
    return gm.means[comp] + jnp.einsum("nij,nj->ni", chol, eps), comp.astype(jnp.int32)


def isotropic_mixture(means, std: float, weights=None) -> GaussianMixture:
    """Mixture of N(mu_k, std^2 I), equal weights unless given."""
    means = jnp.asarray(means, jnp.float32)
    k, d = means.shape
    weights = jnp.full((k,), 1.0 / k) if weights is None else jnp.asarray(weights, jnp.float32)
    covs = jnp.broadcast_to(std**2 * jnp.eye(d), (k, d, d))
    return GaussianMixture(weights=weights, means=means, covs=covs)




def diagonal_mixture(means, stds, weights=None) -> GaussianMixture:
    """Mixture of N(mu_k, diag(std_k^2)); ``stds`` is (K,) (isotropic per component) or (K, d)."""
    means = jnp.asarray(means, jnp.float32)
    k, d = means.shape
    stds = jnp.asarray(stds, jnp.float32)
    stds = jnp.broadcast_to(stds[:, None] if stds.ndim == 1 else stds, (k, d))
    weights = jnp.full((k,), 1.0 / k) if weights is None else jnp.asarray(weights, jnp.float32)
    return GaussianMixture(weights=weights / weights.sum(), means=means,
                           covs=jax.vmap(jnp.diag)(stds ** 2))
