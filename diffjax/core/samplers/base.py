"""Sampler contract, the public stepper, and the one ``lax.scan`` driver every sampler runs under.

A sampler is a step function
    step(state, sigma_cur, sigma_next, D, noise, knobs) -> state
over the EDM frame (x = x0 + sigma eps; see core/denoisers.py), where D(x, sigma) is the denoiser
with its condition bound, ``noise`` is an explicit standard-normal array shaped like x (None when the
caller draws none; deterministic samplers ignore it) and ``knobs`` holds traced scalars (eta, churn,
...) plus ``num_steps`` (N, the grid's number of steps, static), ``grid`` (sigma_0..sigma_N, for
steps that look past sigma_{i+1}; state.i is the step's index) and ``solver_steps`` (S, traced: the
steps ending at sigma > 0, so N - 1 on a grid ending at 0 and N otherwise; multistep solvers lower
their order on the last solver steps, not on the step into sigma = 0, which only returns x0_hat).
Every step sets ``state.x0`` to the latest x0_hat it computed: D(x_i, sigma_i) for DDIM/DDPM,
DPM-Solver++, UniPC and flow Euler, D(x_hat, s_hat) for Euler (after churn), the corrector's
D(x', sigma_{i+1}) for Heun (D(x_hat, s_hat) on the step into 0), the midpoint evaluation for flow
midpoint, EVODiff's latest evaluation (its held one on its evaluation-free last solver step).
Grid, knobs, the history's noise levels, noise and the state's x share one float dtype: x's,
promoted to at least float32 (float64 x under jax_enable_x64 runs in float64), or ``dtype=``.

The stepper. ``stepper(sampler, D, sigmas, cond=..., dtype=..., **knobs)`` returns a ``Stepper`` with
    init(x) -> SamplerState           x at sigmas[0]; state.x0 starts as zeros
    step(state, i, noise=None)        -> the state at sigmas[i + 1]; i (sets state.i) may be traced
                                      (lax.scan / fori_loop / while_loop, or a Python loop); noise
                                      ~ N(0, I) shaped like x, required iff ``needs_noise``
    num_steps (N, static), needs_noise (bool), sigmas, knobs
``needs_noise`` is False for deterministic samplers and for stochastic ones whose noise knobs are
concretely 0 (DDIM eta=0, Euler/Heun s_churn=0); noise passed to those is used as ``run`` uses it
(it cannot change the result). The Stepper is itself a pytree: ``jax.jit(Stepper.step)(st, s, i,
noise)`` with noise ``step_noise(keys, i, x.shape[1:])`` drawn inside the jitted function steps
bit-for-bit as ``run`` does. A state is a pytree of arrays, never mutated: keep one and continue it
on several branches with different noise (search, tree methods, verifiers reading ``state.x0``).
Best of two branches per step under a verifier ``score`` (larger is better), s.x the sample:

    st = samplers.stepper("heun", D, sigmas, s_churn=40.0)
    s, z = st.init(x_T), lambda k: jax.random.normal(k, x_T.shape)
    for i in range(st.num_steps):
        ka, kb = jax.random.split(jax.random.fold_in(key, i))
        a, b = st.step(s, i, z(ka)), st.step(s, i, z(kb))      # two branches from one state
        s = a if score(a.x0) >= score(b.x0) else b              # keep the better x0 prediction

The driver ``run`` is a ``lax.scan`` of ``Stepper.step`` over a grid from core/timesteps.py: only the
shapes and the number of steps are static, so changing a knob, the sigma range or the seed never
recompiles a jitted caller. Per-step noise for example b at step i is N(0, I) drawn from
fold_in(keys[b], i + 1) (``step_noise``; the prior uses fold_in(keys[b], 0)), so a sample depends
only on its own key - not on batch size or sharding.
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
    x0: jax.Array           # latest x0 prediction the last step computed (zeros before the first)
    x0_hist: jax.Array      # (K, *x.shape) previous x0 predictions, newest first (K may be 0)
    sigma_hist: jax.Array   # (K,) their noise levels, in the state's float dtype
    aux: Any = ()           # sampler-specific carry


class SampleResult(NamedTuple):
    x: jax.Array
    trajectory: Any         # (steps, *x.shape) states after each step, or None
    nfe: jax.Array


def float_dtype(x_dtype=None, dtype=None):
    """The dtype of a step: ``dtype`` if given, else x's dtype promoted to at least float32."""
    if dtype is not None:
        return jnp.dtype(dtype)
    if x_dtype is None or not jnp.issubdtype(x_dtype, jnp.floating):
        return jnp.dtype(jnp.float32)
    return jnp.dtype(jnp.promote_types(x_dtype, jnp.float32))


