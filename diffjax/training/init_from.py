"""Fine-tuning: a new run's params start from another run's weights (``config.init_from``).

    config.init_from.workdir = 'runs/dit_xl2'    # a trained run, or a converted one (diffjax convert)
    config.init_from.params  = ''                # its parameter set ('' : its config.sample.params)
    config.init_from.step    = -1                # its checkpoint (-1: the latest)

Applied once, when the new workdir has no checkpoint yet: after the train state's init (and an
objective's ``init_params``), every leaf of the source's parameter set replaces the leaf at the same
path; leaves only the new network has (LoRA adapters, a guidance embedding) keep their init. A
source leaf the new network lacks, or of another shape, is an error naming it (the new config.model
must be the source's model: ``configs/finetune.py`` copies it). The EMAs start at the loaded
weights; the optimizer state is fresh (a converted run has none, and a trained run's moments belong
to its own objective and schedule). A resume reads the run's own checkpoint and ignores
``init_from``. The source's examples must have the new run's shape; the stacked (``scan_layers``)
and per-block layouts convert exactly (models/scan.py).

The source set is restored replicated over the train mesh, then placed by the train state's
shardings in one jitted call (for a model too large to replicate on one chip, restore into the
FSDP shardings instead: not built yet).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp

FIELDS = dict(workdir="", params="", step=-1)


def section(config) -> dict:
    """``config.init_from`` with defaults (configs without the section: no initialisation)."""
    sec = config.get("init_from", None) if hasattr(config, "get") else None
    out = dict(FIELDS)
    if sec is not None:
        got = dict(sec.to_dict() if hasattr(sec, "to_dict") else sec)
        unknown = sorted(set(got) - set(FIELDS))
        if unknown:
            raise ValueError(f"config.init_from has no field(s) {', '.join(unknown)}; its fields: "
                             f"{', '.join(FIELDS)}")
        out.update({k: v for k, v in got.items() if v is not None})
    return out


def merge(target, source, where: str):
    """``target`` with every leaf of ``source`` at the same path (extra target leaves kept); a
    source leaf missing from ``target`` or of another shape is a ValueError naming it."""
    flat_t = {jax.tree_util.keystr(k): v for k, v in
              jax.tree_util.tree_flatten_with_path(target)[0]}
    out = dict(flat_t)
    for k, v in jax.tree_util.tree_flatten_with_path(source)[0]:
        name = jax.tree_util.keystr(k)
        if name not in flat_t:
            raise ValueError(f"{where}: the source's parameter {name} has no place in the new "
                             f"network (config.model must be the source's model)")
        if tuple(flat_t[name].shape) != tuple(v.shape):
            raise ValueError(f"{where}: the source's parameter {name} has shape "
                             f"{tuple(v.shape)}, the new network's {tuple(flat_t[name].shape)}")
        out[name] = jnp.asarray(v, flat_t[name].dtype)
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(target)[0]]
    return jax.tree_util.tree_unflatten(jax.tree.structure(target), [out[p] for p in paths])


def load_source(sec: dict, model, example_shape, mesh):
    """The source run's parameter set, in ``model``'s layer layout, replicated over ``mesh``."""
    from diffjax import inference
    from diffjax.models import scan

    workdir = sec["workdir"]
    if not os.path.isfile(os.path.join(workdir, "config.json")):
        raise ValueError(f"config.init_from.workdir {workdir!r} is not a diffjax run directory (no "
                         f"config.json): train it, or convert released weights into it with "
                         f"diffjax convert --from diffusers DIR --workdir {workdir}")
    src_cfg = inference.load_config(workdir)
    info = inference.load_info(workdir)
    if tuple(info["example_shape"]) != tuple(example_shape):
        raise ValueError(f"config.init_from.workdir {workdir!r} was trained on examples of shape "
                         f"{tuple(info['example_shape'])}, this run's data gives "
                         f"{tuple(example_shape)}")
    name = sec["params"] or src_cfg.sample.params
    step = None if int(sec["step"]) < 0 else int(sec["step"])
    if "latent" in src_cfg:
        src_cfg.latent.vae = None                  # the weights only: the VAE is not loaded
    run = inference.load(workdir, step=step, config=src_cfg, params=name, mesh=mesh)
    return scan.to_model(run.params[name], model), run.step, name


def apply(ts, state, config, model, example_shape):
    """``state`` with its params (and EMAs) replaced by ``config.init_from``'s source; unchanged
    when the section names no workdir. Returns (state, summary dict or None)."""
    from diffjax.training import ema as ema_lib

    sec = section(config)
    if not sec["workdir"]:
        return state, None
    source, step, name = load_source(sec, model, example_shape, ts.mesh)
    params = merge(state.params, source, "config.init_from")
    names = ema_lib.names(config.ema)

    def start(st, p):
        p = jax.tree.map(lambda a: a.astype(jnp.float32), p)
        return st.replace(params=p, ema=ema_lib.init(p, names))

    state = jax.jit(start, out_shardings=ts.state_shardings, donate_argnums=0)(state, params)
    return state, dict(workdir=os.path.abspath(sec["workdir"]), params=name, step=step)
