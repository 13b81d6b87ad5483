"""Winograd F(2x2, 3x3) convolution (Lavin & Gray 2016) for XLA:CPU: forward, input and kernel gradients.

Y = A^T [(G g G^T) * (B^T d B)] A on 4x4 input tiles d with stride 2, giving 2x2 outputs each; the 16
element-wise products over channels are 16 matmuls (tiles x C_in) @ (C_in x C_out): 4 instead of 9
multiply-adds per output and channel pair. Only 'same' 3x3 stride-1 convs of (B, H, W, C) inputs with
even H and W (``winograd_ok``). The tile transforms are written as broadcast multiply-adds of strided
windows (``_combine``), so XLA fuses each transform into one loop kernel (a stack of 16 slices
compiles to 16 kernels).
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_WINO_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_WINO_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
_WINO_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
_SAME = ((1, 1), (1, 1))


def winograd_ok(x, w, strides, padding) -> bool:
    """Whether F(2x2, 3x3) computes conv(x, w): 2-D, 3x3 kernel, stride 1, 'same' padding, even H, W."""
    return (x.ndim == 4 and tuple(w.shape[:2]) == (3, 3) and set(strides) == {1}
            and tuple(map(tuple, padding)) == _SAME
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
def winograd_forward(x: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(y, V, U): the convolution, its transformed input tiles V = B^T d B and kernel U = G g G^T."""
    u = _winograd_kernel(w).astype(w.dtype).reshape(16, *w.shape[2:])
    v = _winograd_input(x)
    m = jnp.matmul(v, u, preferred_element_type=jnp.float32)
    return _winograd_output(m, x.shape[:3]).astype(jnp.result_type(x, w)), v, u


# G J = P G for J reversing the 3 taps and P swapping rows 0 and 3 of G, so the transformed kernel of
# the flipped kernel is P U P^T: U's tile indices permuted, no transform recomputed.
_FLIP_TILE = np.array([3, 1, 2, 0])


@jax.jit
def winograd_input_grad(dy: jax.Array, u: jax.Array) -> jax.Array:
    """d/dx of sum(winograd_conv3x3(x, W) * dy) from W's transformed kernel U (16, I, O): the 'same'
    conv of dy with the flipped kernel, channels exchanged, whose transform is U[P, P] read with
    (O, I) contracted over O (no transposed copy of the kernel)."""
    i, o = u.shape[1:]
    uf = u.reshape(4, 4, i, o)[_FLIP_TILE][:, _FLIP_TILE].reshape(16, i, o)
    m = jnp.einsum("kno,kio->kni", _winograd_input(dy.astype(u.dtype)), uf,
                   preferred_element_type=jnp.float32)
    return _winograd_output(m, dy.shape[:3]).astype(jnp.result_type(dy, u))


def _check_winograd(x, w) -> None:
    if not winograd_ok(x, w, (1, 1), _SAME) or x.shape[-1] != w.shape[2]:
        raise ValueError(f"Winograd F(2x2, 3x3) needs x (B, H, W, C) with even H and W and a kernel "
                         f"(3, 3, C, O); got x {tuple(x.shape)}, kernel {tuple(w.shape)} (use "
                         f"diffjax.kernels.conv, which falls back to lax.conv)")


def winograd_conv3x3(x: jax.Array, w: jax.Array) -> jax.Array:
    """'Same' 3x3 stride-1 convolution (NHWC, HWIO, even H and W) by Winograd F(2x2, 3x3)."""
    _check_winograd(x, w)
    return winograd_forward(x, w)[0]


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
