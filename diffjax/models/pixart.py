"""PixArt-alpha: DiT with cross-attention and adaLN-single (Chen et al. 2024, ICLR, Sec. 2.3).

t = t_emb(noise_label) [+ y_emb(label)];  t0 = Linear(SiLU(t)) in R^{6D}  (ONE layer for all blocks)
block i, with a learned table E_i in R^{6 x D} (init N(0, 1/D)):
    (shift1, scale1, gate1, shift2, scale2, gate2) = E_i + reshape(t0, 6 x D)
    z = z + gate1 * SelfAttn(LN(z)(1 + scale1) + shift1)
    z = z + CrossAttn(q = z, kv = context)                    (proj zero-init, no gate)
    z = z + gate2 * MLP(LN(z)(1 + scale2) + shift2)
final: (shift, scale) = E_f (2 x D) + t;  out = Linear0(LN(z)(1 + scale) + shift) -> unpatchify.
Context (B, M, context_dim) (e.g. T5 tokens) passes a caption MLP (context_dim -> D -> D, GELU-tanh).
``context=None`` uses a learned null sequence of ``context_len`` tokens (the CFG null caption; the
paper keeps a fixed random buffer, here it is a parameter). ``context_mask`` (B, M) marks valid
tokens. CEP (train, cep_gamma > 0) perturbs the class embedding and the projected context tokens.
``micro_conditions`` (PixArt-alpha's 1024 models, Sec. 2.4 "multi-aspect"): t += [r_emb(H) | r_emb(W) |
a_emb(H / W)], each a timestep-style embedder of width D/3 on the image's pixel size (the latent's
size times ``pixels_per_latent``) and aspect ratio, so a converted PixArt-XL-2-1024-MS sees the
micro-conditions its pipeline passes.
``return_intermediates`` returns every block's prediction through the shared final layer (DeeDiff).
``remat`` rematerializes each block (models/remat.py); ``scan_layers=True`` runs the blocks as one
``nn.scan`` over stacked params 'blocks/block/...' (models/scan.py converts from 'block_i').
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models import remat as remat_lib
from diffjax.models.embeddings import (TimestepEmbedder, cep_perturb, condition_embedding,
                                       sincos_2d)
from diffjax.models.layers import (CrossAttention, Mlp, SelfAttention, modulate, normal002,
                                   patchify, plain_layer_norm, unpatchify, xavier, zeros)
from diffjax.models.partitioning import constrain, gathered_dot

Dtype = Any


def table_init(key, shape, dtype=jnp.float32):
    """randn / sqrt(D): the init of PixArt's per-block scale-shift tables."""
    return jax.random.normal(key, shape, dtype) / shape[-1] ** 0.5


class PixArtBlock(nn.Module):
    num_heads: int
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, t0, context, context_mask=None, train: bool = False):
        b, _, d = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        table = self.param("scale_shift_table", table_init, (6, d), self.param_dtype)
        mod = table[None].astype(self.dtype) + t0.reshape(b, 6, d)
        s1, sc1, g1, s2, sc2, g2 = (mod[:, i] for i in range(6))
        drop = nn.Dropout(self.dropout, deterministic=not train)
        h = modulate(plain_layer_norm(self.dtype)(x), s1, sc1)
        x = x + g1[:, None] * drop(SelfAttention(self.num_heads, name="attn", **kw)(h))
        x = x + CrossAttention(self.num_heads, name="cross_attn", **kw)(x, context, context_mask)
        h = modulate(plain_layer_norm(self.dtype)(x), s2, sc2)
        return x + g2[:, None] * Mlp(int(d * self.mlp_ratio), dropout=self.dropout, name="mlp",
                                     **kw)(h, train)


class PixArtLayer(nn.Module):
    """One step of the scan over PixArt's blocks (``scan_layers``): carry z -> (z, z or None)."""

    num_heads: int
    mlp_ratio: float
    dropout: float
    remat: str
    train: bool
    collect: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z, t0, ctx, mask):
        cls = remat_lib.wrap(PixArtBlock, self.remat, (5,), scanned=True)
        z = cls(self.num_heads, self.mlp_ratio, self.dropout, name="block", dtype=self.dtype,
                param_dtype=self.param_dtype)(z, t0, ctx, mask, self.train)
        return z, (z if self.collect else None)


class PixArtFinalLayer(nn.Module):
    patch_size: int
    out_channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, t):
        d = x.shape[-1]
        table = self.param("scale_shift_table", table_init, (2, d), self.param_dtype)
        shift, scale = table[0][None] + t, table[1][None] + t
        shift, scale = shift.astype(self.dtype), scale.astype(self.dtype)
        x = modulate(plain_layer_norm(self.dtype)(x), shift, scale)
        return nn.Dense(self.patch_size ** 2 * self.out_channels, kernel_init=zeros, name="linear",
                        dtype=self.dtype, param_dtype=self.param_dtype)(x)


