"""Noise-level, class-label, condition and position embeddings shared by every network; CEP.

Sinusoidal noise embedding (Vaswani et al. 2017; Ho et al. 2020; the DiT/ADM convention):
    f_j = exp(-ln(max_period) j / (half - freq_shift)),  emb(s) = [cos(s f), sin(s f)],
    s = noise_label * scale; freq_shift = 0 is DiT/ADM, 1 is diffusers' DiT port and DDPM U-Nets
    (their ``downscale_freq_shift``).
Random Fourier features (Tancik et al. 2020; Song et al. 2021 NCSN++): fixed f ~ N(0, fourier_scale^2),
    emb(s) = [cos(2 pi s f), sin(2 pi s f)]  (frequencies are a fixed constant, not a parameter).
Class labels use a table with num_classes + 1 rows; row num_classes is the null class used by
classifier-free guidance (Ho & Salimans 2022). The condition embedding of DiT, PixArt, DiCo and the
U-Net is c = t_emb(noise_label) [+ y_emb(label)] (``condition_embedding``).

Condition-embedding perturbation (CEP; Chen et al. 2024, "Slight Corruption in Pre-training Data
Makes Better Diffusion Models", Eq. 8) adds delta to the condition embedding c(y) during training:
    CEP-U: delta ~ U(-gamma/sqrt(d), gamma/sqrt(d))^d
    CEP-G: delta ~ N(0, s^2 I), s = gamma/sqrt(d) ('std', default) or sqrt(gamma/sqrt(d)) ('var').
The paper prints N(0, gamma/sqrt(d) I); whether that is a variance or a std is not pinned down by
released code, so both readings are offered. gamma = 1 is the paper's setting for every model. The
noise comes from the 'cep' PRNG stream (the training loss provides it). Null-class rows stay clean
(our choice: the unconditional branch models "no condition", which CEP does not corrupt).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models import partitioning
from diffjax.models.layers import normal002

Dtype = Any
NOISE_EMBEDDINGS = ("positional", "fourier")
CEP_KINDS = ("uniform", "gaussian")
# The fields of DiT, PixArt, DiCo and UNet that ``condition_embedding`` reads.
CONDITION_FIELDS = ("num_classes", "freq_dim", "freq_shift", "noise_embedding", "noise_label_scale",
                    "cep_gamma", "cep_kind", "guidance_embed", "kernel_init", "dtype", "param_dtype")


def sinusoidal_embedding(s: jax.Array, dim: int, max_period: float = 10000.0,
                         freq_shift: float = 0.0) -> jax.Array:
    """[cos(s f), sin(s f)] with f_j = max_period^(-j/(half - freq_shift)); s (B,) -> (B, dim)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
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


def noise_features(s: jax.Array, dim: int, kind: str = "positional", scale: float = 1.0,
                   freq_shift: float = 0.0) -> jax.Array:
    """Dispatch on ``kind``; ``scale`` multiplies the noise label first (e.g. 1000 for t in [0, 1]);
    ``freq_shift`` is the positional embedding's (module doc)."""
    s = jnp.asarray(s, jnp.float32) * scale
    if s.ndim == 0:
        raise ValueError("noise_labels must have shape (B,), got a scalar")
    if kind == "positional":
        return sinusoidal_embedding(s, dim, freq_shift=freq_shift)
    if kind == "fourier":
        return fourier_embedding(s, dim)
    raise ValueError(f"unknown noise embedding {kind!r}; expected one of {NOISE_EMBEDDINGS}")


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


def cep_labelled(key: jax.Array, emb: jax.Array, labels: jax.Array, null_id: int,
                 gamma: float | jax.Array, kind: str = "uniform") -> jax.Array:
    """CEP on the rows of emb (B, d) whose label is not the null class ``null_id``."""
    return jnp.where((labels == null_id)[:, None], emb, cep_perturb(key, emb, gamma, kind))


class TimestepEmbedder(nn.Module):
    """Noise label (B,) -> features(freq_dim) -> Dense(hidden) -> SiLU -> Dense(hidden) (DiT / ADM)."""

    hidden: int
    freq_dim: int = 256
    kind: str = "positional"
    scale: float = 1.0
    kernel_init: Any = normal002
    freq_shift: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, noise_labels: jax.Array) -> jax.Array:
        f = noise_features(noise_labels, self.freq_dim, self.kind, self.scale,
                           self.freq_shift).astype(self.dtype)
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
        table = nn.Embed(self.num_classes + 1, self.features, embedding_init=normal002,
                         dtype=self.dtype, param_dtype=self.param_dtype, name="table")
        emb = partitioning.lookup(table, labels, self.dtype)
        if train and self.cep_gamma > 0:
            emb = cep_labelled(self.make_rng("cep"), emb, labels, self.num_classes, self.cep_gamma,
                               self.cep_kind)
        return emb


