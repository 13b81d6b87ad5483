"""Channel-last convolution for XLA:CPU with its own gradient (custom VJP).

'Same' 3x3 stride-1 convs of even-sized 2-D inputs run as Winograd F(2x2, 3x3) (``winograd.py``:
forward, input and kernel gradients; the forward saves the transformed tiles V instead of x). Every
other kxk conv uses lax.conv forward and for dx, and computes the kernel gradient as k^d matmuls
    dW[o] = sum_{b, p} x_pad[b, p + o]^T dy[b, p]        (one per kernel tap o, float32 accumulation)
(XLA:CPU's default whole-image-window kernel-gradient conv is 3-40x slower; BENCHMARKS.md).
"""
from __future__ import annotations

import functools
import itertools
from typing import Sequence

import jax
import jax.numpy as jnp

from diffjax.kernels.cpu import winograd as wg
from diffjax.kernels.reference import lax_conv


def conv_kernel_grad(x: jax.Array, dy: jax.Array, kernel_shape: Sequence[int], strides, padding):
    """d/dW of sum(conv(x, W) * dy) as one matmul per kernel tap (float32 accumulation)."""
    nd = x.ndim - 2
    xp = jnp.pad(x, ((0, 0),) + tuple(tuple(p) for p in padding) + ((0, 0),))
    dy2 = dy.reshape(-1, dy.shape[-1])
    taps = []
    for off in itertools.product(*(range(k) for k in kernel_shape[:nd])):
        window = tuple(slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(off, strides, dy.shape[1:-1]))
        xs = xp[(slice(None),) + window].reshape(-1, x.shape[-1])
        taps.append(jnp.matmul(xs.T, dy2, preferred_element_type=jnp.float32))
    return jnp.stack(taps).reshape(tuple(kernel_shape))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, padding, winograd):
    if winograd and wg.winograd_ok(x, w, strides, padding):
        return wg.winograd_conv3x3(x, w)
    return lax_conv(x, w, strides, padding)


def _conv_fwd(x, w, strides, padding, winograd):
    if winograd and wg.winograd_ok(x, w, strides, padding):
        y, v, u = wg.winograd_forward(x, w)
        return y, (None, w, v, u)   # V (4x the input's size) replaces x: recomputing it costs more
    return lax_conv(x, w, strides, padding), (x, w, None, None)


def _conv_bwd(strides, padding, winograd, res, dy):
    x, w, v, u = res
    if v is not None:
        dx = wg.winograd_input_grad(dy, u).astype(dy.dtype)
        return dx, wg.winograd_kernel_grad(None, dy, v).astype(w.dtype)
    dx = jax.vjp(lambda a: lax_conv(a, w, strides, padding), x)[1](dy)[0]
    return dx, conv_kernel_grad(x, dy, w.shape, strides, padding).astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)
# One trace and one lowering per (shapes, strides, padding, form), shared by every layer of that shape.
_conv_jit = jax.jit(_conv, static_argnums=(2, 3, 4))


def conv(x: jax.Array, w: jax.Array, strides: Sequence[int], padding: Sequence[Sequence[int]],
         winograd: bool = True) -> jax.Array:
    """lax.conv_general_dilated(x, w, strides, padding) for (B, *spatial, C) and (*k, C, O), the CPU
    form: Winograd F(2x2, 3x3) where it applies and ``winograd``, else lax.conv with the per-tap
    kernel gradient."""
    return _conv_jit(x, w, tuple(strides), tuple(tuple(p) for p in padding), bool(winograd))
