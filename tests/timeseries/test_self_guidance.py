"""TSDiff's observation self-guidance and refinement (diffjax/timeseries) on Gaussian AR(1) windows
with their exact denoiser: scale 0 is the model, the Tweedie-moment ('gaussian') energy imputes
with the exact conditional's moments, TSDiff's energies pin the observations ever closer as the
scale grows, quantile samples order by their quantile, Langevin samples its target, refinement
lowers its energy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.core import processes, samplers, timesteps
from diffjax.timeseries import forecast, self_guidance as sg

L, RHO, N_OBS = 8, 0.8, 5
COV = RHO ** np.abs(np.subtract.outer(np.arange(L), np.arange(L)))
Y_OBS = np.array([0.3, -0.2, 0.5, 1.0, 1.5])


EIG, VEC = np.linalg.eigh(COV)


def exact_denoiser(x, sigma, cond=None):
    """E[x0 | x0 + sigma eps] = C (C + sigma^2 I)^-1 x for x0 ~ N(0, C) (AR(1) correlations),
    through C's eigendecomposition (no linear solve inside the sampling loop)."""
    s2 = jnp.broadcast_to(jnp.reshape(jnp.asarray(sigma, jnp.float32), (-1,)), (x.shape[0],)) ** 2
    u, lam = jnp.asarray(VEC, jnp.float32), jnp.asarray(EIG, jnp.float32)
    z = jnp.einsum("ji,bjc->bic", u, x) * (lam[None] / (lam[None] + s2[:, None]))[..., None]
    return jnp.einsum("ij,bjc->bic", u, z)


def _cond(b):
    y = np.zeros((b, L, 1), np.float32)
    y[:, :N_OBS, 0] = Y_OBS
    m = np.zeros_like(y)
    m[:, :N_OBS] = 1.0
    return {sg.OBSERVED: jnp.asarray(y), sg.MASK: jnp.asarray(m)}


def _exact_conditional():
    o, u = np.arange(N_OBS), np.arange(N_OBS, L)
    k = COV[np.ix_(u, o)] @ np.linalg.inv(COV[np.ix_(o, o)])
    return k @ Y_OBS, np.diag(COV[np.ix_(u, u)] - k @ COV[np.ix_(o, u)])


def _impute(energy, scale, b=800, sampler="heun", form="ddim", steps=100):
    sig = timesteps.sigmas(processes.get("edm"), steps, "karras")
    den = sg.self_guided(exact_denoiser, scale, energy, form, sig)
    out = samplers.sample(sampler, den, sig, key=jax.random.key(0), shape=(b, L, 1), cond=_cond(b))
    return np.asarray(out.x)[..., 0]


def test_scale_zero_is_the_model():
    x = jax.random.normal(jax.random.key(1), (6, L, 1))
    cond = dict(_cond(6), **{sg.QUANTILE: jnp.linspace(0.1, 0.9, 6)})
    for energy in sg.ENERGIES:
        for form in sg.FORMS:
            d = sg.self_guided(exact_denoiser, 0.0, energy, form, jnp.array([5.0, 1.0, 0.0]))
            np.testing.assert_array_equal(np.asarray(d(x, 1.0, cond)),
                                          np.asarray(exact_denoiser(x, 1.0)))
    from diffjax import guidance
    assert guidance.get("tsdiff").identity({"scale": 0.0})


def test_gaussian_energy_imputes_with_the_exact_conditional_moments():
    mean, var = _exact_conditional()
    x = _impute("gaussian", 1.0)
    np.testing.assert_allclose(x[:, :N_OBS].mean(0), Y_OBS, atol=0.02)
    # 800 samples: the mean's standard error is <= 0.03, the variance's ~5%
    np.testing.assert_allclose(x[:, N_OBS:].mean(0), mean, atol=0.1)
    np.testing.assert_allclose(x[:, N_OBS:].var(0), var, rtol=0.2)


