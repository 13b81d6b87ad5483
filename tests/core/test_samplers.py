"""Samplers against exact answers: Gaussian moments, ODE convergence order, GMM energy distance,
NumPy reference updates, inversion round trip, per-example keys and no-recompile."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.core import analytic, processes as P, samplers as S, timesteps as T
from tests.core import reference_np as ref

MU = jnp.array([1.0, -2.0])
SD = jnp.array([0.5, 2.0])
D_GAUSS = analytic.gaussian_denoiser(MU, SD)
N = 4000


def _grid_for(name):
    if name in ("flow_euler", "flow_midpoint"):
        return T.sigmas(P.get("flow"), 60, "uniform")
    if name == "ddpm":
        return T.sigmas(P.get("vp_discrete"), 250, "leading")
    return T.sigmas(P.get("edm"), 40, "karras")


@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc",
                                  "unipc_3", "evodiff", "flow_euler", "flow_midpoint"])
def test_gaussian_moments(name):
    """Sample mean/variance of N draws match N(mu, s^2): tolerance 5 standard errors of the
    estimator (mean: s/sqrt(N); variance: s^2 sqrt(2/N)) plus 2% for discretization."""
    sig = _grid_for(name)
    out = jax.jit(lambda k: S.sample(name, D_GAUSS, sig, key=k, shape=(N, 2)))(jax.random.PRNGKey(1))
    x = np.asarray(out.x)
    se_m = np.asarray(SD) / math.sqrt(N)
    se_v = np.asarray(SD) ** 2 * math.sqrt(2 / N)
    np.testing.assert_array_less(np.abs(x.mean(0) - np.asarray(MU)), 5 * se_m + 0.02 * np.asarray(SD))
    np.testing.assert_array_less(np.abs(x.var(0) - np.asarray(SD) ** 2),
                                 5 * se_v + 0.04 * np.asarray(SD) ** 2)


def _ode_error(name, n, s_max=20.0, s_min=0.02):
    """Max error at sigma_min against the exact probability-flow map, for Gaussian data."""
    grid = T.karras(n, s_min, s_max)[:-1]          # end at sigma_min: measure the ODE solve itself
    x_T = s_max * jax.random.normal(jax.random.PRNGKey(0), (256, 2))
    out = S.run(S.get(name), D_GAUSS, x_T, grid, keys=S.example_keys(jax.random.PRNGKey(9), 256))
    exact = analytic.gaussian_ode_solution(x_T, s_max, s_min, MU, SD)
    return float(jnp.max(jnp.abs(out.x - exact)))


@pytest.mark.parametrize("name,order", [("euler", 1), ("ddim", 1), ("heun", 2), ("dpmpp_2m", 2),
                                        ("dpmpp_3m", 2), ("unipc", 3)])
def test_ode_convergence_order(name, order):
    """Error vs steps on a log-log plot has the solver's theoretical slope. UniPC-2 with its
    corrector is order 3 (Zhao et al. 2023, Thm 3.3). DPM-Solver++(3M) starts with a first-order and a
    second-order warm-up step whose O(h^2) local error bounds its global order by 2 (as in the
    reference implementation), so its slope is checked against 2 and its error against 2M's."""
    ns = [40, 80, 160]
    errs = [_ode_error(name, n) for n in ns]
    if name == "dpmpp_3m":
        assert all(e3 < e2 for e3, e2 in zip(errs, [_ode_error("dpmpp_2m", n) for n in ns]))
    slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert order - 0.35 < slope < order + 0.6, (name, errs, slope)


@jax.jit
def _energy_distance(a, b):
    def mean_dist(u, v):
        return jnp.mean(jnp.sqrt(jnp.sum((u[:, None] - v[None]) ** 2, -1) + 1e-12))
    return 2 * mean_dist(a, b) - mean_dist(a, a) - mean_dist(b, b)


GMM = analytic.diagonal_mixture(means=[[-4.0, 0.0], [4.0, 0.0], [0.0, 4.0]], stds=[0.5, 0.8, 0.3],
                                weights=[0.5, 0.3, 0.2])


@pytest.fixture(scope="module")
def gmm_threshold():
    """Null distribution of the energy distance between two independent 2000-draw samples of the
    true mixture; threshold = its mean + 4 sd (estimated from 10 pairs)."""
    null = [float(_energy_distance(GMM.sample(jax.random.PRNGKey(2 * i), 2000),
                                   GMM.sample(jax.random.PRNGKey(2 * i + 1), 2000)))
            for i in range(10)]
    return float(np.mean(null) + 4 * np.std(null))


