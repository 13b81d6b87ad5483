"""U-Net denoisers of the DDPM / ADM family (Ho et al. 2020; Nichol & Dhariwal 2021; Dhariwal &
Nichol 2021, "Diffusion Models Beat GANs", Appendix A), for any spatial rank (images or sequences).

    emb = MLP(sinusoid(noise_label)) [+ class_table(label)]          (time_embed_dim = 4 ch)
    encoder: conv_in; per level: num_res_blocks x (ResBlock [+ Attention]), then down-sample;
    middle: ResBlock, Attention, ResBlock;
    decoder: per level (reversed): (num_res_blocks + 1) x (concat skip, ResBlock [+ Attention]),
             then up-sample; out = conv0(SiLU(GN(h))).
Attention runs where the current spatial size is in ``attn_resolutions`` (absolute sizes, e.g. (16,)
for a 32x32 input). DDPM = additive embedding + conv resampling; ADM = scale-shift norm, BigGAN
up/down ResBlocks, 64-channel heads. ``mask_channels`` > 0 concatenates an observed-mask input.
``remat`` rematerializes every ResBlock and attention block (models/remat.py). The U-Net has no
scan form: its blocks change width and resolution from one to the next.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models import remat as remat_lib
from diffjax.models.embeddings import condition_embedding
from diffjax.models.unet_blocks import (AttentionBlock, Downsample, ResBlock, Upsample, conv,
                                        group_norm)

Dtype = Any


class UNet(nn.Module):
    """ADM/DDPM U-Net. ``apply(v, x, noise_labels, labels=None, context=None, *, mask=None, train)``."""

    model_channels: int = 128
    channel_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.0
    num_heads: int = 1
    num_head_channels: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    conv_resample: bool = True
    num_classes: int = 0
    learn_sigma: bool = False
    out_channels: Optional[int] = None
    mask_channels: int = 0
    noise_embedding: str = "positional"
    noise_label_scale: float = 1.0
    cep_gamma: float = 0.0
    cep_kind: str = "uniform"
    guidance_embed: bool = False      # a guidance-distilled student: w enters the condition
    remat: str = "none"               # per-block rematerialization policy (models/remat.py)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _out_channels(self, in_channels: int) -> int:
        out = self.out_channels or in_channels
        return 2 * out if self.learn_sigma else out

    def _check_input(self, x: jax.Array):
        factor = 2 ** (len(self.channel_mult) - 1)
        if any(s % factor for s in x.shape[1:-1]):
            raise ValueError(f"spatial shape {x.shape[1:-1]} not divisible by {factor} "
                             f"({len(self.channel_mult)} levels)")

    @nn.compact
    def __call__(self, x: jax.Array, noise_labels: jax.Array, labels: Optional[jax.Array] = None,
                 context: Optional[jax.Array] = None, *, mask: Optional[jax.Array] = None,
                 train: bool = False, return_intermediates: bool = False,
                 guidance: Optional[jax.Array] = None) -> jax.Array:
        if return_intermediates:
            raise ValueError("UNet has no per-layer shared output head; return_intermediates is "
                             "supported by dit, pixart, dico and dimr")
        self._check_input(x)
        nd, ch = x.ndim - 2, self.model_channels
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        out_ch = self._out_channels(x.shape[-1])
        h = x.astype(self.dtype)
        if self.mask_channels:
            if mask is None:
                mask = jnp.zeros(x.shape[:-1] + (self.mask_channels,), self.dtype)
            h = jnp.concatenate([h, mask.astype(self.dtype)], axis=-1)

        emb = condition_embedding(self, 4 * ch, noise_labels, labels, train, freq_dim=ch,
                                  kernel_init=nn.initializers.lecun_normal(),
                                  names=("time_embed", "label_embed"), guidance=guidance)

        Res = remat_lib.wrap(ResBlock, self.remat, (3,))
        Attn = remat_lib.wrap(AttentionBlock, self.remat)
        res = lambda c, **a: Res(c, self.dropout, self.use_scale_shift_norm, **a, **kw)
        attn = lambda: Attn(self.num_heads, self.num_head_channels, **kw)
        h = conv(ch, nd, name="conv_in", **kw)(h)
        hs = [h]
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                h = res(mult * ch)(h, emb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attn()(h)
                hs.append(h)
            if level != len(self.channel_mult) - 1:
                if self.resblock_updown:
                    h = res(h.shape[-1], down=True)(h, emb, train)
                else:
                    h = Downsample(h.shape[-1], self.conv_resample, **kw)(h)
                hs.append(h)

        h = res(h.shape[-1])(h, emb, train)
        h = attn()(h)
        h = res(h.shape[-1])(h, emb, train)

        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(self.num_res_blocks + 1):
                h = res(mult * ch)(jnp.concatenate([h, hs.pop()], axis=-1), emb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attn()(h)
                if level and i == self.num_res_blocks:
                    if self.resblock_updown:
                        h = res(h.shape[-1], up=True)(h, emb, train)
                    else:
                        h = Upsample(h.shape[-1], self.conv_resample, **kw)(h)

        h = group_norm(h.shape[-1], self.dtype, "norm_out", activation="silu")(h)
        return conv(out_ch, nd, zero=True, name="conv_out", **kw)(h).astype(jnp.float32)
