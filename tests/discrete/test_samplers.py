"""Samplers: the cache changes NFE, not samples; no mask remains; AO-ARM reveals one position
per call; with exact conditionals of a product distribution the samples have its marginals."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.discrete import samplers

V, L = 5, 16


_RNG = np.random.default_rng(42)
EMB = _RNG.normal(size=(V + 1, V)).astype(np.float32)
MIX = (_RNG.normal(size=(L, L)) / L).astype(np.float32)


def context_net(x):
    """A fixed 'network' whose output depends on the whole sequence (the mask id V included)."""
    emb, mix = jnp.asarray(EMB), jnp.asarray(MIX)
    onehot = jax.nn.one_hot(x, V + 1)                          # (B, L, V + 1)
    logits = jnp.einsum("ij,bjv->biv", mix, onehot @ emb) * 3.0
    return jax.nn.log_softmax(logits, axis=-1)


def counting(net, calls):
    """net with a host-side record of the number of masks in every batch it was called on."""
    def fn(x):
        jax.debug.callback(lambda m: calls.append(np.asarray(m)), jnp.sum(x == V, axis=1))
        return net(x)
    return fn


@functools.partial(jax.jit, static_argnames=("steps", "method", "cache", "batch"))
def draw(key, steps, method, cache, batch=8):
    return samplers.sample(context_net, key, batch, L, vocab=V, steps=steps, method=method,
                           cache=cache)


@pytest.mark.parametrize("method,steps", [("tau_leaping", 200), ("euler", 12)])
def test_cache_gives_identical_samples_with_fewer_calls(method, steps):
    a = draw(jax.random.key(1), steps, method, True)
    b = draw(jax.random.key(1), steps, method, False)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert int(b.nfe) == steps and np.all(np.asarray(b.nfe_per_seq) == steps)
    assert int(a.nfe) <= int(b.nfe)
    assert np.all(np.asarray(a.nfe_per_seq) <= L + 1)          # at most one call per state
    if steps > 2 * L:
        assert int(a.nfe) < steps // 2                         # many steps: large saving


def test_reported_nfe_counts_the_calls_really_made():
    calls = []
    res = samplers.sample(counting(context_net, calls), jax.random.key(2), 4, L, vocab=V,
                          steps=40, cache=True)
    jax.block_until_ready(res.tokens)
    assert len(calls) == int(res.nfe) < 40
    calls = []
    res = samplers.sample(counting(context_net, calls), jax.random.key(2), 4, L, vocab=V,
                          steps=40, cache=False)
    jax.block_until_ready(res.tokens)
    assert len(calls) == int(res.nfe) == 40


@pytest.mark.parametrize("method,steps", [("tau_leaping", 1), ("tau_leaping", 200),
                                          ("euler", 3), ("euler", 12), ("aoarm", 1)])
def test_no_mask_remains(method, steps):
    x = np.asarray(draw(jax.random.key(steps), steps, method, True).tokens)
    assert x.shape == (8, L) and x.min() >= 0 and x.max() < V


def test_samples_do_not_depend_on_the_batch():
    a = draw(jax.random.key(3), 12, "euler", True, batch=8)
    b = draw(jax.random.key(3), 12, "euler", True, batch=3)
    np.testing.assert_array_equal(np.asarray(a.tokens)[:3], b.tokens)
    np.testing.assert_array_equal(np.asarray(a.nfe_per_seq)[:3], b.nfe_per_seq)


def test_aoarm_reveals_exactly_one_position_per_call():
    calls = []
    res = samplers.sample(counting(context_net, calls), jax.random.key(4), 6, L, vocab=V,
                          steps=1, method="aoarm")
    jax.block_until_ready(res.tokens)
    assert int(res.nfe) == L == len(calls)
    masks = np.stack(calls)                                     # (calls, B)
    np.testing.assert_array_equal(masks, np.repeat(np.arange(L, 0, -1)[:, None], 6, axis=1))
    assert not np.any(np.asarray(res.tokens) == V)


@pytest.mark.parametrize("method,steps", [("tau_leaping", 4), ("euler", 2), ("aoarm", 1)])
def test_exact_conditionals_of_a_product_give_its_marginals(method, steps):
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(7), (L, V)) * 1.5)
    net = lambda x: jnp.broadcast_to(jnp.log(probs), x.shape + (V,))
    n = 4000
    x = np.asarray(jax.jit(lambda k: samplers.sample(net, k, n, L, vocab=V, steps=steps,
                                                     method=method).tokens)(jax.random.key(8)))
    freq = np.stack([(x == v).mean(0) for v in range(V)], 1)    # (L, V)
    assert np.abs(freq - np.asarray(probs)).max() < 4 * np.sqrt(0.25 / n)


def test_unknown_sampler_is_an_error():
    with pytest.raises(ValueError, match="tau_leaping"):
        samplers.sample(context_net, jax.random.key(0), 2, L, vocab=V, steps=4, method="ddpm")
