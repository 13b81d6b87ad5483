"""Classifiers: a noise-conditioned one for classifier guidance, and a small clean one for metrics.

NoisyClassifier (Dhariwal & Nichol 2021, ADM Sec. 4, "EncoderUNetModel"): the encoder half and the
middle block of the ADM U-Net, conditioned on the noise label, then
    pool='attention': GN, SiLU, attention pooling (CLIP's AttentionPool2d: the mean token attends to
                      [mean; tokens] + learned positions) -> logits;
    pool='mean':      GN, SiLU, spatial mean -> Linear0 -> logits (needs >= 2 channels per GroupNorm
                      group: with one, each channel is normalized over space and its spatial mean
                      carries almost no information; small models want 'attention').
Classifier guidance uses grad_x log p(y | x_t, t) (ADM Eq. 10 / Algorithm 1).

Classifier: a small GroupNorm ResNet on clean images, ``apply(v, x) -> logits`` and
``apply(v, x, method='features')`` (or ``return_features=True``) -> penultimate features (B, F), the
embedding used by a Frechet-distance metric (Heusel et al. 2017) on small data sets. With
``activation='relu'`` it is the kind of off-the-shelf classifier EluCD guides with (Ma et al. 2024);
``apply(v, x, smooth=beta)`` then replaces every ReLU by Softplus_beta(z) = log(1 + exp(beta z)) /
beta (-> ReLU as beta -> inf), their calibration of its gradients; ``beta`` may be traced.
"""
from __future__ import annotations

from typing import Any, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax import kernels
from diffjax.models.embeddings import TimestepEmbedder
from diffjax.models.unet_blocks import AttentionBlock, Downsample, ResBlock, conv, group_norm

Dtype = Any
POOLS = ("attention", "mean")


class AttentionPool(nn.Module):
    """Attention pooling over (B, *spatial, C) -> (B, out); the query is the spatial mean token."""

    out_features: int
    num_head_channels: int = 64
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, ch = x.shape[0], x.shape[-1]
        tokens = x.reshape(b, -1, ch)
        tokens = jnp.concatenate([tokens.mean(1, keepdims=True), tokens], axis=1)
        pos_init = lambda k, s, dt: jax.random.normal(k, s, dt) / ch ** 0.5
        pos = self.param("pos_embed", pos_init, tokens.shape[1:], self.param_dtype)
        tokens = tokens + pos[None].astype(self.dtype)
        heads = max(1, ch // self.num_head_channels)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        qkv = nn.Dense(3 * ch, name="qkv", **kw)(tokens)
        q, k, v = einops.rearrange(qkv, "b l (three h d) -> three b l h d", three=3, h=heads)
        h = einops.rearrange(kernels.attention(q[:, :1], k, v), "b l h d -> b l (h d)")[:, 0]
        return nn.Dense(self.out_features, name="proj", **kw)(h)


class NoisyClassifier(nn.Module):
    """Time-conditioned encoder U-Net -> logits: ``apply(v, x, noise_labels, train=False)``."""

    predicts_labels = True   # labels are its output, not an input (training/step.example_inputs)

    num_classes: int = 10
    model_channels: int = 128
    channel_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.0
    num_heads: int = 1
    num_head_channels: int = 64
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    conv_resample: bool = True
    pool: str = "attention"
    noise_embedding: str = "positional"
    noise_label_scale: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, noise_labels: jax.Array, *, train: bool = False,
                 return_features: bool = False) -> jax.Array:
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; expected one of {POOLS}")
        nd, ch = x.ndim - 2, self.model_channels
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        emb = TimestepEmbedder(4 * ch, freq_dim=ch, kind=self.noise_embedding,
                               scale=self.noise_label_scale, kernel_init=nn.initializers.lecun_normal(),
                               name="time_embed", **kw)(noise_labels)
        res = lambda c, **a: ResBlock(c, self.dropout, self.use_scale_shift_norm, **a, **kw)
        attn = lambda: AttentionBlock(self.num_heads, self.num_head_channels, **kw)
        h = conv(ch, nd, name="conv_in", **kw)(x.astype(self.dtype))
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                h = res(mult * ch)(h, emb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attn()(h)
            if level != len(self.channel_mult) - 1:
                if self.resblock_updown:
                    h = res(h.shape[-1], down=True)(h, emb, train)
                else:
                    h = Downsample(h.shape[-1], self.conv_resample, **kw)(h)
        h = res(h.shape[-1])(h, emb, train)
        h = attn()(h)
        h = res(h.shape[-1])(h, emb, train)
        h = group_norm(h.shape[-1], self.dtype, "norm_out", activation="silu")(h)
        if return_features:
            return h.reshape(h.shape[0], -1, h.shape[-1]).mean(1).astype(jnp.float32)
        if self.pool == "attention":
            logits = AttentionPool(self.num_classes, self.num_head_channels, name="pool", **kw)(h)
        else:
            logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="pool",
                              **kw)(h.reshape(h.shape[0], -1, h.shape[-1]).mean(1))
        return logits.astype(jnp.float32)

    def features(self, x: jax.Array, noise_labels: jax.Array, *, train: bool = False) -> jax.Array:
        """Spatially pooled features before the pooling head (B, C)."""
        return self(x, noise_labels, train=train, return_features=True)


