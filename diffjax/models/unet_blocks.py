"""Convolutional U-Net blocks (Ho et al. 2020, DDPM; Dhariwal & Nichol 2021, ADM), any spatial rank.

ResBlock (ADM, Appendix A), h = conv(SiLU(GN(x))) then, with the embedding e:
    scale-shift norm:  h = conv0(dropout(SiLU(GN(h) (1 + scale(e)) + shift(e))))
    additive (DDPM):   h = conv0(dropout(SiLU(GN(h + W e))))
    out = skip(x) + h,  conv0 zero-initialised so every block starts as its skip path.
BigGAN-style up/down ResBlocks resample both paths before the first conv. Attention over all spatial
positions with a zero-initialised output projection. Inputs are channel-last (B, *spatial, C).

``Conv`` and ``GroupNorm`` are nn.Conv and nn.GroupNorm (same function, same parameters) on
``diffjax.kernels``' ops, which pick forms XLA:CPU runs fast when lowering for CPU.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax import kernels
from diffjax.models.layers import expand_like

Dtype = Any
zeros = nn.initializers.zeros


def num_groups(channels: int, groups: int = 32) -> int:
    """The largest group count <= ``groups`` that divides ``channels`` (32 for published widths)."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


class GroupNorm(nn.Module):
    """Group normalization (Wu & He 2018) over (spatial, C / G); params ``scale``, ``bias`` (C,).

    ``activation='silu'`` returns SiLU(GN(x)) from the same kernels (its derivative folded into the
    norm's backward): one pass over the activations fewer each way, and nothing but x saved."""

    num_groups: int = 32
    epsilon: float = 1e-5
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32
    activation: Optional[str] = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(f"GroupNorm: {c} channels not divisible by {self.num_groups} groups")
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        return kernels.group_norm(x, scale, bias, self.num_groups, eps=self.epsilon,
                                  activation=self.activation,
                                  dtype=self.dtype or jnp.result_type(x, self.param_dtype))


def group_norm(channels: int, dtype: Dtype, name: Optional[str] = None, eps: float = 1e-5,
               activation: Optional[str] = None):
    return GroupNorm(num_groups=num_groups(channels), epsilon=eps, dtype=dtype, name=name,
                     activation=activation)


