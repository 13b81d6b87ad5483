"""Classifier-free guidance variants: a guidance interval, guidance rescale, scale schedules.

All three start from the two predictions of classifier-free guidance (Ho & Salimans 2022), one
batched call: c = D(x, sigma, label), u = D(x, sigma, null), cfg_w = u + w (c - u).

``interval`` (Kynkaanniemi et al. 2024, "Applying guidance in a limited interval improves sample and
distribution quality"): guide only for noise levels in (sigma_lo, sigma_hi]:
    D_w = cfg_w if sigma_lo < sigma <= sigma_hi else c
(their ImageNet-512 EDM2 interval is (0.28, 5.42]; the defaults).

``rescale`` (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed",
Sec. 3.4): rescale the guided prediction to the conditional one's standard deviation (per example,
over all non-batch dimensions), then mix:
    v_r = v_cfg std(v_c) / std(v_cfg),   v = phi v_r + (1 - phi) v_cfg
in the space ``space``: 'eps' (the noise prediction eps = (x - x0) / sigma, as diffusers'
``rescale_noise_cfg`` applies it; the default) or 'x0'. phi = 0 is plain classifier-free guidance;
the paper uses phi = 0.7.

``scheduled``: the scale follows the noise level, w(sigma) = 1 + (w - 1) f(u) with u = the position
of log sigma between log sigma_min and log sigma_max (clipped to [0, 1]; u = 1 at sigma_max) and
f(u) = u ('linear': strong early, none at the end), 1 - u ('linear_rev'), sin(pi u)
('sine': strongest in the middle) or 1 ('constant' = classifier-free guidance).

At scale 1 each is the conditional model, exactly (the registry skips it; tests check the
transform too).
"""
from __future__ import annotations

import jax.numpy as jnp

from diffjax.guidance.classifier_free import _both
from diffjax.guidance.registry import Method, register

SCHEDULES = ("constant", "linear", "linear_rev", "sine")


def _per_example(sigma, x):
    s = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
    return s.reshape((-1,) + (1,) * (x.ndim - 1))


def interval(D, ctx, scale, sigma_lo, sigma_hi):
    def guided(x, sigma, cond):
        c, u = _both(D, x, sigma, cond, ctx.null_label, ctx.label_key)
        s = _per_example(sigma, x)
        on = (s > sigma_lo) & (s <= sigma_hi)
        return jnp.where(on, u + jnp.asarray(scale, c.dtype) * (c - u), c)
    return guided


def rescale(D, ctx, scale, phi, space):
    if space not in ("eps", "x0"):
        raise ValueError(f"guidance rescale: space must be 'eps' or 'x0', got {space!r}")

    def guided(x, sigma, cond):
        c, u = _both(D, x, sigma, cond, ctx.null_label, ctx.label_key)
        g = u + jnp.asarray(scale, c.dtype) * (c - u)
        axes = tuple(range(1, x.ndim))
        if space == "eps":
            s = jnp.maximum(_per_example(sigma, x), 1e-12)
            c_v, g_v = (x - c) / s, (x - g) / s
        else:
            c_v, g_v = c, g
        ratio = jnp.std(c_v, axis=axes, keepdims=True) / jnp.maximum(
            jnp.std(g_v, axis=axes, keepdims=True), 1e-12)
        v = phi * g_v * ratio + (1.0 - phi) * g_v
        return x - s * v if space == "eps" else v
    return guided


def schedule_weight(sigma, name, sigma_min, sigma_max):
    """f(u) of the module docstring for noise level(s) ``sigma``."""
    if name not in SCHEDULES:
        raise ValueError(f"guidance scheduled: unknown schedule {name!r}; expected one of "
                         f"{', '.join(SCHEDULES)}")
    lo, hi = jnp.log(sigma_min), jnp.log(sigma_max)
    u = jnp.clip((jnp.log(jnp.maximum(sigma, 1e-20)) - lo) / (hi - lo), 0.0, 1.0)
    return {"constant": jnp.ones_like(u), "linear": u, "linear_rev": 1.0 - u,
            "sine": jnp.sin(jnp.pi * u)}[name]


def scheduled(D, ctx, scale, sigma_min, sigma_max, schedule):
    schedule_weight(1.0, schedule, 1.0, 2.0)   # an unknown name fails when built, not traced

    def guided(x, sigma, cond):
        c, u = _both(D, x, sigma, cond, ctx.null_label, ctx.label_key)
        w = 1.0 + (jnp.asarray(scale, c.dtype) - 1.0) * schedule_weight(
            _per_example(sigma, x), schedule, sigma_min, sigma_max).astype(c.dtype)
        return u + w * (c - u)
    return guided


def check_interval(f, sigmas):
    import numpy as np
    lo, hi = f["sigma_lo"], f["sigma_hi"]
    if not lo < hi:
        raise ValueError(f"guidance interval: sigma_lo ({lo:g}) must be below sigma_hi ({hi:g})")
    grid = np.asarray(sigmas)[:-1]          # the levels the denoiser is called at (not the final 0)
    if not np.any((grid > lo) & (grid <= hi)):
        raise ValueError(f"guidance interval ({lo:g}, {hi:g}] holds none of the sampling grid's "
                         f"noise levels ({grid.min():.4g} .. {grid.max():.4g}): guidance would "
                         f"never apply; widen the interval or use more steps")


def check_schedule(f, sigmas):
    if not 0 < f["sigma_min"] < f["sigma_max"]:
        raise ValueError(f"guidance scheduled: need 0 < sigma_min < sigma_max, got "
                         f"{f['sigma_min']:g} and {f['sigma_max']:g}")


_unit = lambda f: f["scale"] == 1.0
register(Method(name="interval", make=interval, needs_classes=True, identity=_unit,
                check=check_interval,
                fields=(("scale", 1.0), ("sigma_lo", 0.28), ("sigma_hi", 5.42)),
                help="classifier-free guidance only for sigma_lo < sigma <= sigma_hi "
                     "(Kynkaanniemi et al. 2024), the conditional model elsewhere"))
register(Method(name="rescale", make=rescale, needs_classes=True, identity=_unit,
                fields=(("scale", 1.0), ("phi", 0.7), ("space", "eps")),
                help="classifier-free guidance rescaled to the conditional prediction's std "
                     "(Lin et al. 2024): phi mixes rescaled and plain, space eps or x0"))
register(Method(name="scheduled", make=scheduled, needs_classes=True, identity=_unit,
                check=check_schedule,
                fields=(("scale", 1.0), ("sigma_min", 0.002), ("sigma_max", 80.0),
                        ("schedule", "linear")),
                help="classifier-free guidance with a scale that follows the noise level: "
                     "w(sigma) = 1 + (w - 1) f(u), u from log sigma_min (0) to log sigma_max (1), "
                     "schedule constant, linear (f = u), linear_rev (1 - u) or sine"))
