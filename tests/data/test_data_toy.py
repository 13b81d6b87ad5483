"""Toy mixtures: moments, normalisation, log density vs scipy, and the exact diffused denoiser."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from diffjax.core.analytic import _evaluate
from diffjax.data.toy import GaussianMixture, SwissRoll, get_toy, gmm_8, gmm_25


def _random_mixture(seed=0, k=3, d=2) -> GaussianMixture:
    """Unequal weights and full, anisotropic covariances."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, d, d)) * 0.4
    covs = a @ np.swapaxes(a, 1, 2) + 0.05 * np.eye(d)
    weights = rng.dirichlet(np.ones(k))
    return GaussianMixture(jnp.asarray(weights, jnp.float32),
                           jnp.asarray(rng.normal(size=(k, d)) * 2, jnp.float32),
                           jnp.asarray(covs, jnp.float32))


N_SAMPLES = 200_000  # one sample size for all tests, so the sampler compiles once


def test_sample_moments():
    gm = _random_mixture()
    x, comp = gm.sample_with_components(jax.random.key(0), N_SAMPLES)
    x = np.asarray(x, np.float64)
    np.testing.assert_allclose(x.mean(0), gm.mean(), atol=0.02)
    np.testing.assert_allclose(np.cov(x.T), gm.cov(), atol=0.03, rtol=0.02)
    freq = np.bincount(np.asarray(comp), minlength=len(gm.weights)) / len(comp)
    np.testing.assert_allclose(freq, gm.weights, atol=0.01)
    k = int(comp[0])  # the component label says which Gaussian the point came from
    inside = np.asarray(comp) == k
    np.testing.assert_allclose(x[inside].mean(0), gm.means[k], atol=0.05)


@pytest.mark.parametrize("gm,half,sigma", [(gmm_8(), 4.0, 0.0), (gmm_8(), 5.0, 0.7),
                                            (gmm_25(), 3.0, 0.0)])
def test_log_prob_integrates_to_one(gm, half, sigma):
    xs = jnp.linspace(-half, half, 301)
    h = float(xs[1] - xs[0])
    grid = jnp.stack(jnp.meshgrid(xs, xs, indexing="ij"), -1)
    mass = float(jnp.exp(gm.log_prob(grid, sigma)).sum()) * h * h
    assert mass == pytest.approx(1.0, abs=2e-3)


def test_log_prob_matches_scipy_at_every_sigma():
    gm = _random_mixture(1)
    x = np.random.default_rng(0).normal(size=(50, 2)) * 3
    for sigma in [0.0, 0.5, 2.0]:
        ref = sum(w * multivariate_normal(m, c + sigma**2 * np.eye(2)).pdf(x)
                  for w, m, c in zip(*map(np.asarray, gm)))
        np.testing.assert_allclose(gm.log_prob(x, sigma), np.log(ref), rtol=1e-4, atol=1e-4)


def test_denoiser_is_identity_as_sigma_vanishes():
    gm = gmm_8()
    x = gm.means + 0.1 * jax.random.normal(jax.random.key(1), gm.means.shape)
    np.testing.assert_allclose(gm.denoise(x, 1e-3), x, atol=1e-4)
    # ...and shrinks to the mixture mean as sigma grows.
    np.testing.assert_allclose(gm.denoise(x, 1e3), jnp.broadcast_to(gm.mean(), x.shape), atol=1e-3)


def test_denoiser_equals_tweedie_and_score_equals_grad():
    gm = _random_mixture(2)
    x = 2.5 * jax.random.normal(jax.random.key(2), (64, 2))
    sigma = jnp.exp(jnp.linspace(jnp.log(0.05), jnp.log(5.0), 64))  # one sigma per point
    both = jax.jit(lambda x, s: (gm.denoise(x, s), gm.score(x, s),
                                 jax.vmap(jax.grad(gm.log_prob))(x, s)))  # one compile
    denoised, score, grad = both(x, sigma)
    np.testing.assert_allclose(denoised, x + sigma[:, None] ** 2 * grad, rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(score, grad, rtol=1e-4, atol=1e-3)


def test_denoiser_matches_monte_carlo_posterior_mean():
    """E[x0|x] = E_p[x0 N(x; x0, s^2)] / E_p[N(x; x0, s^2)], estimated with samples of p."""
    gm, sigma = _random_mixture(3), 1.0
    x0 = np.concatenate([gm.sample(k, N_SAMPLES) for k in jax.random.split(jax.random.key(3))])
    x0 = x0.astype(np.float64)
    x = np.array([[0.0, 0.0], [1.5, -1.0], [-2.0, 2.0]])
    logw = -((x[:, None, :] - x0[None]) ** 2).sum(-1) / (2 * sigma**2)
    w = np.exp(logw - logw.max(1, keepdims=True))
    mc = (w @ x0) / w.sum(1, keepdims=True)
    np.testing.assert_allclose(gm.denoise(x, sigma), mc, atol=0.03)


def test_traced_sigma_does_not_recompile_and_swiss_roll():
    gm, x = gmm_8(), jnp.ones((8, 2))
    gm.denoise(x, 0.1)
    compiled = _evaluate._cache_size()
    gm.denoise(x, 0.7), gm.denoise(x, jnp.float32(2.0)), gm.denoise(x, np.float64(3.0))
    assert _evaluate._cache_size() == compiled
    roll = get_toy("swiss_roll")
    assert isinstance(roll, SwissRoll)
    pts = roll.sample(jax.random.key(0), 2000)
    r = jnp.linalg.norm(pts, axis=-1)
    assert pts.shape == (2000, 2) and float(r.min()) > 0.7 and float(r.max()) < 3.0
    with pytest.raises(ValueError, match="gmm_8"):
        get_toy("moons")
