"""Class conditioning, the null class (CFG), unconditional models, CEP, and PixArt's context path."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models import embeddings
from tests.models import util
from tests.models.util import B, DENOISER_PRESETS

NULL = 10
COND = dict(num_classes=NULL)


def _mixed_batch(preset):
    """x = [x0, x0, x0, x1], t = [t0, t0, t0, t1]: examples 0-2 differ only in their label."""
    x, t, _ = util.inputs(preset)
    x = jnp.stack([x[0], x[0], x[0], x[1]])
    t = jnp.stack([t[0], t[0], t[0], t[1]])
    return x, t


def _close(a, b):
    return bool(jnp.allclose(a, b, rtol=1e-6, atol=1e-6))


@pytest.mark.parametrize("preset", DENOISER_PRESETS)
def test_class_labels_and_null_class(preset):
    m = util.model(preset, **COND)
    v = util.random_vars(m, preset)
    f = util.apply_fn(m)
    x, t = _mixed_batch(preset)
    out = f(v, x, t, jnp.array([1, 2, NULL, NULL]))
    assert not _close(out[0], out[1])                 # the class changes the output
    assert not _close(out[0], out[2])                 # the null class is its own condition
    all_null = f(v, x, t, jnp.full((B,), NULL))
    assert _close(out[2], all_null[2]) and _close(out[3], all_null[3])   # per example


def test_labels_none_means_null_class():
    m = util.model("dit_tiny", **COND)
    v = util.random_vars(m, "dit_tiny")
    x, t = _mixed_batch("dit_tiny")
    np.testing.assert_allclose(util.apply_fn(m)(v, x, t, None),
                               util.apply_fn(m)(v, x, t, jnp.full((B,), NULL)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("preset", ["unet_tiny16", "dit_tiny", "dimr_tiny"])
def test_unconditional_model_ignores_labels(preset):
    m = util.model(preset)                            # num_classes = 0
    v = util.random_vars(m, preset)
    x, t, _ = util.inputs(preset)
    f = util.apply_fn(m)
    a = f(v, x, t, jnp.array([0, 1, 2, 3]))
    assert jnp.array_equal(a, f(v, x, t, jnp.array([7, 7, 7, 7])))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(v)[0]]
    assert not any("embedding" in p for p in paths)   # no class table at all


def _zero_cross_attn(params):
    return {k: (dict(v, cross_attn=dict(v["cross_attn"], proj=jax.tree_util.tree_map(
        jnp.zeros_like, v["cross_attn"]["proj"]))) if k.startswith("block_") else v)
        for k, v in params.items()}


def test_pixart_context_path():
    preset = "pixart_tiny"
    m = util.model(preset, **COND)
    v = util.random_vars(m, preset)
    x, t, _ = util.inputs(preset)
    y = jnp.array([1, 2, 3, NULL])
    f = util.apply_fn(m)
    ctx = jax.random.normal(jax.random.PRNGKey(3), (B, 5, 32))
    ctx2 = jax.random.normal(jax.random.PRNGKey(4), (B, 5, 32))
    mask = jnp.array([True, True, True, False, False])[None].repeat(B, 0)
    out = f(v, x, t, y, ctx, context_mask=mask)
    assert out.shape == x.shape
    assert not _close(out, f(v, x, t, y, ctx2, context_mask=mask))            # context matters
    ctx_pad = ctx.at[:, 3:].set(ctx2[:, 3:])
    np.testing.assert_allclose(out, f(v, x, t, y, ctx_pad, context_mask=mask), rtol=1e-5, atol=1e-6)
    v0 = {"params": _zero_cross_attn(v["params"])}    # zero-init cross-attn proj: context unused
    np.testing.assert_array_equal(f(v0, x, t, y, ctx, context_mask=mask),
                                  f(v0, x, t, y, ctx2, context_mask=mask))
    null = f(v, x, t, y, None)                        # learned null caption
    assert null.shape == x.shape and not _close(null, out)


def test_cep_scales():
    emb = jnp.zeros((4000, 256))
    u = embeddings.cep_perturb(jax.random.PRNGKey(0), emb, 1.0, "uniform")
    assert float(jnp.max(jnp.abs(u))) <= 1 / 16 + 1e-7
    assert abs(float(jnp.std(u)) - (1 / 16) / math.sqrt(3)) < 1e-3
    g = embeddings.cep_perturb(jax.random.PRNGKey(1), emb, 1.0, "gaussian")
    assert abs(float(jnp.std(g)) - 1 / 16) < 1e-3
    gv = embeddings.cep_perturb(jax.random.PRNGKey(1), emb, 1.0, "gaussian", gaussian_scale="var")
    assert abs(float(jnp.std(gv)) - 0.25) < 3e-3
    with pytest.raises(ValueError, match="unknown CEP kind"):
        embeddings.cep_perturb(jax.random.PRNGKey(0), emb, 1.0, "laplace")
    with pytest.raises(ValueError, match="gaussian_scale"):
        embeddings.cep_perturb(jax.random.PRNGKey(0), emb, 1.0, "gaussian", gaussian_scale="x")


def test_cep_leaves_null_rows_clean():
    emb = jnp.ones((4, 8))
    out = embeddings.cep_labelled(jax.random.PRNGKey(0), emb, jnp.array([0, NULL, 3, NULL]), NULL, 1.0)
    np.testing.assert_array_equal(out[1], emb[1])
    np.testing.assert_array_equal(out[3], emb[3])
    assert not jnp.allclose(out[0], emb[0]) and not jnp.allclose(out[2], emb[2])


def test_models_do_not_import_core():
    """The networks own their conditioning (CEP included): diffjax.models needs nothing of core."""
    import subprocess
    import sys
    code = ("import sys, diffjax.models.registry; "
            "print(sorted(m for m in sys.modules if m.startswith('diffjax.core')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_condition_embedding_reads_the_model_fields_and_rejects_unknown_ones():
    from diffjax.models.dit import DiT

    class Net(DiT):   # DiT's conditioning fields; only the condition embedding
        extra: dict = None

        @nn.compact
        def __call__(self, t, y):
            return embeddings.condition_embedding(self, 8, t, y, **(self.extra or {}))

    t, y = jnp.array([1.0, 2.0]), jnp.array([0, 3])
    v = Net(num_classes=3, freq_dim=16).init(jax.random.key(0), t, y)["params"]
    assert set(v) == {"t_embedder", "y_embedder"} and v["t_embedder"]["fc1"]["kernel"].shape == (16, 8)
    assert v["y_embedder"]["table"]["embedding"].shape == (4, 8)
    assert set(Net(num_classes=0).init(jax.random.key(0), t, y)["params"]) == {"t_embedder"}
    v = Net(extra=dict(freq_dim=4)).init(jax.random.key(0), t, y)["params"]
    assert v["t_embedder"]["fc1"]["kernel"].shape == (4, 8)
    with pytest.raises(TypeError, match="fields.*freq_dims"):
        Net(extra=dict(freq_dims=4)).init(jax.random.key(0), t, y)
