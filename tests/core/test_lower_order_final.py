"""Order schedule of the multistep solvers (``lower_order_final``) against independent references.

1. NumPy (float64) versions of the official sampling loops, written from the papers' update
   equations in the EDM frame (alpha = 1, lambda = -log sigma, exact Gaussian denoiser):
   DPM-Solver++ multistep (Lu et al. 2022, Sec. 3 / LuChengTHU/dpm-solver ``DPM_Solver.sample``:
   warm-up orders 1..order-1, then ``min(order, steps + 1 - step)`` if lower_order_final and
   steps < 10, optional ``denoise_to_zero``) and UniPC-bh2 (Zhao et al. 2023, Alg. 1-2 /
   wl-zhao/UniPC ``UniPC.sample``: the same schedule at every step count, the corrector reusing
   the next evaluation, none after the last step). A diffjax grid ending at 0 is the official loop
   over its positive levels followed by denoise_to_zero.
2. Numbers produced by diffusers 0.42.1 (EDMDPMSolverMultistepScheduler, UniPCMultistepScheduler
   with prediction_type="sample" and its sigmas set to the same Karras grid; torch 2.13 CPU,
   float32), pasted below so the test runs without torch. They pin the documented difference of
   conventions: diffusers counts the step into sigma = 0 as the final one, which is diffjax with
   ``lower_order_final=False`` for the second-order solvers.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.core import analytic, samplers as S, timesteps as T

MU = np.array([1.0, -2.0, 0.3])
SD = np.array([0.5, 2.0, 0.08])
D_J = analytic.gaussian_denoiser(jnp.asarray(MU, jnp.float32), jnp.asarray(SD, jnp.float32))


def D_np(x, s):
    return (SD ** 2 * x + s ** 2 * MU) / (SD ** 2 + s ** 2)


# --- NumPy references: the official loops ----------------------------------------------------
def official_schedule(steps, order, lower_order_final, below):
    """Order of the official loop's solver step 1..steps (warm-up, then lower_order_final)."""
    out = []
    for step in range(1, steps + 1):
        if step < order:
            out.append(step)
        elif lower_order_final and steps < below:
            out.append(min(order, steps + 1 - step))
        else:
            out.append(order)
    return out


