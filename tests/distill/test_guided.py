"""Guided distillation stage 1 (distill/guided.py, Meng et al. 2023): with the exact denoisers of a
two-class Gaussian mixture as the teacher, the loss drives a student that takes w as input to the
classifier-free combination at every w of the range; the guidance_input transform feeds w."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffjax.distill import guided, targets

MUS, S = jnp.asarray([-1.0, 1.5]), 0.4


def cond_D(x, sigma, c):
    """E[x0 | x, class c] for x0 ~ N(MUS[c], S^2) (1-D, x (B, 1))."""
    mu = MUS[c][:, None]
    return mu + S ** 2 / (S ** 2 + sigma[:, None] ** 2) * (x - mu)


def null_D(x, sigma):
    """E[x0 | x] for the equal mixture: posterior class weights times the class means."""
    v = S ** 2 + sigma[:, None] ** 2
    logp = -0.5 * (x - MUS[None]) ** 2 / v
    w = jax.nn.softmax(logp, axis=1)
    per = MUS[None] + S ** 2 / v * (x - MUS[None])
    return jnp.sum(w * per, axis=1, keepdims=True)


def test_stage_one_learns_the_classifier_free_combination_for_every_w():
    def student(theta, x, sigma, c, w):      # contains the answer at theta = (0, 1)
        u, k = null_D(x, sigma), cond_D(x, sigma, c)
        return u + (theta[0] + theta[1] * w[:, None]) * (k - u)

    def teacher(x, sigma, c, w):             # the paper's (1 + w') x_c - w' x_u, w' = w - 1
        wp = (w - 1.0)[:, None]
        return (1 + wp) * cond_D(x, sigma, c) - wp * null_D(x, sigma)

    tx = optax.adam(0.05)

    def step(carry, key):
        theta, opt = carry
        k_c, k_x, k_s, k_l = jax.random.split(key, 4)
        c = jax.random.randint(k_c, (512,), 0, 2)
        x0 = MUS[c][:, None] + S * jax.random.normal(k_x, (512, 1))
        sigma = jnp.exp(-1.2 + 1.2 * jax.random.normal(k_s, (512,)))
        loss = lambda th: jnp.mean(guided.guided_loss(
            lambda x, s, w: student(th, x, s, c, w), lambda x, s, w: teacher(x, s, c, w), x0,
            sigma, k_l, (1.0, 5.0), jnp.ones_like(sigma)))
        u, opt = tx.update(jax.grad(loss)(theta), opt, theta)
        return (optax.apply_updates(theta, u), opt), None

    theta0 = jnp.asarray([0.5, 0.2])
    (theta, _), _ = jax.jit(lambda t: jax.lax.scan(step, (t, tx.init(t)),
                                                   jax.random.split(jax.random.key(0), 600)))(theta0)
    np.testing.assert_allclose(np.asarray(theta), [0.0, 1.0], atol=0.02)
    x, sigma, c = jnp.linspace(-3, 3, 7)[:, None], jnp.full((7,), 0.8), jnp.arange(7) % 2
    for w in (1.0, 2.5, 5.0):
        wv = jnp.full((7,), w)
        ref = null_D(x, sigma) + w * (cond_D(x, sigma, c) - null_D(x, sigma))
        np.testing.assert_allclose(np.asarray(student(theta, x, sigma, c, wv)), np.asarray(ref),
                                   atol=0.03 * w)
        np.testing.assert_allclose(np.asarray(targets.cfg_combination(
            cond_D(x, sigma, c), null_D(x, sigma), wv)), np.asarray(ref), atol=1e-6)


def test_guidance_input_passes_the_scale_to_the_student():
    seen = {}

    def D(x, sigma, cond):
        seen.update(cond)
        return x * cond["guidance"][:, None]

    out = guided.guidance_input(D, None, 3.0)(jnp.ones((4, 1)), 1.0, {"label": jnp.zeros(4, int)})
    np.testing.assert_array_equal(np.asarray(out), 3.0)
    assert set(seen) == {"label", "guidance"} and seen["guidance"].shape == (4,)
