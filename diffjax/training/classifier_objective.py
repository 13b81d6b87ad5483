"""Classifier objectives: ``noisy_classifier`` and ``clean_classifier``.

The ``noisy_classifier`` objective: train a noise-conditioned classifier p(y | x, sigma) for
classifier guidance (Dhariwal & Nichol 2021, Sec. 4): cross-entropy on x = x0 + sigma eps with sigma
drawn as the diffusion model draws it (``config.diffusion.t_sampler``, e.g. EDM's log-normal), the
network fed ``guidance.classifier.classifier_inputs`` (the preconditioning guidance uses):

    L = E_{x0, y, sigma, eps} [ -log softmax(f(c_in(sigma) (x0 + sigma eps), log(sigma) / 4))_y ]

``config.model`` is the classifier (``noisy_classifier``); the train step, EMA, checkpoints and
resume are the diffusion model's. Logged: the batch accuracy.

The ``clean_classifier`` objective: cross-entropy on the clean data, L = E[-log softmax(f(x0))_y],
for a ``classifier`` model (no noise-level input) - the off-the-shelf classifier EluCD, GFCG and
PPAP guide with (guidance/elucd.py, gfcg.py, ppap.py; ``configs/digits_clean_classifier.py``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from diffjax.core import losses
from diffjax.guidance.classifier import classifier_inputs
from diffjax.training.objectives import Context, Objective, register


@register("noisy_classifier")
def noisy_classifier(ctx: Context) -> Objective:
    if not ctx.num_classes:
        raise ValueError("objective 'noisy_classifier' needs labels: set config.model.num_classes")
    d = ctx.config.diffusion
    draw_t = losses.time_sampler(d.t_sampler, ctx.process, p_mean=d.p_mean, p_std=d.p_std)
    model, process, sigma_data = ctx.model, ctx.process, float(d.sigma_data)

    def loss(params, extra, batch, key):
        if "label" not in batch:
            raise ValueError("objective 'noisy_classifier' needs batch['label']")
        x0 = batch["x"].astype(jnp.float32)
        k_t, k_n, k_d = jax.random.split(key, 3)
        sigma = process.sigma_tilde(draw_t(k_t, x0.shape[0]))
        x = x0 + sigma.reshape((-1,) + (1,) * (x0.ndim - 1)) * jax.random.normal(k_n, x0.shape)
        logits = model.apply({"params": params}, *classifier_inputs(x, sigma, sigma_data),
                             train=True, rngs={"dropout": k_d})
        per_ex = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return jnp.mean(per_ex), {"loss_per_example": per_ex, "metrics": {"accuracy": acc}}

    return Objective(loss=loss)


@register("clean_classifier")
def clean_classifier(ctx: Context) -> Objective:
    if not ctx.num_classes:
        raise ValueError("objective 'clean_classifier' needs labels: set config.model.num_classes")
    if getattr(ctx.model, "takes_noise_level", True):
        raise ValueError(f"objective 'clean_classifier' trains a clean-image classifier "
                         f"(config.model.name 'classifier'); {type(ctx.model).__name__} takes a "
                         f"noise level: use objective 'noisy_classifier' for it")
    model = ctx.model

    def loss(params, extra, batch, key):
        if "label" not in batch:
            raise ValueError("objective 'clean_classifier' needs batch['label']")
        logits = model.apply({"params": params}, batch["x"].astype(jnp.float32), train=True,
                             rngs={"dropout": key})
        per_ex = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return jnp.mean(per_ex), {"loss_per_example": per_ex, "metrics": {"accuracy": acc}}

    return Objective(loss=loss)
