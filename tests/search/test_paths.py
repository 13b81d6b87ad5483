"""Search over paths (search/paths.py): one branch without re-noising is the plain sampler, the NFE
is its closed form, and branching moves the samples toward the verifier's optimum."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.core import analytic, processes, samplers, timesteps
from diffjax.search import paths
from diffjax.search import verifiers as V

SIG = timesteps.sigmas(processes.get("edm"), 12, "karras")
D = analytic.gaussian_denoiser(0.0, 1.0)
A = jnp.array([1.0, -0.5])
CLOSE = V.from_fn(lambda x: -jnp.sum((x - A) ** 2, -1))


def test_one_branch_without_renoising_is_the_plain_sampler():
    out = paths.search_paths(jax.random.key(0), "euler", D, SIG, CLOSE, shape=(6, 2), paths=1,
                             branches=1, start=4, forward=0, backward=3)
    x_T = SIG[0] * jax.random.normal(jax.random.split(jax.random.key(0))[0], (6, 2))
    plain = samplers.sample("euler", D, SIG, x_init=x_T)
    np.testing.assert_allclose(out.x, plain.x, rtol=1e-5, atol=1e-6)
    assert out.nfe == 6 * 12                     # euler: one evaluation per step


def test_nfe_closed_form_and_branching_finds_better_samples():
    kw = dict(shape=(64, 2), start=4, forward=2, backward=4)
    out = paths.search_paths(jax.random.key(1), "euler", D, SIG, CLOSE, paths=2, branches=3, **kw)
    # 4 steps for 2 paths, then rounds from 4: (2..6), (4..8), (6..10), (8..12): 4 evals x 6 each
    assert out.nfe == 64 * 2 * 4 + 4 * (64 * 6 * 4)
    assert out.history.shape == (4, 64)
    base = paths.search_paths(jax.random.key(1), "euler", D, SIG, CLOSE, paths=1, branches=1, **kw)
    assert float(out.score.mean()) > float(base.score.mean()) + 0.3


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="forward < backward"):
        paths.search_paths(jax.random.key(0), "euler", D, SIG, CLOSE, shape=(2, 2), paths=1,
                           branches=2, start=4, forward=3, backward=3)
    with pytest.raises(ValueError, match="needs a deterministic sampler"):
        paths.search_paths(jax.random.key(0), "ddpm", D, SIG, CLOSE, shape=(2, 2), paths=1,
                           branches=2, start=4, forward=1, backward=3)
