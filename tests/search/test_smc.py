"""FK steering (search/smc.py) on Gaussian data with a quadratic reward, whose tilted target
p(x0) exp(lambda r(x0)) is Gaussian in closed form; NFE accounting; bad inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.core import analytic, processes, timesteps
from diffjax.search import smc
from diffjax.search import verifiers as V

D = analytic.gaussian_denoiser(0.0, 1.0)
A, LAM = 2.0, 1.0
REWARD = V.from_fn(lambda x: -0.5 * jnp.sum((x - A) ** 2, -1))
# tilted target of N(0, 1) by exp(-lam (x - a)^2 / 2): precision 1 + lam, mean lam a / (1 + lam)
MEAN, VAR = LAM * A / (1 + LAM), 1 / (1 + LAM)


def _draw(particles, steps=100, **kw):
    sig = timesteps.sigmas(processes.get("edm"), steps, "karras")
    return smc.fk_steering(jax.random.key(0), "ddim", D, sig, REWARD, shape=(1000, 1),
                           particles=particles, lam=LAM, eta=1.0, **kw)


def test_particles_move_the_samples_to_the_tilted_gaussian():
    one = np.asarray(_draw(1).x)[:, 0]
    assert abs(one.mean()) < 0.1                        # one particle: the sampler itself
    out = _draw(16)
    x = np.asarray(out.x)[:, 0]
    assert abs(x.mean() - MEAN) < 0.08 and abs(x.var() - VAR) < 0.08
    assert out.particles.shape == (1000, 16, 1) and out.ess.shape == (100, 1000)
    np.testing.assert_allclose(jax.nn.logsumexp(out.log_weights, axis=1), 0.0, atol=1e-5)
    greedy = np.asarray(_draw(16, pick="max").x)[:, 0]
    assert abs(greedy.mean() - A) < abs(x.mean() - A)   # max picks the particle nearest a


def test_nfe_counts_every_particle_and_bad_settings_are_named():
    out = _draw(4, steps=10)
    assert out.nfe == 1000 * 4 * 10
    sig = timesteps.sigmas(processes.get("edm"), 4, "karras")
    with pytest.raises(ValueError, match="needs a stochastic sampler"):
        smc.fk_steering(jax.random.key(0), "heun", D, sig, REWARD, shape=(2, 1), particles=2)
    with pytest.raises(ValueError, match="potential must be one of difference, max, immediate"):
        smc.fk_steering(jax.random.key(0), "ddpm", D, sig, REWARD, shape=(2, 1), particles=2,
                        potential="sum")
