"""kernels.cpu.group_norm (custom VJP) and the plain formula against flax's nn.GroupNorm."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from diffjax import kernels
from diffjax.kernels import cpu, reference
from tests.kernels.util import close, rand, value_and_grads

SHAPES = [((2, 8, 8, 64), 32), ((3, 4, 4, 2, 6), 3), ((2, 5, 12), 4)]


def _flax(x, scale, bias, groups, activation):
    gn = nn.GroupNorm(num_groups=groups, epsilon=1e-5)
    y = gn.apply({"params": {"scale": scale, "bias": bias}}, x)
    return nn.silu(y) if activation == "silu" else y


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("shape, groups", SHAPES)
def test_both_forms_match_flax_group_norm(shape, groups, activation):
    """Values and gradients (x, scale, bias) of the CPU form and of the plain formula."""
    c = shape[-1]
    args = (rand(1, shape, 2.0, 0.5), rand(2, (c,), 0.3, 1.0), rand(3, (c,), 0.3))
    ref = value_and_grads(lambda *a: _flax(*a, groups, activation), args)
    for form in (cpu.group_norm, reference.group_norm):
        close(value_and_grads(lambda *a: form(*a, groups, 1e-5, jnp.float32, activation), args),
              ref, 2e-5)


@pytest.mark.parametrize("form", [cpu.group_norm, reference.group_norm])
def test_bfloat16_output_stays_close(form):
    x, s, b = rand(1, (2, 8, 8, 64), 2.0).astype(jnp.bfloat16), jnp.ones(64), jnp.zeros(64)
    y = jax.jit(lambda *a: form(*a, 32, 1e-5, jnp.bfloat16, None))(x, s, b)
    assert y.dtype == jnp.bfloat16
    close(y, _flax(x.astype(jnp.float32), s, b, 32, None), 3e-2)


def test_output_dtype_defaults_to_the_inputs_result_type():
    x = rand(1, (2, 4, 4, 8)).astype(jnp.bfloat16)
    assert kernels.group_norm(x, jnp.ones(8), jnp.zeros(8), 4).dtype == jnp.float32
    assert kernels.group_norm(x, jnp.ones(8), jnp.zeros(8), 4, dtype=jnp.bfloat16).dtype == jnp.bfloat16


def test_bad_arguments_raise():
    x, s, b = rand(1, (2, 4, 4, 6)), jnp.ones(6), jnp.zeros(6)
    with pytest.raises(ValueError, match="activation 'gelu'"):
        kernels.group_norm(x, s, b, 3, activation="gelu")
    with pytest.raises(ValueError, match="6 channels not divisible by 4 groups"):
        kernels.group_norm(x, s, b, 4)
