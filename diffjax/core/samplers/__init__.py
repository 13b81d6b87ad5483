"""Samplers: registry, the high-level ``sample`` entry point, inversion.

    from diffjax.core import samplers, timesteps, processes
    sig = timesteps.sigmas(processes.get('edm'), 18, 'karras')
    out = samplers.sample('heun', D, sig, key=key, shape=(64, 32, 32, 3), cond={'label': y})
    out.x, out.nfe
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diffjax.core import pfgmpp
from diffjax.core import processes as P
from diffjax.core.samplers.base import (Sampler, SampleResult, SamplerState, example_keys,
                                        prior_noise, push, run, step_noise)
from diffjax.core.samplers.ddim import DDIM, DDPM, ancestral_split, ddim_step_deterministic
from diffjax.core.samplers.dpm_solver import DPMPP_2M, DPMPP_3M
from diffjax.core.samplers.edm import EULER, HEUN
from diffjax.core.samplers.evodiff import EVODIFF
from diffjax.core.samplers.flow import FLOW_EULER, FLOW_MIDPOINT
from diffjax.core.samplers.inversion import ddim_invert
from diffjax.core.samplers.unipc import UNIPC, UNIPC_3

SAMPLERS = {s.name: s for s in (DDPM, DDIM, EULER, HEUN, DPMPP_2M, DPMPP_3M, UNIPC, UNIPC_3,
                                EVODIFF, FLOW_EULER, FLOW_MIDPOINT)}
SAMPLERS["pfgmpp"] = HEUN  # PFGM++ = EDM Heun with the PFGM++ prior (Xu et al. 2023)


def get(name: str) -> Sampler:
    if isinstance(name, Sampler):
        return name
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]


def prior(keys: jax.Array, shape, sigma_max, D: float = math.inf, dtype=jnp.float32):
    """x_T for each example: sigma_max * N(0, I), or the PFGM++ prior R u with r = sigma_max sqrt(D)."""
    if math.isinf(D):
        return jnp.asarray(sigma_max, dtype) * prior_noise(keys, shape, dtype)
    draw = lambda k: pfgmpp.perturbation(jax.random.fold_in(k, 0), (1,) + tuple(shape),
                                         sigma_max, D)[0]
    return jax.vmap(draw)(keys).astype(dtype)


def sample(sampler, denoiser, sigmas, *, key=None, keys=None, shape=None, x_init=None, cond=None,
           batch_offset=0, process: P.Process | None = None, return_trajectory: bool = False,
           **knobs) -> SampleResult:
    """Draw samples: x_T from the prior at sigmas[0] (unless x_init is given), then ``run``.

    Per-example keys are fold_in(key, batch_offset + b) unless ``keys`` is given. A PFGM++ process
    (or sampler='pfgmpp' with process=PFGMPP(D=...)) draws x_T from the PFGM++ prior.
    """
    name = sampler if isinstance(sampler, str) else sampler.name
    s = get(sampler)
    if x_init is None and shape is None:
        raise ValueError("pass shape=(B, ...) or x_init")
    batch = (x_init.shape if x_init is not None else shape)[0]
    if keys is None:
        if key is None:
            raise ValueError("pass key= (or per-example keys=)")
        keys = example_keys(key, batch, batch_offset)
    if x_init is None:
        D_aug = process.D if isinstance(process, P.PFGMPP) else math.inf
        if name == "pfgmpp" and math.isinf(D_aug):
            raise ValueError("sampler 'pfgmpp' needs process=processes.get('pfgmpp', D=...)")
        x_init = prior(keys, tuple(shape[1:]), jnp.asarray(sigmas)[0], D_aug)
    return run(s, denoiser, x_init, sigmas, keys=keys if s.needs_noise else None, cond=cond,
               return_trajectory=return_trajectory, **knobs)
