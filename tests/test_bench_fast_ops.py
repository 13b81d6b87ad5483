"""The fast U-Net ops compute the same functions as the straightforward ones (values and gradients).

bench/ showed XLA:CPU runs flax's nn.GroupNorm, nn.Conv's kernel gradient and softmax-weighted
attention slowly (BENCHMARKS.md); diffjax.models replaced them by equivalent formulations. These tests
hold the replacements to the reference formulas at float32 tolerance, with the same parameter trees.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models import layers, unet_blocks


def _rand(key, shape, scale=1.0, shift=0.0):
    return shift + scale * jax.random.normal(jax.random.key(key), shape, jnp.float32)


def _close(a, b, tol):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u, np.float32), np.asarray(v, np.float32),
                                   rtol=tol, atol=tol * float(jnp.max(jnp.abs(v)) + 1e-6))


def _check_module(fast, ref, x, tol=2e-5):
    params = ref.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, fast.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, params)
    params = jax.tree.map(lambda p: p + 0.3 * _rand(7, p.shape), params)
    dy = _rand(3, jax.eval_shape(lambda: ref.apply(params, x)).shape)
    both = lambda m: jax.jit(lambda p, u: (m.apply(p, u), jax.grad(
        lambda p, u: jnp.sum(m.apply(p, u) * dy), (0, 1))(p, u)))(params, x)
    _close(both(fast), both(ref), tol)


@pytest.mark.parametrize("shape, groups", [((2, 8, 8, 64), 32), ((3, 4, 4, 2, 6), 3)])
def test_group_norm_matches_flax(shape, groups):
    x = _rand(1, shape, 2.0, 0.5)
    _check_module(unet_blocks.GroupNorm(groups), nn.GroupNorm(num_groups=groups, epsilon=1e-5), x)


@pytest.mark.parametrize("shape, groups", [((2, 8, 8, 64), 32), ((3, 4, 4, 2, 6), 3)])
def test_group_norm_silu_matches_flax(shape, groups):
    """GroupNorm(activation='silu') = SiLU(nn.GroupNorm): values and gradients (x, scale, bias)."""
    x = _rand(1, shape, 2.0, 0.5)

    class Ref(nn.Module):
        @nn.compact
        def __call__(self, u):
            return nn.silu(nn.GroupNorm(num_groups=groups, epsilon=1e-5, name="GroupNorm_0")(u))

    class Fast(nn.Module):
        @nn.compact
        def __call__(self, u):
            return unet_blocks.GroupNorm(groups, activation="silu", name="GroupNorm_0")(u)

    _check_module(Fast(), Ref(), x)
    with pytest.raises(ValueError, match="activation 'gelu'"):
        unet_blocks.GroupNorm(groups, activation="gelu").init(jax.random.key(0), x)


@pytest.mark.parametrize("shape, kernel, stride", [
    ((2, 8, 8, 5), 3, 1),        # Winograd F(2x2, 3x3) forward and input gradient
    ((2, 16, 12, 32), 3, 1),     # Winograd, non-square, more channels
    ((2, 7, 7, 5), 3, 1),        # odd size: lax.conv fallback
    ((2, 8, 8, 5), 3, 2),        # strided: lax.conv
    ((2, 9, 4), 3, 2), ((2, 8, 8, 5), 1, 1)])
def test_conv_matches_flax(shape, kernel, stride):
    nd, pad = len(shape) - 2, kernel // 2
    kw = dict(kernel_size=(kernel,) * nd, strides=(stride,) * nd, padding=[(pad, pad)] * nd)
    _check_module(unet_blocks.Conv(6, **kw), nn.Conv(6, **kw), _rand(2, shape))


def test_winograd_is_used_where_it_applies():
    x, w = _rand(1, (2, 8, 8, 5)), _rand(2, (3, 3, 5, 6))
    same = ((1, 1), (1, 1))
    assert unet_blocks._winograd_ok(x, w, (1, 1), same)
    assert not unet_blocks._winograd_ok(x[:, :7], w, (1, 1), same)
    assert not unet_blocks._winograd_ok(x, w, (2, 2), same)
    ref = jax.lax.conv_general_dilated(x, w, (1, 1), same, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    _close(unet_blocks.winograd_conv3x3(x, w), ref, 1e-5)


def test_winograd_kernel_gradient_matches_lax_conv():
    x, w, dy = _rand(1, (3, 6, 10, 7)), _rand(2, (3, 3, 7, 4)), _rand(3, (3, 6, 10, 4))
    same = ((1, 1), (1, 1))
    lax_conv = lambda k: jax.lax.conv_general_dilated(x, k, (1, 1), same,
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ref = jax.vjp(lax_conv, w)[1](dy)[0]
    _close(unet_blocks.winograd_kernel_grad(x, dy), ref, 1e-5)


def test_winograd_input_gradient_from_the_saved_kernel_transform():
    """dx from the forward's transformed kernel U with its tile indices permuted (the flipped
    kernel's transform), channels I != O, against lax.conv's VJP."""
    x, w, dy = _rand(1, (3, 6, 10, 7)), _rand(2, (3, 3, 7, 4)), _rand(3, (3, 6, 10, 4))
    same = ((1, 1), (1, 1))
    lax_conv = lambda a: jax.lax.conv_general_dilated(a, w, (1, 1), same,
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
    u = unet_blocks._winograd(x, w)[2]
    _close(unet_blocks._winograd_input_grad(dy, u), jax.vjp(lax_conv, x)[1](dy)[0], 1e-5)


def test_winograd_rejects_shapes_it_cannot_take():
    w = _rand(2, (3, 3, 5, 6))
    with pytest.raises(ValueError, match="even H and W"):
        unet_blocks.winograd_conv3x3(_rand(1, (2, 7, 8, 5)), w)
    with pytest.raises(ValueError, match="kernel"):
        unet_blocks.winograd_conv3x3(_rand(1, (2, 8, 8, 4)), w)
    with pytest.raises(ValueError, match="x or its transformed tiles"):
        unet_blocks.winograd_kernel_grad(None, _rand(3, (2, 8, 8, 6)))
    with pytest.raises(ValueError, match="does not match"):
        unet_blocks.winograd_kernel_grad(_rand(1, (2, 8, 8, 5)), _rand(3, (2, 4, 4, 6)))


def test_winograd_conv_takes_an_empty_batch():
    """The fusion boundary reads one element of its input; a batch of 0 must skip it, not fail."""
    w = _rand(2, (3, 3, 5, 6))
    f = lambda x, k: jnp.sum(unet_blocks.conv_nd(x, k, (1, 1), ((1, 1), (1, 1))))
    x = jnp.zeros((0, 8, 8, 5))
    assert unet_blocks._winograd_ok(x, w, (1, 1), ((1, 1), (1, 1)))
    dx, dw = jax.grad(f, (0, 1))(x, w)
    assert dx.shape == x.shape and float(jnp.abs(dw).max()) == 0.0


def test_winograd_switch_takes_effect_after_a_trace(monkeypatch):
    """The CPU conv is jitted once per shape; the form is part of its cache key, not a stale global."""
    x, w, same = _rand(1, (2, 8, 8, 5)), _rand(2, (3, 3, 5, 6)), ((1, 1), (1, 1))
    forms = []
    for flag in (True, False, True):
        monkeypatch.setattr(unet_blocks, "USE_WINOGRAD", flag)
        forms.append("conv_general_dilated" in str(jax.make_jaxpr(
            lambda u: unet_blocks.conv_nd(u, w, (1, 1), same))(x)))
    assert forms == [False, True, False]


def _reference_attention(q, k, v, mask=None):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v)


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("chunk_bytes", [None, (1, 1), (1120, 1), (1, 1120)])
def test_attention_matches_softmax_formula(monkeypatch, masked, chunk_bytes):
    """Values and gradients (q, k, v) of the CPU form (chunked, own VJP) against softmax(q k^T) v;
    chunk budgets (inference, gradient): 1 = one example per chunk, 1120 = 2 of the 3."""
    if chunk_bytes:
        monkeypatch.setattr(layers, "_CHUNK_BYTES", chunk_bytes[0])
        monkeypatch.setattr(layers, "_CHUNK_BYTES_GRAD", chunk_bytes[1])
    q, k, v = _rand(1, (3, 7, 4, 8), 3.0), _rand(2, (3, 5, 4, 8), 3.0), _rand(3, (3, 5, 4, 8))
    mask = jnp.array([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]], bool) if masked else None
    dy = _rand(4, q.shape[:3] + (8,))
    both = lambda f: jax.jit(lambda a, b, c: (f(a, b, c, mask), jax.grad(
        lambda a, b, c: jnp.sum(f(a, b, c, mask) * dy), (0, 1, 2))(a, b, c)))(q, k, v)
    _close(both(layers.attention), both(_reference_attention), 2e-5)


def test_attention_tpu_gpu_form_matches_softmax_formula():
    """The form TPU and GPU lowerings take (``lax.platform_dependent``'s default branch)."""
    q, k, v = _rand(1, (2, 7, 4, 8), 3.0), _rand(2, (2, 5, 4, 8), 3.0), _rand(3, (2, 5, 4, 8))
    mask = jnp.array([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1]], bool)
    bias = jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)
    qh = jnp.swapaxes(q * 8 ** -0.5, 1, 2)
    kt, vt = (jnp.transpose(t, (0, 2, 3, 1)) for t in (k, v))
    out = jnp.swapaxes(layers._attention_xla(qh, kt, vt, bias), 1, 2)
    _close(out, _reference_attention(q, k, v, mask), 2e-5)


