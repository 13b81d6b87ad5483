"""Every tiny model: output shape/dtype, zero output at init, bf16 compute with fp32 params,
determinism, dropout, DeeDiff intermediates through the shared head, DiMR multi-scale outputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models import build_model, get_preset
from tests.models import util
from tests.models.util import B, DENOISER_PRESETS, TINY

COND = dict(num_classes=10)
LABELS = jnp.array([0, 3, 9, 10])           # 10 = the null class
ZERO_OUTPUT_AT_INIT = ("dit_tiny", "dit_tiny_tdln", "pixart_tiny")  # zero output layer; DiMR's is not
INTERMEDIATES = {"dit_tiny": 2, "dit_tiny_tdln": 2, "pixart_tiny": 2, "dico_tiny": 2, "dimr_tiny": 3}
FAMILIES = ("unet_tiny16", "dit_tiny", "pixart_tiny", "dico_tiny", "dimr_tiny")  # distinct code paths


def _fp32(tree):
    return all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("preset", DENOISER_PRESETS)
def test_shape_and_dtype(preset):
    m = util.model(preset, **COND)
    assert _fp32(util.shapes(m, TINY[preset])["params"])
    x, t, _ = util.inputs(preset)
    f = util.apply_fn(m)
    out = f(util.random_vars(m, preset), x, t, LABELS)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.std(out)) > 1e-3
    assert jnp.array_equal(out, f(util.random_vars(m, preset), x, t, LABELS))


# Real init of every transformer-style family (conv nets' zero heads are checked in test_blocks; their
# full init compiles slowly on CPU and exercises the same Flax RNG plumbing).
@pytest.mark.parametrize("preset", ["dit_tiny", "dit_tiny_tdln", "pixart_tiny", "dimr_tiny"])
def test_init_output_and_determinism(preset):
    m = util.model(preset, **COND)
    v = util.init(m, preset)
    assert _fp32(v["params"])
    x, t, _ = util.inputs(preset)
    out = util.apply_fn(m)(v, x, t, LABELS)
    assert out.shape == x.shape and out.dtype == jnp.float32
    if preset in ZERO_OUTPUT_AT_INIT:
        assert not jnp.any(out)
    # init is a pure function of the PRNG key
    z = (jnp.zeros((B,) + TINY[preset]), jnp.zeros((B,)))
    init = util._jit_init(m)
    same = jax.tree_util.tree_map(jnp.array_equal, init(util.key(0), *z), v)
    assert all(jax.tree_util.tree_leaves(same))
    other = jax.tree_util.tree_map(jnp.array_equal, init(util.key(1), *z), v)
    assert not all(jax.tree_util.tree_leaves(other))


@pytest.mark.parametrize("preset", FAMILIES)
def test_bf16_compute_fp32_params(preset):
    m32 = util.model(preset, **COND)
    m16 = util.model(preset, dtype="bfloat16", **COND)
    assert _fp32(util.shapes(m16, TINY[preset])["params"])          # params stay fp32
    v = util.random_vars(m32, preset)
    x, t, _ = util.inputs(preset)
    out32 = util.apply_fn(m32)(v, x, t, LABELS)
    out16 = util.apply_fn(m16)(v, x, t, LABELS)
    assert out16.dtype == jnp.float32 and out16.shape == x.shape
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert rel < 0.05, rel


@pytest.mark.parametrize("preset", FAMILIES)
def test_train_mode_dropout_and_cep_keys(preset):
    """train=True draws dropout masks from 'dropout' and CEP noise from 'cep', deterministically."""
    m = util.model(preset, dropout=0.3, cep_gamma=1.0, **COND)
    v = util.random_vars(util.model(preset, **COND), preset)   # neither adds parameters
    x, t, _ = util.inputs(preset)
    x, t = x.at[2].set(x[1]), t.at[2].set(t[1])                 # examples 1, 2 differ in label only
    f = util.apply_fn(m)
    rngs = lambda d, c: {"dropout": jax.random.PRNGKey(d), "cep": jax.random.PRNGKey(c)}
    a = f(v, x, t, LABELS, train=True, rngs=rngs(0, 0))
    assert jnp.array_equal(a, f(v, x, t, LABELS, train=True, rngs=rngs(0, 0)))
    other_dropout = f(v, x, t, LABELS, train=True, rngs=rngs(1, 0))
    assert not jnp.allclose(a[3], other_dropout[3])             # null example: dropout only
    other_cep = f(v, x, t, LABELS, train=True, rngs=rngs(0, 1))
    assert not jnp.allclose(a[0], other_cep[0])                 # labelled: CEP noise changed
    np.testing.assert_array_equal(a[3], other_cep[3])           # null label is never perturbed


@pytest.mark.parametrize("preset", sorted(INTERMEDIATES))
def test_intermediates_share_the_final_head(preset):
    m = util.model(preset, **COND)
    v = util.random_vars(m, preset)
    x, t, _ = util.inputs(preset)
    out, preds = util.apply_fn(m)(v, x, t, LABELS, return_intermediates=True)
    assert len(preds) == INTERMEDIATES[preset]
    assert all(p.shape == x.shape and p.dtype == jnp.float32 for p in preds)
    assert jnp.array_equal(preds[-1], out)
    np.testing.assert_allclose(out, util.apply_fn(m)(v, x, t, LABELS), rtol=1e-5, atol=1e-6)
    assert not jnp.allclose(preds[0], out)
    # sharing: initialising through the intermediate path creates no extra parameters
    z = (jnp.zeros((B,) + TINY[preset]), jnp.zeros((B,)))
    shapes = jax.eval_shape(lambda k: m.init(k, *z, return_intermediates=True), jax.random.PRNGKey(0))
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(v)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: a.shape == b.shape, shapes, v))


def test_dimr_multiscale_outputs():
    m = util.model("dimr_tiny", **COND)
    v = util.random_vars(m, "dimr_tiny")
    x, t, _ = util.inputs("dimr_tiny")
    out, outs = util.apply_fn(m)(v, x, t, LABELS, return_multiscale=True)
    assert [o.shape for o in outs] == [(B, 4, 4, 3), (B, 8, 8, 3)]
    assert jnp.array_equal(outs[-1], out)


def test_learn_sigma_and_out_channels_shapes():
    x = jnp.zeros((2, 8, 8, 3))
    t = jnp.zeros((2,))
    cases = [(p, dict(learn_sigma=True), 6) for p in ("dit_tiny", "pixart_tiny", "dico_tiny",
                                                      "dimr_tiny", "unet_tiny16")]
    cases.append(("dit_tiny", dict(out_channels=5, learn_sigma=True), 10))
    for preset, over, ch in cases:
        m = build_model(util.config(preset, **over))
        shape = jax.eval_shape(lambda k: m.apply(m.init(k, x, t), x, t), jax.random.PRNGKey(0))
        assert shape.shape == (2, 8, 8, ch), (preset, over)


def test_unet1d_mask_channel():
    m = util.model("unet1d_tiny", **COND)
    v = util.random_vars(m, "unet1d_tiny")
    x, t, _ = util.inputs("unet1d_tiny")
    f = util.apply_fn(m)
    zeros, ones = jnp.zeros(x.shape[:-1] + (1,)), jnp.ones(x.shape[:-1] + (1,))
    assert jnp.array_equal(f(v, x, t, LABELS), f(v, x, t, LABELS, mask=zeros))   # None == zeros
    assert not jnp.allclose(f(v, x, t, LABELS, mask=ones), f(v, x, t, LABELS, mask=zeros))


@pytest.mark.parametrize("preset, shape, match", [
    ("dico_tiny", (1, 10, 10, 3), "divisible by 4"),
    ("dit_tiny", (1, 9, 9, 3), "patch size"),
    ("unet_tiny16", (1, 9, 9, 3), "not divisible"),
    ("unet1d_tiny", (1, 8, 8, 3), r"\(B, L, C\)"),
])
def test_bad_shapes_raise(preset, shape, match):
    m = build_model(get_preset(preset))
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros(shape), jnp.zeros((1,)))


def test_unet_rejects_return_intermediates():
    m = build_model(get_preset("unet_tiny16"))
    x, t = jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,))
    with pytest.raises(ValueError, match="return_intermediates"):
        jax.eval_shape(lambda k: m.init(k, x, t, return_intermediates=True), jax.random.PRNGKey(0))


def test_noisy_classifier():
    x = jax.random.normal(jax.random.PRNGKey(0), (B, 8, 8, 3))
    t = jnp.array([0.0, 250.0, 500.0, 999.0])
    m = build_model(get_preset("noisy_classifier_tiny"))
    v = util.randomize(jax.eval_shape(m.init, jax.random.PRNGKey(0), x, t))
    f = util.FastJit(m.apply)
    logits = f(v, x, t)
    assert logits.shape == (B, 10) and logits.dtype == jnp.float32
    assert not jnp.allclose(logits, f(v, x, t[::-1]))                # uses the noise labels
    assert jax.eval_shape(lambda: m.apply(v, x, t, method="features")).shape == (B, 64)
    mean_pool = build_model(util.config("noisy_classifier_tiny", pool="mean"))
    shape = jax.eval_shape(lambda k: mean_pool.apply(mean_pool.init(k, x, t), x, t),
                           jax.random.PRNGKey(0))
    assert shape.shape == (B, 10)


def test_clean_classifier_logits_and_features():
    c = build_model(get_preset("classifier_tiny"))
    x = jax.random.normal(jax.random.PRNGKey(1), (B, 8, 8, 1))
    shapes = jax.eval_shape(c.init, jax.random.PRNGKey(0), x)
    assert _fp32(shapes)
    v = util.randomize(shapes)
    both = util.FastJit(lambda v, x: (c.apply(v, x), c.apply(v, x, method="features")))
    logits, feats = both(v, x)
    assert logits.shape == (B, 10) and logits.dtype == jnp.float32
    assert feats.shape == (B, 32) and feats.dtype == jnp.float32
    head = v["params"]["head"]                                       # logits = Linear(features)
    np.testing.assert_allclose(logits, feats @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5)
    assert jax.eval_shape(lambda: c.apply(v, x, return_features=True)).shape == (B, 32)
