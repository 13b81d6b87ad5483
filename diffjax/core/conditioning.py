"""Label dropout for classifier-free guidance (Ho & Salimans 2022).

Label dropout replaces a label by the null class with probability p so that one network learns both
D(x, sigma, c) and D(x, sigma, null). (The condition-embedding perturbation CEP belongs to the
networks' embeddings: ``diffjax.models.embeddings.cep_perturb``, fed by the 'cep' PRNG stream that
the loss provides.)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def drop_labels(key: jax.Array, labels: jax.Array, p: float | jax.Array, null_id: int) -> jax.Array:
    """Return labels with each entry replaced by ``null_id`` with probability ``p`` (CFG training)."""
    drop = jax.random.bernoulli(key, p, labels.shape)
    return jnp.where(drop, jnp.asarray(null_id, labels.dtype), labels)