def test_tsdiff_energies_pin_the_observations_as_the_scale_grows():
    err = {s: np.abs(_impute("mse", s, b=200, sampler="ddim")[:, :N_OBS].mean(0) - Y_OBS).max()
           for s in (1.0, 16.0)}
    assert err[16.0] < 0.5 * err[1.0], err
    # the DDPM form (sigma_next^2 weights) under the ancestral sampler pins them as well (at
    # s = 16 its chains diverge on this grid: the paper's DDPM scales are 1-8)
    x = _impute("mse", 4.0, b=200, sampler="ddpm", form="ddpm")
    assert np.abs(x[:, :N_OBS].mean(0) - Y_OBS).max() < err[1.0]


def test_quantile_samples_order_by_their_quantile():
    b = 64
    sig = timesteps.sigmas(processes.get("edm"), 40, "karras")
    den = sg.self_guided(exact_denoiser, 4.0, "quantile", "ddim", sig)
    q = jnp.asarray(np.tile([0.1, 0.9], b // 2), jnp.float32)
    cond = dict(_cond(b), **{sg.QUANTILE: q})
    out = np.asarray(samplers.sample("ddim", den, sig, key=jax.random.key(2), shape=(b, L, 1),
                                     cond=cond).x)[..., 0]
    low, high = out[0::2, :N_OBS].mean(), out[1::2, :N_OBS].mean()
    assert high > low + 0.05, (low, high)


def test_next_sigma_of_the_ddpm_form():
    grid = jnp.array([10.0, 4.0, 1.0, 0.0])
    got = sg._next_sigma(grid, jnp.array([10.0, 4.0, 1.0]))
    np.testing.assert_array_equal(np.asarray(got), [4.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="needs the sampling grid"):
        sg._next_sigma(None, 1.0)
    with pytest.raises(ValueError, match="needs cond"):
        sg.self_guided(exact_denoiser, 1.0)(jnp.zeros((1, L, 1)), 1.0, {"label": 0})


def test_langevin_samples_its_gaussian_target():
    v = 2.0
    y = forecast.langevin(lambda y: y / v, jnp.zeros((20000,)), key=jax.random.key(3), iters=400,
                          lr=0.05, noise_scale=1.0)
    # the Euler-Maruyama chain's stationary variance is v / (1 - lr / (2 v)): 2.025 here
    assert abs(float(jnp.mean(y))) < 0.05
    assert float(jnp.var(y)) == pytest.approx(v / (1 - 0.05 / (2 * v)), rel=0.05)


def test_refinement_lowers_its_energy():
    b, sigma = 64, 0.3
    obs = _cond(b)
    init = np.asarray(obs[sg.OBSERVED]).copy()
    init[:, N_OBS:, 0] = -2.0                  # a bad base forecast
    den = lambda p, x, s, c: exact_denoiser(x, s)
    out = forecast.refine_with(den, None, sigma, init, obs[sg.OBSERVED], obs[sg.MASK],
                               key=jax.random.key(4), method="sgd", iters=50, lr=0.02)

    def energy(y):
        eps = jax.random.normal(jax.random.key(9), (16,) + y.shape)
        return float(jnp.mean(jax.vmap(lambda e: forecast.refine_energy(
            den, None, jnp.asarray(y), e, sigma, obs[sg.OBSERVED], obs[sg.MASK], "mse", 1.0,
            jnp.full((b,), 0.5), jnp.asarray(init)))(eps)))

    assert energy(out) < 0.75 * energy(init)    # (the denoising loss has a floor above 0)
    mean, _ = _exact_conditional()
    # the refined forecast moved from -2 toward the conditional mean
    assert np.all(np.abs(out[:, N_OBS:, 0].mean(0) - mean) < np.abs(-2.0 - mean))
    with pytest.raises(ValueError, match="method must be"):
        forecast.refine_with(den, None, sigma, init, init, obs[sg.MASK], key=jax.random.key(0),
                             method="hmc")
