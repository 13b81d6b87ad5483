"""Sampling from a trained workdir: load the checkpoint, pick EMA params, guide, draw, save a grid.

    run = load(workdir)                               # config, model, denoiser, params by name
    x = generate(run, num=100, sampler='heun', steps=18, guidance=2.0, seed=0)
    save_grid(x, 'grid.png')

Class-conditional models are sampled with classifier-free guidance (Ho & Salimans 2022, in
guidance/cfg.py): D_w = D(x, sigma, null) + w (D(x, sigma, c) - D(x, sigma, null)); w = 1 is the plain
conditional model and skips the null branch. Labels default to 0, 1, ..., C-1, 0, 1, ... The
guidance scale is a traced argument: changing it never recompiles. Example i always uses the PRNG
key fold_in(key, i), so a sample does not depend on the batch size it was drawn in.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffjax.core import denoisers, samplers, timesteps
from diffjax.guidance import cfg as cfg_guidance
from diffjax.training import checkpoint, metrics, sharding
from diffjax.training import step as step_lib


class Run(NamedTuple):
    config: ml_collections.ConfigDict
    model: Any
    den: Any               # den(params, x, sigma, cond) -> x0_hat
    process: Any
    params: dict           # {'params': ..., <ema name>: ...}
    step: int              # checkpoint step the params come from
    num_classes: int
    example_shape: tuple


def save_run_info(workdir: str, config, example_shape, num_classes: int):
    """Write config.json and run.json (shape of one example, number of classes) into the workdir."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=2))
    with open(os.path.join(workdir, "run.json"), "w", encoding="utf-8") as f:
        json.dump({"example_shape": list(example_shape), "num_classes": int(num_classes)}, f)


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir!r} is not a diffjax training workdir "
                                f"(run diffjax train --workdir {workdir} first)")
    with open(path, encoding="utf-8") as f:
        return ml_collections.ConfigDict(json.load(f))


def load(workdir: str, step: int | None = None, config=None) -> Run:
    """Restore the latest (or given) checkpoint of ``workdir`` onto the first local device."""
    config = config or load_config(workdir)
    with open(os.path.join(workdir, "run.json"), encoding="utf-8") as f:
        info = json.load(f)
    from diffjax.models import registry

    model = registry.build_model(config.model)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1}, jax.local_devices()[:1])
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.batch_size = int(config.optim.accum_steps)  # any size works for restoring
    cfg.optim.grad_slices = 1                         # (the train step is only built, never run)
    ts = step_lib.make_train_step(cfg, model, mesh, example_shape=tuple(info["example_shape"]))
    with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True) as ckpt:
        step = ckpt.latest_step() if step is None else step
        state = ckpt.restore(ts.abstract_state, step=step)
    params = {"params": state.params, **state.ema}
    return Run(config=config, model=model, den=ts.den, process=ts.process, params=params,
               step=int(step), num_classes=step_lib.num_classes(model),
               example_shape=tuple(info["example_shape"]))


def pick_params(params: dict, name: str):
    if name not in params:
        raise ValueError(f"unknown parameter set {name!r}; this run has {sorted(params)} "
                         f"(set config.ema.decays / power_stds to train more averages)")
    return params[name]


@functools.lru_cache(maxsize=16)
def _sample_fn(den, process, sampler: str, steps: int, spacing: str, shape: tuple,
               null_label: int | None, guided: bool):
    sig = timesteps.sigmas(process, steps, spacing)

    def fn(params, key, labels, guidance, offset):
        D = denoisers.bind(den, params)
        cond = None
        if null_label is not None:
            cond = {"label": labels}
            if guided:
                D = cfg_guidance.classifier_free(D, null_label, guidance)
        return samplers.sample(sampler, D, sig, key=key, shape=shape, cond=cond,
                               batch_offset=offset, process=process).x

    return jax.jit(fn)


def default_labels(num: int, num_classes: int) -> np.ndarray:
    return (np.arange(num) % max(num_classes, 1)).astype(np.int32)


def generate(run: Run, num: int, *, sampler: str = "heun", steps: int = 18, guidance: float = 1.0,
             seed: int = 0, labels=None, batch_size: int | None = None, params_name: str | None = None,
             spacing: str | None = None, clip: bool = True) -> np.ndarray:
    """``num`` samples (numpy, data range) in batches of ``config.sample.batch_size``.

    Labels default to ``default_labels``; the key of example i is fold_in(key(seed), i) whatever
    the batch size."""
    if sampler not in samplers.SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {sorted(samplers.SAMPLERS)}")
    params = pick_params(run.params, params_name or run.config.sample.params)
    spacing = spacing or run.config.sample.spacing
    batch_size = int(batch_size or run.config.sample.get("batch_size", 100))
    if run.num_classes:
        labels = default_labels(num, run.num_classes) if labels is None else np.asarray(labels)
    else:
        labels = np.zeros((num,), np.int32)
    null = run.num_classes if run.num_classes else None
    key = jax.random.key(seed)
    out = []
    for start in range(0, num, batch_size):
        b = min(batch_size, num - start)
        fn = _sample_fn(run.den, run.process, sampler, int(steps), spacing,
                        (b,) + tuple(run.example_shape), null, bool(null is not None and guidance != 1))
        x = fn(params, key, jnp.asarray(labels[start:start + b]), jnp.float32(guidance),
               jnp.int32(start))
        if not x.is_fully_addressable:  # several processes: every host gets the whole batch
            from jax.experimental import multihost_utils
            x = multihost_utils.process_allgather(x, tiled=True)
        out.append(np.asarray(jax.device_get(x)))
    x = np.concatenate(out)
    return np.clip(x, -1.0, 1.0) if clip and x.ndim == 4 else x


def save_grid(samples: np.ndarray, path: str, ncol: int | None = None, upscale: int = 2) -> str:
    """Write samples as one PNG (an image grid, or a density plot of 2-D points)."""
    return metrics.save_png(metrics.to_picture(samples, ncol), path, upscale=upscale)
