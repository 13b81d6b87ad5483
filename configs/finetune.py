"""Fine-tune a trained or converted run on your data: the source's model, process and sampling
settings, its weights as the start (``config.init_from``, diffjax/training/init_from.py).

    diffjax train --config configs/finetune.py:runs/dit_xl2 --workdir runs/ft \
        --config.data.name=folder --config.data.path=my_images --config.total_steps=2000

The argument after ':' is the source run directory (``diffjax convert`` output, or a run
``diffjax train`` left). Everything the checkpoint depends on is the source's (config.model,
config.diffusion), so its params fit; the data, steps, optimizer and EMA are this run's: AdamW
1e-4 after a 100-step warmup (a small constant rate keeps what the model knows), one EMA (0.999),
checkpoints every 250 steps. A latent source keeps its VAE (named by its absolute path) and needs
the new data encoded once: ``diffjax encode --config configs/finetune.py:SRC --workdir runs/ft``.
A converted run names no data (``config.data.path`` unset): set it, or the trainer says so.
"""
import os

import ml_collections
from ml_collections import config_dict

from diffjax.training.config import base

COPIED = ("model", "diffusion", "data", "sample", "latent")


def _typed(section: dict, like) -> ml_collections.ConfigDict:
    """``section`` (read from JSON) as a ConfigDict whose unset (None) fields stay overridable from
    the command line: typed placeholders, of the default config's type where it has the field and
    str (a path) otherwise."""
    out = {}
    for k, v in section.items():
        if isinstance(v, dict):
            out[k] = _typed(v, like.get(k) if like is not None else None)
        elif v is None:
            ref = like.get(k) if like is not None else None
            out[k] = config_dict.placeholder(type(ref) if ref is not None else str)
        else:
            out[k] = v
    return ml_collections.ConfigDict(out)


def get_config(arg=None):
    if not arg:
        raise ValueError("configs/finetune.py needs the source run: --config "
                         "configs/finetune.py:SOURCE_WORKDIR")
    src = os.path.abspath(arg)
    path = os.path.join(src, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"configs/finetune.py: {src} is not a diffjax run directory (no "
                         f"config.json); convert released weights into it first (diffjax convert "
                         f"--from diffusers DIR --workdir {arg}) or train it")
    from diffjax import inference

    old = inference.load_config(src)
    c = base("unet_tiny16")
    for name in COPIED:
        if name in old:
            c[name] = _typed(old[name].to_dict(), c.get(name))
    if "objective" in old and old.objective.get("name", "denoising") != "denoising":
        raise ValueError(f"configs/finetune.py: {src} was trained with objective "
                         f"{old.objective.name!r}; fine-tuning continues the denoising objective "
                         f"from a denoiser run")
    vae = c.latent.get("vae")
    if vae and not os.path.isabs(vae) and os.path.exists(os.path.join(src, vae)):
        c.latent.vae = os.path.join(src, vae)      # the source's VAE, wherever the new run lives
    c.latent.cache = None                          # the new data's cache: this run's latents/
    c.init_from.workdir = src
    c.total_steps = 1000
    c.optim.lr = 1e-4
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 100
    c.ema.decays = (0.999,)
    c.ema.power_stds = ()
    c.sample.params = "decay_0.999"
    c.checkpoint.every = 250
    c.eval.sampler, c.eval.steps = c.sample.sampler, c.sample.steps
    c.eval.at_end = False
    return c
