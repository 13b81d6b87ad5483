"""The training-objective contract (training/objectives.py): a test objective with a frozen second
network in its extra state, an auxiliary counter updated after each step, and a parameter mask
trains only what it should, checkpoints and resumes bit for bit, and runs sharded like on one
device."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.data import registry as data_registry
from diffjax.models import registry as model_registry
from diffjax.training import checkpoint, objectives, sharding, state as state_lib, trainer
from diffjax.training import step as step_lib
from tests.training.util import run_python, tiny_config

FROZEN = "conv_in"   # the mask freezes this submodule of the U-Net


@objectives.register("test_frozen_teacher", weight=0.5)
def _frozen_teacher(ctx):
    """denoising loss + weight * || D_params - D_teacher ||^2 at the same noisy input, with the
    teacher a second, independently initialised copy of the model that never trains."""
    base = objectives.denoising(ctx)

    def init_extra(key, params):
        from diffjax.training.step import example_inputs
        teacher = ctx.model.init(key, *example_inputs(ctx.model, ctx.example_shape))["params"]
        return {"teacher": teacher, "calls": jnp.zeros((), jnp.int32)}

    def loss(params, extra, batch, key):
        l_den, aux = base.loss(params, extra, batch, key)
        x = batch["x"] + 0.5 * jax.random.normal(jax.random.fold_in(key, 7), batch["x"].shape)
        sigma = jnp.full((x.shape[0],), 0.5)
        cond = {"label": batch["label"]} if "label" in batch else {}
        gap = jnp.mean((ctx.den(params, x, sigma, cond)
                        - ctx.den(extra["teacher"], x, sigma, cond)) ** 2)
        aux = dict(aux, metrics={"teacher_gap": gap})
        return l_den + ctx.fields["weight"] * gap, aux

    def update_extra(extra, params, batch, key, metrics):
        return dict(extra, calls=extra["calls"] + 1), {"extra_calls": extra["calls"] + 1}

    def trainable(params):
        return {k: jax.tree.map(lambda _: k != FROZEN, v) for k, v in params.items()}

    return objectives.Objective(loss=loss, init_extra=init_extra, update_extra=update_extra,
                                trainable=trainable)


def _config(**overrides):
    c = tiny_config(**overrides)
    c.objective.name = "test_frozen_teacher"
    return c


def _build(config, n_dev=1, mesh=None):
    source = data_registry.get_source(config.data)
    model = model_registry.build_model(config.model)
    mesh = sharding.make_mesh(mesh or {"data": 1, "fsdp": 1}, jax.devices()[:n_dev])
    return step_lib.make_train_step(config, model, mesh, example_shape=source[0]["x"].shape), source


def _three_steps(config):
    from diffjax.data import pipeline
    ts, source = _build(config)
    state = ts.init_state(jax.random.key(0))
    init = jax.device_get(state)
    step = ts.jit_step()
    it = pipeline.make_iterator(source, ts.micro_batch, seed=0)
    for _ in range(3):
        state, m = step(state, sharding.to_global(next(it), ts.batch_sharding))
    return init, jax.device_get(state), m


def _moved(a, b):
    pa = jax.tree_util.tree_flatten_with_path(a)[0]
    return {jax.tree_util.keystr(p) for (p, x), y in zip(pa, jax.tree.leaves(b))
            if not np.array_equal(x, y)}


def test_mask_freezes_params_the_extra_state_is_kept_and_metrics_are_logged():
    init, out, m = _three_steps(_config())
    base_init, base_out, _ = _three_steps(tiny_config())   # the denoising objective, no mask
    frozen = {p for p in _moved(base_init.params, base_out.params) if p.startswith(f"['{FROZEN}']")}
    assert frozen                                           # conv_in would train without the mask
    # exactly the leaves that train without the mask, minus the frozen ones (zero-initialised
    # output layers keep some leaves' gradients at 0 for the first steps, with or without it)
    assert _moved(init.params, out.params) == _moved(base_init.params, base_out.params) - frozen
    assert not _moved(init.extra["teacher"], out.extra["teacher"])   # the frozen network
    assert int(out.extra["calls"]) == 3 and int(m["extra_calls"]) == 3
    assert float(m["teacher_gap"]) > 0
    # no optimizer moments for the frozen leaves: Adam keeps 2 per trainable leaf
    n_train = sum(len(jax.tree.leaves(v)) for k, v in out.params.items() if k != FROZEN)
    opt_leaves = [x for x in jax.tree.leaves(out.opt_state) if np.ndim(x) > 0]
    assert len(opt_leaves) == 2 * n_train


def test_resume_with_extra_state_is_bit_exact(tmp_path):
    ref, cut = str(tmp_path / "ref"), str(tmp_path / "cut")
    trainer.train(_config(total_steps=4), ref)
    trainer.train(_config(total_steps=2), cut)
    summary = trainer.train(_config(total_steps=4), cut)           # resumes at 2 (total_steps
    assert summary["start_step"] == 2                              #  is an allowed change)
    with checkpoint.Checkpointer(os.path.join(ref, "checkpoints"), read_only=True) as a, \
            checkpoint.Checkpointer(os.path.join(cut, "checkpoints"), read_only=True) as b:
        ts, _ = _build(_config(total_steps=4))
        sa, sb = a.restore(ts.abstract_state), b.restore(ts.abstract_state)
    assert int(sa.extra["calls"]) == int(sb.extra["calls"]) == 4
    for x, y in zip(jax.tree.leaves(jax.device_get(sa)), jax.tree.leaves(jax.device_get(sb))):
        np.testing.assert_array_equal(x, y)


SHARDED = """
import json, sys, jax, numpy as np
sys.path.insert(0, '.')
from tests.training import test_objectives as t
from diffjax.data import pipeline
from diffjax.training import sharding
out = {}
for name, n, mesh in (("1dev", 1, None), ("dp4_fsdp2", 8, {"data": 4, "fsdp": 2})):
    config = t._config(**{"sharding.min_size": 0})
    ts, source = t._build(config, n, mesh)
    state = ts.jit_init()(jax.random.key(0))
    step = ts.jit_step()
    it = pipeline.make_iterator(source, ts.micro_batch, seed=0)
    for _ in range(2):
        state, m = step(state, sharding.to_global(next(it), ts.batch_sharding))
    teacher_sharded = sum(any(p is not None for p in x.sharding.spec)
                          for x in jax.tree.leaves(state.extra["teacher"]))
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(state.params))])
    out[name] = {"params": flat.tolist(), "gap": float(m["teacher_gap"]),
                 "teacher_sharded": int(teacher_sharded)}
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.ci
def test_extra_state_is_born_sharded_and_sharded_equals_single_device():
    p = run_python(SHARDED, devices=8)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.split("RESULT ", 1)[1])
    assert out["dp4_fsdp2"]["teacher_sharded"] > 0 and out["1dev"]["teacher_sharded"] == 0
    a, b = np.asarray(out["1dev"]["params"]), np.asarray(out["dp4_fsdp2"]["params"])
    assert np.max(np.abs(a - b)) / np.max(np.abs(a)) < 1e-5
    assert abs(out["1dev"]["gap"] - out["dp4_fsdp2"]["gap"]) < 1e-5 * max(out["1dev"]["gap"], 1)


