"""PFGM++ perturbation kernel and prior (Xu et al. 2023, "PFGM++: Unlocking the Potential of
Physics-Inspired Generative Models").

Data y in R^N is embedded in R^{N+D}; the kernel p_r(x | y) ∝ (||x - y||^2 + r^2)^{-(N+D)/2} is
isotropic, so n = x - y = R u with u uniform on the unit sphere and
    R^2 / r^2 ~ BetaPrime(N/2, D/2)  (= G1 / G2, G1 ~ Gamma(N/2), G2 ~ Gamma(D/2)),
with the alignment r = sigma sqrt(D). E||n||^2 = sigma^2 N D / (D - 2) -> sigma^2 N as D -> inf,
where the kernel becomes N(0, sigma^2 I) (EDM).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def radius(key: jax.Array, batch: int, n_dim: int, sigma, D: float, dtype=None) -> jax.Array:
    """Sample R for each of ``batch`` examples at (per-example or scalar) noise level sigma.

    ``dtype`` None: sigma in float32, draws in JAX's default float (the training kernel's dtypes)."""
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32 if dtype is None else dtype), (batch,))
    fdt = {} if dtype is None else {"dtype": dtype}
    if math.isinf(D):
        k = jax.random.chisquare(key, n_dim, (batch,), **fdt)
        return sigma * jnp.sqrt(k)
    k1, k2 = jax.random.split(key)
    g1 = jax.random.gamma(k1, n_dim / 2.0, (batch,), **fdt)
    g2 = jax.random.gamma(k2, D / 2.0, (batch,), **fdt)
    r = sigma * math.sqrt(D)
    return r * jnp.sqrt(g1 / g2)


def perturbation(key: jax.Array, shape, sigma, D: float, dtype=None) -> jax.Array:
    """Draw n = R u with shape ``shape`` (batch first); D = inf gives sigma * N(0, I).

    ``dtype`` None: sigma in float32, draws in JAX's default float (as the training kernel uses)."""
    fdt = {} if dtype is None else {"dtype": dtype}
    batch = shape[0]
    n_dim = int(math.prod(shape[1:]))
    if math.isinf(D):
        s = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32 if dtype is None else dtype), (batch,))
        return jax.random.normal(key, shape, **fdt) * s.reshape((batch,) + (1,) * (len(shape) - 1))
    ku, kr = jax.random.split(key)
    g = jax.random.normal(ku, (batch, n_dim), **fdt)
    u = g / jnp.linalg.norm(g, axis=1, keepdims=True)
    R = radius(kr, batch, n_dim, sigma, D, dtype)
    return (R[:, None] * u).reshape(shape)
