"""Classifier guidance against the exact tilted posterior, and the noisy-classifier path.

Gaussian data x0 ~ N(mu, diag(s^2)) and a linear-Gaussian 'classifier' y = a.x0 + tau n have a
closed-form noisy likelihood p(y | x_sigma) (x0 | x_sigma is Gaussian) and a closed-form posterior
p(x0 | y). Classifier guidance at scale 1 with the exact noisy likelihood gradient turns the exact
denoiser into the exact denoiser of p(x0 | y); the probability-flow ODE then samples it.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import guidance
from diffjax.core import analytic, samplers, timesteps
from diffjax.guidance.classifier import classifier_guidance, network_logp

MU = np.array([0.5, -1.0, 0.0], np.float32)
S = np.array([1.0, 0.5, 2.0], np.float32)
A = np.array([1.0, 2.0, -0.5], np.float32)
TAU, Y = 0.5, 2.0


def exact_logp(params, x, sigma, cond):
    """log p(y | x_sigma): y | x_sigma ~ N(a . m(x), a^T C a + tau^2)."""
    sg2 = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))[:, None] ** 2
    m = (S ** 2 * x + sg2 * MU) / (S ** 2 + sg2)
    c = S ** 2 * sg2 / (S ** 2 + sg2)
    var = jnp.sum(A ** 2 * c, axis=1) + TAU ** 2
    return -0.5 * (cond["y"] - m @ A) ** 2 / var - 0.5 * jnp.log(2 * jnp.pi * var)


def posterior():
    prec = np.diag(1 / S.astype(np.float64) ** 2) + np.outer(A, A) / TAU ** 2
    cov = np.linalg.inv(prec)
    return cov @ (MU / S ** 2 + A * Y / TAU ** 2), cov


@pytest.mark.parametrize("scale, target", [(1.0, "posterior"), (0.0, "prior")])
def test_exact_classifier_guidance_samples_the_tilted_posterior(scale, target):
    n = 4000
    D = classifier_guidance(analytic.gaussian_denoiser(MU, S), exact_logp, None, scale)
    sig = timesteps.karras(40, 0.002, 80.0)
    cond = {"y": jnp.full((n,), Y, jnp.float32)}
    out = samplers.sample("heun", D, sig, key=jax.random.key(0), shape=(n, 3), cond=cond)
    x = np.asarray(out.x, np.float64)
    mean, cov = posterior() if target == "posterior" else (MU, np.diag(S ** 2))
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - mean) < 5 * se + 2e-3), (x.mean(0), mean)
    np.testing.assert_allclose(np.cov(x, rowvar=False), cov, atol=0.08 * np.abs(cov).max())
    if target == "posterior":         # the test can fail: the prior is far from the posterior
        assert np.abs(MU @ A - mean @ A) > 1.0


def test_network_logp_is_log_softmax_and_checks_the_logits_shape():
    logits = jnp.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    apply_fn = lambda p, x, t: logits
    logp = network_logp(apply_fn, 3)
    got = logp(None, jnp.zeros((2, 4)), 1.0, {"label": jnp.array([1, 2])})
    np.testing.assert_allclose(got, jax.nn.log_softmax(logits)[jnp.arange(2), jnp.array([1, 2])],
                               rtol=1e-6)
    bad = network_logp(lambda p, x, t: logits[:, :2], 3)
    with pytest.raises(ValueError, match=r"logits of shape \(2, 2\) for a batch of 2; expected "
                                         r"\(2, 3\)"):
        bad(None, jnp.zeros((2, 4)), 1.0, {"label": jnp.array([1, 0])})


def test_scale_zero_is_the_model_and_the_method_needs_its_classifier_run(tmp_path):
    D = analytic.gaussian_denoiser(MU, S)
    x = jnp.ones((2, 3))
    np.testing.assert_allclose(classifier_guidance(D, exact_logp, None, 0.0)(
        x, 0.3, {"y": jnp.ones((2,))}), D(x, 0.3), rtol=1e-7)
    static, _ = guidance.split(guidance.resolve({"name": "classifier", "scale": 0.0}))
    assert guidance.apply(D, static, {}, guidance.Context(null_label=10)) is D
    with pytest.raises(ValueError, match="needs the noisy classifier's run"):
        guidance.prepare(guidance.resolve({"name": "classifier", "scale": 2.0}), run=None)
    with pytest.raises(ValueError, match="is not a diffjax training workdir"):
        guidance.prepare(guidance.resolve({"name": "classifier", "scale": 2.0,
                                           "classifier_workdir": str(tmp_path)}), run=None)