def test_gmm_threshold_rejects_a_wrong_mixture(gmm_threshold):
    wrong = analytic.diagonal_mixture(means=[[-4.0, 0.0], [4.0, 0.0]], stds=[0.5, 0.8])
    ref_x = GMM.sample(jax.random.PRNGKey(99), 2000)
    assert float(_energy_distance(wrong.sample(jax.random.PRNGKey(5), 2000), ref_x)) > gmm_threshold


@pytest.mark.parametrize("name", ["ddpm", "heun", "dpmpp_2m", "unipc"])
def test_gmm_energy_distance(name, gmm_threshold):
    """2000 samples from a sampler driven by the exact GMM denoiser match the mixture: their energy
    distance to 2000 true draws is within the null threshold."""
    sig = (T.sigmas(P.get("vp_discrete"), 100, "leading") if name == "ddpm"
           else T.sigmas(P.get("edm"), 40, "karras"))
    out = S.sample(name, GMM.denoise, sig, key=jax.random.PRNGKey(7), shape=(2000, 2))
    ref_x = GMM.sample(jax.random.PRNGKey(99), 2000)
    assert float(_energy_distance(out.x, ref_x)) < gmm_threshold


# --- independent NumPy reference ---------------------------------------------------------------
def _np_D(x, s):
    return ref.gaussian_D(x, s, np.asarray(MU, np.float64), np.asarray(SD, np.float64))


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_matches_numpy_reference(eta):
    proc = P.get("vp_discrete")
    ab = proc.alphas_cumprod()
    ts = T.ddpm_timesteps(25, 1000, "leading")
    sig = T.sigmas(proc, 25, "leading")
    B = 64
    keys = S.example_keys(jax.random.PRNGKey(3), B)
    x_T_edm = float(sig[0]) * S.prior_noise(keys, (2,))
    noises = [np.asarray(S.step_noise(keys, i, (2,)), np.float64) for i in range(25)]

    def eps_model(x, t):  # VP-frame eps from the EDM-frame exact denoiser
        a = np.sqrt(ab[t]); s = np.sqrt(1 - ab[t])
        x0 = _np_D(x / a, s / a)
        return (x - a * x0) / s

    x_T_vp = np.asarray(x_T_edm, np.float64) * np.sqrt(ab[ts[0]])
    want = ref.ddim_vp(x_T_vp, ts, ab, eps_model, eta=eta, noises=noises if eta else None)
    got = S.run(S.get("ddim"), D_GAUSS, x_T_edm, sig, keys=keys, eta=eta).x
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heun,churn", [(False, 0.0), (True, 0.0), (True, 30.0)])
def test_euler_heun_match_numpy_reference(heun, churn):
    sig = T.karras(18, 0.002, 80.0)
    B = 64
    keys = S.example_keys(jax.random.PRNGKey(4), B)
    x_T = 80.0 * S.prior_noise(keys, (2,))
    noises = [np.asarray(S.step_noise(keys, i, (2,)), np.float64) for i in range(18)]
    want = ref.edm_sampler(np.asarray(x_T, np.float64), np.asarray(sig, np.float64), _np_D, heun=heun,
                           s_churn=churn, s_tmin=0.05, s_tmax=50.0, s_noise=1.003, noises=noises)
    got = S.run(S.get("heun" if heun else "euler"), D_GAUSS, x_T, sig, keys=keys, s_churn=churn,
                s_tmin=0.05, s_tmax=50.0, s_noise=1.003)
    np.testing.assert_allclose(np.asarray(got.x), want, rtol=1e-5, atol=1e-5)
    assert int(got.nfe) == (35 if heun else 18)


def test_dpmpp_2m_matches_numpy_reference():
    proc = P.get("vp_linear")
    ts = np.linspace(1.0, 1e-3, 16)
    alpha = lambda t: float(proc.alpha(t))
    sigma = lambda t: float(proc.sigma(t))
    x0_model = lambda x, t: _np_D(x / alpha(t), sigma(t) / alpha(t))
    x_T = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (64, 2)), np.float64)
    want = ref.dpmpp_2m_vp(x_T, ts, alpha, sigma, x0_model) / alpha(ts[-1])
    sig = jnp.asarray([sigma(t) / alpha(t) for t in ts], jnp.float32)
    got = S.run(S.get("dpmpp_2m"), D_GAUSS, x_T / alpha(ts[0]), sig).x
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


# --- exactness and invariants ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "unipc_3", "heun"])
def test_point_mass_is_exact(name):
    """D = mu makes the PF-ODE linear: data-prediction solvers return mu exactly."""
    mu = jnp.array([0.3, -1.7])
    out = S.sample(name, lambda x, s, c: jnp.broadcast_to(mu, x.shape), T.karras(7, 0.01, 50.0),
                   key=jax.random.PRNGKey(0), shape=(8, 2))
    np.testing.assert_allclose(np.asarray(out.x), np.broadcast_to(mu, (8, 2)), atol=1e-5)


