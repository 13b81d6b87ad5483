"""Improved precision and recall (Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric
for Assessing Generative Models"): k-nearest-neighbour estimates of the two feature manifolds.

For a set of features Phi, the manifold is the union of balls around each phi in Phi of radius
r_k(phi) = the distance to its k-th nearest neighbour in Phi other than itself (k = 3 in the paper):
    f(x, Phi) = 1 if |x - phi| <= r_k(phi) for some phi in Phi, else 0,
    precision = mean_{g in G} f(g, R),        recall = mean_{r in R} f(r, G),
for real features R and generated features G. Distances are Euclidean, computed in float32 as
|a|^2 - 2 a.b + |b|^2 (clipped at 0) in row batches of ``row_batch`` x all columns (memory
row_batch * N * 4 bytes), one compiled executable per (N, D). As in the reference implementation
(StyleGAN2-ADA's metrics/precision_recall.py), a point's own distance 0 is the first of its
k + 1 smallest, so duplicates count as neighbours.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

K = 3


def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
    """|a_i - b_j|^2 for a (M, D), b (N, D) -> (M, N), float32, >= 0."""
    d = (jnp.sum(a * a, -1)[:, None] - 2.0 * jnp.matmul(a, b.T, precision="highest")
         + jnp.sum(b * b, -1)[None, :])
    return jnp.maximum(d, 0.0)


@functools.partial(jax.jit, static_argnums=2)
def _kth(rows, cols, k):
    """Squared distance from each row to its k-th nearest column (the row itself is the 0-th)."""
    return -jax.lax.top_k(-_sq_dists(rows, cols), k + 1)[0][:, k]


@jax.jit
def _covered(rows, cols, radii2):
    """Whether each row lies in some column's ball: any_j |row - col_j|^2 <= radii2_j."""
    return jnp.any(_sq_dists(rows, cols) <= radii2[None, :], axis=1)


def _row_batches(fn, rows: np.ndarray, row_batch: int, *args) -> np.ndarray:
    n = len(rows)
    out = []
    for s in range(0, n, row_batch):
        r = rows[s:s + row_batch]
        if len(r) < row_batch and n > row_batch:   # pad the last batch: one executable
            r = np.concatenate([r, np.zeros((row_batch - len(r),) + r.shape[1:], r.dtype)])
        out.append(np.asarray(fn(jnp.asarray(r), *args))[:min(row_batch, n - s)])
    return np.concatenate(out)


def kth_radii(feats, k: int = K, row_batch: int = 1024) -> np.ndarray:
    """r_k(phi)^2 for every phi in ``feats`` (N, D): squared distance to its k-th neighbour."""
    f = np.asarray(feats, np.float32)
    if f.ndim != 2 or len(f) <= k:
        raise ValueError(f"k-NN radii with k={k} need features (N, D) with N > {k}, got shape "
                         f"{f.shape}")
    cols = jnp.asarray(f)
    return _row_batches(lambda r: _kth(r, cols, k), f, row_batch)


def coverage(points, manifold, radii2, row_batch: int = 1024) -> np.ndarray:
    """f(x, Phi) (bool, one per point) for the manifold of ``manifold`` with squared radii."""
    cols, r2 = jnp.asarray(manifold, jnp.float32), jnp.asarray(radii2, jnp.float32)
    return _row_batches(lambda r: _covered(r, cols, r2), np.asarray(points, np.float32), row_batch)


def precision_recall(real, fake, *, k: int = K, row_batch: int = 1024) -> dict:
    """{'precision', 'recall'} of generated features ``fake`` against ``real`` (both (N, D))."""
    real, fake = np.asarray(real, np.float32), np.asarray(fake, np.float32)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision_recall: features (N, D) of one dimension expected, got real "
                         f"{real.shape} and generated {fake.shape}")
    prec = coverage(fake, real, kth_radii(real, k, row_batch), row_batch)
    rec = coverage(real, fake, kth_radii(fake, k, row_batch), row_batch)
    return {"precision": float(prec.mean()), "recall": float(rec.mean())}
