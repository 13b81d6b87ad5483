"""from_network(max_batch=...): the network runs on batch slices, with the same result."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.core import denoisers, processes


def _toy_net(seen):
    def apply_fn(p, x, t, labels=None, context=None, train=False):
        seen.append(x.shape[0])
        out = x * p["w"] + (t / 1000.0)[:, None, None]
        if labels is not None:
            out = out + labels[:, None, None].astype(jnp.float32)
        if context is not None:
            out = out + context.mean(axis=(1, 2))[:, None, None]
        return out
    return apply_fn


@pytest.mark.parametrize("parameterization", ["eps", "edm"])
def test_max_batch_slices_give_the_same_denoiser(parameterization):
    b = 7
    x = jax.random.normal(jax.random.key(0), (b, 4, 3))
    sigma = jnp.linspace(0.1, 3.0, b)
    cond = {"label": jnp.arange(b) % 3, "context": jax.random.normal(jax.random.key(1), (b, 2, 5))}
    p = {"w": jnp.float32(0.7)}
    process = processes.get("vp_discrete")
    seen_full, seen_chunked = [], []
    full = denoisers.from_network(_toy_net(seen_full), process, parameterization)
    chunked = denoisers.from_network(_toy_net(seen_chunked), process, parameterization, max_batch=3)
    np.testing.assert_allclose(chunked(p, x, sigma, cond), full(p, x, sigma, cond), rtol=1e-6)
    assert seen_full == [7] and seen_chunked == [3]          # traced once, on slices of 3 (7 -> 9 padded)
    seen_chunked.clear()
    chunked(p, x, sigma, cond, train=True)                   # training calls are never sliced
    assert seen_chunked == [7]


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="max_batch"):
        denoisers.from_network(_toy_net([]), processes.get("vp_discrete"), "eps", max_batch=0)


def test_max_batch_names_a_cond_entry_without_one_row_per_example():
    den = denoisers.from_network(_toy_net([]), processes.get("vp_discrete"), "eps", max_batch=2)
    x = jnp.zeros((5, 4, 3))
    with pytest.raises(ValueError, match=r"cond\['label'\] has shape \(1,\) for a batch of 5"):
        den({"w": jnp.float32(1.0)}, x, jnp.ones(5), {"label": jnp.zeros((1,), jnp.int32)})
