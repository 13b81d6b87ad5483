"""The one sampling program: (denoiser, process, draw settings, mesh) -> a jitted function

    x = program(params, key, labels, offset, guidance_values, knobs, guidance_state, cond, start)

that draws x_T for examples offset .. offset + B - 1 (example b's key is fold_in(key, offset + b),
so a sample never depends on the batch or the device count), binds the params, applies the guidance
transform from the registry, and runs the sampler's ``lax.scan`` to sigma = 0. Only the batch, the
example shape, the sampler, the grid (steps, spacing) and the static part of the guidance (method
name, non-float fields, whether it is the identity) select a compiled program; the params, the seed,
the guidance scale and other float fields, what the guidance method prepared (e.g. a weak model's
params: ``guidance.prepare``) and the sampler knobs (eta, churn, ...) are arguments. ``cond``:
per-example conditioning besides the labels, batched like x (e.g. an inverse problem's measurement
``{'measurement': y}`` for the measurement-guided methods; None: the labels only). ``start``:
Analytic-Init (core/analytic_init.py, Zhao et al. 2024) for a program built with ``start_sigma``:
{'mean': E0 (one example's shape), 'v0': tr Cov / d}; the loop then starts at start_sigma from
N(E0, (start_sigma^2 + v0) I) on the grid restricted to sigma <= start_sigma (static).

Over a mesh the batch (labels, keys, samples) is split over the data axes and the params are
constrained to be replicated at the start of the program: parameters sharded by the train step
(FSDP) are gathered once per call, before the loop, never per step. The same program serves
``diffjax sample`` / ``evaluate``, the trainer's sample grids, the preflight (lowered on abstract
inputs) and the benchmark.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from diffjax import guidance as guidance_lib
from diffjax.core import analytic_init, denoisers, samplers, timesteps


class Program(NamedTuple):
    fn: Callable          # jitted (params, key, labels, offset, guidance_values, knobs,
                          #         guidance_state, cond, start) -> x
    batch: int            # examples per call (a multiple of the mesh's batch shards)
    example_shape: tuple
    sigmas: Any           # the grid (static)
    mesh: Any             # None: one device, wherever the inputs are
    guidance: tuple       # the static part of the guidance section (guidance.split)

    def __call__(self, params, key, labels, offset=0, guidance_values=None, knobs=None,
                 guidance_state=None, cond=None, start=None):
        return self.fn(params, key, labels, jnp.asarray(offset, jnp.int32),
                       guidance_values or {}, knobs or {}, guidance_state, cond, start)

    def lower(self, params, key, labels, offset=0, guidance_values=None, knobs=None,
              guidance_state=None, cond=None, start=None):
        return self.fn.lower(params, key, labels, jnp.asarray(offset, jnp.int32),
                             guidance_values or {}, knobs or {}, guidance_state, cond, start)


def padded_batch(batch: int, mesh) -> int:
    """``batch`` rounded up to a multiple of the mesh's batch shards (the extra rows are extra
    examples, dropped by the caller)."""
    from diffjax.training import sharding

    if mesh is None:
        return batch
    d = sharding.batch_divisor(mesh)
    return -(-batch // d) * d


def build(den, process, *, sampler: str, steps: int, spacing: str, batch: int, example_shape,
          guidance: dict | tuple | None = None, null_label: int | None = None, mesh=None,
          gather_params: bool = True, start_sigma: float | None = None) -> Program:
    """The jitted sampling program (see module doc). ``guidance`` is a resolved section (or its
    static part from ``guidance.split`` / ``guidance.prepare``; None: no guidance); ``null_label`` the null class of a
    class-conditional model (None: unconditional, labels are ignored). ``batch`` is rounded up to
    the mesh's batch shards (``Program.batch``). ``gather_params=False`` leaves the params as they
    come (for a model too large to replicate: each step then gathers what it needs, as the train
    step does). ``start_sigma``: start at that level from Analytic-Init (the call's ``start``
    moments) instead of the grid's top from the prior. Programs are cached: the same arguments
    return the same compiled function."""
    if guidance is None:
        guidance = guidance_lib.resolve("none")
    static = guidance if isinstance(guidance, tuple) else guidance_lib.split(guidance)[0]
    return _build(den, process, sampler, int(steps), spacing, padded_batch(int(batch), mesh),
                  tuple(example_shape), static, null_label, mesh, gather_params,
                  None if start_sigma is None else float(start_sigma))


@functools.lru_cache(maxsize=32)
def _build(den, process, sampler, steps, spacing, batch, example_shape, static, null_label, mesh,
           gather_params, start_sigma):
    sig = timesteps.sigmas(process, steps, spacing)
    if start_sigma is not None:
        sig = analytic_init.start_grid(sig, start_sigma)
    shape = (batch,) + example_shape
    ctx = guidance_lib.Context(null_label=null_label, sigmas=sig)
    rep = bsh = None
    if mesh is not None:
        from diffjax.training import sharding
        rep, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)

    def constrain(a, s):
        return a if s is None else jax.lax.with_sharding_constraint(a, s)

    def fn(params, key, labels, offset, gvals, knobs, gstate, extra, start):
        if gather_params:
            params = constrain(params, rep)      # FSDP-sharded params: gathered once, here
            gstate = constrain(gstate, rep)
        D = guidance_lib.apply(denoisers.bind(den, params), static, gvals, ctx, gstate)
        cond = {} if null_label is None else {"label": constrain(labels, bsh)}
        cond.update(constrain(extra or {}, bsh))
        cond = cond or None
        keys = constrain(samplers.example_keys(key, batch, offset), bsh)
        x_init = None
        if start_sigma is not None:
            if start is None:
                raise ValueError("a program built with start_sigma needs start={'mean', 'v0'}")
            x_init = constrain(analytic_init.analytic_init(keys, start["mean"], start["v0"],
                                                           start_sigma), bsh)
        elif start is not None:
            raise ValueError("start= (Analytic-Init) needs a program built with start_sigma")
        x = samplers.sample(sampler, D, sig, keys=keys, shape=shape, cond=cond, process=process,
                            x_init=x_init, **knobs).x
        return constrain(x, bsh)

    if mesh is None:
        jitted = jax.jit(fn)
    else:   # traced under the mesh, so the models' activation constraints resolve
        # (models/partitioning.py); params: wherever they are (replicated by load, FSDP-sharded
        # by the train step)
        fn = sharding.tracing_mesh(fn, mesh)
        jitted = jax.jit(fn, in_shardings=(None, rep, bsh, rep, rep, rep, None, bsh, rep),
                         out_shardings=bsh)
    return Program(fn=jitted, batch=batch, example_shape=example_shape, sigmas=sig, mesh=mesh,
                   guidance=static)