def test_unknown_objective_or_field_is_an_error_naming_the_valid_ones():
    c = tiny_config()
    c.objective.name = "distil"
    with pytest.raises(ValueError, match=r"config\.objective\.name: unknown objective 'distil'; "
                                         r"expected one of \[.*'denoising'"):
        _build(c)
    c = _config()
    c.objective.unlock()
    c.objective.wieght = 2.0
    with pytest.raises(ValueError, match=r"has no field\(s\) wieght; its fields: weight"):
        _build(c)


def test_checkpoint_without_extra_restores_with_extra_none(tmp_path):
    """Runs saved before the TrainState had ``extra`` (every run before the objective registry)."""
    import flax.struct

    @flax.struct.dataclass
    class OldState:
        step: jax.Array
        params: dict
        opt_state: tuple
        ema: dict
        rng: jax.Array

    ts, _ = _build(tiny_config())
    new = ts.init_state(jax.random.key(0))
    old = OldState(**{f: getattr(new, f) for f in OldState.__dataclass_fields__})
    with checkpoint.Checkpointer(str(tmp_path), async_save=False) as ckpt:
        ckpt.save(1, old)
    with checkpoint.Checkpointer(str(tmp_path), read_only=True) as ckpt:
        got = ckpt.restore(ts.abstract_state)
    assert isinstance(got, state_lib.TrainState) and got.extra is None
    for x, y in zip(jax.tree.leaves(jax.device_get(got)), jax.tree.leaves(jax.device_get(new))):
        np.testing.assert_array_equal(x, y)