def dpmpp_update_np(x, s, t, ms, ss, order):
    """DPM-Solver++ multistep update s -> t (Lu et al. 2022, Eqs. for 2M and 3M), EDM frame.

    ms/ss: data predictions and their levels, newest first (ms[0] at s)."""
    lam = lambda v: -np.log(v)
    h = lam(t) - lam(s)
    phi1 = np.expm1(-h)
    x_t = (t / s) * x - phi1 * ms[0]
    if order == 1:
        return x_t
    r0 = (lam(s) - lam(ss[1])) / h
    d1_0 = (ms[0] - ms[1]) / r0
    if order == 2:
        return x_t - 0.5 * phi1 * d1_0
    r1 = (lam(ss[1]) - lam(ss[2])) / h
    d1_1 = (ms[1] - ms[2]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi2 = phi1 / h + 1.0
    phi3 = phi2 / h - 0.5
    return x_t + phi2 * d1 - phi3 * d2


def official_dpmpp(x, levels, order, lower_order_final=True, denoise_to_zero=False, below=10):
    """``DPM_Solver.sample(method='multistep')`` over the positive ``levels`` (steps = len - 1)."""
    steps = len(levels) - 1
    sched = official_schedule(steps, order, lower_order_final, below)
    ms, ss = [D_np(x, levels[0])], [levels[0]]
    for step in range(1, steps + 1):
        t = levels[step]
        x = dpmpp_update_np(x, ss[0], t, ms, ss, sched[step - 1])
        if step < steps or denoise_to_zero:
            ms, ss = [D_np(x, t)] + ms[:order - 1], [t] + ss[:order - 1]
    return ms[0] if denoise_to_zero else x


def unipc_coeffs(rks, hh):
    """R (rows r_k^(i-1)) and b_i = g_i i! / B(h) with g_1 = expm1(hh)/hh - 1, g_(i+1) = g_i/hh - 1/(i+1)!."""
    p = len(rks)
    B_h = np.expm1(hh)
    g = np.expm1(hh) / hh - 1.0
    R, b, fact = [], [], 1.0
    for i in range(1, p + 1):
        R.append([r ** (i - 1) for r in rks])
        b.append(g * fact / B_h)
        fact *= i + 1
        g = g / hh - 1.0 / fact
    return np.array(R), np.array(b), B_h


def unipc_np(x, s0, t, ms, ss, order, model_t=None):
    """UniP-order (model_t None) or UniC-order from (x, ms[0] at s0) to t; bh2, data prediction."""
    h = np.log(s0 / t)
    hh = -h
    rks = [np.log(s0 / sk) / h for sk in ss[1:order]]
    Ds = [(mk - ms[0]) / rk for mk, rk in zip(ms[1:order], rks)]
    R, b, B_h = unipc_coeffs(rks + [1.0], hh)
    base = (t / s0) * x - np.expm1(hh) * ms[0]
    if model_t is None:
        if order == 1:
            return base
        rho = np.array([0.5]) if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
        return base - B_h * sum(r * d for r, d in zip(rho, Ds))
    rho = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
    res = sum((r * d for r, d in zip(rho[:-1], Ds)), np.zeros_like(x))
    return base - B_h * (res + rho[-1] * (model_t - ms[0]))


def official_unipc(x, levels, order, lower_order_final=True, denoise_to_zero=False):
    """``UniPC.sample(method='multistep')``: corrector after every step but the last."""
    steps = len(levels) - 1
    sched = official_schedule(steps, order, lower_order_final, below=np.inf)
    ms, ss = [D_np(x, levels[0])], [levels[0]]
    for step in range(1, steps + 1):
        t, p = levels[step], sched[step - 1]
        x_pred = unipc_np(x, ss[0], t, ms, ss, p)
        if step < steps or denoise_to_zero:
            m_t = D_np(x_pred, t)
            x = unipc_np(x, ss[0], t, ms, ss, p, model_t=m_t) if step < steps else x_pred
            ms, ss = [m_t] + ms[:order - 1], [t] + ss[:order - 1]
        else:
            x = x_pred
    return ms[0] if denoise_to_zero else x


X_T = 80.0 * np.asarray(jax.random.normal(jax.random.PRNGKey(11), (16, 3)), np.float64)


def _diffjax(name, grid, **kw):
    return np.asarray(S.run(S.get(name), D_J, jnp.asarray(X_T, jnp.float32) * (grid[0] / 80.0),
                            jnp.asarray(grid, jnp.float32), **kw).x, np.float64)


def _close(got, want):
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * scale)


SOLVERS = [("dpmpp_2m", 2), ("dpmpp_3m", 3), ("unipc", 2), ("unipc_3", 3)]


@pytest.mark.parametrize("name,order", SOLVERS)
@pytest.mark.parametrize("n", [4, 6, 8, 10, 11, 20])
@pytest.mark.parametrize("lof", [True, False])
def test_zero_ended_grid_is_official_loop_plus_denoise_to_zero(name, order, n, lof):
    """diffjax on karras(n) + [0] == the official loop over the n positive levels (n - 1 solver
    steps) followed by denoise_to_zero. With the old convention (lowering counted from the step
    into 0) this fails for every solver at n <= 10."""
    grid = np.asarray(T.karras(n, 0.002, 80.0), np.float64)
    ref = official_dpmpp if name.startswith("dpmpp") else official_unipc
    want = ref(X_T * (grid[0] / 80.0), grid[:-1], order, lower_order_final=lof, denoise_to_zero=True)
    _close(_diffjax(name, grid, lower_order_final=lof), want)


@pytest.mark.parametrize("name,order", SOLVERS)
@pytest.mark.parametrize("n", [5, 9, 15])
def test_grid_ending_at_sigma_min_is_official_loop(name, order, n):
    """A grid without the final 0 is the official loop without denoise_to_zero (every step is a
    solver step); UniPC lowers at every step count, DPM-Solver++ only below 10 steps."""
    grid = np.asarray(T.karras(n + 1, 0.01, 40.0)[:-1], np.float64)
    ref = official_dpmpp if name.startswith("dpmpp") else official_unipc
    _close(_diffjax(name, grid), ref(X_T * (grid[0] / 80.0), grid, order))


@pytest.mark.parametrize("name,order,below", [("dpmpp_2m", 2, 10), ("dpmpp_3m", 3, 10),
                                              ("unipc", 2, np.inf), ("unipc_3", 3, np.inf)])
