"""Training through the core loss: bf16 compute gives finite fp32 gradients, and a tiny UNet / DiT
overfit a tiny fixed batch (loss down >= 10x).

The loss is ``diffjax.core.losses.make_loss`` around ``denoisers.from_network(model.apply, ...)``.
For a fast, deterministic overfit the loss key cycles through 4 fixed keys, so the model sees a
fixed set of 4 x (t, eps) draws for each of 4 images: a small fixed batch of (x, t, eps).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffjax.core import denoisers, losses, processes
from tests.models import util

N_KEYS = 4


def _setup(preset, **overrides):
    """Loss through the core API for the class-conditional tiny model (as in test_models)."""
    m = util.model(preset, num_classes=10, **overrides)
    proc = processes.get("vp_cosine")
    den = denoisers.from_network(m.apply, proc, parameterization="eps")
    loss_fn = losses.make_loss(den, proc, weighting="snr")
    x = 0.5 * jax.random.normal(jax.random.PRNGKey(0), (4,) + util.TINY[preset])
    batch = {"x": x, "label": jnp.array([0, 3, 9, 10])}
    return m, loss_fn, batch


def _all_fp32(tree):
    return all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("preset", ["dit_tiny"])  # bf16 forward of every family: test_models
def test_bf16_train_step_has_finite_fp32_grads(preset):
    m, loss_fn, batch = _setup(preset, dtype="bfloat16")
    # random (not zero-init) fp32 params: every path is live, so every gradient is exercised
    params = util.random_vars(util.model(preset, num_classes=10), preset)["params"]
    opt = optax.adam(1e-3)

    def step(params, opt_state, key):
        (loss, _), grads = jax.value_and_grad(
            lambda p: loss_fn({"params": p}, batch, key), has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    new_params, _, loss, grads = util.FastJit(step)(params, opt.init(params), jax.random.PRNGKey(1))
    assert np.isfinite(float(loss))
    assert _all_fp32(grads) and _all_fp32(new_params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    assert sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree_util.tree_leaves(grads)) > 0


@pytest.mark.parametrize("preset, steps, lr", [("dit_tiny", 200, 2e-3), ("unet_tiny16", 40, 2e-3)])
def test_tiny_model_overfits_fixed_batch(preset, steps, lr):
    m, loss_fn, batch = _setup(preset)
    params = util.init(m, preset)["params"]          # the real init (zero output layers)
    opt = optax.adam(lr)
    base = jax.random.PRNGKey(42)

    def step(carry, i):
        p, s = carry
        key = jax.random.fold_in(base, i % N_KEYS)
        (loss, _), g = jax.value_and_grad(
            lambda p: loss_fn({"params": p}, batch, key), has_aux=True)(p)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss

    run = util.FastJit(lambda p, s: jax.lax.scan(step, (p, s), jnp.arange(steps)),
                       options=util.TRAIN_COMPILE)
    (params, _), curve = run(params, opt.init(params))
    first, last = float(curve[:N_KEYS].mean()), float(curve[-N_KEYS:].mean())
    print(f"{preset}: loss {first:.4f} -> {last:.5f} in {steps} steps")
    assert np.isfinite(last) and last < first / 10
    assert _all_fp32(params)
