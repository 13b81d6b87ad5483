"""The benchmark's sampling functions compile once: guidance scale, eta and seed are traced.

Counts XLA compilations two ways: jax.monitoring's backend-compile events and the jitted function's
own cache size. A small U-Net and 3 steps keep it fast; the function is the one bench/ times.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import diffjax_side, spec

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    def __init__(self):
        self.n = 0
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event, duration, **kwargs):
        if event == COMPILE_EVENT:
            self.n += 1


COUNTER = CompileCounter()


@pytest.fixture(scope="module")
def small():
    model = diffjax_side.make_model(model_channels=16, channel_mult=(1, 2), num_res_blocks=1)
    # random weights from numpy (compiling model.init costs more than the rest of this file); not
    # the model's init: its zero-initialised output layers would make the net ignore its inputs
    x = jnp.zeros((1,) + spec.IMAGE)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, jnp.zeros((1,)),
                                               labels=jnp.zeros((1,), jnp.int32)))["params"]
    rng = np.random.default_rng(0)
    return model, jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype), shapes)


@pytest.mark.parametrize("name", list(spec.SAMPLERS))
def test_no_recompile_when_scale_eta_or_seed_change(small, name):
    model, params = small
    fn = diffjax_side.make_sample_fn(model, name, batch=2, steps=3)
    labels = jnp.array([1, 2], jnp.int32)
    x0 = fn(params, jax.random.key(0), labels, 3.0, 0.0).block_until_ready()
    before = COUNTER.n
    outs = [fn(params, jax.random.key(seed), labels, scale, eta)
            for seed, scale, eta in [(0, 5.0, 0.0), (1, 3.0, 0.0), (0, 3.0, 0.7), (2, 1.5, 1.0)]]
    outs.append(fn(params, jax.random.key(3), labels, jnp.float32(2.0), jnp.float32(0.3)))
    jax.block_until_ready(outs)
    assert COUNTER.n == before, f"{COUNTER.n - before} recompilation(s)"
    assert fn.jitted._cache_size() == 1
    # the knobs are live, not constant-folded: the seed always changes the sample, the guidance
    # scale changes it when guided, eta changes DDIM's
    assert not jnp.allclose(x0, outs[1])
    kind, _, cfg = spec.SAMPLERS[name]
    assert jnp.allclose(x0, outs[0]) != cfg
    assert jnp.allclose(x0, outs[2]) != (kind == "ddim")


def test_counter_sees_compilations(small):
    model, params = small
    before = COUNTER.n
    diffjax_side.make_sample_fn(model, "dpmpp20", batch=2, steps=2)(
        params, jax.random.key(0), jnp.array([0, 1], jnp.int32), 1.0, 0.0).block_until_ready()
    assert COUNTER.n > before
