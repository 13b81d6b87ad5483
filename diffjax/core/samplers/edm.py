"""EDM Euler and Heun samplers with stochastic churn (Karras et al. 2022, Algorithm 2).

For each step sigma_i -> sigma_{i+1}:
    gamma   = min(S_churn / N, sqrt(2) - 1) if S_tmin <= sigma_i <= S_tmax else 0
    s_hat   = sigma_i (1 + gamma),  x_hat = x + sqrt(s_hat^2 - sigma_i^2) S_noise z
    d       = (x_hat - D(x_hat, s_hat)) / s_hat,  x' = x_hat + (sigma_{i+1} - s_hat) d
    Heun (if sigma_{i+1} > 0): d' = (x' - D(x', sigma_{i+1})) / sigma_{i+1},
                               x' = x_hat + (sigma_{i+1} - s_hat) (d + d') / 2
NFE = 2N - 1 for Heun on a grid ending at 0. PFGM++ (Xu et al. 2023) uses this sampler unchanged with
its own prior (see core/pfgmpp.py).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffjax.core import processes
from diffjax.core.samplers.base import Sampler, SamplerState

_CHURN = (("s_churn", 0.0), ("s_tmin", 0.0), ("s_tmax", float("inf")), ("s_noise", 1.0))


def _churn(x, sigma, noise, knobs):
    n = knobs["num_steps"]
    on = (sigma >= knobs["s_tmin"]) & (sigma <= knobs["s_tmax"])
    gamma = jnp.where(on, jnp.minimum(knobs["s_churn"] / n, jnp.sqrt(2.0) - 1.0), 0.0)
    s_hat = sigma * (1.0 + gamma)
    if noise is not None:
        # sqrt(s_hat^2 - sigma^2) written as sigma sqrt(gamma (2 + gamma)): exactly 0 when gamma = 0
        # (the difference of squares is not, once XLA fuses it).
        x = x + sigma * jnp.sqrt(gamma * (2.0 + gamma)) * knobs["s_noise"] * noise
    return x, s_hat


def _euler_step(state: SamplerState, sigma, sigma_next, D, noise, knobs):
    x_hat, s_hat = _churn(state.x, sigma, noise, knobs)
    x0 = D(x_hat, s_hat)
    d = (x_hat - x0) / s_hat
    return state._replace(x=x_hat + (sigma_next - s_hat) * d, nfe=state.nfe + 1, x0=x0)


def _heun_step(state: SamplerState, sigma, sigma_next, D, noise, knobs):
    x_hat, s_hat = _churn(state.x, sigma, noise, knobs)
    x0 = D(x_hat, s_hat)
    d = (x_hat - x0) / s_hat
    x_e = x_hat + (sigma_next - s_hat) * d

    def correct(_):
        s_safe = jnp.where(sigma_next > 0, sigma_next, 1.0)
        x0_e = D(x_e, s_safe)
        d2 = (x_e - x0_e) / s_safe
        return x_hat + (sigma_next - s_hat) * 0.5 * (d + d2), jnp.int32(2), x0_e

    x_next, calls, x0 = jax.lax.cond(sigma_next > 0, correct,
                                     lambda _: (x_e, jnp.int32(1), x0), None)
    return state._replace(x=x_next, nfe=state.nfe + calls, x0=x0)


EULER = Sampler(name="euler", step=_euler_step, needs_noise=True, defaults=_CHURN,
                noise_knobs=("s_churn",))
HEUN = Sampler(name="heun", step=_heun_step, needs_noise=True, defaults=_CHURN,
               noise_knobs=("s_churn",))
# PFGM++ = EDM Heun with the PFGM++ prior (Xu et al. 2023): ``samplers.sample`` draws x_T from
# ``process.prior`` and requires a processes.PFGMPP process for it.
PFGMPP_HEUN = dataclasses.replace(HEUN, name="pfgmpp", requires_process=processes.PFGMPP)
