"""Processes and grids: forward marginals, inverses, DDPM tables, PFGM++ kernel, grid spacings."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffjax.core import pfgmpp, processes as P, timesteps as T

ALL = ["vp_discrete", "vp_linear", "vp_cosine", "ve", "edm", "flow", "pfgmpp"]


def _times(proc, k=5):
    lo, hi = proc.t_min, proc.t_max
    return jnp.linspace(lo + 0.05 * (hi - lo), hi, k)


@pytest.mark.parametrize("name", ALL)
def test_forward_marginal_moments(name):
    """x_t = alpha x0 + sigma eps: for x0 = c, the empirical mean is alpha c and the variance sigma^2
    (within 5 standard errors of each estimator, n = 20000 draws per time)."""
    proc = P.get(name)
    n, c = 20000, 0.7
    for i, t in enumerate(_times(proc)):
        x0 = jnp.full((n, 1), c)
        x_t, _ = proc.perturb(jax.random.PRNGKey(i), x0, jnp.full((n,), t))
        a, s = float(proc.alpha(t)), float(proc.sigma(t))
        if name == "pfgmpp":   # heavy-tailed kernel: E||n||^2 = sigma^2 N D / (D - 2), N = 1
            s = s * math.sqrt(proc.D / (proc.D - 2))
        m, v = float(jnp.mean(x_t)), float(jnp.var(x_t))
        assert abs(m - a * c) < 5 * s / math.sqrt(n) + 1e-6, (t, m, a * c)
        assert abs(v - s ** 2) < 5 * s ** 2 * math.sqrt(2 / n) * (3 if name == "pfgmpp" else 1), (t, v)


@pytest.mark.parametrize("name", ALL)
def test_log_snr_inverse_and_sigma_tilde(name):
    proc = P.get(name)
    t = _times(proc, 9)
    span = proc.t_max - proc.t_min
    np.testing.assert_allclose(np.asarray(proc.t_from_log_snr(proc.log_snr(t))), np.asarray(t),
                               atol=1e-5 * span + 1e-6)
    np.testing.assert_allclose(np.asarray(proc.sigma_tilde(t)),
                               np.asarray(proc.sigma(t) / proc.alpha(t)), rtol=1e-5)
    ls = np.asarray(proc.log_snr(t))
    assert np.all(np.diff(ls) < 0), "log-SNR must decrease with t"


def test_ddpm_discrete_tables():
    proc = P.get("vp_discrete")
    betas = np.linspace(1e-4, 0.02, 1000)
    ab = np.cumprod(1 - betas)
    np.testing.assert_allclose(proc.alphas_cumprod(), ab)
    for t in [0, 1, 10, 500, 999]:
        np.testing.assert_allclose(float(proc.alpha(jnp.float32(t))) ** 2, ab[t], rtol=1e-5)
    # the continuous VP-linear process is the 1000-step limit: log alpha_bar agrees to ~1%
    cont = P.get("vp_linear")
    n = np.array([100, 300, 600, 999])
    np.testing.assert_allclose(2 * np.log(np.asarray(cont.alpha((n + 1) / 1000.0))),
                               np.log(ab[n]), rtol=0.015)


def test_cosine_continuous_matches_discrete_table():
    disc = P.get("vp_discrete", beta_schedule="cosine")
    cont = P.get("vp_cosine")
    n = np.array([0, 10, 100, 500, 900])
    np.testing.assert_allclose(2 * np.log(np.asarray(cont.alpha((n + 1) / 1000.0))),
                               np.log(disc.alphas_cumprod()[n]), rtol=1e-3, atol=1e-6)


def test_ddpm_spacings_match_lin_et_al_table():
    """Lin et al. 2024 (Table 2) list the 10-step DDPM timesteps of each spacing for T = 1000."""
    np.testing.assert_array_equal(T.ddpm_timesteps(10, 1000, "linspace"),
                                  [999, 888, 777, 666, 555, 444, 333, 222, 111, 0])
    np.testing.assert_array_equal(T.ddpm_timesteps(10, 1000, "leading"),
                                  [900, 800, 700, 600, 500, 400, 300, 200, 100, 0])
    np.testing.assert_array_equal(T.ddpm_timesteps(10, 1000, "trailing"),
                                  [999, 899, 799, 699, 599, 499, 399, 299, 199, 99])
    proc = P.get("vp_discrete")
    sig = np.asarray(T.sigmas(proc, 10, "trailing"))
    ab = proc.alphas_cumprod()
    np.testing.assert_allclose(sig[:-1], np.sqrt((1 - ab[T.ddpm_timesteps(10, 1000, "trailing")])
                                                 / ab[T.ddpm_timesteps(10, 1000, "trailing")]),
                               rtol=1e-5)
    assert sig[-1] == 0


def test_steps_offset_shifts_the_leading_grid_from_the_process():
    """Stable Diffusion's scheduler (steps_offset=1): leading timesteps 901, 801, ..., 1; the
    process carries the offset (a converted scheduler's), sigmas() reads it."""
    from diffjax.convert.run import diffusion_fields

    fields, _ = diffusion_fields({"steps_offset": 1, "timestep_spacing": "leading",
                                  "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                  "beta_end": 0.012})
    proc = P.get("vp_discrete", **fields["process_kwargs"])
    assert proc.steps_offset == 1
    ts = np.arange(900, -1, -100) + 1
    ab = proc.alphas_cumprod()
    np.testing.assert_allclose(np.asarray(T.sigmas(proc, 10, "leading"))[:-1],
                               np.sqrt((1 - ab[ts]) / ab[ts]), rtol=1e-5)
    # an explicit offset wins; the default process has none
    np.testing.assert_allclose(T.sigmas(proc, 10, "leading", steps_offset=0),
                               T.sigmas(P.get("vp_discrete", beta_schedule="scaled_linear",
                                              beta_start=0.00085, beta_end=0.012), 10, "leading"))


def test_karras_grid():
    s = np.asarray(T.karras(18, 0.002, 80.0, 7.0))
    assert s.shape == (19,) and s[-1] == 0
    np.testing.assert_allclose([s[0], s[-2]], [80.0, 0.002], rtol=1e-5)
    assert np.all(np.diff(s) < 0)
    i = np.arange(18)
    want = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(s[:-1], want, rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("spacing", ["karras", "uniform", "logsnr", "quadratic"])
def test_every_grid_is_valid(name, spacing):
    s = T.sigmas(P.get(name), 12, spacing)
    T.validate(s)
    assert s.shape == (13,) and float(s[-1]) == 0.0


def test_logsnr_grid_is_uniform_in_log_snr():
    s = np.asarray(T.sigmas(P.get("vp_linear"), 10, "logsnr"))[:-1]
    d = np.diff(-2 * np.log(s))
    np.testing.assert_allclose(d, d[0], rtol=1e-4)


# --- PFGM++ ------------------------------------------------------------------------------------
def test_pfgmpp_radius_second_moment_and_betaprime_law():
    """E||n||^2 = sigma^2 N D/(D-2); ||n||^2/r^2 ~ BetaPrime(N/2, D/2) (KS test)."""
    N, D, sigma, m = 3072, 128.0, 1.7, 4000
    R = pfgmpp.radius(jax.random.PRNGKey(0), m, N, sigma, D)
    r2 = np.asarray(R, np.float64) ** 2
    want = sigma ** 2 * N * D / (D - 2)
    assert abs(r2.mean() / want - 1) < 5 * np.std(r2) / want / math.sqrt(m)
    ratio = r2 / (sigma ** 2 * D)
    assert stats.kstest(ratio, stats.betaprime(N / 2, D / 2).cdf).pvalue > 1e-3


def test_pfgmpp_direction_uniform_and_large_D_is_gaussian():
    n = pfgmpp.perturbation(jax.random.PRNGKey(1), (3000, 16), 2.0, 128.0)
    u = np.asarray(n / jnp.linalg.norm(n, axis=1, keepdims=True))
    assert np.abs(u.mean(0)).max() < 5 / math.sqrt(3000 * 16)
    np.testing.assert_allclose(np.cov(u.T), np.eye(16) / 16, atol=0.01)
    big = np.asarray(pfgmpp.perturbation(jax.random.PRNGKey(2), (4000, 8), 2.0, 1e7)).ravel()
    assert stats.kstest(big, stats.norm(scale=2.0).cdf).pvalue > 1e-3
    small = np.asarray(pfgmpp.perturbation(jax.random.PRNGKey(2), (4000, 8), 2.0, 4.0)).ravel()
    assert stats.kstest(small, stats.norm(scale=2.0).cdf).pvalue < 1e-6   # heavy tails


def test_pfgmpp_infinite_D_is_edm_kernel():
    x0 = jax.random.normal(jax.random.PRNGKey(0), (8, 4, 4, 3))
    t = jnp.linspace(0.1, 5.0, 8)
    a, _ = P.get("pfgmpp", D=math.inf).perturb(jax.random.PRNGKey(3), x0, t)
    b, _ = P.get("edm").perturb(jax.random.PRNGKey(3), x0, t)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_process_bad_options():
    with pytest.raises(ValueError, match="unknown option"):
        P.get("edm", sigma_maxx=3.0)
    with pytest.raises(ValueError, match="beta_schedule"):
        P.get("vp_discrete", beta_schedule="quadratic")
    with pytest.raises(ValueError, match="unknown spacing"):
        T.sigmas(P.get("edm"), 10, "cosine")
