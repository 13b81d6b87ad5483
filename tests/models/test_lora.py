"""LoRA as a params transform: exact at initialisation, low rank, only adapters train."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models import lora

PARAMS = {"dense": {"kernel": jnp.arange(12.0).reshape(3, 4), "bias": jnp.ones(4)},
          "conv": {"kernel": jnp.ones((3, 3, 2, 5))},
          "norm": {"scale": jnp.ones(5)}}


def test_merge_at_init_is_the_base_and_a_step_is_low_rank():
    ad = lora.init(jax.random.key(0), PARAMS, rank=2)
    assert set(ad) == {"dense/kernel", "conv/kernel"}
    assert ad["conv/kernel"]["a"].shape == (18, 2) and ad["conv/kernel"]["b"].shape == (2, 5)
    merged = lora.merge(PARAMS, ad, alpha=4.0)
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(PARAMS)):
        np.testing.assert_array_equal(a, b)                      # B = 0: exactly the base
    ad["conv/kernel"]["b"] = jnp.ones((2, 5))
    delta = lora.merge(PARAMS, ad, alpha=4.0)["conv"]["kernel"] - PARAMS["conv"]["kernel"]
    assert np.linalg.matrix_rank(np.asarray(delta).reshape(18, 5)) <= 2
    np.testing.assert_allclose(delta.reshape(18, 5), 2.0 * ad["conv/kernel"]["a"] @ jnp.ones((2, 5)),
                               rtol=1e-6)


def test_only_the_adapters_get_gradients_through_a_frozen_base():
    x = jnp.ones((2, 3))
    ad = lora.init(jax.random.key(1), PARAMS, rank=1, targets="dense/kernel")

    def loss(tree):
        p = lora.merge(jax.lax.stop_gradient(tree["base"]), tree["lora"])
        return jnp.sum((x @ p["dense"]["kernel"] + p["dense"]["bias"]) ** 2)

    g = jax.grad(loss)({"base": PARAMS, "lora": ad})
    assert all(float(jnp.abs(v).sum()) == 0 for v in jax.tree.leaves(g["base"]))
    assert float(jnp.abs(g["lora"]["dense/kernel"]["b"]).sum()) > 0
    mask = lora.trainable_mask({"base": PARAMS, "lora": ad})
    assert not any(jax.tree.leaves(mask["base"])) and all(jax.tree.leaves(mask["lora"]))


def test_bad_rank_targets_and_foreign_adapters_are_clear_errors():
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        lora.init(jax.random.key(0), PARAMS, rank=0)
    with pytest.raises(ValueError, match=r"match no kernel of the params \(paths look like conv/kernel"):
        lora.init(jax.random.key(0), PARAMS, rank=2, targets="attn/.*")
    with pytest.raises(ValueError, match="have no kernel in these params"):
        lora.merge({"other": {"kernel": jnp.ones((2, 2))}}, lora.init(jax.random.key(0), PARAMS, 1))
