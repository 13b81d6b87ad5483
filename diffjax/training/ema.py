"""Exponential moving averages of the parameters, several at once (kept in float32).

For optimizer step k = 1, 2, ... (counted after the update), each average follows
    ema_k = beta_k ema_{k-1} + (1 - beta_k) params_k,    ema_0 = params_0,
with one of two profiles:
    'decay_<d>'  beta_k = min(d, (1 + k) / (10 + k))        constant decay d with the usual warmup
                                                            (TensorFlow ExponentialMovingAverage)
    'power_<s>'  beta_k = (1 - 1/k)^(gamma + 1)             power-function EMA of EDM2 (Karras et
                 where sigma_rel = s solves                 al. 2024, Eq. 3 and Sec. 3.1): an
                 s^-2 = (gamma + 2)^2 (gamma + 3)/(gamma+1) average over a fixed *fraction* of
                                                            training, whatever its length.
Names come from config.ema.decays and config.ema.power_stds; ``names(cfg)`` lists them.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def names(cfg) -> list[str]:
    out = [f"decay_{float(d):g}" for d in cfg.decays]
    out += [f"power_{float(s):g}" for s in cfg.power_stds]
    for d in cfg.decays:
        if not 0.0 <= float(d) < 1.0:
            raise ValueError(f"config.ema.decays: each decay must be in [0, 1), got {d}")
    for s in cfg.power_stds:
        if not 0.0 < float(s) < 0.2887:  # sigma_rel -> 1/sqrt(12) as gamma -> -1
            raise ValueError(f"config.ema.power_stds: each sigma_rel must be in (0, 0.2887), got {s}")
    return out


def power_exponent(std: float) -> float:
    """gamma such that the power-function EMA has relative width ``std`` (EDM2's std_to_exp)."""
    t = float(std) ** -2
    roots = np.roots([1.0, 7.0, 16.0 - t, 12.0 - t])
    return float(roots.real.max())


def beta(name: str, k):
    """The decay used at optimizer step k >= 1 (traced ``k`` is fine)."""
    kind, value = name.split("_", 1)
    k = jnp.maximum(jnp.asarray(k, jnp.float32), 1.0)
    if kind == "decay":
        return jnp.minimum(float(value), (1.0 + k) / (10.0 + k))
    if kind == "power":
        return (1.0 - 1.0 / k) ** (power_exponent(float(value)) + 1.0)
    raise ValueError(f"unknown EMA name {name!r}; expected decay_<d> or power_<std>")


def init(params: Any, ema_names) -> dict[str, Any]:
    return {n: jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params) for n in ema_names}


def update(ema: dict[str, Any], params: Any, k) -> dict[str, Any]:
    """One EMA step at optimizer step ``k`` for every average in ``ema``."""
    out = {}
    for n, avg in ema.items():
        b = beta(n, k)
        out[n] = jax.tree.map(lambda a, p: b * a + (1.0 - b) * p.astype(jnp.float32), avg, params)
    return out
