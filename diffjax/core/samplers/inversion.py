"""Deterministic DDIM / probability-flow inversion x0 -> x_T (Song et al. 2021, Sec. 4.3; the fixed-point
refinement makes it the exact inverse of the DDIM sampler, cf. Pan et al. 2023 "Effective real image
editing with accelerated iterative diffusion inversion").

A DDIM step from sigma_b down to sigma_a is
    x_a = (sigma_a/sigma_b) x_b + (1 - sigma_a/sigma_b) D(x_b, sigma_b).
Inversion solves it for x_b: start from the explicit guess x_b = D(x_a, sigma_a) + sigma_b eps_hat(x_a)
and iterate x_b <- (sigma_b/sigma_a) (x_a - (1 - sigma_a/sigma_b) D(x_b, sigma_b)).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.core.samplers.base import float_dtype


def ddim_invert(denoiser, x, sigmas_up, *, cond=None, fixed_point_iters: int = 0, dtype=None):
    """Map x (taken to be at noise level sigmas_up[0] > 0) up the increasing grid ``sigmas_up``.

    Returns (x_T, nfe). Sampling back with DDIM (eta = 0) on the reversed grid returns x; with
    ``fixed_point_iters`` > 0 each step is solved implicitly, so the round trip is exact up to the
    fixed-point tolerance. The grid is cast to ``dtype`` (default: x's, at least float32).
    """
    try:
        a = np.asarray(sigmas_up)
        if a.ndim != 1 or a.shape[0] < 2:
            raise ValueError("sigmas_up must be 1-D with at least 2 entries (one step)")
        if a[0] <= 0:
            raise ValueError("inversion starts at a positive noise level: sigmas_up[0] must be > 0")
        if np.any(np.diff(a) <= 0):
            raise ValueError("sigmas_up must be strictly increasing for inversion")
    except (TypeError, jax.errors.TracerArrayConversionError):
        pass
    x = jnp.asarray(x)
    sigmas_up = jnp.asarray(sigmas_up, float_dtype(x.dtype, dtype))
    D = lambda y, s: denoiser(y, s, cond)

    def step(x_a, s):
        s_a, s_b = s
        x0 = D(x_a, s_a)
        x_b = x0 + s_b * (x_a - x0) / s_a

        def refine(_, xb):
            return (s_b / s_a) * (x_a - (1.0 - s_a / s_b) * D(xb, s_b))

        x_b = jax.lax.fori_loop(0, fixed_point_iters, refine, x_b)
        return x_b, None

    x_T, _ = jax.lax.scan(step, x, (sigmas_up[:-1], sigmas_up[1:]))
    nfe = (sigmas_up.shape[0] - 1) * (1 + fixed_point_iters)
    return x_T, nfe
