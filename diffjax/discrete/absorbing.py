"""The absorbing (masking) forward process with the log-linear schedule, and RADD's factorised
concrete score (Ou et al., ICLR 2025, "Your Absorbing Discrete Diffusion Secretly Models the
Conditional Distributions of Clean Data"; the process is SEDD's, Lou et al. 2024).

Tokens x^i in {0, ..., V-1}; the mask (absorbing) state is the id M = V. Forward: every token is
replaced by M independently, and stays M; by time t in [0, 1] with probability

    m(t) = 1 - exp(-sigma_bar(t)),   sigma_bar(t) = -log(1 - (1 - eps) t)   =>   m(t) = (1 - eps) t,
    sigma(t) = d sigma_bar / dt = (1 - eps) / (1 - (1 - eps) t)                (the rate).

Concrete score (RADD Theorem 1): for a masked position i of x_t and a real token y,

    p_t(x_t with x^i = y) / p_t(x_t) = a(t) p_0(y | x_t^UM),    a(t) = e^{-sigma_bar} / (1 - e^{-sigma_bar})
                                                                    = 1 / expm1(sigma_bar(t)),

a time-dependent scalar times the conditional of clean data given the unmasked tokens x_t^UM.
So the network needs no time input: c_theta(x_t) ~ log p_0(. | x_t^UM), s_theta = a(t) c_theta.
Reverse: a position masked at t is still masked at s < t with probability m(s) / m(t).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LogLinear(NamedTuple):
    """sigma_bar(t) = -log(1 - (1 - eps) t): the masking probability is linear in t."""
    eps: float = 1e-3

    def sigma_bar(self, t):
        return -jnp.log1p(-(1.0 - self.eps) * t)

    def sigma(self, t):
        return (1.0 - self.eps) / (1.0 - (1.0 - self.eps) * t)

    def mask_prob(self, t):
        """m(t) = 1 - exp(-sigma_bar(t)) = (1 - eps) t (computed from sigma_bar, as a check)."""
        return -jnp.expm1(-self.sigma_bar(t))


def time_factor(sigma_bar):
    """a(t) = exp(-sigma_bar) / (1 - exp(-sigma_bar)) = 1 / expm1(sigma_bar)."""
    return 1.0 / jnp.expm1(sigma_bar)


def concrete_log_score(log_cond, sigma_bar):
    """log s_theta(x_t, t)_y = log a(t) + log p_theta(y | x_t^UM); ``log_cond`` (B, L, V),
    ``sigma_bar`` (B,)."""
    return log_cond + jnp.log(time_factor(sigma_bar))[:, None, None]


def mask(key, x0, prob, mask_id: int):
    """Each token of ``x0`` (B, L) replaced by ``mask_id`` independently with probability ``prob``
    (a scalar or one per row, (B,))."""
    prob = jnp.asarray(prob, jnp.float32)
    prob = prob[:, None] if prob.ndim == 1 else prob
    return jnp.where(jax.random.uniform(key, x0.shape) < prob, mask_id, x0)


def mask_exactly(key, x0, k, mask_id: int):
    """Exactly ``k[b]`` uniformly chosen positions of row b of ``x0`` (B, L) masked."""
    rank = jnp.argsort(jnp.argsort(jax.random.uniform(key, x0.shape), axis=1), axis=1)
    return jnp.where(rank < jnp.asarray(k).reshape(-1, 1), mask_id, x0)


def unmask_prob(schedule, t, s):
    """Probability that a position masked at t is unmasked by s < t (the exact reverse
    transition, "Tweedie" tau-leaping): (m(t) - m(s)) / m(t) = (e^{-sb(s)} - e^{-sb(t)}) /
    (1 - e^{-sb(t)})."""
    mt, ms = schedule.mask_prob(t), schedule.mask_prob(s)
    return jnp.clip((mt - ms) / mt, 0.0, 1.0)


def euler_unmask_prob(schedule, t, s):
    """First-order (Euler) probability of leaving the mask in [s, t]: (t - s) sigma(t) a(t),
    the total reverse rate sum_y sigma(t) s_y times dt, clipped to 1. For the log-linear
    schedule it equals (t - s) / t, i.e. the Tweedie probability up to round-off."""
    return jnp.clip((t - s) * schedule.sigma(t) * time_factor(schedule.sigma_bar(t)), 0.0, 1.0)
