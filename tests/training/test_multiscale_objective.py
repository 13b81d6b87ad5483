"""DiMR's multi-scale objective (training/multiscale_objective.py): down_r keeps unit noise at unit
variance; with coefficients (0, 1) it is exactly the denoising objective's eps loss; every branch
gets gradient; mistakes are named."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models import registry as model_registry
from diffjax.training import step as step_lib
from diffjax.training.multiscale_objective import down
from tests.training.util import tiny_config


def _config(**kw):
    c = tiny_config()
    c.model = model_registry.get_preset("dimr_tiny")
    c.model.unlock()
    c.model.input_shape = (8, 8, 1)
    c.model.num_classes = 10
    c.diffusion.parameterization = "eps"
    c.diffusion.weighting = "native"
    c.diffusion.t_sampler = "uniform"
    c.objective.name = "multiscale"
    for k, v in kw.items():
        c.objective[k] = v
    return c


def _setup(c):
    model = model_registry.build_model(c.model)
    params = model.init(jax.random.key(0), *step_lib.example_inputs(model, (8, 8, 1)))["params"]
    params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(1), a.shape),
                          params)
    x = jax.random.uniform(jax.random.key(2), (6, 8, 8, 1), minval=-1, maxval=1)
    batch = {"x": x, "label": jnp.arange(6) % 10}
    return model, params, batch


def test_down_keeps_unit_noise_at_unit_variance():
    e = jax.random.normal(jax.random.key(0), (64, 32, 32, 3))
    for r in (1, 2, 4):
        d = np.asarray(down(e, r))
        assert d.shape == (64, 32 // r, 32 // r, 3)
        assert abs(d.var() - 1.0) < 0.03
    ones = jnp.ones((1, 4, 4, 1))
    np.testing.assert_allclose(down(ones, 2), 2.0)          # a 2x2 sum (4) divided by 2


@pytest.mark.slow
@pytest.mark.ci
def test_top_branch_alone_is_the_denoising_eps_loss_and_all_branches_train():
    c = _config(coeffs=(0.0, 1.0))
    model, params, batch = _setup(c)
    obj = step_lib.build_objective(c, model, (8, 8, 1))
    c_den = _config()
    c_den.objective = type(c.objective)({"name": "denoising"})
    den_obj = step_lib.build_objective(c_den, model, (8, 8, 1))
    key = jax.random.key(5)
    ms, aux = obj.loss(params, None, batch, key)
    plain, _ = den_obj.loss(params, None, batch, key)
    np.testing.assert_allclose(float(ms), float(plain), rtol=1e-4)
    assert set(aux["metrics"]) == {"loss_branch_0", "loss_branch_1"}
    # with DiMR's (1/4, 1) the low-resolution branch's own head gets gradient too
    obj2 = step_lib.build_objective(_config(), model, (8, 8, 1))
    g0 = jax.grad(lambda p: obj.loss(p, None, batch, key)[0])(params)
    g2 = jax.grad(lambda p: obj2.loss(p, None, batch, key)[0])(params)
    v2 = float(obj2.loss(params, None, batch, key)[0])
    lo = float(aux["metrics"]["loss_branch_0"])
    np.testing.assert_allclose(v2, 0.25 * lo + float(ms), rtol=1e-4)
    head0 = lambda g: jax.tree.leaves(g["branch_0"])
    diff = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(head0(g0), head0(g2)))
    assert diff > 0


def test_multiscale_mistakes_are_named():
    with pytest.raises(ValueError, match="has 3 entries; the DiMR model has 2"):
        c = _config(coeffs=(0.1, 0.2, 1.0))
        step_lib.build_objective(c, model_registry.build_model(c.model), (8, 8, 1))
    c = _config()
    c.diffusion.parameterization = "edm"
    with pytest.raises(ValueError, match="parameterization = 'eps'"):
        step_lib.build_objective(c, model_registry.build_model(c.model), (8, 8, 1))
    c = tiny_config()
    c.objective.name = "multiscale"
    with pytest.raises(ValueError, match="multi-resolution"):
        step_lib.build_objective(c, model_registry.build_model(c.model), (8, 8, 1))
