"""EVODiff sampler (diffjax/core/samplers/evodiff.py): exactness, DPM-Solver++ reduction,
bookkeeping against a float64 loop written from the official algorithm, NFE accounting, Gaussian
accuracy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.core import analytic, timesteps
from diffjax.core import processes as P
from diffjax.core.samplers import evodiff as E
from diffjax.core.samplers.base import run
from diffjax.core.samplers.dpm_solver import DPMPP_2M, dpmpp_update

EDM = P.get("edm")
MU = np.array([0.3, -0.2, 0.1])
S = np.array([0.5, 0.25, 0.1])
SHAPE = (250, 4, 4, 3)         # NHWC; per channel 4000 i.i.d. draws of N(MU_c, S_c^2)
NFES = (5, 10, 20)


def grid(n, spacing="logsnr"):
    return timesteps.sigmas(EDM, n, spacing)


# ---------------------------------------------------------------------------------------------
# Reference: the official EVODiff_edm.sample loop (order 2, lower_order_final, denoise_to_zero)
# re-derived in float64 numpy, with S = NFE - 1 solver steps over the positive grid levels.
def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def _pc(a, b):
    ax = tuple(range(1, a.ndim - 1))
    return np.clip(np.sum(a * b, ax, keepdims=True) / np.sum(b * b, ax, keepdims=True), -2, 2)


def ref_second(x, m0, m1, s1, s0, t, t0, tT, model, long):
    """One 2nd-order step s0 -> t (earlier level s1); returns (x_t, model value at t)."""
    h = 1 / t - 1 / s0
    xe = (t / s0) * x + t * h * m0
    r = np.log(s1 / s0) / np.log(s0 / t)
    w = 0.5 * (1 - ((t + t0) / (tT + t0)) ** 2)
    b = np.sqrt((t / s0) / (s0 / s1))
    g1 = (1 - w) * b + w * _pc(m0, m1)
    d1 = m0 - g1 * m1
    ri = np.clip(_sig(0.25 * np.abs(g1)) * r, 0.25 * r, 1.5 * r)
    xp = xe + 0.5 * t * h / ri * d1
    mt = model(xp, t)
    d2 = mt - ((1 - w) * b + w * _pc(mt, m0)) * m0
    bp, bn = d1 / r / h, r / h * d2
    eta = 0.5 * _sig(np.abs(0.5 * _pc(bn + bp, bn - bp)))
    bt = -eta / r * d1 + r * (1 - eta) * d2
    shift = np.abs(_pc(xp - xe - 0.5 * t * h / ri * bt, d1) / (h * t)) - 0.5
    if long:
        zeta = _sig(-shift * _sig(_pc(m0, (m0 - m1) / h) * (2 - (t / s0) ** 2)))
    else:
        zeta = _sig(shift)
    return xe + 0.5 * t * h / zeta * bt, mt


def reference(model, x, ts, calls=None):
    """ts: the S + 1 positive levels; returns the states after each step (the last is D(x, t_0))."""
    def ev(x, t):
        if calls is not None:
            calls.append(t)
        return model(x, t)

    S_, t0, tT = len(ts) - 1, ts[-1], ts[0]
    ms = [ev(x, ts[0])]
    x = (ts[1] / ts[0]) * x + (1 - ts[1] / ts[0]) * ms[-1]          # warm-up DDIM
    ms.append(ev(x, ts[1]))
    traj = [x]
    for j in range(2, S_ + 1):
        t, s0, s1 = ts[j], ts[j - 1], ts[j - 2]
        if j == S_:                                                   # lower_order_final
            q = t / s0
            rho = 1 - 0.5 * np.sqrt(q) if q < 0.5 else 1 - 0.5 * np.sqrt(q - 0.5)
            xe = q * x + (1 - q) * ms[-1]
            x = (1 - np.sqrt(t * s0)) * xe + 0.5 * (1 - q) * (ms[-1] - rho * ms[-2])
        else:
            x, mt = ref_second(x, ms[-1], ms[-2], s1, s0, t, t0, tT, ev, S_ > 20)
            ms.append(mt)
        traj.append(x)
    traj.append(ev(x, ts[-1]))                                        # denoise_to_zero
    return traj


def np_gauss_D(x, t):
    return (S ** 2 * x + t ** 2 * MU) / (S ** 2 + t ** 2)


@pytest.fixture(scope="module")
def gauss():
    D0 = analytic.gaussian_denoiser(MU, S)
    calls = []

    def D(x, s, c=None):  # records the level of every evaluation that actually runs
        jax.debug.callback(lambda v: calls.append(float(v)), s)
        return D0(x, s, c)

    z = jax.random.normal(jax.random.PRNGKey(0), SHAPE)
    x_T = MU + np.sqrt(S ** 2 + 80.0 ** 2) * z                # exact marginal at sigma_max = 80
    out = {"x_T": x_T, "exact": analytic.gaussian_ode_solution(x_T, 80.0, 0.0, MU, S)}
    for n in NFES:
        sig = grid(n)
        calls.clear()
        out["evo", n] = run(E.EVODIFF, D, x_T, sig, return_trajectory=True,
                            sigma_min=float(sig[-2]))
        jax.block_until_ready(out["evo", n].x)
        out["calls", n] = list(calls)
        out["dpm", n] = run(DPMPP_2M, D0, x_T, sig)
    return out


def rms(a, b):
    return float(jnp.sqrt(jnp.mean((a - b) ** 2)))


# ---------------------------------------------------------------------------------------------
def test_point_mass_exact_on_logsnr_grid():
    """2-D data (B, d): d channels, per-coordinate projections; a zero coordinate makes every
    proj there 0/0, which the eps guard turns into 0."""
    n = 8
    mu = jnp.array([0.3, -0.2, 0.0])
    D = lambda x, s, c=None: jnp.broadcast_to(mu, x.shape)
    sig = grid(n)
    x_T = 80.0 * jax.random.normal(jax.random.PRNGKey(1), (16, 3))
    res = run(E.EVODIFF, D, x_T, sig, return_trajectory=True)
    traj = np.asarray(res.trajectory)
    assert np.all(np.isfinite(traj))
    sg, xT, m = np.asarray(sig, np.float64), np.asarray(x_T, np.float64), np.asarray(mu)
    expect = lambda k: m + (xT - m) * sg[k + 1] / sg[0]
    for k in range(n - 2):                # warm-up DDIM + every 2nd-order step is exact
        np.testing.assert_allclose(traj[k], expect(k), rtol=1e-5, atol=1e-5, err_msg=f"step {k}")
    # The lower_order_final step is the demo's a x_euler + sigma_t h/2 (m_s - rho m_prev), a != 1,
    # rho != 1: not exact even here (denoise_to_zero hides it).
    s_, t = sg[n - 2], sg[n - 1]
    q = t / s_
    rho = 1 - 0.5 * np.sqrt(q) if q < 0.5 else 1 - 0.5 * np.sqrt(q - 0.5)
    last = (1 - np.sqrt(t * s_)) * expect(n - 2) + 0.5 * (1 - q) * (1 - rho) * m
    np.testing.assert_allclose(traj[n - 2], last, rtol=1e-5, atol=1e-5)
    assert not np.allclose(traj[n - 2], expect(n - 2), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(res.x), np.broadcast_to(np.asarray(mu), x_T.shape))
    assert int(res.nfe) == n


def test_probe_with_unit_gammas_is_dpmpp_2m():
    rng = np.random.default_rng(2)
    x, m0, m1 = (jnp.asarray(a, jnp.float32) for a in rng.standard_normal((3, 5, 3, 3, 2)))
    x = 3.0 * x
    probe = jax.jit(E.probe)
    dpm = jax.jit(dpmpp_update, static_argnums=6)
    for s_prev, s, t in [(80.0, 24.6, 7.59), (2.5, 1.1, 0.3), (0.05, 0.02, 0.002)]:
        s_prev, s, t = (jnp.float32(v) for v in (s_prev, s, t))
        xp, _ = probe(x, s, t, m0, m1, s_prev, jnp.float32(1.0), E.log_ratio(s, t, s_prev))
        ref = dpm(x, s, t, m0, m1[None], s_prev[None], 2)
        np.testing.assert_allclose(np.asarray(xp), np.asarray(ref), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n", NFES)
def test_matches_official_loop(gauss, n):
    """Scan + lax.switch bookkeeping == the demo's loop (float64), every intermediate state."""
    sig = np.asarray(grid(n), np.float64)
    traj = reference(np_gauss_D, np.asarray(gauss["x_T"], np.float64), sig[:-1])
    got = np.asarray(gauss["evo", n].trajectory)
    assert len(traj) == got.shape[0] == n
    for k in range(n):
        np.testing.assert_allclose(got[k], traj[k], rtol=1e-4, atol=1e-4 * (1 + sig[k + 1]))


