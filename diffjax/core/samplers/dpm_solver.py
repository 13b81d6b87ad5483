"""DPM-Solver++ multistep, data-prediction form (Lu et al. 2022, "DPM-Solver++"), orders 1-3.

In the EDM frame (alpha = 1, lambda = -log sigma), for a step s -> t with h = lambda_t - lambda_s,
phi1 = expm1(-h) = sigma_t/sigma_s - 1 and x0 predictions m0 (at s), m1, m2 (earlier steps):
    1st: x_t = (sigma_t/sigma_s) x_s - phi1 m0                           (= DDIM)
    2M : r0 = h_0/h, D1 = (m0 - m1)/r0, x_t = 1st - phi1 D1 / 2
    3M : D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1,
         D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1),  D2 = (D1_0 - D1_1)/(r0 + r1),
         phi2 = phi1/h + 1, phi3 = phi2/h - 1/2,  x_t = 1st + phi2 D1 - phi3 D2
The first order-1 steps use lower orders; with fewer than 10 steps the last steps lower their order
(``lower_order_final``); a step to sigma = 0 is first order (it returns x0_hat: "denoise to zero").
One network evaluation per step.
"""
from __future__ import annotations

import jax.numpy as jnp

from diffjax.core.samplers.base import Sampler, SamplerState, push


def step_order(i, num_steps, order, sigma_next, lower_order_final_below=10):
    """Order used at step i: warm-up, lower_order_final and first order into sigma = 0."""
    o = jnp.minimum(order, i + 1)
    if num_steps < lower_order_final_below:
        o = jnp.minimum(o, num_steps - i)
    return jnp.where(sigma_next > 0, o, 1)


def dpmpp_update(x, sigma, sigma_next, m0, hist, sig_hist, order):
    """The multistep update given the current prediction m0 and history (newest first)."""
    pos = sigma_next > 0
    ratio = sigma_next / sigma
    first = ratio * x + (1.0 - ratio) * m0
    h = jnp.where(pos, jnp.log(sigma / jnp.where(pos, sigma_next, 1.0)), 1.0)
    phi1 = ratio - 1.0
    m1, s1 = hist[0], sig_hist[0]
    r0 = jnp.log(s1 / sigma) / h
    r0 = jnp.where(order >= 2, r0, 1.0)
    d1_0 = (m0 - m1) / r0
    second = first - 0.5 * phi1 * d1_0
    if hist.shape[0] < 2:
        return jnp.where(order >= 2, second, first)
    m2, s2 = hist[1], sig_hist[1]
    r1 = jnp.where(order >= 3, jnp.log(s2 / s1) / h, 1.0)
    d1_1 = (m1 - m2) / r1
    D1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    D2 = (d1_0 - d1_1) / (r0 + r1)
    phi2 = phi1 / h + 1.0
    phi3 = phi2 / h - 0.5
    third = first + phi2 * D1 - phi3 * D2
    return jnp.where(order >= 3, third, jnp.where(order >= 2, second, first))


def _make(order):
    def step(state: SamplerState, sigma, sigma_next, D, noise, knobs):
        m0 = D(state.x, sigma)
        o = step_order(state.i, knobs["num_steps"], order, sigma_next)
        x_next = dpmpp_update(state.x, sigma, sigma_next, m0, state.x0_hist, state.sigma_hist, o)
        h, s = push(state, m0, sigma)
        return state._replace(x=x_next, nfe=state.nfe + 1, x0_hist=h, sigma_hist=s)

    return step


DPMPP_2M = Sampler(name="dpmpp_2m", step=_make(2), history=1)
DPMPP_3M = Sampler(name="dpmpp_3m", step=_make(3), history=2)
