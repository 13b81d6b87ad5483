"""The 2-D blocks of diffusers' ``UNet2DModel`` and ``AutoencoderKL`` (Ho et al. 2020, DDPM;
Dhariwal & Nichol 2021, ADM; Rombach et al. 2022, LDM), parameter for parameter, channel-last.

ResnetBlock2D (diffusers ``models/resnet.py``), with e the time embedding (B, E) or None:
    h = conv1(resample(SiLU(GN1(x))))
    default:      h = SiLU(GN2(h + W SiLU(e)))                       (DDPM; no W without e)
    scale_shift:  h = SiLU(GN2(h) (1 + s) + b),  [s, b] = W SiLU(e)    (ADM)
    out = (shortcut(resample(x)) + conv2(dropout(h))) / output_scale_factor
  resample: nearest x2 (up) or 2x2 average pooling (down); shortcut: a 1x1 conv iff C_in != C_out.
Attention2D (diffusers ``Attention`` as ``_from_deprecated_attn_block``), over the H W tokens:
    h = GN(x) (no norm when ``norm_groups`` is None),  q, k, v = to_q(h), to_k(h), to_v(h)
    out = (x + to_out(softmax(q k^T / sqrt(d)) v)) / rescale_output_factor,  C // d heads of d.
Downsample2D: a stride-2 3x3 conv with ``padding`` p on every side, or, for p = 0 (the VAE encoder,
    DDPM's CIFAR-10 U-Net), zero padding on the bottom and right only; without a conv, 2x2 average
    pooling. Upsample2D: nearest x2, then a 3x3 conv.
MidBlock2D: ResnetBlock2D, Attention2D, ResnetBlock2D (``UNetMidBlock2D``).
DownBlock2D / UpBlock2D: ``num_layers`` x (ResnetBlock2D [+ Attention2D]) then the resampler: the
    U-Net's DownBlock2D, AttnDownBlock2D, ResnetDownsampleBlock2D, UpBlock2D, AttnUpBlock2D,
    ResnetUpsampleBlock2D and the VAE's DownEncoderBlock2D / UpDecoderBlock2D (no time embedding,
    no skips). An up block given skips concatenates [h, skip] before each resnet (last skip first).

Child names follow diffusers' module paths (``resnets_0`` for ``resnets.0``, ``to_out`` for
``to_out.0``), so the converters in ``diffjax/convert`` map keys one to one. Convs and GroupNorms
are ``unet_blocks.Conv`` / ``GroupNorm`` on ``diffjax.kernels`` (the CPU fast forms; the same
function as torch's within float32 rounding), attention is ``kernels.attention``.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax import kernels
from diffjax.models.layers import expand_like
from diffjax.models.unet_blocks import Conv, GroupNorm, downsample_avg, upsample_nearest

Dtype = Any
TIME_EMBEDDING_NORMS = ("default", "scale_shift")
RESAMPLERS = ("conv", "resnet", None)


def conv3(features: int, dtype: Dtype, param_dtype: Dtype, name: str, stride: int = 1,
          padding=((1, 1), (1, 1))) -> Conv:
    return Conv(features, (3, 3), strides=(stride, stride), padding=padding, dtype=dtype,
                param_dtype=param_dtype, name=name)


class ResnetBlock2D(nn.Module):
    """diffusers ``ResnetBlock2D`` (module docstring); ``__call__(x, temb=None, train=False)``."""

    out_channels: int
    groups: int = 32
    eps: float = 1e-6
    time_embedding_norm: str = "default"
    output_scale_factor: float = 1.0
    dropout: float = 0.0
    up: bool = False
    down: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: Optional[jax.Array] = None,
                 train: bool = False) -> jax.Array:
        if self.time_embedding_norm not in TIME_EMBEDDING_NORMS:
            raise ValueError(f"ResnetBlock2D: time_embedding_norm {self.time_embedding_norm!r} is "
                             f"not one of {TIME_EMBEDDING_NORMS}")
        out, kw = self.out_channels, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        gn = lambda name, act: GroupNorm(self.groups, self.eps, self.dtype, self.param_dtype,
                                         activation=act, name=name)
        h = gn("norm1", "silu")(x)
        if self.up:
            h, x = upsample_nearest(h), upsample_nearest(x)
        elif self.down:
            h, x = downsample_avg(h), downsample_avg(x)
        h = conv3(out, name="conv1", **kw)(h)
        scale_shift = self.time_embedding_norm == "scale_shift"
        if temb is not None:
            e = nn.Dense(2 * out if scale_shift else out, name="time_emb_proj", **kw)(nn.silu(temb))
            e = expand_like(e, h)
        elif scale_shift:
            raise ValueError("ResnetBlock2D: time_embedding_norm 'scale_shift' needs a time "
                             "embedding (temb is None)")
        if scale_shift:
            scale, shift = jnp.split(e, 2, axis=-1)
            h = nn.silu(gn("norm2", None)(h) * (1 + scale) + shift)
        else:
            h = gn("norm2", "silu")(h if temb is None else h + e)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv3(out, name="conv2", **kw)(h)
        if x.shape[-1] != out:
            x = Conv(out, (1, 1), name="conv_shortcut", **kw)(x)
        out = x + h
        return out if self.output_scale_factor == 1 else out / self.output_scale_factor


class Attention2D(nn.Module):
    """Self-attention over the spatial tokens (module docstring); ``head_dim`` d, C // d heads."""

    head_dim: int
    norm_groups: Optional[int] = 32
    eps: float = 1e-6
    rescale_output_factor: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, c = x.shape[0], x.shape[-1]
        heads = c // self.head_dim
        if heads < 1:
            raise ValueError(f"Attention2D: attention_head_dim {self.head_dim} exceeds the block's "
                             f"{c} channels")
        inner = heads * self.head_dim
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = x
        if self.norm_groups is not None:
            h = GroupNorm(self.norm_groups, self.eps, self.dtype, self.param_dtype,
                          name="group_norm")(h)
        h = h.reshape(-1, c)   # (B * L, C) rows: plain matmuls (unet_blocks.AttentionBlock)
        q, k, v = (nn.Dense(inner, name=n, **kw)(h).reshape(b, -1, heads, self.head_dim)
                   for n in ("to_q", "to_k", "to_v"))
        h = kernels.attention(q, k, v).reshape(-1, inner)
        h = nn.Dense(c, name="to_out", **kw)(h).reshape(x.shape)
        out = x + h
        return out if self.rescale_output_factor == 1 else out / self.rescale_output_factor


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv (bottom/right padding only when ``padding`` = 0), or 2x2 average pool."""

    out_channels: int
    padding: int = 1
    use_conv: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if not self.use_conv:
            return downsample_avg(x)
        p = self.padding
        pad = ((0, 1), (0, 1)) if p == 0 else ((p, p), (p, p))
        return conv3(self.out_channels, self.dtype, self.param_dtype, "conv", stride=2,
                     padding=pad)(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    out_channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return conv3(self.out_channels, self.dtype, self.param_dtype, "conv")(upsample_nearest(x))


class MidBlock2D(nn.Module):
    """diffusers ``UNetMidBlock2D``: resnets_0, attentions_0 (if ``add_attention``), resnets_1.
    ``output_scale_factor`` divides every resnet's and the attention's output."""

    groups: int = 32
    eps: float = 1e-6
    attn_groups: Optional[int] = 32      # None: the attention has no GroupNorm
    head_dim: int = 1
    add_attention: bool = True
    time_embedding_norm: str = "default"
    output_scale_factor: float = 1.0
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: Optional[jax.Array] = None,
                 train: bool = False) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        res = lambda i: ResnetBlock2D(x.shape[-1], self.groups, self.eps, self.time_embedding_norm,
                                      self.output_scale_factor, self.dropout, name=f"resnets_{i}",
                                      **kw)
        x = res(0)(x, temb, train)
        if self.add_attention:
            x = Attention2D(self.head_dim, self.attn_groups, self.eps, self.output_scale_factor,
                            name="attentions_0", **kw)(x)
        return res(1)(x, temb, train)


class _Block(nn.Module):
    """Fields shared by DownBlock2D and UpBlock2D."""

    out_channels: int
    num_layers: int
    attention: bool = False
    head_dim: Optional[int] = None       # None: one head of all channels
    groups: int = 32
    eps: float = 1e-6
    time_embedding_norm: str = "default"
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _check_resampler(self, value):
        if value not in RESAMPLERS:
            raise ValueError(f"{type(self).__name__}: resampler {value!r} is not one of "
                             f"{RESAMPLERS}")

    def _resnet(self, name: str, **kw) -> ResnetBlock2D:
        return ResnetBlock2D(self.out_channels, self.groups, self.eps, self.time_embedding_norm,
                             dropout=self.dropout, dtype=self.dtype, param_dtype=self.param_dtype,
                             name=name, **kw)

    def _attention(self, i: int) -> Attention2D:
        return Attention2D(self.head_dim or self.out_channels, self.groups, self.eps,
                           dtype=self.dtype, param_dtype=self.param_dtype, name=f"attentions_{i}")


class DownBlock2D(_Block):
    """Resnets (+ attentions), then ``downsample``: 'conv' (Downsample2D with
    ``downsample_padding``), 'resnet' (a down ResnetBlock2D) or None. Returns (h, states): states
    are the outputs of every layer and of the downsampler, the U-Net's skips."""

    downsample: Optional[str] = "conv"
    downsample_padding: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, temb: Optional[jax.Array] = None, train: bool = False):
        self._check_resampler(self.downsample)
        states = []
        for i in range(self.num_layers):
            x = self._resnet(f"resnets_{i}")(x, temb, train)
            if self.attention:
                x = self._attention(i)(x)
            states.append(x)
        if self.downsample == "conv":
            x = Downsample2D(self.out_channels, self.downsample_padding, dtype=self.dtype,
                             param_dtype=self.param_dtype, name="downsamplers_0")(x)
        elif self.downsample == "resnet":
            x = self._resnet("downsamplers_0", down=True)(x, temb, train)
        if self.downsample is not None:
            states.append(x)
        return x, tuple(states)