def test_flow_euler_equals_ddim():
    sig = T.sigmas(P.get("flow"), 12, "uniform")
    x_T = float(sig[0]) * jax.random.normal(jax.random.PRNGKey(0), (16, 2))
    a = S.run(S.get("flow_euler"), D_GAUSS, x_T, sig).x
    b = S.run(S.get("ddim"), D_GAUSS, x_T, sig, keys=S.example_keys(jax.random.PRNGKey(1), 16)).x
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_nfe_counts():
    sig = T.karras(10, 0.01, 10.0)
    kw = dict(key=jax.random.PRNGKey(0), shape=(2, 2))
    expect = {"ddim": 10, "euler": 10, "heun": 19, "dpmpp_2m": 10, "dpmpp_3m": 10, "unipc": 10,
              "flow_midpoint": 20, "ddpm": 10}
    for name, nfe in expect.items():
        assert int(S.sample(name, D_GAUSS, sig, **kw).nfe) == nfe, name


def test_ddim_inversion_round_trip():
    x0 = jnp.array([[0.8, -1.5], [1.4, -3.0], [0.2, 0.1]])
    up = T.karras(30, 0.01, 40.0)[:-1][::-1]
    x_T, nfe = S.ddim_invert(D_GAUSS, x0, up, fixed_point_iters=8)
    back = S.run(S.get("ddim"), D_GAUSS, x_T, up[::-1], keys=S.example_keys(jax.random.PRNGKey(0), 3))
    np.testing.assert_allclose(np.asarray(back.x), np.asarray(x0), atol=1e-4)
    assert nfe == 29 * 9
    x_T0, _ = S.ddim_invert(D_GAUSS, x0, up)      # explicit inversion: close, not exact
    assert float(jnp.max(jnp.abs(x_T0 - x_T))) > 0


def test_per_example_keys_independent_of_batch():
    sig = T.karras(8, 0.01, 10.0)
    big = S.sample("ddpm", D_GAUSS, sig, key=jax.random.PRNGKey(3), shape=(8, 2)).x
    small = S.sample("ddpm", D_GAUSS, sig, key=jax.random.PRNGKey(3), shape=(4, 2)).x
    tail = S.sample("ddpm", D_GAUSS, sig, key=jax.random.PRNGKey(3), shape=(4, 2), batch_offset=4).x
    np.testing.assert_allclose(np.asarray(big[:4]), np.asarray(small), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(big[4:]), np.asarray(tail), rtol=1e-6)


def test_traced_knobs_do_not_recompile():
    traces = []

    @jax.jit
    def gen(key, eta, s_max):
        traces.append(1)
        sig = T.karras(6, 0.01, s_max)
        return S.sample("ddim", D_GAUSS, sig, key=key, shape=(4, 2), eta=eta).x

    a = gen(jax.random.PRNGKey(0), 0.0, 10.0)
    b = gen(jax.random.PRNGKey(1), 0.5, 20.0)
    gen(jax.random.PRNGKey(2), 1.0, 5.0)
    assert len(traces) == 1
    assert not np.allclose(np.asarray(a), np.asarray(b))


# --- bad input ---------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    sig = T.karras(5, 0.01, 10.0)
    with pytest.raises(ValueError, match="unknown sampler"):
        S.get("dpm_solver_99")
    with pytest.raises(ValueError, match="unknown process"):
        P.get("vq")
    with pytest.raises(ValueError, match="strictly decreasing"):
        S.sample("ddim", D_GAUSS, jnp.array([1.0, 2.0, 0.0]), key=jax.random.PRNGKey(0), shape=(2, 2))
    with pytest.raises(ValueError, match="zero steps"):
        S.sample("ddim", D_GAUSS, jnp.array([1.0]), key=jax.random.PRNGKey(0), shape=(2, 2))
    with pytest.raises(ValueError, match="positive integer"):
        T.karras(0)
    with pytest.raises(ValueError, match="one key per example"):
        S.run(S.get("ddpm"), D_GAUSS, jnp.zeros((3, 2)), sig,
              keys=S.example_keys(jax.random.PRNGKey(0), 2))
    with pytest.raises(ValueError, match="has no option"):
        S.sample("heun", D_GAUSS, sig, key=jax.random.PRNGKey(0), shape=(2, 2), eta=1.0)
    with pytest.raises(ValueError, match="shape"):
        S.sample("ddim", lambda x, s, c: x[:, :1], sig, key=jax.random.PRNGKey(0), shape=(2, 2))
    with pytest.raises(ValueError, match="vp_discrete"):
        T.sigmas(P.get("edm"), 10, "trailing")
