"""DiCo: Revitalizing ConvNets for Scalable and Efficient Diffusion Modeling (Ai et al., NeurIPS 2025).

DiCo block (channels C, ratio m), (shift1, scale1, gate1, shift2, scale2, gate2) = Linear0(SiLU(c)):
    h = LN(x)(1 + scale1) + shift1                       LayerNorm over channels, no affine, eps 1e-6
    h = GELU(DWConv3x3(Conv1x1(h)))
    h = h * sigmoid(Conv1x1(GlobalAvgPool(h)))           compact channel attention (CCA)
    x = x + gate1 * Conv1x1(h)
    x = x + gate2 * Conv1x1(GELU(Conv1x1_{C->mC}(LN(x)(1 + scale2) + shift2)))
U-shape without patchify (stem 3x3 conv at full resolution, which must be divisible by 4):
    enc1 (C) -> down -> enc2 (2C) -> down -> middle (4C) -> up, cat enc2, 1x1 -> dec2 (2C)
    -> up, cat enc1, 1x1 (2C -> 2C) -> dec1 (2C, full resolution) -> final (LN + adaLN + 3x3 conv0).
down = 3x3 conv C -> C/2 + PixelUnshuffle(2); up = 3x3 conv C -> 2C + PixelShuffle(2) (no bias).
Conditioning per width: c_k = t_k(noise) + y_k(label) for widths C, 2C, 4C (three embedders);
dec1 and the final layer use the 2C condition. Sizes (C, depths, m): S 128 [5,4,4,4,4] 2 (33.1M),
B 256 (130.0M), L 352 [9,8,9,8,9] (463.9M), XL 416 [9,9,10,9,9] (701.2M), H 416 [14,12,10,12,14] 4.
``return_intermediates`` returns, for each dec1 block (the only stage at output width and
resolution), its prediction through the shared final layer (DeeDiff-style).
``remat`` rematerializes each block (models/remat.py); ``scan_layers=True`` runs each of the five
stages as one ``nn.scan`` over stacked params '<stage>_blocks/block/...' (models/scan.py converts
from '<stage>_i').
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models import remat as remat_lib
from diffjax.models.embeddings import condition_embedding
from diffjax.models.layers import (AdaLNModulation, modulate, pixel_shuffle, pixel_unshuffle,
                                   plain_layer_norm, xavier, zeros)

Dtype = Any


def _conv(features, k, name, dtype, param_dtype, groups=1, bias=True, init=xavier):
    return nn.Conv(features, (k, k), padding=[(k // 2, k // 2)] * 2, feature_group_count=groups,
                   use_bias=bias, kernel_init=init, dtype=dtype, param_dtype=param_dtype, name=name)


class DiCoBlock(nn.Module):
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array, train: bool = False) -> jax.Array:
        ch = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        s1, sc1, g1, s2, sc2, g2 = AdaLNModulation(6, ch, name="adaLN", **kw)(c)
        h = modulate(plain_layer_norm(self.dtype)(x), s1, sc1)
        h = _conv(ch, 1, "conv1", **kw)(h)
        h = nn.gelu(_conv(ch, 3, "dwconv", groups=ch, **kw)(h), approximate=False)
        gate = jax.nn.sigmoid(nn.Dense(ch, kernel_init=xavier, name="cca", **kw)(h.mean((1, 2))))
        h = _conv(ch, 1, "conv3", **kw)(h * gate[:, None, None])
        x = x + g1[:, None, None] * h
        h = modulate(plain_layer_norm(self.dtype)(x), s2, sc2)
        h = nn.gelu(_conv(int(ch * self.mlp_ratio), 1, "ffn1", **kw)(h), approximate=False)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return x + g2[:, None, None] * _conv(ch, 1, "ffn2", **kw)(h)


class DiCoLayer(nn.Module):
    """One step of the scan over a DiCo stage (``scan_layers``): carry h -> (h, h or None)."""

    mlp_ratio: float
    dropout: float
    remat: str
    train: bool
    collect: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, c):
        cls = remat_lib.wrap(DiCoBlock, self.remat, (3,), scanned=True)
        h = cls(self.mlp_ratio, self.dropout, name="block", dtype=self.dtype,
                param_dtype=self.param_dtype)(h, c, self.train)
        return h, (h if self.collect else None)


STAGES = ("enc1", "enc2", "mid", "dec2", "dec1")


class DiCoFinalLayer(nn.Module):
    out_channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        shift, scale = AdaLNModulation(2, x.shape[-1], name="adaLN", dtype=self.dtype,
                                       param_dtype=self.param_dtype)(c)
        x = modulate(plain_layer_norm(self.dtype)(x), shift, scale)
        return _conv(self.out_channels, 3, "out_proj", self.dtype, self.param_dtype, init=zeros)(x)


class DiCo(nn.Module):
    """Diffusion ConvNet. ``apply(v, x[B,H,W,C], noise_labels, labels=None, *, train)``."""

    hidden_size: int = 128
    depths: Sequence[int] = (5, 4, 4, 4, 4)
    mlp_ratio: float = 2.0
    num_classes: int = 0
    learn_sigma: bool = False
    out_channels: Optional[int] = None
    dropout: float = 0.0
    freq_dim: int = 256
    noise_embedding: str = "positional"
    noise_label_scale: float = 1.0
    cep_gamma: float = 0.0
    cep_kind: str = "uniform"
    guidance_embed: bool = False      # a guidance-distilled student: w enters the condition
    remat: str = "none"               # per-block rematerialization policy (models/remat.py)
    scan_layers: bool = False         # each stage as one nn.scan over stacked params
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def scan_layout(self) -> dict:
        """The stacked <-> per-block parameter layout (``models/scan.py``)."""
        return {f"{st}_blocks/block": (f"{st}_", range(n)) for st, n in zip(STAGES, self.depths)}

    @nn.compact
    def __call__(self, x: jax.Array, noise_labels: jax.Array, labels: Optional[jax.Array] = None,
                 context: Optional[jax.Array] = None, *, train: bool = False,
                 return_intermediates: bool = False, guidance: Optional[jax.Array] = None):
        _, hgt, wid, cin = x.shape
        if hgt % 4 or wid % 4:
            raise ValueError(f"DiCo needs a resolution divisible by 4, got {(hgt, wid)}")
        if len(self.depths) != 5:
            raise ValueError("depths must have 5 entries (enc1, enc2, mid, dec2, dec1), "
                             f"got {self.depths}")
        C = self.hidden_size
        out_ch = (self.out_channels or cin) * (2 if self.learn_sigma else 1)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        c1, c2, c3 = (condition_embedding(self, width, noise_labels, labels, train, suffix=f"_{k + 1}",
                                          guidance=guidance)
                      for k, width in enumerate((C, 2 * C, 4 * C)))

        remat_lib.check(self.remat)
        block = remat_lib.wrap(DiCoBlock, self.remat, (3,))

        def scanned(h, n, c, name, collect=False):
            Scan = nn.scan(DiCoLayer, variable_axes={"params": 0},
                           split_rngs={"params": True, "dropout": True},
                           in_axes=(nn.broadcast,), length=n)
            return Scan(self.mlp_ratio, self.dropout, self.remat, bool(train), collect,
                        name=f"{name}_blocks", **kw)(h, c)

        def stage(h, n, c, name):
            if self.scan_layers:
                return scanned(h, n, c, name)[0]
            for i in range(n):
                h = block(self.mlp_ratio, self.dropout, name=f"{name}_{i}", **kw)(h, c, train)
            return h

        down = lambda h, name: pixel_unshuffle(_conv(h.shape[-1] // 2, 3, name, bias=False, **kw)(h), 2)
        up = lambda h, name: pixel_shuffle(_conv(h.shape[-1] * 2, 3, name, bias=False, **kw)(h), 2)

        h = _conv(C, 3, "x_embedder", **kw)(x.astype(self.dtype))
        e1 = stage(h, self.depths[0], c1, "enc1")
        e2 = stage(down(e1, "down1"), self.depths[1], c2, "enc2")
        h = stage(down(e2, "down2"), self.depths[2], c3, "mid")
        h = _conv(2 * C, 1, "reduce2", **kw)(jnp.concatenate([up(h, "up2"), e2], -1))
        h = stage(h, self.depths[3], c2, "dec2")
        h = _conv(2 * C, 1, "reduce1", **kw)(jnp.concatenate([up(h, "up1"), e1], -1))

        final = DiCoFinalLayer(out_ch, name="final_layer", **kw)
        if self.scan_layers:
            h, hs = scanned(h, self.depths[4], c2, "dec1", return_intermediates)
            out = final(h, c2).astype(jnp.float32)
            if return_intermediates:
                return out, [final(hs[i], c2).astype(jnp.float32)
                             for i in range(self.depths[4] - 1)] + [out]
            return out
        preds = []
        for i in range(self.depths[4]):
            h = block(self.mlp_ratio, self.dropout, name=f"dec1_{i}", **kw)(h, c2, train)
            if return_intermediates and i < self.depths[4] - 1:
                preds.append(final(h, c2).astype(jnp.float32))
        out = final(h, c2).astype(jnp.float32)
        if return_intermediates:
            return out, preds + [out]
        return out
