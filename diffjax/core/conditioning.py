"""Condition handling shared by losses and models: label dropout and CEP.

Label dropout (Ho & Salimans 2022, classifier-free guidance) replaces a label by the null class with
probability p so that one network learns both D(x, sigma, c) and D(x, sigma, null).

Condition-embedding perturbation (CEP; Chen et al. 2024, "Slight Corruption in Pre-training Data
Makes Better Diffusion Models", Eq. 8) adds delta to the condition embedding c(y) during training:
    CEP-U: delta ~ U(-gamma/sqrt(d), gamma/sqrt(d))^d
    CEP-G: delta ~ N(0, s^2 I), s = gamma/sqrt(d) ('std', default) or sqrt(gamma/sqrt(d)) ('var').
The paper prints N(0, gamma/sqrt(d) I); whether that is a variance or a std is not pinned down by
released code, so both readings are offered. gamma = 1 is the paper's setting for every model.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

CEP_KINDS = ("uniform", "gaussian")


def drop_labels(key: jax.Array, labels: jax.Array, p: float | jax.Array, null_id: int) -> jax.Array:
    """Return labels with each entry replaced by ``null_id`` with probability ``p`` (CFG training)."""
    drop = jax.random.bernoulli(key, p, labels.shape)
    return jnp.where(drop, jnp.asarray(null_id, labels.dtype), labels)


def cep_perturb(key: jax.Array, emb: jax.Array, gamma: float | jax.Array, kind: str = "uniform",
                gaussian_scale: str = "std") -> jax.Array:
    """CEP: emb + delta with delta drawn per element as in Chen et al. 2024, Eq. 8.

    ``emb`` has shape (..., d); d = emb.shape[-1] sets the gamma/sqrt(d) scale.
    """
    if kind not in CEP_KINDS:
        raise ValueError(f"unknown CEP kind {kind!r}; expected one of {CEP_KINDS}")
    if gaussian_scale not in ("std", "var"):
        raise ValueError(f"gaussian_scale must be 'std' or 'var', got {gaussian_scale!r}")
    d = emb.shape[-1]
    bound = jnp.asarray(gamma, jnp.float32) / jnp.sqrt(jnp.float32(d))
    if kind == "uniform":
        delta = jax.random.uniform(key, emb.shape, jnp.float32, -1.0, 1.0) * bound
    else:
        scale = bound if gaussian_scale == "std" else jnp.sqrt(bound)
        delta = jax.random.normal(key, emb.shape, jnp.float32) * scale
    return emb + delta.astype(emb.dtype)
