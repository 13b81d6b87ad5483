"""DreamBooth's prior preservation (finetune/dreambooth.py): lambda = 0 is the plain denoising loss
of the instance batch; the loss is the instance term plus lambda times the denoising loss of prior
images drawn from the set in extra, recomputed independently; mistakes in its section are named."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models import registry as model_registry
from diffjax.training import step as step_lib
from tests.training.util import tiny_config


def _prior(tmp_path, n=5, shape=(8, 8, 1), label=7):
    x = np.random.default_rng(0).uniform(-1, 1, (n,) + shape).astype(np.float32)
    path = str(tmp_path / "prior.npz")
    np.savez(path, x=x, label=np.full((n,), label, np.int32))
    return path, x


def _build(c):
    model = model_registry.build_model(c.model)
    obj = step_lib.build_objective(c, model, (8, 8, 1))
    params = model.init(jax.random.key(0), *step_lib.example_inputs(model, (8, 8, 1)))["params"]
    params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(1), a.shape),
                          params)
    return obj, params


def test_prior_preservation_is_instance_plus_lambda_prior(tmp_path):
    path, x_pr = _prior(tmp_path)
    batch = {"x": jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (4, 8, 8, 1)), jnp.float32),
             "label": jnp.full((4,), 3, jnp.int32)}
    key = jax.random.key(4)
    plain, params = _build(tiny_config())
    l_plain, _ = plain.loss(params, None, batch, key)
    for lam in (0.0, 2.5):
        c = tiny_config()
        c.objective.update({"name": "dreambooth", "prior_data": path, "prior_weight": lam,
                            "prior_batch": 3})
        obj, _ = _build(c)
        extra = obj.init_extra(jax.random.key(0), params)
        np.testing.assert_array_equal(extra["prior_x"], x_pr)
        value, aux = obj.loss(params, extra, batch, key)
        m = aux["metrics"]
        np.testing.assert_allclose(float(m["loss_instance"]), float(l_plain), rtol=1e-6)
        # the prior term: the plain loss of the drawn prior images with the class label
        k_idx, k_pr = jax.random.split(jax.random.fold_in(key, 1))
        idx = jax.random.randint(k_idx, (3,), 0, 5)
        ref, _ = plain.loss(params, None, {"x": jnp.asarray(x_pr)[idx],
                                           "label": jnp.full((3,), 7, jnp.int32)}, k_pr)
        np.testing.assert_allclose(float(m["loss_prior"]), float(ref), rtol=1e-6)
        np.testing.assert_allclose(float(value), float(l_plain) + lam * float(ref), rtol=1e-6)


def test_dreambooth_mistakes_are_named(tmp_path):
    c = tiny_config()
    c.objective.update({"name": "dreambooth"})
    with pytest.raises(ValueError, match="needs config.objective.prior_data"):
        _build(c)
    c.objective.prior_data = str(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="does not exist; generate it with diffjax sample"):
        _build(c)
    path, _ = _prior(tmp_path, shape=(16, 16, 1))
    c.objective.prior_data = path
    with pytest.raises(ValueError, match=r"shape \(16, 16, 1\); the run trains on \(8, 8, 1\)"):
        _build(c)
    path, _ = _prior(tmp_path, label=12)
    c.objective.prior_data = path
    with pytest.raises(ValueError, match="label 12 is outside the model's 10 classes"):
        _build(c)


@pytest.mark.slow
@pytest.mark.ci
def test_dreambooth_trains_through_the_trainer_and_keeps_its_prior_set(tmp_path):
    from diffjax import inference
    from diffjax.training import trainer

    path, x_pr = _prior(tmp_path)
    c = tiny_config(total_steps=2)
    c.objective.update({"name": "dreambooth", "prior_data": path})
    summary = trainer.train(c, str(tmp_path / "run"), show_progress=False)
    assert summary["step"] == 2 and np.isfinite(summary["loss"])
    run = inference.load(str(tmp_path / "run"))         # samples like any run
    assert inference.generate(run, 2, sampler="euler", steps=2).shape == (2, 8, 8, 1)
