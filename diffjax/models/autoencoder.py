"""``AutoencoderKL``: diffusers' KL-regularised VAE (Kingma & Welling 2014; the latent space of
Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models", Sec. 3 and
App. G) in Flax, channel-last, parameter for parameter.

    encoder:  h = conv_in(x); per level: layers_per_block resnets, then (not on the last level) a
              stride-2 conv padded bottom/right only; mid block (resnet, attention, resnet);
              conv_out(SiLU(GN(h))) -> 2 * latent_channels
    moments = quant_conv(h) (a 1x1 conv; skipped without use_quant_conv) = [mean, logvar],
              logvar clipped to [-30, 20] (DiagonalGaussianDistribution)
    decoder:  z -> post_quant_conv (1x1; skipped without use_post_quant_conv) -> conv_in
              -> mid block -> per level (reversed): layers_per_block + 1 resnets, then (not on
              the last) nearest x2 + conv -> conv_out(SiLU(GN(h)))
Every GroupNorm has eps 1e-6, the attention one head over all channels (``models/resnet2d.py``).

The diffusion model sees scaled latents (LDM Sec. 4.3.2, D.1; SD3 / Flux add a shift):
    latents(x) = (z - shift_factor) * scaling_factor,  z = mean, or mean + exp(logvar / 2) n
    images(l)  = decode(l / scaling_factor + shift_factor)
``force_upcast`` (diffusers' hint that the VAE overflows in float16) computes in float32 whatever
``dtype`` says. ``encode`` / ``decode`` / ``__call__`` are module methods (``apply(v, x,
method='encode')``); ``latents(params, x, key=None)`` and ``images(params, z)`` are pure helpers
on an unbound module that call ``apply`` themselves.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.resnet2d import DownBlock2D, MidBlock2D, UpBlock2D, conv3
from diffjax.models.unet_blocks import Conv, GroupNorm

Dtype = Any
EPS = 1e-6
LOGVAR_RANGE = (-30.0, 20.0)


class _Coder(nn.Module):
    """Fields shared by Encoder and Decoder."""

    block_out_channels: Sequence[int]
    layers_per_block: int
    out_channels: int
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _mid(self, h):
        c = self.block_out_channels[-1]
        return MidBlock2D(self.norm_num_groups, EPS, self.norm_num_groups, c,
                          self.mid_block_add_attention, dtype=self.dtype,
                          param_dtype=self.param_dtype, name="mid_block")(h)

    def _out(self, h):
        h = GroupNorm(self.norm_num_groups, EPS, self.dtype, self.param_dtype, activation="silu",
                      name="conv_norm_out")(h)
        return conv3(self.out_channels, self.dtype, self.param_dtype, "conv_out")(h)


class Encoder(_Coder):
    """diffusers ``Encoder`` (double_z): x (B, H, W, C) -> (B, H / 2^(n-1), W / 2^(n-1), out)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        chans, n = tuple(self.block_out_channels), len(self.block_out_channels)
        h = conv3(chans[0], self.dtype, self.param_dtype, "conv_in")(x)
        for i, c in enumerate(chans):
            h, _ = DownBlock2D(c, self.layers_per_block, groups=self.norm_num_groups, eps=EPS,
                               downsample="conv" if i < n - 1 else None, downsample_padding=0,
                               dtype=self.dtype, param_dtype=self.param_dtype,
                               name=f"down_blocks_{i}")(h)
        return self._out(self._mid(h))


class Decoder(_Coder):
    """diffusers ``Decoder`` (group norm): z (B, h, w, latent) -> (B, h 2^(n-1), w 2^(n-1), out)."""

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        chans, n = tuple(self.block_out_channels), len(self.block_out_channels)
        h = self._mid(conv3(chans[-1], self.dtype, self.param_dtype, "conv_in")(z))
        for i, c in enumerate(reversed(chans)):
            h = UpBlock2D(c, self.layers_per_block + 1, groups=self.norm_num_groups, eps=EPS,
                          upsample="conv" if i < n - 1 else None, dtype=self.dtype,
                          param_dtype=self.param_dtype, name=f"up_blocks_{i}")(h)
        return self._out(h)


def _variables(params):
    """{'params': tree} from a params tree or from variables that already hold one."""
    return params if set(params) == {"params"} else {"params": params}


class AutoencoderKL(nn.Module):
    """diffusers ``AutoencoderKL`` (module docstring); defaults are diffusers' defaults."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: Sequence[int] = (64,)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    force_upcast: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        # a config read from JSON holds a list: modules are hashed (jit), so keep a tuple
        object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
        super().__post_init__()

    def setup(self):
        dt = self.compute_dtype
        kw = dict(norm_num_groups=self.norm_num_groups,
                  mid_block_add_attention=self.mid_block_add_attention, dtype=dt,
                  param_dtype=self.param_dtype)
        lat = self.latent_channels
        self.encoder = Encoder(self.block_out_channels, self.layers_per_block, 2 * lat, **kw)
        self.decoder = Decoder(self.block_out_channels, self.layers_per_block, self.out_channels,
                               **kw)
        one = lambda c: Conv(c, (1, 1), dtype=dt, param_dtype=self.param_dtype)
        self.quant_conv = one(2 * lat) if self.use_quant_conv else None
        self.post_quant_conv = one(lat) if self.use_post_quant_conv else None

    @property
    def compute_dtype(self):
        return jnp.float32 if self.force_upcast else self.dtype

    def encode(self, x: jax.Array):
        """x (B, H, W, in_channels) -> (mean, logvar), each (B, h, w, latent_channels) float32."""
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"AutoencoderKL.encode: x must be (B, H, W, {self.in_channels}), got "
                             f"shape {x.shape}")
        h = self.encoder(x.astype(self.compute_dtype))
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def decode(self, z: jax.Array) -> jax.Array:
        """z (B, h, w, latent_channels) (unscaled) -> images (B, H, W, out_channels) float32."""
        if z.ndim != 4 or z.shape[-1] != self.latent_channels:
            raise ValueError(f"AutoencoderKL.decode: z must be (B, h, w, {self.latent_channels}), "
                             f"got shape {z.shape}")
        z = z.astype(self.compute_dtype)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, x: jax.Array, key: Optional[jax.Array] = None) -> jax.Array:
        """decode(z), z the posterior mean, or a draw from it with ``key`` (diffusers' forward)."""
        mean, logvar = self.encode(x)
        return self.decode(sample_posterior(mean, logvar, key))

    def latents(self, params, x: jax.Array, key: Optional[jax.Array] = None) -> jax.Array:
        """(z - shift_factor) * scaling_factor, z the posterior mean (key None) or a draw."""
        mean, logvar = self.apply(_variables(params), x, method=AutoencoderKL.encode)
        return (sample_posterior(mean, logvar, key) - self.shift_factor) * self.scaling_factor

    def images(self, params, latents: jax.Array) -> jax.Array:
        """decode(latents / scaling_factor + shift_factor)."""
        z = jnp.asarray(latents, jnp.float32) / self.scaling_factor + self.shift_factor
        return self.apply(_variables(params), z, method=AutoencoderKL.decode)


def sample_posterior(mean: jax.Array, logvar: jax.Array, key: Optional[jax.Array] = None):
    """mean (key None), else mean + exp(logvar / 2) n with n ~ N(0, I) drawn from ``key``."""
    if key is None:
        return mean
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
