"""A converted diffusers model as a diffjax run directory (``diffjax convert``).

    write_run(src, workdir)   src: a diffusers model folder or a pipeline folder

The run directory is what ``diffjax train`` leaves: ``config.json`` (the full training config:
``training.config.base`` with the converted model fields, the process read from the scheduler's
config, sampling defaults), ``run.json`` (the example shape and class count) and
``checkpoints/0`` holding the converted weights as the parameter set 'params' (no EMA: the released
weights are what is sampled). A pipeline's ``vae/`` is converted into ``workdir/vae`` and named in
``config.latent.vae``, so samples decode to images.

Scheduler (``scheduler/scheduler_config.json``; defaults: DDPM's linear betas, 1000 steps, eps):
    beta_schedule linear | scaled_linear | squaredcos_cap_v2  ->  vp_discrete linear | scaled_linear
    | cosine (diffusers' squaredcos_cap_v2 is Nichol & Dhariwal's alpha-bar with betas capped at
    0.999, the same table); prediction_type epsilon | v_prediction | sample -> eps | v | x0;
    timestep_spacing -> config.sample.spacing; steps_offset -> the process's steps_offset (the
    'leading' grid's shift, Stable Diffusion's 1).
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

from diffjax.convert import convert_model_dir
from diffjax.convert.state_dict import ConvertError

DENOISER_FOLDERS = ("transformer", "unet")
_BETAS = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
_PREDICTION = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
# the sampling defaults of a converted model (DiT's paper: 250 DDPM steps; 50 DDIM steps is the
# diffusers pipelines' default and keeps the first sample quick)
SAMPLE_DEFAULTS = dict(sampler="ddim", steps=50, num=16, batch_size=16)


def _folders(src: str) -> tuple[str, str | None, str | None]:
    """(denoiser folder, scheduler folder or None, vae folder or None) of a model or pipeline."""
    if not os.path.isdir(src):
        raise ConvertError(f"{src} is not a directory: point --from diffusers at a diffusers model "
                           f"or pipeline folder")
    if os.path.exists(os.path.join(src, "model_index.json")):
        found = [f for f in DENOISER_FOLDERS if os.path.isdir(os.path.join(src, f))]
        if not found:
            raise ConvertError(f"{src}/model_index.json names no {' or '.join(DENOISER_FOLDERS)} "
                               f"folder next to it")
        sub = lambda n: os.path.join(src, n) if os.path.isdir(os.path.join(src, n)) else None
        return os.path.join(src, found[0]), sub("scheduler"), sub("vae")
    return src, None, None


def _read_scheduler(folder: str | None) -> dict:
    if folder is None:
        return {}
    p = os.path.join(folder, "scheduler_config.json")
    if not os.path.exists(p):
        raise ConvertError(f"{folder} has no scheduler_config.json")
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def diffusion_fields(sched: dict) -> tuple[dict, dict]:
    """(config.diffusion fields, config.sample fields) of a diffusers scheduler config."""
    beta = sched.get("beta_schedule", "linear")
    if beta not in _BETAS:
        raise ConvertError(f"scheduler beta_schedule {beta!r} is not supported (diffjax has "
                           f"{', '.join(_BETAS)})")
    pred = sched.get("prediction_type", "epsilon")
    if pred not in _PREDICTION:
        raise ConvertError(f"scheduler prediction_type {pred!r} is not supported (diffjax has "
                           f"{', '.join(_PREDICTION)})")
    if sched.get("trained_betas") is not None:
        raise ConvertError("scheduler trained_betas (an explicit beta table) is not supported")
    kw = dict(num_train_steps=int(sched.get("num_train_timesteps", 1000)),
              beta_start=float(sched.get("beta_start", 1e-4)),
              beta_end=float(sched.get("beta_end", 0.02)), beta_schedule=_BETAS[beta],
              steps_offset=int(sched.get("steps_offset", 0) or 0))
    spacing = sched.get("timestep_spacing", "leading")
    if spacing not in ("linspace", "leading", "trailing"):
        raise ConvertError(f"scheduler timestep_spacing {spacing!r} is not supported")
    return (dict(process="vp_discrete", process_kwargs=kw, parameterization=_PREDICTION[pred],
                 weighting="native", t_sampler="uniform"), dict(spacing=spacing))


def training_config(model_fields: dict, diffusion: dict, sample: dict, vae: str | None = None):
    """The full training config of a converted run (``training.config.base`` around the model)."""
    import ml_collections

    from diffjax.models import registry
    from diffjax.training.config import base

    c = base(registry.list_presets()[0])    # the sections around the model; the model is ours
    name = model_fields["name"]
    model = {"name": name, "input_shape": None}
    for k, v in registry.model_fields(name).items():
        model[k] = np.dtype(v).name if k in registry.DTYPE_FIELDS and v is not None else v
    for k, v in model_fields.items():
        model[k] = tuple(v) if isinstance(v, list) else v
    if model["input_shape"] is None:
        raise ConvertError(f"{name}: config.json has no sample_size, so the example shape is "
                           f"unknown; add sample_size to it")
    c.model = ml_collections.ConfigDict(model)
    for k, v in diffusion.items():
        c.diffusion[k] = ml_collections.ConfigDict(v) if isinstance(v, dict) else v
    c.ema.decays, c.ema.power_stds = (), ()
    for k, v in {**SAMPLE_DEFAULTS, **sample, "params": "params"}.items():
        c.sample[k] = v
    c.eval.sampler, c.eval.steps = c.sample.sampler, c.sample.steps
    c.eval.at_end = False
    c.data = ml_collections.ConfigDict(dict(name="npz", path=ml_collections.config_dict.placeholder(
        str), resolution=ml_collections.config_dict.placeholder(int), flip=False))
    if vae is not None:
        c.latent.vae = vae
    return c


def _save_params(workdir: str, params: dict) -> None:
    import jax

    from diffjax.training import checkpoint

    tree = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
    with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False) as ckpt:
        ckpt.save(0, {"params": tree})
        ckpt.wait()


def write_run(src: str, workdir: str, *, scan_layers: bool | None = None,
              overwrite: bool = False) -> dict:
    """Convert ``src`` into the run directory ``workdir``; returns a summary (printed by the CLI)."""
    from diffjax.inference import loading
    from diffjax.models import registry, scan

    if os.path.exists(os.path.join(workdir, "config.json")) and not overwrite:
        raise ConvertError(f"{workdir} already holds a run (config.json); choose a new --workdir "
                           f"or pass --overwrite")
    model_dir, sched_dir, vae_dir = _folders(src)
    if _class_name(model_dir) == "AutoencoderKL":   # a VAE alone: its folder, not a run
        return write_vae(model_dir, workdir)
    den = convert_model_dir(model_dir)
    fields = dict(den.model_config)
    if scan_layers is not None:
        fields["scan_layers"] = bool(scan_layers)
    diffusion, sample = diffusion_fields(_read_scheduler(sched_dir))
    if overwrite and os.path.isdir(workdir):
        shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
    vae_rel = None
    if vae_dir is not None:
        write_vae(vae_dir, os.path.join(workdir, "vae"))
        vae_rel = "vae"
    config = training_config(fields, diffusion, sample, vae_rel)
    model = registry.build_model(config.model)
    params = scan.to_model(den.params, model)
    _check_tree(params, model, tuple(fields["input_shape"]))
    example_shape = tuple(fields["input_shape"])
    num_classes = int(fields.get("num_classes", 0) or 0)
    loading.save_run_info(workdir, config, example_shape, num_classes)
    _save_params(workdir, params)
    n = int(sum(np.size(a) for a in _leaves(params)))
    return dict(architecture=den.class_name, model=fields["name"], params=n,
                example_shape=example_shape, num_classes=num_classes,
                process=diffusion["process"], parameterization=diffusion["parameterization"],
                vae=vae_rel, workdir=workdir)


def _leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def _check_tree(params, model, example_shape) -> None:
    """The converted tree must be exactly the module's (same paths and shapes)."""
    from diffjax.models import registry

    what = registry.tree_mismatch(registry.param_shapes(model, example_shape), params)
    if what:
        raise ConvertError(f"converted params do not fit the diffjax model: {what}")


def _class_name(model_dir: str) -> str | None:
    from diffjax.convert.state_dict import read_config

    return read_config(model_dir).get("_class_name")


def write_vae(vae_dir: str, out: str) -> dict:
    """Convert an AutoencoderKL folder into ``out`` (``vae.json`` fields + ``params.safetensors``,
    ``latent.save_vae``)."""
    from diffjax.latent import save_vae

    conv = convert_model_dir(vae_dir)
    if conv.class_name != "AutoencoderKL":
        raise ConvertError(f"{vae_dir} is a {conv.class_name}, not an AutoencoderKL")
    save_vae(out, conv.model_config, conv.params)
    return dict(architecture=conv.class_name, out=out)
