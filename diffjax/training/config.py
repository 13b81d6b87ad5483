"""Every key the trainer reads, with defaults; ``configs/*.py`` start from ``base(...)`` and override.

Configs are locked by the CLI (``config_flags.DEFINE_config_file(..., lock_config=True)``), so an
override of a key that is not here (``--config.optim.lrr=1``) or of the wrong type fails and names
the key. Sections:
    data        passed to diffjax.data.registry.get_source (+ ``flip``: random horizontal flips)
    model       a models preset (registry.get_preset) with overrides; ``dtype='bfloat16'`` computes
                in bf16 while params (``param_dtype``) and the optimizer stay float32
    diffusion   process / parameterization / loss (core/losses.py make_loss arguments)
    objective   name: the training objective (training/objectives.py), plus that objective's fields
    optim       AdamW + warmup + cosine/constant, clipping, gradient accumulation (optim.py)
    ema         decays and EDM2 power-EMA widths (ema.py)
    mesh        ordered axes {'data': -1, 'fsdp': 1, 'tensor': 1} (fsdp may be 'auto': the largest
                size that shards every large array; data takes the rest); dcn_mesh: slices per
                axis for multi-slice runs; sharding: rules + min_size (sharding.py)
    checkpoint  every (optimizer steps), keep, async_save
    sample      periodic grids and the defaults of ``diffjax sample``; params: 'params' or an EMA name;
                batch_size: examples per sampling call (grids and evaluation share one compile)
    eval        FD + class accuracy (evaluation.py); every (0 = only at the end), at_end
    latent      vae: a converted AutoencoderKL folder (``diffjax convert``; a relative path is
                looked up in the workdir, then the current directory); set, the model trains on
                the latents ``diffjax encode`` caches from ``data`` and samples decode to images;
                unset: pixel space. cache: the cache directory (relative: in the workdir;
                default WORKDIR/latents); posterior: 'sample' (one fixed draw per image) or
                'mean'; batch_size: images per encoder call (latent/cache.py)
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def base(model_preset: str, **model_overrides) -> ml_collections.ConfigDict:
    """The full default config around a model preset (unlocked; the caller overrides fields)."""
    from diffjax.models import registry

    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 128
    c.log_every = 50

    c.data = ml_collections.ConfigDict(dict(name="digits", split="train", resolution=16,
                                            flip=False))

    model = registry.get_preset(model_preset)
    model.unlock()
    for k, v in model_overrides.items():
        if k not in model:
            raise ValueError(f"model preset {model_preset!r} has no field {k!r}")
        model[k] = v
    c.model = model

    c.diffusion = ml_collections.ConfigDict(dict(
        process="edm", process_kwargs=ml_collections.ConfigDict(), parameterization="edm",
        weighting="native", t_sampler="lognormal", p_mean=-1.2, p_std=1.2, sigma_data=0.5,
        min_snr_gamma=5.0, label_dropout=0.0,
        # the difficulty curriculum over t_sampler's quantiles (curriculum.py); clusters 0: off
        curriculum=ml_collections.ConfigDict(dict(clusters=0, patience=200, smoothing=0.99,
                                                  min_delta=0.0))))

    # the training objective (objectives.py); a method's config adds its own fields here
    c.objective = ml_collections.ConfigDict(dict(name="denoising"))

    c.optim = ml_collections.ConfigDict(dict(
        lr=1e-3, schedule="cosine", warmup_steps=100, end_lr_factor=0.0, b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=0.0, grad_clip=1.0, accum_steps=1, grad_slices=1))

    c.ema = ml_collections.ConfigDict(dict(decays=(0.999,), power_stds=(0.1,)))

    from diffjax.training import sharding

    # fsdp: an int, -1, or 'auto' (sharding.auto_fsdp); tensor: Megatron-style model parallelism
    c.mesh = ml_collections.ConfigDict({
        "data": -1, "fsdp": config_dict.FieldReference(1, field_type=object), "tensor": 1})
    c.dcn_mesh = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})
    c.sharding = ml_collections.ConfigDict(dict(rules=sharding.DEFAULT_RULES, min_size=2 ** 14))

    c.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=3, async_save=True))

    c.sample = ml_collections.ConfigDict(dict(
        every=0, num=100, batch_size=100, sampler="heun", steps=18, spacing="karras",
        guidance=ml_collections.ConfigDict(dict(name="classifier_free", scale=1.0)),
        params="power_0.1", max_batch=0))   # max_batch > 0: network calls on slices

    c.eval = ml_collections.ConfigDict(dict(
        every=0, at_end=True, num_samples=500, sampler="heun", steps=18,
        guidance=ml_collections.ConfigDict(dict(name="classifier_free", scale=1.0)),
        classifier="classifier_tiny", classifier_steps=500,
        classifier_resolution=config_dict.placeholder(int)))

    # fine-tuning: start the params from another (trained or converted) run's weights (init_from.py)
    c.init_from = ml_collections.ConfigDict(dict(workdir="", params="", step=-1))

    c.latent = ml_collections.ConfigDict(dict(vae=config_dict.placeholder(str),
                                              cache=config_dict.placeholder(str),
                                              posterior="sample", batch_size=64))
    return c


def distill_base(objective: str, **fields) -> ml_collections.ConfigDict:
    """The common part of ``configs/distill_*.py``: a config whose data, diffusion and model
    sections ``diffjax distill`` replaces by the teacher's (distill/student.py), the objective
    ``objective`` with ``fields``, no EMA (students are sampled with their trained weights), a
    checkpoint at the end, and no periodic grids."""
    c = base("unet_tiny16")
    c.objective = ml_collections.ConfigDict(dict(name=objective, teacher_workdir="", **fields))
    c.ema.decays = ()
    c.ema.power_stds = ()
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    c.sample.params = "params"
    c.sample.every = 0
    c.sample.num = 100
    return c


def sibling(config_file: str, name: str, arg=None) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of the config file ``name`` next to ``config_file`` (a config that
    builds on another: ``sibling(__file__, 'digits.py')``)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config {config_file!r} builds on {name!r}, which is not next "
                                f"to it ({path})")
    spec = importlib.util.spec_from_file_location(
        "diffjax_configs_" + os.path.splitext(name)[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)

