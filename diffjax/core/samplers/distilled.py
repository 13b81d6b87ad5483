"""Samplers of distilled few-step students, in the EDM frame (x = x0 + sigma eps).

Consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1): a consistency function
f maps any point of an ODE trajectory to its start, so each step denoises to data and re-noises to
the next level of the grid:
    x0 = f(x_i, sigma_i),   x_{i+1} = x0 + sqrt(sigma_{i+1}^2 - sigma_min^2) z   (x0 when sigma_{i+1} = 0)
``sigma_min`` (knob, default 0.002, the consistency boundary) makes the re-noised point sit at
sigma_{i+1} on the model's boundary-shifted scale; one step on the grid (sigma_max, 0) is the
one-step sample f(x_T, sigma_max).

Stochastic distilled sampling (Meng et al. 2023, "On Distillation of Guided Diffusion Models",
the N-step stochastic sampler): each step takes one deterministic DDIM step of twice the step
length, to sigma_{i+2}, and re-noises forward to sigma_{i+1} with the forward kernel of the EDM
frame, x_{i+1} = x' + sqrt(sigma_{i+1}^2 - sigma_{i+2}^2) z; the last step is deterministic (it lands
on x0_hat). The description comes from the paper's text as recalled in the research card
(algorithms-verified.md section 4: unverified against the paper's Algorithm); eta = 0 turns the
re-noising off and leaves plain DDIM with 2x steps clipped at the grid's end.
"""
from __future__ import annotations

import jax.numpy as jnp

from diffjax.core.samplers.base import Sampler, SamplerState


def _consistency_step(state: SamplerState, sigma, sigma_next, D, noise, knobs):
    x0 = D(state.x, sigma)
    s_min = jnp.minimum(knobs["sigma_min"], sigma_next)
    x_next = x0
    if noise is not None:
        x_next = x0 + jnp.sqrt(jnp.maximum(sigma_next ** 2 - s_min ** 2, 0.0)) * noise
    return state._replace(x=jnp.where(sigma_next > 0, x_next, x0), nfe=state.nfe + 1, x0=x0)


def _renoise_step(state: SamplerState, sigma, sigma_next, D, noise, knobs):
    grid = knobs["grid"]
    n = knobs["num_steps"]
    low = grid[jnp.minimum(state.i + 2, n)]          # two steps down (0 past the grid's end)
    last = state.i + 1 >= n
    low = jnp.where(last, sigma_next, low)
    x0 = D(state.x, sigma)
    x_low = x0 + low * (state.x - x0) / sigma        # deterministic DDIM to sigma_{i+2}
    x_next = x_low
    if noise is not None:
        up = knobs["eta"] * jnp.sqrt(jnp.maximum(sigma_next ** 2 - low ** 2, 0.0))
        x_next = x_low + up * noise
    return state._replace(x=x_next, nfe=state.nfe + 1, x0=x0)


CONSISTENCY = Sampler(name="consistency", step=_consistency_step, needs_noise=True,
                      defaults=(("sigma_min", 0.002),))
DDIM_RENOISE = Sampler(name="ddim_renoise", step=_renoise_step, needs_noise=True,
                       defaults=(("eta", 1.0),), noise_knobs=("eta",))
