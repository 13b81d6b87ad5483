"""Observation self-guidance (TSDiff, Kollovieh et al., NeurIPS 2023, arXiv:2307.11494, Sec. 3.1):
forecasting and imputation with an unconditional model, guided toward the observed entries through
its own clean estimate, as a transform of the denoiser contract (guidance method ``tsdiff``).

Energy on the clean estimate x0_hat = D(x, sigma) over the observed entries (mask m, values y):
    mse        E = sum m (x0_hat - y)^2
    quantile   E = sum m pinball_q(y - x0_hat),  q = cond['quantile'] per sample (the i-th of S
               samples of a series takes q_i = i / (S + 1): the ensemble spans the quantiles)
sums, not means (the paper's: the strength grows with the number of observed points).
    gaussian   not TSDiff's: the Tweedie-moment likelihood p(y | x) ~ N(y; M D, M C M^T + delta I),
               C = Var[x0 | x] = sigma^2 dD/dx (Boys et al. 2023, "Tweedie moment projected
               diffusions"; Song et al. 2023's PiGDM), whose score gives
                   D' = D + s sigma^2 J^T M^T (sigma^2 M J M^T + delta I)^{-1} M (y - D),  J = dD/dx,
               exact for Gaussian data with its exact denoiser at s = 1 (the conditional's own
               score), so imputations have the conditional's moments; the MSE and quantile
               energies drop C and overweight y at high sigma (tests/timeseries). It needs the
               Jacobian: one forward-mode pass per entry of the window (short windows only).

DDIM form (the paper's Eq. 9): eps~ = eps_theta + s sqrt(1 - abar_t) grad_{x_t} E. In the EDM frame
(x = x_t / sqrt(abar), sigma^2 = (1 - abar) / abar, eps = (x - D) / sigma) this is exactly
    D'(x, sigma) = D(x, sigma) - s sigma^2 grad_x E(D(x, sigma)),
so the transform runs under DDIM (the paper's) or any other sampler of the grid.
DDPM form (the paper's Eq. 8): after the ancestral step x <- x + s sigma~_t^2 (-grad E), sigma~^2 the
posterior variance. The ancestral step's mean moves by (1 - sigma_next^2 / sigma^2) times a shift of
D, so the same move is D' = D - s sigma_next^2 grad_x E with sigma_next the grid's next level
(``form='ddpm'``, for the 'ddpm' sampler). The official code takes that gradient at the already
sampled x_{t-1} with time index t; here it is taken at x_t (one denoiser call per step, not two).
Scale 0 is the unguided model (statically: the transform is skipped).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.core.denoisers import bcast
from diffjax.guidance.registry import Method, register

OBSERVED, MASK, QUANTILE = "observed", "observed_mask", "quantile"
ENERGIES = ("quantile", "mse", "gaussian")
FORMS = ("ddim", "ddpm")


def split_cond(cond):
    """(y, mask, q or None, the condition without them: None if nothing is left)."""
    if not isinstance(cond, dict) or OBSERVED not in cond or MASK not in cond:
        raise ValueError(f"guidance 'tsdiff' needs cond[{OBSERVED!r}] (the observed values, "
                         f"batched like x) and cond[{MASK!r}] (1 where observed); got cond "
                         f"{None if cond is None else sorted(cond)}")
    rest = {k: v for k, v in cond.items() if k not in (OBSERVED, MASK, QUANTILE)}
    return cond[OBSERVED], cond[MASK], cond.get(QUANTILE), (rest or None)


def energy(x0, y, mask, kind: str, q=None):
    """E per example (B,) of the clean estimate x0 against the observations."""
    e = y - x0
    if kind == "mse":
        per = e * e
    elif kind == "quantile":
        q = 0.5 if q is None else bcast(q, e)
        per = (q - (e < 0)) * e
    else:
        raise ValueError(f"guidance tsdiff: energy must be one of {ENERGIES}, got {kind!r}")
    return jnp.sum((mask * per).reshape(e.shape[0], -1), axis=1)


def _next_sigma(sigmas, sigma):
    """The grid's level after ``sigma`` (scalar or (B,))."""
    if sigmas is None:
        raise ValueError("guidance tsdiff form 'ddpm' needs the sampling grid (inference.generate "
                         "gives it)")
    sig = jnp.asarray(sigmas, jnp.float32)
    idx = jnp.argmin(jnp.abs(sig[None, :] - jnp.reshape(sigma, (-1, 1))), axis=1)
    nxt = sig[jnp.minimum(idx + 1, sig.shape[0] - 1)]
    return nxt.reshape(jnp.shape(sigma))