class UpBlock2D(_Block):
    """Resnets (+ attentions), then ``upsample``: 'conv' (Upsample2D), 'resnet' (an up
    ResnetBlock2D) or None. ``skips`` (num_layers arrays, or None for the VAE decoder) are consumed
    from the last: resnet i sees concat([h, skips[-1 - i]])."""

    upsample: Optional[str] = "conv"

    @nn.compact
    def __call__(self, x: jax.Array, skips: Optional[Sequence[jax.Array]] = None,
                 temb: Optional[jax.Array] = None, train: bool = False) -> jax.Array:
        self._check_resampler(self.upsample)
        if skips is not None and len(skips) != self.num_layers:
            raise ValueError(f"UpBlock2D: {len(skips)} skip connections for {self.num_layers} "
                             f"layers")
        for i in range(self.num_layers):
            if skips is not None:
                x = jnp.concatenate([x, skips[-1 - i].astype(x.dtype)], axis=-1)
            x = self._resnet(f"resnets_{i}")(x, temb, train)
            if self.attention:
                x = self._attention(i)(x)
        if self.upsample == "conv":
            x = Upsample2D(self.out_channels, dtype=self.dtype, param_dtype=self.param_dtype,
                           name="upsamplers_0")(x)
        elif self.upsample == "resnet":
            x = self._resnet("upsamplers_0", up=True)(x, temb, train)
        return x
