"""The samplers of distilled students (core/samplers/distilled.py): Meng et al.'s stochastic N-step
sampler (ddim_renoise) against plain DDIM and the law of Gaussian data."""
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.core import processes, samplers, timesteps
from tests.distill import gaussian as G

EDM = processes.get("edm")
D = lambda x, s, c=None: G.denoiser(x, s)


def test_one_step_is_ddim_and_the_last_step_is_deterministic():
    keys = samplers.example_keys(jax.random.key(0), 64)
    sig = timesteps.sigmas(EDM, 1, "nested")
    a = samplers.sample("ddim_renoise", D, sig, keys=keys, shape=(64, 1))
    b = samplers.sample("ddim", D, sig, keys=keys, shape=(64, 1))
    np.testing.assert_array_equal(np.asarray(a.x), np.asarray(b.x))
    assert not samplers.get("ddim_renoise").uses_noise(eta=0.0)
    # eta = 0: deterministic 2x-length DDIM steps; two runs with different keys agree
    sig = timesteps.sigmas(EDM, 4, "nested")
    x_T = 80.0 * jax.random.normal(jax.random.key(1), (8, 1))
    r = [samplers.sample("ddim_renoise", D, sig, x_init=x_T, keys=samplers.example_keys(
        jax.random.key(k), 8), eta=0.0).x for k in (2, 3)]
    np.testing.assert_array_equal(np.asarray(r[0]), np.asarray(r[1]))


def test_stochastic_sampler_approaches_the_gaussian_law_like_ancestral_sampling():
    """With the exact denoiser the 2x-length DDIM step plus forward re-noising behaves like DDPM's
    ancestral step (both first order): the std approaches s as the grid refines (n = 16: 0.36,
    64: 0.46, 256: 0.49 of 0.5) and the two samplers agree at every n."""
    keys = samplers.example_keys(jax.random.key(4), 20000)
    errs = []
    for n in (16, 64, 256):
        sig = timesteps.sigmas(EDM, n, "nested")
        x = np.asarray(samplers.sample("ddim_renoise", D, sig, keys=keys, shape=(20000, 1)).x)
        anc = np.asarray(samplers.sample("ddpm", D, sig, keys=keys, shape=(20000, 1)).x)
        assert abs(x.mean() - G.MU) < 0.015 and abs(x.std() - anc.std()) < 0.01, (n, x.std())
        errs.append(abs(x.std() / G.S - 1))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.04, errs
    # and it is stochastic: not deterministic DDIM on the same grid
    det = np.asarray(samplers.sample("ddim", D, sig, keys=keys, shape=(20000, 1)).x)
    assert np.abs(det - x).mean() > 0.02