class Conv(nn.Module):
    """nn.Conv's function and parameters (``kernel`` (*k, C_in, C_out), ``bias``) on ``kernels.conv``;
    ``winograd``: the CPU form of 'same' 3x3 convs (a speed choice, same values)."""

    features: int
    kernel_size: Sequence[int]
    strides: Optional[Sequence[int]] = None
    padding: Optional[Sequence[Sequence[int]]] = None   # explicit (lo, hi) per axis; None = 0
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32
    winograd: bool = kernels.WINOGRAD

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init,
                            tuple(self.kernel_size) + (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return kernels.conv(x, kernel, self.strides, self.padding, winograd=self.winograd) + bias


def conv(features: int, ndim: int, kernel: int = 3, stride: int = 1, zero: bool = False,
         dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, name: Optional[str] = None):
    pad = kernel // 2
    return Conv(features, (kernel,) * ndim, strides=(stride,) * ndim, padding=[(pad, pad)] * ndim,
                kernel_init=zeros if zero else nn.initializers.lecun_normal(), dtype=dtype,
                param_dtype=param_dtype, name=name)


def upsample_nearest(x: jax.Array) -> jax.Array:
    """Nearest-neighbour x2 along every spatial axis of (B, *spatial, C)."""
    for axis in range(1, x.ndim - 1):
        x = jnp.repeat(x, 2, axis=axis)
    return x


def downsample_avg(x: jax.Array) -> jax.Array:
    nd = x.ndim - 2
    return nn.avg_pool(x, (2,) * nd, strides=(2,) * nd)


class Downsample(nn.Module):
    """Stride-2 3x3 conv (``use_conv``) or 2x average pooling."""

    out_channels: int
    use_conv: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.use_conv:
            return conv(self.out_channels, x.ndim - 2, 3, 2, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="conv")(x)
        return downsample_avg(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then (``use_conv``) a 3x3 conv."""

    out_channels: int
    use_conv: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = upsample_nearest(x)
        if self.use_conv:
            x = conv(self.out_channels, x.ndim - 2, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="conv")(x)
        return x


class ResBlock(nn.Module):
    """ADM / DDPM residual block; ``emb`` (B, E) may be None for an unconditional (classifier) net.
    ``act``: the activation after each norm, None = SiLU fused into the norm (the default), else a
    function (a classifier's ReLU or its Softplus smoothing, models/classifier.py)."""

    out_channels: int
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    up: bool = False
    down: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    act: Optional[Callable] = None

    @nn.compact
    def __call__(self, x: jax.Array, emb: Optional[jax.Array], train: bool = False) -> jax.Array:
        nd, out = x.ndim - 2, self.out_channels
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm_act = ((lambda c, name: group_norm(c, self.dtype, name, activation="silu"))
                    if self.act is None else
                    (lambda c, name: lambda v: self.act(group_norm(c, self.dtype, name)(v))))
        h = norm_act(x.shape[-1], "norm1")(x)
        if self.up or self.down:
            resample = upsample_nearest if self.up else downsample_avg
            h, x = resample(h), resample(x)
        h = conv(out, nd, name="conv1", **kw)(h)
        if emb is not None and self.use_scale_shift_norm:
            e = nn.Dense(2 * out, name="emb_proj", **kw)(nn.silu(emb))
            scale, shift = jnp.split(expand_like(e, h), 2, axis=-1)
            h = nn.silu(group_norm(out, self.dtype, "norm2")(h) * (1 + scale) + shift)
        else:
            if emb is not None:
                h = h + expand_like(nn.Dense(out, name="emb_proj", **kw)(nn.silu(emb)), h)
            h = norm_act(out, "norm2")(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv(out, nd, zero=True, name="conv2", **kw)(h)
        if x.shape[-1] != out:
            x = conv(out, nd, kernel=1, name="skip", **kw)(x)
        return x + h


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions: x + proj0(attn(qkv(GN(x)))) (DDPM / ADM).
    ``chunk_bytes``, ``chunk_bytes_grad``: the CPU attention's batch chunks (speed only)."""

    num_heads: int = 1
    num_head_channels: int = -1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    chunk_bytes: int = kernels.CHUNK_BYTES
    chunk_bytes_grad: int = kernels.CHUNK_BYTES_GRAD

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ch = x.shape[-1]
        heads = ch // self.num_head_channels if self.num_head_channels > 0 else self.num_heads
        if heads < 1:
            raise ValueError(f"attention over {ch} channels with num_head_channels = "
                             f"{self.num_head_channels} gives no head: set num_head_channels <= "
                             f"{ch} (or -1 to use num_heads)")
        if ch % heads:
            raise ValueError(f"attention channels {ch} not divisible by {heads} heads")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        # The projections see (B * L, C) rows: their kernel gradients then contract one axis, which
        # XLA:CPU runs as a plain matmul (over (B, L) it took a slower path, as the 1x1 Conv did).
        h = group_norm(ch, self.dtype, "norm")(x).reshape(-1, ch)
        qkv = nn.Dense(3 * ch, name="qkv", **kw)(h).reshape(x.shape[0], -1, 3 * ch)
        q, k, v = einops.rearrange(qkv, "b l (three h d) -> three b l h d", three=3, h=heads)
        h = kernels.attention(q, k, v, chunk_bytes=self.chunk_bytes,
                              chunk_bytes_grad=self.chunk_bytes_grad).reshape(-1, ch)
        h = nn.Dense(ch, kernel_init=zeros, name="proj", **kw)(h)
        return x + h.reshape(x.shape)
