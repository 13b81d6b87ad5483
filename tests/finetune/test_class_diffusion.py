"""ClassDiffusion's semantic preservation loss (finetune/class_diffusion.py): SPL(p, p) = 0 and it
lies in [0, 2]; its gradient reaches only the new class's embedding row; the objective is the
denoising loss plus lambda SPL; mistakes are named."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.finetune import class_diffusion as cd
from diffjax.models import registry as model_registry
from diffjax.training import step as step_lib
from tests.training.util import tiny_config


def test_spl_range_and_gradient_reaches_only_the_new_row():
    t = jax.random.normal(jax.random.key(0), (11, 8))
    assert abs(float(cd.spl(t.at[3].set(t[7]), 3, 7))) < 1e-6
    np.testing.assert_allclose(float(cd.spl(t.at[3].set(-t[7]), 3, 7)), 2.0, rtol=1e-6)
    assert 0 <= float(cd.spl(t, 3, 7)) <= 2
    g = np.asarray(jax.grad(cd.spl)(t, 3, 7))
    assert np.abs(g[3]).sum() > 0 and np.abs(np.delete(g, 3, axis=0)).sum() == 0


def test_objective_is_denoising_plus_lambda_spl():
    c = tiny_config()
    model = model_registry.build_model(c.model)
    params = model.init(jax.random.key(0), *step_lib.example_inputs(model, (8, 8, 1)))["params"]
    plain = step_lib.build_objective(c, model, (8, 8, 1))
    c.objective.update({"name": "class_diffusion", "new_label": 3, "class_label": 7,
                        "spl_weight": 0.5})
    obj = step_lib.build_objective(c, model, (8, 8, 1))
    batch = {"x": jnp.zeros((4, 8, 8, 1)), "label": jnp.full((4,), 3, jnp.int32)}
    key = jax.random.key(2)
    value, aux = obj.loss(params, None, batch, key)
    table = params["label_embed"]["table"]["embedding"]
    ref = float(plain.loss(params, None, batch, key)[0]) + 0.5 * float(cd.spl(table, 3, 7))
    np.testing.assert_allclose(float(value), ref, rtol=1e-6)
    assert float(aux["metrics"]["spl"]) > 0
    g = jax.grad(lambda p: obj.loss(p, None, batch, key)[0] - plain.loss(p, None, batch, key)[0])(
        params)
    gt = np.asarray(g["label_embed"]["table"]["embedding"])
    assert np.abs(gt[3]).sum() > 0 and np.abs(np.delete(gt, 3, axis=0)).sum() < 1e-7


def test_class_diffusion_mistakes_are_named():
    c = tiny_config()
    model = model_registry.build_model(c.model)
    c.objective.update({"name": "class_diffusion", "new_label": 3, "class_label": 3})
    with pytest.raises(ValueError, match="must differ"):
        step_lib.build_objective(c, model, (8, 8, 1))
    c.objective.class_label = 10
    with pytest.raises(ValueError, match=r"class_label must be a class id in \[0, 10\)"):
        step_lib.build_objective(c, model, (8, 8, 1))
    with pytest.raises(ValueError, match="found 0"):
        cd.embedding_table_path({"a": {"kernel": jnp.zeros((3, 3))}}, 10)