ACTIVATIONS = ("silu", "relu")


def softplus(z, beta):
    """Softplus_beta(z) = log(1 + exp(beta z)) / beta, overflow-safe; ReLU as beta -> inf."""
    return jax.nn.softplus(beta * z) / beta


class Classifier(nn.Module):
    """Clean-image GroupNorm ResNet: ``apply(v, x, train=False, smooth=None)`` -> logits
    (B, num_classes). ``smooth=beta`` (activation 'relu' only): Softplus_beta for every ReLU."""

    predicts_labels = True     # labels are its output (training/step.example_inputs)
    takes_noise_level = False  # apply(v, x): no noise-level input

    num_classes: int = 10
    channels: Sequence[int] = (32, 64, 128)
    num_res_blocks: int = 1
    dropout: float = 0.0
    activation: str = "silu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False,
                 smooth=None) -> jax.Array:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"classifier activation {self.activation!r}: expected one of "
                             f"{', '.join(ACTIVATIONS)}")
        if smooth is not None and self.activation != "relu":
            raise ValueError("classifier smooth=beta replaces ReLUs by Softplus_beta: it needs "
                             "activation='relu' (this classifier uses "
                             f"{self.activation!r}, already smooth)")
        if self.activation == "silu":
            act = None                                    # fused into the norms
        elif smooth is None:
            act = jax.nn.relu
        else:
            act = lambda z: softplus(z, jnp.asarray(smooth, z.dtype))
        nd = x.ndim - 2
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = conv(self.channels[0], nd, name="conv_in", **kw)(x.astype(self.dtype))
        for level, ch in enumerate(self.channels):
            if level:
                h = Downsample(ch, True, name=f"down_{level}", **kw)(h)
            for i in range(self.num_res_blocks):
                h = ResBlock(ch, self.dropout, name=f"res_{level}_{i}", act=act, **kw)(h, None, train)
        if act is None:
            h = group_norm(h.shape[-1], self.dtype, "norm_out", activation="silu")(h)
        else:
            h = act(group_norm(h.shape[-1], self.dtype, "norm_out")(h))
        feats = h.reshape(h.shape[0], -1, h.shape[-1]).mean(1)
        if return_features:
            return feats.astype(jnp.float32)
        return nn.Dense(self.num_classes, name="head", **kw)(feats).astype(jnp.float32)

    def features(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Penultimate (pooled) features (B, channels[-1]) for Frechet-distance metrics."""
        return self(x, train=train, return_features=True)
