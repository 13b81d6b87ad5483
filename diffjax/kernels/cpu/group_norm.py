"""GroupNorm in the form XLA:CPU runs fast, with its gradient written out (custom VJP).

Same function as the plain formula (``diffjax.kernels.reference.group_norm``):
    per-channel sums over the spatial axes first, then per-group sums of those (B, C) totals:
    mu = E[x], var = max(E[x^2] - mu^2, 0) (float32), y = (x - mu) rsqrt(var + eps) g + b,
    optionally SiLU(y) with SiLU' folded into the backward pass (nothing but x saved).
Reducing the (B, *spatial, G, C/G) view directly is a strided reduction XLA:CPU runs ~5x slower;
autodiff of this form saves more and makes more passes than the backward below (BENCHMARKS.md).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


def _group_sum(v, groups):
    """(B, C) -> (B, G): sums over the channels of each group."""
    return v.reshape(v.shape[0], groups, v.shape[-1] // groups).sum(-1)


def _per_channel(v, channels):
    """(B, G) -> (B, C): each group's value on its channels."""
    return jnp.repeat(v, channels // v.shape[-1], axis=-1)


def _spatial(v, ndim):
    """(B, C) -> (B, 1, ..., 1, C), broadcastable against (B, *spatial, C)."""
    return v.reshape((v.shape[0],) + (1,) * (ndim - 2) + (v.shape[-1],))


def _silu_and_grad(u):
    """SiLU(u) = u sigmoid(u) and its derivative sigmoid(u) (1 + u (1 - sigmoid(u)))."""
    sig = jax.nn.sigmoid(u)
    return u * sig, sig * (1 + u * (1 - sig))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _group_norm(x, scale, bias, groups, eps, out_dtype, act=None):
    return _group_norm_fwd(x, scale, bias, groups, eps, out_dtype, act)[0]


def _group_norm_fwd(x, scale, bias, groups, eps, out_dtype, act=None):
    c = x.shape[-1]
    xf = x.astype(jnp.float32)
    axes = tuple(range(1, x.ndim - 1))
    n = math.prod(x.shape[1:-1]) * (c // groups)
    mean = _group_sum(jnp.sum(xf, axes), groups) / n                          # (B, G)
    var = jnp.maximum(_group_sum(jnp.sum(xf * xf, axes), groups) / n - mean * mean, 0.0)
    rstd = jax.lax.rsqrt(var + eps)
    mul = _per_channel(rstd, c) * scale.astype(jnp.float32)                   # (B, C)
    y = ((xf - _spatial(_per_channel(mean, c), x.ndim)) * _spatial(mul, x.ndim)
         + bias.astype(jnp.float32))
    if act == "silu":
        y = _silu_and_grad(y)[0]
    return y.astype(out_dtype), (x, scale, bias, mean, rstd)


def _group_norm_bwd(groups, eps, out_dtype, act, res, dy):
    """With xh = (x - mu) r, y = xh s + b (Wu & He 2018) and <.> the per-(batch, group) mean over
    (spatial, the group's channels):  dx = r (s dy - <s dy> - xh <s dy xh>),  ds = sum dy xh,
    db = sum dy. Two per-channel spatial sums (of dy and of dy x) feed all of them. With the SiLU,
    dy is first multiplied by SiLU'(y), y recomputed from x inside the same element-wise passes."""
    x, scale, bias, mean, rstd = res
    c = x.shape[-1]
    xf, dyf = x.astype(jnp.float32), dy.astype(jnp.float32)
    axes = tuple(range(1, x.ndim - 1))
    n = math.prod(x.shape[1:-1]) * (c // groups)
    mu, r = _per_channel(mean, c), _per_channel(rstd, c)                     # (B, C)
    if act == "silu":
        y = ((xf - _spatial(mu, x.ndim)) * _spatial(r * scale.astype(jnp.float32), x.ndim)
             + bias.astype(jnp.float32))
        dyf = dyf * _silu_and_grad(y)[1]
    sum_dy = jnp.sum(dyf, axes)
    sum_dy_xh = r * (jnp.sum(dyf * xf, axes) - mu * sum_dy)
    s = scale.astype(jnp.float32)
    m1 = _per_channel(_group_sum(s * sum_dy, groups) / n, c)                 # <s dy>
    m2 = _per_channel(_group_sum(s * sum_dy_xh, groups) / n, c)              # <s dy xh>
    sp = lambda v: _spatial(v, x.ndim)
    dx = dyf * sp(r * s) - sp(r * m1) - (xf - sp(mu)) * sp(r * r * m2)
    return (dx.astype(x.dtype), jnp.sum(sum_dy_xh, 0).astype(scale.dtype),
            jnp.sum(sum_dy, 0).astype(bias.dtype))


_group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)
# Traced and lowered once per (shape, groups, eps, dtype, activation), shared by every norm of that shape.
_group_norm_jit = jax.jit(_group_norm, static_argnums=(3, 4, 5, 6))


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, eps: float,
               out_dtype, activation=None) -> jax.Array:
    """GroupNorm of channel-last x (B, *spatial, C) [then SiLU], the CPU form (see the module doc)."""
    return _group_norm_jit(x, scale, bias, groups, eps, jnp.dtype(out_dtype), activation)
