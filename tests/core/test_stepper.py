"""The public stepper (samplers.stepper): manual stepping reproduces samplers.sample, branch copying,
the x0 prediction in the state, float64 end to end, keyless deterministic sampling, process priors."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.core import analytic, pfgmpp, processes as P, samplers as S, timesteps as T

MU = jnp.array([1.0, -2.0])
SD = jnp.array([0.5, 2.0])
D_GAUSS = analytic.gaussian_denoiser(MU, SD)
B = 6
SHAPE = (B, 2)
KEY = jax.random.PRNGKey(11)
# knobs that make the stochastic samplers draw noise
NOISY = {"ddim": {"eta": 0.7}, "euler": {"s_churn": 40.0}, "heun": {"s_churn": 40.0},
         "pfgmpp": {"s_churn": 40.0}}


def _process(name):
    return P.get("pfgmpp", D=32.0) if name == "pfgmpp" else None


def _grid(n=6):
    return T.karras(n, 0.01, 20.0)


def _noise(st, keys, i, x):
    return S.step_noise(keys, i, x.shape[1:], x.dtype) if st.sampler.needs_noise else None


@jax.jit
def _jit_step(st, s, i, keys):
    """One step with run's noise, jitted (the stepper is a pytree: its arrays are arguments)."""
    return st.step(s, i, _noise(st, keys, i, s.x))


def _manual(st, x_T, keys, step=_jit_step):
    """Drive the stepper in a Python loop with run's noise."""
    s = st.init(x_T)
    for i in range(st.num_steps):
        s = step(st, s, i, keys)
    return s


def test_registry_is_covered():
    assert set(S.SAMPLERS) == {"ddpm", "ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc",
                               "unipc_3", "evodiff", "flow_euler", "flow_midpoint", "pfgmpp",
                               "consistency", "ddim_renoise"}


@pytest.mark.parametrize("name", sorted(S.SAMPLERS))
def test_manual_stepping_reproduces_sample(name):
    """A jitted step in a Python loop, and a fori_loop with a traced i, give sample(...)'s x and nfe."""
    sig, kn, proc = _grid(), NOISY.get(name, {}), _process(name)
    keys = S.example_keys(KEY, B)
    ref = S.sample(name, D_GAUSS, sig, keys=keys, shape=SHAPE, process=proc, **kn)
    x_T = (proc or P.Process()).prior(keys, SHAPE[1:], sig[0])
    st = S.stepper(name, D_GAUSS, sig, **kn)
    assert st.num_steps == 6
    assert st.needs_noise == (name in ("ddpm", "consistency", "ddim_renoise") or name in NOISY)
    s = _manual(st, x_T, keys)
    np.testing.assert_array_equal(np.asarray(s.x), np.asarray(ref.x))
    assert int(s.nfe) == int(ref.nfe) and int(s.i) == 6
    # noise drawn outside, passed as an argument: equal up to XLA fusion of the normal draw
    eager = _manual(st, x_T, keys, lambda st, s, i, k: st.step(s, i, _noise(st, k, i, s.x)))
    np.testing.assert_allclose(np.asarray(eager.x), np.asarray(ref.x), rtol=1e-6, atol=1e-6)

    def body(i, s):
        noise = S.step_noise(keys, i, SHAPE[1:]) if st.sampler.needs_noise else None
        return st.step(s, i, noise)

    s2 = jax.jit(lambda x: jax.lax.fori_loop(0, st.num_steps, body, st.init(x)))(x_T)
    np.testing.assert_array_equal(np.asarray(s2.x), np.asarray(ref.x))


@pytest.mark.parametrize("name", ["heun", "ddpm", "dpmpp_3m", "unipc"])
def test_branches_from_a_copied_state(name):
    """From a mid state: different noise gives different branches (stochastic samplers), the same
    noise on a copy reproduces the original continuation exactly, the state is not mutated."""
    sig, kn = _grid(8), NOISY.get(name, {})
    st = S.stepper(name, D_GAUSS, sig, **kn)
    step = jax.jit(st.step)
    keys = S.example_keys(KEY, B)
    s = st.init(S.prior(keys, SHAPE[1:], sig[0]))
    for i in range(3):
        s = step(s, i, S.step_noise(keys, i, SHAPE[1:]))
    snapshot = jax.tree.map(np.array, s)
    copy = jax.tree.map(jnp.array, s)

    def cont(state, k):
        ks = S.example_keys(k, B)
        for i in range(3, st.num_steps):
            state = step(state, i, S.step_noise(ks, i, SHAPE[1:]))
        return state

    a, b = cont(s, jax.random.PRNGKey(1)), cont(s, jax.random.PRNGKey(2))
    a2 = cont(copy, jax.random.PRNGKey(1))
    jax.tree.map(np.testing.assert_array_equal, a, a2)
    if st.needs_noise:
        assert float(jnp.max(jnp.abs(a.x - b.x))) > 1e-3
    else:
        np.testing.assert_array_equal(np.asarray(a.x), np.asarray(b.x))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, s), snapshot)


