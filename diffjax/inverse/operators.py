"""Forward operators of inverse problems y = A(x) (+ noise), for images x of shape (B, H, W, C).

The operator contract (what a user writes to add one; see docs/INVERSE.md):

    Operator(name, forward, measurement_shape, project=None, linear=True)

    forward(x) -> y            differentiable (jax), batched over the leading axis, example b of y
                               depending only on example b of x; shapes are static
    measurement_shape(x_shape) the shape of one example's y from one example's x shape (H, W, C)
    project(x0_hat, y) -> x0'  optional: the steered-diffusion correction (Nair et al. 2023) of a
                               clean estimate toward {x : A(x) = y}; closed form for the linear
                               tasks below. Without it, ``steering.steer`` takes a gradient step
                               on ||y - A(x0_hat(x))||^2 instead
    linear                     whether A is linear (informational: ``landweber`` needs it)
    observed                   optional: 1 where an entry of y is measured, 0 where it is a
                               structural zero (inpainting's hole), broadcast against one
                               example of y; measurement noise is added only where it is 1

Operators close over their constants (a mask, a kernel): a different mask is a different program;
the guidance strengths (steering.py) are traced values. ``make(name, x_shape, **options)`` builds
one from the registry ``OPERATORS`` (name -> maker(x_shape, **options)); ``baseline(op, y)`` is the
no-prior reconstruction ``project(0, y)`` (= the pseudo-inverse A^+ y for the orthogonal projections
of inpainting and super-resolution).

Registered:
    inpaint   A x = m * x with m = 1 on known pixels (mask 'box': a centred hole of side ``size`` *
              H; 'random': each pixel known with probability ``keep``, from ``seed``); y has x's
              shape (zeros in the hole). project: x0' = m y + (1 - m) x0 (exact)
    sr        average pooling by ``factor`` (down D); nearest-neighbour up U, so D(U(z)) = z.
              project: back-projection x0' = x0 - U(D(x0)) + U(y), so D(x0') = y (to float
              rounding)
    colorize  y = the luma Y = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601) of 3-channel x; project:
              convert x0 to YCbCr, overwrite Y by y, convert back (Y(x0') = y to round-trip error)
    deblur    depthwise convolution with a normalized Gaussian kernel (``kernel_size``, ``std``;
              zero padding, y has x's shape). project: ``iters`` Landweber steps
              x <- x - A^T (A x - y) from x0 (step 1 <= 2 / ||A||^2 since the kernel sums to 1): a
              few-step approximate projection that corrects the well-conditioned (low) frequencies
              and leaves the nearly-lost high frequencies to the prior
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Operator:
    """A forward operator (module docstring); hashed by identity, so it can key a compiled program."""

    name: str
    forward: Callable
    measurement_shape: Callable
    project: Callable | None = None
    linear: bool = True
    observed: Any = None

    def check(self, x_shape, y_shape) -> None:
        """Raise if measurements of shape ``y_shape`` (B, ...) cannot come from x of ``x_shape``
        (B, H, W, C): the operator's output shape and the given measurement's differ."""
        want = tuple(self.measurement_shape(tuple(x_shape[1:])))
        if tuple(y_shape[1:]) != want:
            raise ValueError(f"operator {self.name!r}: the measurement has shape "
                             f"{tuple(y_shape[1:])} per example but the operator maps images of "
                             f"shape {tuple(x_shape[1:])} to {want}: pass y = A(x) of this "
                             f"operator (or build the operator for the image shape you have)")


def baseline(op: Operator, y, x_shape):
    """No-prior reconstruction: project(0, y), or ``landweber`` from 0 without a projection."""
    zero = jnp.zeros(tuple(x_shape), jnp.asarray(y).dtype)
    if op.project is not None:
        return op.project(zero, y)
    return landweber(op.forward, 20)(zero, y)


def landweber(forward: Callable, iters: int, step: float = 1.0) -> Callable:
    """``project(x0, y)``: ``iters`` steps x <- x - step A^T (A x - y) of a linear ``forward`` (A^T by
    ``jax.vjp``); converges to the projection of x0 onto {A x = y} when 0 < step < 2 / ||A||^2."""

    def project(x0, y):
        _, vjp = jax.vjp(forward, x0)        # A is linear: its VJP is A^T at any point

        def body(_, x):
            return x - step * vjp(forward(x) - y)[0]

        return jax.lax.fori_loop(0, iters, body, x0)

    return project


def _image_shape(x_shape, name):
    if len(tuple(x_shape)) != 3:
        raise ValueError(f"operator {name!r}: expected one image's shape (H, W, C), got "
                         f"{tuple(x_shape)}")
    return tuple(int(v) for v in x_shape)


def inpaint(x_shape, mask: str = "box", size: float = 0.5, keep: float = 0.3, seed: int = 0,
            ) -> Operator:
    """Inpainting: y = m * x, m = 1 on known pixels (module docstring); m shared by the channels."""
    h, w, _ = _image_shape(x_shape, "inpaint")
    if mask == "box":
        if not 0.0 < size < 1.0:
            raise ValueError(f"operator 'inpaint': box size must be in (0, 1) of the image side, "
                             f"got {size}")
        bh, bw = max(1, round(size * h)), max(1, round(size * w))
        m = np.ones((h, w, 1), np.float32)
        m[(h - bh) // 2:(h - bh) // 2 + bh, (w - bw) // 2:(w - bw) // 2 + bw] = 0.0
    elif mask == "random":
        if not 0.0 < keep < 1.0:
            raise ValueError(f"operator 'inpaint': keep (fraction of known pixels) must be in "
                             f"(0, 1), got {keep}")
        m = (np.random.default_rng(seed).random((h, w, 1)) < keep).astype(np.float32)
    else:
        raise ValueError(f"operator 'inpaint': unknown mask {mask!r}; expected 'box' or 'random'")
    m = jnp.asarray(m)
    return Operator("inpaint", forward=lambda x: x * m, measurement_shape=lambda s: tuple(s),
                    project=lambda x0, y: m * y + (1.0 - m) * x0, observed=np.asarray(m))


def _down(x, f):
    b, h, w, c = x.shape
    return x.reshape(b, h // f, f, w // f, f, c).mean(axis=(2, 4))


def _up(y, f):
    return jnp.repeat(jnp.repeat(y, f, axis=1), f, axis=2)


def sr(x_shape, factor: int = 2) -> Operator:
    """Super-resolution by ``factor``: average-pool down, nearest up, back-projection (docstring)."""
    h, w, c = _image_shape(x_shape, "sr")
    f = int(factor)
    if f < 1 or h % f or w % f:
        divisors = [d for d in range(2, min(h, w) + 1) if not h % d and not w % d]
        raise ValueError(f"operator 'sr': factor {factor} must be a positive integer dividing the "
                         f"image size {h}x{w} (valid: {', '.join(map(str, divisors)) or 'none'})")
    return Operator("sr", forward=lambda x: _down(x, f),
                    measurement_shape=lambda s: (s[0] // f, s[1] // f, s[2]),
                    project=lambda x0, y: x0 - _up(_down(x0, f), f) + _up(y, f))


# ITU-R BT.601 luma and chroma, without the offsets of 8-bit storage (the data are centred at 0)
_YCBCR = np.array([[0.299, 0.587, 0.114],
                   [-0.168736, -0.331264, 0.5],
                   [0.5, -0.418688, -0.081312]], np.float32)
_RGB = np.linalg.inv(_YCBCR.astype(np.float64)).astype(np.float32)


def to_ycbcr(x):
    return jnp.einsum("ij,...j->...i", jnp.asarray(_YCBCR), x)


def to_rgb(z):
    return jnp.einsum("ij,...j->...i", jnp.asarray(_RGB), z)


def colorize(x_shape) -> Operator:
    """Colorization: y = Y(x) (1 channel) of RGB x; project overwrites Y in YCbCr (docstring)."""
    _, _, c = _image_shape(x_shape, "colorize")
    if c != 3:
        raise ValueError(f"operator 'colorize' needs 3-channel (RGB) images; these have {c} "
                         f"channel{'s' if c != 1 else ''} (shape {tuple(x_shape)})")

    def project(x0, y):
        z = to_ycbcr(x0)
        return to_rgb(jnp.concatenate([y, z[..., 1:]], axis=-1))

    return Operator("colorize", forward=lambda x: to_ycbcr(x)[..., :1],
                    measurement_shape=lambda s: (s[0], s[1], 1), project=project)


def gaussian_kernel(size: int, std: float) -> np.ndarray:
    """A (size, size) Gaussian of standard deviation ``std`` pixels, normalized to sum 1."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-0.5 * (r / std) ** 2)
    k = np.outer(g, g)
    return (k / k.sum()).astype(np.float32)


