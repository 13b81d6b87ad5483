"""Loading a trained run for sampling: its config, process, denoiser and the parameter sets asked
for - restored alone from the orbax checkpoint, without building an optimizer or reading its state.

    run = load(workdir)                                  # the run's default parameter set
    run = load(workdir, params=["params", "power_0.1"], step=500, mesh=mesh)

The parameters are restored replicated over ``mesh`` (default: every device, one data axis), so a
checkpoint written on N devices loads on any device count, and on every process of a multi-host
run. ``Run`` is also what the trainer hands to its periodic sample grids (``from_state``).
"""
from __future__ import annotations

import json
import os
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections


class Run(NamedTuple):
    config: ml_collections.ConfigDict
    model: Any
    den: Any               # den(params, x, sigma, cond) -> x0_hat
    process: Any
    params: dict           # {'params': ..., <ema name>: ...}: the sets restored
    step: int              # checkpoint step the params come from
    num_classes: int
    example_shape: tuple
    mesh: Any = None       # where the params live; sampling runs over it (None: one device)
    vae: Any = None        # latent.Vae of a latent run (config.latent.vae): samples decode with it


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


def load_info(workdir: str) -> dict:
    path = os.path.join(workdir, "run.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir!r} is not a complete diffjax "
                                f"training workdir (run diffjax train --workdir {workdir} first)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def param_names(config) -> list[str]:
    """The parameter sets a run with this training config has: 'params' and its EMA names."""
    from diffjax.training import ema

    return ["params"] + ema.names(config.ema)


def pick_params(params: dict, name: str):
    if name not in params:
        raise ValueError(f"unknown parameter set {name!r}; this run has {', '.join(sorted(params))} "
                         f"(set config.ema.decays / power_stds to train more averages)")
    return params[name]


def default_mesh(devices: Sequence[Any] | None = None):
    """One data axis over ``devices`` (default: all devices of all processes)."""
    from diffjax.training import sharding

    devices = list(jax.devices() if devices is None else devices)
    return sharding.make_mesh({"data": len(devices), "fsdp": 1}, devices)


def abstract_params(model, example_shape, sharding_, config=None) -> Any:
    """ShapeDtypeStructs of the model's (float32) parameters, placed by ``sharding_``; with the
    run's ``config``, of what its objective trains (``Objective.init_params``, e.g. PPAP's)."""
    from diffjax.training import step as step_lib

    if config is not None:
        shapes = step_lib.param_shapes(config, model, example_shape)
    else:
        shapes = jax.eval_shape(lambda k: model.init(
            k, *step_lib.example_inputs(model, example_shape)), jax.random.key(0))["params"]
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32, sharding=sharding_),
                        shapes)


def load(workdir: str, step: int | None = None, config=None, *,
         params: str | Sequence[str] | None = None, mesh=None) -> Run:
    """Restore the parameter set(s) ``params`` (a name or names; default: the run's
    ``config.sample.params``; 'all': every set) of the latest (or given) checkpoint of ``workdir``,
    replicated over ``mesh``. A ``step`` that was not saved is an error listing the saved steps;
    an unknown parameter set is an error listing the run's."""
    from diffjax.models import registry
    from diffjax.training import checkpoint, sharding
    from diffjax.training import step as step_lib

    config = config or load_config(workdir)
    info = load_info(workdir)
    have = param_names(config)
    names = ([config.sample.params] if params is None else have if params == "all" else
             [params] if isinstance(params, str) else list(params))
    for n in names:
        if n not in have:
            raise ValueError(f"unknown parameter set {n!r}; this run has {', '.join(have)}")
    mesh = default_mesh() if mesh is None else mesh
    example_shape = tuple(info["example_shape"])
    model = registry.build_model(config.model)
    process = step_lib.make_process(config.diffusion)
    den = step_lib.make_denoiser(config, model, process, example_shape)
    # a config asking for the other layer layout (scan_layers) than the run saved: restore in the
    # saved layout, then convert (models/scan.py; exact)
    saved_model = model
    saved_cfg = load_config(workdir)
    if bool(saved_cfg.model.get("scan_layers", False)) != bool(config.model.get("scan_layers",
                                                                                False)):
        saved_model = registry.build_model(saved_cfg.model)
    tree = abstract_params(saved_model, example_shape, sharding.replicated(mesh), config)
    subset = {"params": tree} if "params" in names else {}
    emas = [n for n in names if n != "params"]
    if emas:
        subset["ema"] = {n: tree for n in emas}
    with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True) as ckpt:
        saved = sorted(ckpt.all_steps())
        if step is None:
            step = ckpt.latest_step()
        elif int(step) not in saved:
            have_steps = (f"the saved steps are {', '.join(map(str, saved))} (default: the latest, "
                          f"{saved[-1]})" if saved else "none is saved yet (train first)")
            raise checkpoint.CheckpointError(f"no checkpoint at step {step} in {ckpt.directory}; "
                                             f"{have_steps}")
        restored = ckpt.restore_subset(subset, step=step)
    out = {}
    if "params" in restored:
        out["params"] = restored["params"]
    out.update(restored.get("ema", {}))
    if saved_model is not model:
        from diffjax.models import scan
        out = {k: scan.to_model(v, model) for k, v in out.items()}
    return Run(config=config, model=model, den=den, process=process, params=out, step=int(step),
               num_classes=step_lib.num_classes(model), example_shape=example_shape, mesh=mesh,
               vae=run_vae(config, workdir, mesh, example_shape))


def run_vae(config, workdir: str | None, mesh, example_shape):
    """The VAE that decodes a latent run's samples (``config.latent.vae``), placed on ``mesh``;
    None for a pixel-space run. Its latents must have the run's example shape."""
    path = (config.get("latent") or {}).get("vae")
    if not path:
        return None
    from diffjax import latent

    vae = latent.load_vae(latent.find_vae(path, workdir))
    lat = vae.module.latent_channels
    if len(example_shape) != 3 or example_shape[-1] != lat:
        raise ValueError(f"config.latent.vae {vae.folder} decodes {lat}-channel latents but the "
                         f"run's examples have shape {tuple(example_shape)}")
    return vae.on_mesh(mesh)


def from_state(ts, state, config, num_classes: int, example_shape, vae=None) -> Run:
    """The Run of a live train state (the trainer's sample grids and evaluations): params and EMAs
    stay where the train step sharded them; sampling gathers them once per call. ``vae``: a
    latent run's VAE (``run_vae``)."""
    params = {"params": state.params, **state.ema}
    return Run(config=config, model=None, den=ts.den, process=ts.process, params=params,
               step=int(jax.device_get(state.step)), num_classes=num_classes,
               example_shape=tuple(example_shape), mesh=ts.mesh, vae=vae)
