"""The Frechet-style feature verifier (verifiers.feature_distance): the Gaussian log-density of
the reference features' statistics, up to a constant (scipy as the reference), and its mean-term
variant; a search with it moves samples to the reference; bad inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffjax.core import analytic, processes, timesteps
from diffjax.search import noise_search
from diffjax.search import verifiers as V

MU, COV = np.array([1.5, -1.0]), np.array([[0.5, 0.2], [0.2, 0.3]])
REF = np.random.default_rng(0).multivariate_normal(MU, COV, 4000)


def test_scores_are_the_reference_gaussian_log_density_up_to_a_constant():
    v = V.feature_distance(lambda x: x, REF, eps=0.0)
    x = np.random.default_rng(1).normal(size=(16, 2)).astype(np.float32)
    got = np.asarray(v(jnp.asarray(x)))
    want = stats.multivariate_normal(REF.mean(0), np.cov(REF, rowvar=False)).logpdf(x)
    np.testing.assert_allclose(got - got[0], want - want[0], rtol=1e-4, atol=1e-4)
    l2 = np.asarray(V.feature_distance(lambda x: x, REF, metric="l2")(jnp.asarray(x)))
    np.testing.assert_allclose(l2, -((x - REF.mean(0)) ** 2).sum(1), rtol=1e-5)


def test_best_of_n_with_it_lands_near_the_reference_mean():
    D = analytic.gaussian_denoiser(0.0, 1.0)
    sig = timesteps.sigmas(processes.get("edm"), 10, "karras")
    gen = noise_search.ode_generator("dpmpp_2m", D, sig)
    v = V.feature_distance(lambda x: x, REF)
    one = noise_search.best_of_n(jax.random.key(0), gen, v, shape=(200, 2), n=1)
    many = noise_search.best_of_n(jax.random.key(0), gen, v, shape=(200, 2), n=32)
    d = lambda r: float(np.linalg.norm(np.asarray(r.x).mean(0) - MU))
    assert d(many) < 0.5 * d(one) and float(many.score.mean()) > float(one.score.mean())


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"reference features must be \(N >= 2, F\)"):
        V.feature_distance(lambda x: x, REF[:1])
    with pytest.raises(ValueError, match="metric must be 'gaussian' or 'l2'"):
        V.feature_distance(lambda x: x, REF, metric="cosine")
    v = V.feature_distance(lambda x: x[:, :1], REF)
    with pytest.raises(ValueError, match="the reference has 2 features"):
        v(jnp.zeros((3, 2)))
