"""Convolutional U-Net blocks (Ho et al. 2020, DDPM; Dhariwal & Nichol 2021, ADM), any spatial rank.

ResBlock (ADM, Appendix A), h = conv(SiLU(GN(x))) then, with the embedding e:
    scale-shift norm:  h = conv0(dropout(SiLU(GN(h) (1 + scale(e)) + shift(e))))
    additive (DDPM):   h = conv0(dropout(SiLU(GN(h + W e))))
    out = skip(x) + h,  conv0 zero-initialised so every block starts as its skip path.
BigGAN-style up/down ResBlocks resample both paths before the first conv. Attention over all spatial
positions with a zero-initialised output projection. Inputs are channel-last (B, *spatial, C).

``Conv`` and ``GroupNorm`` compute the same functions as flax's nn.Conv / nn.GroupNorm, with the same
parameters, in forms XLA:CPU runs fast (see BENCHMARKS.md for the measurements):
    GroupNorm  per-channel sums over the spatial axes first, then per-group sums of those (B, C)
               totals: mu = E[x], var = E[x^2] - mu^2 (float32), y = (x - mu) rsqrt(var + eps) g + b;
               its gradient written out (custom VJP), jitted once per shape.
               (Reducing the (B, *spatial, G, C/G) view directly is a strided reduction XLA:CPU
               runs ~5x slower.)
    Conv       1x1: a matmul over channels. On CPU lowering, 'same' 3x3 stride-1 convs run as
               Winograd F(2x2, 3x3) (forward, input and kernel gradients); other kxk convs use
               lax.conv with the kernel gradient as k^d matmuls dW[o] = sum x_pad[b, p + o]^T dy[b, p]
               (XLA:CPU's default whole-image-window kernel-gradient conv is 3-40x slower). TPU and
               GPU lowerings keep XLA's own convolution and gradient (lax.platform_dependent).
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Any, Optional, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.layers import attention, expand_like

Dtype = Any
zeros = nn.initializers.zeros


def num_groups(channels: int, groups: int = 32) -> int:
    """The largest group count <= ``groups`` that divides ``channels`` (32 for published widths)."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


class GroupNorm(nn.Module):
    """Group normalization (Wu & He 2018) over (spatial, C / G); params ``scale``, ``bias`` (C,).

    ``activation='silu'`` returns SiLU(GN(x)) from the same kernels (its derivative folded into the
    norm's backward): one pass over the activations fewer each way, and nothing but x saved."""

    num_groups: int = 32
    epsilon: float = 1e-5
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32
    activation: Optional[str] = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, g = x.shape[-1], self.num_groups
        if c % g:
            raise ValueError(f"GroupNorm: {c} channels not divisible by {g} groups")
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        if self.activation not in (None, "silu"):
            raise ValueError(f"GroupNorm: activation {self.activation!r} is not one of None, 'silu'")
        out_dtype = jnp.dtype(self.dtype or jnp.result_type(x, self.param_dtype))
        return _group_norm_jit(x, scale, bias, g, self.epsilon, out_dtype, self.activation)


