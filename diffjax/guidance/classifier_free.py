"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser transform.

    D_w(x, sigma, c) = D(x, sigma, null) + w (D(x, sigma, c) - D(x, sigma, null))
w = 1 is the conditional model, w = 0 the unconditional one, 0 < w < 1 between them, w > 1 stronger,
w < 0 reverses the condition. The conditional and null branches run as one batched call (2B
examples) so the network sees one large batch. ``scale`` may be a traced value: changing it never
recompiles a jitted sampler. Registered as ``classifier_free`` (config.sample.guidance.name); at
scale 1 the registry skips it (no null branch).
"""
from __future__ import annotations

import jax.numpy as jnp

from diffjax.guidance.registry import Method, register


def _both(D, x, sigma, cond, null_label: int, label_key: str = "label"):
    """(D(x, sigma, c), D(x, sigma, null)) from one batched call of 2B examples."""
    if cond is None or label_key not in cond:
        raise ValueError(f"classifier-free guidance needs cond[{label_key!r}] (class labels)")
    labels = cond[label_key]
    b = x.shape[0]
    both = {k: (jnp.concatenate([v, v]) if getattr(v, "shape", ())[:1] == (b,) else v)
            for k, v in cond.items()}
    both[label_key] = jnp.concatenate([labels, jnp.full_like(labels, null_label)])
    s = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (b,))
    out = D(jnp.concatenate([x, x]), jnp.concatenate([s, s]), both)
    return out[:b], out[b:]


def classifier_free(D, null_label: int, scale, label_key: str = "label"):
    """Return D_w; ``cond[label_key]`` holds the class labels (B,)."""

    def guided(x, sigma, cond):
        c, u = _both(D, x, sigma, cond, null_label, label_key)
        return u + jnp.asarray(scale, c.dtype) * (c - u)

    return guided


register(Method(
    name="classifier_free",
    make=lambda D, ctx, scale: classifier_free(D, ctx.null_label, scale, ctx.label_key),
    fields=(("scale", 1.0),),
    needs_classes=True,
    identity=lambda f: f["scale"] == 1.0,
    help="classifier-free guidance (Ho & Salimans 2022) of a class-conditional run: "
         "D_w = D(null) + w (D(c) - D(null)); scale w: 1 = none, 0 = unconditional, 0 < w < 1 "
         "between, w > 1 stronger, w < 0 reverses the condition (needs "
         "--allow_negative_guidance)"))
