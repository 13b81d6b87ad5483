"""Progressive distillation (distill/progressive.py, Salimans & Ho 2022): the two-step DDIM target,
the nested grid, and a chain of halvings from an exact Gaussian teacher to 1/2/4-step students
whose DDIM maps match the exact probability-flow map."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffjax.core import processes, samplers, timesteps
from diffjax.distill import progressive, targets
from tests.distill import gaussian as G

EDM = processes.get("edm")
LO, HI, RHO = 0.002, 80.0, 7.0


def test_nested_grid_halves_into_every_other_level():
    for n in (1, 2, 4, 32):
        big, small = timesteps.sigmas(EDM, 2 * n, "nested"), timesteps.sigmas(EDM, n, "nested")
        np.testing.assert_array_equal(np.asarray(big)[::2], np.asarray(small))
        assert float(small[0]) == pytest.approx(HI) and float(small[-1]) == 0.0
        assert np.all(np.diff(np.asarray(small)) < 0)
    np.testing.assert_allclose(np.asarray(timesteps.sigmas(EDM, 1, "nested")), [HI, 0.0],
                               rtol=1e-5)


@pytest.mark.parametrize("n", [1, 4, 64])
def test_one_student_step_lands_on_the_teachers_two_steps(n):
    k = jax.random.split(jax.random.key(0), 4)
    level = progressive.nested_grid(EDM)
    i = jnp.arange(16) % n
    s_t, s_m, s_s = (level(u) for u in ((i + 1) / n, (i + 0.5) / n, i / n))
    x_t = jax.random.normal(k[0], (16, 4, 4, 1)) * s_t[:, None, None, None]
    x1, x2 = jax.random.normal(k[1], x_t.shape), jax.random.normal(k[2], x_t.shape)  # any teacher
    x_m = targets.ddim_step(x_t, x1, s_t, s_m)
    x_s = targets.ddim_step(x_m, x2, s_m, s_s)
    tgt = targets.two_step_target(x_t, x_s, s_t, s_s, x2)
    scale = np.abs(np.asarray(x_s)).max() + 1.0
    np.testing.assert_allclose(np.asarray(targets.ddim_step(x_t, tgt, s_t, s_s)) / scale,
                               np.asarray(x_s) / scale, atol=1e-5)
    last = np.asarray(i == 0)
    np.testing.assert_array_equal(np.asarray(tgt)[last], np.asarray(x2)[last])
    # a teacher that is the posterior mean of one data point x* always predicts x*: the target is x*
    star = jax.random.normal(k[3], (1, 4, 4, 1))
    xm = targets.ddim_step(x_t, jnp.broadcast_to(star, x_t.shape), s_t, s_m)
    xs = targets.ddim_step(xm, jnp.broadcast_to(star, x_t.shape), s_m, s_s)
    np.testing.assert_allclose(np.asarray(targets.two_step_target(x_t, xs, s_t, s_s, star + 0 * x_t)),
                               np.broadcast_to(np.asarray(star), x_t.shape), atol=2e-4)


def _index(n):
    """sigma -> k: the level g((k + 1) / n) of the n-step nested grid that sigma is."""
    lo, hi = LO ** (1 / RHO), HI ** (1 / RHO)
    return lambda s: jnp.clip(jnp.round((s ** (1 / RHO) - lo) / (hi - lo) * n).astype(jnp.int32)
                              - 1, 0, n - 1)


def _train(teacher_D, n, params, steps=500, lr=3e-2):
    level = progressive.nested_grid(EDM)
    idx = _index(n)
    tx = optax.adam(lr)

    def loss(p, key):
        k_x, k_l = jax.random.split(key)
        x0 = G.MU + G.S * jax.random.normal(k_x, (1024, 1))
        per = progressive.progressive_loss(
            lambda x, s: G.affine_student(p, idx, x, s), teacher_D, x0, k_l, n, level,
            lambda s: targets.loss_weight(s, EDM))
        return jnp.mean(per)

    def body(carry, key):
        p, opt = carry
        g = jax.grad(loss)(p, key)
        u, opt = tx.update(g, opt, p)
        return (optax.apply_updates(p, u), opt), None

    (params, _), _ = jax.jit(lambda p: jax.lax.scan(
        body, (p, tx.init(p)), jax.random.split(jax.random.key(n), steps)))(params)
    return params


def _ddim_map(D, n):
    """(slope, intercept) of the n-step DDIM map from x_T at sigma_max to x0 on the nested grid."""
    sig = timesteps.sigmas(EDM, n, "nested")
    x = jnp.asarray([[-HI], [0.0], [HI]])
    out = np.asarray(samplers.sample("ddim", lambda a, s, c: D(a, s), sig, x_init=x).x)[:, 0]
    slope = (out[2] - out[0]) / (2 * HI)
    return slope, out[1]


def test_halvings_from_an_exact_teacher_give_students_on_the_exact_flow_map():
    """64-step DDIM teacher (the exact denoiser of N(mu, s^2)) -> 32 -> ... -> 1 step students,
    each the next one's teacher and its starting point. The exact map x_T -> x0 from sigma_max is
    mu + (x_T - mu) s / sqrt(s^2 + sigma_max^2); 64 DDIM steps of the exact denoiser are within 5%
    of it (first order: 128 steps 2.2%), few steps are far from it, the distilled students
    reproduce the teacher's map (to 1.5%) and so the exact one."""
    exact = G.flow_slope(HI, 0.0)
    teacher_slope, teacher_icpt = _ddim_map(G.denoiser, 64)
    assert abs(teacher_slope / exact - 1) < 0.05            # the teacher: close to the exact map
    assert abs(_ddim_map(G.denoiser, 1)[0] / exact - 1) > 0.9   # 1 plain DDIM step: far off
    assert abs(_ddim_map(G.denoiser, 4)[0] / exact - 1) > 0.1
    teacher_D, n = G.denoiser, 32
    params = {"p": jnp.zeros((32,)), "q": jnp.zeros((32,))}
    students = {}
    while n >= 1:
        params = _train(teacher_D, n, params)
        students[n] = params
        teacher_D = (lambda p, m: lambda x, s: G.affine_student(p, _index(m), x, s))(params, n)
        if n > 1:   # the next student starts from this one: its level k is this one's 2k + 1
            params = jax.tree.map(lambda v: v[1::2], params)
        n //= 2
    for n in (4, 2, 1):
        D = (lambda p, m: lambda x, s: G.affine_student(p, _index(m), x, s))(students[n], n)
        slope, intercept = _ddim_map(D, n)
        assert abs(slope / teacher_slope - 1) < 0.015, (n, slope, teacher_slope)
        assert abs(slope / exact - 1) < 0.065, (n, slope, exact)
        assert abs(intercept - teacher_icpt) < 0.01 and abs(intercept - G.MU) < 0.02, (n, intercept)
