"""Noise-level, class-label and position embeddings shared by every network.

Sinusoidal noise embedding (Vaswani et al. 2017; Ho et al. 2020; the DiT/ADM convention):
    f_j = exp(-ln(max_period) j / half),  emb(s) = [cos(s f), sin(s f)],  s = noise_label * scale.
Random Fourier features (Tancik et al. 2020; Song et al. 2021 NCSN++): fixed f ~ N(0, fourier_scale^2),
    emb(s) = [cos(2 pi s f), sin(2 pi s f)]  (frequencies are a fixed constant, not a parameter).
Class labels use a table with num_classes + 1 rows; row num_classes is the null class used by
classifier-free guidance (Ho & Salimans 2022). Training-time CEP (Chen et al. 2024, Eq. 8) perturbs
non-null class embeddings by ``diffjax.core.conditioning.cep_perturb``; null rows stay clean (our
choice: the unconditional branch models "no condition", which CEP does not corrupt).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.core.conditioning import cep_perturb
from diffjax.models.layers import normal002

Dtype = Any
NOISE_EMBEDDINGS = ("positional", "fourier")


def sinusoidal_embedding(s: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """[cos(s f), sin(s f)] with f_j = max_period^(-j/half); s (B,) -> (B, dim) float32."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(s, jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def fourier_embedding(s: jax.Array, dim: int, fourier_scale: float = 16.0, seed: int = 0) -> jax.Array:
    """Gaussian random Fourier features with frequencies fixed by ``seed`` (a constant, not a param)."""
    freqs = np.random.RandomState(seed).randn(dim // 2).astype(np.float32) * fourier_scale
    args = 2 * math.pi * jnp.asarray(s, jnp.float32)[:, None] * jnp.asarray(freqs)[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def noise_features(s: jax.Array, dim: int, kind: str = "positional", scale: float = 1.0) -> jax.Array:
    """Dispatch on ``kind``; ``scale`` multiplies the noise label first (e.g. 1000 for t in [0, 1])."""
    s = jnp.asarray(s, jnp.float32) * scale
    if s.ndim == 0:
        raise ValueError("noise_labels must have shape (B,), got a scalar")
    if kind == "positional":
        return sinusoidal_embedding(s, dim)
    if kind == "fourier":
        return fourier_embedding(s, dim)
    raise ValueError(f"unknown noise embedding {kind!r}; expected one of {NOISE_EMBEDDINGS}")


class TimestepEmbedder(nn.Module):
    """Noise label (B,) -> features(freq_dim) -> Dense(hidden) -> SiLU -> Dense(hidden) (DiT / ADM)."""

    hidden: int
    freq_dim: int = 256
    kind: str = "positional"
    scale: float = 1.0
    kernel_init: Any = normal002
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, noise_labels: jax.Array) -> jax.Array:
        f = noise_features(noise_labels, self.freq_dim, self.kind, self.scale).astype(self.dtype)
        dense = lambda name: nn.Dense(self.hidden, kernel_init=self.kernel_init, dtype=self.dtype,
                                      param_dtype=self.param_dtype, name=name)
        return dense("fc2")(nn.silu(dense("fc1")(f)))


def resolve_labels(labels: Optional[jax.Array], batch: int, num_classes: int) -> jax.Array:
    """Labels as int32 (B,); ``None`` means every example is the null class ``num_classes``."""
    if labels is None:
        return jnp.full((batch,), num_classes, jnp.int32)
    labels = jnp.asarray(labels)
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},), got {labels.shape}")
    return labels.astype(jnp.int32)


class LabelEmbedder(nn.Module):
    """Class id (B,) -> embedding (B, features); table has num_classes + 1 rows (last = null).

    With ``train=True`` and ``cep_gamma > 0`` the embedding of every non-null label is perturbed by
    CEP (Chen et al. 2024, Eq. 8) drawn from the 'cep' PRNG stream.
    """

    num_classes: int
    features: int
    cep_gamma: float = 0.0
    cep_kind: str = "uniform"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, labels: Optional[jax.Array], batch: int, train: bool = False) -> jax.Array:
        labels = resolve_labels(labels, batch, self.num_classes)
        emb = nn.Embed(self.num_classes + 1, self.features, embedding_init=normal002, dtype=self.dtype,
                       param_dtype=self.param_dtype, name="table")(labels)
        if train and self.cep_gamma > 0:
            perturbed = cep_perturb(self.make_rng("cep"), emb, self.cep_gamma, self.cep_kind)
            emb = jnp.where((labels == self.num_classes)[:, None], emb, perturbed)
        return emb


def sincos_1d(pos: np.ndarray, dim: int) -> np.ndarray:
    """[sin(pos w), cos(pos w)], w_j = 10000^(-j/(dim/2)) (Vaswani et al. 2017); (N,) -> (N, dim)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.asarray(pos, np.float64).reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(h: int, w: int, dim: int, scale: float = 1.0) -> jax.Array:
    """Fixed 2-D sin-cos position table (h*w, dim), row-major; half the channels per axis (MAE/DiT).

    ``scale`` divides positions (PixArt's lewei_scale / base-size rescaling of the grid).
    """
    if dim % 4:
        raise ValueError(f"sincos_2d needs dim divisible by 4, got {dim}")
    gy, gx = np.meshgrid(np.arange(h) / scale, np.arange(w) / scale, indexing="ij")
    emb = np.concatenate([sincos_1d(gy, dim // 2), sincos_1d(gx, dim // 2)], axis=1)
    return jnp.asarray(emb, jnp.float32)
