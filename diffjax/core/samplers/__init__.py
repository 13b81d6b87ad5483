"""Samplers: registry, the high-level ``sample`` entry point, the public stepper, inversion.

    from diffjax.core import samplers, timesteps, processes
    sig = timesteps.sigmas(processes.get('edm'), 18, 'karras')
    out = samplers.sample('heun', D, sig, key=key, shape=(64, 32, 32, 3), cond={'label': y})
    out.x, out.nfe

Step by step (search, tree methods; see base.py): ``st = samplers.stepper('heun', D, sig)``,
``state = st.init(x_T)``, ``state = st.step(state, i, noise)``.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diffjax.core import processes as P
from diffjax.core.samplers.base import (Sampler, SampleResult, SamplerState, Stepper, example_keys,
                                        float_dtype, prior_noise, push, run, step_noise, stepper)
from diffjax.core.samplers.ddim import DDIM, DDPM, ancestral_split, ddim_step_deterministic
from diffjax.core.samplers.distilled import CONSISTENCY, DDIM_RENOISE
from diffjax.core.samplers.dpm_solver import DPMPP_2M, DPMPP_3M
from diffjax.core.samplers.edm import EULER, HEUN, PFGMPP_HEUN
from diffjax.core.samplers.evodiff import EVODIFF
from diffjax.core.samplers.flow import FLOW_EULER, FLOW_MIDPOINT
from diffjax.core.samplers.inversion import ddim_invert
from diffjax.core.samplers.unipc import UNIPC, UNIPC_3

__all__ = ["CONSISTENCY", "DDIM", "DDIM_RENOISE", "DDPM", "DPMPP_2M", "DPMPP_3M", "EULER", "EVODIFF", "FLOW_EULER", "FLOW_MIDPOINT",
           "HEUN", "PFGMPP_HEUN", "SAMPLERS", "UNIPC", "UNIPC_3", "Sampler", "SampleResult",
           "SamplerState", "Stepper", "ancestral_split", "ddim_invert", "ddim_step_deterministic",
           "example_keys", "float_dtype", "get", "prior", "prior_noise", "push", "run", "sample",
           "step_noise", "stepper"]

SAMPLERS = {s.name: s for s in (DDPM, DDIM, EULER, HEUN, DPMPP_2M, DPMPP_3M, UNIPC, UNIPC_3,
                                EVODIFF, FLOW_EULER, FLOW_MIDPOINT, PFGMPP_HEUN, CONSISTENCY,
                                DDIM_RENOISE)}


def get(name: str) -> Sampler:
    if isinstance(name, Sampler):
        return name
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]


def prior(keys: jax.Array, shape, sigma_max, D: float = math.inf, dtype=jnp.float32):
    """x_T for each example: sigma_max * N(0, I), or the PFGM++ prior R u with r = sigma_max sqrt(D).

    Compatibility wrapper over ``processes.Process.prior`` / ``processes.PFGMPP(D=D).prior``.
    """
    proc = P.Process() if math.isinf(D) else P.PFGMPP(D=D)
    return proc.prior(keys, shape, sigma_max, dtype)


def _process_name(cls) -> str:
    names = [k for k, v in P.PROCESSES.items() if v is cls]
    return names[0] if names else cls.__name__


def sample(sampler, denoiser, sigmas, *, key=None, keys=None, shape=None, x_init=None, cond=None,
           batch_offset=0, process: P.Process | None = None, return_trajectory: bool = False,
           dtype=None, **knobs) -> SampleResult:
    """Draw samples: x_T from the prior at sigmas[0] (unless x_init is given), then ``run``.

    The prior is ``process.prior`` (Gaussian sigma_max N(0, I) without a process; a PFGM++ process
    draws from the PFGM++ prior; sampler 'pfgmpp' requires one). Per-example keys are
    fold_in(key, batch_offset + b) unless ``keys`` is given; they are needed to draw x_T and by
    stochastic samplers, not for a deterministic sampler started from ``x_init``. ``dtype`` (default:
    x_init's, else float32; at least float32) is the dtype of x_T, grid, knobs and noise.
    """
    s = get(sampler)
    if x_init is None and shape is None:
        raise ValueError("pass shape=(B, ...) or x_init")
    if x_init is not None:
        x_init = jnp.asarray(x_init)
    dtype = float_dtype(None if x_init is None else x_init.dtype, dtype)
    batch = (x_init.shape if x_init is not None else shape)[0]
    stochastic = s.uses_noise(**knobs)
    if keys is None:
        if key is not None:
            keys = example_keys(key, batch, batch_offset)
        elif x_init is None:
            raise ValueError("pass key= (or per-example keys=) to draw x_T from the prior, "
                             "or pass x_init")
        elif stochastic:
            raise ValueError(f"sampler {s.name!r} is stochastic with these options: pass key= "
                             "(or per-example keys=)")
    if x_init is None:
        need = s.requires_process
        if need is not None and not isinstance(process, need):
            raise ValueError(f"sampler {s.name!r} draws x_T from the {need.__name__} prior: pass "
                             f"process=processes.get({_process_name(need)!r}, ...) (got "
                             f"{'no process' if process is None else repr(process.name)})")
        proc = process if process is not None else P.Process()
        x_init = proc.prior(keys, tuple(shape[1:]), jnp.asarray(sigmas)[0], dtype)
    return run(s, denoiser, x_init, sigmas, keys=keys if s.needs_noise else None, cond=cond,
               return_trajectory=return_trajectory, dtype=dtype, **knobs)
