"""DomainStudio (finetune/domainstudio.py): the Haar high-pass of a constant image is 0 and matches
the transform written out; the KL is PyTorch's KLDivLoss(log q, p) direction and >= 0; similarity
rows are distributions over j != i and permute with the batch; an adapted model equal to its source
(the start) has zero relative-distance losses, a moved one positive; mistakes are named."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.finetune import domainstudio as ds
from diffjax.models import registry as model_registry
from diffjax.training import step as step_lib
from tests.training.util import tiny_config


def test_haar_high_frequencies():
    assert float(jnp.abs(ds.haar_hf(jnp.full((2, 4, 4, 3), 0.7))).max()) == 0.0
    x = np.random.default_rng(0).normal(size=(2, 4, 6, 1)).astype(np.float32)
    # the transform written out: rows then columns with L = [1, 1]/sqrt2, H = [-1, 1]/sqrt2
    s = 1 / np.sqrt(2)
    lo = lambda a, ax: (np.take(a, range(0, a.shape[ax], 2), ax)
                        + np.take(a, range(1, a.shape[ax], 2), ax)) * s
    hi = lambda a, ax: (np.take(a, range(1, a.shape[ax], 2), ax)
                        - np.take(a, range(0, a.shape[ax], 2), ax)) * s
    ref = hi(lo(x, 1), 2) + lo(hi(x, 1), 2) + hi(hi(x, 1), 2)
    np.testing.assert_allclose(ds.haar_hf(jnp.asarray(x)), ref, rtol=1e-5, atol=1e-6)


def test_kl_direction_and_similarity_rows():
    p = jax.nn.softmax(jax.random.normal(jax.random.key(0), (5, 4)), axis=1)
    q = jax.nn.softmax(jax.random.normal(jax.random.key(1), (5, 4)), axis=1)
    np.testing.assert_allclose(float(ds.kl_mean(p, q)),
                               float(jnp.sum(p * (jnp.log(p) - jnp.log(q))) / p.size), rtol=1e-3)
    assert float(ds.kl_mean(p, q)) > 0 and abs(float(ds.kl_mean(p, p))) < 1e-7
    f = jax.random.normal(jax.random.key(2), (5, 3, 3, 1))
    rows = ds.similarity_rows(f)
    assert rows.shape == (5, 4)
    np.testing.assert_allclose(rows.sum(1), 1.0, rtol=1e-6)
    perm = jnp.array([2, 0, 4, 1, 3])
    a = ds.kl_mean(ds.similarity_rows(f), ds.similarity_rows(f * 1.5 + 0.1))
    b = ds.kl_mean(ds.similarity_rows(f[perm]), ds.similarity_rows((f * 1.5 + 0.1)[perm]))
    np.testing.assert_allclose(float(a), float(b), rtol=1e-3)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from diffjax.training import trainer

    w = str(tmp_path_factory.mktemp("ds") / "source")
    trainer.train(tiny_config(total_steps=2), w, show_progress=False)
    return w


@pytest.mark.slow
@pytest.mark.ci
def test_adapted_equal_to_source_has_zero_relative_losses(source):
    c = tiny_config()
    c.objective.update({"name": "domainstudio", "source_workdir": source})
    model = model_registry.build_model(c.model)
    obj = step_lib.build_objective(c, model, (8, 8, 1))
    fresh = model.init(jax.random.key(0), *step_lib.example_inputs(model, (8, 8, 1)))["params"]
    params = obj.init_params(jax.random.key(0), fresh)          # = the source's weights
    extra = obj.init_extra(jax.random.key(0), params)
    batch = {"x": jax.random.uniform(jax.random.key(3), (6, 8, 8, 1), minval=-1, maxval=1),
             "label": jnp.arange(6) % 10}
    value, aux = obj.loss(params, extra, batch, jax.random.key(4))
    m = {k: float(v) for k, v in aux["metrics"].items()}
    assert abs(m["loss_img"]) < 1e-7 and abs(m["loss_hf"]) < 1e-7
    np.testing.assert_allclose(float(value), m["loss_simple"] + m["loss_hfmse"], rtol=1e-5)
    moved = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(5), a.shape),
                         params)
    _, aux2 = obj.loss(moved, extra, batch, jax.random.key(4))
    assert float(aux2["metrics"]["loss_img"]) > 0 and float(aux2["metrics"]["loss_hf"]) > 0
    g = jax.grad(lambda p: obj.loss(p, extra, batch, jax.random.key(4))[0])(moved)
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(g))


def test_domainstudio_mistakes_are_named(tmp_path):
    c = tiny_config()
    c.objective.update({"name": "domainstudio"})
    model = model_registry.build_model(c.model)
    with pytest.raises(ValueError, match="set config.objective.source_workdir"):
        step_lib.build_objective(c, model, (8, 8, 1))
    c.objective.source_workdir = str(tmp_path)
    with pytest.raises(ValueError, match="not a diffjax training workdir"):
        step_lib.build_objective(c, model, (8, 8, 1))
