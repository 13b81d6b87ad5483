"""``UNet2D``: diffusers' ``UNet2DModel`` in Flax (the DDPM U-Net of Ho et al. 2020 and its ADM
variant, Dhariwal & Nichol 2021), field for field and parameter for parameter, on our denoiser
contract ``apply(v, x (B, H, W, C), noise_labels (B,), labels=None, context=None, *, train=False)``.

    x <- 2 x - 1 if center_input_sample;  t = noise_labels (diffusers' timesteps, floats)
    emb = linear_2(SiLU(linear_1(phi(t)))) [+ class_table(labels)]
      phi 'positional': [cos(t f), sin(t f)] (flip_sin_to_cos; else [sin, cos]),
                        f_j = 10000^(-j / (C0/2 - freq_shift)), C0 = block_out_channels[0]
      phi 'fourier':    [sin(2 pi log(t) w), cos(2 pi log(t) w)], w (C0,) (NCSN++, Song et al.
                        2021); the output is then divided by t, as diffusers does
    h = conv_in(x); skips = [h]
    down block i (DownBlock2D / AttnDownBlock2D / ResnetDownsampleBlock2D): layers_per_block x
        (resnet [+ attention]) then (not on the last level) a downsampler; every output is a skip
    mid block (UNetMidBlock2D): resnet, attention, resnet (``mid_block_scale_factor`` divides each)
    up block i (UpBlock2D / AttnUpBlock2D / ResnetUpsampleBlock2D): layers_per_block + 1 x
        (resnet(concat[h, skips.pop()]) [+ attention]) then (not on the last level) an upsampler
    out = conv_out(SiLU(GN(h)))
The blocks are ``models/resnet2d.py``. ``resnet_time_scale_shift`` 'default' adds W emb before the
second GroupNorm (DDPM), 'scale_shift' modulates after it (ADM); with 'scale_shift' the mid-block
attention has no GroupNorm unless ``attn_norm_num_groups`` is set (diffusers' rule).

Labels follow our contract: a table of ``num_classes + 1`` rows, the last the null class
(classifier-free guidance); ``labels=None`` means all null; ``num_classes=0`` is unconditional.
diffusers' ``num_class_embeds`` table has no null row: the converter appends a zero row, so the null
class is "no class embedding added" (which that model was never trained on).
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.embeddings import resolve_labels, sinusoidal_embedding
from diffjax.models.resnet2d import DownBlock2D, MidBlock2D, UpBlock2D, conv3
from diffjax.models.unet_blocks import GroupNorm

Dtype = Any
# diffusers block type -> (attention, resampler; None: the downsample_type / upsample_type field)
DOWN_BLOCKS = {
    "DownBlock2D": (False, "conv"),
    "AttnDownBlock2D": (True, None),
    "ResnetDownsampleBlock2D": (False, "resnet"),
}
UP_BLOCKS = {
    "UpBlock2D": (False, "conv"),
    "AttnUpBlock2D": (True, None),
    "ResnetUpsampleBlock2D": (False, "resnet"),
}
TIME_EMBEDDINGS = ("positional", "fourier")


def timestep_features(t: jax.Array, dim: int, flip_sin_to_cos: bool = True,
                      freq_shift: float = 0.0) -> jax.Array:
    """diffusers' ``get_timestep_embedding``: (B, dim), [cos, sin] if flip_sin_to_cos else
    [sin, cos]."""
    emb = sinusoidal_embedding(t, dim, freq_shift=freq_shift)   # [cos, sin] (+ a zero if dim odd)
    if flip_sin_to_cos:
        return emb
    half = dim // 2
    return jnp.concatenate([emb[:, half:2 * half], emb[:, :half], emb[:, 2 * half:]], axis=-1)


class FourierProjection(nn.Module):
    """diffusers ``GaussianFourierProjection`` (log=True, [sin, cos]); ``weight`` w ~ N(0, 16^2) is
    a frozen buffer there (requires_grad=False) and an ordinary parameter here."""

    features: int

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        w = self.param("weight", nn.initializers.normal(16.0), (self.features,), jnp.float32)
        proj = jnp.log(jnp.asarray(t, jnp.float32))[:, None] * w[None] * (2 * math.pi)
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class TimestepEmbedding(nn.Module):
    """linear_2(SiLU(linear_1(features)))."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, f: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.Dense(self.features, name="linear_1", **kw)(f.astype(self.dtype))
        return nn.Dense(self.features, name="linear_2", **kw)(nn.silu(h))