def test_step_orders(name, order, below):
    """The order of every scan step on karras(N) + [0], N = 2..25: the official schedule over the
    S = N - 1 solver steps (where it is defined, S >= order), then 1 into sigma = 0; with S < order
    the k-th last solver step still has order <= k."""
    from diffjax.core.samplers.dpm_solver import step_order
    for n in range(2, 26):
        s = n - 1                            # solver steps on a grid ending at 0
        for lof in (True, False):
            got = [int(step_order(jnp.int32(i), jnp.int32(s), order,
                                  jnp.float32(1.0 if i < s else 0.0), lof, below)) for i in range(n)]
            assert got[-1] == 1
            if s >= order:
                assert got[:-1] == official_schedule(s, order, lof, below), (name, n, lof, got)
            elif lof:
                assert got[:-1] == [min(order, j + 1, s - j) for j in range(s)], (name, n, got)


def test_lower_order_final_is_traced():
    """Switching lower_order_final inside jit does not recompile, and it changes the result."""
    traces = []

    @jax.jit
    def f(lof):
        traces.append(1)
        return S.run(S.get("dpmpp_2m"), D_J, jnp.asarray(X_T, jnp.float32), T.karras(6, 0.002, 80.0),
                     lower_order_final=lof).x

    a, b = f(1.0), f(0.0)
    assert len(traces) == 1
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3


def test_unipc_lowers_at_every_step_count():
    """UniPC at 15 and 20 steps (diffjax used to stop lowering from 15 steps on): the default is the
    official loop, and it differs from the unlowered schedule by 10x the comparison tolerance."""
    for name, order in (("unipc", 2), ("unipc_3", 3)):
        for n in (15, 20):
            grid = np.asarray(T.karras(n, 0.002, 80.0), np.float64)
            on, off = _diffjax(name, grid), _diffjax(name, grid, lower_order_final=False)
            _close(on, official_unipc(X_T, grid[:-1], order, denoise_to_zero=True))
            assert np.abs(on - off).max() > 2e-4 * np.abs(on).max(), (name, n)


# --- diffusers' numbers (see the module docstring) -----------------------------------------------
DIFFUSERS_Z = np.array([[0.3, -1.1], [1.7, 0.2], [-0.6, -0.9], [0.05, 1.3]])
DIFFUSERS_OUT = {  # x at sigma = 0 from x_T = 80 z, N(mu=[1, -2], sd=[0.5, 2]) data, karras(N) + [0]
    ("dpmpp_2m", 6): [[1.145959, -4.524303], [1.856717, -1.471657], [0.689043, -4.054667],
                      [1.019038, 1.111351]],
    ("dpmpp_2m", 12): [[1.162661, -4.375615], [1.954748, -1.502778], [0.653462, -3.933638],
                       [1.021217, 0.92808]],
    ("dpmpp_2m", 20): [[1.150828, -4.218676], [1.885294, -1.535626], [0.678671, -3.805898],
                       [1.019673, 0.734647]],
    ("dpmpp_3m", 20): [[1.142253, -4.149307], [1.834963, -1.550146], [0.696939, -3.749435],
                       [1.018555, 0.649144]],
    ("unipc", 6): [[1.149142, -4.599385], [1.875396, -1.455943], [0.682264, -4.115778],
                   [1.019453, 1.203892]],
    ("unipc", 12): [[1.164772, -4.361324], [1.96714, -1.50577], [0.648964, -3.922008],
                    [1.021492, 0.910469]],
    ("unipc", 20): [[1.148668, -4.18905], [1.872617, -1.541826], [0.683272, -3.781785],
                    [1.019391, 0.698133]],
}


@pytest.mark.parametrize("name,n", sorted(DIFFUSERS_OUT))
def test_matches_diffusers_convention(name, n):
    """diffusers' schedulers (defaults: lower_order_final=True, final_sigmas_type='zero') equal
    diffjax with lower_order_final=False for 2M and UniPC-2, and its default from 15 steps on
    for 3M. (At 6 steps diffjax's default differs from diffusers on purpose; see dpm_solver.py.)"""
    D = analytic.gaussian_denoiser(jnp.array([1.0, -2.0]), jnp.array([0.5, 2.0]))
    sig = T.karras(n, 0.002, 80.0)
    x_T = jnp.asarray(80.0 * DIFFUSERS_Z, jnp.float32)
    lof = name == "dpmpp_3m"
    got = np.asarray(S.run(S.get(name), D, x_T, sig, lower_order_final=lof).x)
    np.testing.assert_allclose(got, np.array(DIFFUSERS_OUT[(name, n)]), rtol=0, atol=2e-5)
