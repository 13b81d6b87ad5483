"""RADD's four losses with the EXACT conditionals of a product distribution: equal expectations,
equal to the analytic NLL; sensitive to a wrong model; the AO-ARM NLL is exact."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.discrete import absorbing, losses

V, L, N = 3, 4, 40_000
PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.34, 0.33, 0.33], [0.05, 0.5, 0.45]])
ENTROPY = float(-(PROBS * np.log(PROBS)).sum())         # E[-log p(x0)] = sum_i H(p_i), nats


def exact_log_p(xt):
    """Independent tokens: p(x0^i | x^UM) = p_i, whatever is unmasked."""
    return jnp.broadcast_to(jnp.log(jnp.asarray(PROBS, jnp.float32)), xt.shape + (V,))


def uniform_log_p(xt):
    return jnp.full(xt.shape + (V,), -jnp.log(V))


def data(seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(np.stack([rng.choice(V, size=N, p=PROBS[i]) for i in range(L)], 1),
                       jnp.int32)


@functools.partial(jax.jit, static_argnames=("kind", "eps", "model"))
def per_seq(kind, x0, key, eps=1e-3, model=exact_log_p):
    return losses.radd_loss(kind, model, x0, key, mask_id=V, schedule=absorbing.LogLinear(eps),
                            t_min=1e-3)


@pytest.mark.parametrize("kind", losses.LOSSES)
def test_expectation_equals_exact_nll(kind):
    x0 = data()
    nll = float(-np.log(PROBS[np.arange(L), np.asarray(x0)]).sum(1).mean())   # this sample's
    assert abs(nll - ENTROPY) < 0.02
    vals = np.concatenate([np.asarray(per_seq(kind, x0, jax.random.key(s), eps=0.0))
                           for s in range(3)])
    se = vals.std() / np.sqrt(vals.size)
    # eps = 0: every bound is tight for the exact conditionals; t-DCE / DSE miss t < t_min
    # (lambda < t_min), which the uniform t on [t_min, 1] makes up for exactly here
    assert abs(vals.mean() - nll) < 4 * se + 1e-3, (kind, vals.mean(), nll, se)


@pytest.mark.parametrize("kind", ["t_dce", "dse"])
def test_time_losses_with_eps_cover_lambda_up_to_one_minus_eps(kind):
    x0 = data(1)
    nll = float(-np.log(PROBS[np.arange(L), np.asarray(x0)]).sum(1).mean())
    vals = np.concatenate([np.asarray(per_seq(kind, x0, jax.random.key(10 + s), eps=0.05))
                           for s in range(3)])
    se = vals.std() / np.sqrt(vals.size)
    assert abs(vals.mean() - 0.95 * nll) < 4 * se + 1e-3, (vals.mean(), 0.95 * nll, se)


def test_dse_equals_t_dce_sample_by_sample_for_normalised_conditionals():
    x0 = data()[:2000]
    a = per_seq("t_dce", x0, jax.random.key(3))
    b = per_seq("dse", x0, jax.random.key(3))
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("kind", losses.LOSSES)
def test_a_wrong_model_scores_worse(kind):
    x0 = data()
    vals = np.asarray(per_seq(kind, x0, jax.random.key(5), eps=0.0, model=uniform_log_p))
    assert abs(vals.mean() - L * np.log(V)) < 5 * vals.std() / np.sqrt(vals.size) + 1e-3
    assert vals.mean() > ENTROPY + 0.3


def test_aoarm_nll_is_exact_for_every_order():
    x0 = data()[:64]
    got = losses.aoarm_nll(exact_log_p, x0, jax.random.key(0), mask_id=V)
    want = -np.log(PROBS[np.arange(L), np.asarray(x0)]).sum(1)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_unknown_loss_is_an_error():
    with pytest.raises(ValueError, match="k_dce"):
        losses.radd_loss("kdce", exact_log_p, data()[:2], jax.random.key(0), mask_id=V)