class PixArt(nn.Module):
    """PixArt-alpha: ``apply(v, x, noise_labels, labels, context, *, context_mask, train)``."""

    patch_size: int = 2
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    context_dim: int = 4096
    context_len: int = 120
    num_classes: int = 0
    learn_sigma: bool = False
    out_channels: Optional[int] = None
    dropout: float = 0.0
    freq_dim: int = 256
    noise_embedding: str = "positional"
    noise_label_scale: float = 1.0
    pe_scale: float = 1.0
    cep_gamma: float = 0.0
    cep_kind: str = "uniform"
    guidance_embed: bool = False      # a guidance-distilled student: w enters the condition
    micro_conditions: bool = False    # resolution + aspect-ratio embeddings (PixArt-alpha 1024)
    pixels_per_latent: int = 8        # the pixel size the micro-conditions see is H * this
    remat: str = "none"               # per-block rematerialization policy (models/remat.py)
    scan_layers: bool = False         # the blocks as one nn.scan over stacked params
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _micro_conditions(self, b: int, hgt: int, wid: int, d: int) -> jax.Array:
        """[r_emb(H_px) | r_emb(W_px) | a_emb(H/W)] (B, D): the resolution and aspect embeddings."""
        if d % 3:
            raise ValueError(f"micro_conditions need hidden_size divisible by 3, got {d}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        f = self.pixels_per_latent
        res = jnp.asarray([hgt * f, wid * f], jnp.float32)
        r = TimestepEmbedder(d // 3, self.freq_dim, name="resolution_embedder", **kw)(res)
        a = TimestepEmbedder(d // 3, self.freq_dim, name="aspect_ratio_embedder", **kw)(
            jnp.asarray([hgt / wid], jnp.float32))
        return jnp.broadcast_to(jnp.concatenate([r.reshape(-1), a.reshape(-1)])[None], (b, d))

    def scan_layout(self) -> dict:
        """The stacked <-> per-block parameter layout (``models/scan.py``)."""
        return {"blocks/block": ("block_", range(self.depth))}

    @nn.compact
    def __call__(self, x: jax.Array, noise_labels: jax.Array, labels: Optional[jax.Array] = None,
                 context: Optional[jax.Array] = None, *, context_mask: Optional[jax.Array] = None,
                 train: bool = False, return_intermediates: bool = False,
                 guidance: Optional[jax.Array] = None):
        b, hgt, wid, cin = x.shape
        p, d = self.patch_size, self.hidden_size
        if hgt % p or wid % p:
            raise ValueError(f"image size {(hgt, wid)} not divisible by patch size {p}")
        gh, gw = hgt // p, wid // p
        out_ch = (self.out_channels or cin) * (2 if self.learn_sigma else 1)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        z = nn.Dense(d, kernel_init=xavier, name="x_embedder", **kw)(patchify(x.astype(self.dtype), p))
        z = z + sincos_2d(gh, gw, d, self.pe_scale).astype(self.dtype)[None]
        t = condition_embedding(self, d, noise_labels, labels, train, guidance=guidance)
        if self.micro_conditions:
            t = t + self._micro_conditions(b, hgt, wid, d)
        t0 = nn.Dense(6 * d, kernel_init=normal002, name="t_block", dot_general=gathered_dot,
                      **kw)(constrain(nn.silu(t), "batch", None))
        t0 = constrain(t0, "batch", None)          # gathered once, not split in every block

        null = context is None
        if null:
            ctx0 = self.param("null_context", table_init, (self.context_len, self.context_dim),
                              self.param_dtype)
            context = jnp.broadcast_to(ctx0[None], (b,) + ctx0.shape)
            context_mask = None
        if context.shape[-1] != self.context_dim:
            raise ValueError(f"context has width {context.shape[-1]}, expected {self.context_dim}")
        ctx = nn.Dense(d, kernel_init=normal002, name="caption_fc1", **kw)(context.astype(self.dtype))
        ctx = nn.Dense(d, kernel_init=normal002, name="caption_fc2", **kw)(
            nn.gelu(ctx, approximate=True))
        if train and self.cep_gamma > 0 and not null:
            ctx = cep_perturb(self.make_rng("cep"), ctx, self.cep_gamma, self.cep_kind)

        final = PixArtFinalLayer(p, out_ch, name="final_layer", **kw)
        head = lambda u: unpatchify(final(u, t), p, gh, gw).astype(jnp.float32)
        remat_lib.check(self.remat)
        if self.scan_layers:
            Scan = nn.scan(PixArtLayer, variable_axes={"params": 0},
                           split_rngs={"params": True, "dropout": True},
                           in_axes=(nn.broadcast,) * 3, length=self.depth)
            z, zs = Scan(self.num_heads, self.mlp_ratio, self.dropout, self.remat, bool(train),
                         return_intermediates, name="blocks", **kw)(z, t0, ctx, context_mask)
            out = head(z)
            if return_intermediates:
                return out, [head(zs[i]) for i in range(self.depth - 1)] + [out]
            return out
        block = remat_lib.wrap(PixArtBlock, self.remat, (5,))
        preds = []
        for i in range(self.depth):
            z = block(self.num_heads, self.mlp_ratio, self.dropout, name=f"block_{i}", **kw)(
                z, t0, ctx, context_mask, train)
            if return_intermediates and i < self.depth - 1:
                preds.append(head(z))
        out = head(z)
        if return_intermediates:
            return out, preds + [out]
        return out
