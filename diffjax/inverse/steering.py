"""Measurement-guided denoisers for inverse problems: transforms D -> D' of the denoiser contract
D(x, sigma, cond) -> x0_hat (EDM frame x = x0 + sigma eps, score (D - x) / sigma^2), with the
measurement y in ``cond['measurement']`` (the rest of ``cond``, e.g. a label, goes to D). D' runs
under any sampler (``samplers.sample`` / ``samplers.stepper``) inside the compiled loop; every
strength is a traced value (a new value never recompiles) and its neutral value 0 gives D.

Steered diffusion (Nair et al., ICCV 2023, arXiv:2310.00224, "Steered Diffusion: a generalized
framework for plug-and-play conditional image synthesis"), ``steer``: correct the clean estimate.
    linear task with a projection:  D'(x) = D + w (project(D(x), y) - D(x))      (w = 1: the paper's)
    any differentiable A:           D'(x) = D - kappa sigma grad_x ||y - A(D(x))||^2
The gradient form is the paper's x0' = x0 - kappa_t grad_{x_t} l with kappa_t = sqrt(1 - abar_next):
in the EDM frame (x = x_t / sqrt(abar), sigma^2 = (1 - abar) / abar) kappa_t grad_{x_t} =
sigma_next grad_x, taken at the current sigma here; kappa multiplies it (the paper's loss weight).
The corrected x0' enters the sampler's own update (the paper: DDIM eta = 1; any sampler here).

DPS (Chung et al., ICLR 2023, arXiv:2209.14687, "Diffusion posterior sampling for general noisy
inverse problems"), ``dps``: the posterior score grad log p(x | y) = grad log p(x) + grad log p(y | x)
with p(y | x) ~ p(y | x0 = D(x)) (Eq. 16). Tweedie for the posterior, D_y = x + sigma^2 grad log
p_sigma(x | y), makes it a shift of D:
    normalize=False:  D'(x) = D(x) - zeta sigma^2 grad_x ||y - A(D(x))||^2
                      (zeta = 1 / (2 sigma_y^2): the Gaussian likelihood of noise std sigma_y)
    normalize=True:   D'(x) = D(x) - zeta sigma^2 grad_x ||y - A(D(x))||
                      (the paper's step size zeta_i = zeta' / ||y - A(x0_hat)||, Alg. 1 - 2:
                      grad ||r||^2 / ||r|| = 2 grad ||r||, the official code's norm gradient)
norms per example. Scale convention: DPS adds -zeta grad_{x_t} ||r|| to the sample after each of
its 1000 DDPM steps, so its zeta depends on the step count; here zeta weights a score term, so
the same zeta means the same guided ODE/SDE at any number of steps, and its values are not DPS's.
sigma^2 grad_x = sigma^2 J_D^T grad_x0 stays O(sigma_data^2) at every sigma (J_D ~ s^2 / sigma^2).
Known bias: on Gaussian data the exact posterior needs Var[A x0 | x] + sigma_y^2 in the
likelihood; DPS drops Var[x0 | x], which overweights y at high sigma (tests/inverse).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.core.denoisers import bcast
from diffjax.inverse.operators import Operator

KEY = "measurement"


def split_cond(cond, key: str = KEY):
    """(y, the condition without it: None if nothing else is left)."""
    if not isinstance(cond, dict) or key not in cond:
        raise ValueError(f"a measurement-guided denoiser needs cond[{key!r}] = y (the measurement, "
                         f"batched like x); got cond {None if cond is None else sorted(cond)}")
    rest = {k: v for k, v in cond.items() if k != key}
    return cond[key], (rest or None)


def residual_norms(op: Operator, x0, y, squared: bool = False):
    """||y - A(x0)|| (or its square) per example, shape (B,)."""
    r = (y - op.forward(x0)).reshape(x0.shape[0], -1)
    n2 = jnp.sum(r * r, axis=1)
    return n2 if squared else jnp.sqrt(n2 + 1e-12)


def _grad_through_D(D, op, x, sigma, cond, y, squared):
    """(D(x), grad_x sum_b loss_b) with loss ||y - A(D(x))|| or its square, through the denoiser."""
    op.check(x.shape, y.shape)

    def loss(z):
        d = D(z, sigma, cond)
        return jnp.sum(residual_norms(op, d, y, squared)), d

    g, d = jax.grad(loss, has_aux=True)(x)
    return d, g


def steer(D: Callable, op: Operator, strength=1.0, key: str = KEY) -> Callable:
    """Steered diffusion (module docstring): the projection form if ``op.project`` exists (strength
    w), else the gradient form (strength kappa). Strength 0: D itself."""
    if op.project is None:
        return steer_grad(D, op, strength, key)

    def steered(x, sigma, cond):
        y, rest = split_cond(cond, key)
        op.check(x.shape, y.shape)
        d = D(x, sigma, rest)
        w = jnp.asarray(strength, d.dtype)
        return d + w * (op.project(d, y) - d)

    return steered


def steer_grad(D: Callable, op: Operator, kappa, key: str = KEY) -> Callable:
    """Steered diffusion's gradient form D - kappa sigma grad_x ||y - A(D(x))||^2 (any A)."""

    def steered(x, sigma, cond):
        y, rest = split_cond(cond, key)
        d, g = _grad_through_D(D, op, x, sigma, rest, y, squared=True)
        return d - jnp.asarray(kappa, d.dtype) * bcast(sigma, x).astype(d.dtype) * g

    return steered


def dps(D: Callable, op: Operator, zeta, normalize: bool = True, key: str = KEY) -> Callable:
    """Diffusion posterior sampling in the denoiser frame (module docstring); zeta 0: D itself."""

    def guided(x, sigma, cond):
        y, rest = split_cond(cond, key)
        d, g = _grad_through_D(D, op, x, sigma, rest, y, squared=not normalize)
        return d - jnp.asarray(zeta, d.dtype) * (bcast(sigma, x) ** 2).astype(d.dtype) * g

    return guided


# method -> (transform(D, op, strength), the default strength, its neutral value)
METHODS = {"steer": (steer, 1.0, 0.0), "steer_grad": (steer_grad, 1.0, 0.0),
           "dps": (dps, 20.0, 0.0)}


def transform(method: str, D: Callable, op: Operator, strength) -> Callable:
    """D' of a method in ``METHODS`` ('none', the no-prior baseline, is not a denoiser)."""
    if method not in METHODS:
        raise ValueError(f"unknown restoration method {method!r} for a denoiser; valid: "
                         f"{', '.join(METHODS)} (and 'none' in restore.restore, without a prior)")
    return METHODS[method][0](D, op, strength)
