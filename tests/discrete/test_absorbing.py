"""The log-linear absorbing process: masking probability, rates, the time factor, masking."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.discrete import absorbing


@pytest.mark.parametrize("eps", [0.0, 1e-3, 0.1])
def test_mask_prob_formula_is_linear_in_t(eps):
    sch = absorbing.LogLinear(eps)
    t = jnp.linspace(0.0, 1.0, 101)
    np.testing.assert_allclose(sch.mask_prob(t), (1 - eps) * t, atol=2e-7)
    # sigma = d sigma_bar / dt
    grad = jax.vmap(jax.grad(sch.sigma_bar))(t[1:-1])
    np.testing.assert_allclose(sch.sigma(t[1:-1]), grad, rtol=1e-5)


def test_masking_frequency_matches_within_monte_carlo_error():
    sch = absorbing.LogLinear(1e-3)
    x0 = jnp.zeros((2000, 64), jnp.int32)
    n = x0.size
    for i, t in enumerate([0.05, 0.3, 0.5, 0.9, 1.0]):
        sb = sch.sigma_bar(jnp.float32(t))
        xt = absorbing.mask(jax.random.key(i), x0, -jnp.expm1(-sb), mask_id=7)
        p = (1 - 1e-3) * t
        freq = float(jnp.mean(xt == 7))
        assert abs(freq - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-6, (t, freq, p)
        assert set(np.unique(np.asarray(xt))) <= {0, 7}


def test_mask_with_per_row_probabilities_and_exact_counts():
    x0 = jnp.ones((3, 1000), jnp.int32)
    xt = absorbing.mask(jax.random.key(0), x0, jnp.array([0.0, 0.5, 1.0]), mask_id=9)
    frac = np.asarray(jnp.mean(xt == 9, axis=1))
    assert frac[0] == 0.0 and frac[2] == 1.0 and abs(frac[1] - 0.5) < 0.07
    k = jnp.array([0, 1, 17])
    xt = absorbing.mask_exactly(jax.random.key(1), jnp.ones((3, 20), jnp.int32), k, mask_id=9)
    np.testing.assert_array_equal(np.asarray(jnp.sum(xt == 9, axis=1)), [0, 1, 17])


def test_time_factor_and_reverse_rates():
    sch = absorbing.LogLinear(1e-3)
    t = jnp.linspace(0.01, 1.0, 50)
    sb = sch.sigma_bar(t)
    np.testing.assert_allclose(absorbing.time_factor(sb), jnp.exp(-sb) / (1 - jnp.exp(-sb)),
                               rtol=1e-5)
    s = t * 0.7
    tw = absorbing.unmask_prob(sch, t, s)
    assert float(tw.min()) >= 0.0 and float(tw.max()) <= 1.0
    np.testing.assert_allclose(tw, (t - s) / t, rtol=1e-4)
    # Euler's first-order probability equals Tweedie's for this schedule
    np.testing.assert_allclose(absorbing.euler_unmask_prob(sch, t, s), tw, rtol=1e-4)
    assert float(absorbing.unmask_prob(sch, jnp.float32(0.5), jnp.float32(0.0))) == 1.0
