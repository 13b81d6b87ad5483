"""Toy distributions in R^d with exact densities, scores and denoisers (pure jnp, jit-friendly).

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

    def denoise(self, x: jax.Array, sigma: jax.Array | float) -> jax.Array:
        """Exact posterior mean E[x0 | x0 + sigma eps = x], shape (..., d)."""
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
