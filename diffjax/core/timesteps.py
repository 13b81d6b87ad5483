"""Sampling grids: decreasing EDM-frame noise levels sigma_0 > ... > sigma_{N-1} > sigma_N = 0.

Every sampler consumes such a grid, so any discretization runs with any sampler and process.
    karras    sigma_i = (s_max^{1/rho} + i/(N-1) (s_min^{1/rho} - s_max^{1/rho}))^rho  (Karras et al. 2022)
    nested    sigma_i = g((N - i) / N), g(u) = (s_min^{1/rho} + u (s_max^{1/rho} - s_min^{1/rho}))^rho,
              i < N: the Karras ramp at the fractions u = 1, (N-1)/N, ..., 1/N, then 0. The N-step
              grid is every other level of the 2N-step one, which progressive distillation needs
              (a student step spans exactly two teacher steps; Salimans & Ho 2022 use u = i/N on
              their cosine schedule the same way). N = 1 is the single step sigma_max -> 0.
    uniform   t uniform in the process's time between t_max and t_min     (DDPM/DPM-Solver 'time_uniform')
    logsnr    log-SNR uniform                                              (DPM-Solver 'logSNR')
    quadratic t quadratic (DPM-Solver 'time_quadratic')
    linspace / leading / trailing: integer DDPM timesteps as diffusers spaces them (DiscreteVP only):
        linspace  round(linspace(0, T-1, N))
        leading   arange(N) * (T // N) + offset
        trailing  round(arange(T, 0, -T/N)) - 1            (Lin et al. 2024, "Common diffusion noise
                                                            schedules and sample steps are flawed")
Karras values are computed with jnp from (possibly traced) sigma_min/sigma_max, so changing the sigma
range does not recompile a jitted sampler.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from diffjax.core import processes as P

LOGSNR_SIGMA_FLOOR = 2e-3  # smallest level of a log-SNR grid on processes that reach sigma = 0
SPACINGS = ("karras", "nested", "uniform", "logsnr", "quadratic", "linspace", "leading",
            "trailing")


def _append_zero(s):
    return jnp.concatenate([s, jnp.zeros((1,), s.dtype)])


def karras(num_steps: int, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """Karras et al. 2022 (Eq. 5) grid of ``num_steps`` levels followed by 0."""
    _check_steps(num_steps)
    ramp = jnp.linspace(0.0, 1.0, num_steps) if num_steps > 1 else jnp.zeros((1,))
    lo = jnp.asarray(sigma_min, jnp.float32) ** (1.0 / rho)
    hi = jnp.asarray(sigma_max, jnp.float32) ** (1.0 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def nested_level(u, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """g(u) of the nested grid: the Karras ramp at fraction u in (0, 1] (1: sigma_max; u may be a
    traced array; u = 0 is sigma = 0 by convention, the end of every nested grid)."""
    u = jnp.asarray(u, jnp.float32)
    lo = jnp.asarray(sigma_min, jnp.float32) ** (1.0 / rho)
    hi = jnp.asarray(sigma_max, jnp.float32) ** (1.0 / rho)
    return jnp.where(u > 0, (lo + u * (hi - lo)) ** rho, 0.0)


def nested(num_steps: int, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """The nested grid of ``num_steps`` levels then 0 (module docstring)."""
    _check_steps(num_steps)
    u = jnp.arange(num_steps, 0, -1, dtype=jnp.float32) / num_steps
    return _append_zero(nested_level(u, sigma_min, sigma_max, rho))


def ddpm_timesteps(num_steps: int, num_train_steps: int = 1000, spacing: str = "leading",
                   steps_offset: int = 0) -> np.ndarray:
    """Integer DDPM timesteps (decreasing) exactly as diffusers' ``timestep_spacing`` makes them."""
    _check_steps(num_steps)
    T = num_train_steps
    if num_steps > T:
        raise ValueError(f"num_steps={num_steps} exceeds the process's {T} training steps")
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, num_steps).round()[::-1]
    elif spacing == "leading":
        ratio = T // num_steps
        ts = (np.arange(0, num_steps) * ratio).round()[::-1] + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / num_steps)) - 1
    else:
        raise ValueError(f"unknown DDPM spacing {spacing!r}; expected linspace, leading or trailing")
    return ts.astype(np.int64)


