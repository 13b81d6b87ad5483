"""Drawing many samples from a Run: batches of the one sampling program, over the run's mesh.

    x = generate(run, 100, sampler='dpmpp_2m', steps=10, guidance=3.0, seed=0)   # numpy, [-1, 1]
    save_grid(x, 'grid.png')

Labels default to 0, 1, ..., C-1, 0, 1, ... Example i always uses the PRNG key fold_in(key(seed),
i), so a sample does not depend on the batch size or the number of devices it was drawn on. With
several processes every process passes the same arguments and gets the whole result.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

import jax
import jax.numpy as jnp

from diffjax import guidance as guidance_lib
from diffjax.core import denoisers
from diffjax.inference import program as program_lib
from diffjax.inference.loading import Run, pick_params
from diffjax.inference.draw_settings import check_setting, resolve_for


def default_labels(num: int, num_classes: int) -> np.ndarray:
    return (np.arange(num) % max(num_classes, 1)).astype(np.int32)


def global_arrays(tree, sharding_):
    """Global arrays from the same host values on every process (``sharding_`` None: as is)."""
    if sharding_ is None:
        return tree

    def one(x):
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding_, lambda idx: x[idx])

    return jax.tree.map(one, tree)


def program_for(run: Run, *, sampler: str, steps: int, spacing: str, batch: int,
                guidance=None, start_sigma: float | None = None) -> program_lib.Program:
    """The run's sampling program for these settings (``program.build``); ``guidance`` is a
    resolved section or its full static part (``guidance.prepare``)."""
    null = run.num_classes if run.num_classes else None
    return program_lib.build(run.den, run.process, sampler=sampler, steps=steps, spacing=spacing,
                             batch=batch, example_shape=run.example_shape, guidance=guidance,
                             null_label=null, mesh=run.mesh, start_sigma=start_sigma)


def analytic_start(run: Run, sigma: float, *, limit: int | None = None) -> dict:
    """Analytic-Init for ``generate(..., start=...)`` (core/analytic_init.py; Zhao et al. 2024):
    {'sigma', 'mean', 'v0'} with the moments of the run's training data (its first ``limit``
    examples; all by default), in the space the model samples."""
    from diffjax.core import analytic_init
    from diffjax.data import registry as data_registry
    from diffjax.data.arrays import source_arrays

    if run.vae is not None:
        raise ValueError("analytic_start: a latent run samples latents; compute their moments "
                         "(core.analytic_init.data_moments over encoded images) and pass "
                         "start={'sigma', 'mean', 'v0'} to generate")
    x, _ = source_arrays(data_registry.get_source(run.config.data), limit)
    mean, v0 = analytic_init.data_moments(x)
    return {"sigma": float(sigma), "mean": mean, "v0": v0}


def _check_start(run: Run, start: dict, sigmas) -> dict:
    if not isinstance(start, dict):
        raise ValueError(f"generate: start must be a dict {{'sigma', 'mean', 'v0'}} "
                         f"(inference.analytic_start builds it), got {type(start).__name__}")
    unknown = sorted(set(start) - {"sigma", "mean", "v0"})
    missing = sorted({"sigma", "mean", "v0"} - set(start))
    if unknown or missing:
        raise ValueError(f"generate: start needs exactly the keys sigma, mean, v0 (Analytic-Init; "
                         f"inference.analytic_start builds it); got {sorted(start)}")
    mean = np.asarray(start["mean"], np.float32)
    if mean.shape != tuple(run.example_shape):
        raise ValueError(f"generate: start['mean'] has shape {mean.shape}; expected one "
                         f"example's shape {tuple(run.example_shape)}")
    sigma, v0 = float(start["sigma"]), float(start["v0"])
    top = float(np.asarray(sigmas)[0])
    if not 0 < sigma <= top:
        raise ValueError(f"generate: start['sigma'] = {sigma:g} must be in (0, {top:g}] (the "
                         f"grid's top)")
    if not v0 >= 0:
        raise ValueError(f"generate: start['v0'] must be >= 0, got {v0}")
    return {"sigma": sigma, "mean": mean, "v0": np.float32(v0)}


def denoiser(run: Run, guidance=1.0, *, params_name: str | None = None,
             sigmas=None) -> Callable:
    """The run's denoiser D(x, sigma, cond) with ``guidance`` applied (a section, a number or a
    method name, as ``generate`` takes it), for code that drives the stepper itself (search,
    tree methods): ``cond`` is {'label': (B,)} for a class-conditional run (guidance scale 0: the
    unconditional model) or None. ``sigmas``: the grid it will run on, to check the guidance's
    settings against."""
    params = pick_params(run.params, params_name or run.config.sample.params)
    sec = resolve_for(run, guidance)
    if sigmas is not None:
        guidance_lib.check(sec, sigmas)
    if guidance_lib.get(sec["name"]).needs_cond:
        raise ValueError(f"guidance {sec['name']!r} needs per-example inputs "
                         f"({', '.join(guidance_lib.get(sec['name']).needs_cond)}): use "
                         f"inverse.restore")
    static, state = guidance_lib.prepare(sec, run)
    ctx = guidance_lib.Context(null_label=run.num_classes if run.num_classes else None,
                               sigmas=sigmas)
    return guidance_lib.apply(denoisers.bind(run.den, params), static,
                              guidance_lib.traced_values(sec), ctx, state)


def generate(run: Run, num: int, *, sampler: str = "heun", steps: int = 18, guidance=1.0,
             seed: int = 0, labels=None, batch_size: int | None = None, params_name: str | None = None,
             spacing: str | None = None, clip: bool = True, knobs: dict | None = None,
             cond: dict | None = None, prepared: tuple | None = None, first_index: int = 0,
             decode: bool = True, start: dict | None = None) -> np.ndarray:
    """``num`` samples (numpy, data range) in batches of ``config.sample.batch_size``.

    Examples are ``first_index .. first_index + num - 1``: example i draws from fold_in(key(seed),
    i) and defaults to label i mod C, so consecutive calls (or jobs) with first_index = 0, n, 2n...
    give the samples of one call with num = the total (EDM's fixed-seed protocol). A latent run
    (``run.vae``) returns decoded images, decoded on the mesh batch by batch; ``decode=False``
    returns the latents (unclipped).

    ``guidance``: a section, a number (classifier-free scale) or a method name
    (``guidance.resolve``); ignored by unconditional models. ``knobs``: the sampler's traced options
    (e.g. {'eta': 0.5}). Labels default to ``default_labels``. ``cond``: per-example conditioning
    besides the labels, {name: array (num, ...)} (an inverse problem's {'measurement': y}).
    ``prepared``: (static, state) for the guidance method instead of its ``prepare`` (e.g. a
    user's inverse.operators.Operator for 'steer' / 'dps'). ``start``: Analytic-Init,
    {'sigma', 'mean', 'v0'} (``analytic_start``): the sampler starts at that level from the
    Gaussian closest to the data's marginal there, on the grid below it."""
    from diffjax.training import sharding

    check_setting("num", num)
    check_setting("steps", steps)
    if int(first_index) < 0:
        raise ValueError(f"generate: first_index must be >= 0, got {first_index}")
    check_setting("sampler", sampler, run=run)
    params = pick_params(run.params, params_name or run.config.sample.params)
    spacing = spacing or run.config.sample.spacing
    check_setting("spacing", spacing)
    batch_size = int(batch_size or run.config.sample.get("batch_size", 100))
    if run.num_classes:
        labels = (default_labels(first_index + num, run.num_classes)[first_index:]
                  if labels is None else np.asarray(labels))
    else:
        labels = np.zeros((num,), np.int32)
    sec = resolve_for(run, guidance)
    from diffjax.core import timesteps
    grid = timesteps.sigmas(run.process, int(steps), spacing)
    guidance_lib.check(sec, grid)
    start_sigma = start_args = None
    if start is not None:
        start = _check_start(run, start, grid)
        start_sigma = start["sigma"]
    cond = {k: np.asarray(v) for k, v in (cond or {}).items()}
    for k, v in cond.items():
        if v.shape[:1] != (num,):
            raise ValueError(f"generate: cond[{k!r}] has shape {v.shape}; expected {num} examples "
                             f"(one per sample) along its first axis")
    missing = [k for k in guidance_lib.get(sec["name"]).needs_cond if k not in cond]
    if missing:
        raise ValueError(f"guidance {sec['name']!r} needs cond[{missing[0]!r}] for every sample "
                         f"(an inverse problem's measurement): draw it with diffjax restore / "
                         f"inverse.restore")
    if prepared is None:
        gstatic, gstate = guidance_lib.prepare(sec, run)
    else:
        gstatic, gstate = guidance_lib.split(sec, prepared[0])[0], prepared[1]
    gvals = guidance_lib.traced_values(sec)
    knobs = {k: jnp.float32(v) for k, v in (knobs or {}).items()}
    bsh = rep = None
    if run.mesh is not None:
        bsh, rep = sharding.batch_sharding(run.mesh), sharding.replicated(run.mesh)
    key, gvals, knobs = global_arrays((jax.random.key(seed), gvals, knobs), rep)
    if start is not None:
        start_args = global_arrays({"mean": start["mean"], "v0": start["v0"]}, rep)
    vae = run.vae if decode else None
    out = []
    for i0 in range(0, num, batch_size):
        b = min(batch_size, num - i0)
        prog = program_for(run, sampler=sampler, steps=int(steps), spacing=spacing, batch=b,
                           guidance=gstatic, start_sigma=start_sigma)
        lab = np.zeros((prog.batch,), np.int32)
        lab[:b] = labels[i0:i0 + b]
        extra = None
        if cond:
            extra = {k: np.zeros((prog.batch,) + v.shape[1:], v.dtype) for k, v in cond.items()}
            for k, v in cond.items():
                extra[k][:b] = v[i0:i0 + b]
            extra = global_arrays(extra, bsh)
        x = prog(params, key, global_arrays(lab, bsh),
                 global_arrays(np.int32(first_index + i0), rep), gvals, knobs, gstate, extra,
                 start_args)
        if vae is not None:
            x = vae.decode(x)
        if not x.is_fully_addressable:  # several processes: every host gets the whole batch
            from jax.experimental import multihost_utils
            x = multihost_utils.process_allgather(x, tiled=True)
        out.append(np.asarray(jax.device_get(x))[:b])
    x = np.concatenate(out)
    if run.vae is not None and not decode:
        return x
    return np.clip(x, -1.0, 1.0) if clip and x.ndim == 4 else x


def save_grid(samples: np.ndarray, path: str, ncol: int | None = None, upscale: int = 2) -> str:
    """Write samples as one PNG (an image grid, or a density plot of 2-D points)."""
    from diffjax.training import metrics  # clu -> tensorflow: seconds to import, only needed here

    return metrics.save_png(metrics.to_picture(samples, ncol), path, upscale=upscale)
