"""DiT: Scalable Diffusion Models with Transformers (Peebles & Xie 2023), with a TD-LN option.

Tokens z_0 = Linear(patchify_p(x)) + sincos_2d;  c = t_emb(noise_label) + y_emb(label).
adaLN-Zero block (Sec. 3.2), (shift1, scale1, gate1, shift2, scale2, gate2) = Linear0(SiLU(c)):
    z = z + gate1 * Attn(LN(z) (1 + scale1) + shift1)
    z = z + gate2 * MLP(LN(z) (1 + scale2) + shift2)
Final layer: (shift, scale) = Linear0(SiLU(c)); out = Linear0(LN(z)(1 + scale) + shift) -> unpatchify.
Gates and the output linear start at zero, so every block is the identity and the output is 0 at init.

norm='tdln' replaces each adaLN-Zero by TD-LN (Liu et al. 2024, DiMR; see tdln.py): no time MLP, no
per-block Linear(D, 6D); time enters only through tau = td_time(noise_label); the class embedding is
prepended as a token (DiMR / U-ViT style) and dropped before the output head.

``return_intermediates=True`` returns (out, [pred_1 .. pred_L]): the prediction of every block's tokens
through the SAME final layer (the shared output head of DeeDiff / AdaDiff, Tang et al. 2023).
Published counts (latent 32x32x4, 1000 classes, learned sigma): S/2 33M, B/2 130M, L/2 458M, XL/2 675M.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.embeddings import LabelEmbedder, condition_embedding, sincos_2d
from diffjax.models.layers import (AdaLNModulation, Mlp, SelfAttention, modulate, patchify,
                                   plain_layer_norm, unpatchify, xavier, zeros)
from diffjax.models.tdln import TDLayerNorm, TDModulation, td_time

Dtype = Any
NORMS = ("adaln_zero", "tdln")


class DiTBlock(nn.Module):
    """One DiT block; ``c`` (B, D) conditions adaLN-Zero, ``tau`` (B,) conditions TD-LN."""

    num_heads: int
    mlp_ratio: float = 4.0
    norm: str = "adaln_zero"
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, c: Optional[jax.Array], tau: Optional[jax.Array],
                 train: bool = False) -> jax.Array:
        d = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn = SelfAttention(self.num_heads, name="attn", **kw)
        mlp = Mlp(int(d * self.mlp_ratio), dropout=self.dropout, name="mlp", **kw)
        drop = nn.Dropout(self.dropout, deterministic=not train)
        if self.norm == "adaln_zero":
            s1, sc1, g1, s2, sc2, g2 = AdaLNModulation(6, d, name="adaLN", **kw)(c)
            x = x + g1[:, None] * drop(attn(modulate(plain_layer_norm(self.dtype)(x), s1, sc1)))
            h = modulate(plain_layer_norm(self.dtype)(x), s2, sc2)
            return x + g2[:, None] * mlp(h, train)
        if self.norm == "tdln":
            h, g1 = TDModulation(name="norm1", **kw)(x, tau)
            x = x + g1[:, None] * drop(attn(h))
            h, g2 = TDModulation(name="norm2", **kw)(x, tau)
            return x + g2[:, None] * mlp(h, train)
        raise ValueError(f"unknown norm {self.norm!r}; expected one of {NORMS}")


class FinalLayer(nn.Module):
    """Output head shared by the last block and (DeeDiff) every intermediate block."""

    patch_size: int
    out_channels: int
    norm: str = "adaln_zero"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, c: Optional[jax.Array], tau: Optional[jax.Array]) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.norm == "adaln_zero":
            shift, scale = AdaLNModulation(2, x.shape[-1], name="adaLN", **kw)(c)
            x = modulate(plain_layer_norm(self.dtype)(x), shift, scale)
        else:
            x = TDLayerNorm(name="norm", **kw)(x, tau)
        return nn.Dense(self.patch_size ** 2 * self.out_channels, kernel_init=zeros, name="linear",
                        **kw)(x)


class DiT(nn.Module):
    """Diffusion Transformer. ``apply(v, x[B,H,W,C], noise_labels[B], labels=None, *, train)``."""

    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int = 0
    learn_sigma: bool = False
    out_channels: Optional[int] = None
    norm: str = "adaln_zero"
    dropout: float = 0.0
    freq_dim: int = 256
    noise_embedding: str = "positional"
    noise_label_scale: float = 1.0
    td_time_scale: float = 0.002
    td_time_shift: float = -1.0
    cep_gamma: float = 0.0
    cep_kind: str = "uniform"
    guidance_embed: bool = False      # a guidance-distilled student: w enters the condition
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, noise_labels: jax.Array, labels: Optional[jax.Array] = None,
                 context: Optional[jax.Array] = None, *, train: bool = False,
                 return_intermediates: bool = False, guidance: Optional[jax.Array] = None):
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; expected one of {NORMS}")
        b, hgt, wid, cin = x.shape
        p, d = self.patch_size, self.hidden_size
        if hgt % p or wid % p:
            raise ValueError(f"image size {(hgt, wid)} not divisible by patch size {p}")
        gh, gw = hgt // p, wid // p
        out_ch = (self.out_channels or cin) * (2 if self.learn_sigma else 1)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        z = nn.Dense(d, kernel_init=xavier, name="x_embedder", **kw)(patchify(x.astype(self.dtype), p))
        z = z + sincos_2d(gh, gw, d).astype(self.dtype)[None]
        c = tau = None
        n_extra = 0
        if self.norm == "adaln_zero":
            c = condition_embedding(self, d, noise_labels, labels, train, guidance=guidance)
        else:
            if self.guidance_embed:
                raise ValueError("DiT guidance_embed needs norm='adaln_zero' (the guidance scale "
                                 "enters the adaLN condition)")
            tau = td_time(noise_labels, self.td_time_scale, self.td_time_shift)
            if self.num_classes > 0:
                y = LabelEmbedder(self.num_classes, d, self.cep_gamma, self.cep_kind,
                                  name="y_embedder", **kw)(labels, b, train)
                z = jnp.concatenate([y[:, None].astype(self.dtype), z], axis=1)
                n_extra = 1

        final = FinalLayer(p, out_ch, self.norm, name="final_layer", **kw)
        head = lambda t: unpatchify(final(t[:, n_extra:], c, tau), p, gh, gw).astype(jnp.float32)
        preds = []
        for i in range(self.depth):
            z = DiTBlock(self.num_heads, self.mlp_ratio, self.norm, self.dropout, name=f"block_{i}",
                         **kw)(z, c, tau, train)
            if return_intermediates and i < self.depth - 1:
                preds.append(head(z))
        out = head(z)
        if return_intermediates:
            return out, preds + [out]
        return out