def _concrete_zero(v) -> bool:
    try:
        return float(v) == 0.0
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return False   # traced: may be nonzero


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A named step function with its history length, knob defaults and noise needs.

    ``needs_noise``: the step can use per-step noise; ``noise_knobs``: knobs that, when all are
    (concretely) 0, make it deterministic (DDIM's eta, EDM's s_churn). ``requires_process``: the
    process class whose prior ``sample`` must draw x_T from (PFGM++), or None.
    """

    name: str
    step: Callable
    history: int = 0
    needs_noise: bool = False
    defaults: tuple = ()                     # ((knob, default), ...)
    init_aux: Callable = lambda x, dtype: ()
    noise_knobs: tuple = ()
    requires_process: Any = None

    def init(self, x, dtype=None) -> SamplerState:
        k = self.history
        dtype = jnp.dtype(jnp.float32) if dtype is None else jnp.dtype(dtype)
        return SamplerState(x=x, i=jnp.zeros((), jnp.int32), nfe=jnp.zeros((), jnp.int32),
                            x0=jnp.zeros_like(x), x0_hist=jnp.zeros((k,) + x.shape, x.dtype),
                            sigma_hist=jnp.ones((k,), dtype), aux=self.init_aux(x, dtype))

    def check_knobs(self, given) -> dict:
        allowed = dict(self.defaults)
        unknown = set(given) - set(allowed)
        if unknown:
            raise ValueError(f"sampler {self.name!r} has no option(s) {sorted(unknown)}; "
                             f"valid: {sorted(allowed)}")
        return {**allowed, **given}

    def knobs(self, num_steps: int, dtype=jnp.float32, **given) -> dict:
        out = {k: jnp.asarray(v, dtype) for k, v in self.check_knobs(given).items()}
        out["num_steps"] = num_steps
        return out

    def uses_noise(self, **given) -> bool:
        """Whether a step with these knobs draws noise (True unless provably deterministic)."""
        if not self.needs_noise:
            return False
        kn = self.check_knobs(given)
        return not (self.noise_knobs and all(_concrete_zero(kn[k]) for k in self.noise_knobs))


def push(state: SamplerState, x0, sigma) -> tuple:
    """Prepend (x0, sigma) to the history buffers, dropping the oldest."""
    if state.x0_hist.shape[0] == 0:
        return state.x0_hist, state.sigma_hist
    h = jnp.concatenate([x0[None], state.x0_hist[:-1]], axis=0)
    s = jnp.concatenate([jnp.asarray(sigma, state.sigma_hist.dtype)[None], state.sigma_hist[:-1]],
                        axis=0)
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


@dataclasses.dataclass(frozen=True, eq=False)
class Stepper:
    """One sampler bound to a denoiser, a grid and knobs; build it with ``stepper`` (module docstring).

    ``sigmas`` and ``knobs`` (the sampler's knobs and ``solver_steps``) are arrays, cast to ``dtype``.
    ``init(x)`` gives a state in the wider of x's dtype and ``dtype``; ``step`` runs in the dtype of
    the state it is given (grid and knobs cast to it if they differ: float64 x on a float32 stepper).
    A Stepper is a pytree (sigmas, knobs and cond are its leaves), so it can be passed into jitted
    code: ``jax.jit(Stepper.step)(st, state, i, noise)`` steps exactly as ``run``'s scan does.
    """

    sampler: Sampler
    denoiser: Callable
    sigmas: jax.Array
    knobs: dict
    cond: Any = None
    dtype: Any = jnp.float32
    needs_noise: bool = True     # step needs a noise array (stochastic sampler, noise knobs not all 0)

    @property
    def num_steps(self) -> int:
        return self.sigmas.shape[0] - 1

    def init(self, x) -> SamplerState:
        """The state at sigmas[0], in the wider of x's dtype and ``dtype`` (x is cast to it)."""
        x = jnp.asarray(x)
        dt = self.dtype if not jnp.issubdtype(x.dtype, jnp.floating) else \
            jnp.dtype(jnp.promote_types(x.dtype, self.dtype))
        return self.sampler.init(x.astype(dt), dt)

    def D(self, x, s):
        """The denoiser with ``cond`` bound; checks that it returns x0_hat shaped like x."""
        out = self.denoiser(x, s, self.cond)
        if out.shape != x.shape:
            raise ValueError(f"denoiser returned shape {out.shape} for input of shape {x.shape}: "
                             "it must return x0_hat shaped like x")
        return out

    def step(self, state: SamplerState, i, noise=None) -> SamplerState:
        """Step ``state`` from sigmas[i] to sigmas[i + 1] (i overrides state.i); returns a new state."""
        sig, kn = self.sigmas, dict(self.knobs)
        dt = state.sigma_hist.dtype
        if dt != sig.dtype:
            sig = sig.astype(dt)
            kn = {k: (v if k == "solver_steps" else v.astype(dt)) for k, v in kn.items()}
        kn["num_steps"] = self.num_steps
        kn["grid"] = sig                     # the whole grid, for steps that look past sigma_{i+1}
        if not self.sampler.needs_noise:
            noise = None
        elif noise is None and self.needs_noise:
            raise ValueError(f"sampler {self.sampler.name!r} is stochastic with these knobs: pass "
                             "noise ~ N(0, I) shaped like x (e.g. step_noise(keys, i, x.shape[1:]))")
        elif noise is not None and noise.shape != state.x.shape:
            raise ValueError(f"noise has shape {noise.shape}, x has {state.x.shape}")
        i = jnp.asarray(i, jnp.int32)
        new = self.sampler.step(state._replace(i=i), sig[i], sig[i + 1], self.D, noise, kn)
        return new._replace(i=i + 1, x0=jnp.asarray(new.x0, state.x0.dtype))


jax.tree_util.register_dataclass(Stepper, data_fields=["sigmas", "knobs", "cond"],
                                 meta_fields=["sampler", "denoiser", "dtype", "needs_noise"])


def stepper(sampler, denoiser: Callable, sigmas, *, cond=None, dtype=None, **knobs) -> Stepper:
    """A ``Stepper`` for ``sampler`` (a Sampler or a registered name) on the grid ``sigmas``.

    ``denoiser`` follows D(x, sigma, cond). Extra keyword arguments are the sampler's traced knobs
    (e.g. eta=0.5, s_churn=40.0); unknown ones raise ValueError here. ``dtype`` (default: float32,
    or float64 for a float64 grid) is the dtype of grid and knobs; a state of another float dtype is
    stepped in its own (float64 x under jax_enable_x64 runs in float64).
    """
    if isinstance(sampler, str):
        from diffjax.core import samplers
        sampler = samplers.get(sampler)
    timesteps.validate(sigmas)
    sigmas = jnp.asarray(sigmas)
    dtype = float_dtype(sigmas.dtype, dtype)
    sigmas = sigmas.astype(dtype)
    n = sigmas.shape[0] - 1
    kn = sampler.knobs(n, dtype, **knobs)
    del kn["num_steps"]                      # static: Stepper.num_steps, added back in step
    kn["solver_steps"] = jnp.int32(n) - (sigmas[-1] == 0).astype(jnp.int32)
    return Stepper(sampler=sampler, denoiser=denoiser, sigmas=sigmas, knobs=kn, cond=cond,
                   dtype=dtype, needs_noise=sampler.uses_noise(**knobs))


def run(sampler: Sampler | str, denoiser: Callable, x_init: jax.Array, sigmas: jax.Array, *,
        keys: jax.Array | None = None, cond=None, return_trajectory: bool = False, dtype=None,
        **knobs) -> SampleResult:
    """Run ``sampler`` from x_init (at sigmas[0]) down the grid ``sigmas``: a lax.scan of
    ``stepper(...).step`` with noise ``step_noise(keys, i, ...)``.

    ``denoiser`` follows the contract D(x, sigma, cond). ``keys`` are per-example PRNG keys (see
    ``example_keys``), required by stochastic samplers unless their noise knobs are 0 (DDIM with
    eta=0, Euler/Heun with s_churn=0). ``dtype`` (default: x_init's, at least float32) is the dtype
    of grid, knobs and history. Extra keyword arguments are the sampler's traced knobs.
    """
    x_init = jnp.asarray(x_init)
    st = stepper(sampler, denoiser, sigmas, cond=cond, dtype=float_dtype(x_init.dtype, dtype),
                 **knobs)
    sampler = st.sampler
    if x_init.ndim < 1:
        raise ValueError("x_init must have a batch dimension")
    if sampler.needs_noise:
        if keys is None and st.needs_noise:
            raise ValueError(f"sampler {sampler.name!r} is stochastic: pass keys=example_keys(key, B)")
        if keys is not None and keys.shape[0] != x_init.shape[0]:
            raise ValueError(f"keys has {keys.shape[0]} rows but x_init has batch {x_init.shape[0]}; "
                             "pass one key per example")
    state = st.init(x_init)
    draw = sampler.needs_noise and keys is not None

    def body(state, i):
        noise = step_noise(keys, i, state.x.shape[1:], state.x.dtype) if draw else None
        state = st.step(state, i, noise)
        return state, (state.x if return_trajectory else None)

    state, traj = jax.lax.scan(body, state, jnp.arange(st.num_steps, dtype=jnp.int32))
    return SampleResult(x=state.x, trajectory=traj, nfe=state.nfe)