def test_docstring_best_of_two():
    """The usage example of base.py's docstring, verbatim: keep the branch whose x0 is closest to 0."""
    sigmas, D, key = _grid(5), D_GAUSS, jax.random.PRNGKey(3)
    x_T = 20.0 * jax.random.normal(jax.random.PRNGKey(4), (1, 2))
    score = lambda x0: -float(jnp.sum(x0 ** 2))
    picks = []
    st = S.stepper("heun", D, sigmas, s_churn=40.0)
    s, z = st.init(x_T), lambda k: jax.random.normal(k, x_T.shape)
    for i in range(st.num_steps):
        ka, kb = jax.random.split(jax.random.fold_in(key, i))
        a, b = st.step(s, i, z(ka)), st.step(s, i, z(kb))      # two branches from one state
        s = a if score(a.x0) >= score(b.x0) else b              # keep the better x0 prediction
        picks.append(max(score(a.x0), score(b.x0)))
    assert int(s.i) == 5 and int(s.nfe) == 9 and s.x.shape == (1, 2)
    assert picks[-1] == score(s.x0)


@pytest.mark.parametrize("name", ["euler", "ddim", "dpmpp_2m", "unipc"])
def test_x0_is_the_denoiser_prediction(name):
    """After step i, state.x0 == D(x_i, sigma_i) for single-evaluation samplers without churn."""
    sig = _grid(5)
    st = S.stepper(name, D_GAUSS, sig)
    s = st.init(20.0 * jax.random.normal(KEY, SHAPE))
    np.testing.assert_array_equal(np.asarray(s.x0), np.zeros(SHAPE))
    for i in range(st.num_steps):
        want = D_GAUSS(s.x, sig[i])
        s = st.step(s, i)
        np.testing.assert_array_equal(np.asarray(s.x0), np.asarray(want))


@pytest.mark.parametrize("name", sorted(S.SAMPLERS))
def test_every_sampler_sets_x0(name):
    """x0 changes at every step, and the step into sigma = 0 returns x = x0_hat (except for the
    midpoint method, whose x0 is the evaluation at the midpoint)."""
    sig, kn = _grid(6), NOISY.get(name, {})
    st = S.stepper(name, D_GAUSS, sig, **kn)
    keys = S.example_keys(KEY, B)
    s = st.init(S.prior(keys, SHAPE[1:], sig[0]))
    for i in range(st.num_steps):
        prev = s.x0
        s = st.step(s, i, S.step_noise(keys, i, SHAPE[1:]))
        if name != "evodiff" or i != st.num_steps - 2:   # evodiff's last solver step: no NFE
            assert not np.array_equal(np.asarray(s.x0), np.asarray(prev)), i
    if name != "flow_midpoint":
        np.testing.assert_allclose(np.asarray(s.x0), np.asarray(s.x), rtol=1e-5, atol=1e-5)
    assert bool(jnp.all(jnp.isfinite(s.x0)))


def test_heun_x0_is_the_corrector_evaluation():
    sig = _grid(4)
    st = S.stepper("heun", D_GAUSS, sig)
    s0 = st.init(20.0 * jax.random.normal(KEY, SHAPE))
    s1 = st.step(s0, 0)
    x_e = s0.x + (sig[1] - sig[0]) * (s0.x - D_GAUSS(s0.x, sig[0])) / sig[0]
    np.testing.assert_allclose(np.asarray(s1.x0), np.asarray(D_GAUSS(x_e, sig[1])), rtol=1e-6)


# --- float64 -----------------------------------------------------------------------------------
POINT = jnp.array([0.3, -1.7])


def _point_mass(x, s, c=None):
    return jnp.broadcast_to(POINT.astype(x.dtype), x.shape)