def _group_sum(v, groups):
    """(B, C) -> (B, G): sums over the channels of each group."""
    return v.reshape(v.shape[0], groups, v.shape[-1] // groups).sum(-1)


def _per_channel(v, channels):
    """(B, G) -> (B, C): each group's value on its channels."""
    return jnp.repeat(v, channels // v.shape[-1], axis=-1)


def _spatial(v, ndim):
    """(B, C) -> (B, 1, ..., 1, C), broadcastable against (B, *spatial, C)."""
    return v.reshape((v.shape[0],) + (1,) * (ndim - 2) + (v.shape[-1],))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _group_norm(x, scale, bias, groups, eps, out_dtype, act=None):
    return _group_norm_fwd(x, scale, bias, groups, eps, out_dtype, act)[0]


def _silu_and_grad(u):
    """SiLU(u) = u sigmoid(u) and its derivative sigmoid(u) (1 + u (1 - sigmoid(u)))."""
    sig = jax.nn.sigmoid(u)
    return u * sig, sig * (1 + u * (1 - sig))


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


def group_norm(channels: int, dtype: Dtype, name: Optional[str] = None, eps: float = 1e-5,
               activation: Optional[str] = None):
    return GroupNorm(num_groups=num_groups(channels), epsilon=eps, dtype=dtype, name=name,
                     activation=activation)


def _conv_dims(nd: int):
    sp = "HWD"[:nd]
    return ("N" + sp + "C", sp + "IO", "N" + sp + "C")


def _lax_conv(x, w, strides, padding):
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_conv_dims(x.ndim - 2))


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


# Winograd F(2x2, 3x3) (Lavin & Gray 2016): Y = A^T [(G g G^T) * (B^T d B)] A on 4x4 input tiles d
# with stride 2, giving 2x2 outputs each; the 16 element-wise products over channels are 16 matmuls
# (tiles x C_in) @ (C_in x C_out): 4 instead of 9 multiply-adds per output and channel pair.
# The tile transforms are written as broadcast multiply-adds of strided windows (``_combine``), so XLA
# fuses each transform into one loop kernel (a stack of 16 slices compiles to 16 kernels).
_WINO_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_WINO_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
_WINO_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
USE_WINOGRAD = True   # module switch (benchmarks compare both forms)


def _winograd_ok(x, w, strides, padding) -> bool:
    return (x.ndim == 4 and tuple(w.shape[:2]) == (3, 3) and set(strides) == {1}
            and tuple(map(tuple, padding)) == ((1, 1), (1, 1))
            and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0)


def _combine(mat: np.ndarray, parts: Sequence[jax.Array], axis: int) -> jax.Array:
    """out[..., a, ...] = sum_j mat[a, j] parts[j], the new axis ``a`` inserted at ``axis``.

    Written in lax primitives (as are the windows below): these run once per conv shape at trace
    time, and jnp's wrappers made them a sixth of the train step's tracing."""
    shape = parts[0].shape[:axis] + (mat.shape[0],) + parts[0].shape[axis:]
    rest = tuple(i for i in range(len(shape)) if i != axis)
    out = None
    for col, part in zip(mat.T, parts):
        if not col.any():
            continue
        term = jax.lax.mul(jax.lax.broadcast_in_dim(col.astype(part.dtype), shape, (axis,)),
                           jax.lax.broadcast_in_dim(part, shape, rest))
        out = term if out is None else jax.lax.add(out, term)
    return out


def _window(x: jax.Array, start: Sequence[int], size: Sequence[int], stride: Sequence[int]):
    """x[:, s0::t0 (n0 of them), s1::t1 (n1), ...] over the axes after the first (lax.slice)."""
    lo = (0,) + tuple(start) + (0,) * (x.ndim - 1 - len(start))
    hi = (x.shape[0],) + tuple(s + t * (n - 1) + 1 for s, n, t in zip(start, size, stride))
    hi = hi + x.shape[len(hi):]
    return jax.lax.slice(x, lo, hi, (1,) + tuple(stride) + (1,) * (x.ndim - 1 - len(stride)))


def _take(x: jax.Array, *index: int, axis: int = 0) -> jax.Array:
    """x[i0, i1, ...] for static indices, the first on ``axis``."""
    for i in index:
        x = jax.lax.index_in_dim(x, i, axis, keepdims=False)
    return x


def _unfused(x: jax.Array) -> jax.Array:
    """``x`` itself, materialized: a fusion barrier for XLA:CPU.

    The tile transforms read every input element up to 16 times; fused into them, x's producer is
    recomputed on each read. Used on dY in the kernel gradient, whose producer is the backward chain
    (SiLU', GroupNorm's dx): train step 6.2 s with the boundary, 6.6 s without. The input transform
    goes without it: since GroupNorm's forward is one affine map per channel, the step is faster
    with no boundary there (6.2 s) than with one (6.35 s).
    ``lax.optimization_barrier`` is gone before XLA fuses; a conditional (both branches the
    identity, the predicate a runtime value XLA cannot fold) is a boundary fusion does not cross. The
    branches must differ in form (a + 0, a * 1): with two identical branches XLA removes the
    conditional. Only a speed device: the value is x whatever XLA does with it. The predicate reads
    x's first element, so x must be data, not a constant (e.g. padding) XLA could fold.
    """
    if not x.size:
        return x
    pred = jnp.isnan(x.ravel()[0])
    return jax.lax.cond(pred | ~pred, lambda a: a + 0, lambda a: a * 1, x)


def _winograd_input(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (16, B H W / 4, C): B^T d B for every 4x4 tile d of the zero-padded input."""
    b, h, w, c = x.shape
    th, tw = h // 2, w // 2
    xp = jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (1, 1, 0), (1, 1, 0), (0, 0, 0)))
    win = [[_window(xp, (k, l), (th, tw), (2, 2)) for l in range(4)] for k in range(4)]
    rows = [_combine(_WINO_BT, win[k], 0) for k in range(4)]           # B^T along columns
    return _combine(_WINO_BT, rows, 0).reshape(16, b * th * tw, c)     # B^T along rows


def _winograd_output(m: jax.Array, shape: Sequence[int]) -> jax.Array:
    """(16, N, O) -> (B, H, W, O): A^T m A per tile, the 2x2 outputs placed at (2i + r, 2j + s)."""
    b, h, w = shape
    m = m.reshape(4, 4, b, h // 2, w // 2, m.shape[-1])
    y = _combine(_WINO_AT, [_combine(_WINO_AT, [_take(m, a, c) for c in range(4)], 3)
                            for a in range(4)], 2)
    return y.reshape(b, h, w, m.shape[-1])                                     # (B, th, r, tw, s, O)


def _winograd_output_transpose(dy: jax.Array) -> jax.Array:
    """The adjoint of ``_winograd_output``: (B, H, W, O) -> (16, N, O), A dY A^T per 2x2 tile."""
    dy = _unfused(dy)
    th, tw = dy.shape[1] // 2, dy.shape[2] // 2
    win = [[_window(dy, (r, s), (th, tw), (2, 2)) for s in range(2)] for r in range(2)]
    rows = [_combine(_WINO_AT.T, win[r], 0) for r in range(2)]
    return _combine(_WINO_AT.T, rows, 0).reshape(16, dy.shape[0] * th * tw, dy.shape[-1])


def _winograd_kernel(w: jax.Array) -> jax.Array:
    """(3, 3, I, O) -> (4, 4, I, O): G g G^T per (input, output) channel pair, in float32 (one
    element-wise kernel; as an einsum it compiled to four matmul kernels and two transposes)."""
    w = w.astype(jnp.float32)
    rows = _combine(_WINO_G, [_take(w, y) for y in range(3)], 0)              # (4, 3, I, O)
    return _combine(_WINO_G, [_take(rows, x, axis=1) for x in range(3)], 1)  # (4, 4, I, O)


@jax.jit   # traced once per shape: the primal, the VJP's forward and its dx conv share the trace
def _winograd(x: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(y, V, U): the convolution, its transformed input tiles V = B^T d B and kernel U = G g G^T."""
    u = _winograd_kernel(w).astype(w.dtype).reshape(16, *w.shape[2:])
    v = _winograd_input(x)
    m = jnp.matmul(v, u, preferred_element_type=jnp.float32)
    return _winograd_output(m, x.shape[:3]).astype(jnp.result_type(x, w)), v, u


# G J = P G for J reversing the 3 taps and P swapping rows 0 and 3 of G, so the transformed kernel of
# the flipped kernel is P U P^T: U's tile indices permuted, no transform recomputed.
_FLIP_TILE = np.array([3, 1, 2, 0])


@jax.jit
def _winograd_input_grad(dy: jax.Array, u: jax.Array) -> jax.Array:
    """d/dx of sum(winograd_conv3x3(x, W) * dy) from W's transformed kernel U (16, I, O): the 'same'
    conv of dy with the flipped kernel, channels exchanged, whose transform is U[P, P] read with
    (O, I) contracted over O (no transposed copy of the kernel)."""
    i, o = u.shape[1:]
    uf = u.reshape(4, 4, i, o)[_FLIP_TILE][:, _FLIP_TILE].reshape(16, i, o)
    m = jnp.einsum("kno,kio->kni", _winograd_input(dy.astype(u.dtype)), uf,
                   preferred_element_type=jnp.float32)
    return _winograd_output(m, dy.shape[:3]).astype(jnp.result_type(dy, u))


def _check_winograd(x, w) -> None:
    if not _winograd_ok(x, w, (1, 1), ((1, 1), (1, 1))) or x.shape[-1] != w.shape[2]:
        raise ValueError(f"Winograd F(2x2, 3x3) needs x (B, H, W, C) with even H and W and a kernel "
                         f"(3, 3, C, O); got x {tuple(x.shape)}, kernel {tuple(w.shape)} (use "
                         f"conv_nd, which falls back to lax.conv)")


def winograd_conv3x3(x: jax.Array, w: jax.Array) -> jax.Array:
    """'Same' 3x3 stride-1 convolution (NHWC, HWIO, even H and W) by Winograd F(2x2, 3x3)."""
    _check_winograd(x, w)
    return _winograd(x, w)[0]


@jax.jit
def winograd_kernel_grad(x: Optional[jax.Array], dy: jax.Array,
                         v: Optional[jax.Array] = None) -> jax.Array:
    """d/dW of sum(winograd_conv3x3(x, W) * dy): G^T (sum over tiles V^T dM) G, V = B^T d B
    (``v`` if given, e.g. saved by the forward pass), dM = A dY A^T (float32)."""
    if v is None:
        if x is None:
            raise ValueError("winograd_kernel_grad needs the input x or its transformed tiles v")
        _check_winograd(x, jnp.zeros((3, 3, x.shape[-1], dy.shape[-1]), x.dtype))
        if dy.shape != x.shape[:3] + (dy.shape[-1],):
            raise ValueError(f"winograd_kernel_grad: dy {tuple(dy.shape)} does not match the "
                             f"'same' conv output of x {tuple(x.shape)}")
    v = _winograd_input(x) if v is None else v
    du = jnp.einsum("knc,kno->kco", v, _winograd_output_transpose(dy.astype(v.dtype)),
                    preferred_element_type=jnp.float32)
    du = du.reshape(4, 4, *du.shape[1:])
    rows = _combine(_WINO_G.T, [_take(du, a) for a in range(4)], 0)           # (3, 4, I, O)
    return _combine(_WINO_G.T, [_take(rows, b, axis=1) for b in range(4)], 1)  # (3, 3, I, O)


def _conv_fwd_cpu(x, w, strides, padding, winograd):
    if winograd and _winograd_ok(x, w, strides, padding):
        return winograd_conv3x3(x, w)
    return _lax_conv(x, w, strides, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_cpu(x, w, strides, padding, winograd):
    return _conv_fwd_cpu(x, w, strides, padding, winograd)


def _conv_cpu_fwd(x, w, strides, padding, winograd):
    if winograd and _winograd_ok(x, w, strides, padding):
        y, v, u = _winograd(x, w)
        return y, (None, w, v, u)   # V (4x the input's size) replaces x: recomputing it costs more
    return _lax_conv(x, w, strides, padding), (x, w, None, None)


def _conv_cpu_bwd(strides, padding, winograd, res, dy):
    x, w, v, u = res
    if v is not None:
        dx = _winograd_input_grad(dy, u).astype(dy.dtype)
        return dx, winograd_kernel_grad(None, dy, v).astype(w.dtype)
    dx = jax.vjp(lambda a: _lax_conv(a, w, strides, padding), x)[1](dy)[0]
    return dx, conv_kernel_grad(x, dy, w.shape, strides, padding).astype(w.dtype)


_conv_cpu.defvjp(_conv_cpu_fwd, _conv_cpu_bwd)
# One trace and one lowering per (shapes, strides, padding, form), shared by every layer of that shape.
_conv_cpu_jit = jax.jit(_conv_cpu, static_argnums=(2, 3, 4))


def conv_nd(x: jax.Array, w: jax.Array, strides: tuple, padding: tuple) -> jax.Array:
    """Channel-last convolution (any spatial rank) for XLA:CPU: Winograd F(2x2, 3x3) forward and
    gradients where it applies (and ``USE_WINOGRAD``), otherwise lax.conv with the kernel gradient
    by ``conv_kernel_grad``."""
    return _conv_cpu_jit(x, w, tuple(strides), tuple(tuple(p) for p in padding), USE_WINOGRAD)


class Conv(nn.Module):
    """nn.Conv's function and parameters (``kernel`` (*k, C_in, C_out), ``bias``), fast on XLA:CPU."""

    features: int
    kernel_size: Sequence[int]
    strides: Optional[Sequence[int]] = None
    padding: Optional[Sequence[Sequence[int]]] = None   # explicit (lo, hi) per axis; None = 0
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        nd, ks = x.ndim - 2, tuple(self.kernel_size)
        kernel = self.param("kernel", self.kernel_init, ks + (x.shape[-1], self.features),
                            self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        strides = tuple(self.strides or (1,) * nd)
        padding = tuple(tuple(p) for p in (self.padding or [(0, 0)] * nd))
        if math.prod(ks) == 1 and set(strides) == {1} and not any(map(any, padding)):
            # One (B * spatial, C) matmul: its kernel gradient then has a single contracting axis,
            # which XLA:CPU runs without first copying x (or dy) to a (C, N) layout.
            y = jnp.matmul(x.reshape(-1, x.shape[-1]), kernel.reshape(kernel.shape[-2:]))
            y = y.reshape(x.shape[:-1] + (self.features,))
        else:
            # The per-tap kernel gradient pays off on XLA:CPU only; TPU and GPU lowerings keep XLA's
            # own convolution gradient (the choice is made per platform when the step is lowered,
            # so a deviceless TPU preflight on this CPU compiles the TPU form).
            y = jax.lax.platform_dependent(
                x, kernel, cpu=lambda u, k: conv_nd(u, k, strides, padding),
                default=lambda u, k: _lax_conv(u, k, strides, padding))
        return y + bias


def conv(features: int, ndim: int, kernel: int = 3, stride: int = 1, zero: bool = False,
         dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, name: Optional[str] = None):
    pad = kernel // 2
    return Conv(features, (kernel,) * ndim, strides=(stride,) * ndim, padding=[(pad, pad)] * ndim,
                kernel_init=zeros if zero else nn.initializers.lecun_normal(), dtype=dtype,
                param_dtype=param_dtype, name=name)


def upsample_nearest(x: jax.Array) -> jax.Array:
    """Nearest-neighbour x2 along every spatial axis of (B, *spatial, C)."""
    for axis in range(1, x.ndim - 1):
        x = jnp.repeat(x, 2, axis=axis)
    return x


def downsample_avg(x: jax.Array) -> jax.Array:
    nd = x.ndim - 2
    return nn.avg_pool(x, (2,) * nd, strides=(2,) * nd)


class Downsample(nn.Module):
    """Stride-2 3x3 conv (``use_conv``) or 2x average pooling."""

    out_channels: int
    use_conv: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.use_conv:
            return conv(self.out_channels, x.ndim - 2, 3, 2, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="conv")(x)
        return downsample_avg(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then (``use_conv``) a 3x3 conv."""

    out_channels: int
    use_conv: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = upsample_nearest(x)
        if self.use_conv:
            x = conv(self.out_channels, x.ndim - 2, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="conv")(x)
        return x


class ResBlock(nn.Module):
    """ADM / DDPM residual block; ``emb`` (B, E) may be None for an unconditional (classifier) net."""

    out_channels: int
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    up: bool = False
    down: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: Optional[jax.Array], train: bool = False) -> jax.Array:
        nd, out = x.ndim - 2, self.out_channels
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = group_norm(x.shape[-1], self.dtype, "norm1", activation="silu")(x)
        if self.up or self.down:
            resample = upsample_nearest if self.up else downsample_avg
            h, x = resample(h), resample(x)
        h = conv(out, nd, name="conv1", **kw)(h)
        if emb is not None and self.use_scale_shift_norm:
            e = nn.Dense(2 * out, name="emb_proj", **kw)(nn.silu(emb))
            scale, shift = jnp.split(expand_like(e, h), 2, axis=-1)
            h = nn.silu(group_norm(out, self.dtype, "norm2")(h) * (1 + scale) + shift)
        else:
            if emb is not None:
                h = h + expand_like(nn.Dense(out, name="emb_proj", **kw)(nn.silu(emb)), h)
            h = group_norm(out, self.dtype, "norm2", activation="silu")(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv(out, nd, zero=True, name="conv2", **kw)(h)
        if x.shape[-1] != out:
            x = conv(out, nd, kernel=1, name="skip", **kw)(x)
        return x + h


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions: x + proj0(attn(qkv(GN(x)))) (DDPM / ADM)."""

    num_heads: int = 1
    num_head_channels: int = -1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ch = x.shape[-1]
        heads = ch // self.num_head_channels if self.num_head_channels > 0 else self.num_heads
        if ch % heads:
            raise ValueError(f"attention channels {ch} not divisible by {heads} heads")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        # The projections see (B * L, C) rows: their kernel gradients then contract one axis, which
        # XLA:CPU runs as a plain matmul (over (B, L) it took a slower path, as the 1x1 Conv did).
        h = group_norm(ch, self.dtype, "norm")(x).reshape(-1, ch)
        qkv = nn.Dense(3 * ch, name="qkv", **kw)(h).reshape(x.shape[0], -1, 3 * ch)
        q, k, v = einops.rearrange(qkv, "b l (three h d) -> three b l h d", three=3, h=heads)
        h = attention(q, k, v).reshape(-1, ch)
        h = nn.Dense(ch, kernel_init=zeros, name="proj", **kw)(h)
        return x + h.reshape(x.shape)