def deblur(x_shape, kernel_size: int = 5, std: float = 1.5, iters: int = 10) -> Operator:
    """Gaussian deblurring: depthwise 'SAME' convolution (zero padding); Landweber project."""
    h, w, c = _image_shape(x_shape, "deblur")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"operator 'deblur': kernel_size must be a positive odd integer, got "
                         f"{kernel_size}")
    if not std > 0 or not math.isfinite(std):
        raise ValueError(f"operator 'deblur': std must be a positive number, got {std}")
    k = jnp.asarray(np.tile(gaussian_kernel(kernel_size, std)[:, :, None, None], (1, 1, 1, c)))

    def forward(x):
        return jax.lax.conv_general_dilated(x, k.astype(x.dtype), (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=c)

    return Operator("deblur", forward=forward, measurement_shape=lambda s: tuple(s),
                    project=landweber(forward, int(iters)))


OPERATORS: dict[str, Callable[..., Operator]] = {"inpaint": inpaint, "sr": sr,
                                                 "colorize": colorize, "deblur": deblur}


def make(name: str, x_shape, **options) -> Operator:
    """The registered operator ``name`` built for images of shape ``x_shape`` (H, W, C)."""
    if name not in OPERATORS:
        raise ValueError(f"unknown operator {name!r}; valid operators: {', '.join(OPERATORS)}")
    try:
        return OPERATORS[name](tuple(x_shape), **options)
    except TypeError as e:
        import inspect
        valid = [p for p in inspect.signature(OPERATORS[name]).parameters if p != "x_shape"]
        raise ValueError(f"operator {name!r}: bad options {sorted(options)} ({e}); its options: "
                         f"{', '.join(valid) or 'none'}") from None