@pytest.mark.parametrize("name", ["ddim", "heun", "dpmpp_2m", "dpmpp_3m", "unipc"])
def test_float64_end_to_end(name):
    """With x64 on, float64 x runs in float64 (grid, knobs, history, output) and the exact solution
    of the point-mass PF-ODE (x0 = mu for every solver) is hit to float64 rounding, far below
    float32's; float32 x still runs in float32."""
    with jax.enable_x64(True):
        sig = T.karras(12, 0.01, 50.0)[:-1]               # end at sigma_min: x is not just x0_hat
        x32 = 50.0 * jax.random.normal(KEY, SHAPE, jnp.float32)
        x64 = x32.astype(jnp.float64)
        s64 = sig.astype(jnp.float64)
        exact = POINT + (x64 - POINT) * (s64[-1] / s64[0])  # the PF-ODE map for a point mass
        st = S.stepper(name, _point_mass, sig, dtype=jnp.float64)
        assert st.sigmas.dtype == jnp.float64
        assert all(v.dtype == jnp.float64 for k, v in st.knobs.items() if k not in ("num_steps",
                                                                                   "solver_steps"))
        s = jax.jit(st.step)(st.init(x64), 0, None)
        assert s.x.dtype == s.x0.dtype == s.sigma_hist.dtype == jnp.float64
        out64 = S.run(S.get(name), _point_mass, x64, sig).x
        out32 = S.run(S.get(name), _point_mass, x32, sig).x
        assert out64.dtype == jnp.float64 and out32.dtype == jnp.float32
        err64 = float(jnp.max(jnp.abs(out64 - exact)))
        err32 = float(jnp.max(jnp.abs(out32.astype(jnp.float64) - exact)))
        assert err64 < 1e-12 and err64 < err32 / 100, (err64, err32)


@pytest.mark.parametrize("name", sorted(S.SAMPLERS))
def test_float64_every_sampler(name):
    """float64 through every sampler: from the prior (dtype=; prior and noise are float64 draws, so
    a different sample) and from a float64 x_init (deterministic: the float32 result, refined)."""
    kn, proc = NOISY.get(name, {}), _process(name)
    with jax.enable_x64(True):
        sig = _grid(6)
        keys = S.example_keys(KEY, B)
        out = S.sample(name, D_GAUSS, sig, key=KEY, shape=SHAPE, process=proc, dtype=jnp.float64,
                       return_trajectory=True, **kn)
        assert out.x.dtype == out.trajectory.dtype == jnp.float64
        assert bool(jnp.all(jnp.isfinite(out.x)))
        x_T = (proc or P.Process()).prior(keys, SHAPE[1:], sig[0], jnp.float64)
        assert x_T.dtype == jnp.float64
        st = S.stepper(name, D_GAUSS, sig, **kn)
        np.testing.assert_allclose(np.asarray(_manual(st, x_T, keys).x), np.asarray(out.x),
                                   rtol=1e-13, atol=1e-13)
        if not st.needs_noise:
            x32 = (proc or P.Process()).prior(keys, SHAPE[1:], sig[0])
            a = S.sample(name, D_GAUSS, sig, x_init=x32.astype(jnp.float64), **kn)
            b = S.sample(name, D_GAUSS, sig, x_init=x32, **kn)
            assert a.x.dtype == jnp.float64 and b.x.dtype == jnp.float32
            np.testing.assert_allclose(np.asarray(a.x), np.asarray(b.x), rtol=1e-5, atol=1e-5)


def test_float64_gaussian_ode_more_accurate():
    """Gaussian data, UniPC-3 (order 4 with its corrector, no lowering) on 400 steps ending at
    sigma_min: float64 is closer to the exact ODE map than float32, whose rounding dominates the
    discretization error there (measured: 9e-8 vs 7e-6)."""
    with jax.enable_x64(True):
        grid = T.karras(400, 0.02, 20.0)[:-1].astype(jnp.float64)
        x_T = 20.0 * jax.random.normal(KEY, (64, 2), jnp.float64)
        exact = analytic.gaussian_ode_solution(x_T, grid[0], grid[-1], MU, SD)
        run = lambda x, g: S.run(S.get("unipc_3"), D_GAUSS, x, g, lower_order_final=0.0).x
        e64 = float(jnp.max(jnp.abs(run(x_T, grid) - exact)))
        e32 = float(jnp.max(jnp.abs(run(x_T.astype(jnp.float32), grid.astype(jnp.float32)) - exact)))
        assert e64 < e32 / 10, (e64, e32)


# --- keys --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kn", [("ddim", {}), ("dpmpp_2m", {}), ("heun", {}), ("unipc", {}),
                                     ("ddim", {"eta": 0.0})])
