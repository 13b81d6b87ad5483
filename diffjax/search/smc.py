"""SMC / Feynman-Kac steering (Singhal et al., 2025, "A general framework for inference-time scaling
and steering of diffusion models"): K particles per example follow a stochastic sampler; at
resampling steps they are resampled by potentials of a reward on their clean estimates, so the
final particles target the tilted distribution

    p_lambda(x0) ~ p(x0) exp(lambda r(x0)).

With the 'difference' potential G_i = exp(lambda (r(x0_i) - r(x0_{i-1}))) (x0_i: the sampler's
clean estimate after step i, r(x0_{-1}) := r at the first estimate) the product of the potentials
telescopes to exp(lambda r(x0)) up to the first estimate's reward, which is why the weighted final
particles sample p_lambda (asymptotically in K; the proposal is the unguided sampler). Each
example's weights are reset after a resampling (multinomial, per example, inside the compiled
loop). The returned sample of each example is one final particle drawn by its weights
(``pick='sample'``) or the best one (``pick='max'``, greedy).

The particles are driven through the public stepper (``samplers.stepper``) with explicit noise, so
any sampler that draws noise (ddpm, ddim with eta > 0, euler / heun with churn) and any guided
denoiser work. NFE = B K nfe(sampler): every particle is one sampler run.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from diffjax.core import samplers

POTENTIALS = ("difference", "max", "immediate")
PICKS = ("sample", "max")


class SMCResult(NamedTuple):
    x: Any              # (B, ...) one sample per example
    particles: Any      # (B, K, ...) the final particles
    log_weights: Any    # (B, K) their final log-weights (normalised per example)
    reward: Any         # (B,) the reward of the returned samples
    nfe: int            # network evaluations in total
    ess: Any            # (steps, B) effective sample size before each step's resampling check


def _log_potential(kind, r_new, r_old, r_max, lam):
    if kind == "difference":
        return lam * (r_new - r_old)
    if kind == "immediate":
        return lam * r_new
    return lam * (r_new - r_max)            # 'max': relative to the best reward seen so far


def fk_steering(key, sampler: str, D: Callable, sigmas, verifier, *, shape, particles: int,
                lam: float = 1.0, resample_every: int = 1, potential: str = "difference",
                pick: str = "sample", cond=None, **knobs) -> SMCResult:
    """FK steering of ``shape[0]`` examples with ``particles`` each (module docstring).
    ``verifier(x0, cond) -> (N,)``; ``cond`` is per example (repeated for its particles)."""
    if potential not in POTENTIALS:
        raise ValueError(f"fk_steering: potential must be one of {', '.join(POTENTIALS)}, got "
                         f"{potential!r}")
    if pick not in PICKS:
        raise ValueError(f"fk_steering: pick must be one of {', '.join(PICKS)}, got {pick!r}")
    if particles < 1 or resample_every < 1:
        raise ValueError("fk_steering: need particles >= 1 and resample_every >= 1")
    b, k = shape[0], particles
    n = b * k
    pcond = None if cond is None else jax.tree.map(lambda v: jnp.repeat(jnp.asarray(v), k, 0),
                                                   cond)
    st = samplers.stepper(sampler, D, sigmas, cond=pcond, **knobs)
    if not st.needs_noise:
        raise ValueError(f"fk_steering needs a stochastic sampler (particles that share x_T must "
                         f"be able to diverge); {sampler!r} with these knobs is deterministic: use "
                         f"ddpm, or ddim with eta > 0")
    sig = jnp.asarray(sigmas)
    k_init, k_noise, k_res, k_pick = jax.random.split(key, 4)
    x_T = samplers.prior(jax.random.split(k_init, n), tuple(shape[1:]), sig[0])
    x, nfe, logw, r, ess = _run(st, x_T, k_noise, k_res, jnp.asarray(lam, jnp.float32),
                                verifier=verifier, potential=potential,
                                resample_every=resample_every, b=b, k=k)
    logw = logw - jax.nn.logsumexp(logw, axis=1, keepdims=True)
    parts = x.reshape((b, k) + tuple(shape[1:]))
    if pick == "max":
        j = jnp.argmax(r, axis=1)
    else:
        j = jax.random.categorical(k_pick, logw, axis=1)
    return SMCResult(parts[jnp.arange(b), j], parts, logw, r[jnp.arange(b), j],
                     int(nfe) * n, ess)


@functools.partial(jax.jit, static_argnames=("verifier", "potential", "resample_every", "b", "k"))
def _run(st, x_T, k_noise, k_res, lam, *, verifier, potential, resample_every, b, k):
    """The particle loop, compiled once per (stepper structure, verifier, shapes): a sweep over
    budgets or seeds reuses it (the stepper, keys and lambda are traced arguments)."""
    n = b * k
    rewards = lambda x0: verifier(x0, st.cond).astype(jnp.float32).reshape(b, k)
    state = st.init(x_T)

    def body(carry, i):
        state, logw, r_old, r_max = carry
        noise = jax.random.normal(jax.random.fold_in(k_noise, i), state.x.shape)
        state = st.step(state, i, noise)
        r = rewards(state.x0)
        r_prev = jnp.where(i == 0, r, r_old)
        logw = logw + _log_potential(potential, r, r_prev, jnp.maximum(r_max, r), lam)
        r_max = jnp.maximum(r_max, r)
        w = jax.nn.softmax(logw, axis=1)
        ess = 1.0 / jnp.sum(w ** 2, axis=1)
        do = ((i + 1) % resample_every == 0) & (i + 1 < st.num_steps)

        def resample(args):
            state, logw, r, r_max = args
            idx = jax.random.categorical(jax.random.fold_in(k_res, i), logw, axis=1,
                                         shape=(k, b)).T                # (b, k)
            flat = (idx + jnp.arange(b)[:, None] * k).reshape(-1)
            rows = lambda a: a[flat] if getattr(a, "ndim", 0) and a.shape[:1] == (n,) else a
            state = state._replace(x=state.x[flat], x0=state.x0[flat],
                                   x0_hist=state.x0_hist[:, flat],   # (history, n, ...)
                                   aux=jax.tree.map(rows, state.aux))
            g = lambda a: jnp.take_along_axis(a, idx, 1)
            return state, jnp.zeros_like(logw), g(r), g(r_max)

        state, logw, r, r_max = jax.lax.cond(do, resample, lambda a: a,
                                             (state, logw, r, r_max))
        return (state, logw, r, r_max), ess

    zeros = jnp.zeros((b, k), jnp.float32)
    (state, logw, r, _), ess = jax.lax.scan(
        body, (state, zeros, zeros, jnp.full((b, k), -jnp.inf)), jnp.arange(st.num_steps))
    return state.x, state.nfe, logw, r, ess