def test_long_schedule_branch():
    """The demo's 'steps > 20' zeta (S = NFE - 1 > 20) as a single step vs the reference (the
    other branch is covered by test_matches_official_loop)."""
    assert not E.uses_long_schedule(21) and E.uses_long_schedule(22)
    rng = np.random.default_rng(4)
    x = 1.3 * rng.standard_normal((4, 3, 3, 3))
    m0 = np_gauss_D(x, 1.1)
    m1 = m0 + 0.1 * rng.standard_normal(x.shape)
    want, _ = ref_second(x, m0, m1, 1.9, 1.1, 0.6, 0.002, 80.0, np_gauss_D, True)
    f = jax.jit(lambda x, m0, m1: E.second_order_step(
        x, 1.1, 0.6, m0, m1, 1.9, analytic.gaussian_denoiser(MU, S), 80.0, 0.002, True)[0])
    got = f(*(jnp.asarray(a, jnp.float32) for a in (x, m0, m1)))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_nfe_matches_official_accounting(gauss):
    """Official: 1 (x_T) + 1 (after warm-up DDIM) + (S - 2) probes + 0 (lower_order_final step)
    + 1 (denoise_to_zero) with S = NFE - 1 solver steps; each positive level is evaluated once,
    at the same levels as the demo's own loop."""
    for n in NFES:
        S_ = n - 1
        assert int(gauss["evo", n].nfe) == 1 + 1 + (S_ - 2) + 0 + 1 == n
        sig = np.asarray(grid(n), np.float64)
        assert len(gauss["calls", n]) == n
        np.testing.assert_allclose(gauss["calls", n], sig[:-1], rtol=1e-6)
        ref_calls = []
        reference(np_gauss_D, np.zeros((1, 3)), sig[:-1], ref_calls)
        np.testing.assert_allclose(gauss["calls", n], ref_calls, rtol=1e-6)


