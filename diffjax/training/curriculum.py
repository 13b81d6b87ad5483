"""Denoising-task-difficulty curriculum (Kim, Go, Kwon, Kim, ICLR 2025, arXiv 2403.10348).

Denoising at low noise is the harder task (its loss converges more slowly), so training goes from
easy to hard. The noise levels of the run's time sampler (``config.diffusion.t_sampler``) are cut
into N clusters of equal probability under that sampler, C_1 (lowest noise) .. C_N (highest):

    uniform in t (DDPM / DiT)     N uniform intervals of the time range
    lognormal (EDM)               N equal-mass bins of ln sigma ~ N(P_mean, P_std^2)
    logit_normal (flow)           N equal-mass bins of logit(t) ~ N(0, 1)

so a cluster is an interval [(k-1)/N, k/N) of the sampler's quantile u, and t = F^{-1}(u). At stage
n = 1..N training draws t from the union of the n easiest clusters, u ~ U[1 - n/N, 1); the last stage
is the full range, ordinary training, to the end of the run. Pacing is adaptive: the stage advances
when the smoothed training loss has not improved for ``patience`` consecutive steps, and the best
loss is reset at every advance (the paper's Algorithms 1 and 2, as the reimplementation quotes
them).

Config (``config.diffusion.curriculum``; ``clusters = 0`` is off, plain sampling):
    clusters    N                                      (20 or 10 in the two versions of the only
    patience    tau, steps without improvement          source; 200 or 2: both unverified, so
                                                        they are fields, not claimed defaults)
    smoothing   EMA of the loss the patience watches   (0.99, the reimplementation's choice)
    min_delta   an improvement must beat best by this  (0)

The state {stage, best, wait, smooth, seen} is the denoising objective's ``extra``: part of the
TrainState, so it is checkpointed and a resumed run continues the same curriculum bit for bit.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri

from diffjax.core import processes as P


class Settings(NamedTuple):
    clusters: int = 0
    patience: int = 200
    smoothing: float = 0.99
    min_delta: float = 0.0


FIELDS = tuple(Settings._fields)


def settings(config) -> Settings:
    """``config.diffusion.curriculum`` checked (configs saved before it existed: off)."""
    sec = config.diffusion.get("curriculum", None)
    if sec is None:
        return Settings()
    sec = dict(sec)
    unknown = sorted(set(sec) - set(FIELDS))
    if unknown:
        raise ValueError(f"config.diffusion.curriculum has no field(s) {', '.join(unknown)}; its "
                         f"fields: {', '.join(FIELDS)}")
    s = Settings(**{**Settings()._asdict(), **sec})
    if int(s.clusters) < 0 or int(s.clusters) != s.clusters:
        raise ValueError(f"config.diffusion.curriculum.clusters must be 0 (off) or a positive "
                         f"integer, got {s.clusters}")
    if int(s.patience) < 1:
        raise ValueError(f"config.diffusion.curriculum.patience must be >= 1, got {s.patience}")
    if not 0.0 <= float(s.smoothing) < 1.0:
        raise ValueError(f"config.diffusion.curriculum.smoothing must be in [0, 1), got "
                         f"{s.smoothing}")
    return Settings(int(s.clusters), int(s.patience), float(s.smoothing), float(s.min_delta))


def enabled(config) -> bool:
    return settings(config).clusters > 0


def t_from_quantile(name: str, process: P.Process, u, *, p_mean: float = -1.2,
                    p_std: float = 1.2, logit_mean: float = 0.0, logit_std: float = 1.0):
    """F^{-1}(u): the time of quantile u in (0, 1) under the named sampler of core/losses.py
    (``time_sampler``), in the process's own time; larger u = more noise."""
    if name == "uniform":
        if isinstance(process, P.DiscreteVP):
            n = process.num_train_steps
            return jnp.minimum(jnp.floor(u * n), n - 1).astype(jnp.float32)
        return process.t_min + (process.t_max - process.t_min) * u
    if name == "lognormal":
        return process.t_from_sigma_tilde(jnp.exp(p_mean + p_std * ndtri(u)))
    if name == "logit_normal":
        return process.t_min + (process.t_max - process.t_min) * jax.nn.sigmoid(
            logit_mean + logit_std * ndtri(u))
    raise ValueError(f"the curriculum clusters the quantiles of config.diffusion.t_sampler; "
                     f"{name!r} has none (use uniform, lognormal or logit_normal)")


def init_state() -> dict:
    """Stage 0 (= the paper's stage 1: the highest-noise cluster only)."""
    return {"stage": jnp.int32(0), "best": jnp.float32(jnp.inf), "wait": jnp.int32(0),
            "smooth": jnp.float32(0.0), "seen": jnp.int32(0)}


def quantile_range(stage, clusters: int):
    """[lo, 1): the quantiles the stage draws from (stage 0-based; the last is [0, 1))."""
    n = jnp.minimum(stage + 1, clusters)
    return 1.0 - n.astype(jnp.float32) / clusters


def sampler(state: dict, s: Settings, name: str, process: P.Process, **kw) -> Callable:
    """``(key, batch) -> t`` for the state's stage: u ~ U[1 - n/N, 1), t = F^{-1}(u)."""
    lo = quantile_range(state["stage"], s.clusters)

    def draw(key, b):
        u = jax.random.uniform(key, (b,), jnp.float32)
        u = lo + (1.0 - lo) * u
        u = jnp.clip(u, 1e-6, 1.0 - 1e-6)      # F^{-1} is finite inside (0, 1)
        return t_from_quantile(name, process, u, **kw)
    return draw


def update(state: dict, loss, s: Settings) -> dict:
    """One step of adaptive pacing: smooth the loss, count steps without an improvement of at
    least min_delta, advance (and reset the best loss) after ``patience`` of them."""
    loss = jnp.asarray(loss, jnp.float32)
    smooth = jnp.where(state["seen"] == 0, loss,
                       s.smoothing * state["smooth"] + (1.0 - s.smoothing) * loss)
    better = smooth < state["best"] - s.min_delta
    best = jnp.where(better, smooth, state["best"])
    wait = jnp.where(better, 0, state["wait"] + 1)
    advance = (wait >= s.patience) & (state["stage"] < s.clusters - 1)
    return {"stage": state["stage"] + advance.astype(jnp.int32),
            "best": jnp.where(advance, jnp.inf, best).astype(jnp.float32),
            "wait": jnp.where(advance, 0, wait).astype(jnp.int32),
            "smooth": smooth, "seen": state["seen"] + 1}