def sigmas(process: P.Process, num_steps: int, spacing: str = "karras", *, sigma_min=None,
           sigma_max=None, rho: float = 7.0, steps_offset: int | None = None):
    """Decreasing EDM-frame grid of length num_steps + 1 ending in 0 for ``process``.

    sigma_min / sigma_max default to the process's range (for 'karras'); for time-based spacings the
    grid runs between the process's t_max and t_min. ``steps_offset`` (the DDPM spacings) defaults
    to the process's (``DiscreteVP.steps_offset``, a converted scheduler's).
    """
    _check_steps(num_steps)
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; expected one of {SPACINGS}")
    if spacing in ("karras", "nested"):
        lo, hi = process.sigma_tilde_range()
        lo = max(lo, 1e-4) if sigma_min is None else sigma_min
        hi = hi if sigma_max is None else sigma_max
        return (karras if spacing == "karras" else nested)(num_steps, lo, hi, rho)
    if spacing in ("linspace", "leading", "trailing"):
        if not isinstance(process, P.DiscreteVP):
            raise ValueError(f"spacing {spacing!r} is for the discrete DDPM process (vp_discrete), "
                             f"not {process.name!r}; use karras, uniform or logsnr")
        if steps_offset is None:
            steps_offset = int(getattr(process, "steps_offset", 0))
        ts = ddpm_timesteps(num_steps, process.num_train_steps, spacing, steps_offset)
        ab = process.alphas_cumprod()[ts]
        return _append_zero(jnp.asarray(np.sqrt((1 - ab) / ab), jnp.float32))
    t_lo, t_hi = float(process.t_min), float(process.t_max)
    reaches_zero = float(process.sigma_tilde(jnp.float32(t_lo))) == 0.0
    if spacing == "logsnr":
        l_lo = process.log_snr(jnp.float32(t_hi))
        l_hi = jnp.minimum(process.log_snr(jnp.float32(t_lo)), -2.0 * jnp.log(LOGSNR_SIGMA_FLOOR))
        s = jnp.exp(-0.5 * jnp.linspace(l_lo, l_hi, num_steps))
        return _append_zero(s.astype(jnp.float32))
    m = num_steps + 1 if reaches_zero else num_steps   # a grid whose last time has sigma = 0 ends there
    if spacing == "uniform":
        ts = jnp.linspace(t_hi, t_lo, m)
    else:  # quadratic
        ts = (jnp.linspace(t_hi ** 0.5, t_lo ** 0.5, m)) ** 2
    s = process.sigma_tilde(ts).astype(jnp.float32)
    return s if reaches_zero else _append_zero(s)


def _check_steps(num_steps):
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")


def validate(sig) -> None:
    """Raise ValueError unless ``sig`` is a 1-D, strictly decreasing, non-negative grid.

    Only checks concrete arrays (a traced grid inside jit is trusted).
    """
    try:
        a = np.asarray(sig)
    except Exception:  # traced: cannot check values
        if getattr(sig, "ndim", 1) != 1:
            raise ValueError(f"sigmas must be 1-D, got shape {sig.shape}")
        if sig.shape[0] < 2:
            raise ValueError("sigmas needs at least 2 entries (one step); got zero steps")
        return
    if a.ndim != 1:
        raise ValueError(f"sigmas must be 1-D, got shape {a.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"sigmas needs at least 2 entries (one step); got {a.shape[0]} (zero steps)")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("sigmas must be finite and non-negative")
    if np.any(np.diff(a) >= 0):
        bad = int(np.argmax(np.diff(a) >= 0))
        raise ValueError(f"sigmas must be strictly decreasing (noise to data); entry {bad + 1} "
                         f"({a[bad + 1]:.6g}) is not below entry {bad} ({a[bad]:.6g})")