def test_short_grids():
    """N = 1, 2 (below the demo's steps >= order): D(x_T), and DDIM + denoise; N = 3 (S = 2: warm-up
    then the lower_order_final step) matches the demo's loop. NFE = N throughout."""
    Dn = lambda x, t: 0.5 * x / (1.0 + t ** 2)
    x = np.linspace(-1.0, 2.0, 6).reshape(2, 3)
    for n in (1, 2, 3):
        sig = np.asarray(grid(n), np.float64)
        res = run(E.EVODIFF, lambda x, s, c=None: Dn(x, s), jnp.asarray(x, jnp.float32), grid(n))
        assert int(res.nfe) == n
        if n == 1:
            want = Dn(x, sig[0])
        elif n == 2:
            want = Dn((sig[1] / sig[0]) * x + (1 - sig[1] / sig[0]) * Dn(x, sig[0]), sig[1])
        else:
            want = reference(Dn, x, sig[:-1])[-1]
        np.testing.assert_allclose(np.asarray(res.x), want, rtol=1e-5, atol=1e-6)


def test_gaussian_error_vs_exact_ode(gauss):
    err = {n: rms(gauss["evo", n].x, gauss["exact"]) for n in NFES}
    dpm = {n: rms(gauss["dpm", n].x, gauss["exact"]) for n in NFES}
    print("\nRMS error vs exact ODE, EVODiff", err, "DPM-Solver++(2M)", dpm)
    assert all(np.isfinite(v) for v in err.values())
    assert err[20] < err[10] and err[20] < err[5]
    assert err[20] < 2.0 * dpm[20]          # the demo's setting (logSNR grid), 20 NFE


def test_gaussian_moments_20_steps(gauss):
    """20 NFE, 4000 draws per channel from the exact marginal at sigma_max."""
    x = np.asarray(gauss["evo", 20].x, np.float64).reshape(-1, 3)
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(x.mean(0), MU, atol=0.03)
    np.testing.assert_allclose(x.var(0), S ** 2, rtol=0.1)
