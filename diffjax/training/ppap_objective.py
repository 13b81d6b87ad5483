"""The ``ppap`` objective: data-free knowledge transfer from an off-the-shelf classifier to noise-range
experts (Go et al., CVPR 2023, "Towards practical plug-and-play diffusion models", Sec. 4).

Training starts from the clean classifier of ``teacher_workdir`` (``init_params``: its weights become
the frozen ``base``, each of the ``experts`` a LoRA copy of it, guidance/ppap.py). The data are
images the diffusion model generated itself (``diffjax sample --guidance 0 --npz gen.npz``; no
labels are used), x0. The batch is split evenly over the experts; expert i sees its examples at a
noise level drawn log-uniformly from its range [b_i, b_{i+1}] and learns to match the teacher on
the clean image, sharpened by the temperature T (their 0.25):

    L = mean_i E_{x0, sigma ~ range_i, eps} KL( softmax(f_T(x0) / T) || softmax(f_i(c_in (x0 + sigma eps))) )

with c_in = 1 / sqrt(sigma^2 + sigma_data^2) (the VP-scaled input the experts read at guidance).
Their code averages the KL over the 1000 classes (KL / C); this is the KL itself (a constant factor
on the learning rate). Only the experts train (the ``trainable`` mask): the adapters, the norms'
scales and biases and the conv biases. The experts train side by side in one run, not one after the
other continuing from the previous expert's weights as in their code (each starts from the base).
Logged: ``agreement``, the share of examples whose expert's argmax is the teacher's.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

from diffjax.guidance import ppap
from diffjax.guidance.classifier import classifier_inputs
from diffjax.training.objectives import Context, Objective, register


@functools.lru_cache(maxsize=4)
def _teacher(workdir: str, params: str, step: int):
    from diffjax import inference

    config = inference.load_config(workdir)
    name = params or config.sample.params
    run = inference.load(workdir, step=None if step < 0 else step, config=config, params=name)
    return run, jax.device_get(run.params[name])


def load_teacher(fields: dict, model):
    """The clean classifier's params (host arrays), checked against ``model``'s structure."""
    workdir = fields["teacher_workdir"]
    if not workdir:
        raise ValueError("objective 'ppap' distils an off-the-shelf classifier: set "
                         "config.objective.teacher_workdir to a run trained with "
                         "configs/digits_clean_classifier.py")
    if not os.path.isfile(os.path.join(workdir, "config.json")):
        raise ValueError(f"config.objective.teacher_workdir {workdir!r} is not a diffjax training "
                         f"workdir (no config.json); train the classifier there first: diffjax "
                         f"train --config configs/digits_clean_classifier.py --workdir {workdir}")
    run, params = _teacher(os.path.abspath(workdir), fields["teacher_params"],
                           int(fields["teacher_step"]))
    if getattr(run.model, "takes_noise_level", True):
        raise ValueError(f"config.objective.teacher_workdir {workdir!r} holds a "
                         f"{type(run.model).__name__}; PPAP starts from a clean-image classifier "
                         f"(config.model.name 'classifier')")
    if run.model != model:
        raise ValueError(f"config.model must be the teacher's model: the run in {workdir!r} has "
                         f"{run.model}, this config {model}; copy its config.model")
    return params


@register("ppap", new_param_structure=True, teacher_workdir="", teacher_params="", teacher_step=-1,
          experts=5, sigma_min=0.002, sigma_max=80.0, rank=4, alpha=4.0, temperature=0.25)
def ppap_objective(ctx: Context) -> Objective:
    f = ctx.fields
    n, rank = int(f["experts"]), int(f["rank"])
    edges = ppap.bounds(n, float(f["sigma_min"]), float(f["sigma_max"]))
    if getattr(ctx.model, "takes_noise_level", True):
        raise ValueError("objective 'ppap' fine-tunes a clean-image classifier: config.model.name "
                         "must be 'classifier' (the teacher's model)")
    teacher = load_teacher(f, ctx.model)
    model, alpha, temp = ctx.model, float(f["alpha"]), float(f["temperature"])
    sigma_data = float(ctx.config.diffusion.sigma_data)
    log_lo, log_hi = jnp.log(jnp.asarray(edges[:-1])), jnp.log(jnp.asarray(edges[1:]))
    apply = lambda p, x: model.apply({"params": p}, x)

    def init_params(key, params):
        if jax.tree.structure(params) != jax.tree.structure(teacher):
            raise ValueError("objective 'ppap': the teacher's params do not fit config.model")
        return ppap.init_experts(key, jax.tree.map(jnp.asarray, teacher), n, rank)

    def loss(params, extra, batch, key):
        x0 = batch["x"].astype(jnp.float32)
        b = x0.shape[0]
        if b % n:
            raise ValueError(f"objective 'ppap': the batch ({b}) must split evenly over the "
                             f"{n} experts (config.batch_size a multiple of "
                             f"config.objective.experts)")
        p_t = jax.nn.softmax(apply(params["base"], x0) / temp, axis=-1)
        k_s, k_n = jax.random.split(key)
        per = b // n
        u = jax.random.uniform(k_s, (n, per))
        sigma = jnp.exp(log_lo[:, None] + u * (log_hi - log_lo)[:, None])        # (n, per)
        xs = x0.reshape((n, per) + x0.shape[1:])
        noisy = xs + sigma.reshape(sigma.shape + (1,) * (x0.ndim - 1)) * jax.random.normal(
            k_n, xs.shape)
        x_in = classifier_inputs(noisy.reshape(x0.shape), sigma.reshape(-1), sigma_data)[0]
        logits = jax.vmap(lambda i, z: apply(ppap.expert(params, i, alpha), z))(
            jnp.arange(n), x_in.reshape(xs.shape)).reshape((b, -1))
        log_s = jax.nn.log_softmax(logits, axis=-1)
        per_ex = jnp.sum(p_t * (jnp.log(jnp.maximum(p_t, 1e-30)) - log_s), axis=-1)
        agree = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(p_t, -1))
        return jnp.mean(per_ex), {"loss_per_example": per_ex, "metrics": {"agreement": agree}}

    return Objective(loss=loss, init_params=init_params, trainable=ppap.trainable)
