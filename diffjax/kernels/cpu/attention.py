"""Scaled dot-product attention for XLA:CPU: batch chunks whose logits stay in cache, own gradient.

Same function as ``diffjax.kernels.reference.attention``: softmax(q k^T / sqrt(d) + mask) v per head,
logits and softmax in float32. Two findings from profiling the bench U-Net (16 heads of d = 8 over
L = 256, BENCHMARKS.md):
(1) the (Lq, Lk) arrays, not the FLOPs, are the cost, so each pass should find them in cache: the
    batch is processed in chunks of about ``chunk_bytes`` of logits (lax.map) for inference and
    ``chunk_bytes_grad`` under differentiation, whose backward holds three arrays of that size (p, dp,
    ds): train step 1.12-1.15 -> 1.10-1.11 s with 4 MiB instead of 8 for both passes of the gradient,
    while sampling steps were ~4% faster with 8 MiB;
(2) autodiff's backward contracts p over its non-minor axis (dv = p^T do), a form XLA:CPU runs on a
    slow path (4x); the gradient below keeps k and v as (d, Lk) so every product is a plain matmul
    whose (Lq, Lk) operand is read row-major, and recomputes p from the saved log-sum-exp instead of
    storing it (FlashAttention's backward, Dao et al. 2022, Alg. 4, without the tiling).
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

CHUNK_BYTES = 8 * 2 ** 20        # logits per chunk, inference
CHUNK_BYTES_GRAD = 4 * 2 ** 20   # logits per chunk, both passes of the gradient


def _mm(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _logits(q, kt, bias):
    s = _mm("...qd,...dk->...qk", q, kt)
    return s if bias is None else s + bias[..., None, None, :]


def chunk_size(q, kt, budget: int) -> int:
    """Examples per chunk so that one chunk's float32 (H, Lq, Lk) logits fit in ``budget`` bytes."""
    per_example = 4 * q.shape[1] * q.shape[2] * kt.shape[-1]
    return max(1, min(q.shape[0], budget // max(per_example, 1)))


def _fwd_chunk(q, kt, vt, bias):
    s = _logits(q, kt, bias)
    m = jax.lax.stop_gradient(jnp.max(s, -1, keepdims=True))
    p = jnp.exp(s - m)
    l = jnp.sum(p, -1, keepdims=True)
    return _mm("...qk,...dk->...qd", p.astype(vt.dtype), vt) / l, m + jnp.log(l)


def _bwd_chunk(q, kt, vt, bias, o, lse, do):
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


def _chunks(q, kt, vt, bias, budget: int):
    return jax.lax.map(lambda a: _fwd_chunk(*a), (q, kt, vt, bias),
                       batch_size=chunk_size(q, kt, budget))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attention(q, kt, vt, bias, chunk_bytes, chunk_bytes_grad):
    """o = softmax(q kt + bias) vt^T for q (B,H,Lq,d) (already scaled), kt/vt (B,H,d,Lk)."""
    return _chunks(q, kt, vt, bias, chunk_bytes)[0]


def _attention_fwd(q, kt, vt, bias, chunk_bytes, chunk_bytes_grad):
    o, lse = _chunks(q, kt, vt, bias, chunk_bytes_grad)
    return o, (q, kt, vt, bias, o, lse)


def _attention_bwd(chunk_bytes, chunk_bytes_grad, res, do):
    q, kt, vt, bias, o, lse = res
    dq, dkt, dvt, dbias = jax.lax.map(lambda a: _bwd_chunk(*a),
                                      (q, kt, vt, bias, o, lse, do.astype(jnp.float32)),
                                      batch_size=chunk_size(q, kt, chunk_bytes_grad))
    return (dq.astype(q.dtype), dkt.astype(kt.dtype), dvt.astype(vt.dtype),
            None if bias is None else dbias.astype(bias.dtype))


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array] = None,
              chunk_bytes: int = CHUNK_BYTES, chunk_bytes_grad: int = CHUNK_BYTES_GRAD) -> jax.Array:
    """Multi-head attention of q (B, Lq, H, d), k/v (B, Lk, H, d), mask (B, Lk) bool, the CPU form."""
    scale = jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    bias = None if mask is None else jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)
    qh = jnp.swapaxes(q * scale, 1, 2)                               # (B, H, Lq, d)
    kt, vt = (jnp.transpose(t, (0, 2, 3, 1)) for t in (k, v))        # (B, H, d, Lk)
    out = _attention(qh, kt, vt, bias, int(chunk_bytes), int(chunk_bytes_grad))
    return jnp.swapaxes(out, 1, 2).astype(v.dtype)                  # (B, Lq, H, d)
