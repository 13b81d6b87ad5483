"""The plain forms of the ops, used when lowering for TPU and GPU (and as the tests' references).

    conv        lax.conv_general_dilated, channel-last (B, *spatial, C) x (*k, C_in, C_out)
    group_norm  y = (x - mu_g) / sqrt(var_g + eps) * scale + bias [then SiLU], mu_g and var_g the mean
                and variance over (spatial, the C / G channels of group g), float32 statistics
    attention   jax.nn.dot_product_attention (XLA's attention; cuDNN flash attention with
                implementation='cudnn' on GPU)
Differentiated by JAX's autodiff. XLA:CPU runs these slowly; ``diffjax.kernels.cpu`` has its forms.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp


def _conv_dims(nd: int):
    sp = "HWD"[:nd]
    return ("N" + sp + "C", sp + "IO", "N" + sp + "C")


def lax_conv(x: jax.Array, w: jax.Array, strides: Sequence[int],
             padding: Sequence[Sequence[int]]) -> jax.Array:
    """conv(x, w) for x (B, *spatial, C_in), w (*k, C_in, C_out), explicit (lo, hi) padding."""
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_conv_dims(x.ndim - 2))


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, eps: float,
               out_dtype, activation: Optional[str] = None) -> jax.Array:
    """GroupNorm (Wu & He 2018) of x (B, *spatial, C) over (spatial, C / G); var = E[x^2] - E[x]^2."""
    xf = x.astype(jnp.float32)
    xg = xf.reshape(x.shape[:-1] + (groups, x.shape[-1] // groups))
    axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
    mean = jnp.mean(xg, axes, keepdims=True)
    var = jnp.maximum(jnp.mean(xg * xg, axes, keepdims=True) - mean * mean, 0.0)
    y = ((xg - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape)
    y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    if activation == "silu":
        y = jax.nn.silu(y)
    return y.astype(out_dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array] = None,
              implementation: Optional[str] = None) -> jax.Array:
    """softmax(q k^T / sqrt(d), masked) v: q (B, Lq, H, d), k/v (B, Lk, H, d), mask (B, Lk) bool."""
    m = None if mask is None else mask[:, None, None, :]
    out = jax.nn.dot_product_attention(q, k, v, mask=m, implementation=implementation)
    return out.astype(v.dtype)
