"""kernels.cpu.conv (Winograd F(2x2, 3x3), per-tap kernel gradients) against lax.conv."""
import jax
import jax.numpy as jnp
import pytest

from diffjax import kernels
from diffjax.kernels import cpu, reference
from diffjax.kernels.cpu import winograd as wg
from tests.kernels.util import close, rand, value_and_grads

SAME = ((1, 1), (1, 1))


@pytest.mark.parametrize("winograd", [True, False])
@pytest.mark.parametrize("shape, kernel, stride", [
    ((2, 8, 8, 5), 3, 1),        # Winograd F(2x2, 3x3) forward and gradients
    ((2, 16, 12, 32), 3, 1),     # Winograd, non-square, more channels
    ((2, 7, 7, 5), 3, 1),        # odd size: lax.conv with the per-tap kernel gradient
    ((2, 8, 8, 5), 3, 2),        # strided
    ((2, 9, 4), 3, 2),           # 1-D
    ((1, 4, 4, 4, 3), 3, 1),     # 3-D
    ((2, 8, 8, 5), 5, 1)])       # 5x5
def test_cpu_conv_matches_lax_conv(shape, kernel, stride, winograd):
    nd, pad = len(shape) - 2, kernel // 2
    strides, padding = (stride,) * nd, ((pad, pad),) * nd
    x, w = rand(1, shape), rand(2, (kernel,) * nd + (shape[-1], 6))
    close(value_and_grads(lambda a, k: cpu.conv(a, k, strides, padding, winograd), (x, w)),
          value_and_grads(lambda a, k: reference.lax_conv(a, k, strides, padding), (x, w)), 2e-5)


def test_winograd_applies_to_same_3x3_stride_1_even_convs_only():
    x, w = rand(1, (2, 8, 8, 5)), rand(2, (3, 3, 5, 6))
    assert wg.winograd_ok(x, w, (1, 1), SAME)
    assert not wg.winograd_ok(x[:, :7], w, (1, 1), SAME)
    assert not wg.winograd_ok(x, w, (2, 2), SAME)
    assert not wg.winograd_ok(x, w, (1, 1), ((0, 0), (0, 0)))
    assert not wg.winograd_ok(x, rand(2, (5, 5, 5, 6)), (1, 1), ((2, 2), (2, 2)))
    close(wg.winograd_conv3x3(x, w), reference.lax_conv(x, w, (1, 1), SAME), 1e-5)


def test_winograd_kernel_gradient_matches_lax_conv():
    x, w, dy = rand(1, (3, 6, 10, 7)), rand(2, (3, 3, 7, 4)), rand(3, (3, 6, 10, 4))
    ref = jax.vjp(lambda k: reference.lax_conv(x, k, (1, 1), SAME), w)[1](dy)[0]
    close(wg.winograd_kernel_grad(x, dy), ref, 1e-5)
    close(wg.winograd_kernel_grad(None, dy, wg.winograd_forward(x, w)[1]), ref, 1e-5)


def test_winograd_input_gradient_from_the_saved_kernel_transform():
    """dx from the forward's transformed kernel U with its tile indices permuted (the flipped
    kernel's transform), channels I != O, against lax.conv's VJP."""
    x, w, dy = rand(1, (3, 6, 10, 7)), rand(2, (3, 3, 7, 4)), rand(3, (3, 6, 10, 4))
    u = wg.winograd_forward(x, w)[2]
    ref = jax.vjp(lambda a: reference.lax_conv(a, w, (1, 1), SAME), x)[1](dy)[0]
    close(wg.winograd_input_grad(dy, u), ref, 1e-5)


def test_per_tap_kernel_gradient_matches_lax_conv():
    x, w = rand(1, (2, 9, 7, 3)), rand(2, (3, 3, 3, 4))
    strides, padding = (2, 1), ((1, 0), (2, 1))
    f = lambda k: reference.lax_conv(x, k, strides, padding)
    dy = rand(3, jax.eval_shape(f, w).shape)
    close(cpu.conv_kernel_grad(x, dy, w.shape, strides, padding), jax.vjp(f, w)[1](dy)[0], 1e-5)


def test_winograd_rejects_shapes_it_cannot_take():
    w = rand(2, (3, 3, 5, 6))
    with pytest.raises(ValueError, match="even H and W"):
        wg.winograd_conv3x3(rand(1, (2, 7, 8, 5)), w)
    with pytest.raises(ValueError, match="kernel"):
        wg.winograd_conv3x3(rand(1, (2, 8, 8, 4)), w)
    with pytest.raises(ValueError, match="x or its transformed tiles"):
        wg.winograd_kernel_grad(None, rand(3, (2, 8, 8, 6)))
    with pytest.raises(ValueError, match="does not match"):
        wg.winograd_kernel_grad(rand(1, (2, 8, 8, 5)), rand(3, (2, 4, 4, 6)))


def test_winograd_conv_takes_an_empty_batch():
    """The fusion boundary reads one element of its input; a batch of 0 must skip it, not fail."""
    w = rand(2, (3, 3, 5, 6))
    x = jnp.zeros((0, 8, 8, 5))
    assert wg.winograd_ok(x, w, (1, 1), SAME)
    dx, dw = jax.grad(lambda a, k: jnp.sum(cpu.conv(a, k, (1, 1), SAME)), (0, 1))(x, w)
    assert dx.shape == x.shape and float(jnp.abs(dw).max()) == 0.0


def test_winograd_option_picks_the_form_of_each_call():
    """``winograd`` is an argument (part of the CPU conv's jit cache key), not a module switch:
    the CPU lowering has no convolution with it and lax's convolution without it."""
    x, w = rand(1, (2, 8, 8, 5)), rand(2, (3, 3, 5, 6))
    forms = [jax.jit(lambda u, flag=flag: kernels.conv(u, w, (1, 1), SAME, winograd=flag))
             .lower(x).as_text().count("convolution") for flag in (True, False, True)]
    assert forms == [0, 1, 0]
    assert kernels.WINOGRAD is True   # the default


def test_pointwise_conv_is_a_matmul_on_every_platform():
    x, w = rand(1, (2, 4, 4, 5)), rand(2, (1, 1, 5, 3))
    jaxpr = str(jax.make_jaxpr(lambda a, k: kernels.conv(a, k))(x, w))
    assert "dot_general" in jaxpr and "platform_index" not in jaxpr and "conv_general" not in jaxpr
    close(value_and_grads(kernels.conv, (x, w)),
          value_and_grads(lambda a, k: reference.lax_conv(a, k, (1, 1), ((0, 0), (0, 0))), (x, w)),
          1e-5)
