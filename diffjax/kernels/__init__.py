"""Ops the models call: ``conv``, ``group_norm``, ``attention``. Each computes one function on every
backend; the form is chosen when the computation is lowered (``jax.lax.platform_dependent``):

    lowered for CPU       the forms in ``diffjax.kernels.cpu`` (Winograd convolution, GroupNorm and
                          attention with their gradients written out), tuned for XLA:CPU
    lowered for TPU, GPU  the plain forms in ``diffjax.kernels.reference`` (lax.conv_general_dilated,
                          the GroupNorm formula, jax.nn.dot_product_attention), differentiated by JAX

So a deviceless TPU preflight on a CPU machine compiles the TPU form. The CPU forms' options are
explicit keyword arguments whose defaults are the constants below; they change speed, never values.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from diffjax.kernels import cpu, reference
from diffjax.kernels.cpu import CHUNK_BYTES, CHUNK_BYTES_GRAD

WINOGRAD = True                 # CPU: 'same' 3x3 stride-1 convs by Winograd F(2x2, 3x3)
ACTIVATIONS = (None, "silu")    # what group_norm can apply to its output

__all__ = ["ACTIVATIONS", "CHUNK_BYTES", "CHUNK_BYTES_GRAD", "WINOGRAD", "attention", "conv",
           "group_norm"]


def conv(x: jax.Array, w: jax.Array, strides: Optional[Sequence[int]] = None,
         padding: Optional[Sequence[Sequence[int]]] = None, *, winograd: bool = WINOGRAD) -> jax.Array:
    """Channel-last convolution, any spatial rank d: x (B, *spatial, C_in), w (*k, C_in, C_out),
        y[b, p, o] = sum_{t, c} x_pad[b, s * p + t, c] w[t, c, o]
    with ``strides`` s (default 1) and explicit ``padding`` ((lo, hi) per axis, default none).

    1x1 stride-1 unpadded convs are one (B * spatial, C_in) @ (C_in, C_out) matmul on every backend.
    CPU: Winograd F(2x2, 3x3) where it applies and ``winograd``, else lax.conv with the kernel
    gradient as one matmul per tap. TPU, GPU: lax.conv_general_dilated.
    """
    nd = x.ndim - 2
    strides = tuple(strides or (1,) * nd)
    padding = tuple(tuple(p) for p in (padding or [(0, 0)] * nd))
    if math.prod(w.shape[:nd]) == 1 and set(strides) == {1} and not any(map(any, padding)):
        # One (B * spatial, C) matmul: its kernel gradient then has a single contracting axis,
        # which XLA:CPU runs without first copying x (or dy) to a (C, N) layout.
        y = jnp.matmul(x.reshape(-1, x.shape[-1]), w.reshape(w.shape[-2:]))
        return y.reshape(x.shape[:-1] + (w.shape[-1],))
    return jax.lax.platform_dependent(
        x, w, cpu=lambda u, k: cpu.conv(u, k, strides, padding, winograd),
        default=lambda u, k: reference.lax_conv(u, k, strides, padding))


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, *,
               eps: float = 1e-5, activation: Optional[str] = None, dtype=None) -> jax.Array:
    """Group normalization (Wu & He 2018) of x (B, *spatial, C) with ``scale``, ``bias`` (C,):
        y = (x - mu_g) / sqrt(var_g + eps) * scale + bias,   [y = SiLU(y) with activation='silu']
    mu_g, var_g the mean and variance of x over (spatial, the C / G channels of group g), in float32;
    returned in ``dtype`` (default: x and scale's result type).

    CPU: per-channel then per-group sums, its gradient written out (custom VJP). TPU, GPU: the formula.
    """
    c = x.shape[-1]
    if c % groups:
        raise ValueError(f"GroupNorm: {c} channels not divisible by {groups} groups")
    if activation not in ACTIVATIONS:
        raise ValueError(f"GroupNorm: activation {activation!r} is not one of None, 'silu'")
    out = jnp.dtype(dtype or jnp.result_type(x, scale))
    return jax.lax.platform_dependent(
        x, scale, bias, cpu=lambda *a: cpu.group_norm(*a, groups, eps, out, activation),
        default=lambda *a: reference.group_norm(*a, groups, eps, out, activation))


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array] = None, *,
              chunk_bytes: int = CHUNK_BYTES, chunk_bytes_grad: int = CHUNK_BYTES_GRAD,
              implementation: Optional[str] = None) -> jax.Array:
    """Multi-head scaled dot-product attention (Vaswani et al. 2017), per head h:
        out[b, :, h] = softmax(q[b, :, h] k[b, :, h]^T / sqrt(d) + m[b]) v[b, :, h]
    q (B, Lq, H, d), k and v (B, Lk, H, d), ``mask`` (B, Lk) bool (False: key ignored, m = -inf);
    logits and softmax in float32, the result in v's dtype, (B, Lq, H, d).

    CPU: batch chunks of about ``chunk_bytes`` of logits (``chunk_bytes_grad`` under
    differentiation), its gradient written out. TPU, GPU: jax.nn.dot_product_attention;
    ``implementation`` is passed to it on GPU ('cudnn': cuDNN flash attention; it can be traced only
    where cuDNN is installed).
    """
    branches = dict(cpu=lambda *a: cpu.attention(*a, chunk_bytes, chunk_bytes_grad),
                    default=lambda *a: reference.attention(*a))
    if implementation is not None:
        branches["cuda"] = lambda *a: reference.attention(*a, implementation)
    return jax.lax.platform_dependent(q, k, v, mask, **branches)
