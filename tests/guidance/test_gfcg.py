"""GFCG (guidance/gfcg.py, experimental): the reference class, gradient-freeness, its reductions to
the base guidance at scale 0, and its direction on an exact, weakly conditional mixture."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import guidance
from diffjax.core import analytic, processes
from diffjax.guidance.classifier_free import classifier_free
from diffjax.guidance.gfcg import gfcg, reference
from tests.guidance.mixtures import label_accuracy

MEANS = jnp.array([[-1.5, 0.0], [1.5, 0.0]])
# the model is weakly conditional: its label shifts the component weights to 0.6 / 0.4 only
MIX = [analytic.isotropic_mixture(MEANS, 0.4, jnp.array(w)) for w in ((0.6, 0.4), (0.4, 0.6))]
NULL = 2


def D(x, sigma, cond):
    y = cond["label"]
    sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
    per = jax.vmap(lambda xi, si, yi: jnp.where(
        yi == 0, MIX[0].denoise(xi, si), jnp.where(yi == 1, MIX[1].denoise(xi, si),
                                                   analytic.isotropic_mixture(MEANS, 0.4).denoise(
                                                       xi, si))))
    return per(x, sigma, y)


def logits(params, x, beta):
    return x @ params.T


W = jnp.array([[-4.0, 0.0], [4.0, 0.0]])


def test_the_reference_class_is_never_the_label_and_the_confusion_is_in_0_1():
    lg = jax.random.normal(jax.random.key(0), (64, 5)) * 3
    y = jax.random.randint(jax.random.key(1), (64,), 0, 5)
    c_ref, conf = reference(lg, y)
    assert not bool(jnp.any(c_ref == y))
    others = jnp.where(jax.nn.one_hot(y, 5, dtype=bool), -jnp.inf, lg)
    np.testing.assert_array_equal(c_ref, jnp.argmax(others, -1))
    assert bool(jnp.all((conf >= 0) & (conf <= 1)))
    p = jax.nn.softmax(lg)
    np.testing.assert_allclose(conf, p[jnp.arange(64), c_ref] / (p[jnp.arange(64), c_ref]
                                                                 + p[jnp.arange(64), y]), rtol=1e-5)


def test_gradient_free_and_scale_zero_reduces_to_the_base():
    x = jax.random.normal(jax.random.key(0), (4, 2)) * 2
    cond = {"label": jnp.array([0, 1, 1, 0])}
    g0 = gfcg(D, logits, W, scale=0.0, base="none", base_scale=1.0, null_label=NULL)
    np.testing.assert_array_equal(g0(x, 1.0, cond), D(x, 1.0, cond))
    gc = gfcg(D, logits, W, scale=0.0, base="cfg", base_scale=2.5, null_label=NULL)
    np.testing.assert_allclose(gc(x, 1.0, cond), classifier_free(D, NULL, 2.5)(x, 1.0, cond),
                               rtol=1e-6)
    dw = jax.grad(lambda w: jnp.sum(gfcg(D, logits, w, scale=3.0, base="none", base_scale=1.0,
                                         null_label=NULL)(x, 1.0, cond)))(W)
    np.testing.assert_array_equal(dw, jnp.zeros_like(W))      # the classifier is never differentiated
    static, _ = guidance.split(guidance.resolve({"name": "gfcg", "scale": 0.0}))
    assert guidance.apply(D, static, {}, guidance.Context(null_label=NULL)) is D


def test_contrast_with_the_confused_class_moves_samples_to_the_label():
    base = label_accuracy(lambda x, s, c: D(x, s, c))
    assert 0.55 < base < 0.65
    guided = label_accuracy(gfcg(D, logits, W, scale=4.0, base="none", base_scale=1.0, null_label=NULL))
    assert guided > base + 0.15


def test_bad_fields_say_what_to_do():
    sig = np.array([80.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="base must be one of none, cfg, auto"):
        guidance.check(guidance.resolve({"name": "gfcg", "scale": 1.0, "base": "x"}), sig)
    with pytest.raises(ValueError, match="weak_workdir"):
        guidance.check(guidance.resolve({"name": "gfcg", "scale": 1.0, "base": "auto"}), sig)
    with pytest.raises(ValueError, match="contrast must be 'main', or 'guide' with base 'auto'"):
        guidance.check(guidance.resolve({"name": "gfcg", "scale": 1.0, "contrast": "guide"}), sig)
    with pytest.raises(ValueError, match="configs/digits_clean_classifier.py"):
        guidance.prepare(guidance.resolve({"name": "gfcg", "scale": 1.0}), run=None)


def test_the_sampling_program_does_not_recompile_for_a_new_scale_or_classifier():
    from diffjax import inference
    den = lambda params, x, sigma, cond, **_: params * D(x, sigma, cond)
    sec = guidance.resolve({"name": "gfcg", "scale": 2.0, "base": "cfg", "base_scale": 1.5})
    static = guidance.split(sec, (logits, None))[0]
    prog = inference.build(den, processes.get("edm"), sampler="euler", steps=3, spacing="karras",
                           batch=4, example_shape=(2,), guidance=static, null_label=NULL)
    labels = jnp.array([0, 1, 1, 0], jnp.int32)
    outs = [prog(jnp.float32(1.0), jax.random.key(0), labels, 0,
                 guidance.traced_values({**sec, "scale": s, "base_scale": b}), None,
                 {"classifier": W * k})
            for s, b, k in ((2.0, 1.5, 1.0), (5.0, 1.5, 1.0), (2.0, 3.0, 1.0), (2.0, 1.5, -1.0))]
    assert prog.fn._cache_size() == 1
    assert all(not np.allclose(outs[0], o) for o in outs[1:])


def test_the_reference_rule_is_an_argument():
    """A rule that always names the other class with confusion 1 is a fixed-scale contrast."""
    x = jax.random.normal(jax.random.key(0), (4, 2))
    cond = {"label": jnp.array([0, 1, 1, 0])}
    rule = lambda lg, y: (1 - y, jnp.ones(y.shape))
    got = gfcg(D, logits, W, scale=2.0, base="none", base_scale=1.0, null_label=NULL,
               rule=rule)(x, 0.5, cond)
    want = D(x, 0.5, cond) + 2.0 * (D(x, 0.5, cond) - D(x, 0.5, {"label": 1 - cond["label"]}))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