class GuidanceEmbedder(nn.Module):
    """Guidance scale w (B,) -> sinusoid(1000 w) -> Dense -> SiLU -> Dense (zero init): the w input of
    a guidance-distilled student (Meng et al. 2023, stage 1; the LCM / diffusers w-embedding, which
    also scales w by 1000). The last layer starts at zero, so a student built from a teacher's
    weights starts as the teacher's conditional model for every w."""

    hidden: int
    freq_dim: int = 256
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, w: jax.Array) -> jax.Array:
        f = sinusoidal_embedding(jnp.asarray(w, jnp.float32) * 1000.0, self.freq_dim)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.silu(nn.Dense(self.hidden, kernel_init=normal002, name="fc1", **kw)(f.astype(self.dtype)))
        return nn.Dense(self.hidden, kernel_init=nn.initializers.zeros, name="fc2", **kw)(h)


def condition_embedding(model: nn.Module, features: int, noise_labels: jax.Array,
                        labels: Optional[jax.Array], train: bool = False, *, suffix: str = "",
                        names: tuple = ("t_embedder", "y_embedder"), guidance=None,
                        **fields) -> jax.Array:
    """c = t_emb(noise_labels) + y_emb(labels) [+ w_emb(guidance)] (B, features), y_emb only when
    num_classes > 0 (CEP on it in training), w_emb only when the model's ``guidance_embed`` is set
    (a guidance-distilled student; ``guidance`` None means w = 1, the conditional model): the
    condition of DiT (adaLN-Zero), PixArt, DiCo and the U-Net.

    Call it inside ``model``'s ``nn.compact`` method: the ``TimestepEmbedder`` and ``LabelEmbedder``
    become ``model``'s own children, named ``names`` + ``suffix`` (params t_embedder/fc1, fc2 and
    y_embedder/table). Their settings are ``model``'s fields named in ``CONDITION_FIELDS``, or
    ``fields`` where given (kernel_init defaults to N(0, 0.02^2), the DiT init; freq_shift to 0).
    """
    f = {"kernel_init": normal002, "freq_shift": 0.0}
    f.update({k: getattr(model, k) for k in CONDITION_FIELDS if hasattr(model, k)}, **fields)
    if set(f) != set(CONDITION_FIELDS):
        raise TypeError(f"condition_embedding: fields {sorted(set(f) ^ set(CONDITION_FIELDS))} "
                        f"unknown or missing")
    kw = dict(dtype=f["dtype"], param_dtype=f["param_dtype"])
    c = TimestepEmbedder(features, f["freq_dim"], f["noise_embedding"], f["noise_label_scale"],
                         f["kernel_init"], f["freq_shift"], name=names[0] + suffix, **kw)(noise_labels)
    if f["num_classes"] > 0:
        c = c + LabelEmbedder(f["num_classes"], features, f["cep_gamma"], f["cep_kind"],
                              name=names[1] + suffix, **kw)(labels, c.shape[0], train)
    if f["guidance_embed"]:
        w = jnp.ones((c.shape[0],), jnp.float32) if guidance is None else \
            jnp.broadcast_to(jnp.asarray(guidance, jnp.float32), (c.shape[0],))
        c = c + GuidanceEmbedder(features, f["freq_dim"], name="w_embedder" + suffix, **kw)(w)
    elif guidance is not None:
        raise ValueError(f"{type(model).__name__} got a guidance scale input but is not "
                         f"guidance-conditioned (set its guidance_embed field: a guidance-distilled "
                         f"student)")
    return c


def sincos_1d(pos: np.ndarray, dim: int) -> np.ndarray:
    """[sin(pos w), cos(pos w)], w_j = 10000^(-j/(dim/2)) (Vaswani et al. 2017); (N,) -> (N, dim)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.asarray(pos, np.float64).reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(h: int, w: int, dim: int, scale: float = 1.0) -> jax.Array:
    """Fixed 2-D sin-cos position table (h*w, dim), row-major over the grid; the first half of the
    channels encodes the column (x), the second the row (y): the MAE / DiT / PixArt table
    (``get_2d_sincos_pos_embed``, whose meshgrid(grid_w, grid_h) puts x first), so released weights
    see the positions they were trained with.

    ``scale`` divides positions (PixArt's lewei_scale / base-size rescaling of the grid).
    """
    if dim % 4:
        raise ValueError(f"sincos_2d needs dim divisible by 4, got {dim}")
    gy, gx = np.meshgrid(np.arange(h) / scale, np.arange(w) / scale, indexing="ij")
    emb = np.concatenate([sincos_1d(gx, dim // 2), sincos_1d(gy, dim // 2)], axis=1)
    return jnp.asarray(emb, jnp.float32)
