"""Zero-init identities (adaLN-Zero, TD-LN, ADM ResBlock) and TD-LN's interpolation, exactly."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models.dico import DiCoBlock, DiCoFinalLayer
from diffjax.models.dit import DiTBlock
from diffjax.models.tdln import TDLayerNorm, TDRMSNorm, TimeDependentParameter, td_time
from diffjax.models.unet_blocks import ResBlock, conv
from tests.models.util import FastJit, key

KEY = jax.random.PRNGKey(0)


def _init_apply(module, *args):
    """Compiled init and apply (eager op-by-op dispatch is much slower on this CPU)."""
    v = FastJit(module.init)(key(0), *args)
    return v, FastJit(module.apply)


def _tokens(shape=(3, 10, 32), seed=1):
    return jax.random.normal(jax.random.PRNGKey(seed), shape) * 2.0 + 0.5


@pytest.mark.parametrize("norm", ["adaln_zero", "tdln"])
def test_dit_block_is_identity_at_init(norm):
    x = _tokens()
    c = jax.random.normal(KEY, (3, 32))
    tau = jnp.array([-1.0, 0.0, 0.7])
    v, apply = _init_apply(DiTBlock(num_heads=4, norm=norm), x, c, tau)
    assert jnp.array_equal(apply(v, x, c, tau), x)
    # the identity comes from the zero gates alone: the residual branches themselves are non-zero
    v_rand = jax.tree_util.tree_map(lambda a: a + 0.1, v)
    assert not jnp.array_equal(apply(v_rand, x, c, tau), x)


def test_dico_block_is_identity_at_init():
    x = _tokens((2, 8, 8, 16))
    c = jax.random.normal(KEY, (2, 16))
    v, apply = _init_apply(DiCoBlock(), x, c)
    assert jnp.array_equal(apply(v, x, c), x)


def test_dico_head_and_unet_output_conv_are_zero_at_init():
    x = _tokens((2, 8, 8, 16))
    c = jax.random.normal(KEY, (2, 16))
    v, apply = _init_apply(DiCoFinalLayer(4), x, c)
    assert not jnp.any(apply(v, x, c))
    v, apply = _init_apply(conv(4, 2, zero=True), x)
    assert not jnp.any(apply(v, x))


def test_adm_resblock_is_its_skip_path_at_init():
    x = _tokens((2, 8, 8, 16))
    emb = jax.random.normal(KEY, (2, 64))
    v, apply = _init_apply(ResBlock(16), x, emb)
    assert jnp.array_equal(apply(v, x, emb), x)


def test_tdln_equals_layernorm_at_init_for_any_tau():
    x = _tokens()
    tau = jnp.array([-3.0, 0.1, 5.0])
    td = TDLayerNorm(eps=1e-6)
    v = td.init(KEY, x, tau)
    ln = nn.LayerNorm(epsilon=1e-6)
    ref = ln.apply(ln.init(KEY, x), x)
    np.testing.assert_allclose(td.apply(v, x, tau), ref, atol=2e-6)
    # 4 vectors of size d per affine vector (p0, p1, w, b)
    sizes = [a.size for a in jax.tree_util.tree_leaves(v)]
    assert sum(sizes) == 2 * 4 * x.shape[-1]


def test_tdrmsnorm_at_init_is_plain_rmsnorm():
    x = _tokens()
    tau = jnp.zeros(3)
    td = TDRMSNorm()
    out = td.apply(td.init(KEY, x, tau), x, tau)
    rms = jnp.sqrt(jnp.mean(x ** 2, -1, keepdims=True))
    np.testing.assert_allclose(out, x / (rms + 1e-8), rtol=1e-5, atol=1e-6)


def test_time_dependent_parameter_interpolates_monotonically_to_p0_p1():
    tdp = TimeDependentParameter((5,), 0.0)
    v = tdp.init(KEY, jnp.zeros(1))
    p0, p1 = jnp.full(5, 2.0), jnp.full(5, -1.0)
    v = {"params": dict(v["params"], p0=p0, p1=p1)}
    taus = jnp.linspace(-30.0, 30.0, 61)
    out = tdp.apply(v, taus)[:, 0]
    np.testing.assert_allclose(out[0], -1.0, atol=1e-6)    # sigmoid -> 0: p1
    np.testing.assert_allclose(out[-1], 2.0, atol=1e-6)    # sigmoid -> 1: p0
    np.testing.assert_allclose(out[30], 0.5, atol=1e-6)    # tau = 0: midpoint
    assert bool(jnp.all(jnp.diff(out) >= 0))


def test_td_time_maps_noise_labels_to_unit_interval():
    np.testing.assert_allclose(td_time(jnp.array([0.0, 500.0, 1000.0])), [-1.0, 0.0, 1.0])
