"""Flow-matching samplers on the linear path x_t = (1 - t) x0 + t eps (rectified flow; Liu et al.
2022, Lipman et al. 2023), integrated in the flow's own time t.

The velocity is u(x_t, t) = eps_hat - x0_hat = (x_t - x0_hat) / t, with x0_hat = D(x_t/(1-t),
t/(1-t)). Grids arrive in the EDM frame: t = sigma / (1 + sigma), x_t = (1 - t) x.
    Euler   : x_{t'} = x_t + (t' - t) u(x_t, t)            (identical to DDIM: see tests)
    midpoint: x_m = x_t + (t_m - t) u(x_t, t), t_m = (t + t')/2;  x_{t'} = x_t + (t' - t) u(x_m, t_m)
"""
from __future__ import annotations

from diffjax.core.samplers.base import Sampler, SamplerState


def _t(sigma):
    return sigma / (1.0 + sigma)


def _velocity(D, x_t, t):
    x0 = D(x_t / (1.0 - t), t / (1.0 - t))
    return (x_t - x0) / t, x0


def _euler(state: SamplerState, sigma, sigma_next, D, noise, knobs):
    t, tn = _t(sigma), _t(sigma_next)
    x_t = (1.0 - t) * state.x
    u, x0 = _velocity(D, x_t, t)
    x_n = x_t + (tn - t) * u
    return state._replace(x=x_n / (1.0 - tn), nfe=state.nfe + 1, x0=x0)


def _midpoint(state: SamplerState, sigma, sigma_next, D, noise, knobs):
    t, tn = _t(sigma), _t(sigma_next)
    tm = 0.5 * (t + tn)
    x_t = (1.0 - t) * state.x
    x_m = x_t + (tm - t) * _velocity(D, x_t, t)[0]
    u, x0 = _velocity(D, x_m, tm)
    x_n = x_t + (tn - t) * u
    return state._replace(x=x_n / (1.0 - tn), nfe=state.nfe + 2, x0=x0)


FLOW_EULER = Sampler(name="flow_euler", step=_euler)
FLOW_MIDPOINT = Sampler(name="flow_midpoint", step=_midpoint)
