"""Analytic check of the inverse-problem samplers on Gaussian data, where the posterior is closed form.

Prior x0 ~ N(mu, diag s^2) on 4x4 images (independent pixels); inpainting A = diag(m), y = m (x0 +
sigma_y eta). Per pixel, the exact posterior is (Bishop 2006, Eq. 2.116-2.117)
    measured (m = 1):    precision 1/s^2 + 1/sigma_y^2, mean (mu/s^2 + y/sigma_y^2) / precision
    unmeasured (m = 0):  the prior N(mu, s^2).
Steered diffusion with a noiseless y (sigma_y = 0) is exact here: the projection forces the measured
pixels to y and, the prior being independent, leaves the others to the exact denoiser (prior).
DPS with the Gaussian-likelihood weight zeta = 1 / (2 sigma_y^2) is not: with D = c x + (1 - c) mu,
c = s^2 / (s^2 + sigma^2) and v = Var[x0 | x] = c sigma^2, it gives D' = D + (v / sigma_y^2)(y - D)
on measured pixels where the exact posterior denoiser has v / (v + sigma_y^2) - it drops v from the
likelihood variance. D' is affine in x, so the Heun sampler maps the Gaussian x_T to a Gaussian
whose mean and variance the test propagates step by step in float64 (an independent reference of
the discretized method). The sampler must match it (the implementation is right), and the test
asserts the documented bias of the method against the exact posterior: a weak measurement
(sigma_y >> s) lands near the posterior, a strong one (sigma_y < s) overshoots y and collapses the
variance.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.core import analytic, samplers, timesteps
from diffjax.inverse import operators as ops
from diffjax.inverse import steering

H = 4
MU = np.linspace(-0.6, 0.6, H * H).reshape(H, H, 1)
S = np.linspace(0.4, 1.2, H * H).reshape(H, H, 1)
D_PRIOR = analytic.gaussian_denoiser(MU, S)
N = 4000
OP = ops.make("inpaint", (H, H, 1), mask="random", keep=0.5, seed=4)
M = np.asarray(OP.forward(jnp.ones((1, H, H, 1))))[0] > 0


def _draw(D, y, sampler, steps, seed=0):
    sig = timesteps.karras(steps, 0.002, 80.0)
    yb = jnp.broadcast_to(jnp.asarray(y, jnp.float32), (N, H, H, 1))
    f = jax.jit(lambda key: samplers.sample(sampler, D, sig, key=key, shape=(N, H, H, 1),
                                            cond={"measurement": yb}).x)
    return np.asarray(f(jax.random.PRNGKey(seed)), np.float64), np.asarray(sig, np.float64)


def _posterior(y, sigma_y):
    prec = 1 / S ** 2 + 1 / sigma_y ** 2
    mean = np.where(M, (MU / S ** 2 + y / sigma_y ** 2) / prec, MU)
    return mean, np.where(M, 1 / prec, S ** 2)


def _assert_moments(x, mean, var, z=4.5, rel_var=0.12):
    m, v = x.mean(0), x.var(0)
    se = np.sqrt(var / N)
    assert np.all(np.abs(m - mean) < z * se + 2e-3), np.max(np.abs(m - mean) / se)
    assert np.all(np.abs(v / var - 1) < rel_var), np.max(np.abs(v / var - 1))


def test_steering_noiseless_inpainting_samples_the_exact_posterior():
    y = np.asarray(OP.forward(jnp.asarray(MU + S * 1.3)[None]))[0]       # noiseless measurement
    x, _ = _draw(steering.steer(lambda x, s, c: D_PRIOR(x, s), OP), y, "heun", 24)
    np.testing.assert_allclose(x[:, M], np.broadcast_to(y[M], x[:, M].shape), atol=1e-5)
    _assert_moments(x[:, ~M], MU[~M], S[~M] ** 2)                      # the rest: the prior


def _dps_affine(sigma, y, sigma_y):
    """D'(x, sigma) = slope x + icpt per pixel: the DPS denoiser of Gaussian data (module doc)."""
    c = S ** 2 / (S ** 2 + sigma ** 2)
    g = np.where(M, c * sigma ** 2 / sigma_y ** 2, 0.0)                   # v / sigma_y^2, measured
    return (1 - g) * c, (1 - g) * (1 - c) * MU + g * y


def _dps_reference(sig, y, sigma_y):
    """Mean and variance of the Heun sampler under the DPS denoiser, propagated exactly (each
    Heun step is affine in x: x_e = x + h d(x, a), x' = x + h (d(x, a) + d(x_e, b)) / 2,
    d(x, s) = (x - D'(x, s)) / s, h = b - a; the step into 0 is Euler's)."""
    m, v = np.zeros_like(MU), np.full_like(MU, sig[0] ** 2)
    for a, b in zip(sig[:-1], sig[1:]):
        h = b - a
        sa, ia = _dps_affine(a, y, sigma_y)
        pe, qe = 1 + h * (1 - sa) / a, -h * ia / a                        # x_e = pe x + qe
        if b > 0:
            sb, ib = _dps_affine(b, y, sigma_y)
            p = 1 + h / 2 * ((1 - sa) / a + (1 - sb) * pe / b)
            q = h / 2 * (-ia / a + ((1 - sb) * qe - ib) / b)
        else:
            p, q = pe, qe
        m, v = p * m + q, p ** 2 * v
    return m, v


@pytest.mark.parametrize("sigma_y", [3.0, 0.3])
def test_dps_matches_its_analytic_recursion_and_has_the_documented_bias(sigma_y):
    rng = np.random.default_rng(0)
    x_true = MU + S * rng.standard_normal(MU.shape)
    y = np.where(M, x_true + sigma_y * rng.standard_normal(MU.shape), 0.0)
    D = steering.dps(lambda x, s, c: D_PRIOR(x, s), OP, 1.0 / (2 * sigma_y ** 2), normalize=False)
    x, sig = _draw(D, y, "heun", 32, seed=1)
    ref_m, ref_v = _dps_reference(sig, y, sigma_y)
    _assert_moments(x, ref_m, ref_v, rel_var=0.1)                      # the implementation
    post_m, post_v = _posterior(y, sigma_y)
    # unmeasured: the prior, up to the 32-step Heun discretization (x_T ~ N(0, 80^2 I))
    np.testing.assert_allclose(ref_m[~M], MU[~M], atol=0.01)
    np.testing.assert_allclose(ref_v[~M], S[~M] ** 2, rtol=0.05)
    if sigma_y > S.max():      # weak measurement: v << sigma_y^2 at every sigma, DPS ~ exact
        _assert_moments(x[:, M], post_m[M], post_v[M], rel_var=0.15)
    else:                      # strong: gain v / sigma_y^2 > 1 at high sigma overshoots y and
        over = (ref_m[M] - y[M]) * np.sign(y[M] - MU[M])                # collapses the variance
        assert np.all(over > 0), over
        assert np.all(ref_v[M] < 0.5 * post_v[M]), ref_v[M] / post_v[M]
        assert np.all(np.abs(x.mean(0)[M] - post_m[M]) > 5 * np.sqrt(post_v[M] / N))
