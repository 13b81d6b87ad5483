"""EluCD (guidance/elucd.py): the calibrated likelihood, the smoothing, both paths on an exact
two-component mixture with a linear classifier, the neutral scale, no recompilation, bad inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import guidance
from diffjax.core import analytic, samplers, timesteps, processes
from diffjax.guidance.elucd import calibrated_logp, elucd, rms
from diffjax.models import registry
from diffjax.models.classifier import softplus
from tests.guidance.mixtures import label_accuracy

MEANS = jnp.array([[-1.5, 0.0], [1.5, 0.0]])
GM = analytic.isotropic_mixture(MEANS, 0.4)
W = jnp.array([[-4.0, 0.0], [4.0, 0.0]])            # a linear 'clean' classifier: logits = W x


def linear_logits(params, x, beta):
    return x @ params.T


def D(x, sigma, cond=None):                          # the exact unconditional denoiser
    return GM.denoise(x, sigma)


def test_calibrated_logp_is_log_softmax_at_equal_temperatures_and_the_logit_at_tau2_0():
    logits = jax.random.normal(jax.random.key(0), (5, 4))
    y = jnp.array([0, 1, 2, 3, 1])
    np.testing.assert_allclose(calibrated_logp(logits, y, 1.0, 1.0),
                               jax.nn.log_softmax(logits)[jnp.arange(5), y], rtol=1e-6)
    x = jax.random.normal(jax.random.key(1), (5, 3))
    m = jax.random.normal(jax.random.key(2), (4, 3))
    g = jax.grad(lambda z: jnp.sum(calibrated_logp(z @ m.T, y, 2.0, 0.0)))(x)
    np.testing.assert_allclose(g, 2.0 * m[y], rtol=1e-6)      # tau1 grad f_y, no marginal term


def test_softplus_smoothing_tends_to_the_relu_classifier_and_needs_one():
    z = jnp.linspace(-3, 3, 101)
    np.testing.assert_allclose(softplus(z, 1e4), jax.nn.relu(z), atol=1e-4)
    assert float(jnp.max(softplus(z, 3.0) - jax.nn.relu(z))) == pytest.approx(np.log(2) / 3, rel=1e-5)
    m = registry.build_model(registry.get_preset("classifier_relu16"))
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
    v = m.init(jax.random.key(1), x)
    plain, sharp, soft = (m.apply(v, x), m.apply(v, x, smooth=1e4), m.apply(v, x, smooth=1.0))
    np.testing.assert_allclose(sharp, plain, atol=1e-3)
    assert float(jnp.max(jnp.abs(soft - plain))) > 1e-3
    silu = registry.build_model(registry.get_preset("classifier_tiny"))
    with pytest.raises(ValueError, match="needs activation='relu'"):
        silu.apply(silu.init(jax.random.key(1), x[..., :8, :8, :]), x[..., :8, :8, :], smooth=3.0)


def _guided(scale, path, **kw):
    f = dict(smooth_beta=0.0, tau1=1.0, tau2=1.0, gamma=0.3, sigma_min=0.002, sigma_max=80.0)
    f.update(kw)
    return elucd(D, linear_logits, W, scale=scale, path=path, **f)


@pytest.mark.parametrize("path,scale", [("x0", 1.0), ("noisy", 0.3)])
def test_guidance_toward_the_label_raises_its_share_of_samples(path, scale):
    """Unguided, half the samples are in the requested component; EluCD moves most there."""
    base = label_accuracy(D)
    assert 0.45 < base < 0.55
    assert label_accuracy(_guided(scale, path)) > 0.8


@pytest.mark.parametrize("path", ["x0", "noisy"])
def test_scale_zero_is_the_model_exactly(path):
    x = jax.random.normal(jax.random.key(0), (4, 2)) * 3
    cond = {"label": jnp.array([0, 1, 1, 0])}
    np.testing.assert_array_equal(_guided(0.0, path)(x, 2.0, cond), D(x, 2.0))
    static, _ = guidance.split(guidance.resolve({"name": "elucd", "scale": 0.0}))
    assert guidance.apply(D, static, {}, guidance.Context(null_label=2)) is D


def test_noisy_path_step_has_the_scheduled_size_relative_to_x():
    """rms(D' - D) = rms(x) s (max(u, 0.0025) + gamma sin(pi u)), u the log-sigma position."""
    x = jax.random.normal(jax.random.key(0), (3, 2)) * 5
    cond = {"label": jnp.array([0, 1, 1])}
    sigma = 3.0
    u = (np.log(sigma) - np.log(0.002)) / (np.log(80.0) - np.log(0.002))
    want = 0.2 * (u + 0.3 * np.sin(np.pi * u)) * np.asarray(rms(x))[:, 0, ...].ravel()
    got = np.asarray(rms(_guided(0.2, "noisy")(x, sigma, cond) - D(x, sigma))).ravel()
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_x0_path_is_the_ddpm_mean_shift_carried_to_the_edm_frame():
    """D' - D = s (1 + gamma sin(pi u)) sigma^2 / sqrt(1 + sigma^2) grad_x0 log p~(y | x0)."""
    x = jnp.array([[0.3, 0.2], [-0.1, 0.5]])
    cond = {"label": jnp.array([1, 0])}
    sigma = 0.7
    x0 = jnp.clip(D(x, sigma), -1, 1)
    g = jax.grad(lambda z: jnp.sum(calibrated_logp(z @ W.T, cond["label"], 1.0, 0.5)))(x0)
    u = (np.log(sigma) - np.log(0.002)) / (np.log(80.0) - np.log(0.002))
    want = 2.0 * (1 + 0.3 * np.sin(np.pi * u)) * sigma ** 2 / np.sqrt(1 + sigma ** 2) * g
    got = _guided(2.0, "x0", tau2=0.5)(x, sigma, cond) - D(x, sigma)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_changing_a_float_field_does_not_recompile():
    sig = timesteps.sigmas(processes.get("edm"), 4, "karras")

    @jax.jit
    def draw(values):
        Dg = elucd(D, linear_logits, W, path="x0", **values)
        return samplers.sample("euler", Dg, sig, key=jax.random.key(0), shape=(8, 2),
                               cond={"label": jnp.zeros(8, jnp.int32)}).x

    for s in (0.5, 1.0, 2.0):
        values = guidance.traced_values(guidance.resolve({"name": "elucd", "scale": s,
                                                          "smooth_beta": s}))
        draw(values)
    assert draw._cache_size() == 1


def test_bad_fields_and_a_missing_classifier_run_say_what_to_do(tmp_path):
    sig = np.array([80.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="path must be one of x0, noisy"):
        guidance.check(guidance.resolve({"name": "elucd", "scale": 1.0, "path": "eps"}), sig)
    with pytest.raises(ValueError, match="smooth_beta must be >= 0"):
        guidance.check(guidance.resolve({"name": "elucd", "scale": 1.0, "smooth_beta": -1}), sig)
    with pytest.raises(ValueError, match="configs/digits_clean_classifier.py"):
        guidance.prepare(guidance.resolve({"name": "elucd", "scale": 1.0}), run=None)
    with pytest.raises(ValueError, match="logits of shape"):
        from diffjax.guidance.elucd import clean_logits
        m = registry.build_model(registry.get_preset("classifier_tiny"))
        x = jnp.zeros((2, 8, 8, 1))
        clean_logits(m, 3)(m.init(jax.random.key(0), x)["params"], x, 0.0)
