"""Exact answers for 1-D Gaussian data x0 ~ N(mu, s^2) in the EDM frame (x = x0 + sigma eps): the
denoiser, the probability-flow map between noise levels, and a preconditioned per-level affine
student (every map between two levels of this process is affine, so the student can be exact)."""
import jax.numpy as jnp

MU, S = 0.3, 0.5


def denoiser(x, sigma, mu=MU, s=S):
    """E[x0 | x] = mu + s^2 / (s^2 + sigma^2) (x - mu)."""
    sigma = jnp.reshape(sigma, jnp.shape(sigma) + (1,) * (jnp.ndim(x) - jnp.ndim(sigma)))
    return mu + s ** 2 / (s ** 2 + sigma ** 2) * (x - mu)


def flow_slope(sigma_from, sigma_to, s=S):
    """The probability-flow ODE from sigma_from to sigma_to: x' - mu = slope (x - mu)."""
    return ((s ** 2 + sigma_to ** 2) / (s ** 2 + sigma_from ** 2)) ** 0.5


def affine_student(params, level_index, x, sigma, sd=0.5):
    """x0_hat = c_skip x + c_out (p[k] c_in x + q[k]) with EDM's scalings and the level k of sigma
    (``level_index(sigma)``): O(1) parameters for every level, any affine map representable."""
    k = level_index(sigma)
    sig = jnp.reshape(sigma, sigma.shape + (1,) * (x.ndim - 1))
    c_skip = sd ** 2 / (sig ** 2 + sd ** 2)
    c_out = sig * sd / jnp.sqrt(sig ** 2 + sd ** 2)
    c_in = 1.0 / jnp.sqrt(sig ** 2 + sd ** 2)
    p, q = params["p"][k], params["q"][k]
    p, q = (jnp.reshape(v, v.shape + (1,) * (x.ndim - 1)) for v in (p, q))
    return c_skip * x + c_out * (p * c_in * x + q)
