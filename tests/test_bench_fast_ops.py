"""The bench U-Net's layers compute what flax's straightforward layers compute (values, gradients,
parameter trees), whichever form of ``diffjax.kernels``' ops they run.

bench/ showed XLA:CPU runs flax's nn.GroupNorm, nn.Conv's kernel gradient and softmax-weighted
attention slowly (BENCHMARKS.md); the U-Net's ``Conv``, ``GroupNorm`` and ``AttentionBlock`` call
``diffjax.kernels`` instead, whose CPU forms are tested op by op in tests/kernels/. Here: the flax
modules, with their speed options (``winograd``, the attention chunk sizes) set both ways.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from diffjax.models import unet_blocks
from tests.kernels.util import close, rand


def _check_module(fast, ref, x, tol=2e-5):
    params = ref.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, fast.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, params)
    params = jax.tree.map(lambda p: p + 0.3 * rand(7, p.shape), params)
    dy = rand(3, jax.eval_shape(lambda: ref.apply(params, x)).shape)
    both = lambda m: jax.jit(lambda p, u: (m.apply(p, u), jax.grad(
        lambda p, u: jnp.sum(m.apply(p, u) * dy), (0, 1))(p, u)))(params, x)
    close(both(fast), both(ref), tol)


@pytest.mark.parametrize("shape, groups", [((2, 8, 8, 64), 32), ((3, 4, 4, 2, 6), 3)])
def test_group_norm_matches_flax(shape, groups):
    x = rand(1, shape, 2.0, 0.5)
    _check_module(unet_blocks.GroupNorm(groups), nn.GroupNorm(num_groups=groups, epsilon=1e-5), x)


def test_group_norm_silu_matches_flax():
    """GroupNorm(activation='silu') = SiLU(nn.GroupNorm): values and gradients (x, scale, bias)."""
    x = rand(1, (2, 8, 8, 64), 2.0, 0.5)

    class Ref(nn.Module):
        @nn.compact
        def __call__(self, u):
            return nn.silu(nn.GroupNorm(num_groups=32, epsilon=1e-5, name="GroupNorm_0")(u))

    class Fast(nn.Module):
        @nn.compact
        def __call__(self, u):
            return unet_blocks.GroupNorm(32, activation="silu", name="GroupNorm_0")(u)

    _check_module(Fast(), Ref(), x)
    with pytest.raises(ValueError, match="activation 'gelu'"):
        unet_blocks.GroupNorm(32, activation="gelu").init(jax.random.key(0), x)


@pytest.mark.parametrize("winograd", [True, False])
@pytest.mark.parametrize("shape, kernel, stride", [
    ((2, 8, 8, 5), 3, 1), ((2, 7, 7, 5), 3, 1), ((2, 8, 8, 5), 3, 2), ((2, 9, 4), 3, 2),
    ((2, 8, 8, 5), 1, 1)])
def test_conv_matches_flax(shape, kernel, stride, winograd):
    nd, pad = len(shape) - 2, kernel // 2
    kw = dict(kernel_size=(kernel,) * nd, strides=(stride,) * nd, padding=[(pad, pad)] * nd)
    _check_module(unet_blocks.Conv(6, winograd=winograd, **kw), nn.Conv(6, **kw), rand(2, shape))


class _FlaxAttentionBlock(nn.Module):
    """AttentionBlock written with flax's GroupNorm and softmax attention (same parameter names)."""
    heads: int

    @nn.compact
    def __call__(self, x):
        ch = x.shape[-1]
        h = nn.GroupNorm(num_groups=32, epsilon=1e-5, name="norm")(x).reshape(x.shape[0], -1, ch)
        q, k, v = jnp.split(nn.Dense(3 * ch, name="qkv")(h), 3, axis=-1)
        heads = lambda t: t.reshape(t.shape[:2] + (self.heads, -1))
        h = nn.dot_product_attention(heads(q), heads(k), heads(v)).reshape(h.shape)
        return x + nn.Dense(ch, name="proj")(h).reshape(x.shape)


@pytest.mark.parametrize("chunks", [{}, dict(chunk_bytes=1, chunk_bytes_grad=1)])
def test_attention_block_matches_flax(chunks):
    x = rand(1, (3, 4, 4, 64))
    _check_module(unet_blocks.AttentionBlock(num_head_channels=16, **chunks), _FlaxAttentionBlock(4), x)


def test_bfloat16_compute_stays_close():
    x = rand(1, (2, 8, 8, 64), 2.0)
    for fast, ref in [(unet_blocks.GroupNorm(32, dtype=jnp.bfloat16), nn.GroupNorm(32, dtype=jnp.bfloat16)),
                      (unet_blocks.Conv(16, (3, 3), padding=[(1, 1)] * 2, dtype=jnp.bfloat16),
                       nn.Conv(16, (3, 3), padding=[(1, 1)] * 2, dtype=jnp.bfloat16))]:
        p = ref.init(jax.random.key(0), x)
        a, b = jax.jit(fast.apply)(p, x), jax.jit(ref.apply)(p, x)
        assert a.dtype == b.dtype == jnp.bfloat16
        close(a, b, 3e-2)