def test_deterministic_sampler_needs_no_key_with_x_init(name, kn):
    sig = _grid()
    x = 20.0 * jax.random.normal(KEY, SHAPE)
    out = S.sample(name, D_GAUSS, sig, x_init=x, **kn)
    keyed = S.sample(name, D_GAUSS, sig, x_init=x, key=KEY, **kn)
    np.testing.assert_allclose(np.asarray(out.x), np.asarray(keyed.x), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(S.run(S.get(name), D_GAUSS, x, sig, **kn).x),
                                  np.asarray(out.x))
    assert not S.stepper(name, D_GAUSS, sig, **kn).needs_noise


def test_missing_keys_raise_clear_errors():
    sig = _grid()
    x = 20.0 * jax.random.normal(KEY, SHAPE)
    with pytest.raises(ValueError, match="key=.*x_init"):
        S.sample("ddim", D_GAUSS, sig, shape=SHAPE)                   # the prior needs a key
    for name, kn in [("ddpm", {}), ("ddim", {"eta": 0.5}), ("heun", {"s_churn": 40.0})]:
        with pytest.raises(ValueError, match=f"'{name}' is stochastic"):
            S.sample(name, D_GAUSS, sig, x_init=x, **kn)
        with pytest.raises(ValueError, match="stochastic"):
            S.run(S.get(name), D_GAUSS, x, sig, **kn)
        st = S.stepper(name, D_GAUSS, sig, **kn)
        with pytest.raises(ValueError, match="pass noise"):
            st.step(st.init(x), 0, None)
    with pytest.raises(ValueError, match="stochastic"):                # traced eta: may be nonzero
        jax.jit(lambda e: S.sample("ddim", D_GAUSS, sig, x_init=x, eta=e).x)(0.0)
    with pytest.raises(ValueError, match="has no option"):
        S.stepper("heun", D_GAUSS, sig, eta=1.0)
    with pytest.raises(ValueError, match="shape"):
        st = S.stepper("ddim", lambda x, s, c: x[:, :1], sig)
        st.step(st.init(x), 0)


# --- priors ------------------------------------------------------------------------------------
def _old_prior(keys, shape, sigma_max, D=math.inf, dtype=jnp.float32):
    """samplers.prior before the prior moved onto the process (verbatim)."""
    if math.isinf(D):
        return jnp.asarray(sigma_max, dtype) * S.prior_noise(keys, shape, dtype)
    draw = lambda k: pfgmpp.perturbation(jax.random.fold_in(k, 0), (1,) + tuple(shape),
                                         sigma_max, D)[0]
    return jax.vmap(draw)(keys).astype(dtype)


@pytest.mark.parametrize("D", [4.0, 128.0, math.inf])
def test_process_prior_matches_old_prior(D):
    keys = S.example_keys(jax.random.PRNGKey(5), 16)
    want = _old_prior(keys, (3, 2), 20.0, D)
    proc = P.get("pfgmpp", D=D)
    np.testing.assert_array_equal(np.asarray(proc.prior(keys, (3, 2), 20.0)), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(S.prior(keys, (3, 2), 20.0, D)), np.asarray(want))
    if math.isinf(D):
        for p in (P.get("edm"), P.get("vp_discrete"), P.Process()):
            np.testing.assert_array_equal(np.asarray(p.prior(keys, (3, 2), 20.0)), np.asarray(want))


def test_sample_draws_x_T_from_the_process_prior():
    sig = _grid()
    proc = P.get("pfgmpp", D=16.0)
    keys = S.example_keys(KEY, B)
    got = S.sample("pfgmpp", D_GAUSS, sig, key=KEY, shape=SHAPE, process=proc, s_churn=40.0)
    want = S.run(S.HEUN, D_GAUSS, proc.prior(keys, SHAPE[1:], sig[0]), sig, keys=keys, s_churn=40.0)
    np.testing.assert_array_equal(np.asarray(got.x), np.asarray(want.x))
    heun = S.sample("heun", D_GAUSS, sig, key=KEY, shape=SHAPE, process=proc, s_churn=40.0)
    np.testing.assert_array_equal(np.asarray(heun.x), np.asarray(got.x))
    assert S.get("pfgmpp").requires_process is P.PFGMPP and S.get("heun").requires_process is None
    for bad in (None, P.get("edm")):
        with pytest.raises(ValueError, match=r"sampler 'pfgmpp'.*processes.get\('pfgmpp'"):
            S.sample("pfgmpp", D_GAUSS, sig, key=KEY, shape=SHAPE, process=bad)
    S.sample("pfgmpp", D_GAUSS, sig, x_init=jnp.ones(SHAPE))      # x_init given: no prior needed
