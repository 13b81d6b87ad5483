"""Time-dependent parameters and norms (TD-LN / TD-RMSNorm; Liu et al. 2024, DiMR, Sec. 3.3).

Every affine vector p of a norm becomes a learned sigmoid interpolation in the time scalar tau:
    s(tau) = sigmoid((1 + w) tau + b),      p(tau) = p1 + s(tau) (p0 - p1),
with p0 = p1 = the plain initial value (1 for scales, 0 for biases) and w = b = 0 at init, so at init
TD-LN == LN exactly for every tau. Cost: 4 vectors per affine vector (p0, p1, w, b). DiMR feeds
tau = log_snr / 4 in [-1, 1]; here tau = noise_labels * time_scale + time_shift (``td_time``), with
defaults mapping our 0..1000 noise labels to [-1, 1]. The w/b parameters are named ``nodecay_*`` so
an optimizer mask can exclude them from weight decay, as DiMR does.

``TDModulation`` is the drop-in for a DiT block's adaLN-Zero (norm='tdln'): shift -> TD bias (init 0),
1 + scale -> TD scale (init 1), gate -> TD vector initialised at 0 (our addition mirroring adaLN-Zero,
so a block is exactly the identity at init; DiMR's own blocks are ungated).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.layers import expand_like

Dtype = Any


def td_time(noise_labels: jax.Array, time_scale: float = 0.002, time_shift: float = -1.0) -> jax.Array:
    """The TD time scalar tau (B,) float32 from the network's noise labels."""
    return jnp.asarray(noise_labels, jnp.float32) * time_scale + time_shift


class TimeDependentParameter(nn.Module):
    """p(tau) = p1 + sigmoid((1 + w) tau + b) (p0 - p1): a (B, *shape) parameter per example."""

    shape: Sequence[int]
    init_value: float = 0.0
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tau: jax.Array) -> jax.Array:
        shape = tuple(self.shape)
        const = lambda key, s, dt: jnp.full(s, self.init_value, dt)
        p0 = self.param("p0", const, shape, self.param_dtype)
        p1 = self.param("p1", const, shape, self.param_dtype)
        w = self.param("nodecay_w", nn.initializers.zeros, shape, self.param_dtype)
        b = self.param("nodecay_b", nn.initializers.zeros, shape, self.param_dtype)
        tau = jnp.asarray(tau, jnp.float32).reshape((-1,) + (1,) * len(shape))
        s = jax.nn.sigmoid((1.0 + w.astype(jnp.float32)) * tau + b.astype(jnp.float32))
        return p1.astype(jnp.float32) + s * (p0.astype(jnp.float32) - p1.astype(jnp.float32))


class TDLayerNorm(nn.Module):
    """LN_tau(x) = weight(tau) * (x - mean) / sqrt(var + eps) + bias(tau); x (B, ..., D), tau (B,)."""

    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, tau: jax.Array) -> jax.Array:
        d = x.shape[-1]
        xf = x.astype(jnp.float32)
        mean = xf.mean(-1, keepdims=True)
        var = jnp.square(xf - mean).mean(-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * expand_like(TimeDependentParameter((d,), 1.0, self.param_dtype, name="weight")(tau), y)
        y = y + expand_like(TimeDependentParameter((d,), 0.0, self.param_dtype, name="bias")(tau), y)
        return y.astype(self.dtype)


class TDRMSNorm(nn.Module):
    """RMSNorm_tau(x) = scale(tau) * x / (||x|| / sqrt(D) + eps) (DiMR's TDRMSN, eps 1e-8)."""

    eps: float = 1e-8
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, tau: jax.Array) -> jax.Array:
        d = x.shape[-1]
        xf = x.astype(jnp.float32)
        rms = jnp.sqrt(jnp.sum(jnp.square(xf), -1, keepdims=True)) * d ** -0.5
        y = xf / (rms + self.eps)
        y = y * expand_like(TimeDependentParameter((d,), 1.0, self.param_dtype, name="scale")(tau), y)
        return y.astype(self.dtype)


class TDModulation(nn.Module):
    """TD-LN replacement for adaLN-Zero: returns (TDLN(x), gate) with gate(tau) (B, D), init 0."""

    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, tau: jax.Array):
        y = TDLayerNorm(self.eps, dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(x, tau)
        gate = TimeDependentParameter((x.shape[-1],), 0.0, self.param_dtype, name="gate")(tau)
        return y, gate.astype(self.dtype)
