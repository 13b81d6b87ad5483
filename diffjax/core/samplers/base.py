"""Sampler contract and the one ``lax.scan`` driver every sampler runs under.

A sampler is a step function
    step(state, sigma_cur, sigma_next, D, noise, knobs) -> state
over the EDM frame (x = x0 + sigma eps; see core/denoisers.py), where D(x, sigma) is the denoiser
with its condition bound, ``noise`` is an explicit standard-normal array shaped like x (ignored by
deterministic samplers) and ``knobs`` holds traced scalars (eta, churn, ...) plus ``num_steps`` (N, the
grid's number of steps, static) and ``solver_steps`` (S, traced: the steps ending at sigma > 0, so
N - 1 on a grid ending at 0 and N otherwise; multistep solvers lower their order on the last solver
steps, not on the step into sigma = 0, which only returns x0_hat). The driver ``run`` scans
the step over a grid from core/timesteps.py: only the shapes and the number of steps are static, so
changing a knob, the sigma range or the seed never recompiles a jitted caller. Per-step noise for
example b at step i is N(0, I) drawn from fold_in(keys[b], i + 1) (the prior uses fold_in(keys[b],
0)), so a sample depends only on its own key - not on batch size or sharding.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from diffjax.core import timesteps


class SamplerState(NamedTuple):
    x: jax.Array            # current sample (EDM frame)
    i: jax.Array            # step index (int32)
    nfe: jax.Array          # network evaluations so far (int32)
    x0_hist: jax.Array      # (K, *x.shape) previous x0 predictions, newest first (K may be 0)
    sigma_hist: jax.Array   # (K,) their noise levels
    aux: Any = ()           # sampler-specific carry


class SampleResult(NamedTuple):
    x: jax.Array
    trajectory: Any         # (steps, *x.shape) states after each step, or None
    nfe: jax.Array


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A named step function with its history length, knob defaults and noise needs."""

    name: str
    step: Callable
    history: int = 0
    needs_noise: bool = False
    defaults: tuple = ()                     # ((knob, default), ...)
    init_aux: Callable = lambda x: ()

    def init(self, x) -> SamplerState:
        k = self.history
        return SamplerState(x=x, i=jnp.zeros((), jnp.int32), nfe=jnp.zeros((), jnp.int32),
                            x0_hist=jnp.zeros((k,) + x.shape, x.dtype),
                            sigma_hist=jnp.ones((k,), jnp.float32), aux=self.init_aux(x))

    def knobs(self, num_steps: int, **given) -> dict:
        allowed = dict(self.defaults)
        unknown = set(given) - set(allowed)
        if unknown:
            raise ValueError(f"sampler {self.name!r} has no option(s) {sorted(unknown)}; "
                             f"valid: {sorted(allowed)}")
        out = {k: jnp.asarray(v, jnp.float32) for k, v in {**allowed, **given}.items()}
        out["num_steps"] = num_steps
        return out


def push(state: SamplerState, x0, sigma) -> tuple:
    """Prepend (x0, sigma) to the history buffers, dropping the oldest."""
    if state.x0_hist.shape[0] == 0:
        return state.x0_hist, state.sigma_hist
    h = jnp.concatenate([x0[None], state.x0_hist[:-1]], axis=0)
    s = jnp.concatenate([jnp.asarray(sigma, jnp.float32)[None], state.sigma_hist[:-1]], axis=0)
    return h, s


def example_keys(key: jax.Array, batch_size: int, offset=0) -> jax.Array:
    """Per-example keys fold_in(key, offset + b): example b's sample is independent of the batch."""
    idx = jnp.arange(batch_size) + offset
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)


def step_noise(keys: jax.Array, i, shape, dtype=jnp.float32) -> jax.Array:
    """N(0, I) noise for step i: row b from fold_in(keys[b], i + 1)."""
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i + 1), shape, dtype))(keys)


def prior_noise(keys: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """The standard-normal draw behind x_T: row b from fold_in(keys[b], 0)."""
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape, dtype))(keys)


def run(sampler: Sampler, denoiser: Callable, x_init: jax.Array, sigmas: jax.Array, *,
        keys: jax.Array | None = None, cond=None, return_trajectory: bool = False,
        **knobs) -> SampleResult:
    """Run ``sampler`` from x_init (at sigmas[0]) down the grid ``sigmas`` (ending at 0).

    ``denoiser`` follows the contract D(x, sigma, cond). ``keys`` are per-example PRNG keys (see
    ``example_keys``), required by stochastic samplers. Extra keyword arguments are the sampler's
    traced knobs (e.g. eta=0.5, s_churn=40.0).
    """
    timesteps.validate(sigmas)
    sigmas = jnp.asarray(sigmas, jnp.float32)
    n = sigmas.shape[0] - 1
    kn = sampler.knobs(n, **knobs)
    kn["solver_steps"] = jnp.int32(n) - (sigmas[-1] == 0).astype(jnp.int32)
    x_init = jnp.asarray(x_init)
    if x_init.ndim < 1:
        raise ValueError("x_init must have a batch dimension")
    if sampler.needs_noise:
        if keys is None:
            raise ValueError(f"sampler {sampler.name!r} is stochastic: pass keys=example_keys(key, B)")
        if keys.shape[0] != x_init.shape[0]:
            raise ValueError(f"keys has {keys.shape[0]} rows but x_init has batch {x_init.shape[0]}; "
                             "pass one key per example")

    def D(x, s):
        out = denoiser(x, s, cond)
        if out.shape != x.shape:
            raise ValueError(f"denoiser returned shape {out.shape} for input of shape {x.shape}: "
                             "it must return x0_hat shaped like x")
        return out

    def body(state, inp):
        i, s_cur, s_next = inp
        noise = (step_noise(keys, i, x_init.shape[1:], x_init.dtype) if sampler.needs_noise
                 else None)
        state = sampler.step(state, s_cur, s_next, D, noise, kn)
        state = state._replace(i=state.i + 1)
        return state, (state.x if return_trajectory else None)

    steps = (jnp.arange(n, dtype=jnp.int32), sigmas[:-1], sigmas[1:])
    state, traj = jax.lax.scan(body, sampler.init(x_init), steps)
    return SampleResult(x=state.x, trajectory=traj, nfe=state.nfe)
