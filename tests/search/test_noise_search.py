"""Noise search (search/noise_search.py) and verifiers (search/verifiers.py): exact NFE accounting,
ties, the authors' neighbour sampler, and the direction of each search on a toy with a known best."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.core import analytic, processes, timesteps
from diffjax.search import noise_search as ns
from diffjax.search import verifiers as V

SIG = timesteps.sigmas(processes.get("edm"), 6, "karras")
D = analytic.gaussian_denoiser(0.0, 1.0)           # N(0, I) data: G(n) is close to n
A = jnp.array([1.0, -0.5])
CLOSE = V.from_fn(lambda x: -jnp.sum((x - A) ** 2, -1))


def test_nfe_is_the_closed_form_for_each_search():
    gen = ns.ode_generator("heun", D, SIG)             # 6 steps: 2 * 6 - 1 = 11 evaluations
    assert gen(jnp.zeros((3, 2)))[1] == 11
    out = ns.best_of_n(jax.random.key(0), gen, CLOSE, shape=(5, 2), n=3, batch_size=4)
    assert out.nfe == 5 * 3 * 11 and out.x.shape == (5, 2) and out.history.shape == (1, 5)
    out = ns.zero_order(jax.random.key(0), gen, CLOSE, shape=(5, 2), candidates=3, iterations=2)
    assert out.nfe == 5 * (1 + 2 * 3) * 11 and out.history.shape == (3, 5)


def test_a_constant_verifier_keeps_the_first_candidate():
    gen = ns.ode_generator("euler", D, SIG)
    out = ns.best_of_n(jax.random.key(1), gen, V.from_fn(lambda x: jnp.zeros(x.shape[0])),
                       shape=(4, 2), n=5)
    first = jax.random.normal(jax.random.key(1), (20, 2)).reshape(4, 5, 2)[:, 0]
    np.testing.assert_array_equal(out.noise, first)
    np.testing.assert_allclose(out.x, gen(first)[0], rtol=1e-6)


def test_neighbours_have_the_pivots_norm_and_the_cosine_tau():
    pivot = jax.random.normal(jax.random.key(0), (3, 4, 4, 2))
    ys = ns.neighbours(jax.random.key(1), pivot, 6, tau=0.9)
    p, y = pivot.reshape(3, 1, -1), ys.reshape(3, 6, -1)
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(p, axis=-1)
                               .repeat(6, 1), rtol=1e-5)
    cos = jnp.sum(y * p, -1) / (jnp.linalg.norm(y, axis=-1) * jnp.linalg.norm(p, axis=-1))
    np.testing.assert_allclose(cos, 0.9, atol=1e-5)
    many = ns.neighbours(jax.random.key(2), jnp.ones((1, 64)) * 1.0, 4000, tau=0.95)[0]
    assert abs(float(many.mean()) - 0.95) < 0.01     # around the pivot, on its sphere
    with pytest.raises(ValueError, match=r"tau .* must lie in \(-1, 1\)"):
        ns.neighbours(jax.random.key(0), pivot, 2, tau=1.0)


def test_more_candidates_and_iterations_get_closer_to_the_best():
    gen = ns.ode_generator("dpmpp_2m", D, SIG)
    bon = [float(ns.best_of_n(jax.random.key(0), gen, CLOSE, shape=(128, 2), n=n).score.mean())
           for n in (1, 4, 16)]
    assert bon[0] < bon[1] < bon[2]
    out = ns.zero_order(jax.random.key(0), gen, CLOSE, shape=(128, 2), candidates=4, iterations=6,
                        tau=0.8)
    h = np.asarray(out.history)
    assert np.all(np.diff(h, axis=0) >= 0)                 # never worse than the pivot
    assert h[-1].mean() > h[0].mean() + 1.0


def test_a_stochastic_sampler_is_refused():
    with pytest.raises(ValueError, match="needs a deterministic sampler"):
        ns.ode_generator("ddpm", D, SIG)


def test_classifier_verifiers_by_spec():
    logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]]))
    lf = lambda x: logits
    x = jnp.zeros((2, 3))
    np.testing.assert_allclose(V.from_spec("class:2", lf, 4)(x), np.log([0.3, 0.2]), rtol=1e-5)
    np.testing.assert_allclose(V.from_spec("even", lf, 4)(x), np.log([0.4, 0.6]), rtol=1e-5)
    np.testing.assert_allclose(V.from_spec("odd", lf, 4)(x), np.log([0.6, 0.4]), rtol=1e-5)
    np.testing.assert_allclose(V.from_spec("classes:0,3", lf, 4)(x), np.log([0.5, 0.5]),
                               rtol=1e-5)
    np.testing.assert_allclose(V.from_spec("label", lf, 4)(x, {"label": jnp.array([3, 0])}),
                               np.log([0.4, 0.4]), rtol=1e-5)
    for bad, msg in (("class:9", "must lie in 0 .. 3"), ("prime", "unknown verifier"),
                     ("class:x", "must be integers")):
        with pytest.raises(ValueError, match=msg):
            V.from_spec(bad, lf, 4)
    with pytest.raises(ValueError, match="scores of shape"):
        V.from_fn(lambda x: x)(x)


def test_the_rank_ensemble_ranks_within_each_examples_candidates():
    v1 = V.from_fn(lambda x: x[:, 0])
    v2 = V.from_fn(lambda x: -x[:, 1])
    ens = V.rank_ensemble([v1, v2])
    x = jnp.array([[0.0, 0.0], [1.0, 5.0], [2.0, 1.0],      # example 0's three candidates
                   [5.0, 5.0], [4.0, 4.0], [3.0, 3.0]])     # example 1's
    np.testing.assert_allclose(ens(x, None, 3), [1.0, 0.5, 1.5, 1.0, 1.0, 1.0])
    gen = lambda noise, cond=None: (noise, 1)
    out = ns.best_of_n(jax.random.key(0), gen, ens, shape=(2, 2), n=3)
    assert out.nfe == 6 and out.x.shape == (2, 2)
