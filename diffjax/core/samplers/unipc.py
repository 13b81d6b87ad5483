"""UniPC multistep predictor-corrector, data prediction, B(h) = expm1(-h) ("bh2")
(Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling").

EDM frame, lambda = -log sigma. For a step s0 -> t with h = lambda_t - lambda_s0, hh = -h,
r_k = (lambda_{s_k} - lambda_{s0}) / h for earlier points s_k, D_k = (m_k - m0) / r_k, and
    phi_1 = expm1(hh),  g_1 = phi_1/hh - 1,  g_{i+1} = g_i/hh - 1/(i+1)!,
    R[i, k] = r_k^(i-1),  b_i = g_i i! / B(h)    (i = 1..p, with r_p = 1)
    base = (sigma_t/sigma_s0) x_s0 - phi_1 m0
UniP-p (predictor): x_t = base - B(h) sum_k rho^p_k D_k, rho^p = R[:-1,:-1]^{-1} b[:-1] (1/2 for p=2)
UniC-p (corrector): x_t^c = base - B(h) (sum_k rho^c_k D_k + rho^c_p (m_t - m0)), rho^c = R^{-1} b
The corrector reuses m_t = D(x_t, t), the evaluation the next predictor needs, so NFE = steps; the
corrector of step i uses the order of predictor i - 1 (UniC-p after UniP-p, as in the official
``multistep_uni_pc_bh_update`` and diffusers' ``this_order``).

Order schedule: the same rule as DPM-Solver++ (``dpm_solver.step_order``): on a grid ending at
sigma = 0 the step into 0 is first order (it returns x0_hat = D(x, sigma_min); the corrector applied
at sigma_min just before it does not change that output) and the S = N - 1 steps before it are the
solver steps. ``lower_order_final`` (knob, default on) caps the k-th last solver step at order k at
every step count, as the official UniPC (wl-zhao/UniPC ``UniPC.sample``: ``if lower_order_final:
step_order = min(order, steps + 1 - step)``, no step-count condition) and diffusers'
UniPCMultistepScheduler (``min(solver_order, len(timesteps) - step_index)``) do. diffusers counts the
step into sigma = 0 as the last one (final_sigmas_type="zero"), so on such a grid it lowers one
step later than the official code and this module: UniPC-2 never lowers the step into sigma_min,
UniPC-3 caps it at 2 (diffusers = this module with ``lower_order_final=False`` for UniPC-2).
"""
from __future__ import annotations

import math

import jax.numpy as jnp

from diffjax.core.samplers.base import Sampler, SamplerState, push
from diffjax.core.samplers.dpm_solver import step_order

LOWER_ORDER_FINAL_BELOW = math.inf   # official UniPC and diffusers: at every step count


def _coeffs(rks, hh):
    """R matrix and b vector for ratios rks (last entry 1) and hh = -h."""
    p = len(rks)
    B_h = jnp.expm1(hh)
    g = jnp.expm1(hh) / hh - 1.0
    rows, b = [], []
    fact = 1
    for i in range(1, p + 1):
        rows.append(jnp.stack([r ** (i - 1) for r in rks]))
        b.append(g * fact / B_h)
        fact *= i + 1
        g = g / hh - 1.0 / fact
    return jnp.stack(rows), jnp.stack(b), B_h


def _update(x_s0, s0, t, m0, older, older_sig, p, model_t=None):
    """UniP-p (model_t None) or UniC-p update from (x_s0, m0 at s0) to noise level t."""
    pos = t > 0
    h = jnp.where(pos, jnp.log(s0 / jnp.where(pos, t, 1.0)), 1.0)
    hh = -h
    base = (t / s0) * x_s0 + (1.0 - t / s0) * m0
    rks = [jnp.log(s0 / sk) / h for sk in older_sig[: p - 1]]
    Ds = [(mk - m0) / rk for mk, rk in zip(older[: p - 1], rks)]
    R, b, B_h = _coeffs(rks + [jnp.ones((), h.dtype)], hh)
    if model_t is None:
        if p == 1:
            return base
        rho = jnp.array([0.5], b.dtype) if p == 2 else jnp.linalg.solve(R[:-1, :-1], b[:-1])
        return base - B_h * sum(rho[k] * Ds[k] for k in range(p - 1))
    rho = jnp.array([0.5], b.dtype) if p == 1 else jnp.linalg.solve(R, b)
    res = sum((rho[k] * Ds[k] for k in range(p - 1)), jnp.zeros_like(m0))
    return base - B_h * (res + rho[-1] * (model_t - m0))


def _select(order_val, candidates):
    out = candidates[0]
    for p, c in enumerate(candidates[1:], start=2):
        out = jnp.where(order_val >= p, c, out)
    return out


def _make(order):
    def step(state: SamplerState, sigma, sigma_next, D, noise, knobs):
        x_prev, prev_order = state.aux
        m = D(state.x, sigma)
        # UniC: correct x (reached from x_prev at sigma_hist[0]) with the fresh evaluation m.
        hist, sig = state.x0_hist, state.sigma_hist
        corr = [_update(x_prev, sig[0], sigma, hist[0], hist[1:], sig[1:], p, model_t=m)
                for p in range(1, order + 1)]
        x = jnp.where(state.i > 0, _select(prev_order, corr), state.x)
        hist, sig = push(state, m, sigma)
        o = step_order(state.i, knobs["solver_steps"], order, sigma_next, knobs["lower_order_final"],
                       below=LOWER_ORDER_FINAL_BELOW)
        pred = [_update(x, sigma, sigma_next, hist[0], hist[1:], sig[1:], p)
                for p in range(1, order + 1)]
        x_next = _select(o, pred)
        return state._replace(x=x_next, nfe=state.nfe + 1, x0_hist=hist, sigma_hist=sig,
                              aux=(x, o), x0=m)

    return step


def _init_aux(x, dtype):
    return (x, jnp.int32(1))


_KNOBS = (("lower_order_final", 1.0),)
UNIPC = Sampler(name="unipc", step=_make(2), history=2, init_aux=_init_aux, defaults=_KNOBS)
UNIPC_3 = Sampler(name="unipc_3", step=_make(3), history=3, init_aux=_init_aux, defaults=_KNOBS)
