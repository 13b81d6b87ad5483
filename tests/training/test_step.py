"""The train step: one device in-process; 8 simulated devices and FSDP in a subprocess."""
import json

import jax
import numpy as np
import pytest

from diffjax.data import pipeline, registry as data_registry
from diffjax.models import registry as model_registry
from diffjax.training import sharding, step as step_lib
from tests.training.util import run_python, tiny_config, ROOT


def _setup(**overrides):
    config = tiny_config(**overrides)
    mesh = sharding.make_mesh(config.mesh)
    source = data_registry.get_source(config.data)
    model = model_registry.build_model(config.model)
    ts = step_lib.make_train_step(config, model, mesh, example_shape=source[0]["x"].shape)
    return config, ts, pipeline.make_iterator(source, ts.micro_batch, seed=0)


def test_step_runs_without_implicit_transfers_and_compiles_ahead_of_time():
    config, ts, it = _setup()
    state = ts.init_state(jax.random.key(0))
    step = ts.jit_step()
    compiled = step.lower(ts.abstract_state, ts.abstract_batch).compile()
    assert compiled is not None
    p0 = jax.tree.map(np.array, jax.device_get(state.params))  # a copy: buffers are donated
    batch = sharding.to_global(next(it), ts.batch_sharding)
    with jax.transfer_guard("disallow"):
        state, m = step(state, batch)
    m = jax.device_get(m)
    assert int(jax.device_get(state.step)) == 1 and np.isfinite(m["loss"])
    # lr at the first optimizer step is schedule(0) = 0 under linear warmup: params unchanged
    assert m["lr"] == 0.0
    np.testing.assert_array_equal(jax.device_get(state.params)["conv_in"]["kernel"],
                                  p0["conv_in"]["kernel"])
    state, m = step(state, sharding.to_global(next(it), ts.batch_sharding))
    params = jax.device_get(state.params)
    # the zero-initialised output conv is the first layer to move (the others get zero gradient)
    assert not np.array_equal(params["conv_out"]["kernel"], p0["conv_out"]["kernel"])
    ema = jax.device_get(state.ema)
    assert set(ema) == {"decay_0.999", "power_0.1"}
    # decay EMA after step 2: beta = min(0.999, 3/12) = 0.25 of the old average (= step-1 params)
    np.testing.assert_allclose(ema["decay_0.999"]["conv_out"]["kernel"],
                               0.25 * p0["conv_out"]["kernel"] + 0.75 * params["conv_out"]["kernel"],
                               rtol=1e-6, atol=1e-7)


def test_gradient_accumulation_updates_once_per_accumulated_step():
    """2 micro-batches of 4 with MultiSteps: params and EMA move once, at the second micro-step.

    (That the update equals one step on the mean gradient is test_optim_ema's MultiSteps test.)"""
    _, ts2, it = _setup(**{"optim.warmup_steps": 0, "optim.accum_steps": 2})
    assert ts2.micro_batch == 4
    s2 = ts2.init_state(jax.random.key(0))
    p0 = np.array(jax.device_get(s2.params)["conv_out"]["kernel"])

    # Through the real step: after 2 micro-steps the optimizer and the EMA moved exactly once.
    step2 = ts2.jit_step()
    halves = [next(it), next(it)]
    s2, _ = step2(s2, sharding.to_global(halves[0], ts2.batch_sharding))
    p_mid = jax.tree.map(np.array, jax.device_get(s2.params))
    np.testing.assert_array_equal(p_mid["conv_out"]["kernel"], p0)
    s2, _ = step2(s2, sharding.to_global(halves[1], ts2.batch_sharding))
    assert int(jax.device_get(s2.opt_state.gradient_step)) == 1
    p_end = jax.device_get(s2.params)["conv_out"]["kernel"]
    assert not np.array_equal(p_end, p_mid["conv_out"]["kernel"])
    ema = jax.device_get(s2.ema)["power_0.1"]["conv_out"]["kernel"]
    np.testing.assert_array_equal(ema, p_end)    # power EMA at its first update = the params


def test_grad_slices_runs_the_step_in_slices_and_checks_the_batch():
    """config.optim.grad_slices: the real step with the gradient in 2 slices gives a finite loss and
    moves the output conv; a slice count that does not divide the micro-batch is a clear error."""
    _, ts, it = _setup(**{"optim.warmup_steps": 0, "optim.grad_slices": 2})
    state = ts.init_state(jax.random.key(0))
    p0 = np.array(jax.device_get(state.params)["conv_out"]["kernel"])
    state, m = ts.jit_step()(state, sharding.to_global(next(it), ts.batch_sharding))
    assert np.isfinite(jax.device_get(m)["loss"])
    assert not np.array_equal(jax.device_get(state.params)["conv_out"]["kernel"], p0)
    with pytest.raises(ValueError, match="grad_slices 3"):
        _setup(**{"optim.grad_slices": 3})


def test_sample_max_batch_slices_inference_calls_only():
    """config.sample.max_batch > 0 makes the run's denoiser call the network on slices (same values);
    a negative value is a clear error."""
    config, ts, _ = _setup()
    _, ts4, _ = _setup(**{"sample.max_batch": 3})
    state = ts.init_state(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (7, 8, 8, 1))
    sigma, cond = jax.numpy.linspace(0.5, 2.0, 7), {"label": jax.numpy.arange(7) % 3}
    np.testing.assert_allclose(ts4.den(state.params, x, sigma, cond),
                               ts.den(state.params, x, sigma, cond), rtol=2e-5, atol=2e-6)
    with pytest.raises(ValueError, match="max_batch"):
        _setup(**{"sample.max_batch": -1})


@pytest.mark.slow
@pytest.mark.ci
def test_sharded_equals_single_device_on_8_simulated_devices():
    """Same losses and parameters on 1 device, 8-way data parallel, 4x2 and 8-way FSDP."""
    proc = run_python(open(f"{ROOT}/tests/training/sharded_run.py").read(), devices=8)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    res = json.loads(line[len("RESULT "):])
    ref = res["1dev"]
    assert ref["devices"] == 1
    for name in ("dp8", "dp4_fsdp2", "fsdp8"):
        r = res[name]
        assert r["devices"] == 8
        np.testing.assert_allclose(r["losses"], ref["losses"], rtol=1e-5, err_msg=name)
        assert r["params_max_rel_diff"] < 1e-4, (name, r)
        assert r["ema_max_rel_diff"] < 1e-4, (name, r)
    assert res["dp8"]["num_sharded"] == 0 and res["dp8"]["kernel_shards"] == 8  # replicated
    assert res["fsdp8"]["num_sharded"] > 0
    assert res["dp4_fsdp2"]["num_sharded"] > 0
