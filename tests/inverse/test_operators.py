"""Forward operators: the steered-diffusion projections are exact where the card says so
(inpainting, super-resolution with D o U = Id, colorization up to the YCbCr round trip), deblurring's
Landweber projection reduces the residual, and bad inputs are errors naming what is wrong."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.inverse import operators as ops

KEY = jax.random.PRNGKey(0)


def _x(shape):
    return jax.random.uniform(KEY, shape, minval=-1.0, maxval=1.0)


@pytest.mark.parametrize("mask", ["box", "random"])
def test_inpaint_projection_replaces_known_pixels_exactly(mask):
    op = ops.make("inpaint", (8, 8, 3), mask=mask, keep=0.4, seed=3)
    x_true, x0 = _x((2, 8, 8, 3)), _x((2, 8, 8, 3)) * 0.5 + 0.1
    y = op.forward(x_true)
    p = np.asarray(op.project(x0, y))
    m = np.asarray(op.forward(jnp.ones((1, 8, 8, 3))))[0] > 0
    assert 0 < m.mean() < 1
    np.testing.assert_array_equal(p[:, m], np.asarray(x_true)[:, m])       # known pixels = y
    np.testing.assert_array_equal(p[:, ~m], np.asarray(x0)[:, ~m])          # the hole: x0's
    assert op.measurement_shape((8, 8, 3)) == (8, 8, 3)


def test_random_masks_follow_the_seed():
    a = ops.make("inpaint", (8, 8, 1), mask="random", seed=1).forward(jnp.ones((1, 8, 8, 1)))
    b = ops.make("inpaint", (8, 8, 1), mask="random", seed=1).forward(jnp.ones((1, 8, 8, 1)))
    c = ops.make("inpaint", (8, 8, 1), mask="random", seed=2).forward(jnp.ones((1, 8, 8, 1)))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("factor", [2, 4])
def test_sr_backprojection_is_consistent(factor):
    op = ops.make("sr", (8, 8, 2), factor=factor)
    x_true, x0 = _x((3, 8, 8, 2)), _x((3, 8, 8, 2)) ** 3
    y = op.forward(x_true)
    assert y.shape == (3, 8 // factor, 8 // factor, 2) == (3,) + op.measurement_shape((8, 8, 2))
    p = op.project(x0, y)
    # D(project(x0, y)) = D(x0) - D(U(D(x0))) + D(U(y)) = y: exact up to float32 rounding
    np.testing.assert_allclose(np.asarray(op.forward(p)), np.asarray(y), atol=1e-6, rtol=0)
    assert float(jnp.max(jnp.abs(op.forward(x0) - y))) > 0.1     # x0 itself was not consistent
    # D o U = Id and the projection is idempotent
    np.testing.assert_allclose(np.asarray(op.project(p, y)), np.asarray(p), atol=1e-6)
    # the correction lies in the range of U: the detail of x0 inside each block is kept
    d, d0 = np.asarray(p - ops._up(op.forward(p), factor)), np.asarray(x0 - ops._up(op.forward(x0), factor))
    np.testing.assert_allclose(d, d0, atol=1e-6)


def test_colorize_keeps_the_input_luma():
    op = ops.make("colorize", (4, 4, 3))
    x_true, x0 = _x((2, 4, 4, 3)), _x((2, 4, 4, 3)) * -0.7
    y = op.forward(x_true)
    assert y.shape == (2, 4, 4, 1)
    p = op.project(x0, y)
    np.testing.assert_allclose(np.asarray(op.forward(p)), np.asarray(y), atol=2e-6)
    # chroma is x0's: Cb, Cr unchanged
    np.testing.assert_allclose(np.asarray(ops.to_ycbcr(p)[..., 1:]),
                               np.asarray(ops.to_ycbcr(x0)[..., 1:]), atol=2e-6)
    np.testing.assert_allclose(np.asarray(ops.to_rgb(ops.to_ycbcr(x_true))), np.asarray(x_true),
                               atol=2e-6)
    # BT.601 luma weights
    np.testing.assert_allclose(np.asarray(op.forward(jnp.eye(3).reshape(3, 1, 1, 3)))[:, 0, 0, 0],
                               [0.299, 0.587, 0.114], atol=1e-6)


def test_deblur_is_a_normalized_blur_and_landweber_reduces_the_residual():
    op = ops.make("deblur", (8, 8, 1), kernel_size=5, std=1.0, iters=20)
    k = ops.gaussian_kernel(5, 1.0)
    assert abs(k.sum() - 1) < 1e-6 and np.allclose(k, k.T)
    const = jnp.ones((1, 8, 8, 1))
    assert abs(float(op.forward(const)[0, 4, 4, 0]) - 1.0) < 1e-6   # inner pixels: mean kept
    x_true = _x((2, 8, 8, 1))
    y = op.forward(x_true)
    x0 = jnp.zeros_like(x_true)
    r0 = float(jnp.linalg.norm(op.forward(x0) - y))
    r1 = float(jnp.linalg.norm(op.forward(op.project(x0, y)) - y))
    assert r1 < 0.3 * r0, (r0, r1)
    # linear and self-adjoint (symmetric kernel, zero padding): <A u, v> = <u, A v>
    u, v = _x((1, 8, 8, 1)), jax.random.normal(jax.random.PRNGKey(5), (1, 8, 8, 1))
    np.testing.assert_allclose(float(jnp.vdot(op.forward(u), v)), float(jnp.vdot(u, op.forward(v))),
                               rtol=1e-5)


def test_baseline_is_the_projection_of_zero():
    op = ops.make("sr", (4, 4, 1), factor=2)
    y = op.forward(_x((2, 4, 4, 1)))
    b = ops.baseline(op, y, (2, 4, 4, 1))
    np.testing.assert_allclose(np.asarray(b), np.asarray(ops._up(y, 2)), atol=1e-7)  # A^+ y = U y


def test_unknown_operator_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown operator 'blur'; valid operators: inpaint, sr, "
                                         "colorize, deblur"):
        ops.make("blur", (8, 8, 1))


def test_bad_operator_options_are_named():
    with pytest.raises(ValueError, match="'sr': bad options.*its options: factor"):
        ops.make("sr", (8, 8, 1), factr=2)
    with pytest.raises(ValueError, match="unknown mask 'circle'"):
        ops.make("inpaint", (8, 8, 1), mask="circle")
    with pytest.raises(ValueError, match="kernel_size must be a positive odd integer"):
        ops.make("deblur", (8, 8, 1), kernel_size=4)


def test_colorize_needs_three_channels():
    with pytest.raises(ValueError, match="'colorize' needs 3-channel .* these have 1 channel "):
        ops.make("colorize", (16, 16, 1))


def test_sr_factor_must_divide_the_image():
    with pytest.raises(ValueError, match=r"factor 3 must be a positive integer dividing the image "
                                         r"size 16x16 \(valid: 2, 4, 8, 16\)"):
        ops.make("sr", (16, 16, 1), factor=3)


def test_measurement_of_the_wrong_shape_names_both_shapes():
    op = ops.make("sr", (8, 8, 1), factor=2)
    with pytest.raises(ValueError, match=r"measurement has shape \(8, 8, 1\) per example but the "
                                         r"operator maps images of shape \(8, 8, 1\) to \(4, 4, 1\)"):
        op.check((2, 8, 8, 1), (2, 8, 8, 1))
    op.check((2, 8, 8, 1), (2, 4, 4, 1))   # the right one passes
