"""examples/nnx_bridge.py: a diffjax linen model under flax.nnx.bridge.ToNNX is the same function
with the same params, and an nnx.Optimizer step is the trainer's optax step (tiny digits U-Net)."""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffjax.models import build_model
from diffjax.training import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ex():
    spec = importlib.util.spec_from_file_location("nnx_bridge",
                                                  os.path.join(ROOT, "examples", "nnx_bridge.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def setup(ex):
    """The tiny digits config and model, the NNX module's fresh params, and random params (the
    U-Net's zero-initialised output layer would make every forward at init 0)."""
    config = ex.digits_config(tiny=True)
    config.optim.warmup_steps = 0          # a real first update (the warmup starts at lr 0)
    model = build_model(config.model)
    shape = ex.example_shape(config)
    key = jax.random.key(0, impl="unsafe_rbg")   # compiles the init ~3x faster than threefry
    base = ex.to_nnx(model, shape, key)
    init = ex.linen_params(base)
    leaves, tree = jax.tree.flatten(init)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [v + 0.1 * jax.random.normal(k, v.shape, v.dtype)
                                       for v, k in zip(leaves, keys)])
    return config, model, shape, key, init, params, base


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def _module(ex, setup):
    """A fresh NNX module (a clone of the fixture's: no second init compile) with the random params."""
    m = nnx.clone(setup[-1])
    ex.set_linen_params(m, setup[-2])
    return m


def test_nnx_params_are_the_linen_tree_and_round_trip(ex, setup):
    config, model, shape, key, init, params, _ = setup
    linen = jax.eval_shape(model.init, key, *step_lib.example_inputs(model, shape))["params"]
    assert jax.tree.structure(init) == jax.tree.structure(linen)      # same paths, same names
    assert jax.tree.map(lambda a: (a.shape, a.dtype), init) == \
        jax.tree.map(lambda a: (a.shape, a.dtype), linen)
    m = _module(ex, setup)                                             # linen -> nnx -> linen
    back = ex.linen_params(m)
    _assert_trees_equal(back, params)
    assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(back))   # plain arrays
    assert not np.array_equal(jax.tree.leaves(back)[0], jax.tree.leaves(init)[0])


def test_bridged_forward_equals_linen_apply(ex, setup):
    config, model, shape, key, init, params, _ = setup
    m = _module(ex, setup)
    kx, kt = jax.random.split(jax.random.key(2))
    x = jax.random.normal(kx, (4,) + shape)
    t = jax.random.uniform(kt, (4,), minval=-1.0, maxval=1.0)
    y = jnp.array([0, 3, 9, 10], jnp.int32)                  # 10: the null class
    ref = jax.jit(model.apply)({"params": params}, x, t, y)
    out = nnx.jit(lambda m, x, t, y: m(x, t, labels=y))(m, x, t, y)
    assert float(jnp.abs(ref).max()) > 1e-3                  # not the zero-init output
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


def test_nnx_optimizer_step_equals_optax_step(ex, setup):
    """Two steps (the second reads Adam's moments) of the trainer's objective (EDM denoising loss,
    label dropout) and optax chain: NNX (nnx_denoiser, nnx.Optimizer under nnx.jit) against linen
    (step.make_denoiser, tx.update under jax.jit): the same losses and params, bit for bit."""
    config, model, shape, key, init, params, _ = setup
    m = _module(ex, setup)
    tx = ex.optimizer(config)
    opt = nnx.Optimizer(m, tx, wrt=nnx.Param)
    nnx_step = ex.nnx_train_step(ex.objective(config, model, ex.nnx_denoiser(config)).loss)
    process = step_lib.make_process(config.diffusion)
    linen_loss = ex.objective(config, model, step_lib.make_denoiser(config, model, process)).loss
    linen_step = ex.linen_train_step(linen_loss, tx)

    p, opt_state = params, tx.init(params)
    for i in range(2):
        batch = ex.digits_batch(config, 8, offset=8 * i)
        k = jax.random.fold_in(jax.random.key(3), i)
        loss_nnx = nnx_step(m, opt, batch, k)
        p, opt_state, loss_linen = linen_step(p, opt_state, batch, k)
        assert float(loss_nnx) == float(loss_linen), i
    _assert_trees_equal(ex.linen_params(m), p)
    moved = max(float(jnp.abs(a - b).max())
                for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(params)))
    assert moved > 1e-3                                      # the steps did update the params