def test_attention_cpu_chunks_keep_logits_under_the_budget():
    q, kt = jnp.zeros((32, 16, 256, 8)), jnp.zeros((32, 16, 8, 256))   # 4 MiB of logits per example
    assert layers._chunk(q, kt, layers._CHUNK_BYTES) == 2
    assert layers._chunk(q, kt, layers._CHUNK_BYTES_GRAD) == 1
    assert layers._chunk(jnp.zeros((3, 4, 7, 8)), jnp.zeros((3, 4, 8, 5)), 1120) == 2   # 2 of 3 above
    assert layers._chunk(q[:, :, :64], kt[..., :64], layers._CHUNK_BYTES) == 32   # a small batch at once
    assert layers._chunk(jnp.zeros((1, 16, 4096, 8)), jnp.zeros((1, 16, 8, 4096)), 2 ** 20) == 1


def test_attention_bfloat16_stays_close():
    q, k, v = (_rand(i, (2, 16, 4, 8), 2.0) for i in (1, 2, 3))
    dy = _rand(4, q.shape)
    grads = lambda f, dt: jax.grad(lambda a, b, c: jnp.sum(f(a, b, c).astype(jnp.float32) * dy),
                                   (0, 1, 2))(*(t.astype(dt) for t in (q, k, v)))
    out = layers.attention(*(t.astype(jnp.bfloat16) for t in (q, k, v)))
    assert out.dtype == jnp.bfloat16
    _close(out, _reference_attention(q, k, v), 3e-2)
    _close(grads(layers.attention, jnp.bfloat16), grads(_reference_attention, jnp.float32), 5e-2)


def test_bfloat16_compute_stays_close():
    x = _rand(1, (2, 8, 8, 64), 2.0)
    for fast, ref in [(unet_blocks.GroupNorm(32, dtype=jnp.bfloat16), nn.GroupNorm(32, dtype=jnp.bfloat16)),
                      (unet_blocks.Conv(16, (3, 3), padding=[(1, 1)] * 2, dtype=jnp.bfloat16),
                       nn.Conv(16, (3, 3), padding=[(1, 1)] * 2, dtype=jnp.bfloat16))]:
        p = ref.init(jax.random.key(0), x)
        a, b = jax.jit(fast.apply)(p, x), jax.jit(ref.apply)(p, x)
        assert a.dtype == b.dtype == jnp.bfloat16
        _close(a, b, 3e-2)
