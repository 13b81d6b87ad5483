"""The distillation targets and weightings, as pure functions in the EDM frame (x = x0 + sigma eps).

DDIM step (Song et al. 2021; eta = 0) from sigma_t to sigma_s with the denoiser's x0_hat:
    x_s = x0_hat + (sigma_s / sigma_t) (x_t - x0_hat)
Progressive distillation target (Salimans & Ho 2022, Sec. 3 and Algorithm 2): the x0 that makes ONE
student DDIM step from x_t land where TWO teacher DDIM steps (sigma_t -> sigma_m -> sigma_s) land,
x_s^teacher. With r = sigma_s / sigma_t, x0 + r (x_t - x0) = x_s^teacher gives
    x0_target = (x_s^teacher - r x_t) / (1 - r)            (r < 1)
and on the step into sigma_s = 0 (r = 0) the teacher's own second x0_hat. This is their
x_tgt = (z_s - (sigma_s/sigma_t) z_t) / (alpha_s - (sigma_s/sigma_t) alpha_t) with alpha = 1: the EDM
frame is the VP frame divided by alpha, so the identity is the same.
The loss weight of an x0 error is core/losses.py's ``weight`` (their default, 'truncated_snr':
max(SNR, 1) |x0_hat - x0|^2 = max(|x0_hat - x0|^2, |eps_hat - eps|^2), SNR = 1 / sigma^2 here).
Classifier-free combination (Ho & Salimans 2022), in this library's scale convention (1 = the
conditional model): x0^w = x0_null + w (x0_cond - x0_null); Meng et al.'s w' is w - 1.
"""
from __future__ import annotations

import jax.numpy as jnp

from diffjax.core.denoisers import bcast

def ddim_step(x, x0_hat, sigma, sigma_next):
    """One deterministic DDIM step of the EDM frame (sigma_next may be 0)."""
    return x0_hat + bcast(sigma_next / sigma, x) * (x - x0_hat)


def two_step_target(x_t, x_s, sigma_t, sigma_s, x0_last):
    """The x0 target whose single DDIM step sigma_t -> sigma_s from x_t gives x_s (module doc);
    ``x0_last`` (the teacher's second x0_hat) where sigma_s = 0."""
    r = bcast(sigma_s / sigma_t, x_t)
    safe = jnp.where(r < 1, 1.0 - r, 1.0)
    return jnp.where(bcast(sigma_s, x_t) > 0, (x_s - r * x_t) / safe, x0_last)


def per_example_mse(a, b):
    """(B,) mean over each example of (a - b)^2."""
    return jnp.mean(jnp.square(a - b).reshape(a.shape[0], -1), axis=1)


def loss_weight(sigma, process, kind: str = "truncated_snr", sigma_data: float = 0.5):
    """(B,) core.losses.weight(kind) at EDM-frame noise levels sigma (B,)."""
    from diffjax.core import losses

    return losses.weight(kind, process, process.t_from_sigma_tilde(sigma), parameterization="x0",
                         sigma_data=sigma_data)


def cfg_combination(x0_cond, x0_null, w):
    """x0_null + w (x0_cond - x0_null), w per example (B,) or scalar."""
    return x0_null + bcast(w, x0_cond) * (x0_cond - x0_null)