def gaussian_guided(D, x, sigma, y, mask, rest, scale, noise):
    """D + s sigma^2 J^T M^T (sigma^2 M J M^T + delta I)^{-1} M (y - D) per example (module doc)."""
    b, shape = x.shape[0], x.shape[1:]
    n = int(np.prod(shape))
    sig = jnp.broadcast_to(jnp.reshape(jnp.asarray(sigma, jnp.float32), (-1,)), (b,))

    def one(xi, si, ri):
        f = lambda v: D(v.reshape((1,) + shape), si[None], ri).reshape(-1)
        return f(xi.reshape(-1)), jax.jacfwd(f)(xi.reshape(-1))

    rest_axes = None if rest is None else jax.tree.map(lambda _: 0, rest)
    d, jac = jax.vmap(one, in_axes=(0, 0, rest_axes))(x, sig, rest)        # (b, n), (b, n, n)
    m = jnp.broadcast_to(mask, x.shape).reshape(b, n)
    r = m * (y.reshape(b, n) - d)
    s2 = (sig ** 2)[:, None, None]
    eye = jnp.eye(n, dtype=jnp.float32)
    gram = s2 * (m[:, :, None] * jac * m[:, None, :]) + noise * eye + (1 - m)[:, :, None] * eye
    v = m * jnp.linalg.solve(gram, r[..., None])[..., 0]
    corr = s2[:, :, 0] * jnp.einsum("bji,bj->bi", jac, v)
    return (d + scale * corr).reshape(x.shape)


def self_guided(D, scale, kind: str = "quantile", form: str = "ddim", sigmas=None,
                obs_noise: float = 1e-4):
    """D' = D - scale w(sigma) grad_x E(D(x, sigma)), w = sigma^2 ('ddim') or sigma_next^2; the
    'gaussian' energy's exact-for-Gaussians correction instead (module doc)."""
    if form not in FORMS:
        raise ValueError(f"guidance tsdiff: form must be one of {FORMS}, got {form!r}")
    if kind not in ENERGIES:
        raise ValueError(f"guidance tsdiff: energy must be one of {ENERGIES}, got {kind!r}")

    def guided(x, sigma, cond):
        y, mask, q, rest = split_cond(cond)
        if kind == "gaussian":
            return gaussian_guided(D, x, sigma, y, mask, rest, scale, obs_noise)

        def total(a):
            x0 = D(a, sigma, rest)
            return jnp.sum(energy(x0, y, mask, kind, q)), x0

        g, x0 = jax.grad(total, has_aux=True)(x)
        w = sigma ** 2 if form == "ddim" else _next_sigma(sigmas, sigma) ** 2
        return x0 - scale * bcast(w, x) * g

    return guided


def _make(D, ctx, *, scale, energy, form, obs_noise):
    return self_guided(D, scale, energy, form, ctx.sigmas, obs_noise)


register(Method(
    name="tsdiff", make=_make, identity=lambda f: f["scale"] == 0.0,
    fields=(("scale", 1.0), ("energy", "quantile"), ("form", "ddim"), ("obs_noise", 1e-4)),
    needs_cond=(OBSERVED, MASK),
    help="TSDiff observation self-guidance (Kollovieh et al. 2023) for forecasting / imputation "
         "with an unconditional series model: D - s sigma^2 grad E(D), E the mse or quantile "
         "energy on cond['observed'] where cond['observed_mask']; diffjax forecast"))
