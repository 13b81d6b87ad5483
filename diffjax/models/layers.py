"""Shared building blocks: initializers, attention, MLPs and adaLN modulation.

Attention (Vaswani et al. 2017): softmax(q k^T / sqrt(d_head)) v per head; logits and softmax are
computed in float32 whatever the compute dtype. adaLN modulation (Peebles & Xie 2023, Eq. in Sec. 3.2):
    modulate(x, shift, scale) = x * (1 + scale) + shift.
"""
from __future__ import annotations

from typing import Any, Optional

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

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


def attention(q: jax.Array, k: jax.Array, v: jax.Array,
              mask: Optional[jax.Array] = None) -> jax.Array:
    """Multi-head scaled dot-product attention. q (B,Lq,H,d), k/v (B,Lk,H,d), mask (B,Lk) bool.

    softmax(q k^T / sqrt(d)) v per head, logits and softmax in float32. TPU and GPU lowerings use the
    plain formula (``_attention_xla``); XLA:CPU lowering uses ``_attention_cpu``, the same function
    with its own gradient, computed in batch chunks whose (H, Lq, Lk) logits stay in cache.
    """
    scale = jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    bias = None if mask is None else jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)
    qh = jnp.swapaxes(q * scale, 1, 2)                               # (B, H, Lq, d)
    kt, vt = (jnp.transpose(t, (0, 2, 3, 1)) for t in (k, v))        # (B, H, d, Lk)
    out = jax.lax.platform_dependent(qh, kt, vt, bias, cpu=_attention_cpu, default=_attention_xla)
    return jnp.swapaxes(out, 1, 2).astype(v.dtype)                  # (B, Lq, H, d)


def _mm(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _logits(q, kt, bias):
    s = _mm("...qd,...dk->...qk", q, kt)
    return s if bias is None else s + bias[..., None, None, :]


def _attention_xla(q, kt, vt, bias):
    """o = softmax(q kt + bias) vt^T for q (B,H,Lq,d) (already scaled), kt/vt (B,H,d,Lk)."""
    return _mm("...qk,...dk->...qd", jax.nn.softmax(_logits(q, kt, bias), -1).astype(vt.dtype), vt)


# XLA:CPU. Two findings from profiling the bench U-Net (16 heads of d = 8 over L = 256, BENCHMARKS.md):
# (1) the (Lq, Lk) arrays, not the FLOPs, are the cost, so each pass should find them in cache:
#     the batch is processed in chunks of about _CHUNK_BYTES of logits (lax.map) for inference and
#     _CHUNK_BYTES_GRAD under differentiation, whose backward holds three arrays of that size (p, dp,
#     ds): train step 1.12-1.15 -> 1.10-1.11 s with 4 MiB instead of 8 for both passes of the
#     gradient, while sampling steps were ~4% faster with 8 MiB;
# (2) autodiff's backward contracts p over its non-minor axis (dv = p^T do), a form XLA:CPU runs on a
#     slow path (4x); the gradient below keeps k and v as (d, Lk) so every product is a plain matmul
#     whose (Lq, Lk) operand is read row-major, and recomputes p from the saved log-sum-exp instead of
#     storing it (FlashAttention's backward, Dao et al. 2022, Alg. 4, without the tiling).
_CHUNK_BYTES = 8 * 2 ** 20
_CHUNK_BYTES_GRAD = 4 * 2 ** 20


def _chunk(q, kt, budget: int) -> int:
    per_example = 4 * q.shape[1] * q.shape[2] * kt.shape[-1]
    return max(1, min(q.shape[0], budget // max(per_example, 1)))


def _attention_fwd_chunk(q, kt, vt, bias):
    s = _logits(q, kt, bias)
    m = jax.lax.stop_gradient(jnp.max(s, -1, keepdims=True))
    p = jnp.exp(s - m)
    l = jnp.sum(p, -1, keepdims=True)
    return _mm("...qk,...dk->...qd", p.astype(vt.dtype), vt) / l, m + jnp.log(l)


def _attention_bwd_chunk(q, kt, vt, bias, o, lse, do):
    """With p = exp(s - lse): dvt = do^T p, ds = p (do vt - <do, o>), dq = ds kt^T, dkt = q^T ds."""
    p = jnp.exp(_logits(q, kt, bias) - lse)
    do_c = do.astype(vt.dtype)
    dvt = _mm("...qd,...qk->...dk", do_c, p.astype(vt.dtype))
    dp = _mm("...qd,...dk->...qk", do_c, vt)
    ds = p * (dp - jnp.sum(do * o, -1, keepdims=True))
    dq = _mm("...qk,...dk->...qd", ds.astype(kt.dtype), kt)
    dkt = _mm("...qd,...qk->...dk", q, ds.astype(q.dtype))
    dbias = None if bias is None else jnp.sum(ds, (-3, -2))
    return dq, dkt, dvt, dbias


def _attention_chunks(q, kt, vt, bias, budget: int):
    return jax.lax.map(lambda a: _attention_fwd_chunk(*a), (q, kt, vt, bias),
                       batch_size=_chunk(q, kt, budget))


def _attention_cpu_fwd(q, kt, vt, bias):
    o, lse = _attention_chunks(q, kt, vt, bias, _CHUNK_BYTES_GRAD)
    return o, (q, kt, vt, bias, o, lse)


def _attention_cpu_bwd(res, do):
    q, kt, vt, bias, o, lse = res
    dq, dkt, dvt, dbias = jax.lax.map(lambda a: _attention_bwd_chunk(*a),
                                      (q, kt, vt, bias, o, lse, do.astype(jnp.float32)),
                                      batch_size=_chunk(q, kt, _CHUNK_BYTES_GRAD))
    return (dq.astype(q.dtype), dkt.astype(kt.dtype), dvt.astype(vt.dtype),
            None if bias is None else dbias.astype(bias.dtype))


@jax.custom_vjp
def _attention_cpu(q, kt, vt, bias):
    return _attention_chunks(q, kt, vt, bias, _CHUNK_BYTES)[0]


_attention_cpu.defvjp(_attention_cpu_fwd, _attention_cpu_bwd)


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
                       param_dtype=self.param_dtype, name="qkv")(x)
        q, k, v = einops.rearrange(qkv, "b l (three h d) -> three b l h d", three=3, h=self.num_heads)
        out = einops.rearrange(attention(q, k, v), "b l h d -> b l (h d)")
        return nn.Dense(d, kernel_init=zeros if self.zero_out else self.kernel_init, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="proj")(out)


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
        dense = lambda n, name, init=xavier: nn.Dense(n, kernel_init=init, dtype=self.dtype,
                                                      param_dtype=self.param_dtype, name=name)
        q = einops.rearrange(dense(d, "q")(x), "b l (h d) -> b l h d", h=self.num_heads)
        kv = dense(2 * d, "kv")(context)
        k, v = einops.rearrange(kv, "b m (two h d) -> two b m h d", two=2, h=self.num_heads)
        out = einops.rearrange(attention(q, k, v, mask), "b l h d -> b l (h d)")
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
                     name="fc1")(x)
        h = nn.gelu(h, approximate=True)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(out, kernel_init=zeros if self.zero_out else xavier, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="fc2")(h)


class AdaLNModulation(nn.Module):
    """SiLU -> Dense(n * D), zero-initialised (adaLN-Zero, Peebles & Xie 2023) -> n chunks (B, D)."""

    n: int
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, c: jax.Array):
        h = nn.Dense(self.n * self.features, kernel_init=zeros, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="linear")(nn.silu(c))
        return jnp.split(h, self.n, axis=-1)


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