class UNet2D(nn.Module):
    """diffusers ``UNet2DModel`` (module docstring); defaults are diffusers' defaults."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: Sequence[int] = (224, 448, 672, 896)
    down_block_types: Sequence[str] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D",
                                       "AttnDownBlock2D")
    up_block_types: Sequence[str] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    layers_per_block: int = 2
    mid_block: bool = True                  # diffusers mid_block_type 'UNetMidBlock2D' (or None)
    mid_block_scale_factor: float = 1.0
    add_attention: bool = True              # the mid block's attention
    attention_head_dim: Optional[int] = 8   # None: one head over a block's channels
    attn_norm_num_groups: Optional[int] = None
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    resnet_time_scale_shift: str = "default"
    downsample_padding: int = 1
    downsample_type: str = "conv"           # AttnDownBlock2D's downsampler: 'conv' or 'resnet'
    upsample_type: str = "conv"             # AttnUpBlock2D's upsampler
    time_embedding_type: str = "positional"
    time_embedding_dim: Optional[int] = None   # None: 4 * block_out_channels[0]
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    center_input_sample: bool = False
    num_classes: int = 0
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        # a config read from JSON holds lists: modules are hashed (jit), so keep tuples
        for f in ("block_out_channels", "down_block_types", "up_block_types"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        super().__post_init__()

    def _check(self, x: jax.Array):
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(f"UNet2D: {len(self.down_block_types)} down and "
                             f"{len(self.up_block_types)} up block types for {n} "
                             f"block_out_channels; all three must have one entry per level")
        for kind, table in ((self.down_block_types, DOWN_BLOCKS), (self.up_block_types, UP_BLOCKS)):
            for t in kind:
                if t not in table:
                    raise ValueError(f"UNet2D: block type {t!r} is not supported; expected one of "
                                     f"{', '.join(table)}")
        if self.time_embedding_type not in TIME_EMBEDDINGS:
            raise ValueError(f"UNet2D: time_embedding_type {self.time_embedding_type!r} is not one "
                             f"of {TIME_EMBEDDINGS}")
        if x.ndim != 4:
            raise ValueError(f"UNet2D: x must be (B, H, W, C), got shape {x.shape}")
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"UNet2D: x has {x.shape[-1]} channels, in_channels is "
                             f"{self.in_channels}")
        factor = 2 ** (n - 1)
        if any(s % factor for s in x.shape[1:3]):
            raise ValueError(f"UNet2D: spatial shape {x.shape[1:3]} is not divisible by {factor} "
                             f"({n} levels)")

    def _embedding(self, noise_labels, labels, batch):
        c0 = self.block_out_channels[0]
        t = jnp.broadcast_to(jnp.asarray(noise_labels, jnp.float32), (batch,))
        if self.time_embedding_type == "fourier":
            f = FourierProjection(c0, name="time_proj")(t)
        else:
            f = timestep_features(t, c0, self.flip_sin_to_cos, self.freq_shift)
        dim = self.time_embedding_dim or 4 * c0
        emb = TimestepEmbedding(dim, self.dtype, self.param_dtype, name="time_embedding")(f)
        if self.num_classes:
            table = nn.Embed(self.num_classes + 1, dim, dtype=self.dtype,
                             param_dtype=self.param_dtype, name="class_embedding")
            emb = emb + table(resolve_labels(labels, batch, self.num_classes))
        return t, emb

    @nn.compact
    def __call__(self, x: jax.Array, noise_labels: jax.Array, labels: Optional[jax.Array] = None,
                 context: Optional[jax.Array] = None, *, train: bool = False) -> jax.Array:
        self._check(x)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        blk = dict(groups=self.norm_num_groups, eps=self.norm_eps, dropout=self.dropout,
                   time_embedding_norm=self.resnet_time_scale_shift, **kw)
        chans, n = tuple(self.block_out_channels), len(self.block_out_channels)
        h = x.astype(self.dtype)
        if self.center_input_sample:
            h = 2 * h - 1.0
        t, emb = self._embedding(noise_labels, labels, x.shape[0])

        h = conv3(chans[0], name="conv_in", **kw)(h)
        skips = [h]
        for i, kind in enumerate(self.down_block_types):
            attn, down = DOWN_BLOCKS[kind]
            down = (down or self.downsample_type) if i < n - 1 else None
            h, states = DownBlock2D(chans[i], self.layers_per_block, attn, self.attention_head_dim,
                                    downsample=down, downsample_padding=self.downsample_padding,
                                    name=f"down_blocks_{i}", **blk)(h, emb, train)
            skips.extend(states)

        if self.mid_block:
            scale_shift = self.resnet_time_scale_shift == "scale_shift"
            attn_groups = (self.attn_norm_num_groups if self.attn_norm_num_groups is not None
                           else None if scale_shift else self.norm_num_groups)
            h = MidBlock2D(attn_groups=attn_groups, head_dim=self.attention_head_dim or chans[-1],
                           add_attention=self.add_attention,
                           output_scale_factor=self.mid_block_scale_factor, name="mid_block",
                           **blk)(h, emb, train)

        m = self.layers_per_block + 1
        for i, kind in enumerate(self.up_block_types):
            attn, up = UP_BLOCKS[kind]
            up = (up or self.upsample_type) if i < n - 1 else None
            h = UpBlock2D(chans[n - 1 - i], m, attn, self.attention_head_dim, upsample=up,
                          name=f"up_blocks_{i}", **blk)(h, skips[-m:], emb, train)
            del skips[-m:]

        h = GroupNorm(self.norm_num_groups, self.norm_eps, self.dtype, self.param_dtype,
                      activation="silu", name="conv_norm_out")(h)
        out = conv3(self.out_channels, name="conv_out", **kw)(h).astype(jnp.float32)
        if self.time_embedding_type == "fourier":
            out = out / t[:, None, None, None]
        return out

