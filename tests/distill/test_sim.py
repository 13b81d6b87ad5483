"""Score implicit matching (distill/sim.py, Luo et al. 2024) on 1-D Gaussians: teacher N(mu, s^2)
with its exact denoiser, generator x0 = a z + b, the fake-score network exact for the generator's
current law. The surrogate's gradient equals the gradient of the score divergence computed by
quadrature (the score-gradient theorem, for pseudo-Huber and L2), points toward the teacher, is zero
at the teacher, and gradient descent on it converges to the teacher's law."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.distill import sim
from tests.distill import gaussian as G

N = 400_000


def _fake(a, b):
    """The exact denoiser of the generator's law N(b, a^2), its parameters frozen."""
    a, b = jax.lax.stop_gradient(a), jax.lax.stop_gradient(b)
    return lambda x, s: G.denoiser(x, s, mu=b, s=a)


def surrogate_grad(theta, sigma, kind, c, key):
    def loss(th):
        a, b = th
        k_z, k_n = jax.random.split(key)
        x0 = a * jax.random.normal(k_z, (N, 1)) + b
        s = jnp.full((N,), sigma)
        x_t = x0 + sigma * jax.random.normal(k_n, (N, 1))
        return jnp.mean(sim.generator_surrogate(x0, x_t, s, G.denoiser, _fake(a, b), kind, c,
                                                "one"))
    return np.asarray(jax.grad(loss)(jnp.asarray(theta)))


def divergence_grad(theta, sigma, kind, c):
    """grad over (a, b) of E_{x ~ sg(q)} d(s_p(x) - s_q(x; a, b)) at noise level sigma, by
    quadrature: q = N(b, a^2 + sigma^2), p = N(mu, s^2 + sigma^2)."""
    a0, b0 = theta
    v0 = a0 ** 2 + sigma ** 2
    x = jnp.linspace(b0 - 10 * v0 ** 0.5, b0 + 10 * v0 ** 0.5, 200_001)
    pdf = jnp.exp(-0.5 * (x - b0) ** 2 / v0) / jnp.sqrt(2 * jnp.pi * v0)
    d = (lambda y: jnp.sqrt(y ** 2 + c ** 2) - c) if kind == "pseudo_huber" else jnp.square

    def div(th):
        a, b = th
        s_p = -(x - G.MU) / (G.S ** 2 + sigma ** 2)
        s_q = -(x - b) / (a ** 2 + sigma ** 2)
        return jnp.sum(pdf * d(s_p - s_q)) * (x[1] - x[0])
    return np.asarray(jax.grad(div)(jnp.asarray(theta, jnp.float32)))


@pytest.mark.parametrize("kind,c", [("pseudo_huber", 0.5), ("l2", 0.0)])
@pytest.mark.parametrize("theta", [(0.25, -0.2), (0.9, 0.6)])
def test_surrogate_gradient_is_the_score_divergence_gradient(kind, c, theta):
    sigma = 0.7
    g = surrogate_grad(theta, sigma, kind, c, jax.random.key(0))
    ref = divergence_grad(theta, sigma, kind, c)
    assert np.dot(g, ref) / (np.linalg.norm(g) * np.linalg.norm(ref)) > 0.995, (g, ref)
    assert abs(np.linalg.norm(g) / np.linalg.norm(ref) - 1) < 0.05, (g, ref)
    # the descent direction points toward the teacher (a -> s, b -> mu)
    assert np.sign(-g[0]) == np.sign(G.S - theta[0]) and np.sign(-g[1]) == np.sign(G.MU - theta[1])


def test_the_teacher_is_the_fixed_point_and_descent_reaches_it():
    theta = (G.S, G.MU)
    g_fixed = surrogate_grad(theta, 0.7, "pseudo_huber", 1e-3, jax.random.key(1))
    g_off = surrogate_grad((0.3, 0.0), 0.7, "pseudo_huber", 1e-3, jax.random.key(1))
    assert np.linalg.norm(g_fixed) < 0.03 * np.linalg.norm(g_off), (g_fixed, g_off)

    draw = sim.gen_sigma_sampler("lognormal", -1.2, 1.2, 0.8)

    def step(th, key):
        a, b = th
        k_z, k_s, k_n = jax.random.split(key, 3)

        def loss(t):
            x0 = t[0] * jax.random.normal(k_z, (4096, 1)) + t[1]
            s = draw(k_s, 4096)
            x_t = x0 + s[:, None] * jax.random.normal(k_n, (4096, 1))
            return jnp.mean(sim.generator_surrogate(x0, x_t, s, G.denoiser, _fake(t[0], t[1]),
                                                    "pseudo_huber", 1e-3, "sigma2"))
        return th - 0.02 * jax.grad(loss)(th), None

    out, _ = jax.jit(lambda t: jax.lax.scan(step, t, jax.random.split(jax.random.key(2), 1500)))(
        jnp.asarray([1.0, -0.5]))
    np.testing.assert_allclose(np.asarray(out), [G.S, G.MU], atol=0.03)


def test_pseudo_huber_derivative_matches_autodiff():
    y = jax.random.normal(jax.random.key(3), (3, 2, 2))
    d = lambda v: jnp.sqrt(jnp.sum(v ** 2) + 0.3 ** 2) - 0.3
    want = jax.vmap(jax.grad(d))(y)
    np.testing.assert_allclose(np.asarray(sim.d_prime(y, "pseudo_huber", 0.3)), np.asarray(want),
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(sim.d_prime(y, "l2", 0.0)), 2 * np.asarray(y))
