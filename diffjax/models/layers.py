"""Shared building blocks: initializers, attention layers, MLPs and adaLN modulation.

Attention (Vaswani et al. 2017): softmax(q k^T / sqrt(d_head)) v per head (``diffjax.kernels.attention``;
logits and softmax in float32 whatever the compute dtype). adaLN modulation (Peebles & Xie 2023,
Sec. 3.2):  modulate(x, shift, scale) = x * (1 + scale) + shift.
"""
from __future__ import annotations

from typing import Any, Optional

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax import kernels
from diffjax.models.partitioning import constrain, gathered, gathered_dot

Dtype = Any

xavier = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros
normal002 = nn.initializers.normal(stddev=0.02)
trunc002 = nn.initializers.truncated_normal(stddev=0.02)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """adaLN: x (B, ..., D), shift/scale (B, D) broadcast over the middle axes."""
    expand = (slice(None),) + (None,) * (x.ndim - 2) + (slice(None),)
    return x * (1 + scale[expand]) + shift[expand]


def expand_like(v: jax.Array, x: jax.Array) -> jax.Array:
    """(B, D) -> (B, 1, ..., 1, D) to broadcast against x (B, ..., D)."""
    return v.reshape(v.shape[:1] + (1,) * (x.ndim - 2) + v.shape[1:])


def heads(x: jax.Array) -> jax.Array:
    """(B, L, H, d) split by batch and by heads over the 'tensor' axis, when a mesh is set."""
    return constrain(x, "batch", None, "tensor", None)


def hidden(x: jax.Array) -> jax.Array:
    """(B, ..., F) hidden units split by batch and over the 'tensor' axis, when a mesh is set."""
    return constrain(x, "batch", *([None] * (x.ndim - 2)), "tensor")


class SelfAttention(nn.Module):
    """Multi-head self-attention on tokens (B, L, D): fused qkv projection, output projection."""

    num_heads: int
    qkv_bias: bool = True
    zero_out: bool = False
    kernel_init: Any = xavier
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        qkv = nn.Dense(3 * d, use_bias=self.qkv_bias, kernel_init=self.kernel_init, dtype=self.dtype,
                       param_dtype=self.param_dtype, name="qkv", dot_general=gathered("col"))(x)
        q, k, v = (heads(a) for a in einops.rearrange(qkv, "b l (three h d) -> three b l h d",
                                                      three=3, h=self.num_heads))
        out = einops.rearrange(heads(kernels.attention(q, k, v)), "b l h d -> b l (h d)")
        return nn.Dense(d, kernel_init=zeros if self.zero_out else self.kernel_init, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="proj", dot_general=gathered("row"))(out)


class CrossAttention(nn.Module):
    """Multi-head cross-attention: queries from x (B, L, D), keys/values from context (B, M, D)."""

    num_heads: int
    zero_out: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array,
                 mask: Optional[jax.Array] = None) -> jax.Array:
        d = x.shape[-1]
        dense = lambda n, name, init=xavier: nn.Dense(
            n, kernel_init=init, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
            dot_general=gathered("row" if name == "proj" else "col"))
        q = heads(einops.rearrange(dense(d, "q")(x), "b l (h d) -> b l h d", h=self.num_heads))
        kv = dense(2 * d, "kv")(context)
        k, v = (heads(a) for a in einops.rearrange(kv, "b m (two h d) -> two b m h d", two=2,
                                                   h=self.num_heads))
        out = einops.rearrange(heads(kernels.attention(q, k, v, mask)), "b l h d -> b l (h d)")
        return dense(d, "proj", zeros if self.zero_out else xavier)(out)


class Mlp(nn.Module):
    """Two-layer MLP: Dense(hidden) -> GELU(tanh) -> dropout -> Dense(out)."""

    hidden: int
    out: Optional[int] = None
    dropout: float = 0.0
    zero_out: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        out = self.out or x.shape[-1]
        h = nn.Dense(self.hidden, kernel_init=xavier, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="fc1", dot_general=gathered("col"))(x)
        h = hidden(nn.gelu(h, approximate=True))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(out, kernel_init=zeros if self.zero_out else xavier, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="fc2", dot_general=gathered("row"))(h)


class AdaLNModulation(nn.Module):
    """SiLU -> Dense(n * D), zero-initialised (adaLN-Zero, Peebles & Xie 2023) -> n chunks (B, D)."""

    n: int
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, c: jax.Array):
        # FSDP in its plain form: the (small) condition stays split by batch and whole along its
        # features, the kernel is gathered before the matmul, so the output is batch-split and
        # its split into n chunks needs no all-to-all (XLA otherwise moves the activations
        # between batch- and feature-split layouts in every block; models/partitioning.py)
        c = constrain(nn.silu(c), "batch", None)
        h = nn.Dense(self.n * self.features, kernel_init=zeros, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="linear", dot_general=gathered_dot)(c)
        return jnp.split(constrain(h, "batch", None), self.n, axis=-1)


def plain_layer_norm(dtype: Dtype, eps: float = 1e-6, name: Optional[str] = None) -> nn.LayerNorm:
    """LayerNorm without affine parameters (the adaLN blocks of DiT / PixArt / DiCo)."""
    return nn.LayerNorm(epsilon=eps, use_bias=False, use_scale=False, dtype=dtype, name=name)


def patchify(x: jax.Array, p: int) -> jax.Array:
    """(B, H, W, C) -> (B, (H/p)(W/p), p*p*C) tokens, row-major over the patch grid."""
    return einops.rearrange(x, "b (h p) (w q) c -> b (h w) (p q c)", p=p, q=p)


def unpatchify(t: jax.Array, p: int, h: int, w: int) -> jax.Array:
    """Inverse of ``patchify``: (B, h*w, p*p*C) -> (B, h*p, w*p, C)."""
    return einops.rearrange(t, "b (h w) (p q c) -> b (h p) (w q) c", h=h, w=w, p=p, q=p)


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
    """(B, H, W, C r^2) -> (B, H r, W r, C) (depth-to-space, Shi et al. 2016)."""
    return einops.rearrange(x, "b h w (c p q) -> b (h p) (w q) c", p=r, q=r)


def pixel_unshuffle(x: jax.Array, r: int) -> jax.Array:
    """(B, H, W, C) -> (B, H/r, W/r, C r^2) (space-to-depth)."""
    return einops.rearrange(x, "b (h p) (w q) c -> b h w (c p q)", p=r, q=r)
