"""Analytic-Init and TimeNoise (core/analytic_init.py; Zhao et al. 2024): for Gaussian data the
start is the exact marginal at sigma_M, and a sampler started there with the exact denoiser ends at
the data's moments; E0 = 0, v0 = 0 is plain noise at sigma_M; mu is increasing from -1 to 1 and the
TimeNoise level lies in (0, beta_m) with a median that grows with t."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.core import analytic_init as A
from diffjax.core import processes as P
from diffjax.core import samplers, timesteps


def _gaussian_denoiser(m, s2):
    """The exact D(x, sigma) = E[x0 | x] for x0 ~ N(m, s2 I), x = x0 + sigma eps."""
    def D(x, sigma, cond=None):
        sig2 = jnp.reshape(sigma, (-1,) + (1,) * (x.ndim - 1)) ** 2
        return m + s2 / (s2 + sig2) * (x - m)
    return D


def test_data_moments_are_the_mean_and_trace_of_the_covariance():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(4000, 4, 4, 1))
    mean, v0 = A.data_moments(x)
    assert mean.shape == (4, 4, 1) and np.allclose(mean, 2.0, atol=0.2)
    assert abs(v0 - 9.0) < 0.3
    with pytest.raises(ValueError, match="at least 2 examples"):
        A.data_moments(x[:1])


def test_analytic_init_is_the_exact_marginal_for_gaussian_data():
    m, s2, sigma = 0.7, 0.25, 3.0
    keys = samplers.example_keys(jax.random.key(0), 20000)
    x = np.asarray(A.analytic_init(keys, jnp.full((2,), m), s2, sigma))
    # q(x at sigma) = N(m, s2 + sigma^2)
    np.testing.assert_allclose(x.mean(0), m, atol=0.05)
    np.testing.assert_allclose(x.var(0), s2 + sigma ** 2, rtol=0.03)
    # E0 = 0, v0 = 0 is the plain prior at sigma_M
    z = np.asarray(A.analytic_init(keys, jnp.zeros((2,)), 0.0, sigma))
    np.testing.assert_allclose(z, sigma * np.asarray(jax.vmap(
        lambda k: jax.random.normal(k, (2,)))(keys)), rtol=1e-6)


def test_a_sampler_started_from_analytic_init_ends_at_the_data_moments():
    m, s2 = 0.7, 0.25
    proc = P.get("edm")
    full = timesteps.sigmas(proc, 30, "karras")
    grid = A.start_grid(full, 2.0)
    assert float(grid[0]) == 2.0 and np.all(np.diff(np.asarray(grid)) < 0) and grid[-1] == 0
    keys = samplers.example_keys(jax.random.key(1), 8000)
    x_init = A.analytic_init(keys, jnp.full((3,), m), s2, 2.0)
    out = samplers.sample("heun", _gaussian_denoiser(m, s2), grid, x_init=x_init)
    x = np.asarray(out.x)
    np.testing.assert_allclose(x.mean(0), m, atol=0.03)
    np.testing.assert_allclose(x.var(0), s2, rtol=0.06)
    # starting from pure noise at the same sigma_M instead is biased: the exact ODE maps the
    # mean 0 to m (1 - sqrt(s2 / (s2 + sigma_M^2))) and the variance to sigma_M^2 s2 / (s2 + ..)
    x_bad = np.asarray(samplers.sample("heun", _gaussian_denoiser(m, s2), grid,
                                       x_init=A.analytic_init(keys, jnp.zeros((3,)), 0.0,
                                                              2.0)).x)
    np.testing.assert_allclose(x_bad.mean(0), m * (1 - np.sqrt(s2 / (s2 + 4.0))), atol=0.03)
    np.testing.assert_allclose(x_bad.var(0), 4.0 * s2 / (s2 + 4.0), rtol=0.06)
    assert np.all(np.abs(x_bad.mean(0) - m) > 0.1)


def test_start_grid_refuses_levels_above_the_grid():
    with pytest.raises(ValueError, match="above the grid's top"):
        A.start_grid(np.array([10.0, 1.0, 0.0]), 20.0)


def test_timenoise_levels():
    t = jnp.linspace(0, 1, 11)
    mu = np.asarray(A.timenoise_mu(t))
    assert mu[0] == -1.0 and mu[-1] == 1.0 and np.all(np.diff(mu) >= 0)
    c = jnp.zeros((4000, 2, 2, 1))
    med = []
    for tf in (0.1, 0.5, 0.9, 1.0):
        c2, beta = A.timenoise_condition(jax.random.key(2), c, jnp.full((4000,), tf), beta_m=100.0)
        beta = np.asarray(beta)
        assert np.all((beta > 0) & (beta < 100.0)) and c2.shape == c.shape
        # the noise added is beta n, per example
        np.testing.assert_allclose(np.asarray(c2).reshape(4000, -1).std(1).mean() /
                                   beta.mean(), 1.0, rtol=0.25)
        med.append(np.median(beta))
    assert med == sorted(med) and med[-1] > 2 * med[0]
    # the median is beta_m sigmoid(mu(t~)): sigmoid(1) at t~ = 1, about sigmoid(-1) at t~ = 0.1
    assert abs(med[-1] - 100 / (1 + np.exp(-1))) < 2.0
    assert abs(med[0] - 100 / (1 + np.exp(1 - 2 * 0.1 ** 5))) < 2.0


def _gauss_run(m, s2, shape=(3,)):
    import ml_collections

    from diffjax import inference
    from diffjax.core import analytic

    D = analytic.gaussian_denoiser(jnp.full(shape, m), jnp.full(shape, np.sqrt(s2)))
    config = ml_collections.ConfigDict({"sample": {"params": "params", "spacing": "karras",
                                                   "batch_size": 4000},
                                        "data": {"name": "digits", "split": "train",
                                                 "resolution": 8, "flip": False}})
    return inference.Run(config=config, model=None, den=lambda p, x, s, c, **_: D(x, s),
                         process=P.get("edm"), params={"params": {}}, step=0, num_classes=0,
                         example_shape=shape)


def test_generate_starts_from_analytic_init_through_the_one_pipeline():
    from diffjax import inference

    m, s2 = 0.7, 0.25
    run = _gauss_run(m, s2)
    start = {"sigma": 2.0, "mean": np.full((3,), m, np.float32), "v0": s2}
    x = inference.generate(run, 8000, sampler="heun", steps=80, start=start, seed=3)
    np.testing.assert_allclose(x.mean(0), m, atol=0.03)
    np.testing.assert_allclose(x.var(0), s2, rtol=0.06)
    # the same draws as the sampler run by hand from the same per-example keys
    keys = samplers.example_keys(jax.random.key(3), 8000)
    grid = A.start_grid(timesteps.sigmas(run.process, 80, "karras"), 2.0)
    ref = samplers.sample("heun", lambda x, s, c=None: run.den(None, x, s, c), grid,
                          x_init=A.analytic_init(keys, start["mean"], s2, 2.0)).x
    np.testing.assert_allclose(x, np.asarray(ref), rtol=1e-5, atol=1e-5)
    for bad, needle in ((2.0, "start must be a dict"),
                        ({"sigma": 2.0, "mean": start["mean"]}, "exactly the keys"),
                        ({**start, "mean": np.zeros((4,))}, "expected one example's shape"),
                        ({**start, "sigma": 1e4}, "must be in"),
                        ({**start, "v0": -1.0}, "must be >= 0")):
        with pytest.raises(ValueError, match=needle):
            inference.generate(run, 4, sampler="heun", steps=4, start=bad)


def test_analytic_start_reads_the_runs_training_data():
    from diffjax import inference
    from diffjax.data import registry as data_registry
    from diffjax.data.arrays import source_arrays

    run = _gauss_run(0.0, 1.0, shape=(8, 8, 1))
    st = inference.analytic_start(run, 5.0, limit=500)
    x, _ = source_arrays(data_registry.get_source(run.config.data), 500)
    assert st["sigma"] == 5.0 and st["mean"].shape == (8, 8, 1)
    np.testing.assert_allclose(st["mean"], x.mean(0), atol=1e-5)
    np.testing.assert_allclose(st["v0"], x.var(0, ddof=1).mean(), rtol=1e-4)
