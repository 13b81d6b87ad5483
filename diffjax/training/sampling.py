"""Sampling from a trained workdir: load the checkpoint, pick EMA params, guide, draw, save a grid.

    run = load(workdir)                               # config, model, denoiser, params by name
    x = generate(run, num=100, sampler='heun', steps=18, guidance=2.0, seed=0)
    save_grid(x, 'grid.png')

Class-conditional models are sampled with classifier-free guidance (Ho & Salimans 2022, in
guidance/cfg.py): D_w = D(x, sigma, null) + w (D(x, sigma, c) - D(x, sigma, null)); w = 1 is the plain
conditional model and skips the null branch. Labels default to 0, 1, ..., C-1, 0, 1, ... The
guidance scale is a traced argument: changing it never recompiles. Example i always uses the PRNG
key fold_in(key, i), so a sample does not depend on the batch size it was drawn in.

``settings(run, section, ...)`` resolves what a draw uses (each value given, else the run config's
``config.sample`` / ``config.eval`` default) and refuses what cannot work, naming where the value
came from: a non-positive count, an unknown sampler / spacing / parameter set, 'pfgmpp' on a run
that is not PFGM++, a guidance scale on an unconditional model. ``diffjax sample`` and ``evaluate``
print the result.
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
from diffjax.training import checkpoint, sharding
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
    """Restore the latest (or given) checkpoint of ``workdir`` onto the first local device.

    A ``step`` that was not saved is an error listing the steps that were."""
    config = config or load_config(workdir)
    info_path = os.path.join(workdir, "run.json")
    if not os.path.exists(info_path):
        raise FileNotFoundError(f"{info_path} not found: {workdir!r} is not a complete diffjax "
                                f"training workdir (run diffjax train --workdir {workdir} first)")
    with open(info_path, encoding="utf-8") as f:
        info = json.load(f)
    from diffjax.models import registry

    with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True) as ckpt:
        saved = sorted(ckpt.all_steps())
        if step is None:
            step = ckpt.latest_step()
        elif int(step) not in saved:
            have = (f"the saved steps are {', '.join(map(str, saved))} (default: the latest, "
                    f"{saved[-1]})" if saved else "none is saved yet (train first)")
            raise checkpoint.CheckpointError(f"no checkpoint at step {step} in {ckpt.directory}; "
                                             f"{have}")
        model = registry.build_model(config.model)
        mesh = sharding.make_mesh({"data": 1, "fsdp": 1}, jax.local_devices()[:1])
        cfg = ml_collections.ConfigDict(config.to_dict())
        # any batch works for restoring (the train step is only built, never run)
        cfg.batch_size = int(config.optim.accum_steps) * jax.process_count()
        cfg.optim.grad_slices = 1
        ts = step_lib.make_train_step(cfg, model, mesh, example_shape=tuple(info["example_shape"]))
        state = ckpt.restore(ts.abstract_state, step=step)
    params = {"params": state.params, **state.ema}
    return Run(config=config, model=model, den=ts.den, process=ts.process, params=params,
               step=int(step), num_classes=step_lib.num_classes(model),
               example_shape=tuple(info["example_shape"]))


def pick_params(params: dict, name: str):
    if name not in params:
        raise ValueError(f"unknown parameter set {name!r}; this run has {', '.join(sorted(params))} "
                         f"(set config.ema.decays / power_stds to train more averages)")
    return params[name]


# The defaults of a draw: setting -> key of config.sample / config.eval (evaluation's spacing and
# parameter set are the sample section's); seeds are not in the config.
DEFAULTS = {
    "sample": {"num": "sample.num", "sampler": "sample.sampler", "steps": "sample.steps",
               "spacing": "sample.spacing", "guidance": "sample.guidance",
               "params": "sample.params"},
    "eval": {"num": "eval.num_samples", "sampler": "eval.sampler", "steps": "eval.steps",
             "spacing": "sample.spacing", "guidance": "eval.guidance", "params": "sample.params"},
}
DEFAULT_SEED = {"sample": 0, "eval": 1234}


def _lookup(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def is_pfgmpp(process) -> bool:
    from diffjax.core import processes
    return isinstance(process, processes.PFGMPP)


def pfgmpp_error(process_name: str) -> str:
    """Why sampler 'pfgmpp' cannot sample a run whose process is ``process_name``."""
    return (f"sampler 'pfgmpp' draws from the PFGM++ prior and needs a PFGM++ run, but this run's "
            f"process is {process_name!r} (config.diffusion.process). Train one with "
            f"--config.diffusion.process=pfgmpp (augmentation dimension D: "
            f"--config.diffusion.process_kwargs=\"{{'D': 128}}\", 128 by default); on this run "
            f"use heun, the same solver with the Gaussian prior")


def param_names(config) -> list[str]:
    """The parameter sets a run with this training config has: 'params' and its EMA names."""
    from diffjax.training import ema

    return ["params"] + ema.names(config.ema)


def check_setting(name: str, value, origin: str | None = None, run: Run | None = None,
                  config=None):
    """Refuse a value of a draw setting that cannot work (ValueError naming ``origin``, e.g. the
    command-line flag or config key it came from). With ``run`` (or just its training ``config``,
    before loading it), also what depends on the run: the parameter sets, PFGM++."""
    origin = origin or name
    if run is not None:
        config = run.config
    if name in ("num", "steps"):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{origin} must be a positive integer, got {value!r}")
    elif name == "sampler":
        if value not in samplers.SAMPLERS:
            raise ValueError(f"{origin}: unknown sampler {value!r}; expected one of "
                             f"{', '.join(sorted(samplers.SAMPLERS))}")
        if value == "pfgmpp" and config is not None and not (
                is_pfgmpp(run.process) if run is not None else
                config.diffusion.process == "pfgmpp"):
            raise ValueError(f"{origin}: " + pfgmpp_error(config.diffusion.process))
    elif name == "spacing":
        if value not in timesteps.SPACINGS:
            raise ValueError(f"{origin}: unknown spacing {value!r}; expected one of "
                             f"{', '.join(timesteps.SPACINGS)}")
    elif name == "guidance":
        if not np.isfinite(float(value)):
            raise ValueError(f"{origin} must be a finite number, got {value!r}")
    elif name == "params":
        have = run.params if run is not None else param_names(config) if config else None
        if have is not None and value not in have:
            raise ValueError(f"{origin}: unknown parameter set {value!r}; this run has "
                             f"{', '.join(sorted(have))}")


def settings(run: Run, section: str = "sample", *, names: dict | None = None, **given) -> dict:
    """The settings a draw from ``run`` uses, checked: for each of num, sampler, steps, spacing,
    guidance, params and seed the value in ``given`` if not None, else the default of the run's
    config ``section`` ('sample' or 'eval', see ``DEFAULTS``). ``names`` maps a setting to how the
    caller calls it (e.g. ``{'num': '--num'}``) for the error messages. ``guidance`` is None for an
    unconditional model (there is nothing to guide; a guidance given for one is refused). Returns
    ``{setting: value, ..., 'checkpoint_step': run.step}``."""
    names = names or {}
    unknown = set(given) - set(DEFAULTS[section]) - {"seed"}
    if unknown:
        raise TypeError(f"settings() got unknown setting(s) {sorted(unknown)}")
    out = {}
    order = sorted(DEFAULTS[section].items(), key=lambda kv: given.get(kv[0]) is None)
    for name, key in order:  # the values given first: their mistakes are reported first
        value = given.get(name)
        if value is None:
            value = _lookup(run.config, key)
            origin = f"config.{key} of this run (the default of {names.get(name, name)})"
        else:
            origin = names.get(name, name)
        if name == "guidance":
            value = float(value)
            if not run.num_classes:
                if given.get(name) is not None and value != 1.0:
                    raise ValueError(f"{origin} {value:g}: this run's model is unconditional (no "
                                     f"classes), so there is nothing to guide; leave it out")
                out[name] = None
                continue
        elif name in ("num", "steps"):
            value = int(value) if isinstance(value, (int, np.integer)) else value
        check_setting(name, value, origin, run)
        out[name] = value
    out = {name: out[name] for name in DEFAULTS[section]}
    seed = given.get("seed")
    out["seed"] = DEFAULT_SEED[section] if seed is None else int(seed)
    out["checkpoint_step"] = run.step
    return out


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
    check_setting("num", num)
    check_setting("steps", steps)
    check_setting("sampler", sampler, run=run)
    params = pick_params(run.params, params_name or run.config.sample.params)
    spacing = spacing or run.config.sample.spacing
    check_setting("spacing", spacing)
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
    from diffjax.training import metrics  # clu -> tensorflow: seconds to import, only needed here

    return metrics.save_png(metrics.to_picture(samples, ncol), path, upscale=upscale)
