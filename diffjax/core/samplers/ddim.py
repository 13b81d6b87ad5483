"""DDIM (Song et al. 2021) and DDPM ancestral sampling (Ho et al. 2020) in the EDM frame.

With x = x0 + sigma eps and eps_hat = (x - D(x, sigma)) / sigma, DDIM's update with stochasticity eta
from sigma to sigma' is
    sigma_up   = min(sigma', eta sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2)),
    sigma_down = sqrt(sigma'^2 - sigma_up^2),
    x'         = x0_hat + sigma_down eps_hat + sigma_up z.
Dividing DDIM's VP update by sqrt(alpha_bar') gives exactly this, so eta = 0 is DDIM and eta = 1 is the
DDPM posterior q(x_{t-1} | x_t, x0_hat) with variance beta_tilde (DDPM on the full grid).
"""
from __future__ import annotations

import jax.numpy as jnp

from diffjax.core.samplers.base import Sampler, SamplerState


def ancestral_split(sigma, sigma_next, eta):
    """(sigma_down, sigma_up) of an ancestral step with stochasticity eta."""
    up = eta * jnp.sqrt(jnp.maximum(sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2), 0.0)
                        / sigma ** 2)
    up = jnp.minimum(up, sigma_next)
    down = jnp.sqrt(jnp.maximum(sigma_next ** 2 - up ** 2, 0.0))
    return down, up


def _ddim_step(state: SamplerState, sigma, sigma_next, D, noise, knobs):
    x = state.x
    x0 = D(x, sigma)
    eps = (x - x0) / sigma
    down, up = ancestral_split(sigma, sigma_next, knobs["eta"])
    x_next = x0 + down * eps
    if noise is not None:
        x_next = x_next + up * noise
    return state._replace(x=x_next, nfe=state.nfe + 1, x0=x0)


DDIM = Sampler(name="ddim", step=_ddim_step, needs_noise=True, defaults=(("eta", 0.0),),
               noise_knobs=("eta",))
DDPM = Sampler(name="ddpm", step=_ddim_step, needs_noise=True, defaults=(("eta", 1.0),),
               noise_knobs=("eta",))


def ddim_step_deterministic(x, sigma, sigma_next, D):
    """One DDIM (eta = 0) step: x' = x0_hat + sigma' eps_hat."""
    x0 = D(x, sigma)
    return x0 + sigma_next * (x - x0) / sigma
